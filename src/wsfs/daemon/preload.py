"""Preload: put the content of listed small files into the kernel's page cache, from a helper process.

Reading a small file through FUSE costs one READ round trip, and in a
Python daemon that round trip is CPU-bound in the daemon's one trio thread
(~110 µs each; a tree walk of 20,000 files pays it 20,000 times in series).
The kernel offers a way around it: ``FUSE_NOTIFY_STORE`` writes bytes into
an inode's page cache, after which a ``read`` is served by the kernel with
no request at all.

Doing the stores on the trio thread (or in one of its worker threads, under
the GIL) was measured to cost as much CPU as the READs it saved (see
``docs/daemon.md`` §2).  So the stores run in a **separate process** that the
daemon starts once the mount is live: the daemon only tells it, with an
8-byte write to a pipe, which directory the kernel has just listed, and the
helper does the rest on the other CPU:

* it opens the same manifest file read-only (apsw, no validation: the
  daemon validated it) and, for each directory it is told about, reads the
  directory's small files and **verifies each against its content id**,
  exactly as a READ would: inline files (format 1) are decompressed from the
  manifest (``Manifest.inline_data``); packed files (format 2) are sliced
  from their pack's file in the blob cache, which the daemon's listing
  prefetch is filling (a pack not there yet is looked for again after
  ``_PACK_DELAYS``; the slice is checked, not the file, so a damaged or
  foreign cache file can cost a preload, never serve wrong bytes);
* it writes each file to the FUSE device as one ``FUSE_NOTIFY_STORE``
  message (``struct fuse_out_header`` with ``unique = 0`` and ``error =
  FUSE_NOTIFY_STORE``, then ``struct fuse_notify_store_out``, then the
  bytes).  It was handed a duplicate of the daemon's ``/dev/fuse``
  descriptor; a notification is one ``writev`` and needs nothing else from
  libfuse.

When the daemon says "listed": with the first READDIRPLUS reply of a
directory (cursor 0, entries returned), sent at the next trio tick so that
it follows the reply.  The kernel creates the entries' inodes while the
lister parses that reply; a store that comes earlier fails with ``ENOENT``
and is retried after a short delay (``_RETRY_DELAYS``), then counted as
unknown.

Safety: the bytes stored are the verified content of an immutable version,
and the kernel opens files of a read-only no-open mount with
``FOPEN_KEEP_CACHE``, so stored pages stay valid.  A file being read while
it is stored gets the same bytes either way.  If the helper is slow, dies or
is not started, reads simply go to the daemon as before: the pipe is
non-blocking and a full pipe drops the hint.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import heapq
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import time

from wsfs.errors import WsfsError
from wsfs.format.blobs import content_id, hexid
from wsfs.format.manifest import Inode, Manifest
from wsfs.terminal import EscapingFormatter

log = logging.getLogger(__name__)

FUSE_NOTIFY_STORE = 4  # enum fuse_notify_code, include/uapi/linux/fuse.h
_OUT_HEADER = struct.Struct("<IiQ")  # struct fuse_out_header: len, error (the notify code), unique = 0
_STORE_OUT = struct.Struct("<QQII")  # struct fuse_notify_store_out: nodeid, offset, size, padding
_HINT = struct.Struct("<Q")  # one listed directory's inode, daemon -> helper
# A store to an inode the kernel does not know yet is tried again after these
# delays (seconds): the hint is sent with the first reply of a listing, and
# the kernel creates the entries' inodes while the lister parses it.
_RETRY_DELAYS = (0.0002, 0.001, 0.005, 0.025, 0.1)
_MAX_RETRIES = 4096  # stores waiting for a retry at once; beyond that they are given up
# A packed file whose pack is not in the blob cache yet (the daemon started
# fetching it with the listing) is looked for again after these delays.
_PACK_DELAYS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
_PR_SET_PDEATHSIG = 1  # prctl(2)
_STOP_WAIT = 2.0  # seconds the daemon waits for the helper to exit before killing it


def store_message(ino: int, data: bytes) -> list[bytes]:
    """The iovecs of one ``FUSE_NOTIFY_STORE`` of *data* at offset 0 of inode *ino*."""
    head = _OUT_HEADER.pack(_OUT_HEADER.size + _STORE_OUT.size + len(data), FUSE_NOTIFY_STORE, 0)
    return [head + _STORE_OUT.pack(ino, 0, len(data), 0), data]


def find_fuse_fd() -> int | None:
    """This process's ``/dev/fuse`` descriptor (libfuse opened it in ``pyfuse3.init``), or None."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                return int(name)
        except OSError:
            continue
    return None


# -- the daemon's side ------------------------------------------------------------


class Preloader:
    """The daemon's handle on the helper: start it, tell it about listed directories, stop it."""

    def __init__(self, proc: subprocess.Popen[bytes], pipe: int, label: str) -> None:
        self.proc = proc
        self.pipe: int | None = pipe
        self.label = label
        self.hints = 0  # directories handed to the helper
        self.dropped = 0  # hints dropped because the pipe was full

    @classmethod
    def start(cls, manifest_path: str, blobs: str, label: str) -> Preloader | None:
        """Start the helper on the FUSE descriptor of this process; None (logged) if that cannot be done."""
        fd = find_fuse_fd()
        if fd is None:
            log.info("%s: no /dev/fuse descriptor found; page-cache preload off", label)
            return None
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wsfs.daemon.preload", "--fuse-fd", str(fd), "--label", label,
                 "--parent", str(os.getpid()), "--blobs", blobs,
                 *(["-v"] if log.isEnabledFor(logging.DEBUG) else []), manifest_path],
                stdin=r,
                stdout=subprocess.DEVNULL,
                pass_fds=(fd,),
                close_fds=True,
            )
        except OSError as e:
            os.close(w)
            log.warning("%s: cannot start the page-cache preload helper: %s", label, e)
            return None
        finally:
            os.close(r)
        os.set_blocking(w, False)
        log.debug("%s: page-cache preload helper started (pid %d)", label, proc.pid)
        return cls(proc, w, label)

    def listed(self, dir_ino: int) -> None:
        """The kernel is listing directory *dir_ino* from its start: its small files may be preloaded."""
        if self.pipe is None:
            return
        try:
            os.write(self.pipe, _HINT.pack(dir_ino))
            self.hints += 1
        except BlockingIOError:
            self.dropped += 1  # the helper is behind; those files will be READ as usual
        except OSError as e:
            log.warning("%s: page-cache preload helper gone (%s); preload off", self.label, e.strerror)
            self._close_pipe()

    def statistics(self) -> dict[str, int | None]:
        return {"pid": self.proc.pid, "hints": self.hints, "dropped": self.dropped, "exit": self.proc.poll()}

    def _close_pipe(self) -> None:
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None

    def stop(self) -> None:
        """End of input for the helper; wait for it briefly, then kill it (by its pid, it is our child)."""
        self._close_pipe()
        try:
            self.proc.wait(timeout=_STOP_WAIT)
        except subprocess.TimeoutExpired:
            log.warning("%s: page-cache preload helper (pid %d) did not exit; killing it", self.label, self.proc.pid)
            self.proc.kill()
            self.proc.wait()


# -- the helper process ------------------------------------------------------------


class _Gone(Exception):
    """The mount is gone (its FUSE connection ended): the helper's work is over."""


class _Helper:
    """The helper process's state: the manifest, the FUSE descriptor, stores and packs waiting for a retry."""

    def __init__(self, manifest_path: str, fuse_fd: int, label: str, blobs: str | None = None) -> None:
        self.manifest = Manifest(manifest_path, validate=False)
        self.fd = fuse_fd
        self.label = label
        self.blobs = blobs  # the blob cache's directory, where packs arrive (format 2)
        self.retries: list[tuple[float, int, int, bytes]] = []  # heap of (due, attempt, ino, data)
        self.waiting: list[tuple[float, int, Inode]] = []  # heap of (due, attempt, node): pack not cached yet
        self.dirs = self.stored = self.stored_bytes = self.unknown = self.failed = self.retried = 0
        self.missed = 0  # packed files whose pack never arrived in time

    def directory(self, dino: int) -> None:
        """Store every non-empty small file of directory *dino*, verified."""
        self.dirs += 1
        for _, _, node in self.manifest.readdir(dino):
            if node.size == 0:
                continue
            if node.inline:
                try:
                    data = self.manifest.inline_data(node)  # verified against its content id
                except WsfsError as e:
                    self.failed += 1
                    log.error("%s: inline data of inode %d not preloaded: %s", self.label, node.ino, e)
                    continue
                self.store(node.ino, data, 0)
            elif node.packed and self.blobs is not None:
                self.packed(node, 0)

    def packed(self, node: Inode, attempt: int) -> None:
        """Store packed file *node* from its pack's cache file, verified; wait for the pack if it is not there."""
        pack, offset = self.manifest.pack_ref(node)
        assert pack.cid is not None and self.blobs is not None
        h = hexid(pack.cid)
        try:
            fd = os.open(os.path.join(self.blobs, h[:2], h), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if attempt < len(_PACK_DELAYS):
                heapq.heappush(self.waiting, (time.monotonic() + _PACK_DELAYS[attempt], attempt + 1, node))
            else:
                self.missed += 1
            return
        except OSError as e:
            self.failed += 1
            log.error("%s: pack %s of inode %d not readable: %s", self.label, h, node.ino, e)
            return
        try:
            data = os.pread(fd, node.size, offset)
        finally:
            os.close(fd)
        if len(data) != node.size or content_id(data) != node.content:
            # The daemon drops a damaged cache file on its own read; we only skip it.
            self.failed += 1
            log.error("%s: inode %d in cached pack %s does not match its content id; not preloaded",
                      self.label, node.ino, h)
            return
        self.store(node.ino, data, 0)

    def store(self, ino: int, data: bytes, attempt: int) -> None:
        try:
            os.writev(self.fd, store_message(ino, data))
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.EBADF, errno.ENOTCONN):
                raise _Gone from None
            if e.errno != errno.ENOENT:
                raise
            # The kernel does not know the inode (yet): the hint came with the
            # first reply of the listing, which the kernel may still be parsing.
            if attempt < len(_RETRY_DELAYS) and len(self.retries) < _MAX_RETRIES:
                self.retried += 1
                heapq.heappush(self.retries, (time.monotonic() + _RETRY_DELAYS[attempt], attempt + 1, ino, data))
            else:
                self.unknown += 1
            return
        self.stored += 1
        self.stored_bytes += len(data)

    def due(self) -> float | None:
        """Seconds until the next retry is due (None: none waiting); runs those that are due."""
        waits = []
        while self.retries:
            when, attempt, ino, data = self.retries[0]
            wait = when - time.monotonic()
            if wait > 0:
                waits.append(wait)
                break
            heapq.heappop(self.retries)
            self.store(ino, data, attempt)
        while self.waiting:
            when, attempt, node = self.waiting[0]
            wait = when - time.monotonic()
            if wait > 0:
                waits.append(wait)
                break
            heapq.heappop(self.waiting)
            self.packed(node, attempt)
        return min(waits) if waits else (0.0 if self.retries or self.waiting else None)

    def close(self, elapsed: float) -> None:
        self.manifest.close()
        cpu = os.times()
        log.info("%s: preload helper: %d files (%d bytes) stored from %d directory listings in %.2f s "
                 "(%.2f CPU s); %d retried, %d unknown to the kernel, %d failed verification, "
                 "%d whose pack did not arrive in time",
                 self.label, self.stored, self.stored_bytes, self.dirs, elapsed, cpu.user + cpu.system,
                 self.retried, self.unknown, self.failed, self.missed)


def serve(manifest_path: str, fuse_fd: int, hints: int, label: str, blobs: str | None = None) -> int:
    """Read directory inodes from *hints* until EOF; store their inline files through *fuse_fd*.

    Directories are not de-duplicated: the kernel lists a directory again
    only after it dropped its cached listing, when the files' pages are
    usually gone too.
    """
    helper = _Helper(manifest_path, fuse_fd, label, blobs)
    t0 = time.monotonic()
    buf = b""
    try:
        while True:
            wait = helper.due()
            if not select.select([hints], [], [], wait)[0]:
                continue  # a retry is due
            more = os.read(hints, 8 * 1024)
            if not more:
                break  # the daemon is done (or dead)
            buf += more
            n = len(buf) // _HINT.size * _HINT.size
            dirs, buf = buf[:n], buf[n:]
            for (dino,) in _HINT.iter_unpack(dirs):
                helper.directory(dino)
                helper.due()
    except _Gone:
        log.debug("%s: preload helper: the mount is gone", label)
    finally:
        os.close(fuse_fd)  # first: never hold a finished mount's connection
        helper.close(time.monotonic() - t0)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wsfs.daemon.preload",
                                description="wsfs mount helper: preload listed small files into the page cache "
                                            "(started by the mount daemon; reads directory inodes on stdin)")
    p.add_argument("--fuse-fd", type=int, required=True, help="inherited /dev/fuse descriptor of the mount")
    p.add_argument("--label", default="wsfs", help="workspace@version, for log lines")
    p.add_argument("--parent", type=int, help="the daemon's pid: exit when it is gone")
    p.add_argument("--blobs", help="the blob cache directory, where packs of small files arrive (format 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.add_argument("manifest", help="the mounted version's manifest.sqlite")
    a = p.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, handlers=[handler])
    if a.parent is not None:
        # Die with the daemon: a helper holding the /dev/fuse descriptor would
        # keep a dead mount's connection open (its requests would hang until
        # the helper saw the end of its input) instead of failing with ENOTCONN.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != a.parent:
            return 0  # it died before the line above
    # Below the daemon: preloading is opportunistic and must not take the CPU
    # from the trio thread that answers the requests someone is waiting for
    # (find -ls while the helper works: 1.98-2.40 s at nice 0, 1.80-1.88 s at
    # nice 10, the files still stored before tar reads them).
    os.nice(10)
    try:
        return serve(a.manifest, a.fuse_fd, sys.stdin.fileno(), a.label, a.blobs)
    except Exception:  # noqa: BLE001 - the mount goes on without us; say why
        log.exception("%s: page-cache preload helper failed", a.label)
        return 1


if __name__ == "__main__":
    sys.exit(main())
