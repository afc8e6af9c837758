"""Property: any sequence of layer edits, committed several times, gives versions that check out exactly
as the layer's merged view was at each commit (names, types, modes, owners, mtimes, targets, hard links,
xattrs, bytes), and after each commit nothing is pending.

Edits go through the layer's API: create, write (small, and across the inline threshold both ways),
truncate, unlink, rename (files and directories, over files), chmod, symlink, hard link, xattr, mkdir,
rmdir; between commits some edits happen after the snapshot was taken (they go into the next commit).
"""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest
from commit_support import describe_layer, describe_version, layer_walk
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from layer_support import Base

from support.cli import Wsfs
from wsfs.errors import FsError, UsageError
from wsfs.format.manifest import ROOT_INO
from wsfs.layer import WriteLayer
from wsfs.repository import Repository
from wsfs.store import open_store
from wsfs.versions.commit import CommitConflict, commit

KINDS = ("create", "write", "grow", "shrink", "unlink", "rename", "chmod", "symlink", "link", "xattr", "mkdir", "rmdir")
edits = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 1 << 30), st.integers(0, 1 << 30)), max_size=6)
rounds = st.lists(st.tuples(edits, edits), min_size=1, max_size=4)  # (before the snapshot, while it is open)


def _base(root: Path) -> None:
    for d in range(3):
        dd = root / f"d{d}" / "sub"
        dd.mkdir(parents=True)
        for f in range(6):
            (dd / f"f{f}.txt").write_bytes(f"{d}.{f}\n".encode() * (3 + 7 * f))
    (root / "big.bin").write_bytes(bytes(range(256)) * 1200)
    os.link(root / "d1" / "sub" / "f2.txt", root / "d0" / "hard")
    os.link(root / "big.bin", root / "d2" / "big-again")
    os.setxattr(root / "d2" / "sub" / "f1.txt", "user.base", b"1")


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("seq")
    src = tmp / "src"
    src.mkdir()
    _base(src)
    w = Wsfs(str(tmp / "repo"), str(tmp / "cache"))
    w("init")
    return tmp, w, src


_n = itertools.count()


def _apply(lay: WriteLayer, kind: str, a: int, b: int, n: int) -> None:
    entries = list(layer_walk(lay))[1:]
    dirs = [(b"", lay.getattr(ROOT_INO))] + [(p, x) for p, x in entries if x.is_dir]
    files = [(p, x) for p, x in entries if stat.S_ISREG(x.mode)]
    others = [(p, x) for p, x in entries if not x.is_dir]
    place = dirs[a % len(dirs)][1].ino
    name = b"n%d-%d" % (n, b % 97)
    try:
        if kind == "create":
            f = lay.create(place, name, stat.S_IFREG | 0o644, 0, 0)
            lay.write(f.ino, 0, bytes([b % 251]) * ((b % 5000) if b % 11 else 150_000 + b % 1000))
        elif kind == "write" and files:
            x = files[b % len(files)][1]
            lay.write(x.ino, (a % max(1, x.size + 1)), b"w%d" % n * (1 + b % 50))
        elif kind == "grow" and files:
            x = files[b % len(files)][1]
            lay.write(x.ino, 140_000 + a % 5000, b"grown")  # a small file becomes chunked, with a hole
        elif kind == "shrink" and files:
            lay.setattr(files[b % len(files)][1].ino, size=a % 3000)
        elif kind == "unlink" and others:
            p, _ = others[b % len(others)]
            parent, _, nm = p.rpartition(b"/")
            lay.unlink(_ino(lay, parent), nm)
        elif kind == "rename" and entries:
            p, _ = entries[b % len(entries)]
            parent, _, nm = p.rpartition(b"/")
            target = others[a % len(others)][0] if others and a % 3 == 0 else None
            if target is not None:
                tp, _, tn = target.rpartition(b"/")
                lay.rename(_ino(lay, parent), nm, _ino(lay, tp), tn)
            else:
                lay.rename(_ino(lay, parent), nm, place, name)
        elif kind == "chmod" and entries:
            lay.setattr(entries[b % len(entries)][1].ino, mode=0o600 | (a % 0o100))
        elif kind == "symlink":
            lay.symlink(place, name, b"target-%d" % (b % 7), 0, 0)
        elif kind == "link" and files:
            lay.link(files[b % len(files)][1].ino, place, name)
        elif kind == "xattr" and entries:
            lay.setxattr(entries[b % len(entries)][1].ino, b"user.k%d" % (a % 3), b"v%d" % b)
        elif kind == "mkdir":
            lay.mkdir(place, name, 0o755, 0, 0)
        elif kind == "rmdir" and len(dirs) > 1:
            p, _ = dirs[1 + b % (len(dirs) - 1)]
            parent, _, nm = p.rpartition(b"/")
            lay.rmdir(_ino(lay, parent), nm)
    except FsError:
        pass  # not empty, into itself, exists...: the edit does not apply


def _fresh(repo_dir, layers: int) -> tuple[Repository, Base, list[WriteLayer]]:  # noqa: ANN001
    """The base tree pushed as a new workspace (one per example), and *layers* layers over it."""
    tmp, w, src = repo_dir
    n = next(_n)
    ws = f"s{n}"
    w.push(src, ws)
    repo = Repository.open(open_store(w.repo), w.cache_dir)
    base = Base(repo, ws, 1, w.repo, w.cache_dir)
    return repo, base, [WriteLayer(str(tmp / f"state{n}-{i}"), base.m, base.id, base.read_base) for i in range(layers)]


def _ino(lay: WriteLayer, path: bytes) -> int:
    ino = ROOT_INO
    for nm in path.split(b"/") if path else []:
        ino = lay.lookup(ino, nm).ino
    return ino


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=rounds, full=st.booleans())
def test_committed_versions_check_out_as_the_layer_was(repo_dir, rounds, full) -> None:
    """*full*: commit compares the whole merged view with the base, not only the paths the layer changed."""
    repo, base, (lay,) = _fresh(repo_dir, 1)
    ws = base.id.workspace
    try:
        k = 0
        for before, during in rounds:
            for kind, a, b in before:
                _apply(lay, kind, a, b, k)
                k += 1
            snap = lay.snapshot()
            expected = describe_layer(lay)
            for kind, a, b in during:
                _apply(lay, kind, a, b, k)
                k += 1
            try:
                record, _ = commit(repo, snap, _full=full)
                lay.mark_published(snap)
            finally:
                snap.close()
            if record is not None:
                assert describe_version(repo, ws, record.version) == expected
            if not during:
                assert lay.pending() == []
        record, _ = commit_layer_now(repo, lay)
        latest = repo.latest(ws)
        assert describe_version(repo, ws, latest) == describe_layer(lay)
    finally:
        lay.close()
        base.m.close()


def commit_layer_now(repo: Repository, lay: WriteLayer):
    from wsfs.versions.commit import commit_layer

    return commit_layer(repo, lay)


TWO_KINDS = ("create", "write", "shrink", "unlink", "rename", "chmod", "symlink", "xattr", "mkdir")
two_edits = st.lists(st.tuples(st.sampled_from(TWO_KINDS), st.integers(0, 1 << 30), st.integers(0, 1 << 30)),
                     min_size=1, max_size=5)


def _flat(tree: dict[bytes, tuple]) -> dict[bytes, tuple]:
    """What a merge must keep per path: directories without their mtime (mtimes merge: the later one
    wins), with their mode, owner and xattrs (a chmod of a directory is a change of it); the rest whole
    (a file's names are part of it: a hard-linked file changed under every name)."""
    return {p: d[:4] + d[5:] if d[0] == stat.S_IFDIR else d for p, d in tree.items()}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mine=two_edits, theirs=two_edits)
@example(mine=[("create", 1, 0), ("chmod", 0, 2105)], theirs=[("xattr", 0, 491)])  # (CI: one mode, one xattr)
@example(mine=[("rename", 73, 0)], theirs=[("create", 0, 0), ("create", 0, 0), ("rename", 1248, 0)])  # (CI: both named a file)
def test_two_writers_merge_or_conflict(repo_dir, mine, theirs) -> None:
    """Two layers over one version: the second commit either conflicts (nothing published, every path it
    names changed on both sides or under a directory the other removed) or publishes, per path, its own
    change, else the other's, else the base."""
    repo, base, (a, b) = _fresh(repo_dir, 2)
    ws = base.id.workspace
    try:
        start = _flat(describe_layer(a))
        for k, (kind, x, y) in enumerate(theirs):
            _apply(a, kind, x, y, 100 + k)
        for k, (kind, x, y) in enumerate(mine):
            _apply(b, kind, x, y, 200 + k)
        ra, _ = commit_layer_now(repo, a)
        va, vb = _flat(describe_layer(a)), _flat(describe_layer(b))
        changed_a = {p for p in va.keys() | start.keys() if va.get(p) != start.get(p)}
        changed_b = {p for p in vb.keys() | start.keys() if vb.get(p) != start.get(p)}
        try:
            rb, _ = commit_layer_now(repo, b)
        except CommitConflict as e:
            assert repo.latest(ws) == (ra.version if ra else 1)
            def near(p: bytes, changed: set[bytes]) -> bool:
                return any(q == p or q.startswith(p + b"/") or p.startswith(q + b"/") for q in changed)

            # every path named was changed by one side, and some by both (a hard-linked file is one
            # thing under all its names: which names a clash shows depends on which records changed)
            assert all(near(p, changed_a | changed_b) for p in e.paths), e.paths
            assert any(near(p, changed_a) for p in e.paths) and any(near(p, changed_b) for p in e.paths), e.paths
            return
        if rb is None:
            return
        got = _flat(describe_version(repo, ws, rb.version))
        for p in got.keys() | va.keys() | vb.keys():
            expect = vb.get(p) if p in changed_b else va.get(p) if p in changed_a else start.get(p)
            old, mine_, theirs_ = start.get(p), vb.get(p), va.get(p)
            if p in changed_a and p in changed_b and all(x is not None and x[0] == stat.S_IFDIR
                                                         for x in (old, mine_, theirs_)):
                # A directory both changed, different attributes: a three-way merge, each attribute from
                # the side that changed it (commit's _merge_dir; the same attribute changed both ways conflicts).
                expect = tuple(m if m != o else t for o, m, t in zip(old, mine_, theirs_, strict=True))
            g = got.get(p)
            if g is not None and expect is not None and g[-1] != expect[-1] and g[-1] and expect[-1]:
                # (the last field: the names of a hard-linked file) Both writers gave one file new names,
                # each side's group holding only its own: the version holds the names of both, and only those.
                either = set(expect[-1]).union(*(side[q][-1] or () for side in (va, vb) for q in expect[-1]
                                                 if q in side))
                assert set(expect[-1]) <= set(g[-1]) <= either and all(q in got for q in g[-1]), (p, g, expect)
                g, expect = g[:-1], expect[:-1]
            assert g == expect, (p, g, expect)
    finally:
        a.close()
        b.close()
        base.m.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 1 << 30), st.integers(0, 1 << 30)),
                      min_size=1, max_size=8), pick=st.integers(0, 1 << 30))
def test_discard_of_a_path_then_of_everything(repo_dir, edits, pick) -> None:
    """Discarding one pending path either is refused with nothing changed, or leaves nothing pending at
    or below it; discarding everything then gives the base back."""
    repo, base, (lay,) = _fresh(repo_dir, 1)
    try:
        start = describe_layer(lay)
        for k, (kind, a, b) in enumerate(edits):
            _apply(lay, kind, a, b, k)
        todo = lay.pending()
        if todo:
            p = todo[pick % len(todo)].path
            before = describe_layer(lay)
            try:
                lay.discard([p])
            except (UsageError, FsError):
                assert describe_layer(lay) == before
            else:
                left = [t.path for t in lay.pending() if not p or t.path == p or t.path.startswith(p + b"/")]
                assert left == [], (p, left)
        lay.discard()
        assert lay.pending() == [] and describe_layer(lay) == start
    finally:
        lay.close()
        base.m.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(st.tuples(st.booleans(), two_edits), min_size=2, max_size=5))
# (CI 2026-12-07: each writer moved the second name of one hard-linked file elsewhere; published, not a conflict)
@example(turns=[(False, [("create", 1, 0), ("unlink", 0, 0)]), (True, [("create", 0, 0), ("create", 0, 0),
                                                                    ("rename", 1, 10000000)]), (False, [("rename", 0, 440384)])])
def test_two_writers_over_several_commits_lose_nothing(repo_dir, turns) -> None:
    """Two layers over one version take turns: edit, commit.  A layer never shows the other's changes, so
    what it saw at a path is what it last committed there, else the base.  Each commit either conflicts
    (a path it changed was changed by the other since it saw it) or publishes, per path, its change, else
    the head's: no change of either side is lost unseen.  (With 300 examples this found the lost update
    fixed in ``_unseen`` of versions/commit.py on the code before it: a path the other layer changed,
    merged by a commit of ours that did not touch it, then written by us over what we saw.)"""
    repo, base, layers = _fresh(repo_dir, 2)
    ws = base.id.workspace
    try:
        start = _flat(describe_layer(layers[0]))
        seen = [dict(start), dict(start)]  # per layer: path -> what it saw there
        for k, (second, edits_) in enumerate(turns):
            i = int(second)
            lay = layers[i]
            for j, (kind, x, y) in enumerate(edits_):
                _apply(lay, kind, x, y, 300 + 10 * k + j)
            mine = _flat(describe_layer(lay))
            changed = {p for p in mine.keys() | seen[i].keys() if mine.get(p) != seen[i].get(p)}
            head = _flat(describe_version(repo, ws, repo.latest(ws)))
            behind = {p for p in changed if head.get(p) != seen[i].get(p) and head.get(p) != mine.get(p)}
            # a directory both changed is merged attribute by attribute: each from the side that changed it
            dirs = {p for p in behind if all(t.get(p) and t[p][0] == stat.S_IFDIR for t in (head, mine, seen[i]))}
            behind -= dirs
            try:
                record, _ = commit_layer_now(repo, lay)
            except CommitConflict as e:
                def near(p: bytes, paths: set[bytes]) -> bool:
                    return any(q == p or q.startswith(p + b"/") or p.startswith(q + b"/") for q in paths)

                moved = {p for p in head.keys() | seen[i].keys() if head.get(p) != seen[i].get(p)}
                assert any(near(p, moved) for p in e.paths), (e.paths, moved)
                return  # (what --ours does is the one-round test's)
            assert not behind, f"published over changes this layer never saw: {sorted(behind)}"
            if record is None:
                continue
            got = _flat(describe_version(repo, ws, record.version))
            for p in got.keys() | mine.keys() | head.keys():
                if p in dirs:
                    assert all(g in (m, h) for g, m, h in zip(got[p], mine[p], head[p], strict=True)), p
                    continue
                expect = mine.get(p) if p in changed else head.get(p)
                assert got.get(p) == expect, (p, got.get(p), expect)
            for p in changed:
                if p in mine:
                    seen[i][p] = mine[p]
                else:
                    seen[i].pop(p, None)
    finally:
        for lay in layers:
            lay.close()
        base.m.close()
