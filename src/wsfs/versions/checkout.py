"""Checkout: materialize a version into a directory, exactly.

Content is verified before it gets its final name: every file is written to
a temporary name beside its destination and renamed only once all of its
bytes were verified, so an integrity failure never leaves a wrong file that
looks right.  Large files are fetched chunk by chunk on a bounded thread
pool; all-zero chunks become holes.  Attributes are applied in the order
that keeps them: owner before mode (``chown`` clears setuid/setgid), and
directory times last, children before parents.

Nothing a manifest says can make checkout leave its destination, and nobody
racing it can redirect it: every entry is created relative to an open
descriptor of its parent (:mod:`wsfs.fsops`), under a name checked
again here (``..``, ``a/b``, NUL are an IntegrityError); directories are
created 0700, checked to be ours, and re-opened with ``O_NOFOLLOW`` and an
identity check; attributes go to descriptors, never to paths that could
have become symlinks.  Only ``user.*`` xattrs are restored (a crafted
``system.posix_acl_default`` would open later files to everyone); owners,
device nodes and setuid bits follow ``tar``'s switches.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from wsfs.errors import IntegrityError, InvalidName, UsageError, WsfsError
from wsfs.format.chunking import is_zero
from wsfs.format.manifest import ROOT_INO, Chunk, Inode, Manifest
from wsfs.format.names import check_entry_name
from wsfs.fsops import XATTR_PREFIX, DirChain, Ident, Moved, ident, open_node, proc_path
from wsfs.repository import Repository
from wsfs.versions.read import SmallFiles

log = logging.getLogger(__name__)


@dataclass
class CheckoutStats:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    chunks_fetched: int = 0
    warnings: int = 0


class _Dir(NamedTuple):
    """A directory created by the checkout: its parent's index in ``dirs``, name, identity, manifest row."""

    parent: int
    name: bytes
    ident: Ident
    node: Inode


class _Inflight(NamedTuple):
    """A large file being fetched into a temporary file."""

    dir_fd: int  # a duplicate of its directory's descriptor, for the rename
    dir_idx: int
    tmp: bytes
    name: bytes
    node: Inode
    fd: int
    futures: list[Future[None]]


class _Materializer:
    def __init__(
        self,
        repo: Repository,
        m: Manifest,
        dest: bytes,
        root_fd: int,
        workers: int,
        progress: Callable[[int], None],
        *,
        same_owner: bool,
        devices: bool,
        setuid: bool,
    ):
        self.repo = repo
        self.m = m
        self.dest = dest
        self.progress = progress
        self.same_owner = same_owner
        self.devices = devices
        self.setuid = setuid
        self.euid = os.geteuid()
        self.stats = CheckoutStats()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsfs-checkout")
        # A checkout reads every small file in key order: a long read-ahead makes long runs of packs (one GET
        # per RUN_MAX of a segment), 64 packs of 24-40 KiB being about 2 MiB.
        self.small = SmallFiles(repo, m, workers=workers, ahead=64)
        self.max_window = 2 * workers
        self.max_files = 8 * workers
        self.any_xattrs = m.has_xattrs()
        root = m.getattr(ROOT_INO)
        self.chain = DirChain(root_fd)  # owns root_fd from here
        self.dirs: list[_Dir] = [_Dir(-1, b"", self.chain.root_ident, root)]
        # hard links: the first name of each inode linked more than once, then (inode, dir, name) to add
        self.first: dict[int, tuple[int, bytes, Ident | None]] = {}  # ident None: not in place yet
        self.links: list[tuple[int, int, bytes]] = []
        self.inflight: collections.deque[_Inflight] = collections.deque()
        self.window = 0

    def warn(self, msg: str) -> None:
        self.stats.warnings += 1
        log.warning("%s", msg)

    def _path(self, idx: int, name: bytes = b"") -> str:
        """The path of an entry, for messages only."""
        parts = [name] if name else []
        while idx > 0:
            d = self.dirs[idx]
            parts.append(d.name)
            idx = d.parent
        return os.fsdecode(b"/".join([self.dest, *reversed(parts)]))

    def _goto(self, idx: int) -> int:
        """The descriptor of created directory *idx*, reached from the root by name and identity."""
        steps = []
        i = idx
        while i > 0:
            d = self.dirs[i]
            steps.append((d.name, d.ident))
            i = d.parent
        try:
            return self.chain.goto(steps[::-1])
        except Moved as e:
            raise WsfsError(f"{self._path(idx)}: changed during checkout ({os.fsdecode(e.name)} was replaced)") from None

    def run(self) -> CheckoutStats:
        try:
            stack = [0]
            seen = {ROOT_INO}
            while stack:
                idx = stack.pop()
                subdirs = self._directory(idx, seen)
                stack.extend(reversed(subdirs))
            self._drain(0)
            for ino, didx, name in self.links:
                self._link(ino, didx, name)
        except BaseException:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.small.close()
            for f in self.inflight:
                os.close(f.fd)
                with contextlib.suppress(OSError):
                    os.unlink(f.tmp, dir_fd=f.dir_fd)
                os.close(f.dir_fd)
            self.chain.close()
            raise
        self.pool.shutdown(wait=True)
        try:
            for idx in range(len(self.dirs) - 1, -1, -1):  # children before parents: their mtimes stay
                self._attrs(self._goto(idx), self.dirs[idx].node, idx)
        finally:
            self.chain.close()
        return self.stats

    def _directory(self, idx: int, seen: set[int]) -> list[int]:
        """Create the entries of created directory *idx*; returns the indexes of its subdirectories."""
        dfd = self._goto(idx)
        subdirs = []
        for _, name, node in self.m.readdir(self.dirs[idx].node.ino):
            try:
                if not isinstance(name, bytes):  # a crafted manifest may hold TEXT or numbers
                    raise InvalidName(repr(name))
                check_entry_name(name)
            except InvalidName:
                raise IntegrityError(f"{self._path(idx)}: the manifest has an invalid entry name {name!r}") from None
            if node.is_dir:
                if node.ino in seen:
                    raise IntegrityError(f"{self._path(idx, name)}: the manifest's directories are not a tree")
                seen.add(node.ino)
                subdirs.append(self._mkdir(dfd, idx, name, node))
            else:
                self._entry(dfd, idx, name, node)
            self.stats.entries += 1
            self.progress(1)
        return subdirs

    def _mkdir(self, dfd: int, idx: int, name: bytes, node: Inode) -> int:
        os.mkdir(name, 0o700, dir_fd=dfd)
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != self.euid:
            raise WsfsError(f"{self._path(idx, name)}: changed during checkout")
        self.dirs.append(_Dir(idx, name, ident(st), node))
        return len(self.dirs) - 1

    def _entry(self, dfd: int, idx: int, name: bytes, node: Inode) -> None:
        mode = node.mode
        if node.ino in self.first:  # hard link: made once every file has its final name
            self.links.append((node.ino, idx, name))
            return
        if stat.S_ISREG(mode):
            self._file(dfd, idx, name, node)
            return
        if stat.S_ISLNK(mode):
            if node.target is None or b"\0" in node.target:
                raise IntegrityError(f"{self._path(idx, name)}: the manifest has an invalid symlink target")
            os.symlink(node.target, name, dir_fd=dfd)
            if self.same_owner:
                self._chown(lambda u, g: os.chown(name, u, g, dir_fd=dfd, follow_symlinks=False), node, idx, name)
            os.utime(name, dir_fd=dfd, ns=(node.atime_ns, node.mtime_ns), follow_symlinks=False)
            if node.nlink > 1:
                self.first[node.ino] = (idx, name, ident(os.stat(name, dir_fd=dfd, follow_symlinks=False)))
            return
        if stat.S_ISFIFO(mode):
            os.mkfifo(name, 0o600, dir_fd=dfd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            if not self.devices:
                self.warn(f"{self._path(idx, name)}: device node left out (--no-devices)")
                return
            try:
                os.mknod(name, stat.S_IFMT(mode) | 0o600, node.rdev, dir_fd=dfd)
            except PermissionError:
                self.warn(f"{self._path(idx, name)}: not allowed to create device nodes; left out")
                return
        else:
            raise IntegrityError(f"{self._path(idx, name)}: the manifest has an entry of unknown type {mode:o}")
        fd, st = open_node(name, dfd)
        try:
            if stat.S_IFMT(st.st_mode) != stat.S_IFMT(mode) or st.st_uid != self.euid:
                raise WsfsError(f"{self._path(idx, name)}: changed during checkout")
            self._attrs(proc_path(fd), node, idx, name)
        finally:
            os.close(fd)
        if node.nlink > 1:
            self.first[node.ino] = (idx, name, ident(st))

    def _file(self, dfd: int, idx: int, name: bytes, node: Inode) -> None:
        if node.nlink > 1:
            self.first[node.ino] = (idx, name, None)
        tmp = b".wsfs-tmp-" + name[:200]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        self.stats.files += 1
        self.stats.bytes += node.size
        if node.inline or node.packed:
            try:
                os.write(fd, self.small.data(node))
                self._finish(dfd, idx, tmp, name, node, fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            finally:
                os.close(fd)
            return
        try:
            os.ftruncate(fd, node.size)  # zero chunks stay holes
            dup = os.dup(dfd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        f = _Inflight(dup, idx, tmp, name, node, fd, [])
        self.inflight.append(f)
        for c in self.m.chunks(node.ino):
            if c.cid is None:
                continue
            f.futures.append(self.pool.submit(self._fetch_chunk, fd, c))
            self.window += 1
            self.stats.chunks_fetched += 1
        self._drain(self.max_window)

    def _fetch_chunk(self, fd: int, c: Chunk) -> None:
        assert c.cid is not None
        data = self.repo.get_blob(c.cid, c.length)
        if len(data) != c.length:
            raise IntegrityError(f"chunk {c.cid.hex()} has {len(data)} bytes, the manifest says {c.length}")
        pwrite_sparse(fd, data, c.idx * self.m.chunk_size)

    def _drain(self, keep: int) -> None:
        while self.inflight and (
            self.window > keep or len(self.inflight) > self.max_files or all(f.done() for f in self.inflight[0].futures)
        ):
            f = self.inflight[0]
            for fut in f.futures:
                fut.result()
            self.inflight.popleft()
            self.window -= len(f.futures)
            try:
                self._finish(f.dir_fd, f.dir_idx, f.tmp, f.name, f.node, f.fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(f.tmp, dir_fd=f.dir_fd)
                raise
            finally:
                os.close(f.fd)
                os.close(f.dir_fd)

    def _finish(self, dfd: int, idx: int, tmp: bytes, name: bytes, node: Inode, fd: int) -> None:
        """Attributes on the open file, then its final name."""
        self._attrs(fd, node, idx, name)
        if node.nlink > 1:
            self.first[node.ino] = (idx, name, ident(os.fstat(fd)))
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)

    def _link(self, ino: int, idx: int, name: bytes) -> None:
        sidx, sname, sident = self.first[ino]
        fd, st = open_node(sname, self._goto(sidx))
        try:
            if sident is None or ident(st) != sident:
                raise WsfsError(f"{self._path(sidx, sname)}: changed during checkout")
            os.link(proc_path(fd), name, dst_dir_fd=self._goto(idx), follow_symlinks=True)
        finally:
            os.close(fd)

    def _chown(self, chown: Callable[[int, int], None], node: Inode, idx: int, name: bytes = b"") -> None:
        try:
            chown(node.uid, node.gid)
        except PermissionError:
            if self.euid == 0:
                raise
            self.warn(f"{self._path(idx, name)}: cannot give it to {node.uid}:{node.gid}; left as yours")

    def _attrs(self, f: int | str, node: Inode, idx: int, name: bytes = b"") -> None:
        """xattrs, owner, mode and times of entry *name* of directory *idx* (or of *idx* itself).

        *f* is a descriptor of it or a ``/proc/self/fd`` path; the path is built for messages only.
        """
        if self.any_xattrs:
            for xname, value in self.m.xattrs(node.ino).items():
                if not xname.startswith(XATTR_PREFIX):
                    self.warn(f"{self._path(idx, name)}: xattr {os.fsdecode(xname)} not restored: only user.* xattrs are")
                    continue
                try:
                    os.setxattr(f, xname, value)
                except OSError as e:
                    self.warn(f"{self._path(idx, name)}: cannot set xattr {os.fsdecode(xname)}: {e.strerror}")
        if self.same_owner:
            self._chown(lambda u, g: os.chown(f, u, g), node, idx, name)
        mode = stat.S_IMODE(node.mode)
        if not self.setuid and not node.is_dir:
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        os.chmod(f, mode)
        os.utime(f, ns=(node.atime_ns, node.mtime_ns))


def checkout(
    repo: Repository,
    m: Manifest,
    dest: str | bytes,
    *,
    workers: int = 8,
    progress: Callable[[int], None] = lambda n: None,
    same_owner: bool | None = None,
    devices: bool = True,
    setuid: bool = True,
) -> CheckoutStats:
    """Materialize the tree of manifest *m* at *dest*, which must be absent or an empty directory.

    Like ``tar -x``: *same_owner* (default: when running as root) gives
    entries their recorded owner; *devices* False leaves device nodes out,
    *setuid* False clears setuid/setgid bits of files.  Only ``user.*``
    xattrs are restored.
    """
    d = os.fsencode(dest).rstrip(b"/") or b"/"
    if same_owner is None:
        same_owner = os.geteuid() == 0
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise WsfsError(f"cannot create {os.fsdecode(d)}: {e.strerror}") from None
    try:
        root_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the user's path: opened once
    except NotADirectoryError:
        raise UsageError(f"{os.fsdecode(d)} exists and is not an empty directory") from None
    except OSError as e:
        raise WsfsError(f"cannot open {os.fsdecode(d)}: {e.strerror}") from None
    try:
        if os.listdir(root_fd):
            raise UsageError(f"{os.fsdecode(d)} exists and is not an empty directory")
        mat = _Materializer(
            repo, m, d, root_fd, workers, progress, same_owner=same_owner, devices=devices, setuid=setuid
        )
    except BaseException:
        os.close(root_fd)
        raise
    try:
        return mat.run()
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise WsfsError(f"checkout into {os.fsdecode(d)} failed: no space left on device") from None
        raise WsfsError(f"checkout into {os.fsdecode(d)} failed: {e}") from None
    except ValueError as e:  # a NUL byte where the system takes none
        raise IntegrityError(f"checkout into {os.fsdecode(d)} failed: the manifest has {e}") from None


_HOLE = 4096  # the granularity of the holes checkout leaves (a file system block)


def pwrite_sparse(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write *data* at *offset* (a multiple of 4 KiB) of a file truncated to its size, leaving every aligned
    4 KiB block of zeros a hole: a chunk that holds a few written bytes amid zeros (a sparse file's) takes
    the blocks of those bytes on disk, not the chunk's 4 MiB, as on the file system it was pushed from."""
    mv = memoryview(data).cast("B")
    n = len(mv)
    firsts = bytes(mv[::_HOLE])  # a block of zeros starts with one: only those blocks are compared
    zero: list[int] = []
    k = firsts.find(0)
    while k >= 0:
        if (k + 1) * _HOLE <= n and is_zero(mv[k * _HOLE:(k + 1) * _HOLE]):
            zero.append(k)
        k = firsts.find(0, k + 1)
    at = 0  # the start of the next run of blocks with data
    for k in zero + [-1]:
        end = n if k < 0 else k * _HOLE
        if end > at:
            os.pwrite(fd, mv[at:end], offset + at)
        at = end + _HOLE
