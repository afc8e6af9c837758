"""The readiness pipe of a background mount: the daemon's one answer to whoever started it.

The daemon writes ``OK`` once the mount is live, or ``<exit code> <message>``
if it could not mount; the starter reads until end of file.  Nothing read
(the pipe closed without a word) means the daemon died before either.  Two
starters use it: ``wsfs mount`` forking its own daemon
(:func:`wsfs.daemon.mount.run_mount`) and ``wsfs mount`` asking a resident
``wsfs mountd`` to fork one (:mod:`wsfs.daemon.mountd`); the answer means
the same for both.  Light on imports: the ``mountd`` client reads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn

from wsfs.errors import MountError, UsageError, WsfsError

_MAX_VERDICT = 64 << 10  # a message is one line; anything longer is cut


class Verdict:
    """The write end of the readiness pipe: "OK", or "<exit code> <message>"; sent at most once."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, text: str) -> None:
        # Once only: after close, the fd number may belong to another file.
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.write(fd, text.encode()[:_MAX_VERDICT])
        except OSError:
            pass  # the starter is gone (killed while waiting); nothing to tell
        finally:
            os.close(fd)


def read_verdict(fd: int) -> bytes:
    """Everything the daemon wrote on the pipe's read end *fd* (closed here), up to end of file."""
    chunks = []
    size = 0
    try:
        while size < _MAX_VERDICT:
            data = os.read(fd, _MAX_VERDICT - size)
            if not data:
                break
            chunks.append(data)
            size += len(data)
    finally:
        os.close(fd)
    return b"".join(chunks)


def verdict_error(verdict: bytes, died: str) -> WsfsError | None:
    """None for ``OK``; otherwise the error to raise: the daemon's own, or *died* if it said nothing.

    The exit code travels with the message, so a mount that failed in a
    daemon exits as it would have in the starter's own process (a usage
    error is a :class:`UsageError` again, for ``mount.wsfs``'s statuses).
    """
    if verdict.startswith(b"OK"):
        return None
    if not verdict:
        return MountError(died)
    code, _, message = verdict.decode(errors="replace").partition(" ")
    err: WsfsError = UsageError(message.strip()) if code == str(UsageError.exit_code) else MountError(message.strip())
    err.exit_code = int(code) if code.isdigit() and 0 < int(code) < 256 else 1
    return err


def exit_mounted() -> NoReturn:
    """The starter's end once the daemon said ``OK``: exit 0 at once.

    Not through the interpreter's teardown: 0.1-0.2 s with boto3, trio and
    pyfuse3 loaded, all of it after the mount was live.
    """
    logging.shutdown()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)
