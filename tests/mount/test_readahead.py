"""The daemon raises the kernel's read-ahead of its mount, so sequential reads arrive as 1 MiB READs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mountkit import PushedTree

from wsfs.daemon.view import KERNEL_READAHEAD_KIB


def _readahead_kib(mnt: Path) -> int:
    st = os.stat(mnt)
    return int(Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb").read_text())


def test_sequential_reads_arrive_as_large_reads(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich@1")
    deadline = time.monotonic() + 10
    while _readahead_kib(m.path) < KERNEL_READAHEAD_KIB and time.monotonic() < deadline:
        time.sleep(0.05)  # raised by the first request after INIT (the fixture's ismount made one)
    assert _readahead_kib(m.path) == KERNEL_READAHEAD_KIB
    data = (rich.src / "big9m").read_bytes()
    before = m.stats()["requests"].get("read", 0)
    with open(m.path / "big9m", "rb", buffering=0) as f:
        got = b"".join(iter(lambda: f.read(128 * 1024), b""))  # like cat: st_blksize reads
    assert got == data
    reads = m.stats()["requests"].get("read", 0) - before
    # 128 KiB of kernel read-ahead made READs of at most 256 KiB (36 for 9 MiB); now they reach
    # 1 MiB after the kernel's ramp-up at the start of the file (19 measured).
    assert reads <= len(data) // (384 * 1024), reads
