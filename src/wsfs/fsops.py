"""Walking and creating trees through directory file descriptors, never through path strings.

Push reads trees and checkout writes them, often as root, in directories
other users can write to.  A path string is resolved again at every use, so a
directory checked once can be swapped for a symlink before the next use and
the operation lands outside the tree (a root-only file pushed, an outside
file chmod'ed).  Here every entry is reached from an open descriptor of its
parent: ``openat(O_NOFOLLOW | O_DIRECTORY)``, ``fstatat(AT_SYMLINK_NOFOLLOW)``,
and a directory just opened is checked to be the one (``st_dev``,
``st_ino``) that was seen when its parent was listed.  This also lifts
``PATH_MAX``: no call ever sees more than one name.

:class:`DirChain` holds the descriptors of the directories from the root to
the current one (a DFS path), at most :data:`MAX_OPEN` of them: deeper trees
re-open a closed ancestor by name from the nearest open one, with the same
checks.  Fifos and device nodes cannot be opened for ``fchmod``; they are
opened with ``O_PATH | O_NOFOLLOW`` and changed through ``/proc/self/fd/N``
(what glibc does for ``fchmodat(AT_SYMLINK_NOFOLLOW)``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_NODE = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
XATTR_PREFIX = b"user."  # the only namespace pushed and restored: others carry ACLs, capabilities, labels
MAX_OPEN = 64  # directory descriptors a chain keeps open (the root always)

Ident = tuple[int, int]  # (st_dev, st_ino)


class Moved(Exception):
    """A name no longer refers to the directory seen before (swapped, replaced by a symlink, removed)."""

    def __init__(self, name: bytes, vanished: bool = False) -> None:
        super().__init__(name)
        self.name = name
        self.vanished = vanished


def ident(st: os.stat_result) -> Ident:
    return st.st_dev, st.st_ino


def proc_path(fd: int) -> str:
    """A path to the file behind *fd* (also an ``O_PATH`` one) for calls that take no descriptor."""
    return f"/proc/self/fd/{fd}"


def list_names(dir_fd: int) -> list[bytes]:
    """The entry names of the directory open at *dir_fd*, sorted (bytes order)."""
    return sorted(map(os.fsencode, os.listdir(dir_fd)))


def open_dir(name: bytes, dir_fd: int, expect: Ident) -> int:
    """Open directory *name* of *dir_fd* without following a symlink; it must be *expect*.

    Raises :class:`Moved` if the name is now something else (or is gone),
    ``OSError`` for other failures (permissions...).
    """
    try:
        fd = os.open(name, O_DIR, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Moved(name) from None
        if e.errno == errno.ENOENT:
            raise Moved(name, vanished=True) from None
        raise
    if ident(os.fstat(fd)) != expect:
        os.close(fd)
        raise Moved(name)
    return fd


def open_node(name: bytes, dir_fd: int) -> tuple[int, os.stat_result]:
    """An ``O_PATH`` descriptor of entry *name* (never followed) and its ``fstat``."""
    fd = os.open(name, O_NODE, dir_fd=dir_fd)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


class DirChain:
    """Open descriptors of the directories from a root down to the current one.

    Depth 0 is the root (its descriptor is owned by the chain from now on).
    :meth:`enter` descends by one name from a directory on the chain,
    :meth:`goto` follows a whole list of ``(name, ident)`` steps from the root,
    sharing the common prefix with the current chain, so a depth-first walk
    opens each directory about once.
    """

    def __init__(self, root_fd: int) -> None:
        self._names: list[bytes] = [b""]
        self._ids: list[Ident] = [ident(os.fstat(root_fd))]
        self._fds: list[int] = [root_fd]
        self._open = 1
        self._lo = 1  # no descriptor below this index but the root's is open

    @property
    def depth(self) -> int:
        return len(self._names) - 1

    @property
    def root_ident(self) -> Ident:
        return self._ids[0]

    def fd(self) -> int:
        """The descriptor of the current (deepest) directory."""
        return self._fd_at(self.depth)

    def leave_to(self, depth: int) -> None:
        """Close the directories deeper than *depth*."""
        while len(self._names) > depth + 1:
            self._names.pop()
            self._ids.pop()
            fd = self._fds.pop()
            if fd >= 0:
                os.close(fd)
                self._open -= 1
        self._lo = min(self._lo, len(self._names))

    def enter(self, depth: int, name: bytes, expect: Ident) -> int:
        """Make directory *name* of the chain's directory at *depth* - 1 current; returns its descriptor."""
        self.leave_to(depth - 1)
        fd = open_dir(name, self._fd_at(depth - 1), expect)
        self._names.append(name)
        self._ids.append(expect)
        self._fds.append(fd)
        self._open += 1
        self._limit()
        return fd

    def goto(self, steps: Sequence[tuple[bytes, Ident]]) -> int:
        """Make the directory reached by *steps* from the root current; returns its descriptor."""
        n = 0
        top = min(len(steps), self.depth)
        while n < top and self._ids[n + 1] == steps[n][1] and self._names[n + 1] == steps[n][0]:
            n += 1
        self.leave_to(n)
        for i in range(n, len(steps)):
            self.enter(i + 1, *steps[i])
        return self.fd()

    def close(self) -> None:
        self.leave_to(0)
        if self._fds[0] >= 0:
            os.close(self._fds[0])
            self._fds[0] = -1

    def _fd_at(self, i: int) -> int:
        fd = self._fds[i]
        if fd >= 0:
            return fd
        j = i
        while self._fds[j] < 0:
            j -= 1
        # Re-open down from the nearest open ancestor, keeping what was opened:
        # walking back up (checkout's last pass) then finds the next ones open.
        for k in range(j + 1, i + 1):
            self._fds[k] = open_dir(self._names[k], self._fds[k - 1], self._ids[k])
            self._open += 1
        self._lo = min(self._lo, j + 1)
        self._limit(keep=i)
        return self._fds[i]

    def _limit(self, keep: int = -1) -> None:
        """Close the shallowest descriptors (never the root's, the current's or *keep*) above MAX_OPEN."""
        last = len(self._fds) - 1
        i = max(self._lo, 1)
        while self._open > MAX_OPEN and i < last:
            if self._fds[i] >= 0 and i != keep:
                os.close(self._fds[i])
                self._fds[i] = -1
                self._open -= 1
            i += 1
        self._lo = keep if 1 <= keep < i else i
