"""Open files and directories: the handle the kernel gets at open maps to per-open state.

Handles are numbers from a counter that is never reused (ratarmount's model):
a late request on a released handle finds nothing (``EBADF``) instead of
someone else's open file.  The state is small: inode, open flags and, on a read-write mount, the
opener's uid (a WRITE request carries no credentials).

With wsfs' pyfuse3 patch, a read-only mount answers OPEN and OPENDIR
``ENOSYS`` (``policy.CachePolicy.no_open``): the kernel then sends neither
opens nor releases, ``read`` and ``readdir`` get the inode in place of a
handle, and this table stays empty.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from wsfs.errors import WsfsError


@dataclass(slots=True)
class Handle:
    """One open(2) or opendir(3) as the kernel sees it."""

    ino: int
    flags: int  # open flags (0 for a directory)
    is_dir: bool
    uid: int = 0  # the opener's (a read-write mount: WRITE carries no credentials, yet a write by non-root kills SUID)


class HandleTable:
    """``fh -> Handle`` for every open the kernel has not released yet."""

    def __init__(self) -> None:
        self.handles: dict[int, Handle] = {}
        self._next = 1  # 0 is what the kernel sends when there is no handle
        self.opened = 0  # handles ever given out

    def __len__(self) -> int:
        return len(self.handles)

    def open(self, ino: int, flags: int = 0, *, is_dir: bool = False, uid: int = 0) -> int:
        """A new handle for *ino*."""
        fh = self._next
        self._next += 1
        self.handles[fh] = Handle(ino, flags, is_dir, uid)
        self.opened += 1
        return fh

    def get(self, fh: int) -> Handle:
        """The open behind *fh* (``EBADF`` if there is none: released, or never given out)."""
        h = self.handles.get(fh)
        if h is None:
            raise BadHandle(f"no open file or directory has handle {fh}")
        return h

    def release(self, fh: int) -> Handle:
        """Forget handle *fh* (RELEASE, RELEASEDIR); ``EBADF`` if it was not open."""
        h = self.handles.pop(fh, None)
        if h is None:
            raise BadHandle(f"release of handle {fh}, which is not open")
        return h

    def statistics(self) -> dict[str, int]:
        return {"handles": len(self.handles), "opened": self.opened}


class BadHandle(WsfsError):
    """A request with a handle that is not open (EBADF): a bug, or a request that raced its release."""

    errno = errno.EBADF
