"""A version's tree: attributes, entries, link targets, bytes (a :class:`~wsfs.daemon.tree.Tree`).

:class:`VersionView` holds the format and cache knowledge the FUSE adapter
must not have: manifest rows as attributes, where a file's bytes are (inline
in the manifest, a slice of a pack, or chunks in the blob cache), how a byte
range maps onto chunks, read-ahead, and which calls may block.  It knows no
FUSE type: ``ops`` builds the kernel's replies, with the timeouts of the
mount's ``policy.CachePolicy``.

Threading: the manifest's apsw connection is used on the trio thread only.
Its queries are indexed point and range lookups that cost a few
microseconds, less than a hop to a worker thread (measured in
``docs/daemon.md``).  Blob reads that miss the cache, or that need a first
verification, run in worker threads under ``limiter``; reads of an already
verified cache file are a single ``pread`` on the trio thread.

Deadlines: every wait of a FUSE operation (a blob read in a worker thread,
a history mount opening a version) runs under the operation's
:class:`Deadline`, ``-o timeout=`` / ``$WSFS_OP_TIMEOUT`` (default 30 s).
A read that has not got its bytes by then answers ``ETIMEDOUT`` and the
mount goes on serving the rest.  A worker thread blocked in the store cannot
be interrupted, so it is abandoned and finishes on its own (the store's
request budget bounds it): its result, if any, still lands in the cache.
Until it finishes it keeps its limiter slot, which bounds how many such
threads can exist, and a later read of the same blob waits for it instead
of starting another thread.  At shutdown :meth:`Deadline.stop` ends every
wait at once.

Immutable data makes every cache here safe without invalidation: a version
never changes while it is mounted (every answer is ``Lifetime.FIXED``).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from wsfs.cache import BlobCache
from wsfs.daemon.packs import PackWindow, runs
from wsfs.daemon.profile import AccessRecorder
from wsfs.daemon.tree import FsStats, Lifetime, Provisional
from wsfs.daemon.tree import NotReady as NotReady  # where it used to live
from wsfs.errors import IntegrityError, InvalidArgument, IsADirectory, NotADirectory, StoreTimeout, WsfsError
from wsfs.format.blobs import content_id, hexid
from wsfs.format.manifest import ROOT_INO, Chunk, Inode, Manifest, Place, decode_inline
from wsfs.store.base import DEFAULT_TIMEOUT

log = logging.getLogger(__name__)

# The kernel's read-ahead for the mount (read_ahead_kb of its backing device,
# 128 KiB by default).  The kernel reads a sequential stream in FUSE READs of
# up to twice this, capped by the connection's max_pages (1 MiB with libfuse3's
# buffer): at 512 KiB a cold `cat` arrives as 1 MiB READs instead of 256 KiB
# ones, a quarter of the round trips.  It also sizes the read-around of mmap
# page faults, so it is no larger than that.  Set by daemon.mount.raise_kernel_readahead.
KERNEL_READAHEAD_KIB = 512

_SMALL_CACHE_BYTES = 32 * 1024 * 1024  # decoded inline files kept in memory
INLINE_DECODE_ON_LOOP = 256 * 1024  # larger inline files are decoded in a worker thread
_CHUNK_LISTS = 1024  # chunk lists of large files kept in memory
_NODES = 4096  # Inode rows kept for read()
_PREPARED = 65536  # chunk ids remembered as already read ahead
_SEQ_FILES = 4096  # files whose sequential-read state is remembered
# Read-ahead starts once a sequential run covers this much.  The kernel's own
# read-ahead turns one small read at the start of a file into up to 256 KiB of
# FUSE reads (a random read elsewhere is read as it is); 1 MiB of run is well
# past that, so a random read fetches one chunk.
READAHEAD_MIN_RUN = 1 << 20
READAHEAD_MAX_CHUNKS = 8  # the window doubles with the run up to this many chunks ahead
READAHEAD_THREADS = 6  # chunks read ahead at once (the limiter below)
# Packs of listed directories fetched at once (format 2): small blobs, many per
# tree walk, so the round trip rather than the bytes limits them.
PACK_PREFETCH_THREADS = 24
# A file stored as one chunk of at most this size is fetched in the background
# as soon as its directory is listed: a tree walk (tar, cp -r, rsync, a build)
# then finds it ready instead of paying one store round trip per such file in
# series.  Bounded by the read-ahead limiter and _SMALL_PREFETCH_PENDING.
SMALL_PREFETCH_MAX = 1 << 20
_SMALL_PREFETCH_PENDING = 512  # listed-file prefetches waiting or running at once; more are skipped
# After the store failed to answer for a blob, reads of it fail at once for this long (see _fetch).
TIMED_OUT_MEMORY = 5.0
_TIMED_OUT = 4096  # blobs remembered as timed out


class _LRU(collections.OrderedDict[Any, Any]):
    """A tiny LRU keyed by inode; ``limit`` in entries or, with ``weigh``, in bytes."""

    def __init__(self, limit: int, weigh: Callable[[Any], int] | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.weigh = weigh
        self.weight = 0

    def get_(self, key: Any) -> Any:
        value = super().get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        w = self.weigh(value) if self.weigh else 1
        if w > self.limit:
            return
        if key in self:
            self.weight -= self.weigh(self[key]) if self.weigh else 1
        self[key] = value
        self.move_to_end(key)
        self.weight += w
        while self.weight > self.limit:
            _, old = self.popitem(last=False)
            self.weight -= self.weigh(old) if self.weigh else 1


class Deadline:
    """The time limit of a FUSE operation's waits, and the switch that ends them all at shutdown.

    Shared by a mount's views and its ``Operations`` adapter: the one place
    where an operation's waiting is bounded.  Code with nothing to wait for
    (a manifest query, a verified cache hit) never enters it and pays nothing.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, *, label: str = "") -> None:
        self.timeout = timeout
        self.label = label
        self.stopping = False
        self.timeouts = 0  # operations that ran out of time
        self._scopes: set[trio.CancelScope] = set()
        self._logged = -60.0  # when a timeout was last logged

    async def run(self, what: str, wait: Callable[[], Awaitable[Any]]) -> Any:
        """``await wait()``, abandoned after :attr:`timeout` seconds (``StoreTimeout``, ETIMEDOUT)."""
        with trio.CancelScope(deadline=trio.current_time() + self.timeout) as scope:
            if self.stopping:
                scope.cancel()
            self._scopes.add(scope)
            try:
                return await wait()
            finally:
                self._scopes.discard(scope)
        if self.stopping:
            raise _Stopping(f"{what}: the mount is stopping")
        self.timeouts += 1
        now = time.monotonic()
        if now - self._logged >= 10.0:  # a reader retrying in a loop must not flood the log
            self._logged = now
            log.warning("%s: %s did not finish within %g s (the store is not answering); answering ETIMEDOUT "
                        "(%d so far)", self.label, what, self.timeout, self.timeouts)
        raise StoreTimeout(f"{what} did not finish within {self.timeout:g} s")

    def stop(self) -> None:
        """End every wait now (they answer ENOTCONN), and any that starts later at once."""
        self.stopping = True
        for scope in list(self._scopes):
            scope.cancel()


class VersionView:
    """One immutable version: a manifest plus the blob cache that holds its large files.

    Methods raise :class:`~wsfs.errors.WsfsError` subclasses (``NotFound`` ->
    ENOENT, ``IntegrityError`` -> EIO, ...); the adapter turns them into errno.
    Attributes are the manifest's ``Inode`` rows as they are.
    """

    listings_change = False  # a version never changes

    def __init__(
        self,
        manifest: Manifest,
        cache: BlobCache,
        *,
        label: str,
        stats: dict[str, int] | None = None,
        limiter: trio.CapacityLimiter | None = None,
        small_cache_bytes: int = _SMALL_CACHE_BYTES,
        deadline: Deadline | None = None,
    ) -> None:
        self.manifest = manifest
        self.cache = cache
        self.label = label  # "ws@v", for log messages
        self.chunk_size = manifest.chunk_size
        self.tree_stats = stats or {}
        # Worker threads for blob reads that miss (each may hold a store GET;
        # the cache bounds concurrent GETs itself, to 8), and a smaller pool for
        # read-ahead so it never crowds out reads someone is waiting for.  Six
        # read-ahead GETs in flight keep a 20 ms round trip from limiting a
        # sequential read (4 gave 13% less there, bench/bench_seq_read.py).
        self.limiter = limiter or trio.CapacityLimiter(16)
        self.readahead_limiter = trio.CapacityLimiter(READAHEAD_THREADS)
        self.pack_limiter = trio.CapacityLimiter(PACK_PREFETCH_THREADS)
        self._pack_window = PackWindow()  # read-ahead of packs in pack order, as a walk lists directories
        self.deadline = deadline or Deadline(label=label)
        # blobs whose read ran out of time while its worker thread still runs (see _fetch)
        self._stuck: dict[bytes, trio.Event] = {}
        self._timed_out = _LRU(_TIMED_OUT)  # blob -> when the store last failed to answer for it
        self.nursery: trio.Nursery | None = None  # set by the daemon; enables read-ahead
        # False: the adapter tells the kernel to stop asking; None: not known yet (an index still being built)
        self._has_xattrs: bool | None = manifest.has_xattrs()
        self.recorder: AccessRecorder | None = None  # set by the daemon: chunks read, for the access profile
        self._parents: dict[int, int] = {ROOT_INO: ROOT_INO}  # dir ino -> parent, learnt from lookups
        self._dir_end: dict[int, int] = {}  # dir ino -> cursor of its last entry, once a listing got there
        self._small = _LRU(small_cache_bytes, len)
        self._chunks = _LRU(_CHUNK_LISTS)
        self._nodes = _LRU(_NODES)
        # ino -> (start of the current sequential run, end of the last read)
        self._seq = _LRU(_SEQ_FILES)
        self._reported: dict[bytes, float] = {}  # blob -> when its read failure was last logged
        self._prefetching: set[bytes] = set()  # read-ahead in progress
        self._prepared = _LRU(_PREPARED)  # chunks read-ahead already made ready
        self.small_prefetch_max = SMALL_PREFETCH_MAX  # 0: do not prefetch listed files (nor their packs)
        # Called with a directory's inode when the kernel lists it from the start
        # (set by the daemon: the page-cache preload, daemon/preload.py).
        self.listed_hook: Callable[[int], None] | None = None
        # True while someone else (the preload helper) fetches the packs of the
        # directories the listed hook is told about: the daemon then leaves them alone.
        self.packs_elsewhere: Callable[[], bool] = lambda: False

    @property
    def has_xattrs(self) -> bool | None:
        """Whether any entry has an extended attribute (None while the index is still being built)."""
        if self._has_xattrs is None:
            self._has_xattrs = self.manifest.has_xattrs()
        return self._has_xattrs

    @property
    def index_ready(self) -> bool:
        """Whether every query can be answered now (False while an index is still being built, see
        ``daemon/building.py``: then what would wait for it, such as prefetches, is left out)."""
        return getattr(self.manifest, "ready", True)

    # -- attributes --------------------------------------------------------

    def lifetime(self, node: Inode) -> Lifetime:
        """Every entry of a version and its attributes hold for the whole mount (a stand-in given while the
        index is built, :class:`~wsfs.daemon.tree.Provisional`, for no time)."""
        return Lifetime.PROVISIONAL if isinstance(node, Provisional) else Lifetime.FIXED

    def miss_lifetime(self, parent: int) -> Lifetime:
        """Every directory of a version is immutable, so a miss holds as long as a hit."""
        return Lifetime.FIXED

    def getattr(self, ino: int) -> Inode:
        node = self._nodes.get_(ino)
        if node is None:
            node = self.manifest.getattr(ino)  # NotFound for an unknown inode
            self._nodes.put(ino, node)
        return node

    def lookup(self, parent: int, name: bytes) -> Inode | None:
        """The entry *name* of directory *parent*, or None if there is none."""
        if name == b".":
            return self.getattr(parent)
        if name == b"..":
            return self.getattr(self._parents.get(parent, ROOT_INO))
        node = self.manifest.lookup(parent, name)
        if node is None:
            if not self.getattr(parent).is_dir:
                raise NotADirectory(f"inode {parent} is not a directory")
            return None
        if node.is_dir:
            self._parents[node.ino] = parent
        return node

    def opendir(self, ino: int) -> None:
        if not self.getattr(ino).is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")

    def readdir(self, ino: int, after: int, limit: int) -> list[tuple[int, bytes, Inode]]:
        """Up to *limit* ``(cursor, name, inode)`` after cursor *after* (0 = from the start)."""
        if after and self._dir_end.get(ino) == after:
            # The kernel's last READDIRPLUS of a listing, past the last entry
            # (it stops only at an empty reply): one per directory, no query.
            return []
        entries = self.manifest.readdir(ino, after, limit)
        if len(entries) < limit or limit < 0:
            self._dir_end[ino] = entries[-1][0] if entries else after
        if entries and not after and self.listed_hook is not None:
            # With the first reply, early enough for the helper to beat the
            # lister's first read of the files; it retries a file whose inode
            # the kernel has not created yet (it does so while the lister
            # parses the reply).
            self.listed_hook(ino)
        if not self.index_ready:
            # An index still being built answers this listing from its first rows; pack places and chunk
            # lists come with the finished index (the preload helper starts then, and is told of this one).
            for _, _, node in entries:
                if node.is_dir:
                    self._parents[node.ino] = ino
            return entries
        packs_here = self.small_prefetch_max and not self.packs_elsewhere()
        packs: dict[int, Chunk] = {}  # row -> pack of the listed small files, to prefetch
        for _, _, node in entries:
            if node.is_dir:
                self._parents[node.ino] = ino
            elif node.packed:
                # A listed directory's small files are read next (ls -l, tar, an
                # editor's project scan): their packs start coming now.
                if packs_here and node.pack not in packs and len(self._prefetching) < _SMALL_PREFETCH_PENDING:
                    packs[node.pack or 0] = self.manifest.pack_ref(node)[0]
            elif node.is_reg and node.data is None and 0 < node.size <= self.small_prefetch_max:
                self._prefetch_listed(node)
        if packs:
            for r in self._pack_window.advance(max(packs)):  # and the packs a walk lists next
                pack = self.manifest.pack_row(r)
                if pack is None:
                    break
                packs.setdefault(r, pack)
            self._prefetch_packs(packs)
        return entries

    def readlink(self, ino: int) -> bytes:
        node = self.getattr(ino)
        if not node.is_link or node.target is None:
            raise InvalidArgument(f"inode {ino} is not a symbolic link")
        return node.target

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return self.manifest.xattrs(ino)

    def open(self, ino: int) -> Inode:
        node = self.getattr(ino)
        if stat.S_ISDIR(node.mode):
            raise IsADirectory(f"inode {ino} is a directory")
        return node

    def statfs(self) -> FsStats:
        """Totals of the version; nothing is free on a read-only file system."""
        return FsStats(
            blocks=(int(self.tree_stats.get("bytes", 0)) + 4095) // 4096,
            files=sum(int(self.tree_stats.get(k, 0)) for k in ("files", "dirs", "symlinks", "specials")),
        )

    # -- reading -----------------------------------------------------------

    async def read(self, ino: int, off: int, size: int) -> bytes | memoryview:
        """Up to *size* bytes of regular file *ino* from *off* (short only at end of file)."""
        node = self.getattr(ino)
        if not node.is_reg:
            raise InvalidArgument(f"inode {ino} is not a regular file")
        end = min(node.size, off + size)
        if off >= end:
            return b""
        if node.inline:
            return (await self._inline(node))[off:end]
        if node.packed:
            return (await self._packed(node))[off:end]
        chunks = self._chunk_list(node)
        # Before any await: the kernel sends several READs of a sequential
        # stream at once, and they must be seen in the order they arrive.
        self._read_ahead(node, chunks, off, end)
        cs = self.chunk_size
        ranges = []
        for idx in range(off // cs, (end - 1) // cs + 1):
            c = chunks[idx]
            if self.recorder is not None and c.cid is not None:
                # Large files' chunks only: a small file's pack comes with its directory's listing.
                self.recorder.record(c.cid)
            base = idx * cs
            a, b = max(off, base) - base, min(end, base + c.length) - base
            ranges.append((c, a, b - a))
        pieces = []
        for i, (c, a, n) in enumerate(ranges):
            data = self._ready(node, c, a, n)
            if data is None:  # something to wait for: the rest of the read runs under the deadline
                rest = functools.partial(self._fetch_ranges, node, ranges[i:])
                pieces.extend(await self.deadline.run(f"read of inode {ino}", rest))
                break
            pieces.append(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _inline(self, node: Inode) -> bytes:
        data = self._small.get_(node.ino)
        if data is None:
            row = self.manifest.inline_payload(node)  # a point query: on this thread, which owns the connection
            if node.size <= INLINE_DECODE_ON_LOOP:
                # Decompress + blake3 of at most 128 KiB (the default inline
                # threshold): tens of microseconds, cheaper here than a thread hop.
                data = decode_inline(node, *row)  # verified; IntegrityError if not
            else:
                # A repository with a larger threshold: megabytes of decoding
                # must not stall every other request behind it.
                data = await trio.to_thread.run_sync(decode_inline, node, *row, limiter=self.limiter)
            self._small.put(node.ino, data)
        return data

    async def _packed(self, node: Inode) -> bytes:
        """A small file of a format 2 version: its slice of a pack (a blob, cached like a chunk), verified."""
        data = self._small.get_(node.ino)
        if data is None:
            pack, offset = self.manifest.pack_ref(node)
            got = self._ready(node, pack, offset, node.size)
            if got is None:
                got = await self.deadline.run(
                    f"read of inode {node.ino}", functools.partial(self._fetch, node, pack, offset, node.size)
                )
            data = bytes(got)
            if content_id(data) != node.content:
                raise IntegrityError(f"inode {node.ino}: its bytes in pack {hexid(pack.cid)} do not match its content id")
            self._small.put(node.ino, data)
        return data

    def _chunk_list(self, node: Inode) -> list[Chunk]:
        chunks = self._chunks.get_(node.ino)
        if chunks is None:
            chunks = self.manifest.chunks(node.ino)
            self._chunks.put(node.ino, chunks)
        return chunks

    def _ready(self, node: Inode, c: Chunk, start: int, length: int) -> bytes | memoryview | None:
        """A range of chunk *c* available without waiting (a hole, memory, a verified file), else None."""
        cid = c.cid
        if cid is None:
            return bytes(length)  # a hole: all zeros, nothing stored
        data = self.cache.try_read(cid, start, length, size=c.length)
        if data is not None and len(data) != length:
            raise _IOError(f"chunk {c.idx} of inode {node.ino} is shorter than the manifest says")
        return data

    async def _fetch_ranges(self, node: Inode, ranges: list[tuple[Chunk, int, int]]) -> list[bytes | memoryview]:
        out = []
        for c, a, n in ranges:
            data = self._ready(node, c, a, n)
            out.append(data if data is not None else await self._fetch(node, c, a, n))
        return out

    async def _fetch(self, node: Inode, c: Chunk, start: int, length: int) -> bytes | memoryview:
        """A range of chunk *c* read in a worker thread: fetched, or verified on first use.

        The thread is abandoned if the operation's deadline passes; it keeps
        its limiter slot until it ends.  Until then, and for
        ``TIMED_OUT_MEMORY`` seconds after the store itself gave up on the
        blob, a read of the same blob fails at once with ``ETIMEDOUT``
        instead of waiting a second time or starting another thread: a
        reader retrying in a loop against a hung store adds no threads, and
        the kernel's retry of a failed read-ahead (a second READ of the same
        page, sent at once) does not double the time the application waits
        (617 s instead of 308 s before deadlines).  Once the thread ends, the
        blob is in the cache or a later read asks the store again.
        """
        cid = c.cid
        assert cid is not None
        if cid in self._stuck:
            raise StoreTimeout(f"blob {hexid(cid)} is still awaited from the store after a read of it timed out")
        failed_at = self._timed_out.get_(cid)
        if failed_at is not None and time.monotonic() - failed_at < TIMED_OUT_MEMORY:
            raise StoreTimeout(f"blob {hexid(cid)}: the store did not answer for it a moment ago")
        finished = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def work() -> bytes | memoryview:
            timed_out = False
            try:
                return self.cache.read(cid, start, length, size=c.length, place=c.place)
            except StoreTimeout:
                timed_out = True
                raise
            finally:
                with contextlib.suppress(trio.RunFinishedError):  # the mount ended meanwhile
                    token.run_sync_soon(self._thread_done, cid, finished, timed_out)

        try:
            data = await trio.to_thread.run_sync(work, limiter=self.limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            if not finished.is_set():
                self._stuck[cid] = finished
            raise
        except WsfsError as e:
            # Once per blob and minute: a reader retrying in a loop must not flood the log.
            now = time.monotonic()
            if now - self._reported.get(cid, -60.0) >= 60.0:
                self._reported[cid] = now
                log.error("%s: read of inode %d (chunk %d, blob %s) failed: %s",
                          self.label, node.ino, c.idx, hexid(cid), e)
            raise
        if len(data) != length:
            raise _IOError(f"chunk {c.idx} of inode {node.ino} is shorter than the manifest says")
        return data

    def _thread_done(self, cid: bytes, finished: trio.Event, timed_out: bool) -> None:
        """(trio thread) A blob read's worker thread has ended, abandoned or not."""
        finished.set()
        if self._stuck.get(cid) is finished:
            del self._stuck[cid]
        if timed_out:
            self._timed_out.put(cid, time.monotonic())

    def _read_ahead(self, node: Inode, chunks: list[Chunk], off: int, end: int) -> None:
        """Prepare the next chunks in the background while a file is read sequentially.

        A read continues a sequential run if it starts where the previous read
        of the inode ended.  Once the run covers ``READAHEAD_MIN_RUN``, the
        chunks after the current one are prepared in parallel (bounded by the
        read-ahead limiter), the window growing with the run: 1 chunk ahead,
        then as many chunks as the run is long, up to ``READAHEAD_MAX_CHUNKS``.
        A random read fetches only what it needs.  "Prepare" is a fetch if the
        chunk is not cached, and the first-use verification (a blake3 of the
        whole chunk) if it is: either way the reader later finds it ready for
        a plain ``pread``.
        """
        prev = self._seq.get_(node.ino)
        run_start = prev[0] if prev is not None and prev[1] == off else off
        self._seq.put(node.ino, (run_start, end))
        run = end - run_start
        if run < READAHEAD_MIN_RUN or self.nursery is None:
            return
        window = min(READAHEAD_MAX_CHUNKS, 1 + run // self.chunk_size)
        cur = (end - 1) // self.chunk_size
        for nxt in range(cur + 1, min(len(chunks), cur + 1 + window)):
            self._start_prefetch(chunks[nxt])

    def _prefetch_listed(self, node: Inode) -> None:
        """A one-chunk file was just listed: fetch it in the background (see SMALL_PREFETCH_MAX)."""
        if self.nursery is None or len(self._prefetching) >= _SMALL_PREFETCH_PENDING:
            return
        chunks = self._chunk_list(node)
        if len(chunks) == 1:
            self._start_prefetch(chunks[0])

    def _prefetch_packs(self, packs: dict[int, Chunk]) -> None:
        """Prepare these packs (by row) in the background: neighbours in a segment with one GET each run."""
        if self.nursery is None:
            return
        todo = (p for _, p in sorted(packs.items())
                if p.cid is not None and p.cid not in self._prefetching and not self._prepared.get_(p.cid))
        for run in runs(todo):
            self._start_pack_run(run)

    def _start_pack_run(self, run: list[Chunk]) -> None:
        assert self.nursery is not None
        for pack in run:
            self._prefetching.add(pack.cid)  # type: ignore[arg-type]
        self.nursery.start_soon(self._prefetch_run, run)

    async def _prefetch_run(self, run: list[Chunk]) -> None:
        try:
            # abandon_on_cancel: as _prefetch (nobody waits; the effect is installed cache files).
            got = await trio.to_thread.run_sync(
                lambda: self.cache.prepare_run(run), limiter=self.pack_limiter, abandon_on_cancel=True
            )
            for pack, data in zip(run, got, strict=True):
                if data is not None:
                    self._prepared.put(pack.cid, True)
        except Exception as e:  # noqa: BLE001 - as _prefetch: best effort, never the mount's end
            log.debug("read-ahead of %d packs failed: %r", len(run), e)
        finally:
            for pack in run:
                self._prefetching.discard(pack.cid)  # type: ignore[arg-type]

    def _start_prefetch(self, c: Chunk, limiter: trio.CapacityLimiter | None = None) -> None:
        """Prepare chunk *c* in the background unless it is a hole, ready, or already on its way."""
        cid = c.cid
        if cid is None or cid in self._prefetching or self._prepared.get_(cid) or self.nursery is None:
            return
        self._prefetching.add(cid)
        self.nursery.start_soon(self._prefetch, cid, c.length, limiter or self.readahead_limiter, c.place)

    async def _prefetch(
        self, cid: bytes, length: int, limiter: trio.CapacityLimiter, place: Place | None = None
    ) -> None:
        try:
            # abandon_on_cancel: a read-ahead has no caller waiting, and its only
            # effect (an atomically installed cache file) is harmless if it finishes late.
            await trio.to_thread.run_sync(
                lambda: self.cache.prepare(cid, size=length, place=place),
                limiter=limiter,
                abandon_on_cancel=True,
            )
            self._prepared.put(cid, True)
        except Exception as e:  # noqa: BLE001 - a read-ahead must never end the mount; the read reports it
            log.debug("read-ahead of %s failed: %r", cid.hex()[:16], e)
        finally:
            self._prefetching.discard(cid)


class _IOError(WsfsError):
    """Bytes that do not fit the manifest (EIO)."""


class _Stopping(WsfsError):
    """A wait ended by the daemon's shutdown (ENOTCONN, what the kernel answers once the daemon is gone)."""

    errno = errno.ENOTCONN
