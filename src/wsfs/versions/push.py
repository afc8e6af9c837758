"""Push: snapshot a directory as the next version of a workspace.

Order of writes (what makes a crash at any point harmless):

1. chunks of large files, each ``HEAD``-checked first (a re-run after a crash
   uploads nothing already stored) unless the parent version references it;
2. the manifest, content-addressed;
3. the version record, created with a conditional put.  Another writer that
   took the number first makes us retry with the next number; the tree we
   push is a whole snapshot, so nothing needs merging.

Nothing is followed out of the tree: the walk goes through directory
descriptors only (:mod:`wsfs.versions.fsops`): every entry is ``fstatat``'d
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
import getpass
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NoReturn

import apsw

from wsfs.config import default_state_dir
from wsfs.errors import Conflict, FormatError, IntegrityError, NotFound, SourceError, UsageError, WsfsError
from wsfs.format.blobs import content_id
from wsfs.format.chunking import chunk_spans, data_ranges, is_zero, overlaps
from wsfs.format.manifest import ROOT_INO, ManifestBuilder, prepare_inline
from wsfs.format.names import check_workspace
from wsfs.format.records import VersionRecord
from wsfs.localfs import private_umask
from wsfs.repository import Repository
from wsfs.store.local import LocalStore
from wsfs.versions import fsops
from wsfs.versions.fsops import XATTR_PREFIX, DirChain, Ident, Moved, ident, list_names, open_node, proc_path

log = logging.getLogger(__name__)

_O_NOATIME = getattr(os, "O_NOATIME", 0)


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

    def __init__(self, repo: Repository, known: set[bytes], stats: PushStats, workers: int) -> None:
        self.repo = repo
        self.known = known  # ids the parent version references: certainly stored
        self.stats = stats
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsfs-push")
        self._lock = threading.Lock()
        self._inflight: dict[bytes, Future[None]] = {}

    def submit(self, data: bytes) -> Future[bytes | None]:
        return self.pool.submit(self._process, data)

    def _process(self, data: bytes) -> bytes | None:
        if is_zero(data):
            return None
        cid = content_id(data)
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
            if self.repo.has_blob(cid):
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
    ino: int
    size: int
    futures: list[Future[bytes | None]]
    submitted: int  # futures that are real uploads (not holes)


class _Walker:
    def __init__(
        self,
        repo: Repository,
        builder: ManifestBuilder,
        uploader: _Uploader,
        stats: PushStats,
        skip_unreadable: bool,
        progress: Callable[[int], None],
        exclude: dict[Ident, str],
    ) -> None:
        self.repo = repo
        self.exclude = exclude
        self.b = builder
        self.up = uploader
        self.stats = stats
        self.skip_unreadable = skip_unreadable
        self.progress = progress
        self.chunk_size = repo.config.chunk_size
        self.inline_threshold = repo.config.inline_threshold
        self.hardlinks: dict[tuple[int, int], int] = {}
        self.nlinks: collections.Counter[int] = collections.Counter()
        self.pending: collections.deque[_PendingFile] = collections.deque()
        self.chunked: list[tuple[int, int, list[bytes | None]]] = []
        self.inline_q: collections.deque[tuple[int, Future[tuple[bytes, int, bytes]]]] = collections.deque()
        self.max_inline_q = 256  # small files in flight: bounded memory (256 x 128 KiB at most)
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
            ino = self.b.add_inode(st, nlink=2)
            self.stats.dirs += 1
            # (depth, name, ident, inode, path for messages): directories still to list
            stack: list[tuple[int, bytes, Ident, int, bytes]] = [(0, b"", ident(st), ino, root)]
            while stack:
                depth, name, dident, dino, path = stack.pop()
                subdirs = self._directory(chain, depth, name, dident, dino, path)
                stack.extend(reversed(subdirs))
        finally:
            chain.close()
        while self.inline_q:
            self._record_inline()
        self._drain(0)
        # Chunk lists are written only now, in walk order: when uploads finish
        # must not change the manifest's bytes (an unchanged tree gives the
        # same manifest, which is then not uploaded again).
        for ino, size, cids in self.chunked:
            self.b.set_chunks(ino, size, cids)
        for ino, n in self.nlinks.items():
            if n != 1:
                self.b.set_nlink(ino, n)

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
        self, chain: DirChain, depth: int, name: bytes, dident: Ident, dino: int, path: bytes
    ) -> list[tuple[int, bytes, Ident, int, bytes]]:
        try:
            dfd = chain.enter(depth, name, dident) if depth else chain.fd()
            self.b.add_xattrs(dino, self._xattrs(dfd, path))
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
        entries: list[tuple[bytes, int]] = []
        subdirs: list[tuple[int, bytes, Ident, int, bytes]] = []
        for child in names:
            cpath = path + b"/" + child
            try:
                ino, st = self._entry(dfd, child, cpath)
            except _Skip:
                continue
            if ino is None:
                continue
            entries.append((child, ino))
            if st is not None:
                subdirs.append((depth + 1, child, ident(st), ino, cpath))
        self.b.add_dentries(dino, entries)
        self.b.set_nlink(dino, 2 + len(subdirs))
        self.progress(len(entries))
        return subdirs

    def _entry(self, dfd: int, name: bytes, path: bytes) -> tuple[int | None, os.stat_result | None]:
        """Record entry *name* of the directory open at *dfd*; returns its inode and, for a directory, its stat."""
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
            ino = self.b.add_inode(st, nlink=2)  # its xattrs are read when it is listed
            self.stats.dirs += 1
            return ino, st
        if stat.S_ISSOCK(mode):
            log.warning("%s: sockets are not stored; left out", os.fsdecode(path))
            self.stats.skipped.append(os.fsdecode(path))
            return None, None
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.hardlinks:
            ino = self.hardlinks[key]
            self.nlinks[ino] += 1
            self.stats.hardlinks += 1
            return ino, None
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(name, dir_fd=dfd)
            except FileNotFoundError as e:
                self._fail(path, "vanished during push", e)
            except OSError as e:
                if e.errno == errno.EINVAL:  # no longer a symlink
                    self._fail(path, "changed while being read")
                self._fail(path, "cannot read link", e)
            ino = self.b.add_inode(st, target=target, size=len(target))
            self.stats.symlinks += 1
        elif stat.S_ISREG(mode):
            ino = self._file(dfd, name, path, st)
        else:  # fifo, character or block device: stored as nodes, no content
            xattrs = self._node_xattrs(dfd, name, path, st)
            ino = self.b.add_inode(st, size=0)
            self.b.add_xattrs(ino, xattrs)
            self.stats.specials += 1
        self.nlinks[ino] = 1
        if st.st_nlink > 1:
            self.hardlinks[key] = ino
        return ino, None

    def _xattrs(self, fd: int | str, path: bytes) -> dict[bytes, bytes]:
        """The ``user.*`` xattrs of the file open at *fd* (or a ``/proc/self/fd`` path)."""
        try:
            names = os.listxattr(fd)
        except OSError:
            return {}  # filesystem without xattr support
        out = {}
        for n in names:
            bn = os.fsencode(n)
            if bn.startswith(XATTR_PREFIX):
                try:
                    out[bn] = os.getxattr(fd, n)
                except OSError as e:
                    self._fail(path, f"cannot read xattr {n}", e)
        return out

    def _node_xattrs(self, dfd: int, name: bytes, path: bytes, st: os.stat_result) -> dict[bytes, bytes]:
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

    def _file(self, dfd: int, name: bytes, path: bytes, st: os.stat_result) -> int:
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
            ino = self.b.add_inode(before)
            try:
                self.b.add_xattrs(ino, self._xattrs(fd, path))
                if size <= self.inline_threshold:
                    data = self._read_all(fd, path, size)
                    self._check_unchanged(fd, path, before)
                    self._inline(ino, data)
                    self.stats.inline_files += 1
                else:
                    self._chunked(fd, path, ino, size)
                    self._check_unchanged(fd, path, before)
            except _Skip:
                self.b.drop_inode(ino)  # (an inline file is queued only once it can no longer be skipped)
                raise
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += size
        return ino

    def _inline(self, ino: int, data: bytes) -> None:
        """Hash and compress a small file on the pool; record results in walk order.

        The queue is drained by count, never by which job finished first, so
        the manifest's bytes do not depend on thread timing.
        """
        self.inline_q.append((ino, self.up.pool.submit(prepare_inline, data)))
        if len(self.inline_q) > self.max_inline_q:
            self._record_inline()

    def _record_inline(self) -> None:
        ino, fut = self.inline_q.popleft()
        cid, codec, payload = fut.result()
        self.b.set_inline_prepared(ino, cid, lambda: (codec, payload))

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

    def _chunked(self, fd: int, path: bytes, ino: int, size: int) -> None:
        ranges = data_ranges(fd, size)
        pf = _PendingFile(ino, size, [], 0)
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
            self.chunked.append((pf.ino, pf.size, cids))


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
) -> tuple[VersionRecord, PushStats]:
    """Snapshot *src* as the next version of *workspace*; returns the published record and stats.

    Directories whose ``(st_dev, st_ino)`` is a key of *exclude* are left out
    (the value says what they are); by default, wsfs' own (:func:`own_directories`).
    """
    check_workspace(workspace)
    root = os.fsencode(src).rstrip(b"/") or b"/"
    stats = PushStats()
    parent_n = repo.latest(workspace)
    known: set[bytes] = set()
    if parent_n is not None:
        try:
            with repo.open_manifest(repo.record(workspace, parent_n)) as pm:
                known = pm.chunk_ids()
        except (NotFound, IntegrityError, FormatError) as e:
            # Only an optimisation (skipping HEADs): a bad parent must not stop a push.
            log.warning("not using %s@%d to skip uploads: %s", workspace, parent_n, e)
    # Every small file's content goes into this file: private, and named with our
    # pid so that the next command removes it if we are killed (Repository.temp_path).
    mpath = repo.temp_path("manifest", ".sqlite")
    if exclude is None:
        exclude = own_directories(repo)  # now that the cache exists
    with private_umask():  # SQLite creates the file (0644 & ~umask); no other thread runs yet
        builder = ManifestBuilder(mpath, chunk_size=repo.config.chunk_size)
    uploader = _Uploader(repo, known, stats, workers)
    try:
        walker = _Walker(repo, builder, uploader, stats, skip_unreadable, progress, exclude)
        walker.run(root)
        assert ROOT_INO == 1
        builder.finish({"workspace": workspace})
        manifest_hex, manifest_size = repo.put_manifest(mpath)
    except apsw.FullError:
        uploader.close()
        builder.abort()
        raise WsfsError(f"no space left on device for the manifest being built in {os.path.dirname(mpath)}") from None
    except BaseException:
        uploader.close()
        builder.abort()
        raise
    else:
        uploader.close()
    finally:
        try:
            os.unlink(mpath)
        except FileNotFoundError:
            pass
    when = datetime.now(UTC).isoformat(timespec="seconds")
    n = (parent_n or 0) + 1
    for _attempt in range(100):
        record = VersionRecord(
            workspace=workspace,
            version=n,
            parent=n - 1 if n > 1 else None,
            manifest=manifest_hex,
            manifest_size=manifest_size,
            time=when,
            author=author or _default_author(),
            message=message,
            stats=stats.tree(),
        )
        try:
            repo.publish(record)
            return record, stats
        except Conflict:
            # Another push took this number; ours is a full snapshot, so it
            # simply becomes the next version after theirs.
            latest = repo.latest(workspace) or n
            n = max(n, latest) + 1
    raise Conflict(f"could not publish a version of {workspace!r}: too many concurrent writers")
