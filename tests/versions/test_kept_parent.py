"""The parent a push keeps for the next one (``Parent.save``): the same versions as decoding the parent.

A push keeps the version it published, as the parent of the next push, in
the repository's local state (``parent-<workspace>``), so that an unchanged
push of a large tree does not decode every range of the last version again
(issue 12: an unchanged 30,000-file tree in about a second).  What a user
checks: the versions are the same with it and without it (tops, changesets,
``wsfs diff``, checkouts), and a damaged or stale file changes nothing but
the time.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from support.cli import Wsfs
from support.trees import assert_same_tree
from wsfs.repository import Repository, _local_dir
from wsfs.store import open_store
from wsfs.versions.publish import _SAVED_MAGIC, Parent

pytestmark = pytest.mark.parametrize("store_kind", ["local"], indirect=True)  # (the local state is the same for S3)


def _tree(root: Path) -> Path:
    for d in range(8):
        dd = root / "node_modules" / f"pkg{d}" / "lib"
        dd.mkdir(parents=True)
        for f in range(25):
            (dd / f"m{f}.js").write_bytes(f"module {d}/{f}\n".encode() * (1 + 3 * f))
    (root / "big.bin").write_bytes(os.urandom(300_000))  # chunked
    os.link(root / "node_modules" / "pkg0" / "lib" / "m1.js", root / "hard.js")
    os.symlink("node_modules/pkg0/lib/m0.js", root / "link")
    os.setxattr(root / "node_modules" / "pkg2" / "lib" / "m3.js", "user.tag", b"x")
    return root


def _kept(w: Wsfs, ws: str) -> Path:
    return Path(_local_dir(w.cache_dir, w.repo)) / f"parent-{ws}"


def _repo(w: Wsfs) -> Repository:
    return Repository.open(open_store(w.repo), w.cache_dir)


def _edits(src: Path) -> list:
    """Edits applied in turn between pushes."""
    lib = src / "node_modules"

    def modify() -> None:
        (lib / "pkg3" / "lib" / "m7.js").write_bytes(b"changed\n")

    def add_package() -> None:
        (lib / "new" / "lib").mkdir(parents=True)
        for f in range(10):
            (lib / "new" / "lib" / f"n{f}.js").write_bytes(f"new {f}\n".encode() * 40)

    def remove_and_chmod() -> None:
        shutil.rmtree(lib / "pkg5")
        os.chmod(lib / "pkg1" / "lib" / "m2.js", 0o600)

    def big_changed() -> None:
        with open(src / "big.bin", "r+b") as f:
            f.seek(100_000)
            f.write(b"x" * 10)

    return [modify, add_package, remove_and_chmod, big_changed, lambda: None]


@pytest.fixture
def local(tmp_path: Path, subprocess_env: dict[str, str]) -> Wsfs:
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"), subprocess_env)
    w("init")
    return w


def test_a_kept_parent_is_what_decoding_the_version_gives(local: Wsfs, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    local.push(src, "demo")
    _edits(src)[1]()
    local.push(src, "demo")
    assert _kept(local, "demo").exists() and _kept(local, "demo").stat().st_mode & 0o077 == 0
    repo = _repo(local)
    decoded = Parent.load(repo, "demo", 2)
    kept = Parent.load(repo, "demo", 2, saved="parent-demo")
    assert kept.kept and not decoded.kept
    assert kept.top == decoded.top and kept.top_size == decoded.top_size > 0
    assert kept.entries == decoded.entries and kept.records == decoded.records
    assert kept.bodies == decoded.bodies and kept.ranges == decoded.ranges
    assert kept.chunks == decoded.chunks and kept.packs == decoded.packs
    assert kept.pack_refs == decoded.pack_refs and kept.places == decoded.places
    assert decoded.pieces <= kept.pieces  # (and the changeset the push stored)
    for extra in kept.pieces - decoded.pieces:
        assert repo.has_blob(extra)
    # the kept parent names version 2's tree: for version 1 it is not used
    assert not Parent.load(repo, "demo", 1, saved="parent-demo").kept


def test_pushes_with_and_without_the_kept_parent_make_the_same_versions(local: Wsfs, tmp_path: Path) -> None:
    """Workspace ``a`` pushes with its kept parent, ``b`` the same states with its file removed before each
    push (its parent decoded): every version has the same top and changeset, and checks out exactly."""
    src = _tree(tmp_path / "src")
    out = []
    for step, edit in enumerate([lambda: None, *_edits(src)]):
        edit()
        a = local.push(src, "a")
        _kept(local, "b").unlink(missing_ok=True)
        b = local.push(src, "b")
        out.append((a, b))
        assert a["manifest"] == b["manifest"], step
        assert a["stats"].get("changed") == b["stats"].get("changed"), step
        n = step + 1
        ra, rb = _repo(local).record("a", n), _repo(local).record("b", n)
        assert (ra.changeset, ra.changeset_size) == (rb.changeset, rb.changeset_size), step
        assert local("diff", f"a@{max(1, n - 1)}", f"a@{n}").out == local("diff", f"b@{max(1, n - 1)}", f"b@{n}").out
    local("checkout", "a@6", str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")
    assert out[-1][0]["store"]["requests"].get("put", 0) == 1  # nothing changed: the record only


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "another version's", "not ours at all"])
def test_a_damaged_or_stale_kept_parent_changes_nothing_but_the_time(local: Wsfs, tmp_path: Path,
                                                                      damage: str) -> None:
    src = _tree(tmp_path / "src")
    local.push(src, "demo")
    old = _kept(local, "demo").read_bytes()
    _edits(src)[0]()
    local.push(src, "demo")
    kept = _kept(local, "demo")
    raw = kept.read_bytes()
    if damage == "flipped byte":
        raw = raw[:len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 1]) + raw[len(raw) // 2 + 1:]
    elif damage == "truncated":
        raw = raw[:len(raw) - 100]
    elif damage == "another version's":
        raw = old
    else:
        raw = _SAVED_MAGIC + os.urandom(2000)
    kept.write_bytes(raw)
    _edits(src)[1]()
    r = local.run("push", "--json", src, "demo")
    assert r.json()["stats"]["changed"] == 13  # 10 files, their 2 new directories, node_modules' mtime
    assert ("ignoring the kept parent" in r.err) == (damage not in ("another version's",))
    assert local("diff", "demo@2", "demo@3").out.count(b"\n") == 12  # (a directory whose mtime alone changed: not shown)
    local("checkout", "demo@3", str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")
    assert Parent.load(_repo(local), "demo", 3, saved="parent-demo").kept  # whole again


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "decoded"])
def test_an_unchanged_tree_is_recognised_and_nothing_is_encoded_again(local: Wsfs, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       kept: bool) -> None:
    """The walk's entries of an unchanged tree (files, hard links, symlinks, a fifo, xattrs, a chunked file)
    equal the parent's, whether kept or decoded: the push publishes the parent's tree without building it."""
    from wsfs.versions import publish
    from wsfs.versions.push import push

    src = _tree(tmp_path / "src")
    os.mkfifo(src / "fifo")
    local.push(src, "demo")
    time.sleep(2.2)  # out of the stat cache's racy window: the next push remembers every file
    local.push(src, "demo")
    if not kept:
        _kept(local, "demo").unlink()

    def no_build(*a: object, **k: object) -> None:
        raise AssertionError("an unchanged tree was built again")

    monkeypatch.setattr(publish, "build_version", no_build)
    record, stats = push(_repo(local), str(src), "demo")
    assert record.version == 3 and stats.changed == 0 and stats.unread_files == stats.files
    assert record.manifest == _repo(local).record("demo", 2).manifest
    assert (record.changeset, record.manifest_size) == (None, _repo(local).record("demo", 2).manifest_size)
    monkeypatch.undo()
    local("checkout", "demo@3", str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")
    # one entry changed (a file's mode): built again, one entry in the changeset
    os.chmod(src / "hard.js", 0o600)
    assert local.push(src, "demo")["stats"]["changed"] >= 1


def test_a_kept_parent_is_used_only_for_the_top_and_size_the_record_names(local: Wsfs, tmp_path: Path) -> None:
    """The record's manifest size is the store's word: a kept parent naming another size is not used."""
    from wsfs.versions.publish import _decode_saved

    src = _tree(tmp_path / "src")
    local.push(src, "demo")
    record = _repo(local).record("demo", 1)
    raw = _kept(local, "demo").read_bytes()
    top = bytes.fromhex(record.manifest)
    got = _decode_saved(raw, top, record.manifest_size)
    assert got is not None and got.kept and got.top_size == record.manifest_size
    assert _decode_saved(raw, top, record.manifest_size + 1) is None
    assert _decode_saved(raw, bytes(32), record.manifest_size) is None
