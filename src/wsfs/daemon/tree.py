"""The interface between the FUSE adapter and what it serves: a tree, in plain wsfs types.

``ops.Operations`` (the only module that builds pyfuse3 replies) talks to a
:class:`Tree`.  :class:`~wsfs.daemon.view.VersionView` (one version) and
:class:`~wsfs.daemon.history.HistoryView` (every version of a workspace)
implement it today; a writable tree (a base version plus a local write layer)
will implement it too.  A tree answers with facts: attributes, entries,
bytes, and how long each answer stays true (:class:`Lifetime`).  What the
kernel is told to cache, and for how long, is decided from those facts by the
mount's :class:`~wsfs.daemon.policy.CachePolicy`, not by the tree.

Attributes are any object with the fields of :class:`Attributes`.  The
views hand out their manifest rows (``format.manifest.Inode``, a
``NamedTuple`` that has them) as they are: copying every row into a record of
our own would cost 0.3 µs (``NamedTuple``) to 1.3 µs (frozen dataclass) per
entry, in a readdir that spends 1-3 µs per entry in all.

Contract of every method (the adapter relies on it):

- errors are :class:`~wsfs.errors.WsfsError` subclasses, each carrying its
  errno (``NotFound`` -> ENOENT, ``IntegrityError`` -> EIO, ...);
- a method that needs blocking work first (listing the store, opening a
  manifest) raises :class:`NotReady` instead of blocking the trio thread, and
  only before it has any effect, so the adapter may await the work and call
  it again;
- waits (a blob read) run under the tree's :class:`~wsfs.daemon.view.Deadline`;
- a missing name is ``None`` from :meth:`Tree.lookup`, not an exception: the
  adapter turns it into a negative entry the kernel caches.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from wsfs.format.manifest import Inode

if TYPE_CHECKING:
    from wsfs.daemon.view import Deadline


class Lifetime(enum.IntEnum):
    """How long a tree's answer about an entry stays true while mounted (it picks the kernel's timeouts).

    The tree states the fact; the mount's ``CachePolicy`` turns it into
    entry and attribute timeouts (a read-write mount caps them all).
    """

    FIXED = 0  # name and attributes never change while mounted (anything inside a version)
    LISTED = 1  # name and attributes follow a listing refreshed from the store (history root, tags)
    LISTED_FIXED = 2  # the name follows such a listing, the attributes never change (a history's <n>)
    PROVISIONAL = 3  # a listed entry whose attributes are a stand-in for ones not known yet


class Provisional(Inode):
    """A listed entry's attributes, all true but ``nlink`` (1: not counted yet): ``Lifetime.PROVISIONAL``.

    Given by an index still being built for a directory whose own entries are not all in
    (``daemon/building.py``); the kernel keeps its attributes for no time and asks again.
    """

    __slots__ = ()


class Attributes(Protocol):
    """What ``stat`` shows of a node, times in nanoseconds.  Read-only; ``ino`` is the mount's inode number."""

    @property
    def ino(self) -> int: ...
    @property
    def mode(self) -> int: ...
    @property
    def nlink(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def rdev(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def blocks(self) -> int: ...
    @property
    def atime_ns(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def ctime_ns(self) -> int: ...


@dataclass(frozen=True)
class FsStats:
    """``statfs`` of a tree, in ``frsize`` units (the adapter adds the preferred I/O size)."""

    blocks: int = 0
    bfree: int = 0
    bavail: int = 0
    files: int = 0
    ffree: int = 0
    favail: int = 0
    frsize: int = 4096
    namemax: int = 255


class NotReady(Exception):
    """A tree needs blocking work (a store listing, a manifest download) before it can answer.

    A synchronous tree method raises it instead of blocking the trio thread.
    The adapter then awaits :attr:`wait`, which does the work in a worker
    thread, and calls the handler again; an exception from ``wait`` is the
    answer.  :class:`~wsfs.daemon.view.VersionView` never raises it (its
    manifest is open for the whole mount);
    :class:`~wsfs.daemon.history.HistoryView` does.
    """

    def __init__(self, wait: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self.wait = wait


class Tree(Protocol):
    """A directory tree as the FUSE adapter needs it (see the module docstring for the contract)."""

    label: str  # "ws@v", for log messages
    deadline: Deadline  # bounds every wait of an operation on this tree
    has_xattrs: bool | None  # False: no entry has an xattr, and none can be added while mounted; None: not known yet
    listings_change: bool  # True: a directory's listing may change while mounted (the kernel must not keep it)

    def getattr(self, ino: int) -> Attributes:
        """The attributes of *ino* (``NotFound`` if the tree has no such inode)."""
        ...

    def lookup(self, parent: int, name: bytes) -> Attributes | None:
        """The entry *name* of directory *parent* (``.`` and ``..`` included), or None if there is none."""
        ...

    def lifetime(self, node: Attributes) -> Lifetime:
        """How long *node*, as just returned by this tree, and the name it came by stay true."""
        ...

    def miss_lifetime(self, parent: int) -> Lifetime:
        """How long "no such name in directory *parent*" stays true."""
        ...

    def readlink(self, ino: int) -> bytes: ...

    def opendir(self, ino: int) -> None:
        """Check that *ino* can be listed (``ENOTDIR`` otherwise)."""
        ...

    def readdir(self, ino: int, after: int, limit: int) -> list[tuple[int, bytes, Attributes]]:
        """Up to *limit* ``(cursor, name, attributes)`` after cursor *after* (0: from the start).

        Cursors are positive and stable: listing again after an entry's
        cursor resumes after that entry.  No ``.`` or ``..``.
        """
        ...

    def open(self, ino: int) -> Attributes:
        """Check that *ino* can be opened as a file (``EISDIR`` for a directory)."""
        ...

    async def read(self, ino: int, off: int, size: int) -> bytes | memoryview:
        """Up to *size* bytes of regular file *ino* from *off* (short only at the end of the file)."""
        ...

    def xattrs(self, ino: int) -> dict[bytes, bytes]: ...

    def statfs(self) -> FsStats: ...
