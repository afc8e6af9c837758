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
  from their pack (the slice is checked, not the pack, so a damaged or
  foreign cache file can cost a preload, never serve wrong bytes);
* **it fetches the packs** of the directories it is told about (format 2):
  from the blob cache if there, else from the store, through a
  :class:`~wsfs.cache.BlobCache` of its own on the same cache directory
  (verified, installed for every process, single-flight across processes
  by the cache's lock files, so a READ in the daemon that needs a pack the
  helper is fetching waits for it instead of fetching it twice).  A cold
  mount fetches one pack per 24-40 KiB of small files, thousands of GETs;
  in the daemon their CPU (HTTP, hashing, cache files, one thread each)
  competed for the GIL with the trio thread that answers the kernel:
  ``find -ls`` of a cold 20,000-file version at 20 ms took 13.8 s with the
  daemon fetching packs, against 1.8 s with no pack fetching at all.  The
  daemon still fetches packs itself when there is no helper, or for a READ
  that comes first;
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
import collections
import ctypes
import errno
import heapq
import json
import logging
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from wsfs.daemon.packs import PackWindow, runs
from wsfs.errors import WsfsError
from wsfs.format.blobs import content_id, hexid
from wsfs.format.manifest import Chunk, Inode, Manifest
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
# Packs the helper fetches at once: as the daemon's own listing prefetch did
# (a pack is 24-40 KiB, so a cold tree walk is bound by round trips in flight).
PACK_FETCHERS = 32
# Where the daemon hands the helper what it needs to open the store (not argv:
# the environment is private to the process).
_STORE_ENV = "WSFS_PRELOAD_STORE"
_PR_SET_PDEATHSIG = 1  # prctl(2)
_NICENESS = 10
_NICE = ["/usr/bin/nice", "-n", str(_NICENESS)] if os.access("/usr/bin/nice", os.X_OK) else []
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


@dataclass(frozen=True)
class StoreAccess:
    """What the helper needs to fetch packs itself: the same store and cache as the daemon's."""

    repo: str  # repository URL
    endpoint_url: str | None
    cache_dir: str
    timeout: float | None  # one request's budget (the daemon's)
    cache_size: int  # the blob cache's limit


class SharedCounters:
    """Counters the helper writes and the daemon reads, in a shared memory file (``memfd``).

    The helper's store requests are the mount's too: ``wsfs stats`` (and
    the tests that count a mount's GETs) add them to the daemon's.  Shared
    memory rather than a pipe: a count written before the helper stores a
    file is visible to a ``stats`` request made after a reader saw that
    file, with nothing to drain.  One writer (under the helper's lock); a
    sequence number, odd while a write is under way, lets the reader take a
    consistent snapshot (a seqlock).
    """

    FIELDS = ("get", "head", "put", "list", "delete", "bytes_in", "bytes_out", "packs", "pack_failures")
    _LAYOUT = struct.Struct(f"<Q{len(FIELDS)}Q")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, self._LAYOUT.size)
        self._lock = threading.Lock()

    @classmethod
    def create(cls) -> SharedCounters:
        fd = os.memfd_create("wsfs-preload-counters", os.MFD_CLOEXEC)
        os.ftruncate(fd, cls._LAYOUT.size)
        return cls(fd)

    def write(self, values: dict[str, int]) -> None:
        """(helper) Set the counters named in *values*; the others keep their value."""
        with self._lock:
            seq, *old = self._LAYOUT.unpack_from(self._map)
            new = [values.get(k, v) for k, v in zip(self.FIELDS, old, strict=True)]
            struct.pack_into("<Q", self._map, 0, seq + 1)  # odd: writing
            self._LAYOUT.pack_into(self._map, 0, seq + 1, *new)
            struct.pack_into("<Q", self._map, 0, seq + 2)

    def read(self) -> dict[str, int]:
        """(daemon) A consistent snapshot of the counters."""
        while True:
            seq, *values = self._LAYOUT.unpack_from(self._map)
            (again,) = struct.unpack_from("<Q", self._map, 0)
            if seq % 2 == 0 and again == seq:
                return dict(zip(self.FIELDS, values, strict=True))
            time.sleep(0)

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)


# -- the daemon's side ------------------------------------------------------------


class Preloader:
    """The daemon's handle on the helper: start it, tell it about listed directories, stop it."""

    def __init__(
        self, proc: subprocess.Popen[bytes], pipe: int, label: str, counters: SharedCounters | None
    ) -> None:
        self.proc = proc
        self.pipe: int | None = pipe
        self.label = label
        self.hints = 0  # directories handed to the helper
        self.dropped = 0  # hints dropped because the pipe was full
        self.counters = counters  # the helper's store requests and packs (when it fetches packs)
        self._fetches_packs = counters is not None

    @property
    def fetches_packs(self) -> bool:
        """Whether the helper fetches the packs of the directories it is told about (so the daemon need not)."""
        return self._fetches_packs and self.pipe is not None

    @classmethod
    def start(cls, manifest_path: str, blobs: str, label: str, store: StoreAccess | None = None) -> Preloader | None:
        """Start the helper on the FUSE descriptor of this process; None (logged) if that cannot be done.

        With *store*, the helper fetches the packs of listed directories itself.
        """
        fd = find_fuse_fd()
        if fd is None:
            log.info("%s: no /dev/fuse descriptor found; page-cache preload off", label)
            return None
        env = dict(os.environ)
        counters = None
        extra: list[str] = []
        if store is not None:
            env[_STORE_ENV] = json.dumps(asdict(store))
            counters = SharedCounters.create()
            extra = ["--counters-fd", str(counters.fd)]
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(
                # At nice 10 from its first instruction: its start (an interpreter and its imports, ~0.2 s
                # of CPU) comes while a first mount's daemon builds the index the first `ls` waits for.
                [*_NICE, sys.executable, "-m", "wsfs.daemon.preload", "--fuse-fd", str(fd), "--label", label,
                 "--parent", str(os.getpid()), "--blobs", blobs, *extra,
                 *(["-v"] if log.isEnabledFor(logging.DEBUG) else []), manifest_path],
                stdin=r,
                stdout=subprocess.DEVNULL,
                pass_fds=(fd,) + ((counters.fd,) if counters is not None else ()),
                close_fds=True,
                env=env,
            )
        except OSError as e:
            os.close(w)
            if counters is not None:
                counters.close()
            log.warning("%s: cannot start the page-cache preload helper: %s", label, e)
            return None
        finally:
            os.close(r)
        os.set_blocking(w, False)
        log.debug("%s: page-cache preload helper started (pid %d)", label, proc.pid)
        return cls(proc, w, label, counters)

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
        out: dict[str, int | None] = {"pid": self.proc.pid, "hints": self.hints, "dropped": self.dropped,
                                      "exit": self.proc.poll()}
        if self.counters is not None:
            c = self.counters.read()
            out["packs"], out["pack_failures"] = c["packs"], c["pack_failures"]
        return out

    def add_store_requests(self, snapshot: dict[str, object]) -> dict[str, object]:
        """*snapshot* (the daemon's ``StoreStats``) plus the helper's store requests and bytes."""
        if self.counters is None:
            return snapshot
        c = self.counters.read()
        requests = dict(snapshot["requests"])  # type: ignore[call-overload]
        for op in ("get", "head", "put", "list", "delete"):
            if c[op]:
                requests[op] = requests.get(op, 0) + c[op]
        return {**snapshot, "requests": requests,
                "bytes_in": int(snapshot["bytes_in"]) + c["bytes_in"],  # type: ignore[call-overload]
                "bytes_out": int(snapshot["bytes_out"]) + c["bytes_out"]}  # type: ignore[call-overload]

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


class _PackFetcher:
    """Packs fetched in worker threads into the shared blob cache; the main loop gets their bytes.

    Packs wanted (by a listed directory's files, or read ahead) are queued by
    their row, and at the end of each directory the queue is cut into runs:
    packs stored next to each other in one segment are read with one ranged
    GET of up to ``RUN_MAX`` bytes (``Repository.get_pack_run``), each
    verified and installed in the cache on its own.  A finished fetch is
    queued with its verified bytes (``done``) and the main loop is woken
    through a pipe (``wakeup``): slicing and storing stay on the main
    thread, which owns the manifest.
    """

    def __init__(self, access: StoreAccess, label: str, counters: SharedCounters | None = None) -> None:
        from wsfs.cache import BlobCache
        from wsfs.repository import Repository
        from wsfs.store import open_store

        store = open_store(access.repo, endpoint_url=access.endpoint_url, timeout=access.timeout)
        self.repo = Repository.open(store, access.cache_dir)
        self.cache = BlobCache(self.repo, access.cache_dir, max_bytes=access.cache_size)
        self.label = label
        self.pool = ThreadPoolExecutor(PACK_FETCHERS, thread_name_prefix="wsfs-pack")
        self.wakeup, self._wake = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.done: collections.deque[tuple[bytes, bytes | None]] = collections.deque()
        self.waiting: dict[bytes, list[tuple[Inode, int]]] = {}  # pack -> (file, offset) waiting for it
        self.queued: dict[int, Chunk] = {}  # row -> pack, not yet handed to a worker
        self.fetched = self.failed = 0
        self.window = PackWindow()  # read-ahead in pack order
        self.counters = counters
        self._lock = threading.Lock()
        self._packs = self._failures = 0  # fetches finished (worker threads, under _lock)

    def want(self, row: int, pack: Chunk, node: Inode, offset: int) -> None:
        """Store *node* (at *offset* of pack *row*) once the pack is here; fetch it unless on its way."""
        assert pack.cid is not None
        waiting = self.waiting.get(pack.cid)
        if waiting is not None:
            waiting.append((node, offset))
            return
        self.waiting[pack.cid] = [(node, offset)]
        self.queued[row] = pack

    def read_ahead(self, row: int, pack_row: Callable[[int], Chunk | None]) -> None:
        """A listed directory needs packs up to *row*: queue the packs after it (``packs.PackWindow``)."""
        for r in self.window.advance(row):
            pack = pack_row(r)
            if pack is None:
                break
            assert pack.cid is not None
            if pack.cid not in self.waiting:
                self.waiting[pack.cid] = []
                self.queued[r] = pack

    def flush(self) -> None:
        """Hand the queued packs to the workers, as runs of neighbours in one segment."""
        for run in runs(pack for _, pack in sorted(self.queued.items())):
            self.pool.submit(self._get, run)
        self.queued = {}

    def _get(self, run: list[Chunk]) -> None:
        """(worker) Fetch a run of packs (those not in the cache yet), install them, queue their bytes."""
        try:
            got = self.cache.prepare_run(run)
        except WsfsError as e:
            # The daemon fetches them again for a READ and reports the error there.
            log.debug("%s: packs not fetched: %s", self.label, e)
            got = [None] * len(run)
        except Exception:  # noqa: BLE001 - a preload must not end the helper
            log.exception("%s: packs not fetched", self.label)
            got = [None] * len(run)
        done = [(p.cid, None if d is None else bytes(d)) for p, d in zip(run, got, strict=True)]
        self._report(sum(d is not None for _, d in done), sum(d is None for _, d in done))
        self.done.extend(done)  # type: ignore[arg-type]
        try:
            os.write(self._wake, b"\0")
        except BlockingIOError:
            pass  # the main loop has wake-ups pending already

    def _report(self, ok: int, failed: int) -> None:
        """Publish the store's counters to the daemon (before the packs' files are stored)."""
        with self._lock:
            self._packs += ok
            self._failures += failed
            if self.counters is None:
                return
            snap = self.repo.store.stats.snapshot()
            requests: dict[str, int] = snap["requests"]  # type: ignore[assignment]
            self.counters.write({**{op: requests.get(op, 0) for op in ("get", "head", "put", "list", "delete")},
                                 "bytes_in": int(snap["bytes_in"]),  # type: ignore[call-overload]
                                 "bytes_out": int(snap["bytes_out"]),  # type: ignore[call-overload]
                                 "packs": self._packs, "pack_failures": self._failures})

    def finished(self) -> list[tuple[bytes, bytes | None, list[tuple[Inode, int]]]]:
        """(main loop) The packs fetched since the last call, with the files waiting for each."""
        try:
            os.read(self.wakeup, 4096)
        except BlockingIOError:
            pass
        out = []
        while self.done:
            cid, data = self.done.popleft()
            if data is None:
                self.failed += 1
            else:
                self.fetched += 1
            out.append((cid, data, self.waiting.pop(cid, [])))
        return out

    def close(self) -> None:
        """Stop: fetches not started are dropped, those under way are not waited for (the process exits)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.cache.drain()  # the packs fetched so far are written
        self.cache.flush(force=True)


class _Helper:
    """The helper process's state: the manifest, the FUSE descriptor, stores and packs waiting for a retry."""

    def __init__(
        self, manifest_path: str, fuse_fd: int, label: str, blobs: str | None = None,
        fetcher: _PackFetcher | None = None,
    ) -> None:
        self.manifest_path = manifest_path
        self._manifest: Manifest | None = None
        self.fd = fuse_fd
        self.label = label
        self.blobs = blobs  # the blob cache's directory, where packs arrive (format 2)
        self.fetcher = fetcher  # None: the daemon fetches packs, the helper looks for them in the cache
        self.retries: list[tuple[float, int, int, bytes]] = []  # heap of (due, attempt, ino, data)
        self.waiting: list[tuple[float, int, Inode]] = []  # heap of (due, attempt, node): pack not cached yet
        self.dirs = self.stored = self.stored_bytes = self.unknown = self.failed = self.retried = 0
        self.missed = 0  # packed files whose pack never arrived in time

    @property
    def manifest(self) -> Manifest:
        """The mounted version's manifest, opened when first needed: the daemon starts the helper before
        a format 2 version's local index may be finished (it is built while the mount serves), and hands
        it no directory until it is."""
        if self._manifest is None:
            self._manifest = Manifest(self.manifest_path, validate=False)
        return self._manifest

    def directory(self, dino: int) -> None:
        """Store every non-empty small file of directory *dino*, verified."""
        self.dirs += 1
        last_pack = 0
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
            elif node.packed and self.fetcher is not None:
                pack, offset = self.manifest.pack_ref(node)
                self.fetcher.want(node.pack or 0, pack, node, offset)
                last_pack = max(last_pack, node.pack or 0)
            elif node.packed and self.blobs is not None:
                self.packed(node, 0)
        if last_pack and self.fetcher is not None:
            self.fetcher.read_ahead(last_pack, self.manifest.pack_row)
            self.fetcher.flush()

    def fetched(self) -> None:
        """Store the files whose packs the fetcher brought."""
        assert self.fetcher is not None
        for cid, data, files in self.fetcher.finished():
            for node, offset in files:
                if data is None:
                    self.missed += 1
                else:
                    self.store_slice(node, data[offset : offset + node.size], hexid(cid))

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
        self.store_slice(node, data, h)

    def store_slice(self, node: Inode, data: bytes, pack: str) -> None:
        """Store *data*, read from *pack* for packed file *node*, if it is the file's content."""
        if len(data) != node.size or content_id(data) != node.content:
            # The daemon drops a damaged cache file on its own read; we only skip it.
            self.failed += 1
            log.error("%s: inode %d in cached pack %s does not match its content id; not preloaded",
                      self.label, node.ino, pack)
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
        if self._manifest is not None:
            self._manifest.close()
        fetched = ""
        if self.fetcher is not None:
            self.fetcher.close()
            st = self.fetcher.repo.store.stats.snapshot()
            fetched = (f"; {self.fetcher.fetched} packs fetched or found cached, {self.fetcher.failed} failed, "
                       f"{st['requests'].get('get', 0)} store GETs")
        cpu = os.times()
        log.info("%s: preload helper: %d files (%d bytes) stored from %d directory listings in %.2f s "
                 "(%.2f CPU s); %d retried, %d unknown to the kernel, %d failed verification, "
                 "%d whose pack did not arrive%s",
                 self.label, self.stored, self.stored_bytes, self.dirs, elapsed, cpu.user + cpu.system,
                 self.retried, self.unknown, self.failed, self.missed, fetched)


def serve(
    manifest_path: str, fuse_fd: int, hints: int, label: str, blobs: str | None = None,
    access: StoreAccess | None = None, counters: SharedCounters | None = None,
) -> int:
    """Read directory inodes from *hints* until EOF; store their small files through *fuse_fd*.

    With *access*, fetch the packs of those directories too.  Directories are
    not de-duplicated: the kernel lists a directory again only after it
    dropped its cached listing, when the files' pages are usually gone too.
    """
    fetcher = _PackFetcher(access, label, counters) if access is not None else None
    helper = _Helper(manifest_path, fuse_fd, label, blobs, fetcher)
    t0 = time.monotonic()
    buf = b""
    watch = [hints] + ([fetcher.wakeup] if fetcher is not None else [])
    try:
        while True:
            wait = helper.due()
            ready = select.select(watch, [], [], wait)[0]
            if fetcher is not None and fetcher.wakeup in ready:
                helper.fetched()
            if hints not in ready:
                continue  # a retry is due, or packs arrived
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
    p.add_argument("--counters-fd", type=int, help="inherited shared memory for the store counters (SharedCounters)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.add_argument("manifest", help="the mounted version's manifest.sqlite")
    a = p.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, handlers=[handler])
    # (main() ends with os._exit: pack fetches still under way are not waited for.)
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
    if os.getpriority(os.PRIO_PROCESS, 0) < _NICENESS:
        os.setpriority(os.PRIO_PROCESS, 0, _NICENESS)  # (started by nice(1) already, where there is one)
    raw = os.environ.pop(_STORE_ENV, None)
    try:
        access = StoreAccess(**json.loads(raw)) if raw else None
        counters = SharedCounters(a.counters_fd) if a.counters_fd is not None else None
        return serve(a.manifest, a.fuse_fd, sys.stdin.fileno(), a.label, a.blobs, access, counters)
    except Exception:  # noqa: BLE001 - the mount goes on without us; say why
        log.exception("%s: page-cache preload helper failed", a.label)
        return 1


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stderr.flush()
    # Not sys.exit: it would wait for pack fetches still under way (the
    # thread pool's exit hook), up to a store timeout after the unmount.
    os._exit(code)
