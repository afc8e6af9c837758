"""Mounts of versions stored in S3 (the fixtures' SeaweedFS, over real HTTP).

What a user pays for on S3 is requests: these tests count the daemon's GETs
and check they do not grow with the number of files, and that a random read
of a cold large file fetches one chunk.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from mountkit import CHUNK

from support.cli import Wsfs

pytestmark = pytest.mark.parametrize("store_kind", ["s3"], indirect=True)


def _tree(root: Path, nfiles: int, big: bytes) -> Path:
    for i in range(nfiles):
        d = root / f"pkg{i // 50}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.js").write_bytes(f"module.exports = {i};\n".encode() * (1 + i % 40))
    (root / "big.bin").write_bytes(big)
    return root


def _read_all_small(top: Path) -> int:
    n = 0
    for dirpath, _, files in os.walk(top):
        for f in files:
            if f != "big.bin":
                with open(os.path.join(dirpath, f), "rb") as fh:
                    n += len(fh.read())
    return n


def test_gets_do_not_grow_with_the_number_of_files(repo_url, subprocess_env, tmp_path, mount):
    big = os.urandom(3 * CHUNK)
    w = Wsfs(repo_url, str(tmp_path / "push-cache"), subprocess_env)
    w("init")
    w.push(_tree(tmp_path / "small", 100, big), "small")
    w.push(_tree(tmp_path / "large", 2000, big), "large")
    gets = {}
    for ws, n in (("small", 100), ("large", 2000)):
        m = mount(repo_url, f"{ws}@1", env=subprocess_env)
        before = m.gets()  # the repository descriptor, the version record, the manifest
        names = [os.path.join(d, f) for d, _, fs in os.walk(m.path) for f in fs]
        assert len(names) == n + 1
        assert _read_all_small(m.path) == _read_all_small(tmp_path / ws)
        gets[ws] = (before, m.gets())
        assert gets[ws][1] == gets[ws][0], "reading small files and listing must not GET anything"
    assert gets["small"][0] == gets["large"][0] <= 4


def test_cold_random_read_fetches_one_chunk_over_http(repo_url, subprocess_env, tmp_path, mount):
    big = os.urandom(16 * CHUNK + 1000)
    w = Wsfs(repo_url, str(tmp_path / "push-cache"), subprocess_env)
    w("init")
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(big)
    w.push(src, "ws")
    m = mount(repo_url, "ws@1", env=subprocess_env)
    s0 = m.stats()["store"]
    off = random.Random(7).randrange(5 * CHUNK, 15 * CHUNK)
    with open(m.path / "big.bin", "rb") as f:
        f.seek(off)
        assert f.read(4096) == big[off : off + 4096]
    s1 = m.stats()["store"]
    assert s1["requests"].get("get", 0) - s0["requests"].get("get", 0) == 1
    # the bound: one chunk (4 MiB, stored raw as it is incompressible) plus its codec byte
    assert s1["bytes_in"] - s0["bytes_in"] <= CHUNK + 1
