"""``daemon/ops.py`` without a mount: ``Operations`` over a fake tree, called as pyfuse3 would.

Replies are real pyfuse3 objects; ``readdir_reply`` (which needs a kernel
request) is replaced by a stand-in that accepts a given number of entries.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from typing import Any

import pyfuse3
import pytest
import trio

from wsfs.daemon import policy
from wsfs.daemon.ops import Operations
from wsfs.daemon.tree import FsStats, Lifetime, NotReady
from wsfs.daemon.view import Deadline
from wsfs.errors import NotFound
from wsfs.format.manifest import Inode

ROOT, FILE, DIR = 1, 2, 3
_CTX: Any = None  # no handler used here reads the request context


def _node(ino: int, mode: int, size: int = 0) -> Inode:
    return Inode(ino, mode, 0, 0, size, 0, 1, 2, 3, 1, 0, None, None, None)


class FakeTree:
    """A root with a file and a directory; the file's bytes are its inode number repeated."""

    label = "fake"
    has_xattrs = False
    listings_change = False

    def __init__(self) -> None:
        self.deadline = Deadline(5.0, label=self.label)
        self.nodes = {ROOT: _node(ROOT, stat.S_IFDIR | 0o755), FILE: _node(FILE, stat.S_IFREG | 0o644, 10),
                      DIR: _node(DIR, stat.S_IFDIR | 0o755)}
        self.names = {b"file": FILE, b"dir": DIR}
        self.not_ready = 0  # lookups that first raise NotReady
        self.waited = 0

    def getattr(self, ino: int) -> Inode:
        if ino not in self.nodes:
            raise NotFound(f"no inode {ino}")
        return self.nodes[ino]

    def lookup(self, parent: int, name: bytes) -> Inode | None:
        if self.not_ready:
            self.not_ready -= 1
            raise NotReady(self._wait)
        if name == b"boom":
            raise RuntimeError("a bug")
        ino = self.names.get(name)
        return None if ino is None else self.nodes[ino]

    async def _wait(self) -> None:
        self.waited += 1

    def lifetime(self, node: Inode) -> Lifetime:
        return Lifetime.LISTED if node.ino == DIR else Lifetime.FIXED

    def miss_lifetime(self, parent: int) -> Lifetime:
        return Lifetime.FIXED

    def readlink(self, ino: int) -> bytes:
        raise NotFound("no links")

    def opendir(self, ino: int) -> None:
        self.getattr(ino)

    def readdir(self, ino: int, after: int, limit: int) -> list[tuple[int, bytes, Inode]]:
        entries = [(i + 1, name, self.nodes[ino]) for i, (name, ino) in enumerate(sorted(self.names.items()))]
        return [e for e in entries if e[0] > after][:limit]

    def open(self, ino: int) -> Inode:
        return self.getattr(ino)

    async def read(self, ino: int, off: int, size: int) -> bytes:
        return (bytes([ino]) * self.getattr(ino).size)[off:off + size]

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return {}

    def statfs(self) -> FsStats:
        return FsStats(blocks=12, files=3)


def _ops(*, writable: bool = False, inode_as_handle: bool = True) -> Operations:
    tree = FakeTree()
    p = policy.choose(writable=writable, inode_as_handle=inode_as_handle, listings_change=False, has_xattrs=False)
    return Operations(tree, p)  # type: ignore[arg-type]


def run(fn: Any, *args: Any) -> Any:
    return trio.run(lambda: fn(*args))


def errno_of(fn: Any, *args: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as e:
        run(fn, *args)
    return e.value.errno


class Replies:
    """What a stand-in ``readdir_reply`` accepted: ``(name, st_ino, entry_timeout, next_id)``, up to *limit*."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, int, float, int]] = []
        self.limit = 1 << 30

    def __call__(self, token: Any, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if len(self.got) >= self.limit:
            return False  # the kernel's buffer is full: this entry is not handed out
        self.got.append((name, attr.st_ino, attr.entry_timeout, next_id))
        return True


@pytest.fixture
def accepting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Replies]:
    replies = Replies()
    monkeypatch.setattr(pyfuse3, "readdir_reply", replies)
    yield replies


def test_lookup_counts_positive_entries_only() -> None:
    ops = _ops()
    a = run(ops.lookup, ROOT, b"file", _CTX)
    assert (a.st_ino, a.entry_timeout, a.attr_timeout, a.st_size, a.st_blksize) == (FILE, 86400.0, 86400.0, 10, 131072)
    run(ops.lookup, ROOT, b"file", _CTX)
    d = run(ops.lookup, ROOT, b"dir", _CTX)
    assert (d.entry_timeout, d.attr_timeout) == (1.0, 1.0)  # the tree's lifetime, the policy's timeouts
    miss = run(ops.lookup, ROOT, b"nope", _CTX)
    assert (miss.st_ino, miss.entry_timeout) == (0, 86400.0)  # a negative entry: nothing counted
    g = run(ops.getattr, FILE, _CTX)  # a getattr hands out no lookup
    assert g.st_ino == FILE and ops.inodes.counts == {FILE: 2, DIR: 1}
    run(ops.forget, [(FILE, 2), (DIR, 1)])
    assert len(ops.inodes) == 0 and ops.inodes.mismatches == 0


def test_readdir_counts_the_entries_the_kernel_accepted(accepting: Replies) -> None:
    ops = _ops()
    accepting.limit = 1  # the kernel's buffer holds one entry
    run(ops.readdir, ROOT, 0, None)
    assert [e[0] for e in accepting.got] == [b"dir"] and ops.inodes.counts == {DIR: 1}
    accepting.limit = 10
    run(ops.readdir, ROOT, accepting.got[-1][3], None)  # resumes after "dir"
    assert [e[0] for e in accepting.got] == [b"dir", b"file"] and ops.inodes.counts == {DIR: 1, FILE: 1}
    assert [e[2] for e in accepting.got] == [1.0, 86400.0]


def test_not_ready_is_awaited_and_counted_once() -> None:
    ops = _ops()
    ops.tree.not_ready = 2  # type: ignore[attr-defined]
    assert run(ops.lookup, ROOT, b"file", _CTX).st_ino == FILE
    assert ops.tree.waited == 2 and ops.inodes.counts == {FILE: 1}  # type: ignore[attr-defined]


def test_errors_map_to_errno_and_a_bug_to_eio() -> None:
    ops = _ops()
    assert errno_of(ops.getattr, 99, _CTX) == errno.ENOENT
    assert errno_of(ops.lookup, ROOT, b"boom", _CTX) == errno.EIO
    assert errno_of(ops.write, FILE, 0, b"x") == errno.EROFS
    assert ops.stats.errors["lookup"] == 1 and ops.stats.requests["lookup"] == 1 and len(ops.inodes) == 0


def test_read_only_with_inode_as_handle_needs_no_open() -> None:
    ops = _ops()
    for op, args in ((ops.open, (FILE, os.O_RDONLY, _CTX)), (ops.opendir, (ROOT, _CTX)), (ops.flush, (FILE,)),
                     (ops.getxattr, (FILE, b"user.x", _CTX))):
        assert errno_of(op, *args) == errno.ENOSYS
    assert run(ops.read, FILE, 0, 4096) == bytes([FILE]) * 10  # the handle is the inode
    assert len(ops.handles) == 0 and ops.handles.opened == 0 and not ops.stats.errors


def test_without_the_patch_open_gives_handles_from_the_table(accepting: Replies) -> None:
    ops = _ops(inode_as_handle=False)
    assert errno_of(ops.open, FILE, os.O_WRONLY, _CTX) == errno.EROFS
    fi = run(ops.open, FILE, os.O_RDONLY, _CTX)
    assert fi.fh != FILE and fi.keep_cache and ops.handles.get(fi.fh).ino == FILE
    assert run(ops.read, fi.fh, 0, 4) == bytes([FILE]) * 4
    dh = run(ops.opendir, ROOT, _CTX)
    run(ops.readdir, dh, 0, None)
    assert len(accepting.got) == 2 and len(ops.handles) == 2
    assert errno_of(ops.flush, fi.fh) == errno.ENOSYS  # read-only: FLUSH is switched off even so
    run(ops.release, fi.fh)
    run(ops.releasedir, dh)
    assert len(ops.handles) == 0
    assert errno_of(ops.read, fi.fh, 0, 4) == errno.EBADF  # a released handle is not someone else's file


def test_read_write_policy_answers_open_not_opendir_or_flush(accepting: Replies) -> None:
    ops = _ops(writable=True)
    fi = run(ops.open, FILE, os.O_RDONLY, _CTX)
    assert not fi.keep_cache and ops.handles.get(fi.fh).ino == FILE
    assert errno_of(ops.flush, fi.fh) == errno.ENOSYS  # close has nothing to learn: RELEASE does the work
    assert errno_of(ops.opendir, ROOT, _CTX) == errno.ENOSYS  # (patched pyfuse3) readdir gets the inode
    run(ops.readdir, ROOT, 0, None)
    assert len(accepting.got) == 2 and len(ops.handles) == 1
    a = run(ops.lookup, ROOT, b"file", _CTX)
    assert (a.entry_timeout, a.attr_timeout) == (86400.0, 86400.0)
    assert run(ops.statfs, _CTX).f_blocks == 12
