"""Pushing small files' content into the kernel page cache before anyone asks.

Reading a small file through FUSE costs one READ round trip (OPEN and
RELEASE are gone with the patched pyfuse3, see ``ops.open``), about 100-150 us
of daemon, kernel and scheduling work.  A tree walk (``tar``, ``cp -r``,
``rsync``, a bundler) reads a directory's files one after another, in listing
order, so when it reads one inline file the view offers the next few inline
files of the same directory (:mod:`wsfs.daemon.view`, ``PUSH_AHEAD_*``), and
this module hands their verified content to the kernel with
``notify_store``.  The kernel keeps those pages (files are opened with
``keep_cache``), and the walk's next reads are served without a request.

Stores run in one worker thread, never on the trio thread: the kernel may
have to wait for a page lock held by a reader whose READ only the trio thread
can answer.  The queue is bounded; offers beyond it are dropped (the read
then simply arrives as a READ).  Content is decoded with the manifest's
verifying ``inline_data``: never a byte whose blake3 did not match.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pyfuse3
import trio

from wsfs.errors import WsfsError
from wsfs.format.manifest import Inode

log = logging.getLogger(__name__)

_QUEUE = 64  # batches waiting for the worker; more are dropped


class PagePusher:
    """One worker thread that stores verified inline content in the kernel's page cache."""

    def __init__(self, decode: Callable[[Inode], bytes]) -> None:
        self._decode = decode
        self._send, self._recv = trio.open_memory_channel[Sequence[Inode]](_QUEUE)
        self.enabled = True
        self.files = 0  # stored
        self.bytes = 0
        self.dropped = 0  # files not queued: the queue was full
        self.failed = 0  # files the kernel refused (e.g. inode already forgotten) or that did not decode

    def offer(self, nodes: Sequence[Inode]) -> None:
        """Queue *nodes* (inline regular files) for storing; called from the trio thread, never blocks."""
        if not self.enabled:
            return
        try:
            self._send.send_nowait(nodes)
        except trio.WouldBlock:
            self.dropped += len(nodes)

    async def run(self) -> None:
        """Serve the queue until cancelled (an in-progress batch is finished first)."""
        limiter = trio.CapacityLimiter(1)
        async for nodes in self._recv:
            await trio.to_thread.run_sync(self._store, nodes, limiter=limiter)

    def _store(self, nodes: Sequence[Inode]) -> None:
        for node in nodes:
            try:
                data = self._decode(node)
                pyfuse3.notify_store(node.ino, 0, data)
            except WsfsError as e:  # the READ that needs it will report it
                self.failed += 1
                log.debug("not pushing inode %d: %s", node.ino, e)
            except OSError as e:
                self.failed += 1
                if e.errno == errno.ENOSYS:
                    self.enabled = False
                    log.info("the kernel does not take notify_store; not pushing content")
                    return
                log.debug("notify_store of inode %d: %s", node.ino, e)
            else:
                self.files += 1
                self.bytes += len(data)

    def statistics(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "dropped": self.dropped, "failed": self.failed}
