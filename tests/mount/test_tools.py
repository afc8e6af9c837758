"""The tools people point at a tree give the same answers on a mount as on the source.

du, find, ls -lR, tar, rsync and git status read attributes, link counts,
block counts and contents in their own ways; any difference between the
mount and the source tree is something a user would notice.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from mountkit import CHUNK, PushedTree

from support.cli import Wsfs


def _out(cmd: list[str], cwd: Path) -> bytes:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=120).stdout


def test_du_find_ls_tar_rsync_agree(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich@1")
    for cmd in (
        ["du", "-s", "--apparent-size", "--block-size=1", "."],
        # Allocated blocks (du, and ls's "total"): format 2 does not store st_blocks; a mount shows a
        # file's data rounded up to 4 KiB, as ext4 and tmpfs allocate it.  Not "xattrs": ext4 also
        # charges it the block that holds its 256-byte xattr (its own blocks are checked below, its
        # other attributes by find).
        ["du", "-s", "--exclude=xattrs", "."],
        ["find", ".", "-printf", r"%p %y %m %U %G %s %n %T@ %l\n"],
        ["ls", "-lRAn", "--ignore=xattrs", "--time-style=full-iso", "."],  # -A: the top ".." is outside the tree
    ):
        src, mnt = _out(cmd, rich.src), _out(cmd, m.path)
        if cmd[0] == "find":
            src, mnt = b"\n".join(sorted(src.split(b"\n"))), b"\n".join(sorted(mnt.split(b"\n")))
        assert src == mnt, f"{' '.join(cmd)} differs"
    assert os.lstat(m.path / "xattrs").st_blocks == 8  # one byte of data: one 4 KiB block
    # byte-identical archives.  (Not --xattrs: the mount lists a file's xattrs sorted by name, the
    # source in creation order, so tar's pax records would differ in order; rsync -X compares them.)
    tar = ["tar", "--sort=name", "--numeric-owner", "-cf", "-", "."]
    assert hashlib.sha256(_out(tar, rich.src)).digest() == hashlib.sha256(_out(tar, m.path)).digest()
    # rsync (-a with hard links, xattrs, devices): nothing to transfer in either direction
    itemize = ["rsync", "-naHX", "--devices", "--specials", "--itemize-changes", "--delete"]
    assert _out([*itemize, f"{rich.src}/", f"{m.path}/"], rich.src) == b""
    assert _out([*itemize, f"{m.path}/", f"{rich.src}/"], rich.src) == b""


def test_git_status_of_a_pushed_checkout_is_clean(tmp_path: Path, mount) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "README").write_text("hello\n")
    (src / "lib").mkdir()
    (src / "lib" / "code.py").write_text("print('hi')\n" * 100)
    (src / "big.bin").write_bytes(os.urandom(CHUNK + 10))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": "/dev/null"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=src, check=True, env=env, capture_output=True)
    repo = tmp_path / "repo"
    w = Wsfs(str(repo), str(tmp_path / "push-cache"))
    w("init")
    w.push(src, "git")
    m = mount(repo, "git@1")
    safe = ["--config-env=safe.directory=WSFS_SAFE"]  # the mount is another path than the checkout
    r = subprocess.run(["git", *safe, "status", "--porcelain"], cwd=m.path, capture_output=True, timeout=60,
                       env={**env, "WSFS_SAFE": str(m.path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""
    log = subprocess.run(["git", *safe, "log", "--format=%s"], cwd=m.path, capture_output=True, timeout=60,
                         env={**env, "WSFS_SAFE": str(m.path)})
    assert log.stdout == b"x\n"


def test_small_cache_limit_evicts_while_reading(tmp_path: Path, mount) -> None:
    data = os.urandom(10 * CHUNK)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(data)
    repo = tmp_path / "repo"
    w = Wsfs(str(repo), str(tmp_path / "push-cache"))
    w("init")
    w.push(src, "ws")
    m = mount(repo, "ws@1", extra=("-o", f"cache_size={3 * CHUNK}"))
    for _ in range(2):
        h = hashlib.sha256()
        with open(m.path / "big.bin", "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the second pass reads through again
        assert h.digest() == hashlib.sha256(data).digest()
    # The writer thread installs, indexes and evicts behind the reads, several blobs at a time: the last
    # batch may still be on its way when the reads are done.
    deadline = time.monotonic() + 10
    while (s := m.stats()["cache"])["evictions"] < 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s["evictions"] >= 7, s
    assert s["bytes"] <= 3 * CHUNK


def test_trees_without_xattrs_switch_the_kernel_xattr_calls_off(tmp_path: Path, mount) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(b"x")
    repo = tmp_path / "repo"
    w = Wsfs(str(repo), str(tmp_path / "push-cache"))
    w("init")
    w.push(src, "plain")
    m = mount(repo, "plain@1")
    for _ in range(2):
        subprocess.run(["ls", "-l", str(m.path)], check=True, capture_output=True)
        assert os.listxattr(m.path / "f1") == []
        with pytest.raises(OSError) as e:
            os.getxattr(m.path / "f1", "user.x")
        assert e.value.errno in (errno.ENODATA, errno.EOPNOTSUPP)
    assert m.stats()["requests"].get("getxattr", 0) <= 1  # the first ENOSYS ends them for the mount
