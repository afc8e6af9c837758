"""The local blob cache, shared by every mount (and every process) on a host.

What it owns: ``<cache_dir>/blobs/<id[:2]>/<id>`` content files (plaintext,
readable with ``pread``), the index ``<cache_dir>/blobs/index.sqlite`` (apsw,
WAL) that records each file's size and last use, LRU eviction down to a byte
limit, and single-flight fetching.  It imports ``repository``, ``format`` and
``errors`` only, and knows nothing of FUSE or trio: the API is synchronous
and thread-safe, and the daemon calls it from worker threads
(``trio.to_thread.run_sync`` with a ``CapacityLimiter``).

Invariants and protocol (see ``docs/daemon.md``, "Cache"):

* A content file that exists under its final name is complete: it is written
  to a temporary name in the same directory and renamed into place only after
  the bytes were verified against their blake3 id (``Repository.get_blob``
  verifies).  A crash leaves at most a stray ``.tmp`` file, named with the
  writer's pid: the first process to write into its directory later removes
  it if that pid is dead (``_tidy``; ``wsfs fsck --cache`` sweeps them all).
* Private: directories 0700, files 0600 (``wsfs.localfs``), whatever the
  umask; the chunks of a 0600 file are no more readable here than there.
* Files are never fsynced.  Instead, every process verifies a content file
  (size and blake3) the first time it uses it, and checks its size on every
  open.  A file that fails is removed and fetched again, so a torn write
  after a power loss, bit rot or a stray edit costs one refetch, never bad
  bytes.  "Verified" is remembered per (id, inode, ctime, size): an edit
  whose mtime was restored still changes the ctime.  blake3 of a 4 MiB
  chunk costs 0.68-0.75 ms on the 2-core test VM (~5.3 GiB/s, one thread),
  once per chunk per process.
* Single-flight: within a process, a dict of in-flight fetches (id -> a
  ``_Flight`` with a ``threading.Event``) makes concurrent misses on one id
  wait for the first.  Across processes, the fetcher holds an ``flock`` on
  ``<id>.lock`` next to the content file and re-checks for the file once it
  holds it.  The holder unlinks the lock file before releasing it, and a
  waiter that wakes holding an unlinked lock file retries, so lock files do
  not accumulate and two holders can never coexist.
* Write-behind: a fetch returns its verified bytes at once and hands them,
  with its lock, to one writer thread, which installs the content file
  (temporary name, rename), releases the lock, then indexes it and evicts
  (the blobs queued meanwhile with it: one transaction for up to
  ``_WRITE_BATCH``).  Meanwhile the bytes are served from memory.  At most
  ``pending_bytes`` wait to be written (fetches block beyond that);
  :meth:`BlobCache.drain` waits for the writes of the fetches made so far.
  A failed write costs the local copy only.
* Memory: the last verified blobs (fetched, or read whole for a first-use
  verification), up to ``memory_bytes``, are kept and served without
  touching their files; a blob in memory is verified bytes, whatever has
  happened to its file since.
* Content files of 256 KiB or more are written with ``O_DIRECT`` when the
  file system allows it: the daemon's reader gets the same bytes through
  the FUSE page cache, so caching the file's pages too would only cost a
  copy into fresh pages (most of a fetch's CPU) and memory.
* The file system is the truth for *presence*; the index is the truth for
  *eviction order*.  Index rows may briefly disagree with the files (a crash
  between rename and insert, an eviction racing a refetch); a hit upserts its
  row and a miss on an indexed id deletes it, so the index heals itself.
* Eviction deletes index rows in one transaction, then unlinks the files.
  A reader in another process that already opened a file keeps reading it
  (unlinked files stay readable); one that had not yet opened it sees a miss
  and refetches.
* Last-use updates are batched in memory and written by :meth:`BlobCache.flush`
  (called by every fetch and periodically by the daemon), so a cache hit
  costs no database write.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import logging
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import apsw

from wsfs.errors import IntegrityError, NotFound, WsfsError
from wsfs.format.blobs import content_id, hexid, is_hexid
from wsfs.format.manifest import Chunk, Place
from wsfs.localfs import PRIVATE_DIR, private_dir, private_file, remove_stale, tighten, touch_private
from wsfs.repository import Repository

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 10 * 1024**3
DEFAULT_FETCH_WORKERS = 8
# Blobs of at most SMALL_BLOB bytes (packs of small files, format 2 pieces) are
# fetched under their own, wider bound: what limits a cold tree walk is how
# many of them are in flight per round trip, and each holds little memory.
SMALL_BLOB = 1 << 20
SMALL_FETCH_WORKERS = 32
# Verified blobs kept in memory after a fetch or a first-use verification, so
# the reads that follow (a sequential reader, read-ahead running ahead of it)
# are served without touching the content file.  More than the daemon's
# read-ahead window (8 chunks of 4 MiB).
DEFAULT_MEMORY_BYTES = 48 * 1024**2
# Fetched blobs waiting to be written (in memory meanwhile): fetching waits beyond this.
DEFAULT_PENDING_BYTES = 32 * 1024**2
# Content files of at least this size are written with O_DIRECT (see BlobCache._write_direct),
# in whole blocks of _DIRECT_ALIGN bytes (a multiple of every usual logical block size).
_DIRECT_MIN = 256 * 1024
_DIRECT_ALIGN = 4096
# A temporary content file (".<id>.<pid>.<thread>.tmp") older than this is a
# leftover even if a process with its pid runs (writing one takes milliseconds).
TMP_MAX_AGE = 3600.0
BROKEN_TTL = 30.0  # seconds a failed id fails fast before the store is asked again
_TOUCH_BATCH = 512  # pending last-use updates that force a flush
_WRITE_BATCH = 16  # fetched blobs the writer thread installs and indexes in one transaction, at most

# The cache index.  One row per content file believed to be in the cache.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,        -- hex content id (64 digits) = the file name
    size INTEGER NOT NULL,      -- plaintext bytes = file size
    last_use INTEGER NOT NULL   -- time.time_ns() of the last read (batched, so approximate)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_use);
-- total(size) kept by triggers, so checking the limit is a point query
CREATE TABLE IF NOT EXISTS totals (k INTEGER PRIMARY KEY CHECK (k = 0), bytes INTEGER NOT NULL, files INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries BEGIN
    UPDATE totals SET bytes = bytes + new.size, files = files + 1 WHERE k = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN
    UPDATE totals SET bytes = bytes - old.size, files = files - 1 WHERE k = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_upd AFTER UPDATE OF size ON entries BEGIN
    UPDATE totals SET bytes = bytes - old.size + new.size WHERE k = 0; END;
"""
INDEX_FORMAT = 1


@dataclass
class CacheStats:
    """Counters since the cache was opened (this process only)."""

    hits: int = 0  # reads served from a content file or from memory
    memory_hits: int = 0  # of those, served from the verified blobs kept in memory
    misses: int = 0  # reads that had to wait for a fetch (own or another thread's/process's)
    fetches: int = 0  # blobs this process downloaded
    fetch_bytes: int = 0  # plaintext bytes of those
    joined: int = 0  # misses that waited for another thread's fetch of the same id
    filled_by_other: int = 0  # misses served by a file another process fetched while we waited
    corrupt: int = 0  # cached files that failed re-verification and were refetched
    failures: int = 0  # fetches that failed (integrity or store errors)
    evictions: int = 0
    evicted_bytes: int = 0
    prefetches: int = 0  # blobs read-ahead had to fetch (not counted as misses)
    write_failures: int = 0  # fetched blobs that could not be written to the cache (served all the same)


class _Flight:
    """One in-progress fetch in this process; waiters block on ``done``."""

    __slots__ = ("done", "data", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.data: bytes | memoryview | None = None
        self.error: BaseException | None = None


class BlobCache:
    """Verified, shared, size-limited local copies of a repository's blobs.

    ``read(cid, offset, length)`` is the whole interface a reader needs; it
    fetches on a miss.  All methods are thread-safe and may block (disk, store).
    """

    def __init__(
        self,
        repo: Repository,
        cache_dir: str,
        *,
        max_bytes: int = DEFAULT_CACHE_SIZE,
        fetch_workers: int = DEFAULT_FETCH_WORKERS,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> None:
        self.repo = repo
        self.root = os.path.join(cache_dir, "blobs")
        self.max_bytes = max_bytes
        private_dir(self.root)
        self.stats = CacheStats()
        self._lock = threading.Lock()  # protects stats, flights, verified, touched, broken
        self._db_lock = threading.Lock()  # one apsw connection, used by one thread at a time
        self._fetch_slots = threading.BoundedSemaphore(fetch_workers)  # concurrent store GETs
        self._small_slots = threading.BoundedSemaphore(SMALL_FETCH_WORKERS)  # ... of small blobs
        self._flights: dict[str, _Flight] = {}
        # _verified_key() of the files this process has verified: a file replaced
        # or changed by anyone has a new inode or ctime and is verified again.
        self._verified: set[tuple[str, int, int, int]] = set()
        self._tidied: set[str] = set()  # blob directories whose leftovers this process removed
        self._made: set[str] = set()  # blob directories this process made sure exist
        self._uncached_warned = -1e9  # when a fetch could not even start its cache file (see _fetch_uncached)
        self._touched: dict[str, tuple[int, int]] = {}  # id -> (size, last_use) not yet in the index
        self._last_flush = time.monotonic()
        self._broken: dict[str, tuple[float, WsfsError]] = {}
        # id -> verified bytes, least recently used first; at most memory_bytes in all.
        self._memory: collections.OrderedDict[str, bytes | memoryview] = collections.OrderedDict()
        self._memory_used = 0
        self.memory_bytes = memory_bytes
        # Fetched blobs waiting for the writer thread (see _write_later).  The
        # lock is self._lock (readers look here too); the condition wakes
        # fetchers waiting for room.
        self._pending: dict[str, bytes | memoryview] = {}
        self._pending_used = 0
        self._pending_cond = threading.Condition(self._lock)
        self.pending_bytes = DEFAULT_PENDING_BYTES
        self._queued = self._written = 0  # blobs handed to the writer thread, and written (or failed)
        self._queue: queue.Queue[tuple[str, str, bytes | memoryview, int | None] | None] = queue.Queue()  # fd: the lock
        self._writer: threading.Thread | None = None
        self._direct_ok = hasattr(os, "O_DIRECT")  # False once the file system refused it
        self._direct_buf: mmap.mmap | None = None
        self._db = self._open_index(os.path.join(self.root, "index.sqlite"))

    # -- index -------------------------------------------------------------

    @staticmethod
    def _open_index(path: str) -> apsw.Connection:
        # SQLite creates files 0644 & ~umask, and its -wal and -shm files with the
        # database's mode: create the database 0600 first (narrow older ones).
        touch_private(path)
        for extra in (path + "-wal", path + "-shm"):
            try:
                tighten(extra, 0o600)
            except FileNotFoundError:
                pass
        db = apsw.Connection(path)
        # Several daemons share the index: WAL lets readers run during a write,
        # and the busy timeout makes writers queue instead of failing.
        db.set_busy_timeout(10_000)
        db.execute("PRAGMA journal_mode=WAL")
        # The index is advisory (it heals from the files, see the module
        # docstring), so losing the last transactions in a power cut is fine.
        db.execute("PRAGMA synchronous=NORMAL")
        (version,) = next(db.execute("PRAGMA user_version"))
        if version != INDEX_FORMAT:
            with _immediate(db):
                (version,) = next(db.execute("PRAGMA user_version"))
                if version not in (0, INDEX_FORMAT):
                    raise WsfsError(f"cache index {path} has format {version}; this wsfs uses {INDEX_FORMAT}")
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version={INDEX_FORMAT}")
        return db

    def close(self) -> None:
        """Finish the writes of fetched blobs, write pending last-use times and close the index."""
        self.drain()
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self.flush(force=True)
        with self._db_lock:
            self._db.close()

    def flush(self, *, force: bool = False) -> None:
        """Write batched last-use updates to the index (cheap when there are none)."""
        with self._lock:
            due = force or len(self._touched) >= _TOUCH_BATCH or time.monotonic() - self._last_flush > 5.0
            if not due or not self._touched:
                return
            touched, self._touched = self._touched, {}
            self._last_flush = time.monotonic()
        # Skip files evicted since (by any process): re-adding their rows would
        # make the index count bytes that are not on disk.
        rows = [(h, size, ts) for h, (size, ts) in touched.items() if os.path.exists(os.path.join(self.root, h[:2], h))]
        with self._db_lock, _immediate(self._db):
            self._db.executemany(
                "INSERT INTO entries (id, size, last_use) VALUES (?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET last_use = max(last_use, excluded.last_use), size = excluded.size",
                rows,
            )

    def usage(self) -> tuple[int, int]:
        """``(bytes, files)`` the index accounts for, once fetched blobs are written."""
        self.drain()
        with self._db_lock:
            row = next(self._db.execute("SELECT bytes, files FROM totals WHERE k = 0"))
        return int(row[0]), int(row[1])

    # -- paths -------------------------------------------------------------

    def path(self, cid: bytes) -> str:
        """Where the content file of *cid* lives (it may not exist)."""
        h = hexid(cid)
        return os.path.join(self.root, h[:2], h)

    def contains(self, cid: bytes) -> bool:
        """Whether a content file for *cid* exists (not verified), once fetched blobs are written."""
        self.drain()
        return os.path.exists(self.path(cid))

    # -- reading -----------------------------------------------------------

    def try_read(
        self, cid: bytes, offset: int, length: int, *, size: int | None = None
    ) -> bytes | memoryview | None:
        """The bytes if the blob is in memory, or its file present and already verified by this process, else None.

        Never fetches and never hashes: a slice of a blob in memory (a
        ``memoryview``, no copy), or one ``open``, ``fstat`` and ``pread``.  The
        daemon calls it on the event loop thread to skip a thread hop on hits.
        """
        h = hexid(cid)
        data = self._recall(h, size, offset, length, view=True)
        if data is not None:
            return data
        try:
            fd = os.open(os.path.join(self.root, h[:2], h), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            with self._lock:
                ok = _verified_key(h, st) in self._verified
            if not ok or (size is not None and st.st_size != size):
                return None
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        self._hit(h, st.st_size)
        return data

    def recall(self, cid: bytes, offset: int, length: int, *, size: int | None = None) -> memoryview | None:
        """A view of ``length`` bytes from ``offset`` if blob *cid* (of *size*) is in memory (verified), else None.

        No system call and no index write (the last use is recorded for a
        later :meth:`flush`): an event loop may call it to skip a thread hop
        when read-ahead already brought the blob in.
        """
        data = self._recall(hexid(cid), size, offset, length, view=True, flush=False)
        assert data is None or isinstance(data, memoryview)
        return data

    def read(
        self, cid: bytes, offset: int, length: int, *, size: int | None = None, place: Place | None = None
    ) -> bytes | memoryview:
        """``length`` bytes of blob *cid* from ``offset`` (fewer at its end); fetches on a miss.

        *size*, when known (the chunk length in the manifest), is checked
        against the file; *place* says where a pack is stored.  Raises
        :class:`~wsfs.errors.IntegrityError` if the store has no valid copy,
        :class:`~wsfs.errors.StoreUnavailable` if it cannot be reached.
        """
        data = self._read_local(cid, offset, length, size)
        if data is not None:
            return data
        whole = self._fetch(cid, size, place=place)
        return whole[offset : offset + length]

    def prepare(self, cid: bytes, *, size: int | None = None, place: Place | None = None) -> None:
        """Read-ahead: make *cid* present and verified, so a later ``try_read`` hits.

        Fetches it if missing, verifies it if this process has not yet.
        Errors are logged at debug level and not raised: the read that needs
        the bytes will fetch again and report the error itself.
        """
        try:
            if self._read_local(cid, 0, 0, size, count=False) is not None:
                return
            with self._lock:
                self.stats.prefetches += 1
            self._fetch(cid, size, count=False, place=place)
        except (WsfsError, OSError) as e:
            log.debug("read-ahead of %s failed: %s", hexid(cid), e)

    def _hit(self, h: str, size: int, *, flush: bool = True) -> None:
        with self._lock:
            self.stats.hits += 1
            self._touched[h] = (size, time.time_ns())
            due = flush and len(self._touched) >= _TOUCH_BATCH
        if due:
            self.flush()

    def _read_local(
        self, cid: bytes, offset: int, length: int, size: int | None, *, count: bool = True
    ) -> bytes | memoryview | None:
        """Serve from memory, or from the content file if it exists and is sound; drop it if it is not."""
        h = hexid(cid)
        data = self._recall(h, size, offset, length, count=count)
        if data is not None:
            return data
        path = os.path.join(self.root, h[:2], h)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            key = _verified_key(h, st)
            with self._lock:
                verified = key in self._verified
            if size is not None and st.st_size != size:
                self._drop_corrupt(h, path, st.st_ino, f"size {st.st_size}, expected {size}")
                return None
            if not verified:
                data = _read_all(fd, st.st_size)
                if content_id(data) != cid:
                    self._drop_corrupt(h, path, st.st_ino, "content does not match its id")
                    return None
                with self._lock:
                    self._verified.add(key)
                self._remember(h, data)
                if count:
                    self._hit(h, st.st_size)
                return data[offset : offset + length]
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if count:
            self._hit(h, st.st_size)
        return data

    def _remember(self, h: str, data: bytes | memoryview) -> None:
        """Keep verified *data* of blob *h* in memory (least recently used ones leave first)."""
        if len(data) > self.memory_bytes:
            return
        with self._lock:
            old = self._memory.pop(h, None)
            if old is not None:
                self._memory_used -= len(old)
            self._memory[h] = data
            self._memory_used += len(data)
            while self._memory_used > self.memory_bytes:
                _, gone = self._memory.popitem(last=False)
                self._memory_used -= len(gone)

    def _recall(
        self, h: str, size: int | None, offset: int, length: int, *, count: bool = True, view: bool = False,
        flush: bool = True,
    ) -> bytes | memoryview | None:
        """``length`` bytes from ``offset`` of blob *h* if it is in memory (and of *size*), else None.

        *view*: a ``memoryview`` of the blob in memory instead of a copy.
        *flush*: a hit may write batched last-use times to the index (not on an event loop).
        """
        with self._lock:
            data = self._memory.get(h)
            if data is not None:
                self._memory.move_to_end(h)
            else:
                data = self._pending.get(h)  # fetched, not yet written (and no longer in _memory)
            if data is None or (size is not None and len(data) != size):
                return None
            if count:
                self.stats.memory_hits += 1
        if count:
            self._hit(h, len(data), flush=flush)
        if view:
            return memoryview(data)[offset : offset + length]
        return data[offset : offset + length]

    def _drop_corrupt(self, h: str, path: str, st_ino: int, why: str) -> None:
        log.warning("cached blob %s is corrupt (%s); fetching it again", h, why)
        with self._lock:
            self.stats.corrupt += 1
        _unlink_if_same(path, st_ino)

    # -- fetching ----------------------------------------------------------

    def local(self, cid: bytes, size: int) -> bytes | memoryview | None:
        """The whole blob *cid* of *size* bytes if this host has it (verified), else None; never fetches."""
        return self._read_local(cid, 0, size, size, count=False)

    def prepare_run(self, packs: list[Chunk]) -> list[bytes | memoryview | None]:
        """Packs stored side by side in one segment (``repository.joins_run``), made present and verified.

        Those not on this host are read with one ranged GET
        (``Repository.get_pack_run``), each verified and installed on its
        own (:meth:`offer`).  Returns each pack's bytes, or None for one that
        could not be had (logged at debug level: the read that needs it
        fetches it again and reports the error).
        """
        out: list[bytes | memoryview | None] = []
        todo: list[tuple[int, Chunk]] = []
        for i, pack in enumerate(packs):
            assert pack.cid is not None
            data = self.local(pack.cid, pack.length)
            out.append(data)
            if data is None:
                todo.append((i, pack))
        if not todo:
            return out
        try:
            if len(todo) == 1 or todo[0][1].place is None or todo[0][1].place.segment is None:
                for i, pack in todo:
                    assert pack.cid is not None
                    out[i] = self.read(pack.cid, 0, pack.length, size=pack.length, place=pack.place)
                return out
            with self._lock:
                self.stats.prefetches += 1
            got = self.repo.get_pack_run([(p.cid, p.length, p.place) for _, p in todo])  # type: ignore[misc]
        except WsfsError as e:
            log.debug("packs %s not fetched: %s", ", ".join(hexid(p.cid) for _, p in todo), e)  # type: ignore[arg-type]
            return out
        for (i, pack), res in zip(todo, got, strict=True):
            assert pack.cid is not None
            if isinstance(res, WsfsError):
                log.debug("pack %s not fetched: %s", hexid(pack.cid), res)
            else:
                self.offer(pack.cid, res)
                out[i] = res
        return out

    def offer(self, cid: bytes, data: bytes | memoryview) -> bool:
        """Keep *data*, the verified content of blob *cid* the caller has at hand, if there is room; never waits.

        For a caller that fetched several blobs with one request
        (:meth:`Repository.get_pack_run`), or uploaded them (a commit's new
        packs).  The bytes join the writer thread's queue like a fetch's and
        are served from memory until written; the writer installs them
        unless the content file exists by then.  No cross-process lock: that
        lock makes one process *download* a blob; two processes installing
        the same verified bytes under one name is harmless (each renames a
        complete file into place).  When more than ``pending_bytes`` already
        wait to be written the offer is dropped (False): the blob is in the
        store, and a commit should not wait for the cache's disk.
        """
        h = hexid(cid)
        with self._lock:
            if h in self._pending or h in self._memory:
                return True
        if not self._write_later(h, os.path.join(self.root, h[:2], h), data, None, wait=False):
            log.debug("blob %s not cached: the writer is behind", h)
            return False
        return True

    def _fetch(
        self, cid: bytes, size: int | None, *, count: bool = True, place: Place | None = None,
    ) -> bytes | memoryview:
        """The whole verified blob, fetched once however many threads and processes ask."""
        h = hexid(cid)
        with self._lock:
            if count:
                self.stats.misses += 1
            broken = self._broken.get(h)
            if broken is not None:
                if time.monotonic() - broken[0] < BROKEN_TTL:
                    raise broken[1]
                del self._broken[h]
            flight = self._flights.get(h)
            owner = flight is None
            if flight is None:
                flight = self._flights[h] = _Flight()
            else:
                self.stats.joined += 1
        if not owner:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.data is not None
            return flight.data
        try:
            flight.data = self._fetch_locked(cid, h, size, place)
            return flight.data
        except BaseException as e:
            flight.error = e
            raise
        finally:
            with self._lock:
                del self._flights[h]
            flight.done.set()

    def _fetch_locked(
        self, cid: bytes, h: str, size: int | None, place: Place | None,
    ) -> bytes | memoryview:
        path = os.path.join(self.root, h[:2], h)
        try:
            self._make_dir(os.path.dirname(path))
            try:
                lock_fd = self._lock_file(path)
            except FileNotFoundError:  # the directory was removed since (by hand): again
                self._make_dir(os.path.dirname(path), again=True)
                lock_fd = self._lock_file(path)
        except OSError as e:
            # No room for the blob's directory or lock file (a full disk, no inodes left): the reader still
            # gets the verified bytes, uncached (the writer would fail on the file itself anyway).
            return self._fetch_uncached(cid, h, size, place, e)
        try:
            data = self._filled_by_other(cid, h, path, size)
            if data is None:
                data = self._download(cid, h, size, place)
                fetched = True
            else:
                fetched = False
        except BaseException:
            self._unlock_file(path, lock_fd)
            raise
        self._remember(h, data)
        if not fetched:
            self._unlock_file(path, lock_fd)
            return data
        with self._lock:
            self.stats.fetches += 1
            self.stats.fetch_bytes += len(data)
        # The bytes are verified: callers get them now, and the writer thread
        # installs the file, then releases the lock (other processes wait for it).
        self._write_later(h, path, data, lock_fd)
        return data

    def _fetch_uncached(self, cid: bytes, h: str, size: int | None, place: Place | None,
                        why: OSError) -> bytes | memoryview:
        now = time.monotonic()
        if now - self._uncached_warned > 60:  # once a minute: a full disk would say it for every blob
            self._uncached_warned = now
            log.warning("cache %s: cannot cache blobs (%s); serving them uncached", self.root, why.strerror or why)
        data = self._download(cid, h, size, place)
        self._remember(h, data)
        with self._lock:
            self.stats.fetches += 1
            self.stats.fetch_bytes += len(data)
            self.stats.write_failures += 1
        return data

    def _make_dir(self, directory: str, *, again: bool = False) -> None:
        """Create blob directory *directory* once per process (its mode is narrowed by :meth:`_tidy`), or *again*
        (removed by hand since)."""
        if again or directory not in self._made:
            os.makedirs(directory, mode=PRIVATE_DIR, exist_ok=True)
            self._made.add(directory)

    def _filled_by_other(self, cid: bytes, h: str, path: str, size: int | None) -> bytes | memoryview | None:
        """Under the lock: the content another process installed while we waited, if sound."""
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())  # before reading: a change while we read gets a new key
                data = f.read()
        except FileNotFoundError:
            return None
        if content_id(data) == cid and (size is None or len(data) == size):
            with self._lock:
                self.stats.filled_by_other += 1
                self._verified.add(_verified_key(h, st))
                self._touched[h] = (len(data), time.time_ns())
            return data
        log.warning("cached blob %s is corrupt; fetching it again", h)
        with self._lock:
            self.stats.corrupt += 1
        os.unlink(path)
        return None

    # -- writing behind ------------------------------------------------------

    def _write_later(self, h: str, path: str, data: bytes | memoryview, lock_fd: int | None, *,
                     wait: bool = True) -> bool:
        """Queue verified *data* for the writer thread, which installs it and releases *lock_fd* (None: an offer,
        installed unless the file exists by then).

        Until then the bytes stay readable from memory (``_pending``).  Blocks
        while more than ``pending_bytes`` wait, so a slow disk slows fetching
        down instead of filling memory; with *wait* False returns False then
        (nothing queued).
        """
        with self._pending_cond:
            while self._pending_used and self._pending_used + len(data) > self.pending_bytes:
                if not wait:
                    return False
                self._pending_cond.wait()
            self._pending[h] = data
            self._pending_used += len(data)
            self._queued += 1
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="wsfs-cache-writer", daemon=True)
                self._writer.start()
        self._queue.put((h, path, data, lock_fd))
        return True

    def _write_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            # The blobs queued meanwhile go with it: one index transaction, flush and eviction check for all.
            batch = [item]
            while len(batch) < _WRITE_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._write_batch(batch)
                    return
                batch.append(item)
            self._write_batch(batch)

    def _write_batch(self, batch: list[tuple[str, str, bytes | memoryview, int | None]]) -> None:
        """Install each blob of *batch* (releasing its lock, if it has one, and its room at once), then index them in
        one transaction."""
        rows: list[tuple[str, int, int]] = []
        todo = collections.deque(batch)
        try:
            while todo:
                h, path, data, lock_fd = todo.popleft()
                try:
                    try:
                        if lock_fd is None:  # an offer (see offer), not a fetch: no lock, maybe no directory yet
                            if os.path.exists(path):
                                continue
                            self._make_dir(os.path.dirname(path))
                        st = self._install(path, data)
                    finally:
                        if lock_fd is not None:
                            self._unlock_file(path, lock_fd)
                    with self._lock:
                        self._verified.add(_verified_key(h, st))
                    rows.append((h, len(data), time.time_ns()))
                except Exception as e:  # noqa: BLE001 - the reader has its bytes; only the local copy is lost
                    with self._lock:
                        self.stats.write_failures += 1
                    log.warning("cannot write cached blob %s: %s", h, e)
                finally:
                    self._release(h, data)
            if rows:
                try:
                    with self._db_lock, _immediate(self._db):
                        self._db.executemany(
                            "INSERT INTO entries (id, size, last_use) VALUES (?,?,?) "
                            "ON CONFLICT(id) DO UPDATE SET size = excluded.size, last_use = excluded.last_use",
                            rows,
                        )
                    self.flush()
                    self._evict(keep={rows[-1][0]})  # (the newest; the others may go if the limit says so)
                except Exception as e:  # noqa: BLE001 - the files are sound; the index heals (module docstring)
                    with self._lock:
                        self.stats.write_failures += len(rows)
                    log.warning("cannot index %d cached blobs: %s", len(rows), e)
        finally:
            for h, path, data, lock_fd in todo:  # left by an exception that ended the loop (shutdown)
                if lock_fd is not None:
                    self._unlock_file(path, lock_fd)
                self._release(h, data)
            with self._pending_cond:
                self._written += len(batch)
                self._pending_cond.notify_all()

    def _release(self, h: str, data: bytes | memoryview) -> None:
        """*data* of blob *h* no longer waits to be written (its file is installed, or failed): room for a fetch."""
        with self._pending_cond:
            if self._pending.get(h) is data:
                del self._pending[h]
            self._pending_used -= len(data)
            self._pending_cond.notify_all()

    def drain(self) -> None:
        """Wait until the blobs fetched so far are written to their content files and the index.

        Waits for those only, not for fetches that start meanwhile, so it
        returns within about ``pending_bytes`` of disk writes.
        """
        if threading.current_thread() is self._writer:
            return
        with self._pending_cond:
            target = self._queued
            while self._written < target:
                self._pending_cond.wait()

    def _download(self, cid: bytes, h: str, size: int | None, place: Place | None) -> bytes | memoryview:
        try:
            slots = self._small_slots if size is not None and size <= SMALL_BLOB else self._fetch_slots
            with slots:
                data = self.repo.get_blob(cid, size, place=place)  # decoded and verified against cid and size
            if size is not None and len(data) != size:
                raise IntegrityError(f"blob {h} has {len(data)} bytes, the manifest says {size}")
        except NotFound:
            err: WsfsError = IntegrityError(f"blob {h} is missing from the store")
            self._remember_broken(h, err)
            raise err from None
        except IntegrityError as e:
            self._remember_broken(h, e)
            raise
        except WsfsError:
            with self._lock:
                self.stats.failures += 1
            raise
        return data

    def _remember_broken(self, h: str, err: WsfsError) -> None:
        log.error("blob %s cannot be read: %s", h, err)
        with self._lock:
            self.stats.failures += 1
            self._broken[h] = (time.monotonic(), err)

    def _install(self, path: str, data: bytes | memoryview) -> os.stat_result:
        """Write verified *data* to a temporary name and rename it to *path* (the writer thread)."""
        directory = os.path.dirname(path)
        if directory not in self._tidied:
            self._tidy(directory)
        tmp = f"{directory}/.{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = private_file(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            if not (self._direct_ok and len(data) >= _DIRECT_MIN and self._write_direct(fd, data)):
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            os.rename(tmp, path)
            st = os.fstat(fd)  # after the rename, which changes the ctime of the verified key
            os.close(fd)
            fd = -1
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return st

    def _tidy(self, directory: str) -> None:
        """Once per blob directory and process (the writer thread): narrow its mode, remove stale temporary files.

        One listing of one directory (1/256 of the cache) the first time this
        process writes into it: leftovers of killed runs go without a scan of
        the whole cache, and never on a read's path.
        """
        self._tidied.add(directory)
        try:
            tighten(directory, PRIVATE_DIR)
            remove_stale(directory, _tmp_pid, TMP_MAX_AGE)
        except OSError as e:
            log.warning("cannot tidy cache directory %s: %s", directory, e.strerror)

    def _write_direct(self, fd: int, data: bytes | memoryview) -> bool:
        """Write *data* to the empty file *fd* with ``O_DIRECT``; False (nothing written) if unsupported.

        The daemon serves these bytes through FUSE, so the kernel keeps them in
        the mounted file's page cache already; a second copy in the content
        file's page cache would only cost CPU (a copy into freshly allocated
        pages: 0.2-1.8 s of kernel time per GiB on the benchmark VM, against
        0.1 s with ``O_DIRECT``) and memory.  ``O_DIRECT`` needs an aligned
        buffer and length: the bytes are copied into a page-aligned buffer,
        written rounded up to whole blocks, and the file truncated to its size.
        Only the writer thread calls this (the buffer is its own).
        """
        size = len(data)
        padded = -(-size // _DIRECT_ALIGN) * _DIRECT_ALIGN
        if self._direct_buf is None or len(self._direct_buf) < padded:
            self._direct_buf = mmap.mmap(-1, padded)  # page-aligned
        buf = self._direct_buf
        buf[:size] = data
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
            with memoryview(buf) as view:
                done = 0
                while done < padded:
                    done += os.write(fd, view[done:padded])
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # The file system refuses O_DIRECT (tmpfs) or this alignment: write normally from now on.
            log.debug("cache directory %s: no O_DIRECT writes (%s)", self.root, e.strerror)
            self._direct_ok = False
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            return False
        if padded != size:
            os.ftruncate(fd, size)
        return True

    @staticmethod
    @contextmanager
    def _file_lock(path: str) -> Iterator[None]:
        """An exclusive cross-process lock on ``<path>.lock`` (see the module docstring)."""
        fd = BlobCache._lock_file(path)
        try:
            yield
        finally:
            BlobCache._unlock_file(path, fd)

    @staticmethod
    def _lock_file(path: str) -> int:
        """Take the lock of :meth:`_file_lock`; returns the descriptor for :meth:`_unlock_file` (any thread)."""
        lock_path = path + ".lock"
        while True:
            fd = private_file(lock_path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                return fd
            os.close(fd)  # the previous holder unlinked it: lock the new file instead

    @staticmethod
    def _unlock_file(path: str, fd: int) -> None:
        try:
            os.unlink(path + ".lock")
        except FileNotFoundError:  # pragma: no cover - only the holder unlinks
            pass
        os.close(fd)

    # -- eviction ----------------------------------------------------------

    def _evict(self, *, keep: Collection[str] = ()) -> None:
        """Remove least recently used files until the index is within ``max_bytes``."""
        with self._db_lock:
            (total,) = next(self._db.execute("SELECT bytes FROM totals WHERE k = 0"))
            if total <= self.max_bytes:
                return
            victims: list[tuple[str, int]] = []
            with _immediate(self._db):  # two evicting processes never pick the same rows
                (total,) = next(self._db.execute("SELECT bytes FROM totals WHERE k = 0"))
                for h, size in self._db.execute("SELECT id, size FROM entries ORDER BY last_use"):
                    if total <= self.max_bytes:
                        break
                    if h in keep:
                        continue
                    victims.append((h, size))
                    total -= size
                self._db.executemany("DELETE FROM entries WHERE id = ?", [(h,) for h, _ in victims])
        for h, _ in victims:
            try:
                os.unlink(os.path.join(self.root, h[:2], h))
            except FileNotFoundError:
                pass
            except OSError as e:  # pragma: no cover - permissions changed under us
                if e.errno != errno.ENOENT:
                    log.warning("cannot evict cached blob %s: %s", h, e.strerror)
        if victims:
            with self._lock:
                self.stats.evictions += len(victims)
                self.stats.evicted_bytes += sum(s for _, s in victims)
                for h, _ in victims:
                    self._touched.pop(h, None)
            log.debug("evicted %d blobs (%d bytes)", len(victims), sum(s for _, s in victims))

    # -- introspection -----------------------------------------------------

    def statistics(self) -> dict[str, int]:
        """Counters (see :class:`CacheStats`) plus the current usage and limit (blobs fetched so far written)."""
        self.drain()
        with self._lock:
            out = asdict(self.stats)
        out["bytes"], out["files"] = self.usage()
        out["max_bytes"] = self.max_bytes
        return out


# -- checking the whole cache (wsfs fsck --cache) -------------------------------------


@dataclass
class CacheCheck:
    """What :func:`check_cache` found and did."""

    files: int = 0  # content files checked
    bytes: int = 0  # their bytes
    dropped: int = 0  # content files that failed (blake3 of the bytes is not the name) and were removed
    dropped_bytes: int = 0
    rows_removed: int = 0  # index rows without a content file (other than the dropped ones), removed
    rows_fixed: int = 0  # index rows with a wrong size (or missing) for a sound file, corrected
    leftovers: int = 0  # temporary files of killed runs, removed


def check_cache(cache_dir: str, progress: Callable[[int], None] = lambda n: None) -> CacheCheck:
    """Verify every content file of the blob cache in *cache_dir*; drop the bad ones; bring the index in line.

    Safe while mounts use the cache: a file is only removed if it is still
    the inode that failed (under its fetch lock), and a daemon that had
    verified it earlier re-verifies it (its ctime changed) or refetches it.
    *progress* receives bytes as they are checked.
    """
    out = CacheCheck()
    root = os.path.join(cache_dir, "blobs")
    if not os.path.isdir(root):
        return out
    private_dir(root)
    db = BlobCache._open_index(os.path.join(root, "index.sqlite"))
    try:
        indexed = {h: size for h, size in db.execute("SELECT id, size FROM entries")}
        seen: set[str] = set()
        dropped: set[str] = set()
        fixes: list[tuple[str, int]] = []
        for sub in sorted(os.listdir(root)):
            directory = os.path.join(root, sub)
            if len(sub) != 2 or not os.path.isdir(directory):
                continue
            tighten(directory, PRIVATE_DIR)
            out.leftovers += remove_stale(directory, _tmp_pid, TMP_MAX_AGE)
            for h in sorted(os.listdir(directory)):
                if not is_hexid(h):
                    continue
                before = out.dropped
                size = _check_one(os.path.join(directory, h), h, out)
                progress(max(size, 0))
                if out.dropped > before:
                    dropped.add(h)
                if size < 0:
                    continue
                seen.add(h)
                if indexed.get(h) != size:
                    fixes.append((h, size))
        gone = [(h,) for h in indexed if h not in seen]
        with _immediate(db):
            db.executemany("DELETE FROM entries WHERE id = ?", gone)
            db.executemany(
                "INSERT INTO entries (id, size, last_use) VALUES (?,?,?) ON CONFLICT(id) DO UPDATE SET size = excluded.size",
                [(h, size, time.time_ns()) for h, size in fixes],
            )
        out.rows_removed = sum(1 for (h,) in gone if h not in dropped)  # a dropped file's row is not stale
        out.rows_fixed = len(fixes)
    finally:
        db.close()
    return out


def cache_usage(cache_dir: str) -> tuple[int, int]:
    """``(bytes, files)`` the blob cache index of *cache_dir* accounts for; (0, 0) if there is no cache."""
    path = os.path.join(cache_dir, "blobs", "index.sqlite")
    if not os.path.exists(path):
        return 0, 0
    db = BlobCache._open_index(path)
    try:
        row = next(db.execute("SELECT bytes, files FROM totals WHERE k = 0"))
    finally:
        db.close()
    return int(row[0]), int(row[1])


def _check_one(path: str, h: str, out: CacheCheck) -> int:
    """Verify one content file: its size if sound, -1 if it was dropped or vanished."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1  # evicted meanwhile
    try:
        tighten(path, 0o600, fd)  # a file of an older wsfs (0644)
        st = os.fstat(fd)
        data = _read_all(fd, st.st_size)
    finally:
        os.close(fd)
    out.files += 1
    out.bytes += len(data)
    if content_id(data) == bytes.fromhex(h):
        return len(data)
    log.warning("cached blob %s is corrupt; dropping it", h)
    if _unlink_if_same(path, st.st_ino):
        out.dropped += 1
        out.dropped_bytes += len(data)
    return -1


def _unlink_if_same(path: str, st_ino: int) -> bool:
    """Remove the content file *path* under its fetch lock if it is still inode *st_ino*; whether it was.

    A process that fetched the blob again meanwhile installed a new inode,
    which is sound and stays.
    """
    with BlobCache._file_lock(path):
        try:
            if os.stat(path).st_ino == st_ino:
                os.unlink(path)
                return True
        except FileNotFoundError:
            pass
    return False


@contextmanager
def _immediate(db: apsw.Connection) -> Iterator[None]:
    """A write transaction that takes the write lock at BEGIN.

    A deferred transaction that reads and then writes cannot wait for the lock:
    in WAL mode SQLite fails it at once (SQLITE_BUSY_SNAPSHOT) when another
    process committed in between.  ``BEGIN IMMEDIATE`` waits (busy timeout).
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _verified_key(h: str, st: os.stat_result) -> tuple[str, int, int, int]:
    """What identifies the verified state of a content file: (id, inode, ctime, size).

    Not the mtime: ``os.utime`` restores it after an edit.  The ctime changes
    on every write, truncate, chmod, rename or utime, and nobody can set it back.
    """
    return (h, st.st_ino, st.st_ctime_ns, st.st_size)


def _tmp_pid(name: str) -> int | None:
    """The pid in a temporary content file name ``.<id>.<pid>.<thread>.tmp``, or None."""
    parts = name.split(".")
    if len(parts) == 5 and parts[0] == "" and parts[4] == "tmp" and parts[2].isdigit():
        return int(parts[2])
    return None


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        b = os.pread(fd, size - offset, offset)
        if not b:
            break
        chunks.append(b)
        offset += len(b)
    return b"".join(chunks)
