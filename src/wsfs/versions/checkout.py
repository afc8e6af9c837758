"""Checkout: materialize a version into a directory, exactly.

Content is verified before it gets its final name: every file is written to
a temporary name beside its destination and renamed only once all of its
bytes were verified, so an integrity failure never leaves a wrong file that
looks right.  Large files are fetched chunk by chunk on a bounded thread
pool; all-zero chunks become holes.  Attributes are applied in the order
that keeps them: owner before mode (``chown`` clears setuid/setgid), and
directory times last, children before parents.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from wsfs.errors import IntegrityError, UsageError, WsfsError
from wsfs.format.manifest import ROOT_INO, Chunk, Inode, Manifest
from wsfs.repository import Repository

log = logging.getLogger(__name__)


@dataclass
class CheckoutStats:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    chunks_fetched: int = 0
    warnings: int = 0


class _Materializer:
    def __init__(self, repo: Repository, m: Manifest, dest: bytes, workers: int, progress: Callable[[int], None]):
        self.repo = repo
        self.m = m
        self.dest = dest
        self.progress = progress
        self.stats = CheckoutStats()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsfs-checkout")
        self.max_window = 2 * workers
        self.is_root = os.geteuid() == 0
        self.first_path: dict[int, bytes] = {}
        self.links: list[tuple[bytes, bytes]] = []  # (existing, new): made once every file is in place
        self.tmp_files: set[bytes] = set()
        # (final path, tmp path, node, fd, futures): large files being fetched
        self.inflight: collections.deque[tuple[bytes, bytes, Inode, int, list[Future[None]]]] = collections.deque()
        self.window = 0

    def warn(self, msg: str) -> None:
        self.stats.warnings += 1
        log.warning("%s", msg)

    def run(self) -> CheckoutStats:
        dirs: list[tuple[bytes, Inode]] = [(self.dest, self.m.getattr(ROOT_INO))]
        try:
            for rel, node in self.m.walk():
                path = self.dest + b"/" + rel
                self._entry(path, node, dirs)
                self.stats.entries += 1
                self.progress(1)
            self._drain(0)
            for existing, new in self.links:
                os.link(existing, new)
        except BaseException:
            self.pool.shutdown(wait=True, cancel_futures=True)
            for _, _, _, fd, _ in self.inflight:
                os.close(fd)
            for tmp in self.tmp_files:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            raise
        self.pool.shutdown(wait=True)
        for path, node in reversed(dirs):  # children before parents: their mtimes stay
            self._attrs(path, node)
        return self.stats

    def _entry(self, path: bytes, node: Inode, dirs: list[tuple[bytes, Inode]]) -> None:
        mode = node.mode
        if stat.S_ISDIR(mode):
            os.mkdir(path, 0o700)
            dirs.append((path, node))
            return
        if node.ino in self.first_path:  # hard link: its first name may still be a temporary file
            self.links.append((self.first_path[node.ino], path))
            return
        self.first_path[node.ino] = path
        if stat.S_ISREG(mode):
            self._file(path, node)
            return
        if stat.S_ISLNK(mode):
            assert node.target is not None
            os.symlink(node.target, path)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(path, 0o600)
        else:
            try:
                os.mknod(path, stat.S_IFMT(mode) | 0o600, node.rdev)
            except PermissionError:
                self.warn(f"{os.fsdecode(path)}: not allowed to create device nodes; left out")
                return
        self._attrs(path, node)

    def _tmp_path(self, path: bytes) -> bytes:
        d, name = os.path.split(path)
        return d + b"/.wsfs-tmp-" + name[:200]

    def _file(self, path: bytes, node: Inode) -> None:
        tmp = self._tmp_path(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.tmp_files.add(tmp)
        self.stats.files += 1
        self.stats.bytes += node.size
        if node.inline:
            try:
                os.write(fd, self.m.inline_data(node))
            finally:
                os.close(fd)
            self._finish(path, tmp, node)
            return
        os.ftruncate(fd, node.size)  # zero chunks stay holes
        futs = []
        for c in self.m.chunks(node.ino):
            if c.cid is None:
                continue
            futs.append(self.pool.submit(self._fetch_chunk, fd, c))
            self.window += 1
            self.stats.chunks_fetched += 1
        self.inflight.append((path, tmp, node, fd, futs))
        self._drain(self.max_window)

    def _fetch_chunk(self, fd: int, c: Chunk) -> None:
        assert c.cid is not None
        data = self.repo.get_blob(c.cid, c.length)
        if len(data) != c.length:
            raise IntegrityError(f"chunk {c.cid.hex()} has {len(data)} bytes, the manifest says {c.length}")
        os.pwrite(fd, data, c.idx * self.m.chunk_size)

    def _drain(self, keep: int) -> None:
        while self.inflight and (self.window > keep or all(f.done() for f in self.inflight[0][4])):
            path, tmp, node, fd, futs = self.inflight.popleft()
            try:
                for f in futs:
                    f.result()
            finally:
                os.close(fd)
            self.window -= len(futs)
            self._finish(path, tmp, node)

    def _finish(self, path: bytes, tmp: bytes, node: Inode) -> None:
        self._attrs(tmp, node)
        os.rename(tmp, path)
        self.tmp_files.discard(tmp)

    def _attrs(self, path: bytes, node: Inode) -> None:
        is_link = stat.S_ISLNK(node.mode)
        if not is_link:
            for name, value in self.m.xattrs(node.ino).items():
                try:
                    os.setxattr(path, name, value, follow_symlinks=False)
                except OSError as e:
                    self.warn(f"{os.fsdecode(path)}: cannot set xattr {os.fsdecode(name)}: {e.strerror}")
        if self.is_root:
            os.chown(path, node.uid, node.gid, follow_symlinks=False)
        if not is_link:
            os.chmod(path, stat.S_IMODE(node.mode))
        os.utime(path, ns=(node.atime_ns, node.mtime_ns), follow_symlinks=False)


def checkout(
    repo: Repository,
    m: Manifest,
    dest: str | bytes,
    *,
    workers: int = 8,
    progress: Callable[[int], None] = lambda n: None,
) -> CheckoutStats:
    """Materialize the tree of manifest *m* at *dest*, which must be absent or an empty directory."""
    d = os.fsencode(dest).rstrip(b"/") or b"/"
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        if not os.path.isdir(d) or os.listdir(d):
            raise UsageError(f"{os.fsdecode(d)} exists and is not an empty directory") from None
    except OSError as e:
        raise WsfsError(f"cannot create {os.fsdecode(d)}: {e.strerror}") from None
    try:
        return _Materializer(repo, m, d, workers, progress).run()
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise WsfsError(f"checkout into {os.fsdecode(d)} failed: no space left on device") from None
        raise WsfsError(f"checkout into {os.fsdecode(d)} failed: {e}") from None
