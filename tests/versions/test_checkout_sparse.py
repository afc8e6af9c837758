"""checkout's pwrite_sparse: the bytes land exactly; aligned 4 KiB blocks of zeros stay holes."""

from __future__ import annotations

import os
import random
from pathlib import Path

from wsfs.versions.checkout import pwrite_sparse


def test_bytes_land_exactly_whatever_mix_of_zeros_and_data(tmp_path: Path) -> None:
    rng = random.Random(5)
    for trial in range(200):
        n = rng.choice([0, 1, 4095, 4096, 4097, 3 * 4096 + 5, 65536, 1 << 20])
        buf = bytearray(n) if trial % 5 else bytearray(os.urandom(n))
        for _ in range(rng.randrange(0, 6)):
            if n:
                a = rng.randrange(n)
                b = min(n, a + rng.randrange(1, 9000))
                buf[a:b] = os.urandom(b - a)
        off = rng.randrange(0, 4) * 4096
        path = tmp_path / f"f{trial}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, off + n + rng.randrange(0, 5000))
            pwrite_sparse(fd, bytes(buf), off)
            assert os.pread(fd, n, off) == bytes(buf), trial
        finally:
            os.close(fd)


def test_a_chunk_of_zeros_with_one_island_allocates_the_island_only(tmp_path: Path) -> None:
    chunk = bytearray(4 << 20)
    chunk[1 << 20:(1 << 20) + 10] = b"island--10"
    path = tmp_path / "sparse"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 8 << 20)
        pwrite_sparse(fd, bytes(chunk), 4 << 20)
        assert os.pread(fd, 4 << 20, 4 << 20) == bytes(chunk)
        assert os.fstat(fd).st_blocks * 512 <= 64 * 1024  # one 4 KiB block, give or take the file system's
    finally:
        os.close(fd)
