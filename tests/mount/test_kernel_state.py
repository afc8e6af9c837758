"""The kernel's side of a mount as the daemon tracks it: lookup counts (``inodes.py``) and handles (``handles.py``).

The kernel counts one lookup per entry it is handed (here: every readdirplus
entry and every lookup reply) and sends FORGET only when it drops an inode, so
after a walk the daemon must know exactly the inodes under the mount, and
every handle it gave out must have come back.  A strict stop (the fixture)
also fails on a forget the table could not account for (a logged warning).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyfuse3
from mountkit import PushedTree


def _walk(top: Path) -> set[int]:
    """Every inode below *top* (not *top* itself), read as an application would: list, stat, read."""
    inos = set()
    for d, dirs, files in os.walk(top):
        for name in dirs + files:
            st = os.lstat(os.path.join(d, name))
            inos.add(st.st_ino)
        for name in files:
            p = os.path.join(d, name)
            if os.path.isfile(p) and not os.path.islink(p) and os.access(p, os.R_OK):
                with open(p, "rb") as f:
                    f.read(1)
    return inos


def _known_after_walks(m, top: Path) -> tuple[set[int], dict[str, int]]:
    # Another job's drop_caches makes the kernel forget inodes between the walk
    # and the count; a walk puts them back, so one of a few windows is exact.
    for _ in range(3):
        inos = _walk(top)
        kernel = m.stats()["kernel"]
        if kernel["inodes"] >= len(inos):
            break
    return inos, kernel


def test_a_version_mount_counts_what_the_kernel_knows(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich@1", extra=("-o", "nopreload"))
    inos, kernel = _known_after_walks(m, m.path)
    assert len(inos) > 50
    assert kernel["policy"] == "read-only" and kernel["mismatches"] == 0
    assert kernel["inodes"] == len(inos)  # every inode under the root once; the root is not counted
    assert kernel["lookups"] >= len(inos)
    assert kernel["handles"] == 0
    if getattr(pyfuse3, "WSFS_INODE_AS_HANDLE", False):
        assert kernel["opened"] == 0  # OPEN and OPENDIR answered ENOSYS: the table is never used


def test_a_history_mount_gives_back_every_directory_handle(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich", extra=("--history",))
    inos, kernel = _known_after_walks(m, m.path)
    assert kernel["mismatches"] == 0 and kernel["inodes"] == len(inos)
    # OPENDIR is answered (the root's listing changes); RELEASEDIR follows close() asynchronously.
    deadline = time.monotonic() + 5
    while (s := m.stats())["kernel"]["handles"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s["kernel"]["handles"] == 0 and s["kernel"]["opened"] >= 1
    assert s["requests"].get("opendir", 0) == s["requests"].get("releasedir", 0) == s["kernel"]["opened"]
