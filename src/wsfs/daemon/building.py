"""A format 2 version's local index while it is being built: the first requests are served from its rows.

A cold mount of a format 2 version needs its local index (``format/index.py``:
every entry of the tree as a SQLite row, written range by range from verified
pieces).  Building it takes the ranges' round trips plus their decoding and
inserts: about 0.6 s for 30,000 files and 2.5 s for 100,000 on this project's
2-vCPU machine, the largest part of the time from ``wsfs mount`` to the first
``ls``.  So the daemon does not wait for it: :class:`BuildingIndex` starts the
build in a thread, the mount becomes ready, and requests are answered from
the rows the builder has written so far, which it hands over range by range
(:class:`~wsfs.format.index.IndexObserver`) in key order.  Keys are
``parent_path\\0name``, so the root's entries come first, then those of the
directories whose names sort first.

Every answer is the one the finished index gives, or none:

* inode numbers and readdir cursors are the builder's own (an entry's inode
  is its rank among the version's entries; a cursor is the dentry's row
  number), so nothing changes when the finished index takes over;
* a directory is answered (attributes, lookups in it, its listing) only once
  all its entries have been written (the builder is past ``path\\x01``, above
  every ``path\\0name``): its ``nlink`` (2 + subdirectories) and its misses
  are then final;
* a listing also waits until every entry in it can be answered, but a
  subdirectory whose own entries are not all in yet is listed as a
  :class:`~wsfs.daemon.tree.Provisional` stand-in: its true attributes except
  ``nlink``, shown as 1 ("not counted", as file systems that do not count
  subdirectories show it), with an attribute timeout of 0
  (``Lifetime.PROVISIONAL``), so the kernel asks again (a ``stat``, a path
  walk's permission check) and gets the final answer.  In key order the
  entries of ``a/b`` come after the whole subtree of every earlier sibling of
  ``b``, so without it ``ls node_modules`` waited for most of the build (every
  package directory's ``nlink``);
* a file with further names (hard links) gets its ``nlink`` at the end of the
  build, so it waits for the finished index, as do reads (pack places come
  last), chunk lists, extended attributes and anything unknown (an inode
  number the builder has not reached is not an error yet).

Nothing here blocks the trio thread: a query that cannot be answered yet
raises :class:`~wsfs.daemon.tree.NotReady`, whose wait (under the operation's
``Deadline``) returns once the builder has written what the query needs, and
the adapter asks again (``ops._when_ready``).  A build that fails makes every
waiting and later query fail with its error (EIO for an integrity error, a
timeout for a store that does not answer).

Threading: the builder thread only appends to a queue; every structure here
is read and written on the trio thread (``_drain``), which the builder wakes
through the trio token (or the next query drains).  The rows kept in memory
are capped (``MIRROR_MAX`` entries); past that, queries wait for the finished
index.  Once it is open, every query goes to it and the rows are dropped.
"""

from __future__ import annotations

import bisect
import collections
import logging
import stat
import threading
from collections.abc import Callable
from typing import Any

import trio

from wsfs.daemon.tree import NotReady, Provisional
from wsfs.errors import WsfsError
from wsfs.format.manifest import Chunk, Inode, Manifest
from wsfs.format.records import VersionRecord

log = logging.getLogger(__name__)

# Entries kept in memory while the index is built (about 300 bytes each); the
# first requests of a mount need the first ranges, not the whole tree.
MIRROR_MAX = 32768


class _Cancelled(Exception):
    """The mount closed the index while it was being built."""


class _Dir:
    """A directory's entries as written so far: names (sorted), dentry rows (the cursors), inodes."""

    __slots__ = ("path", "names", "ids", "inos", "subdirs", "listable")

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.names: list[bytes] = []
        self.ids: list[int] = []
        self.inos: list[int] = []
        self.subdirs = 0
        self.listable = False  # every entry could be answered (once true, it stays true)


class BuildingIndex:
    """The :class:`~wsfs.format.manifest.Manifest` queries a ``VersionView`` makes, while the index is built."""

    def __init__(self, chunk_size: int, label: str = "") -> None:
        self.chunk_size = chunk_size
        self.label = label
        self.manifest: Manifest | None = None  # the finished index, once open
        self.final_path: str | None = None  # where the finished index will be (renamed there when complete)
        self.error: WsfsError | None = None
        # what the builder thread is doing, for ``wsfs stats`` (read from any thread): building, built, failed
        self.state = "building"
        self.on_ready: list[Callable[[], None]] = []  # called (trio thread) when the finished index is open
        self._queue: collections.deque[tuple[str, Any]] = collections.deque()
        self._token: trio.lowlevel.TrioToken | None = None
        self._changed = trio.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        # the mirror (trio thread only)
        self._rows: dict[int, tuple[Any, ...]] = {}
        self._dirs: dict[int, _Dir] = {}
        self._linked: set[int] = set()
        self._last: bytes | None = None  # every key up to this one is in the mirror
        self._dentries = 0  # dentry rows given so far (the last one's cursor)
        self._full = False  # the mirror stopped at MIRROR_MAX

    # -- the builder's side (its own thread) ---------------------------------------

    @classmethod
    def start(cls, repo: Any, record: VersionRecord, label: str) -> BuildingIndex:
        """Build *record*'s index in a thread, starting now (``Repository.open_index_observed``)."""
        self = cls(repo.config.chunk_size, label)
        self.final_path = repo.index_path(record)

        def run() -> None:
            try:
                m = repo.open_index_observed(record, self)
            except _Cancelled:
                self.state = "failed"
                return
            except WsfsError as e:
                log.error("%s: the index of the version could not be built: %s", label, e)
                self.state = "failed"
                self._post("error", e)
                return
            except BaseException as e:  # noqa: BLE001 - any failure must reach the waiting requests
                log.exception("%s: building the index of the version failed", label)
                self.state = "failed"
                self._post("error", WsfsError(f"building the index failed: {e!r}"))
                return
            if self._closed:
                m.close()
                return
            self.state = "built"
            self._post("done", m)

        self._thread = threading.Thread(target=run, name="wsfs-index", daemon=True)
        self._thread.start()
        return self

    def rows(
        self, inodes: list[tuple[Any, ...]], dentries: list[tuple[int, bytes, int]],
        xattrs: list[tuple[int, dict[bytes, bytes]]], dirs: list[tuple[int, bytes]], linked: list[int], last: bytes,
    ) -> None:
        """(Builder thread) One range's rows (:class:`~wsfs.format.index.IndexObserver`)."""
        if self._closed:
            raise _Cancelled
        self._post("rows", (inodes, dentries, dirs, linked, bool(xattrs), last))

    def _post(self, kind: str, value: Any) -> None:
        self._queue.append((kind, value))
        token = self._token
        if token is not None:
            try:
                token.run_sync_soon(self._drain)
            except trio.RunFinishedError:
                pass

    # -- the trio thread --------------------------------------------------------------

    def attach(self, token: trio.lowlevel.TrioToken) -> None:
        """The daemon's trio loop is running: wake it when rows arrive (and take what came before)."""
        self._token = token
        token.run_sync_soon(self._drain)

    @property
    def ready(self) -> bool:
        """Whether the finished index answers every query."""
        self._drain()
        return self.manifest is not None

    @property
    def path(self) -> str:
        if self.manifest is None:
            raise RuntimeError("the index is still being built")
        return self.manifest.path

    def _drain(self) -> None:
        if not self._queue:
            return
        changed = False
        while self._queue:
            kind, value = self._queue.popleft()
            changed = True
            if kind == "rows":
                if not self._full and self.manifest is None and self.error is None:
                    try:
                        self._apply(*value)
                    except Exception as e:  # a bug, or rows the builder should have refused: never the loop's end
                        log.exception("%s: the rows of the index being built cannot be served", self.label)
                        self.error = WsfsError(f"the index being built is inconsistent: {e!r}")
            elif kind == "done":
                self.manifest = value
                self._rows, self._dirs, self._linked = {}, {}, set()
            else:
                self.error = value
        if changed:
            event, self._changed = self._changed, trio.Event()
            event.set()
            if self.manifest is not None and self.on_ready:
                callbacks, self.on_ready = self.on_ready, []
                for fn in callbacks:
                    try:
                        fn()
                    except Exception:
                        log.exception("%s: a callback for the finished index failed", self.label)

    def _apply(
        self, inodes: list[tuple[Any, ...]], dentries: list[tuple[int, bytes, int]], dirs: list[tuple[int, bytes]],
        linked: list[int], any_xattrs: bool, last: bytes,
    ) -> None:
        if len(self._rows) + len(inodes) > MIRROR_MAX:
            self._full = True  # the rest waits for the finished index
            return
        rows = self._rows
        for row in inodes:
            rows[row[0]] = row
        for ino, path in dirs:
            self._dirs[ino] = _Dir(path)
        self._linked.update(linked)
        n = self._dentries
        for parent, name, ino in dentries:
            n += 1
            d = self._dirs[parent]  # the builder checked that every parent is a directory it wrote before
            d.names.append(name)
            d.ids.append(n)
            d.inos.append(ino)
            child = rows.get(ino)
            if child is not None and stat.S_ISDIR(child[1]):
                d.subdirs += 1
        self._dentries = n
        self._last = last

    def _complete(self, d: _Dir) -> bool:
        """Whether every entry of directory *d* is in the mirror."""
        return self._last is not None and self._last >= d.path + b"\x01"

    def _node(self, ino: int) -> Inode | None:
        """Inode *ino* as the finished index will give it, if the mirror can tell already."""
        row = self._rows.get(ino)
        if row is None or ino in self._linked:
            return None
        nlink = row[7]
        if stat.S_ISDIR(row[1]):
            d = self._dirs[ino]
            if not self._complete(d):
                return None
            nlink = 2 + d.subdirs
        i, mode, uid, gid, size, blocks, mt, _, rdev, target, content, pack, offset = row
        return Inode(i, mode, uid, gid, size, blocks, mt, mt, mt, nlink, rdev, target, content, None, pack, offset)

    def _entry_node(self, ino: int) -> Inode | None:
        """What a listing shows of entry *ino*: :meth:`_node`, or for a directory not complete yet a
        :class:`~wsfs.daemon.tree.Provisional` with ``nlink`` 1."""
        node = self._node(ino)
        if node is not None:
            return node
        row = self._rows.get(ino)
        if row is None or not stat.S_ISDIR(row[1]):
            return None
        i, mode, uid, gid, size, blocks, mt, _, rdev, target, content, pack, offset = row
        return Provisional(i, mode, uid, gid, size, blocks, mt, mt, mt, 1, rdev, target, content, None, pack, offset)

    def _check(self) -> Manifest | None:
        """The finished index if open; raises the build's error; None while the mirror answers."""
        self._drain()
        if self.error is not None:
            raise self.error
        return self.manifest

    def _wait_for(self, check: Callable[[], bool]) -> NotReady:
        async def wait() -> None:
            while True:
                self._drain()
                if self.manifest is not None or self.error is not None or check():
                    return
                await self._changed.wait()

        return NotReady(wait)

    def _until_ready(self) -> NotReady:
        return self._wait_for(lambda: False)

    # -- the queries (those of Manifest that a VersionView makes) -----------------------

    def getattr(self, ino: int) -> Inode:
        m = self._check()
        if m is not None:
            return m.getattr(ino)
        node = self._node(ino)
        if node is None:
            raise self._wait_for(lambda: self._node(ino) is not None)
        return node

    def lookup(self, parent: int, name: bytes) -> Inode | None:
        m = self._check()
        if m is not None:
            return m.lookup(parent, name)
        found = self._lookup(parent, name)
        if found is False:
            raise self._wait_for(lambda: self._lookup(parent, name) is not False)
        return found

    def _lookup(self, parent: int, name: bytes) -> Inode | None | bool:
        """The answer of the finished index, or False if the mirror cannot tell yet."""
        row = self._rows.get(parent)
        if row is None:
            return False
        d = self._dirs.get(parent)
        if d is None:
            return None  # not a directory: no entries (the view then says ENOTDIR)
        if not self._complete(d):
            return False
        i = bisect.bisect_left(d.names, name)
        if i == len(d.names) or d.names[i] != name:
            return None
        node = self._node(d.inos[i])
        return False if node is None else node

    def readdir(self, ino: int, after: int = 0, limit: int = -1) -> list[tuple[int, bytes, Inode]]:
        m = self._check()
        if m is not None:
            return m.readdir(ino, after, limit)
        if not self._listable(ino):
            raise self._wait_for(lambda: self._listable(ino))
        d = self._dirs.get(ino)
        if d is None:
            return []  # not a directory
        start = bisect.bisect_right(d.ids, after)
        stop = len(d.ids) if limit < 0 else min(len(d.ids), start + limit)
        out = []
        for k in range(start, stop):
            node = self._entry_node(d.inos[k])
            assert node is not None
            out.append((d.ids[k], d.names[k], node))
        return out

    def _listable(self, ino: int) -> bool:
        """Whether every entry of directory *ino* can be answered (so every later batch of a listing can)."""
        if ino not in self._rows:
            return False
        d = self._dirs.get(ino)
        if d is None:
            return True
        if d.listable:
            return True
        if not self._complete(d) or not all(self._entry_node(i) is not None for i in d.inos):
            return False
        d.listable = True
        return True

    def has_xattrs(self) -> bool | None:
        """Whether any entry has an extended attribute; None until the finished index tells."""
        m = self._check()
        return None if m is None else m.has_xattrs()

    # What needs the finished index (pack places, chunk lists, extended attributes, the rest).

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        m = self._check()
        if m is None:
            raise self._until_ready()
        return m.xattrs(ino)

    def pack_ref(self, node: Inode) -> tuple[Chunk, int]:
        m = self._check()
        if m is None:
            raise self._until_ready()
        return m.pack_ref(node)

    def pack_row(self, row: int) -> Chunk | None:
        m = self._check()
        if m is None:
            raise self._until_ready()
        return m.pack_row(row)

    def chunks(self, ino: int) -> list[Chunk]:
        m = self._check()
        if m is None:
            raise self._until_ready()
        return m.chunks(ino)

    def inline_payload(self, node: Inode) -> tuple[bytes, int, bytes]:
        m = self._check()
        if m is None:
            raise self._until_ready()
        return m.inline_payload(node)

    def chunk_sizes(self) -> dict[bytes, int]:
        m = self._check()
        if m is None:
            raise RuntimeError("the index is still being built")
        return m.chunk_sizes()

    async def wait_ready(self) -> Manifest:
        """(trio) The finished index, once open; the build's error if it failed."""
        while True:
            m = self._check()
            if m is not None:
                return m
            await self._changed.wait()

    def close(self) -> None:
        """Stop the build (at its next range) or close the finished index."""
        self._closed = True
        self._drain_quietly()
        if self.manifest is not None:
            self.manifest.close()

    def _drain_quietly(self) -> None:
        while self._queue:
            kind, value = self._queue.popleft()
            if kind == "done":
                self.manifest = value
