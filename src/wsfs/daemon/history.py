"""Every version of a workspace as one read-only tree: ``<mnt>/<n>/...`` and ``<mnt>/<tag> -> <n>``.

:class:`HistoryView` is a :class:`~wsfs.daemon.tree.Tree`, like
:class:`~wsfs.daemon.view.VersionView`.  The root directory and the tag
symlinks are its own; everything below ``<n>`` is delegated to a
``VersionView`` of version *n*, with inode numbers translated on the way in
and out.

Inode numbers (stable for the life of the mount, unique across versions)::

    ino = (n << 40) | manifest_ino        version n >= 1; manifest_ino in [1, 2**40)
    ino = 1                               the root of the mount (FUSE's root)
    ino in [2, 2**40)                     tag symlinks, numbered in the order the mount first sees them

The block ``n == 0`` is reserved for the root and the tags, so a version's
numbers never collide with them or with another version's.  A hard link
inside a version is one manifest row, hence one inode.  Versions above
``MAX_VERSION`` (2**23 - 1) are not shown: every inode number and readdir
cursor then stays below 2**63, which signed ``ino_t``/``off_t`` users can
hold.  A manifest row numbered 2**40 or more is refused (EIO) when met.

Laziness and memory: the root lists version numbers and tags only (one store
listing, plus one GET per tag).  A version's record and manifest are fetched
on first use of ``<n>``; at most ``max_open`` (8) manifests are open at once,
least recently used closed first, and one is reopened from the local manifest
cache on demand (without a second validation if the file is the one
validated before).  What stays in memory per version ever seen is bounded
too: the root inode (``_ROOTS``, for ``ls -l`` of the root without
reopening) and the record (``_RECORDS``).

The listing is refreshed at most every ``REFRESH_INTERVAL`` seconds, when
the root is listed or a name in it is missing, so new versions and tags
appear; the root and its entries are therefore ``Lifetime.LISTED`` (short
kernel timeouts, ``policy.ROOT_TIMEOUT``), while everything inside a version
is ``FIXED``, and the root's listing is never left to the kernel's cache
(``listings_change``).  A root listing carries no version's real attributes
unless the root of that version is known already: the others are
placeholder directories (``PROVISIONAL``: an attribute timeout of 0), so
``ls`` of the root opens no manifest and a later ``stat`` asks again.

Blocking work (the store listing, a record and manifest download, the
validation) never runs on the trio thread: a view method that needs it
raises :class:`~wsfs.daemon.view.NotReady`, and the adapter awaits the work
(in a worker thread, one at a time per version) and calls the handler again.
"""

from __future__ import annotations

import bisect
import collections
import functools
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from wsfs.cache import BlobCache
from wsfs.daemon.tree import FsStats, Lifetime, NotReady
from wsfs.daemon.view import Deadline, VersionView
from wsfs.errors import IntegrityError, InvalidArgument, IsADirectory, NotADirectory, NotFound, WsfsError
from wsfs.format.manifest import ROOT_INO, Inode, Manifest
from wsfs.format.records import VersionRecord
from wsfs.repository import Repository

log = logging.getLogger(__name__)

VERSION_SHIFT = 40
LOCAL_MASK = (1 << VERSION_SHIFT) - 1
MAX_VERSION = (1 << (63 - VERSION_SHIFT)) - 1  # 8,388,607: inode numbers stay below 2**63
HISTORY_ROOT = ROOT_INO  # the mount's root is FUSE's inode 1
_FIRST_TAG_INO = 2
_TAG_CURSOR = MAX_VERSION + 1  # readdir cursors: n for version n, _TAG_CURSOR + ino for a tag

# The root changes when versions and tags are added: the kernel keeps its
# entries, attributes and misses only briefly (policy.ROOT_TIMEOUT), and we
# list the store at most every REFRESH_INTERVAL (a miss in the root may wait
# that long to turn into a hit).
REFRESH_INTERVAL = 30.0
MAX_OPEN = 8  # manifests open at once
_SMALL_CACHE_BYTES = 8 * 1024 * 1024  # decoded small files kept per open version (8 x 8 MiB at most)
_ROOTS = 4096  # root inodes of versions remembered (a few hundred bytes each)
_RECORDS = 4096  # version records (and the identity of their validated manifest file)

T = TypeVar("T")


def global_ino(n: int, local: int) -> int:
    """The mount's inode number of row *local* of version *n*'s manifest."""
    if not 0 < local <= LOCAL_MASK:
        raise IntegrityError(f"version {n}: manifest inode {local} does not fit in {VERSION_SHIFT} bits")
    return (n << VERSION_SHIFT) | local


class _Placeholder(Inode):
    """A version root whose real attributes are not known yet (readdir of the root)."""


class HistoryView:
    """All versions and tags of one workspace, read-only, one manifest open per version in use.

    Methods raise :class:`~wsfs.errors.WsfsError` subclasses (mapped to errno
    by the adapter) or :class:`~wsfs.daemon.view.NotReady`.  Call
    :meth:`refresh` once before mounting: it lists the workspace and fails
    (``NotFound``) if it has no versions.
    """

    def __init__(
        self,
        repo: Repository,
        workspace: str,
        cache: BlobCache,
        *,
        label: str,
        max_open: int = MAX_OPEN,
        refresh_interval: float = REFRESH_INTERVAL,
        deadline: Deadline | None = None,
    ) -> None:
        self.repo = repo
        self.workspace = workspace
        self.cache = cache
        self.label = label
        self.max_open = max_open
        self.refresh_interval = refresh_interval
        # Shared by every version: the thread pools stay as small as for one version.
        self.limiter = trio.CapacityLimiter(16)
        self.readahead_limiter = trio.CapacityLimiter(4)
        self.deadline = deadline or Deadline(label=label)  # shared with every version's view
        self.nursery: trio.Nursery | None = None  # set by the daemon; handed to each version (read-ahead)
        self._uid, self._gid = os.getuid(), os.getgid()
        # The listing: version numbers (sorted) and tags, as of _listed_at.
        self._versions: list[int] = []
        self._tags: dict[str, int] = {}
        self._tag_order: list[tuple[int, str]] = []  # (ino, name) of the current tags, by ino
        self._tag_inos: dict[str, tuple[int, int]] = {}  # every tag name ever seen -> (ino, first seen ns)
        self._ino_tags: dict[int, str] = {}
        self._listed_at = float("-inf")
        self._changed_ns = time.time_ns()  # root mtime: when the listing last changed
        self._open: collections.OrderedDict[int, VersionView] = collections.OrderedDict()
        self._roots: collections.OrderedDict[int, Inode] = collections.OrderedDict()
        # version -> (record, (path, st_ino, st_mtime_ns) of the manifest file validated for it)
        self._records: collections.OrderedDict[int, tuple[VersionRecord, tuple[str, int, int]]] = (
            collections.OrderedDict()
        )
        self._inflight: dict[object, trio.Event] = {}
        # Reads in progress per view (they await blob fetches); an evicted view
        # with reads in progress is closed when its last read returns.
        self._reading: dict[VersionView, int] = {}
        self._retired: set[VersionView] = set()
        self._out_of_range_reported = False
        self.loads = 0  # manifests opened (first time or again after eviction)
        self.listings = 0  # store listings of versions and tags

    # -- the listing ------------------------------------------------------------

    def refresh(self) -> None:
        """List versions and tags now (blocking; before mounting).  NotFound if there are no versions."""
        self._apply_listing(self._list())
        if not self._versions:
            ws = self.workspace
            raise NotFound(f"workspace {ws!r} has no versions (push one with: wsfs push DIR {ws})")

    def _list(self) -> tuple[list[int], dict[str, int]]:
        """Versions and tags from the store (runs in a worker thread)."""
        return self.repo.versions(self.workspace), self.repo.tags(self.workspace)

    def _apply_listing(self, listing: tuple[list[int], dict[str, int]]) -> None:
        versions, tags = listing
        shown = [n for n in versions if 1 <= n <= MAX_VERSION]
        if len(shown) != len(versions) and not self._out_of_range_reported:
            self._out_of_range_reported = True
            log.warning("%s: versions above %d are not shown (inode numbers would overflow)",
                        self.label, MAX_VERSION)
        now_ns = time.time_ns()
        if shown != self._versions or tags != self._tags:
            self._changed_ns = now_ns
        self._versions, self._tags = shown, dict(tags)
        for name in sorted(tags):
            if name not in self._tag_inos:
                ino = _FIRST_TAG_INO + len(self._tag_inos)  # never reused: stable for the mount
                self._tag_inos[name] = (ino, now_ns)
                self._ino_tags[ino] = name
        self._tag_order = sorted((self._tag_inos[name][0], name) for name in tags)
        self._listed_at = time.monotonic()
        self.listings += 1

    def _stale(self) -> bool:
        return time.monotonic() - self._listed_at >= self.refresh_interval

    async def _refresh(self) -> None:
        try:
            await self._once("listing", self._list, self._apply_listing)
        except WsfsError as e:
            # Versions never disappear and tags never change, so the old listing
            # is still true, only incomplete: keep serving it, and wait a full
            # interval before asking the store again.
            self._listed_at = time.monotonic()
            log.warning("%s: cannot list versions and tags: %s (serving the previous listing)", self.label, e)

    def _has_version(self, n: int) -> bool:
        i = bisect.bisect_left(self._versions, n)
        return i < len(self._versions) and self._versions[i] == n

    # -- opening versions ---------------------------------------------------------

    async def _once(self, key: object, work: Callable[[], T], apply: Callable[[T], None]) -> None:
        """Run *work* in a worker thread and *apply* its result on this thread; single-flight per *key*.

        A request that finds the work in progress waits for it and returns; its
        handler runs again and finds the result (or, after a failure, tries
        itself and gets the error).
        """
        event = self._inflight.get(key)
        if event is not None:
            await event.wait()
            return
        event = self._inflight[key] = trio.Event()
        try:
            # abandon_on_cancel: the caller's deadline (or the shutdown) may end
            # the wait while the store does not answer; the thread then ends on
            # its own (the store's request budget) and its result is dropped.
            apply(await trio.to_thread.run_sync(work, limiter=self.limiter, abandon_on_cancel=True))
        finally:
            del self._inflight[key]
            event.set()

    def _view(self, n: int) -> VersionView:
        """The open view of version *n*, or NotReady (the adapter opens it and asks again)."""
        view = self._open.get(n)
        if view is None:
            raise NotReady(functools.partial(self._load, n))
        self._open.move_to_end(n)
        return view

    async def _load(self, n: int) -> None:
        known = self._records.get(n)  # read here, on the trio thread, not in the worker
        await self._once(("version", n), functools.partial(self._open_version, n, known),
                         functools.partial(self._install, n))

    def _open_version(
        self, n: int, known: tuple[VersionRecord, tuple[str, int, int]] | None
    ) -> tuple[VersionRecord, Manifest, tuple[str, int, int]]:
        """Fetch the record and manifest of version *n* (worker thread).

        A manifest file validated earlier by this mount, and unchanged since
        (same path, inode and mtime), is reopened without validating it again.
        """
        if known is not None:
            record, ident = known
            path = self.repo.manifest_path(record)
            st = os.stat(path)
            if (path, st.st_ino, st.st_mtime_ns) == ident:
                return record, Manifest(path, validate=False), ident
        else:
            record = self.repo.record(self.workspace, n)
        manifest = self.repo.open_manifest(record)  # downloads, verifies and validates
        try:
            st = os.stat(manifest.path)
        except BaseException:
            manifest.close()
            raise
        return record, manifest, (manifest.path, st.st_ino, st.st_mtime_ns)

    def _install(self, n: int, opened: tuple[VersionRecord, Manifest, tuple[str, int, int]]) -> None:
        record, manifest, ident = opened
        if n in self._open:  # cannot happen (single-flight), but never leak a connection
            manifest.close()
            return
        view = VersionView(manifest, self.cache, label=f"{self.workspace}@{n}", stats=record.stats,
                           limiter=self.limiter, small_cache_bytes=_SMALL_CACHE_BYTES, deadline=self.deadline)
        view.readahead_limiter = self.readahead_limiter
        view.nursery = self.nursery
        view.small_prefetch_max = 0  # browsing old versions: fetch what is read, not what is listed
        self._open[n] = view
        self.loads += 1
        _remember(self._records, n, (record, ident), _RECORDS)
        _remember(self._roots, n, view.getattr(ROOT_INO), _ROOTS)
        while len(self._open) > self.max_open:
            # Manifests are used on this thread only, so nothing is half-way through
            # a query; only reads awaiting a blob may still hold the old view.
            old_n, old = self._open.popitem(last=False)
            if old in self._reading:
                self._retired.add(old)
            else:
                old.manifest.close()
            log.debug("%s: version %d left the open set", self.label, old_n)
        log.debug("%s: opened version %d (%d open)", self.label, n, len(self._open))

    def close(self) -> None:
        """Close every open manifest (at unmount)."""
        while self._open:
            self._open.popitem()[1].manifest.close()
        while self._retired:
            self._retired.pop().manifest.close()

    # -- the root and the tags ------------------------------------------------------

    def _root_node(self) -> Inode:
        t = self._changed_ns
        return Inode(HISTORY_ROOT, stat.S_IFDIR | 0o555, self._uid, self._gid, 0, 0, t, t, t,
                     2 + len(self._versions), 0, None, None, None)

    def _tag_node(self, name: str) -> Inode:
        ino, seen_ns = self._tag_inos[name]
        target = str(self._tags[name]).encode()
        t = seen_ns
        return Inode(ino, stat.S_IFLNK | 0o777, self._uid, self._gid, len(target), 0, t, t, t, 1, 0, target,
                     None, None)

    def _reserved_node(self, ino: int) -> Inode:
        if ino == HISTORY_ROOT:
            return self._root_node()
        name = self._ino_tags.get(ino)
        if name is None or name not in self._tags:
            raise NotFound(f"no inode {ino}")
        return self._tag_node(name)

    def _version_root(self, n: int) -> Inode:
        """The root directory of version *n*, as the mount numbers it (opens the version if unknown)."""
        root = self._roots.get(n)
        if root is None:
            root = self._view(n).getattr(ROOT_INO)  # NotReady if the version is not open
            _remember(self._roots, n, root, _ROOTS)
        return root._replace(ino=global_ino(n, root.ino))

    def _lookup_root(self, name: bytes) -> Inode | None:
        if name in (b".", b".."):
            return self._root_node()
        if name.isdigit():
            n = int(name)
            if name == str(n).encode() and self._has_version(n):
                return self._version_root(n)
        else:
            tag = name.decode("ascii", errors="replace")
            if tag in self._tags:
                return self._tag_node(tag)
        if self._stale():
            raise NotReady(self._refresh)  # perhaps it was pushed (or tagged) since we last looked
        return None

    def _readdir_root(self, after: int, limit: int) -> list[tuple[int, bytes, Inode]]:
        if after == 0 and self._stale():
            raise NotReady(self._refresh)
        out: list[tuple[int, bytes, Inode]] = []
        if after < _TAG_CURSOR:
            i = bisect.bisect_right(self._versions, after)
            for n in self._versions[i:i + limit]:
                root = self._roots.get(n)
                node = self._placeholder(n) if root is None else root._replace(ino=global_ino(n, root.ino))
                out.append((n, str(n).encode(), node))
        if len(out) < limit:
            j = bisect.bisect_right(self._tag_order, (after - _TAG_CURSOR, "\U0010ffff"))
            for ino, name in self._tag_order[j:j + limit - len(out)]:
                out.append((_TAG_CURSOR + ino, name.encode(), self._tag_node(name)))
        return out

    def _placeholder(self, n: int) -> Inode:
        t = self._changed_ns
        ino = global_ino(n, ROOT_INO)
        return _Placeholder(ino, stat.S_IFDIR | 0o555, self._uid, self._gid, 0, 0, t, t, t, 2, 0,
                            None, None, None)

    # -- the Tree interface ------------------------------------------------------------

    listings_change = True  # the root lists new versions and tags

    def lifetime(self, node: Inode) -> Lifetime:
        """Fixed inside a version; the root and its entries follow the listing."""
        if node.ino >> VERSION_SHIFT == 0:  # the root or a tag
            return Lifetime.LISTED
        if node.ino & LOCAL_MASK == ROOT_INO:
            # <n> is an entry of the root, but the directory itself never changes;
            # a placeholder's attributes are not the real ones.
            return Lifetime.PROVISIONAL if isinstance(node, _Placeholder) else Lifetime.LISTED_FIXED
        return Lifetime.FIXED

    def miss_lifetime(self, parent: int) -> Lifetime:
        """A missing name in the root may appear at the next refresh; inside a version it never will."""
        return Lifetime.LISTED if parent == HISTORY_ROOT else Lifetime.FIXED

    def getattr(self, ino: int) -> Inode:
        n = ino >> VERSION_SHIFT
        if n == 0:
            return self._reserved_node(ino)
        if ino & LOCAL_MASK == ROOT_INO and n in self._roots:
            return self._version_root(n)
        return self._out(n, self._view(n).getattr(ino & LOCAL_MASK))

    def lookup(self, parent: int, name: bytes) -> Inode | None:
        """The entry *name* of directory *parent*, or None if there is none."""
        n = parent >> VERSION_SHIFT
        if n == 0:
            if parent != HISTORY_ROOT:
                self._reserved_node(parent)  # NotFound if it is gone
                raise NotADirectory(f"inode {parent} is not a directory")
            return self._lookup_root(name)
        local = parent & LOCAL_MASK
        if local == ROOT_INO and name == b"..":
            return self._root_node()
        node = self._view(n).lookup(local, name)
        return None if node is None else self._out(n, node)

    def opendir(self, ino: int) -> None:
        n = ino >> VERSION_SHIFT
        if n == 0:
            if not self._reserved_node(ino).is_dir:
                raise NotADirectory(f"inode {ino} is not a directory")
            return
        self._view(n).opendir(ino & LOCAL_MASK)

    def readdir(self, ino: int, after: int, limit: int) -> list[tuple[int, bytes, Inode]]:
        """Up to *limit* ``(cursor, name, inode)`` after cursor *after* (0 = from the start)."""
        n = ino >> VERSION_SHIFT
        if n == 0:
            if ino != HISTORY_ROOT:
                raise NotADirectory(f"inode {ino} is not a directory")
            return self._readdir_root(after, limit)
        entries = self._view(n).readdir(ino & LOCAL_MASK, after, limit)
        return [(cursor, name, self._out(n, node)) for cursor, name, node in entries]

    def readlink(self, ino: int) -> bytes:
        n = ino >> VERSION_SHIFT
        if n == 0:
            node = self._reserved_node(ino)
            if node.target is None:
                raise InvalidArgument(f"inode {ino} is not a symbolic link")
            return node.target
        return self._view(n).readlink(ino & LOCAL_MASK)

    has_xattrs = True  # versions differ, and ENOSYS would switch xattrs off for the whole mount

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        n = ino >> VERSION_SHIFT
        if n == 0:
            self._reserved_node(ino)
            return {}
        return self._view(n).xattrs(ino & LOCAL_MASK)

    def open(self, ino: int) -> Inode:
        n = ino >> VERSION_SHIFT
        if n == 0:
            node = self._reserved_node(ino)
            if node.is_dir:
                raise IsADirectory(f"inode {ino} is a directory")
            return node
        return self._out(n, self._view(n).open(ino & LOCAL_MASK))

    async def read(self, ino: int, off: int, size: int) -> bytes:
        """Up to *size* bytes of regular file *ino* from *off*."""
        n = ino >> VERSION_SHIFT
        if n == 0:
            raise InvalidArgument(f"inode {ino} is not a regular file")
        view = self._view(n)
        self._reading[view] = self._reading.get(view, 0) + 1
        try:
            return await view.read(ino & LOCAL_MASK, off, size)
        finally:
            left = self._reading.pop(view) - 1
            if left:
                self._reading[view] = left
            elif view in self._retired:
                self._retired.discard(view)
                view.manifest.close()

    def statfs(self) -> FsStats:
        """Nothing is free on a read-only file system; a history has no single size, so none is claimed."""
        return FsStats()

    def statistics(self) -> dict[str, Any]:
        """For ``wsfs stats``: the listing, the open versions and how often manifests were opened."""
        return {
            "versions": len(self._versions),
            "tags": len(self._tags),
            "open_versions": list(self._open),
            "manifest_opens": self.loads,
            "listings": self.listings,
        }

    @staticmethod
    def _out(n: int, node: Inode) -> Inode:
        return node._replace(ino=global_ino(n, node.ino))


def _remember(lru: collections.OrderedDict[int, Any], key: int, value: Any, limit: int) -> None:
    lru[key] = value
    lru.move_to_end(key)
    while len(lru) > limit:
        lru.popitem(last=False)
