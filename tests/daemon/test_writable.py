"""``Operations`` over a real ``WritableTree`` (a write layer over a pushed version's ``VersionView``), without a mount.

The rules the adapter decides (SUID/SGID, ``O_TRUNC``, ``direct_io``,
``keep_cache``, new nodes' group) and the tree's fetching of base blocks
before the layer needs them, called as pyfuse3 would; the mount tests
(``tests/mount/test_mount_rw.py``) cover the same through the kernel.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio

from support.cli import Wsfs
from wsfs.cache import BlobCache
from wsfs.daemon import policy
from wsfs.daemon.ops import Operations
from wsfs.daemon.view import VersionView
from wsfs.daemon.writable import WritableTree
from wsfs.layer import BaseId, WriteLayer
from wsfs.repository import Ref, Repository
from wsfs.store import open_store

ROOT = 1
BIG = 300 * 1024  # above the inline threshold: a chunk in the blob cache


def ctx(uid: int = 0, gid: int = 0) -> Any:
    return SimpleNamespace(uid=uid, gid=gid, pid=os.getpid(), umask=0o022)


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Operations]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(BIG))
    (src / "small").write_bytes(b"small")
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "push-cache"))
    w("init")
    w.push(src, "ws")
    repo = Repository.open(open_store(w.repo), str(tmp_path / "cache"))
    record = repo.resolve(Ref.parse("ws@1"))
    manifest = repo.open_manifest(record)
    cache = BlobCache(repo, str(tmp_path / "cache"))
    view = VersionView(manifest, cache, label="ws@1")
    tree = WritableTree(view, lambda rb: WriteLayer(str(tmp_path / "state"), manifest,
                                                     BaseId("ws", 1, record.manifest), rb),
                        label="ws@1", state_dir=str(tmp_path / "state"))
    o = Operations(tree, policy.choose(writable=True, inode_as_handle=False, listings_change=True, has_xattrs=True))
    o.src = src  # type: ignore[attr-defined]
    try:
        yield o
    finally:
        tree.close()
        cache.close()
        manifest.close()


def fields(**set_: bool) -> Any:
    """A ``SetattrFields`` stand-in (pyfuse3's is read-only from Python)."""
    names = ("mode", "uid", "gid", "size", "atime", "mtime", "ctime")
    return SimpleNamespace(**{f"update_{n}": set_.get(n, False) for n in names})


def run(fn: Any, *args: Any) -> Any:
    return trio.run(lambda: fn(*args))


def errno_of(fn: Any, *args: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as e:
        run(fn, *args)
    return e.value.errno


def ino_of(ops: Operations, name: bytes) -> int:
    return int(run(ops.lookup, ROOT, name, ctx()).st_ino)


def test_a_write_into_a_base_file_fetches_its_block_first(ops: Operations) -> None:
    big = ino_of(ops, b"big")
    fi = run(ops.open, big, os.O_RDWR, ctx())
    assert fi.keep_cache and not fi.direct_io  # still the base's content
    cache = ops.tree.view.cache  # type: ignore[attr-defined]
    before = cache.stats.fetches
    assert run(ops.write, fi.fh, 70_000, b"XY") == 2  # inside block 1, partly: copy-up reads it
    assert cache.stats.fetches == before + 1
    src = (ops.src / "big").read_bytes()  # type: ignore[attr-defined]
    got = run(ops.read, fi.fh, 0, BIG)
    assert bytes(got) == src[:70_000] + b"XY" + src[70_002:]
    run(ops.release, fi.fh)
    fi = run(ops.open, big, os.O_RDONLY, ctx())
    assert not fi.keep_cache  # written: the kernel must not keep pages of an earlier open
    run(ops.release, fi.fh)


def test_suid_and_sgid_rules(ops: Operations) -> None:
    small = ino_of(ops, b"small")
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = stat.S_IFREG | 0o6755
    chmod = fields(mode=True)
    assert stat.S_IMODE(run(ops.setattr, small, attr, chmod, None, ctx()).st_mode) == 0o6755
    fi = run(ops.open, small, os.O_WRONLY, ctx(uid=0))
    run(ops.write, fi.fh, 0, b"S")  # root keeps them
    assert stat.S_IMODE(run(ops.getattr, small, ctx()).st_mode) == 0o6755
    run(ops.release, fi.fh)
    fi = run(ops.open, small, os.O_WRONLY, ctx(uid=1000, gid=1000))
    run(ops.write, fi.fh, 0, b"s")  # anyone else clears both (SGID: group-executable)
    assert stat.S_IMODE(run(ops.getattr, small, ctx()).st_mode) == 0o0755
    run(ops.release, fi.fh)
    run(ops.setattr, small, attr, chmod, None, ctx())
    chown = fields(uid=True)
    attr.st_uid = 1234
    st = run(ops.setattr, small, attr, chown, None, ctx())
    assert st.st_uid == 1234 and stat.S_IMODE(st.st_mode) == 0o0755  # a chown clears them, even by root


def test_o_trunc_direct_io_and_sgid_directories(ops: Operations) -> None:
    small = ino_of(ops, b"small")
    fi = run(ops.open, small, os.O_WRONLY | os.O_TRUNC | os.O_DIRECT, ctx())
    assert fi.direct_io and not fi.keep_cache
    assert run(ops.getattr, small, ctx()).st_size == 0
    run(ops.release, fi.fh)
    d = run(ops.mkdir, ROOT, b"shared", stat.S_IFDIR | 0o2775, ctx())
    attr = pyfuse3.EntryAttributes()
    attr.st_gid = 4242
    run(ops.setattr, d.st_ino, attr, fields(gid=True), None, ctx())
    fi, f = run(ops.create, d.st_ino, b"f", stat.S_IFREG | 0o644, os.O_WRONLY, ctx(uid=5, gid=5))
    assert (f.st_uid, f.st_gid) == (5, 4242)
    sub = run(ops.mkdir, d.st_ino, b"sub", stat.S_IFDIR | 0o755, ctx(uid=5, gid=5))
    assert sub.st_gid == 4242 and sub.st_mode & stat.S_ISGID
    run(ops.release, fi.fh)
    assert errno_of(ops.mkdir, d.st_ino, b"sub", 0o755, ctx()) == errno.EEXIST
    assert errno_of(ops.rmdir, ROOT, b"shared", ctx()) == errno.ENOTEMPTY


def test_unlinked_while_open_until_release(ops: Operations) -> None:
    fi, f = run(ops.create, ROOT, b"tmp", stat.S_IFREG | 0o600, os.O_RDWR, ctx())
    run(ops.write, fi.fh, 0, b"still here")
    run(ops.unlink, ROOT, b"tmp", ctx())
    assert run(ops.lookup, ROOT, b"tmp", ctx()).st_ino == 0  # the name is gone
    assert bytes(run(ops.read, fi.fh, 0, 100)) == b"still here"
    assert run(ops.getattr, f.st_ino, ctx()).st_nlink == 0
    run(ops.release, fi.fh)
    assert errno_of(ops.getattr, f.st_ino, ctx()) == errno.ENOENT


def test_attributes_changed_behind_the_kernel_are_invalidated(ops: Operations,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-write policy keeps attributes for a day: what a reply does not carry, the kernel is told to forget."""
    sent: list[tuple[int, bool]] = []
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda ino, attr_only=False: sent.append((ino, attr_only)))
    small = ino_of(ops, b"small")
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = stat.S_IFREG | 0o6755
    run(ops.setattr, small, attr, fields(mode=True), None, ctx())
    fi = run(ops.open, small, os.O_WRONLY, ctx(uid=0))
    run(ops.write, fi.fh, 0, b"S")  # root: nothing cleared, nothing to forget
    run(ops.release, fi.fh)
    assert sent == []
    fi = run(ops.open, small, os.O_WRONLY, ctx(uid=1000, gid=1000))
    run(ops.write, fi.fh, 0, b"s")  # SUID/SGID cleared: the WRITE reply carries no mode
    run(ops.write, fi.fh, 1, b"s")  # nothing left to clear
    run(ops.release, fi.fh)
    assert sent == [(small, True)] and stat.S_IMODE(run(ops.getattr, small, ctx()).st_mode) == 0o755
    run(ops.setattr, small, attr, fields(mode=True), None, ctx())
    fi = run(ops.open, small, os.O_WRONLY | os.O_TRUNC, ctx(uid=1000, gid=1000))  # cleared by the truncation
    run(ops.release, fi.fh)
    assert sent == [(small, True)] * 2 and stat.S_IMODE(run(ops.getattr, small, ctx()).st_mode) == 0o755
    fi = run(ops.open, small, os.O_WRONLY | os.O_TRUNC, ctx(uid=1000, gid=1000))  # nothing to clear
    run(ops.release, fi.fh)
    run(ops.setxattr, small, b"user.k", b"v", ctx())  # ctime: a SETXATTR reply carries no attributes
    run(ops.removexattr, small, b"user.k", ctx())
    assert sent == [(small, True)] * 4 and ops.statistics()["invalidations"] == 4
