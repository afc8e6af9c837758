"""Mounts of versions stored in S3 (the fixtures' SeaweedFS, over real HTTP).

What a user pays for on S3 is requests: these tests count the daemon's GETs
and check they do not grow with the number of files (format 2: pieces of the
tree and packs of small files, each holding many files), and that a random
read of a cold large file fetches one chunk.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from mountkit import CHUNK, pack_ids, version_costs, wait_for_blobs

from support.cli import Wsfs
from wsfs.format.tree import Cuts

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
    pack_min = Cuts().pack_min
    for ws, n in (("small", 100), ("large", 2000)):
        meta, packs = version_costs(repo_url, tmp_path / f"count-cache-{ws}", f"{ws}@1")
        m = mount(repo_url, f"{ws}@1", env=subprocess_env)
        # the repository descriptor, the version record, the tree's pieces: its top, two listing pieces and
        # ranges of at least range_min (16 KiB) of entries, more than 200 of these each; its pack map
        entries = n + n // 50 + 2  # the files, the pkg directories, big.bin, the root
        assert m.gets() == 2 + meta and meta <= 3 + entries // 200 + 1 + 1, (ws, meta)
        names = [os.path.join(d, f) for d, _, fs in os.walk(m.path) for f in fs]
        assert len(names) == n + 1
        # The listings made the preload helper fetch the packs: side by side in one segment, several per
        # ranged GET, never one GET per pack (nor per file).  Then reading every small file costs nothing more.
        wait_for_blobs(m.cache_dir, pack_ids(repo_url, tmp_path / f"count-cache-{ws}", f"{ws}@1"))
        fetched = m.gets() - (2 + meta)
        assert 1 <= fetched <= packs // 4 + 1, (ws, fetched, packs)
        small = _read_all_small(m.path)
        assert small == _read_all_small(tmp_path / ws)
        assert m.gets() == 2 + meta + fetched, ws
        # a pack holds at least pack_min bytes of small files but the last
        assert packs <= small // pack_min + 1 and packs * 20 < n, (ws, packs)


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
