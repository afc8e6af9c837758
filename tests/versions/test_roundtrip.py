"""Push then checkout/cat give back exactly what was pushed.

Run against both store kinds: the format must not depend on where the bytes
live, and S3 exercises the real HTTP path (ranged reads, listings, errors).
"""

import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.cli import Wsfs
from support.trees import assert_same_tree, make_rich_tree


def test_rich_tree_round_trip(wsfs, tmp_path):
    src = make_rich_tree(tmp_path / "src")
    r = wsfs.push(src, "demo")
    assert r["version"] == 1 and r["parent"] is None
    assert r["stats"]["specials"] == 1  # the fifo
    out = tmp_path / "out"
    wsfs("checkout", "demo", out)
    assert_same_tree(src, out)
    # holes stay holes: 3 GiB apparent, the blocks of its two data islands allocated (not their 4 MiB chunks)
    assert os.stat(out / "sparse").st_size == 3 * 1024**3
    assert os.stat(out / "sparse").st_blocks * 512 <= 64 * 1024
    # cat gives the bytes of any file, through symlinks inside the version
    for name in ["empty", "tiny", "at-threshold", "above-threshold", "big.bin", "zeros-then-data"]:
        assert wsfs("cat", "demo", name).out == (src / name).read_bytes()
    assert wsfs("cat", "demo@1", "rel-link").out == (src / "text.txt").read_bytes()
    assert wsfs("cat", "demo", b"dir/caf\xe9-latin1").out == b"caf\xe9-latin1"


def test_ls(wsfs, tmp_path):
    src = make_rich_tree(tmp_path / "src", big=False)
    wsfs.push(src, "demo")
    names = wsfs("ls", "demo").out.split(b"\n")
    assert b"dir" in names and b"rel-link" in names
    long = wsfs("ls", "-l", "demo").out
    assert b"rel-link -> text.txt" in long
    assert b"-rwsr-xr-x" in long  # setuid shown like ls
    assert b"drwxrwxrwt" in long  # sticky
    assert b"new\nline" in wsfs("ls", "demo", "dir").out
    assert wsfs("ls", "demo", "dir/sub").out == b"deeper\n"
    r = wsfs("ls", "demo", "nope", check=False)
    assert r.code == 3 and "no such file" in r.err


@pytest.mark.parametrize("store_kind", ["local"], indirect=True)
def test_deep_and_wide_trees(wsfs, tmp_path):
    src = tmp_path / "src"
    deep = src / "deep"
    p = deep
    for i in range(300):
        p = p / f"d{i % 10}"
    p.mkdir(parents=True)
    (p / "bottom").write_bytes(b"deep")
    wide = src / "wide"
    wide.mkdir()
    fd = os.open(wide, os.O_RDONLY)
    try:
        for i in range(100_000):
            os.close(os.open(f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    r = wsfs.push(src, "big")
    assert r["stats"]["files"] == 100_001
    out = tmp_path / "out"
    wsfs("checkout", "big", out)
    assert len(os.listdir(out / "wide")) == 100_000
    assert (out / p.relative_to(src) / "bottom").read_bytes() == b"deep"
    assert_same_tree(src, out, content=False)


names = st.binary(min_size=1, max_size=20).filter(lambda b: b not in (b".", b"..") and b"/" not in b and b"\0" not in b)


@st.composite
def trees(draw):
    """A random tree: (relative path, kind, payload) in creation order."""
    entries = []
    dirs = [b""]
    for _ in range(draw(st.integers(0, 25))):
        parent = draw(st.sampled_from(dirs))
        name = draw(names)
        path = parent + b"/" + name if parent else name
        if any(path == e[0] for e in entries):
            continue
        kind = draw(st.sampled_from(["file", "file", "dir", "link", "hardlink"]))
        files = [e[0] for e in entries if e[1] == "file"]
        if kind == "file":
            size = draw(st.sampled_from([0, 1, 100, 4096, 70_000, 200_000]))
            seed = draw(st.integers(0, 255))
            entries.append((path, "file", ((seed, size), draw(st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o1700])),
                                           draw(st.integers(0, 2**62)))))
        elif kind == "dir":
            entries.append((path, "dir", draw(st.sampled_from([0o755, 0o700, 0o1777]))))
            dirs.append(path)
        elif kind == "link":
            entries.append((path, "link", draw(st.binary(min_size=1, max_size=50).filter(lambda b: b"\0" not in b))))
        elif files:
            entries.append((path, "hardlink", draw(st.sampled_from(files))))
    xattr = draw(st.dictionaries(st.sampled_from(["user.a", "user.b"]), st.binary(max_size=30), max_size=2))
    return entries, xattr


@pytest.mark.parametrize("store_kind", ["local"], indirect=True)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees())
def test_generated_trees_round_trip(repo_url, subprocess_env, tmp_path_factory, tree):
    tmp = tmp_path_factory.mktemp("gen")
    w = Wsfs(repo_url, str(tmp / "cache"), subprocess_env)
    if not os.path.exists(os.path.join(repo_url, "wsfs-repo.json")):
        w("init")
    src = os.fsencode(tmp / "src")
    os.mkdir(src)
    entries, xattr = tree
    for path, kind, payload in entries:
        p = src + b"/" + path
        if kind == "file":
            (seed, size), mode, mtime = payload
            with open(p, "wb") as f:
                f.write(bytes((seed + i) % 251 for i in range(size)))
            if xattr:
                for k, v in xattr.items():
                    os.setxattr(p, k, v)
            os.chmod(p, mode)
            os.utime(p, ns=(mtime, mtime))
        elif kind == "dir":
            os.mkdir(p)
            os.chmod(p, payload)
        elif kind == "link":
            os.symlink(payload, p)
        else:
            os.link(src + b"/" + payload, p)
    w.push(src, "gen")
    out = tmp / "out"
    w("checkout", "gen", out)
    assert_same_tree(src, out)


def test_fifo_and_device_nodes_are_stored_sockets_skipped(wsfs, tmp_path):
    import socket

    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(src / "sock"))
    try:
        r = wsfs.run("push", src, "nodes")
    finally:
        s.close()
    assert "sockets are not stored" in r.err
    out = tmp_path / "out"
    wsfs("checkout", "nodes", out)
    assert sorted(os.listdir(out)) == ["fifo", "null"]
    assert stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
    assert os.lstat(out / "null").st_rdev == os.makedev(1, 3)
