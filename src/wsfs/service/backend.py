"""The blocking side of ``wsfs serve``: records, manifests, verified content and tar archives.

Everything here is synchronous and thread-safe; the application
(``service.app``) runs it on two bounded thread pools owned by
:class:`Backend`, never on the event loop: ``meta`` (records, listings,
manifest queries: short) and ``blobs`` (content reads: may wait for the
store).  Bytes come from the shared :class:`~wsfs.cache.BlobCache` (verified
against their id before first use, fetched and verified on a miss) or from a
manifest's inline data (verified): no byte reaches a client that did not
verify.  Imports ``cache``, ``repository``, ``versions``, ``format`` and
``errors``.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from wsfs.cache import BlobCache
from wsfs.errors import IntegrityError, NotADirectory, NotFound, UsageError, WsfsError
from wsfs.format.blobs import content_id, hexid
from wsfs.format.manifest import ROOT_INO, Chunk, Inode, Manifest
from wsfs.format.names import check_tag, check_workspace, version_number
from wsfs.format.records import VersionRecord
from wsfs.repository import Ref, Repository

log = logging.getLogger(__name__)

PART = 4 << 20  # bytes of content read (and sent) at a time: a slice of at most one chunk (4 MiB by default)
EMPTY_ID = content_id(b"")
MAX_PAGE = 1000  # entries or versions per page at most
TAR_PIECE = 256 * 1024  # a tar stream is handed to the event loop in pieces of this size
TAR_PIECES_AHEAD = 8  # ... at most this many waiting (2 MiB per archive)
CONSUMER_TIMEOUT = 300.0  # seconds an archive waits for its reader to take a piece before giving up


class IsSymlink(WsfsError):
    """A path names a symbolic link (as its last or a middle component): reported, never followed."""

    def __init__(self, path: bytes, target: bytes) -> None:
        super().__init__(f"{path.decode(errors='replace')} is a symbolic link (not followed)")
        self.path = path
        self.target = target


class IsDirectory(WsfsError):
    """A file was asked for, and the path names a directory (or another non-regular entry)."""

    def __init__(self, path: bytes, kind: str) -> None:
        super().__init__(f"{path.decode(errors='replace') or '/'} is a {kind}, not a regular file")
        self.kind = kind


def kind(mode: int) -> str:
    """The entry type as the API names it."""
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "char-device"),
        (stat.S_ISBLK, "block-device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "unknown"


def parse_version(v: str) -> str | int:
    """``{v}`` of a URL: a version number, ``latest``, or a tag name (checked; InvalidName is a 400)."""
    if v == "latest":
        return v
    n = version_number(v)
    if n is not None:
        if n < 1:
            raise UsageError("version numbers start at 1")
        return n
    return check_tag(v)


class ManifestPool:
    """Open manifests (apsw connections) kept for reuse, one borrower at a time each.

    A connection is used by one thread at a time; opening one costs a file
    open and a query of its meta table (plus the first-use work of
    :meth:`Repository.open_manifest`), so idle ones are kept: up to
    *per_version* for each of the *versions* most recently used versions.
    """

    def __init__(self, repo: Repository, *, versions: int = 32, per_version: int = 8) -> None:
        self.repo = repo
        self.versions = versions
        self.per_version = per_version
        self._idle: collections.OrderedDict[tuple[str, int], list[Manifest]] = collections.OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def open(self, record: VersionRecord) -> Iterator[Manifest]:
        """A manifest of *record* for this thread alone until the block ends (then kept for reuse)."""
        key = (record.manifest, record.format)
        with self._lock:
            idle = self._idle.get(key)
            m = idle.pop() if idle else None
        if m is None:
            m = self.repo.open_manifest(record)
        try:
            yield m
        finally:
            drop: list[Manifest] = []
            with self._lock:
                idle = self._idle.setdefault(key, [])
                self._idle.move_to_end(key)
                if len(idle) < self.per_version:
                    idle.append(m)
                else:
                    drop.append(m)
                while len(self._idle) > self.versions:
                    drop.extend(self._idle.popitem(last=False)[1])
            for d in drop:
                d.close()

    def close(self) -> None:
        """Close every idle manifest."""
        with self._lock:
            ms = [m for idle in self._idle.values() for m in idle]
            self._idle.clear()
        for m in ms:
            m.close()


def lookup(m: Manifest, names: list[bytes]) -> Inode:
    """The entry at *names* below the root, following no symbolic link (IsSymlink names the first one met)."""
    node = m.getattr(ROOT_INO)
    walked: list[bytes] = []
    for name in names:
        if node.is_link:
            raise IsSymlink(b"/".join(walked), node.target or b"")
        if not node.is_dir:
            raise NotFound(f"{b'/'.join(walked).decode(errors='replace')} is not a directory")
        child = m.lookup(node.ino, name)
        walked.append(name)
        if child is None:
            raise NotFound(f"no such file or directory: {b'/'.join(walked).decode(errors='replace')}")
        node = child
    return node


@dataclass(frozen=True)
class Part:
    """A slice of a file's content: ``length`` bytes from ``start`` of chunk *chunk* (None: a small file's bytes)."""

    chunk: Chunk | None
    start: int
    length: int


@dataclass
class FileInfo:
    """A regular file of a version, as needed to answer a request for its bytes."""

    record: VersionRecord
    path: bytes
    node: Inode
    size: int
    etag: str  # the content id, hex
    chunk_size: int
    chunks: list[Chunk] = field(default_factory=list)  # large files
    pack: tuple[Chunk, int] | None = None  # small file of a format 2 version: its pack and offset

    def parts(self, start: int, end: int) -> Iterator[Part]:
        """The parts covering bytes ``[start, end)``: at most :data:`PART` bytes each, none across a chunk."""
        if start >= end:
            return
        if self.node.inline or self.pack is not None:
            # Small files are read (and verified) whole; parts are slices of them.
            for a in range(start, end, PART):
                yield Part(None, a, min(end, a + PART) - a)
            return
        cs = self.chunk_size
        for idx in range(start // cs, (end - 1) // cs + 1):
            if idx >= len(self.chunks) or self.chunks[idx].idx != idx:
                raise IntegrityError(f"{self.record.workspace}@{self.record.version}: the chunk list of "
                                     f"{self.path.decode(errors='replace')} does not cover its size")
            c = self.chunks[idx]
            base = idx * cs
            if c.length != min(cs, self.size - base):
                raise IntegrityError(f"chunk {idx} of {self.path.decode(errors='replace')} has the wrong length")
            a, b = max(start, base) - base, min(end, base + c.length) - base
            for s in range(a, b, PART):
                yield Part(c, s, min(b, s + PART) - s)


class Backend:
    """One repository and its blob cache, served: the blocking operations of every endpoint."""

    def __init__(
        self,
        repo: Repository,
        cache: BlobCache,
        *,
        meta_workers: int = 8,
        blob_workers: int = 16,
        read_ahead: int = 4,
        chunks_ahead: int = 8,
        max_archives: int = 4,
        max_upload: int = 4 << 30,
    ) -> None:
        self.repo = repo
        self.max_upload = max_upload  # bytes of a tar body POSTed as a new version, at most
        self.cache = cache
        self.manifests = ManifestPool(repo)
        # Two pools so that listings are not queued behind content waiting for the store.
        self.meta = ThreadPoolExecutor(max_workers=meta_workers, thread_name_prefix="wsfs-serve-meta")
        self.blobs = ThreadPoolExecutor(max_workers=blob_workers, thread_name_prefix="wsfs-serve-blobs")
        self.read_ahead = read_ahead  # parts of one response in flight
        self.chunks_ahead = chunks_ahead  # chunks of one response fetched ahead into the cache
        self.archives = threading.BoundedSemaphore(max_archives)
        # Where archive consumers wait for the next piece: one waiter and one closer per archive at most.
        self.waits = ThreadPoolExecutor(max_workers=2 * max_archives, thread_name_prefix="wsfs-serve-tar-wait")
        self._tags: dict[tuple[str, str], int] = {}  # tags are immutable: resolved once
        # Immutable things read before, kept (LRU, bounded): records by (ws, n), files by (ws, n, path).
        self._records: collections.OrderedDict[tuple[str, int], VersionRecord] = collections.OrderedDict()
        self._files: collections.OrderedDict[tuple[str, int, bytes], FileInfo] = collections.OrderedDict()
        self._small: collections.OrderedDict[tuple[str, bytes], bytes] = collections.OrderedDict()
        self._small_bytes = 0
        self._small_max = 16 * 1024**2
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the pools (waiting for running work), close the manifests and the cache."""
        self.meta.shutdown(wait=True, cancel_futures=True)
        self.blobs.shutdown(wait=True, cancel_futures=True)
        self.waits.shutdown(wait=True, cancel_futures=True)
        self.manifests.close()
        self.cache.close()

    # -- records -------------------------------------------------------------

    def workspaces(self) -> list[str]:
        """Workspace names, sorted."""
        return sorted(self.repo.workspaces())

    def resolve(self, ws: str, v: str) -> tuple[VersionRecord, bool]:
        """``(record, immutable)`` of ``ws@v``: immutable unless *v* is ``latest`` (a listing each time)."""
        check_workspace(ws)
        ref = parse_version(v)
        if ref == "latest":
            n = self.repo.latest(ws)
            if n is None:
                raise NotFound(f"workspace {ws!r} has no versions")
            return self.record(ws, n), False
        if isinstance(ref, int):
            return self.record(ws, ref), True
        n = self._tags.get((ws, ref))
        if n is None:
            n = self.repo.resolve(Ref(ws, ref)).version
            with self._lock:
                self._tags[(ws, ref)] = n
        return self.record(ws, n), True

    def record(self, ws: str, n: int) -> VersionRecord:
        """A version's record, kept in memory once read (records are immutable)."""
        key = (ws, n)
        rec = self._records.get(key)
        if rec is None:
            rec = self.repo.record(ws, n)
            with self._lock:
                self._records[key] = rec
                while len(self._records) > 4096:
                    self._records.popitem(last=False)
        return rec

    def known_file(self, ws: str, v: str, names: list[bytes]) -> FileInfo | None:
        """The file at ``ws@v`` *names* if a request already looked it up in a numbered or tagged version, else None.

        Dictionary lookups only (no I/O): the event loop may call it, and a
        repeated request (range readers of one file) costs no thread hop for
        its metadata.  Names are checked as :meth:`resolve` would.
        """
        check_workspace(ws)
        ref = parse_version(v)
        if ref == "latest":
            return None
        n = ref if isinstance(ref, int) else self._tags.get((ws, ref))
        if n is None:
            return None
        return self._files.get((ws, n, b"/".join(names)))

    def file_at(self, ws: str, v: str, names: list[bytes]) -> tuple[FileInfo, bool]:
        """``(file, immutable)``: :meth:`resolve` then :meth:`file` in one call (one thread hop per request)."""
        record, immutable = self.resolve(ws, v)
        return self.file(record, names), immutable

    def versions_page(self, ws: str, before: int | None, limit: int) -> tuple[list[VersionRecord], int | None]:
        """Up to *limit* records of *ws*, newest first, numbered below *before*; and the cursor of the next page."""
        check_workspace(ws)
        numbers = self.repo.versions(ws)
        if not numbers:
            raise NotFound(f"workspace {ws!r} has no versions")
        older = [n for n in reversed(numbers) if before is None or n < before]
        page = older[:limit]
        out = []
        for n in page:
            try:
                out.append(self.repo.record(ws, n))
            except (IntegrityError, NotFound) as e:  # one bad record must not hide the others
                log.warning("skipping %s@%d: %s", ws, n, e)
        return out, (page[-1] if len(older) > limit else None)

    def tags(self, ws: str) -> dict[str, int]:
        """``{tag: version}`` of *ws*."""
        check_workspace(ws)
        return self.repo.tags(ws)

    # -- trees ---------------------------------------------------------------

    def tree_page(
        self, record: VersionRecord, names: list[bytes], after: bytes | None, limit: int
    ) -> tuple[Inode, list[tuple[bytes, Inode]], bytes | None]:
        """``(directory, [(name, entry)], next cursor)``: one page of a directory, in name order after *after*.

        The cursor is the last name of the page (names are unique and
        sorted byte-wise in a directory), so it holds for any server and
        any copy of the version's index.  Memory: one page.
        """
        with self.manifests.open(record) as m:
            node = lookup(m, names)
            if node.is_link:
                raise IsSymlink(b"/".join(names), node.target or b"")
            if not node.is_dir:
                raise NotADirectory(f"{b'/'.join(names).decode(errors='replace')} is not a directory")
            cursor = 0
            if after:
                # The dentry id just before the first name > after: ids are contiguous and sorted by name.
                row = m.db.execute(
                    "SELECT id FROM dentries WHERE parent = ? AND name <= ? ORDER BY name DESC LIMIT 1",
                    (node.ino, after),
                ).fetchone()
                cursor = row[0] if row else 0
            rows = m.readdir(node.ino, cursor, limit + 1)
        entries = [(name, child) for _, name, child in rows[:limit]]
        return node, entries, (entries[-1][0] if len(rows) > limit else None)

    def stat_path(self, record: VersionRecord, names: list[bytes]) -> Inode:
        """The entry at *names* (no symlink followed)."""
        with self.manifests.open(record) as m:
            return lookup(m, names)

    # -- files ---------------------------------------------------------------

    def file(self, record: VersionRecord, names: list[bytes]) -> FileInfo:
        """The regular file at *names* (IsSymlink, IsDirectory, NotFound otherwise); the last few kept in memory."""
        path = b"/".join(names)
        key = (record.workspace, record.version, path)
        info = self._files.get(key)
        if info is not None:
            return info
        info = self._lookup_file(record, names, path)
        if len(info.chunks) <= 4096:  # a file of up to 16 GiB in 4 MiB chunks: < 0.5 MB of chunk list
            with self._lock:
                self._files[key] = info
                while len(self._files) > 10_000:
                    self._files.popitem(last=False)
        return info

    def _lookup_file(self, record: VersionRecord, names: list[bytes], path: bytes) -> FileInfo:
        with self.manifests.open(record) as m:
            node = lookup(m, names)
            if node.is_link:
                raise IsSymlink(path, node.target or b"")
            if not node.is_reg:
                raise IsDirectory(path, kind(node.mode))
            info = FileInfo(record, path, node, node.size, hexid(node.content or EMPTY_ID), m.chunk_size)
            if node.packed:
                info.pack = m.pack_ref(node)
            elif not node.inline and node.size:
                info.chunks = m.chunks(node.ino)
        return info

    def read_part(self, info: FileInfo, part: Part) -> bytes | memoryview:
        """The bytes of *part*, verified (a chunk against its id, a small file against its content id)."""
        if part.chunk is None:
            data = self._small_file(info)
            return memoryview(data)[part.start : part.start + part.length]
        c = part.chunk
        if c.cid is None:
            return bytes(part.length)  # a hole: zeros, nothing stored
        data = self.cache.read(c.cid, part.start, part.length, size=c.length)
        if len(data) != part.length:
            raise IntegrityError(f"chunk {c.idx} of {info.path.decode(errors='replace')} is shorter than its manifest says")
        return data

    def _small_file(self, info: FileInfo) -> bytes:
        """A small file's whole content (inline or a slice of a pack), verified; the last few kept in memory."""
        key = (info.record.manifest, info.node.content or b"")
        with self._lock:
            data = self._small.get(key)
            if data is not None:
                self._small.move_to_end(key)
                return data
        if info.node.inline:
            with self.manifests.open(info.record) as m:
                data = m.inline_data(info.node)  # verified against the content id
        else:
            assert info.pack is not None
            pack, offset = info.pack
            assert pack.cid is not None
            data = bytes(self.cache.read(pack.cid, offset, info.size, size=pack.length, place=pack.place))
            if len(data) != info.size or content_id(data) != info.node.content:
                raise IntegrityError(f"{info.path.decode(errors='replace')}: its bytes in pack {hexid(pack.cid)} "
                                     "do not match its content id")
        with self._lock:
            self._small[key] = data
            self._small_bytes += len(data)
            while self._small_bytes > self._small_max:
                self._small_bytes -= len(self._small.popitem(last=False)[1])
        return data

    def prefetch(self, info: FileInfo, part: Part, done: int, end: int) -> int:
        """Start fetching the :attr:`chunks_ahead` chunks after *part*'s (those after chunk *done*, none from byte
        *end* on: a range reader gets no read-ahead beyond its range); returns the last chunk started.

        Parts are one chunk at most: reading them ahead keeps only
        :attr:`read_ahead` chunks in flight.  The chunks themselves are fetched ahead into the
        cache (``BlobCache.prepare``: verified, kept in its bounded memory),
        as the daemon's read-ahead does, so the parts that follow are hits
        (:meth:`recall_part` on the event loop, for a chunk fetched so).
        """
        c = part.chunk
        if c is None:
            return done
        last = min(len(info.chunks) - 1, c.idx + self.chunks_ahead, (end - 1) // info.chunk_size)
        for j in range(max(done + 1, c.idx + 1), last + 1):
            nxt = info.chunks[j]
            if nxt.cid is not None:
                self.blobs.submit(self.cache.prepare, nxt.cid, size=nxt.length)
        return max(done, last)

    def recall_part(self, info: FileInfo, part: Part) -> memoryview | None:
        """*part*'s bytes if its chunk is in the blob cache's memory (verified bytes), else None.

        No I/O, no lock held for long: the event loop calls it before handing
        a part's read to the pool (a chunk read-ahead has fetched is there).
        """
        c = part.chunk
        if c is None or c.cid is None:
            return None
        data = self.cache.recall(c.cid, part.start, part.length, size=c.length)
        return data if data is not None and len(data) == part.length else None

    def iter_content(self, info: FileInfo, start: int = 0, end: int | None = None) -> Iterator[bytes | memoryview]:
        """Bytes ``[start, end)`` of a file, in order, parts read ahead on the blob pool (for archives: a thread)."""
        end = info.size if end is None else end
        parts = info.parts(start, end)
        ahead: collections.deque[Future[bytes | memoryview]] = collections.deque()
        done = -1
        try:
            while True:
                while len(ahead) < self.read_ahead:
                    p = next(parts, None)
                    if p is None:
                        break
                    ahead.append(self.blobs.submit(self.read_part, info, p))
                    done = self.prefetch(info, p, done, end)
                if not ahead:
                    return
                yield ahead.popleft().result()
        finally:
            for f in ahead:
                f.cancel()

    # -- diff ------------------------------------------------------------------

    def diff(self, a: VersionRecord, b: VersionRecord) -> list[tuple[str, bytes]]:
        """``(status, path)`` from *a* to *b*: from the records (format 2), else tree to tree."""
        from wsfs.versions.diff import diff, diff_versions

        items = diff_versions(self.repo, a, b)
        if items is not None:
            return list(items)
        with self.manifests.open(a) as ma, self.manifests.open(b) as mb:
            return list(diff(ma, mb))

    # -- archives --------------------------------------------------------------

    def archive(self, record: VersionRecord, names: list[bytes], put: Callable[[bytes], None]) -> None:
        """Write the subtree at *names* as a tar stream (PAX) to *put*, in pieces of about :data:`TAR_PIECE` bytes.

        Member names are paths from the version's root.  Directories come
        before their entries; a regular file's further names are hard links
        to its first name in the archive; symbolic links are stored as links;
        fifos and devices as such; modes (with setuid/setgid/sticky), owners
        and nanosecond mtimes (PAX) are kept.  Memory: one directory page per
        level of depth, the first name of each hard-linked file, and the
        pieces in flight.  Extended attributes go in PAX ``SCHILY.xattr.*`` records.
        """
        out = _Pipe(put)
        with self.manifests.open(record) as m:
            top = lookup(m, names)
            if top.is_link and names:
                raise IsSymlink(b"/".join(names), top.target or b"")
            tf = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                              encoding="utf-8", errors="surrogateescape")
            first: dict[int, str] = {}
            base = b"/".join(names)
            xattrs = m.has_xattrs()  # else no entry is asked for its own
            try:
                for path, node in _walk(m, top, base):
                    self._add(tf, m, record, path, node, first, xattrs)
                tf.close()
            except BaseException:
                # A failed or abandoned archive ends here: its tar stream must not try to write its
                # end when it is collected (the consumer is gone).
                tf.closed = True
                tf.fileobj.closed = True  # type: ignore[attr-defined]
                raise
        out.flush()

    def _add(self, tf: tarfile.TarFile, m: Manifest, record: VersionRecord, path: bytes, node: Inode,
             first: dict[int, str], xattrs: bool) -> None:
        name = path.decode("utf-8", "surrogateescape")
        ti = tarfile.TarInfo(name + "/" if node.is_dir else name)
        if xattrs:
            # The PAX keys GNU tar (--xattrs) and bsdtar read; values are bytes (hdrcharset=BINARY if not UTF-8).
            for k, v in m.xattrs(node.ino).items():
                ti.pax_headers["SCHILY.xattr." + k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        ti.mode = stat.S_IMODE(node.mode)
        ti.uid, ti.gid = node.uid, node.gid
        ti.uname = ti.gname = ""
        ti.mtime = node.mtime_ns / 1e9
        if node.mtime_ns % 1_000_000_000:
            ti.pax_headers["mtime"] = f"{node.mtime_ns // 1_000_000_000}.{node.mtime_ns % 1_000_000_000:09d}"
        if node.is_reg and node.nlink > 1 and node.ino in first:
            ti.type, ti.linkname = tarfile.LNKTYPE, first[node.ino]
            tf.addfile(ti)
            return
        if node.is_dir:
            ti.type = tarfile.DIRTYPE
        elif node.is_link:
            ti.type, ti.linkname = tarfile.SYMTYPE, (node.target or b"").decode("utf-8", "surrogateescape")
        elif stat.S_ISFIFO(node.mode):
            ti.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(node.mode) or stat.S_ISBLK(node.mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(node.mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(node.rdev), os.minor(node.rdev)
        elif node.is_reg:
            if node.nlink > 1:
                first[node.ino] = name
            info = FileInfo(record, path, node, node.size, hexid(node.content or EMPTY_ID), m.chunk_size)
            if node.packed:
                info.pack = m.pack_ref(node)
            elif not node.inline and node.size:
                info.chunks = m.chunks(node.ino)
            ti.size = node.size
            tf.addfile(ti, _Reader(self.iter_content(info)))
            return
        else:
            return  # a socket: tar has no type for it
        tf.addfile(ti)


def _walk(m: Manifest, top: Inode, base: bytes) -> Iterator[tuple[bytes, Inode]]:
    """*top* (unless it is the root) and every entry below it, parents first, one directory page per level."""
    if base:
        yield base, top
    if not top.is_dir:
        return
    stack: list[tuple[int, bytes, int]] = [(top.ino, base, 0)]  # (directory, its path, readdir cursor)
    while stack:
        ino, dpath, cursor = stack.pop()
        page = m.readdir(ino, cursor, 256)
        if not page:
            continue
        stack.append((ino, dpath, page[-1][0]))
        for i, (_, name, node) in enumerate(page):
            path = dpath + b"/" + name if dpath else name
            yield path, node
            if node.is_dir:
                # Descend now (depth first): the rest of this page is read again from its cursor.
                stack[-1] = (ino, dpath, page[i][0])
                stack.append((node.ino, path, 0))
                break


class _Pipe:
    """A write-only file for tarfile: bytes gathered into pieces handed to *put*."""

    def __init__(self, put: Callable[[bytes], None]) -> None:
        self.put = put
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        while len(self.buf) >= TAR_PIECE:
            self.put(bytes(self.buf[:TAR_PIECE]))
            del self.buf[:TAR_PIECE]
        return len(data)

    def flush(self) -> None:
        if self.buf:
            self.put(bytes(self.buf))
            self.buf.clear()


class _Reader:
    """A read-only file over an iterator of byte pieces (a file's verified content), for ``tarfile.addfile``."""

    def __init__(self, pieces: Iterator[bytes | memoryview]) -> None:
        self.pieces = pieces
        self.buf = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if not self.buf:
                nxt = next(self.pieces, None)
                if nxt is None:
                    break
                self.buf = memoryview(nxt)
            take = len(self.buf) if n < 0 else min(len(self.buf), n - len(out))
            out += self.buf[:take]
            self.buf = self.buf[take:]
        return bytes(out)


class ArchiveStream:
    """A tar archive built by a thread of its own, received piece by piece (bounded: :data:`TAR_PIECES_AHEAD`).

    The consumer calls :meth:`get` (blocking; run it on a pool) until it
    returns None; an error in the builder is raised there.  :meth:`close`
    stops the builder (a client that went away).
    """

    def __init__(self, backend: Backend, record: VersionRecord, names: list[bytes]) -> None:
        self.q: queue.Queue[tuple[bytes | None, BaseException | None]] = queue.Queue(TAR_PIECES_AHEAD)
        self.stop = threading.Event()
        self.backend = backend
        self.thread = threading.Thread(target=self._run, args=(record, names), name="wsfs-serve-tar", daemon=True)

    def start(self) -> None:
        """Start building."""
        self.thread.start()

    def _put(self, item: tuple[bytes | None, BaseException | None]) -> None:
        # A consumer that takes nothing for this long is gone without closing (a response abandoned before
        # its body started never runs its cleanup): the builder stops and frees its slot.
        deadline = time.monotonic() + CONSUMER_TIMEOUT
        while True:
            if self.stop.is_set() or time.monotonic() > deadline:
                raise _Stopped
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _run(self, record: VersionRecord, names: list[bytes]) -> None:
        try:
            self.backend.archive(record, names, lambda b: self._put((b, None)))
            self._put((None, None))
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            try:
                self._put((None, e))
            except _Stopped:
                pass
        finally:
            self.backend.archives.release()

    def get(self) -> bytes | None:
        """The next piece (blocking), None at the end or once closed; the builder's error is raised here."""
        while True:
            try:
                piece, err = self.q.get(timeout=0.2)
                break
            except queue.Empty:
                if self.stop.is_set():
                    return None
        if err is not None:
            raise err
        return piece

    def close(self) -> None:
        """Stop the builder (its client is gone or done); it frees its slot within 0.2 s.

        Never blocks, so it can run on the event loop: a cleanup handed to a
        pool from a cancelled request would itself be cancelled before it ran
        (an asyncio future cancels the pool's future it wraps), and the
        builder would hold its slot until :data:`CONSUMER_TIMEOUT`.
        """
        self.stop.set()


class _Stopped(Exception):
    """The consumer of an archive went away."""


def record_json(record: VersionRecord, tags: list[str] | None = None) -> dict[str, Any]:
    """A version record as the API shows it (the stored record's fields)."""
    d = asdict(record)
    if tags is not None:
        d["tags"] = sorted(tags)
    return d
