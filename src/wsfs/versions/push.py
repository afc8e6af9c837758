"""Push: snapshot a directory as the next version of a workspace.

Order of writes (what makes a crash at any point harmless):

1. chunks of large files, each ``HEAD``-checked first (a re-run after a crash
   uploads nothing already stored) unless the parent version references it;
2. the manifest, content-addressed;
3. the version record, created with a conditional put.  Another writer that
   took the number first makes us retry with the next number; the tree we
   push is a whole snapshot, so nothing needs merging.

Nothing is followed out of the tree: the walk goes through directory
descriptors only (:mod:`wsfs.fsops`): every entry is ``fstatat``'d
and opened relative to its parent with ``O_NOFOLLOW`` and checked to be the
file (``st_dev``, ``st_ino``) that was seen when the parent was listed, so a
directory swapped for a symlink by another user is never followed, and paths
longer than ``PATH_MAX`` are no problem.  Symlinks are stored as links.  A
file that changes while it is read, vanishes, or cannot be read aborts the
push before any version is created (or, with ``skip_unreadable``, is left
out with a warning).  wsfs' own repository, cache and state directory are
left out with a warning (:func:`own_directories`).
"""

from __future__ import annotations

import collections
import errno
import functools
import getpass
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NoReturn

from wsfs import fsops
from wsfs.config import default_state_dir
from wsfs.errors import Conflict, SourceError, UsageError, WsfsError
from wsfs.format.blobs import content_id
from wsfs.format.chunking import chunk_spans, data_ranges, is_zero, overlaps
from wsfs.format.manifest import content_id_chunked
from wsfs.format.names import check_workspace
from wsfs.format.records import VersionRecord
from wsfs.format.tree import (
    MAX_XATTR_VALUE,
    PATH_MAX,
    ZERO_ID,
    Entry,
    PackPlan,
    key_of,
)
from wsfs.fsops import XATTR_PREFIX, DirChain, Ident, Moved, ident, list_names, open_node, proc_path
from wsfs.repository import Repository
from wsfs.store.local import LocalStore
from wsfs.versions import statcache
from wsfs.versions.publish import Parent, store_tree, version_record
from wsfs.versions.statcache import Known

log = logging.getLogger(__name__)

_O_NOATIME = getattr(os, "O_NOATIME", 0)
_S_IFMT = 0o170000
# Entry(*fields) of all 13 fields, without the namedtuple's Python-level __new__ (the walk's hot loop).
_new_entry: Callable[[tuple], Entry] = functools.partial(tuple.__new__, Entry)


@dataclass
class PushStats:
    """What a push did; printed by the CLI and stored in the version record (the tree part)."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    hardlinks: int = 0
    bytes: int = 0
    inline_files: int = 0
    chunks: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    blobs_reused: int = 0
    unread_files: int = 0  # regular files whose content the stat cache vouched for (not read)
    changed: int | None = None  # entries added, removed or modified since the parent (None: no changeset)
    skipped: list[str] = field(default_factory=list)

    def tree(self) -> dict[str, int]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "specials": self.specials,
            "bytes": self.bytes,
        }


def _default_author() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in a container
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class _Uploader:
    """Hashes, checks and uploads chunks on a bounded thread pool, once per id per push."""

    def __init__(self, repo: Repository, known: set[bytes], stats: PushStats, workers: int, *, ask_below: int = 0) -> None:
        self.repo = repo
        self.known = known  # ids the parent version references: certainly stored
        # A chunk smaller than this is put without asking first (HEAD): the question costs a round trip
        # and ~2.5 ms of botocore's CPU, about what sending the bytes again would (same key, same bytes).
        self.ask_below = ask_below
        self.stats = stats
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsfs-push")
        self._lock = threading.Lock()
        self._inflight: dict[bytes, Future[None]] = {}
        self._room = threading.BoundedSemaphore(2 * workers)  # chunks handed over by submit_hashed, not stored yet
        self._behind: list[Future[bytes | None]] = []
        self._failed: BaseException | None = None  # the first failure of a chunk handed over: the rest give up

    def submit(self, data: bytes) -> Future[bytes | None]:
        return self.pool.submit(self._process, data)

    def submit_hashed(self, data: bytes) -> bytes | None:
        """The id of chunk *data* now (None for zeros), its check and upload in the pool.

        The caller goes on at once (a commit of many one-chunk files no longer waits for each file's
        HEAD and PUT in turn: ~270 such files at 20 ms RTT cost ~20 s of round trips); at most two chunks
        per worker wait for the pool (memory stays bounded).  After a failure the chunks still queued give
        up without asking the store, and the next call raises it, as :meth:`wait` does: a store that
        stalls fails the caller after one request's budget, not one per chunk.
        """
        if self._failed is not None:
            raise self._failed
        if is_zero(data):
            return None
        cid = content_id(data)
        self._room.acquire()
        try:
            fut = self.pool.submit(self._store_behind, cid, data)
        except BaseException:
            self._room.release()
            raise
        fut.add_done_callback(self._done)
        with self._lock:
            self._behind.append(fut)
        return cid

    def _store_behind(self, cid: bytes, data: bytes) -> bytes:
        if self._failed is not None:
            raise self._failed
        return self._store(cid, data)

    def _done(self, fut: Future[bytes | None]) -> None:
        self._room.release()
        if not fut.cancelled() and fut.exception() is not None and self._failed is None:
            self._failed = fut.exception()

    def wait(self) -> None:
        """Every chunk of :meth:`submit_hashed` is stored (or its error is raised)."""
        with self._lock:
            behind, self._behind = self._behind, []
        for fut in behind:
            fut.result()

    def _process(self, data: bytes) -> bytes | None:
        if is_zero(data):
            return None
        return self._store(content_id(data), data)

    def _store(self, cid: bytes, data: bytes) -> bytes:
        with self._lock:
            if cid in self.known:
                self.stats.blobs_reused += 1
                return cid
            fut = self._inflight.get(cid)
            owner = fut is None
            if owner:
                fut = self._inflight[cid] = Future()
        assert fut is not None
        if not owner:
            fut.result()  # same content elsewhere in this push: wait for its upload
            with self._lock:
                self.stats.blobs_reused += 1
            return cid
        try:
            if len(data) >= self.ask_below and self.repo.has_blob(cid):
                with self._lock:
                    self.stats.blobs_reused += 1
            else:
                n = self.repo.put_blob(cid, data)
                with self._lock:
                    self.stats.blobs_uploaded += 1
                    self.stats.bytes_uploaded += n
            with self._lock:
                self.known.add(cid)
            fut.set_result(None)
        except BaseException as e:
            fut.set_exception(e)
            raise
        return cid

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _PendingFile:
    idx: int  # in _Walker.entries
    size: int
    futures: list[Future[bytes | None]]
    submitted: int  # futures that are real uploads (not holes)


class _Spill:
    """Small files' bytes as they are read, once per content, in a private temporary file.

    Packs are cut only once the whole tree is known and sorted; until then
    the bytes wait here rather than in memory.
    """

    _BUFFER = 1 << 20  # bytes gathered before one write (a write per small file cost a GIL hand-off each)

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.at: dict[bytes, tuple[int, int]] = {}
        self.end = 0  # of what add() took; [written, end) is in buf
        self.written = 0
        self.buf = bytearray()
        self._lock = threading.Lock()  # add() in the reading thread, read() in the packing threads

    def add(self, cid: bytes, data: bytes) -> None:
        with self._lock:
            if cid in self.at:
                return
            self.at[cid] = (self.end, len(data))
            self.buf += data
            self.end += len(data)
            if len(self.buf) >= self._BUFFER:
                self._flush()

    def _flush(self) -> None:
        view = memoryview(self.buf)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        del view
        self.written = self.end
        self.buf = bytearray()

    def has(self, cid: bytes) -> bool:
        return cid in self.at

    def read(self, cid: bytes) -> bytes | None:
        where = self.at.get(cid)
        if where is None:
            return None
        off, n = where
        if off + n > self.written:
            with self._lock:
                if off + n > self.written:
                    return bytes(self.buf[off - self.written:off - self.written + n])
        data = os.pread(self.fd, n, off)
        if len(data) != n:
            raise OSError(f"short read of a spilled file ({len(data)} of {n} bytes)")
        return data

    _RUN = 4 << 20  # bytes read at most in one pread by read_many

    def read_many(self, cids: list[bytes]) -> list[bytes | None]:
        """:meth:`read` of each of *cids*, with one ``pread`` per run of them stored back to back (a pack's
        files were spilled in the order it holds them: a ``pread`` per file was ~7% of a large commit)."""
        out: list[bytes | None] = [None] * len(cids)
        at, i = self.at, 0
        while i < len(cids):
            where = at.get(cids[i])
            if where is None or where[0] + where[1] > self.written:
                out[i] = self.read(cids[i])  # (not spilled, or still in the buffer)
                i += 1
                continue
            start = end = where[0]
            sizes = []
            j = i
            while j < len(cids) and end - start < self._RUN:
                w = at.get(cids[j])
                if w is None or w[0] != end or end + w[1] > self.written:
                    break
                sizes.append(w[1])
                end += w[1]
                j += 1
            data = os.pread(self.fd, end - start, start)
            if len(data) != end - start:
                raise OSError(f"short read of a spilled file ({len(data)} of {end - start} bytes)")
            pos = 0
            for k, n in enumerate(sizes, i):
                out[k] = data[pos:pos + n]
                pos += n
            i = j
        return out

    def close(self) -> None:
        os.close(self.fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _Walker:
    def __init__(
        self,
        repo: Repository,
        spill: _Spill,
        uploader: _Uploader,
        stats: PushStats,
        skip_unreadable: bool,
        progress: Callable[[int], None],
        exclude: dict[Ident, str],
        known: dict[statcache.Key, Known] | None = None,
    ) -> None:
        self.repo = repo
        self.exclude = exclude
        # The stat cache (wsfs.versions.statcache): what files held when last read, and what this push learns.
        self.known = known or {}
        # (file, index in entries, size, mtime_ns, ctime_ns): ints only, so that the collector soon stops
        # tracing them (stat results it traces, again and again while the walk grows: 20% of a walk)
        self.learnt: list[tuple[statcache.Key, int, int, int, int]] = []
        self.started_ns = time.time_ns()
        self.racy_from = self.started_ns - statcache.RACY_NS  # a file changed since then is not remembered
        self.read_files = 0  # regular files read (not vouched for by the stat cache)
        self.vouched = [0, 0, 0]  # files the stat cache vouched for: count, bytes, small ones (-> stats at the end)
        self.root = b""
        self.root_ident: Ident | None = None
        # Directories by index in entries (before the final sort): (parent's index, name, ident).
        self.dirs: dict[int, tuple[int, bytes, Ident]] = {}
        # Small files not read thanks to the stat cache, by content id: (directory's index, name, ident, size).
        self.unread: dict[bytes, tuple[int, bytes, Ident, int]] = {}
        self._rechain: DirChain | None = None  # the directories of files read again (reread), shared
        self.spill = spill
        self.up = uploader
        self.stats = stats
        self.skip_unreadable = skip_unreadable
        self.progress = progress
        self.chunk_size = repo.config.chunk_size
        self.inline_threshold = repo.config.inline_threshold
        self.entries: list[Entry] = []  # walk order; sorted by key at the end
        self.hardlinks: dict[tuple[int, int], list[int]] = {}  # (dev, ino) -> indexes of its names
        self.pending: collections.deque[_PendingFile] = collections.deque()
        self.window = 0  # chunks in flight
        self.max_window = max(8, 2 * uploader.pool._max_workers)

    # -- errors -----------------------------------------------------------

    def _fail(self, path: bytes, what: str, exc: OSError | None = None) -> NoReturn:
        detail = f": {exc.strerror}" if exc is not None and exc.strerror else ""
        msg = f"{os.fsdecode(path)}: {what}{detail}"
        if self.skip_unreadable and what != "changed while being read":
            log.warning("skipped %s", msg)
            self.stats.skipped.append(os.fsdecode(path))
            raise _Skip
        raise SourceError(msg + ("" if self.skip_unreadable else " (use --skip-unreadable to leave it out)"))

    # -- the walk -----------------------------------------------------------

    def run(self, root: bytes) -> None:
        try:
            rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError:
            raise UsageError(f"{os.fsdecode(root)} is not a directory") from None
        except OSError as e:
            raise SourceError(f"{os.fsdecode(root)}: {e.strerror}") from None
        chain = DirChain(rfd)
        try:
            self._refuse_own(rfd, root)
            st = os.fstat(rfd)
            self.root, self.root_ident = root, ident(st)
            self.dirs[0] = (-1, b"", ident(st))
            self.entries.append(_entry(b"", st))
            self.stats.dirs += 1
            # (depth, name, ident, index in entries, path for messages): directories still to list
            stack: list[tuple[int, bytes, Ident, int, bytes]] = [(0, b"", ident(st), 0, root)]
            while stack:
                depth, name, dident, didx, path = stack.pop()
                subdirs = self._directory(chain, depth, name, dident, didx, path)
                stack.extend(reversed(subdirs))
        finally:
            chain.close()
        self._drain(0)
        self.learnt_rows = self._learnt_rows()
        n, nbytes, small = self.vouched
        self.stats.unread_files += n
        self.stats.files += n
        self.stats.bytes += nbytes
        self.stats.inline_files += small
        # A file with several names: its first name in key order holds it, the others name that one.
        for idxs in self.hardlinks.values():
            if len(idxs) > 1:
                first = min(self.entries[i].key for i in idxs)
                base = self.entries[idxs[0]]
                for i in idxs:
                    key = self.entries[i].key
                    self.entries[i] = base._replace(key=key, linked=True) if key == first else Entry(key, link=first)
        self.entries.sort(key=lambda e: e.key)

    def _learnt_rows(self) -> dict[statcache.Key, Known] | None:
        """The stat cache this push learnt (entries in walk order); None if it is the one it started with."""
        if self.read_files == 0 and len(self.learnt) == len(self.known):
            return None  # every file remembered was vouched for, with what the cache said: the same rows
        return {node: Known(size, mtime, ctime, self.entries[i].content, self.entries[i].chunks, self.entries[i].xattrs)
                for (node, i, size, mtime, ctime) in self.learnt}

    def _refuse_own(self, rfd: int, root: bytes) -> None:
        """Refuse a root that is (inside) one of wsfs' own directories: found by walking up through ``..``."""
        if not self.exclude:
            return
        fd = os.dup(rfd)
        try:
            st = os.fstat(fd)
            while True:
                what = self.exclude.get(ident(st))
                if what is not None:
                    raise UsageError(f"{os.fsdecode(root)} is inside wsfs' own {what}; push another directory")
                up = os.open(b"..", fsops.O_DIR, dir_fd=fd)
                os.close(fd)
                fd = up
                parent = os.fstat(fd)
                if ident(parent) == ident(st):
                    return  # "/"
                st = parent
        except OSError:
            return  # an unreadable ancestor: nothing of ours is above it that we could have reached
        finally:
            os.close(fd)

    def _directory(
        self, chain: DirChain, depth: int, name: bytes, dident: Ident, didx: int, path: bytes
    ) -> list[tuple[int, bytes, Ident, int, bytes]]:
        try:
            dfd = chain.enter(depth, name, dident) if depth else chain.fd()
            xattrs = self._xattrs(dfd, path)
            if xattrs:
                self.entries[didx] = self.entries[didx]._replace(xattrs=xattrs)
            names = list_names(dfd)
        except Moved as e:
            try:
                self._fail(path, "vanished during push" if e.vanished else "changed while being read")
            except _Skip:
                return []
        except OSError as e:
            try:
                self._fail(path, "cannot list directory", e)
            except _Skip:
                return []
        subdirs: list[tuple[int, bytes, Ident, int, bytes]] = []
        prefix = key_of(self.entries[didx].path, b"")
        before = len(self.entries)
        lstat, unchanged = os.lstat, self._unchanged
        # The loop an unchanged tree spends its time in: a file the stat cache vouches for costs one
        # fstatat and a few comparisons; anything else goes through _entry.
        for child in names:
            key = prefix + child
            try:
                st: os.stat_result | None = lstat(child, dir_fd=dfd)
            except OSError:
                st = None  # _entry stats it again, and says why not
            if st is not None and st.st_mode & _S_IFMT == stat.S_IFREG and st.st_nlink == 1 \
                    and unchanged(key, st, didx):
                continue
            cpath = path + b"/" + child
            try:
                idx, st = self._entry(dfd, key, cpath, didx, st)
            except _Skip:
                continue
            if idx is not None and st is not None:
                subdirs.append((depth + 1, child, ident(st), idx, cpath))
        self.progress(len(self.entries) - before)
        return subdirs

    def _entry(
        self, dfd: int, key: bytes, path: bytes, didx: int, st: os.stat_result | None
    ) -> tuple[int | None, os.stat_result | None]:
        """Record the entry *key* of the directory open at *dfd* (*st*: its lstat, if taken, and then not
        vouched for by the stat cache); returns its index and, for a directory, its stat."""
        name = key.rpartition(b"\0")[2]
        if st is None:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError as e:
                self._fail(path, "vanished during push", e)
            except OSError as e:
                self._fail(path, "cannot stat", e)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            what = self.exclude.get(ident(st))
            if what is not None:
                log.warning("left out %s: it is wsfs' own %s", os.fsdecode(path), what)
                self.stats.skipped.append(os.fsdecode(path))
                return None, None
            self.entries.append(_entry(key, st))  # its xattrs are read when it is listed
            self.stats.dirs += 1
            self.dirs[len(self.entries) - 1] = (didx, name, ident(st))
            return len(self.entries) - 1, st
        if stat.S_ISSOCK(mode):
            log.warning("%s: sockets are not stored; left out", os.fsdecode(path))
            self.stats.skipped.append(os.fsdecode(path))
            return None, None
        node = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and node in self.hardlinks:
            self.hardlinks[node].append(len(self.entries))
            self.entries.append(Entry(key))  # completed after the walk
            self.stats.hardlinks += 1
            return len(self.entries) - 1, None
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(name, dir_fd=dfd)
            except FileNotFoundError as e:
                self._fail(path, "vanished during push", e)
            except OSError as e:
                if e.errno == errno.EINVAL:  # no longer a symlink
                    self._fail(path, "changed while being read")
                self._fail(path, "cannot read link", e)
            if not target or len(target) >= PATH_MAX:
                self._fail(path, "symlink target cannot be stored (empty or longer than 4095 bytes)")
            self.entries.append(_entry(key, st, size=len(target), target=target))
            self.stats.symlinks += 1
        elif stat.S_ISREG(mode):
            # (A single name: _directory asked the stat cache already, or could not stat it and it is read.)
            if st.st_nlink == 1 or not self._unchanged(key, st, didx):
                self._file(dfd, key, path, st)
        else:  # fifo, character or block device: stored as nodes, no content
            xattrs = self._node_xattrs(dfd, name, path, st)
            self.entries.append(_entry(key, st, size=0, xattrs=xattrs))
            self.stats.specials += 1
        idx = len(self.entries) - 1
        if st.st_nlink > 1 and stat.S_ISREG(mode):
            self.hardlinks[node] = [idx]
        return idx, None

    def _xattrs(self, fd: int | str, path: bytes) -> tuple[tuple[bytes, bytes], ...]:
        """The ``user.*`` xattrs of the file open at *fd* (or a ``/proc/self/fd`` path), sorted by name."""
        try:
            names = os.listxattr(fd)
        except OSError:
            return ()  # filesystem without xattr support
        out = {}
        for n in names:
            bn = os.fsencode(n)
            if bn.startswith(XATTR_PREFIX):
                try:
                    out[bn] = os.getxattr(fd, n)
                except OSError as e:
                    self._fail(path, f"cannot read xattr {n}", e)
                if len(out[bn]) > MAX_XATTR_VALUE:
                    self._fail(path, f"xattr {n} is larger than {MAX_XATTR_VALUE} bytes")
        return tuple(sorted(out.items()))

    def _node_xattrs(
        self, dfd: int, name: bytes, path: bytes, st: os.stat_result
    ) -> tuple[tuple[bytes, bytes], ...]:
        """Xattrs of a fifo or device node, through an ``O_PATH`` descriptor (opening it could block)."""
        try:
            fd, fst = open_node(name, dfd)
        except FileNotFoundError as e:
            self._fail(path, "vanished during push", e)
        except OSError as e:
            self._fail(path, "cannot stat", e)
        try:
            if ident(fst) != ident(st) or stat.S_IFMT(fst.st_mode) != stat.S_IFMT(st.st_mode):
                self._fail(path, "changed while being read")
            return self._xattrs(proc_path(fd), path)
        finally:
            os.close(fd)

    def _file(self, dfd: int, key: bytes, path: bytes, st: os.stat_result) -> None:
        name = key.rpartition(b"\0")[2]
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags | _O_NOATIME, dir_fd=dfd)
        except PermissionError as e:
            if not _O_NOATIME:
                self._fail(path, "cannot open", e)
            try:  # O_NOATIME is only allowed to the owner (or root)
                fd = os.open(name, flags, dir_fd=dfd)
            except FileNotFoundError as e2:
                self._fail(path, "vanished during push", e2)
            except OSError as e2:
                self._fail(path, "cannot open", e2)
        except FileNotFoundError as e:
            self._fail(path, "vanished during push", e)
        except OSError as e:
            self._fail(path, "cannot open", e)
        try:
            before = os.fstat(fd)
            if ident(before) != ident(st) or not stat.S_ISREG(before.st_mode):
                self._fail(path, "changed while being read")
            size = before.st_size
            xattrs = self._xattrs(fd, path)
            entry = _entry(key, before, xattrs=xattrs)
            if size <= self.inline_threshold:
                data = self._read_all(fd, path, size)
                self._check_unchanged(fd, path, before)
                cid = content_id(data)  # blake3 of at most the inline threshold: cheaper here than a pool hop
                if size:
                    self.spill.add(cid, data)
                self.entries.append(entry._replace(content=cid))
                self.stats.inline_files += 1
            else:
                self.entries.append(entry)  # chunk ids filled in by _drain
                try:
                    self._chunked(fd, path, len(self.entries) - 1, size)
                    self._check_unchanged(fd, path, before)
                except _Skip:
                    self.entries.pop()
                    raise
            self._learn(len(self.entries) - 1, before)
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += size

    def _unchanged(self, key: bytes, st: os.stat_result, didx: int) -> bool:
        """Record regular file *key* from the stat cache if it vouches for it; False if the file must be read."""
        node = (st.st_dev, st.st_ino)
        k = self.known.get(node)
        if k is None:
            return False
        size, mtime = st.st_size, st.st_mtime_ns
        if k[0] != size or k[1] != mtime or k[2] != st.st_ctime_ns:
            return False
        chunks = k[4]
        if chunks:  # chunks the parent does not reference may not be stored
            known = self.up.known
            if size <= self.inline_threshold or not all(c == ZERO_ID or c in known for c in chunks):
                return False
        elif size > self.inline_threshold:
            return False  # another repository layout
        entries = self.entries
        entries.append(_new_entry(
            (key, st.st_mode, st.st_uid, st.st_gid, size, mtime, 0, None, k[3], chunks, k[5], None, False)
        ))  # as _entry(key, st, ...) makes it for a regular file, without its namedtuple and tuple copies
        if size and not chunks:
            self.unread.setdefault(k[3], (didx, key.rpartition(b"\0")[2], node, size))
        if st.st_ctime_ns < self.racy_from:
            self.learnt.append((node, len(entries) - 1, size, mtime, st.st_ctime_ns))
        v = self.vouched
        v[0] += 1
        v[1] += size
        v[2] += not chunks
        return True

    def _learn(self, idx: int, st: os.stat_result) -> None:
        """Remember what file *idx* (read, with stat *st*) holds, unless it is racily clean."""
        self.read_files += 1
        if st.st_ctime_ns < self.racy_from:
            self.learnt.append(((st.st_dev, st.st_ino), idx, st.st_size, st.st_mtime_ns, st.st_ctime_ns))

    def reread(self, cid: bytes) -> bytes:
        """The bytes of a small file the stat cache let the walk skip, read again now (its pack is being
        rebuilt) through directory descriptors, and checked against the remembered content id."""
        didx, name, fident, size = self.unread[cid]
        steps = []
        while didx > 0:
            didx, dname, dident = self.dirs[didx][0], self.dirs[didx][1], self.dirs[didx][2]
            steps.append((dname, dident))
        steps.reverse()
        path = os.path.join(self.root, *(n for n, _ in steps), name)
        if self._rechain is None:
            try:
                rfd = os.open(self.root, fsops.O_DIR)
            except OSError as e:
                raise SourceError(f"{os.fsdecode(self.root)}: {e.strerror}") from None
            self._rechain = DirChain(rfd)
            if self._rechain.root_ident != self.root_ident:
                raise SourceError(f"{os.fsdecode(self.root)}: changed while being read")
        chain = self._rechain
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=chain.goto(steps))
            try:
                if ident(os.fstat(fd)) != fident:
                    raise Moved(name)
                data = os.pread(fd, size + 1, 0)
            finally:
                os.close(fd)
        except Moved:
            raise SourceError(f"{os.fsdecode(path)}: changed while being read") from None
        except OSError as e:
            raise SourceError(f"{os.fsdecode(path)}: cannot read: {e.strerror}") from None
        if content_id(data) != cid:
            raise SourceError(f"{os.fsdecode(path)}: changed while being read")
        return data

    def close(self) -> None:
        """Close the descriptors :meth:`reread` keeps open."""
        if self._rechain is not None:
            self._rechain.close()
            self._rechain = None

    def _read_all(self, fd: int, path: bytes, size: int) -> bytes:
        try:
            data = os.pread(fd, size + 1, 0)  # one byte more: growth is a change
        except OSError as e:
            self._fail(path, "cannot read", e)
        if len(data) != size:
            self._fail(path, "changed while being read")
        return data

    def _check_unchanged(self, fd: int, path: bytes, before: os.stat_result) -> None:
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            before.st_size,
            before.st_mtime_ns,
            before.st_ctime_ns,
        ):
            self._fail(path, "changed while being read")

    def _chunked(self, fd: int, path: bytes, idx: int, size: int) -> None:
        ranges = data_ranges(fd, size)
        pf = _PendingFile(idx, size, [], 0)
        zero: Future[bytes | None] = Future()
        zero.set_result(None)
        try:
            for _idx, off, length in chunk_spans(size, self.chunk_size):
                if not overlaps(ranges, off, length):
                    pf.futures.append(zero)  # a hole: never read
                    continue
                try:
                    data = os.pread(fd, length, off)
                except OSError as e:
                    self._fail(path, "cannot read", e)
                if len(data) != length:
                    self._fail(path, "changed while being read")
                pf.futures.append(self.up.submit(data))
                pf.submitted += 1
                self.stats.chunks += 1
                self.window += 1
                if self.window >= self.max_window:
                    self._drain(self.max_window // 2)
        except _Skip:
            self.window -= pf.submitted
            raise
        self.pending.append(pf)

    def _drain(self, keep: int) -> None:
        """Wait for finished files' chunks until at most *keep* chunks are in flight."""
        while self.pending and (self.window > keep or all(f.done() for f in self.pending[0].futures)):
            pf = self.pending.popleft()
            cids = [f.result() for f in pf.futures]
            self.window -= pf.submitted
            e = self.entries[pf.idx]
            self.entries[pf.idx] = e._replace(
                chunks=tuple(c or ZERO_ID for c in cids), content=content_id_chunked(pf.size, self.chunk_size, cids)
            )


def _entry(key: bytes, st: os.stat_result, **fields: object) -> Entry:
    """The entry of *key* with the attributes of *st* (only mtime of the times: see wsfs.format.manifest)."""
    mode = st.st_mode
    special = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
    base = Entry(
        key, mode, st.st_uid, st.st_gid, st.st_size if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else 0, st.st_mtime_ns,
        st.st_rdev if special else 0,
    )
    return base._replace(**fields) if fields else base


def own_directories(repo: Repository) -> dict[Ident, str]:
    """wsfs' own directories that exist: the repository (if local), the cache, the state directory.

    Pushing a home directory must not push these: they change during the
    push itself (the manifest being built lives in the cache) and grow with
    every push.  Keyed by ``(st_dev, st_ino)``, so any path to them matches.
    """
    places = [("cache", repo.cache_dir), ("state directory", default_state_dir())]
    if isinstance(repo.store, LocalStore):
        places.insert(0, ("repository", repo.store.root))
    out: dict[Ident, str] = {}
    for what, path in places:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            out.setdefault(ident(st), what)
    return out


class _Skip(Exception):
    """Internal: the current entry is left out (``--skip-unreadable``)."""


def push(
    repo: Repository,
    src: str | bytes,
    workspace: str,
    *,
    message: str = "",
    author: str | None = None,
    skip_unreadable: bool = False,
    workers: int = 8,
    progress: Callable[[int], None] = lambda n: None,
    exclude: dict[Ident, str] | None = None,
    rehash: bool = False,
    stat_cache: bool = True,
) -> tuple[VersionRecord, PushStats]:
    """Snapshot *src* as the next version of *workspace*; returns the published record and stats.

    Directories whose ``(st_dev, st_ino)`` is a key of *exclude* are left out
    (the value says what they are); by default, wsfs' own (:func:`own_directories`).
    Files the stat cache vouches for are not read (:mod:`wsfs.versions.statcache`),
    unless *rehash*; with *stat_cache* False none is read or saved (a directory pushed once, e.g. an upload).
    """
    check_workspace(workspace)
    if repo.config.format != 2:
        repo.reload_config()  # a local copy from before another host's upgrade
    if repo.config.format != 2:
        raise UsageError(f"{repo.store.url} is a format {repo.config.format} repository; convert it with: wsfs upgrade")
    root = os.fsencode(src).rstrip(b"/") or b"/"
    stats = PushStats()
    parent_n = repo.latest(workspace)
    kept = f"parent-{workspace}"  # the version this host pushed last, as a parent (Parent.save)
    parent = Parent.load(repo, workspace, parent_n, saved=kept)
    if exclude is None:
        exclude = own_directories(repo)
    # Every small file's bytes wait in this file until packs are cut: private, and
    # named with our pid so that the next command removes it if we are killed.
    cache_name, known = _stat_cache(repo, root, rehash) if stat_cache else (None, {})
    spill = _Spill(repo.temp_path("spill"))
    uploader = _Uploader(repo, parent.chunks, stats, workers)
    walker: _Walker | None = None
    try:
        walker = _Walker(repo, spill, uploader, stats, skip_unreadable, progress, exclude, known)
        walker.run(root)
        uploader.close()
        entries = walker.entries

        def pack_bytes(plan: PackPlan) -> bytes:
            out = []
            cids = [cid for cid, _size in plan.contents]
            for cid, data in zip(cids, spill.read_many(cids), strict=True):
                if data is None:
                    data = walker.reread(cid)  # the stat cache spared the walk reading it
                out.append(data)
            return b"".join(out)

        stored = store_tree(repo, parent, entries, None, pack_bytes, workers, successor=True)
        stats.changed = stored.changed
        stats.blobs_uploaded += stored.objects
        stats.bytes_uploaded += stored.bytes
        stats.blobs_reused += stored.reused
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise WsfsError(f"no space left on device for the push's temporary data in {os.path.dirname(spill.path)}") from None
        raise
    finally:
        uploader.close()
        spill.close()
        if walker is not None:
            walker.close()
    when = datetime.now(UTC).isoformat(timespec="seconds")
    n = (parent_n or 0) + 1
    for _attempt in range(100):
        record = version_record(workspace, n, stored, when=when, author=author or _default_author(),
                                message=message, tree=stats.tree())
        try:
            repo.publish(record)
        except Conflict:
            # Another push took this number; ours is a full snapshot, so it
            # simply becomes the next version after theirs.
            latest = repo.latest(workspace) or n
            n = max(n, latest) + 1
            continue
        assert stored.successor is not None
        if not (parent.kept and stored.top_id == parent.top):  # (else it is kept already)
            stored.successor.save(repo, kept)
        learnt = walker.learnt_rows
        if cache_name is not None and learnt is not None and learnt != known:
            try:
                repo.save_local_state(cache_name, statcache.encode(learnt.items()))
            except OSError as e:
                log.warning("stat cache not saved (the next push reads every file): %s", e.strerror)
        return record, stats
    raise Conflict(f"could not publish a version of {workspace!r}: too many concurrent writers")


def _stat_cache(repo: Repository, root: bytes, rehash: bool) -> tuple[str | None, dict[statcache.Key, Known]]:
    """The name of the stat cache of pushes of directory *root* to *repo*, and what it holds
    (nothing with *rehash*, or if it is unreadable)."""
    try:
        st = os.stat(root)
    except OSError:
        return None, {}  # the walk says why
    name = f"statcache-{st.st_dev:x}-{st.st_ino:x}"
    if rehash:
        return name, {}
    raw = repo.local_state(name)
    if raw is None:
        return name, {}
    try:
        return name, statcache.decode(raw)
    except ValueError as e:
        log.warning("ignoring the stat cache %s (every file is read): %s", name, e)
        return name, {}
