"""Hostile input on the local machine: crafted manifests, racing users, deep trees, wsfs' own directories.

Checkout and push run as root here, as they would for an administrator;
each test is one class of attack from the security review (issue 11):

* a manifest naming an entry ``../../pwned`` (or ``..``, ``a/b``, empty,
  NUL) must not make checkout write outside its destination;
* another user swapping a directory for a symlink while push reads it or
  checkout writes it must not get a root-only file pushed or an outside
  file changed;
* xattrs other than ``user.*`` (a default ACL) are never applied;
* paths longer than ``PATH_MAX`` round-trip;
* ``wsfs push ~`` leaves wsfs' own repository and cache out.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from wsfs.errors import IntegrityError, SourceError, WsfsError
from wsfs.format.blobs import content_id
from wsfs.format.manifest import Manifest, ManifestBuilder
from wsfs.format.records import RepoConfig
from wsfs.format.tree import decode_top
from wsfs.repository import Repository
from wsfs.store import open_store
from wsfs.versions.checkout import checkout
from wsfs.versions.push import push
from wsfs.versions.read import SmallFiles

local_only = pytest.mark.parametrize("store_kind", ["local"], indirect=True)


@pytest.fixture
def repo(tmp_path) -> Repository:
    os.makedirs(tmp_path / "repo")
    return Repository.init(open_store(str(tmp_path / "repo")), RepoConfig(), str(tmp_path / "cache"))


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry below *root* but *skip*'s subtree: (mode, uid, content or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            st = os.lstat(p)
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(p).encode() if p.is_symlink() else b""
            out[str(p)] = (st.st_mode, st.st_uid, data)
    return out


def build_manifest(path: Path, entries: list[tuple[bytes, str, dict[bytes, bytes]]], root_xattrs=None) -> None:
    """A manifest whose root holds *entries*: (name, "file" | "dir", xattrs)."""
    b = ManifestBuilder(str(path), chunk_size=RepoConfig().chunk_size)
    here = os.stat(path.parent)
    b.add_inode(here, nlink=2)
    b.add_xattrs(1, root_xattrs or {})
    dentries = []
    for name, kind, xattrs in sorted(entries):
        if kind == "dir":
            ino = b.add_inode(here, nlink=2)
        else:
            fst = os.stat(__file__)
            ino = b.add_inode(fst, size=5)
            b.set_inline(ino, b"pwned")
        b.add_xattrs(ino, xattrs)
        dentries.append((name, ino))
    b.add_dentries(1, dentries)
    b.finish({"workspace": "crafted"})


# -- names from a manifest -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "dir"])
@pytest.mark.parametrize("bad", [b"../../pwned", b"..", b".", b"a/b", b"", b"x\0y", b"/tmp/abs", "text"])
def test_crafted_entry_name_never_leaves_the_destination(repo, tmp_path, bad, kind):
    mpath = tmp_path / "crafted.sqlite"
    build_manifest(mpath, [(b"good", "file", {}), (b"victim", kind, {})])
    db = apsw.Connection(str(mpath))
    db.execute("UPDATE dentries SET name = ? WHERE name = ?", (bad, b"victim"))
    db.close()
    dest = tmp_path / "a" / "b" / "dest"
    dest.parent.mkdir(parents=True)
    before = snapshot(tmp_path, dest)
    with Manifest(str(mpath), validate=False) as m, pytest.raises(IntegrityError) as e:
        checkout(repo, m, dest)
    assert e.value.exit_code == 6
    assert "invalid entry name" in str(e.value)
    assert snapshot(tmp_path, dest) == before  # nothing new or changed outside
    assert not (tmp_path / "a" / "pwned").exists()
    assert not [n for n in os.listdir(dest) if n.startswith(".wsfs-tmp")]


def test_crafted_directory_cycle_is_refused(repo, tmp_path):
    mpath = tmp_path / "crafted.sqlite"
    build_manifest(mpath, [(b"d", "dir", {})])
    db = apsw.Connection(str(mpath))
    db.execute("INSERT INTO dentries (parent, name, ino) VALUES (2, X'6C6F6F70', 2)")  # d/loop is d
    db.close()
    with Manifest(str(mpath), validate=False) as m, pytest.raises(IntegrityError, match="not a tree"):
        checkout(repo, m, tmp_path / "dest")


# -- racing users --------------------------------------------------------------------

SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
base, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
RENAME_EXCHANGE, AT_FDCWD = 2, -100
end = time.monotonic() + seconds
print("ready", flush=True)
while time.monotonic() < end:
    # every <base>/<d>/sub changes places with a symlink to <target>, back and forth
    for d in os.listdir(base):
        link = os.path.join(base, "link-" + d)
        sub = os.path.join(base, d, "sub")
        if d.startswith("link-") or not os.path.isdir(os.path.join(base, d)):
            continue
        if not os.path.lexists(link):
            os.symlink(target, link)
        for _ in range(50):
            libc.renameat2(AT_FDCWD, sub.encode(), AT_FDCWD, link.encode(), RENAME_EXCHANGE)
"""


def start_swapper(base: Path, target: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", SWAPPER, str(base), str(target), str(seconds)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    return p


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.kill(p.pid, 9)
    p.wait()
    assert p.stdout is not None
    p.stdout.close()


def test_push_never_follows_a_directory_swapped_for_a_symlink(repo, tmp_path):
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(mode=0o700)
    secret = os.urandom(64).hex().encode()
    for i in range(20):
        p = secret_dir / f"f{i}"
        p.write_bytes(secret)
        os.chmod(p, 0o600)
    base = tmp_path / "base"
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    real = {f"f{i}": f"real {i}".encode() for i in range(20)}
    for n, data in real.items():
        (src / "sub" / n).write_bytes(data)
    (src / "top").write_bytes(b"top")
    swapper = start_swapper(base, secret_dir, 3.0)
    outcomes = []
    try:
        for _ in range(20):
            if swapper.poll() is not None:
                break
            try:
                record, _ = push(repo, str(src), "race")
                outcomes.append(record)
            except SourceError as e:
                assert "changed while being read" in str(e), e
                outcomes.append(None)
    finally:
        stop(swapper)
    assert len(outcomes) >= 5
    for record in filter(None, outcomes):
        with repo.open_manifest(record) as m:
            small = SmallFiles(repo, m)  # format 2: small files are slices of packs, each checked against its id
            try:
                files = [(path, small.data(node)) for path, node in m.walk() if node.is_reg]
            finally:
                small.close()
            assert files, record.version
            for path, data in files:
                assert secret not in data, f"{record.version}: {path!r} holds the secret"
                if path.startswith(b"sub/"):
                    assert data == real[path[4:].decode()]


def test_checkout_never_writes_through_a_directory_swapped_for_a_symlink(repo, tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    for i in range(200):
        (src / "sub" / f"f{i}").write_bytes(b"checked out")
        os.chmod(src / "sub" / f"f{i}", 0o666)
    (src / "sub" / "deeper" / "leaf").write_bytes(b"leaf")
    os.chmod(src / "sub", 0o777)
    record, _ = push(repo, str(src), "tree")
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (outside / "keep").write_bytes(b"keep")
    os.chmod(outside / "keep", 0o600)
    before = snapshot(outside, outside / "none") | {"outside": os.lstat(outside).st_mode}
    base = tmp_path / "base"
    base.mkdir()
    swapper = start_swapper(base, outside, 3.0)
    results = []
    try:
        with repo.open_manifest(record) as m:
            for i in range(12):
                if swapper.poll() is not None:
                    break
                try:
                    checkout(repo, m, base / f"dest{i}")
                    results.append("ok")
                except WsfsError as e:
                    results.append(str(e))
    finally:
        stop(swapper)
    assert len(results) >= 3
    after = snapshot(outside, outside / "none") | {"outside": os.lstat(outside).st_mode}
    assert after == before, results


# -- deep trees ----------------------------------------------------------------------


def walk_fd(root: Path) -> dict[tuple[bytes, ...], tuple[int, bytes]]:
    """(mode, content) of every entry below *root*, walked by descriptors (any depth)."""
    out = {}

    def walk(fd: int, prefix: tuple[bytes, ...]) -> None:
        for name in sorted(map(os.fsencode, os.listdir(fd))):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            key = (*prefix, name)
            if stat.S_ISDIR(st.st_mode):
                out[key] = (st.st_mode, b"")
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                try:
                    walk(sub, key)
                finally:
                    os.close(sub)
            else:
                f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
                try:
                    out[key] = (st.st_mode, os.pread(f, st.st_size + 1, 0))
                finally:
                    os.close(f)

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walk(fd, ())
    finally:
        os.close(fd)
    return out


@local_only
def test_paths_longer_than_path_max_round_trip(wsfs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(42):  # 42 x 201 bytes: an 8.2 KiB path, twice PATH_MAX
        name = (b"%03d" % level) + b"d" * 197
        if level % 10 == 9:
            f = os.open(b"file-here", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
            os.write(f, b"level %d\n" % level * (1000 if level == 39 else 1))
            os.close(f)
        os.mkdir(name, 0o750 if level % 2 else 0o755, dir_fd=fd)
        nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    big = os.urandom(300_000)  # chunked, not inline
    f = os.open(b"bottom", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
    os.write(f, big)
    os.close(f)
    os.close(fd)
    r = wsfs.push(src, "deep")
    assert r["stats"]["dirs"] == 43 and r["stats"]["files"] == 5
    out = tmp_path / "out"
    wsfs("checkout", "deep", out)
    want, got = walk_fd(src), walk_fd(out)
    assert len(want) == 47
    assert max(sum(len(n) + 1 for n in k) for k in want) > 8192
    assert got == want


def test_deep_tree_with_few_descriptors(repo, tmp_path, monkeypatch):
    """Push and checkout keep at most MAX_OPEN directories open: deeper ones are re-opened by name."""
    from support.trees import assert_same_tree
    from wsfs import fsops

    monkeypatch.setattr(fsops, "MAX_OPEN", 3)
    src = tmp_path / "src"
    d = src
    for level in range(25):
        (d / "side").mkdir(parents=True)
        (d / "side" / "f").write_bytes(b"side %d" % level)
        os.chmod(d / "side", 0o500 if level % 3 == 0 else 0o755)  # final modes applied bottom-up
        (d / "file").write_bytes(b"level %d" % level)
        d = d / "down"
    d.mkdir()
    os.link(src / "file", d / "link-to-top")
    os.utime(src / "down" / "down", ns=(1, 123_456_789))
    fds = len(os.listdir("/proc/self/fd"))
    record, stats = push(repo, str(src), "deep")
    assert stats.dirs == 51 and stats.hardlinks == 1
    out = tmp_path / "out"
    with repo.open_manifest(record) as m:
        checkout(repo, m, out)
    assert len(os.listdir("/proc/self/fd")) == fds  # nothing leaked
    assert_same_tree(src, out)


# -- xattrs and tar-like switches ------------------------------------------------------------


def posix_acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in entries)


def test_checkout_restores_only_user_xattrs(repo, tmp_path, caplog):
    acl = posix_acl((0x01, 7, 0xFFFFFFFF), (0x02, 7, 1234), (0x04, 7, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF),
                    (0x20, 7, 0xFFFFFFFF))
    mpath = tmp_path / "crafted.sqlite"
    build_manifest(mpath, [
        (b"d", "dir", {b"system.posix_acl_default": acl, b"trusted.x": b"t", b"user.ok": b"1"}),
        (b"f", "file", {b"security.x": b"s", b"system.posix_acl_access": acl, b"user.ok": b"2"}),
    ], root_xattrs={b"trusted.root": b"r"})
    dest = tmp_path / "dest"
    with Manifest(str(mpath), validate=False) as m, caplog.at_level(logging.WARNING):
        stats = checkout(repo, m, dest)
    assert os.listxattr(dest / "d") == ["user.ok"] and os.getxattr(dest / "d", "user.ok") == b"1"
    assert os.listxattr(dest / "f") == ["user.ok"] and os.getxattr(dest / "f", "user.ok") == b"2"
    assert not [n for n in os.listxattr(dest) if not n.startswith("user.")]
    assert stats.warnings == 5
    warned = caplog.text
    for name in ["system.posix_acl_default", "trusted.x", "security.x", "system.posix_acl_access", "trusted.root"]:
        assert f"xattr {name} not restored" in warned


@local_only
def test_checkout_owner_device_and_setuid_switches(wsfs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "owned").write_bytes(b"x")
    os.chown(src / "owned", 1234, 5678)
    (src / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "suid", 0o6755)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    wsfs("push", src, "sw")
    help_text = wsfs("checkout", "--help").text
    for flag in ["--same-owner", "--no-same-owner", "--no-devices", "--no-setuid"]:
        assert flag in help_text

    default = tmp_path / "default"
    wsfs("checkout", "sw", default)
    assert (os.lstat(default / "owned").st_uid, os.lstat(default / "owned").st_gid) == (1234, 5678)
    assert stat.S_IMODE(os.lstat(default / "suid").st_mode) == 0o6755
    assert os.lstat(default / "null").st_rdev == os.makedev(1, 3)

    plain = tmp_path / "plain"
    r = wsfs("checkout", "--no-same-owner", "--no-devices", "--no-setuid", "sw", plain)
    assert (os.lstat(plain / "owned").st_uid, os.lstat(plain / "owned").st_gid) == (os.geteuid(), os.getegid())
    assert stat.S_IMODE(os.lstat(plain / "suid").st_mode) == 0o755
    assert sorted(os.listdir(plain)) == ["owned", "suid"]
    assert "null: device node left out" in r.err and "(1 warnings)" in r.text


# -- wsfs' own directories ----------------------------------------------------------------------


def test_push_of_home_leaves_out_wsfs_own_repository_and_cache(tmp_path):
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "note").write_text("hello")
    big = os.urandom(300_000)
    (home / "big").write_bytes(big)
    (home / ".local" / "state" / "wsfs").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("XDG_") and k not in ("WSFS_REPO", "WSFS_CACHE_DIR")}
    env["HOME"] = str(home)

    def run(*args: str | os.PathLike) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "wsfs", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=120)

    own = [home / ".local" / "share" / "wsfs" / "repo", home / ".cache" / "wsfs", home / ".local" / "state" / "wsfs"]
    results = []
    for _ in range(2):
        p = run("push", "--json", home, "home")
        assert p.returncode == 0, p.stderr
        results.append(json.loads(p.stdout))
        for d in own:
            assert f"left out {d}: it is wsfs' own" in p.stderr
    assert own[0].is_dir() and own[1].is_dir()
    for r in results:
        assert sorted(r["stats"]["skipped"]) == sorted(map(str, own))
    # Format 2: what the store holds is big's one chunk, one pack (docs/note's 5 bytes) in one segment,
    # the version's own pieces (top, listings, ranges) and its pack map: nothing of ours.
    repo = Repository.open(open_store(str(own[0])), str(tmp_path / "reader-cache"))
    record = repo.record("home", 1)
    ranges, packs = repo.version_refs(record)
    top = decode_top(repo.get_piece(bytes.fromhex(record.manifest), record.manifest_size))
    assert [p.size for p in packs] == [5] and record.changeset is None
    pieces = {bytes.fromhex(record.manifest)} | {r.id for r in top.ranges + top.packs + ranges}
    stored = {bytes.fromhex(f) for _, _, names in os.walk(own[0] / "blobs") for f in names}
    assert stored == pieces | {content_id(big)}
    (place,) = repo.pack_places(record, 1)
    assert place.segment is not None
    assert [f for _, _, names in os.walk(own[0] / "segments") for f in names] == [place.segment.hex()]
    assert [f for _, _, names in os.walk(own[0] / "packmaps") for f in names] == [record.manifest]
    assert results[0]["stats"]["blobs_uploaded"] == len(stored) + 2
    assert results[1]["stats"]["blobs_uploaded"] == 0  # nothing of ours grew in between
    assert results[1]["manifest"] == results[0]["manifest"]
    assert run("ls", "home", ".local/share/wsfs").stdout == ""
    assert run("ls", "home", ".cache").stdout == ""
    assert run("ls", "home", ".local/state").stdout == ""
    p = run("push", home / ".cache" / "wsfs", "cache")
    assert p.returncode == 2 and "inside wsfs' own cache" in p.stderr


@local_only
def test_push_root_inside_the_repository_is_refused(wsfs, tmp_path):
    inside = Path(wsfs.repo) / "blobs"
    inside.mkdir(exist_ok=True)
    r = wsfs("push", inside, "x", check=False)
    assert r.code == 2 and "inside wsfs' own repository" in r.err
