"""Commit: a write layer's changes published as new versions (wsfs.versions.commit)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from commit_support import describe_layer, describe_version
from conftest import Base, push_tree
from layer_support import resolve
from wsfs.format.manifest import ROOT_INO
from wsfs.layer import WriteLayer
from wsfs.versions.commit import commit_layer


def small_tree(src: Path) -> None:
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "b.txt").write_bytes(b"bravo" * 1000)
    (src / "d").mkdir()
    (src / "d" / "x").write_bytes(b"x" * 10)
    (src / "d" / "sub").mkdir()
    (src / "d" / "sub" / "z").write_bytes(b"zulu")
    (src / "link").symlink_to("a.txt")
    os.link(src / "b.txt", src / "b2.txt")
    os.setxattr(src / "a.txt", "user.color", b"red")
    (src / "big.bin").write_bytes(os.urandom(300 * 1024) + bytes(5 << 20))


def open_layer(base: Base, state: Path) -> WriteLayer:
    return WriteLayer(str(state), base.m, base.id, base.read_base)


@pytest.fixture
def setup(tmp_path: Path):
    base = push_tree(tmp_path, small_tree)
    lay = open_layer(base, tmp_path / "state")
    yield base, lay
    lay.close()
    base.m.close()


def check_version(base: Base, lay: WriteLayer, n: int) -> None:
    assert describe_version(base.repo, base.id.workspace, n) == describe_layer(lay)


def test_commit_of_every_kind_of_change(setup) -> None:
    base, lay = setup
    root = ROOT_INO
    f = lay.create(root, b"new.txt", stat.S_IFREG | 0o640, 1000, 1000)
    lay.write(f.ino, 0, b"hello")
    lay.release(f.ino)
    a = resolve(lay, b"a.txt")
    lay.write(a.ino, 0, b"ALPHA")
    lay.setattr(a.ino, mode=0o600)
    lay.unlink(root, b"link")
    lay.symlink(root, b"link2", b"d/x", 0, 0)
    d = resolve(lay, b"d")
    lay.rename(root, b"d", root, b"e")
    lay.link(resolve(lay, b"e/x").ino, root, b"x-again")
    lay.setxattr(resolve(lay, b"e/sub/z").ino, b"user.k", b"v")
    big = resolve(lay, b"big.bin")
    lay.write(big.ino, 5 << 20, b"tail")  # into the second chunk: the first keeps its id
    lay.setattr(resolve(lay, b"b.txt").ino, size=10)
    assert d.ino == resolve(lay, b"e").ino
    record, stats = commit_layer(base.repo, lay, message="one")
    assert record is not None and record.version == 2 and stats.version == 2
    check_version(base, lay, 2)
    # nothing changed since: nothing to commit
    record, stats = commit_layer(base.repo, lay)
    assert record is None and stats.ours == 0
