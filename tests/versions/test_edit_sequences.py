"""Property: any sequence of edits, pushed as versions, checks out exactly, and each version's changeset
(``wsfs diff`` of adjacent versions) names the paths whose content, type, mode, owner, link target or
xattrs changed (times alone are not a change: see wsfs.versions.diff) and no other path, except that a
name of a multiply-linked file may be reported when another name of the file was added or removed (the
changeset holds records, and which name holds a hard-linked file's record can move).

Edits: create, modify (same size or not), delete, rename (files and directories), chmod, symlink,
hard link, xattr, mkdir, recursive rmdir.  The base tree is older than the stat cache's racy window,
so later pushes mix files read again with files the stat cache vouches for (and packs rebuilt from
files the walk did not read).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.cli import Wsfs
from support.trees import assert_same_tree, describe
from wsfs.versions import statcache

KINDS = ("create", "modify", "delete", "rename", "chmod", "symlink", "hardlink", "xattr", "mkdir", "rmdir")
ops = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 1 << 30), st.integers(0, 1 << 30)), min_size=1, max_size=4)


def _base(root: Path) -> None:
    for d in range(4):
        dd = root / f"d{d}" / "sub"
        dd.mkdir(parents=True)
        for f in range(12):
            (dd / f"f{f}.txt").write_bytes(f"{d}.{f}\n".encode() * (3 + 7 * f))
    (root / "big.bin").write_bytes(bytes(range(256)) * 1200)  # above the inline threshold: chunked


def _listing(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Directories (not the root), regular files and other non-directories below *root*, sorted."""
    dirs, files, others = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames):
            dirs.append(Path(dirpath) / n)
        for n in sorted(filenames):
            p = Path(dirpath) / n
            (files if p.is_file() and not p.is_symlink() else others).append(p)
    return sorted(dirs), sorted(files), sorted(others)


def _apply(root: Path, kind: str, a: int, b: int, n: int) -> None:
    dirs, files, others = _listing(root)
    place = ([root] + dirs)[a % (len(dirs) + 1)]
    name = f"n{n}-{b % 97}"
    if kind == "create":
        size = (b % 5000) if b % 11 else 150_000 + b % 1000
        (place / name).write_bytes(bytes([b % 251]) * size)
    elif kind == "modify" and files:
        p = files[b % len(files)]
        data = p.read_bytes()
        p.write_bytes(bytes([(x + 1) % 256 for x in data]) if b % 2 else data + b"+")
    elif kind == "delete" and files + others:
        (files + others)[b % len(files + others)].unlink()
    elif kind == "rename" and files + dirs:
        src = (files + dirs)[b % len(files + dirs)]
        if not (src.is_dir() and (place == src or src in place.parents)):
            src.rename(place / name)
    elif kind == "chmod" and files:
        files[b % len(files)].chmod(0o600 if b % 2 else 0o755)
    elif kind == "symlink":
        (place / name).symlink_to(f"../target{b % 7}")
    elif kind == "hardlink" and files:
        os.link(files[b % len(files)], place / name)
    elif kind == "xattr" and files:
        os.setxattr(files[b % len(files)], "user.k", str(b % 13).encode())
    elif kind == "mkdir":
        (place / name).mkdir()
    elif kind == "rmdir" and dirs:
        shutil.rmtree(dirs[b % len(dirs)])


def _diffable(snapshot: dict) -> dict:
    """What ``wsfs diff`` compares of each entry of a ``describe(mtimes=False)``: not the link count."""
    return {p: v[:5] + v[6:8] if p != b"." else v for p, v in snapshot.items()}


def _changed(old: dict, new: dict) -> set[bytes]:
    """Paths whose state differs (added, removed or modified) as diff sees it; the root is not a path."""
    old, new = _diffable(old), _diffable(new)
    return {p for p in set(old) | set(new) if p != b"." and old.get(p) != new.get(p)}


def _linked(snapshot: dict) -> set[bytes]:
    return {p for p, v in snapshot.items() if p != b"." and v[5] is not None and v[5] > 1}


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(ops, min_size=2, max_size=5))
def test_edit_sequences_check_out_exactly(tmp_path_factory, steps):
    tmp = tmp_path_factory.mktemp("edits")
    src = tmp / "src"
    _base(src)
    time.sleep(statcache.RACY_NS / 1e9 + 0.1)
    w = Wsfs(str(tmp / "repo"), str(tmp / "cache"))  # a local repository: the property is the format's
    w("init")
    snapshots, timeless = [describe(src)], [describe(src, mtimes=False)]
    w.push(src, "ws")
    n = 0
    for step in steps:
        for kind, a, b in step:
            n += 1
            _apply(src, kind, a, b, n)
        snapshots.append(describe(src))
        timeless.append(describe(src, mtimes=False))
        w.push(src, "ws")
    for v, snap in enumerate(snapshots, 1):
        out = tmp / f"out{v}"
        w("checkout", f"ws@{v}", str(out))
        assert describe(out) == snap, f"version {v} differs"
        if v > 1:
            diff = w("diff", f"ws@{v - 1}", f"ws@{v}").out.splitlines()
            paths = {line.split(b" ", 1)[1] for line in diff}
            old, new = timeless[v - 2], timeless[v - 1]
            expected = _changed(old, new)
            assert expected <= paths, f"diff of versions {v - 1} and {v} misses {expected - paths}"
            assert paths - expected <= _linked(old) | _linked(new), f"diff of {v - 1} and {v}: {paths - expected}"
    assert_same_tree(src, tmp / f"out{len(snapshots)}")
