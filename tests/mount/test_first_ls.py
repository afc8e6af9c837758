"""The first ``ls`` of a cold format 2 mount does not wait for the whole tree (issue 12, daemon/building.py).

A proxy in front of S3 stalls every range of the version but the first: the mount still becomes ready
and lists its root (the root's entries and its directories' come first in key order), with the inode
numbers and link counts the finished index gives, and a directory whose subdirectories' entries are
stalled (stand-ins, asked again on ``stat``); the rest is served once the stalled ranges arrive.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from support.cli import Wsfs
from support.faultproxy import Fault, FaultProxy
from support.trees import assert_same_tree, write
from wsfs.format.blobs import hexid
from wsfs.repository import Ref, Repository
from wsfs.store import open_store

pytestmark = pytest.mark.parametrize("store_kind", ["s3"], indirect=True)

STALL = 10.0  # seconds every range but the first is held back (its first attempt; the retry goes through)


def _tree(src: Path) -> Path:
    for d in ("top/empty", "zz/d0", "zz/d1", "zz/d2"):
        (src / d).mkdir(parents=True)
    write(src / "a.txt", b"a\n")
    for i in range(4):
        write(src / "top" / f"t{i}.txt", b"t" * (100 + i))
    for d in range(3):
        for f in range(600):
            write(src / "zz" / f"d{d}" / f"file{f:04d}.js", f"module.exports = {d * 1000 + f};\n".encode() * (1 + f % 9))
    return src


def test_root_is_listed_while_later_ranges_are_stalled(repo_url, subprocess_env, tmp_path, mount) -> None:
    src = _tree(tmp_path / "src")
    w = Wsfs(repo_url, str(tmp_path / "push-cache"), subprocess_env)
    w("init")
    w.push(src, "ws")
    repo = Repository.open(open_store(repo_url), str(tmp_path / "look-cache"))
    ranges, _ = repo.version_refs(repo.resolve(Ref.parse("ws@1")))
    # the root's entries and those of its directories are all in the first range; several ranges follow
    assert len(ranges) >= 3 and ranges[0].last > b"zz\x01", [r.last for r in ranges]
    held = {hexid(r.id) for r in ranges[1:]}
    seen: set[str] = set()
    lock = threading.Lock()

    def stall_later_ranges(method: str, path: str, query: str) -> Fault | None:
        name = path.rsplit("/", 1)[-1]
        with lock:
            if method == "GET" and name in held and name not in seen:
                seen.add(name)
                return Fault.stall(STALL)
        return None

    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], stall_later_ranges) as proxy:
        env = {**subprocess_env, "AWS_ENDPOINT_URL": proxy.url, "WSFS_OP_TIMEOUT": "60"}
        t0 = time.monotonic()
        m = mount(repo_url, "ws@1", env=env)
        names = sorted(os.listdir(m.path))
        st = {n: os.lstat(m.path / n) for n in names}
        took = time.monotonic() - t0
        assert names == ["a.txt", "top", "zz"]
        assert took < STALL - 2, f"mount + ls took {took:.1f} s: it waited for the stalled ranges"
        # every later range is asked for (once the builder has taken the first one) and held back
        deadline = time.monotonic() + 5
        while seen != held and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen == held
        assert st["top"].st_nlink == 3 and st["zz"].st_nlink == 5 and st["a.txt"].st_size == 2
        # `ls zz`: its entries are in the first range, but not those of d1 and d2 (stalled): they are listed
        # at once, with stand-in attributes the kernel does not keep; a stat gets the true link count.
        assert sorted(os.listdir(m.path / "zz")) == ["d0", "d1", "d2"]
        took = time.monotonic() - t0
        assert took < STALL - 2, f"mount + ls zz took {took:.1f} s: it waited for the stalled ranges"
        assert (m.path / "a.txt").read_bytes() == b"a\n"  # (a read waits for the finished index)
        assert os.lstat(m.path / "zz" / "d2").st_nlink == 2 and time.monotonic() - t0 >= STALL
        # the rest, once the stalled ranges came (their retry)
        assert_same_tree(src, m.path)
        assert time.monotonic() - t0 >= STALL
        inos = {n: (s.st_ino, s.st_nlink) for n, s in st.items()}
        deep = os.lstat(m.path / "zz" / "d2" / "file0599.js").st_ino
        m.unmount()
        # A second mount opens the finished index: the same inode numbers and link counts.
        m2 = mount(repo_url, "ws@1", env=env, cache_dir=m.cache_dir)
        assert {n: (os.lstat(m2.path / n).st_ino, os.lstat(m2.path / n).st_nlink) for n in names} == inos
        assert os.lstat(m2.path / "zz" / "d2" / "file0599.js").st_ino == deep
        assert len(proxy.faults()) == len(held)
