"""Streaming large files: parts of a chunk larger than a part, verified bytes across part and chunk
boundaries, corruption between parts, and the server process's malloc settings."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.service import Served, file_url, request, serve, write
from wsfs.cache import BlobCache
from wsfs.format.records import RepoConfig
from wsfs.repository import Repository, blob_key
from wsfs.service.backend import PART
from wsfs.store import open_store
from wsfs.versions.push import push

BIG_CHUNK = 2 * PART  # a chunk of two parts (chunk sizes are powers of two)
SIZE = BIG_CHUNK + PART + 12345  # two chunks: 2 + 2 parts


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, bytes]]:
    tmp = tmp_path_factory.mktemp("big")
    os.makedirs(tmp / "repo")
    repo = Repository.init(open_store(str(tmp / "repo")), RepoConfig(chunk_size=BIG_CHUNK), str(tmp / "push-cache"))
    data = os.urandom(SIZE)
    os.makedirs(tmp / "src")
    write(tmp / "src" / "big", data)
    push(repo, str(tmp / "src"), "big")
    server, backend = serve(repo, tmp / "serve-cache")
    try:
        yield Served(server.port, repo, backend), data
    finally:
        server.stop()
        backend.close()


def test_parts_never_cross_a_chunk(big: tuple[Served, bytes]) -> None:
    served, _ = big
    info, _ = served.backend.file_at("big", "1", [b"big"])
    parts = list(info.parts(0, SIZE))
    assert [(p.chunk.idx, p.start, p.length) for p in parts if p.chunk] == [
        (0, 0, PART), (0, PART, PART), (1, 0, PART), (1, PART, 12345)]
    # Parts start where the range does; a chunk boundary always ends one.
    assert [(p.start, p.length) for p in info.parts(PART - 1, BIG_CHUNK + 1)] == [(PART - 1, PART), (2 * PART - 1, 1), (0, 1)]


@pytest.mark.parametrize(("start", "end"), [
    (0, SIZE),  # everything: 200
    (PART - 3, PART + 3),  # across a part boundary inside a chunk
    (BIG_CHUNK - 5, BIG_CHUNK + 5),  # across the chunk boundary
    (PART + 7, SIZE),  # from inside chunk 0's second part to the end
])
def test_large_chunks_are_served_exactly(big: tuple[Served, bytes], start: int, end: int) -> None:
    served, data = big
    headers = {} if (start, end) == (0, SIZE) else {"Range": f"bytes={start}-{end - 1}"}
    r = served.get(file_url("big", 1, b"big"), headers)
    assert r.status == (200 if not headers else 206)
    assert r.body == data[start:end]


def test_a_chunk_corrupted_in_the_store_is_cut_before_its_first_part(tmp_path: Path) -> None:
    """Chunk 1 is bad in the store: the response ends exactly after chunk 0's parts (all sent, verified)."""
    os.makedirs(tmp_path / "repo")
    repo = Repository.init(open_store(str(tmp_path / "repo")), RepoConfig(chunk_size=BIG_CHUNK),
                           str(tmp_path / "push-cache"))
    data = os.urandom(SIZE)
    os.makedirs(tmp_path / "src")
    write(tmp_path / "src" / "big", data)
    push(repo, str(tmp_path / "src"), "big")
    with repo.open_manifest(repo.record("big", 1)) as m:
        bad = m.chunks(m.resolve(b"big").ino)[1]
    stored = bytearray(repo.store.get(blob_key(bad.cid)))
    stored[-1] ^= 1
    repo.store.put(blob_key(bad.cid), bytes(stored))
    server, backend = serve(repo, tmp_path / "serve-cache")
    try:
        r = request(server.port, "GET", file_url("big", 1, b"big"))
        assert r.status == 200 and r.incomplete
        assert r.body == data[: len(r.body)] and len(r.body) <= BIG_CHUNK
        # The bad chunk failed (in read-ahead, or in the read of its first part) and never entered memory.
        assert backend.cache.statistics()["failures"] >= 1
        assert backend.cache.recall(bad.cid, 0, 1) is None
    finally:
        server.stop()
        backend.close()
    # Nothing of the bad chunk was kept: not in the server's cache directory, not in its index.
    assert not backend.cache.contains(bad.cid)
    good = BlobCache(repo, str(tmp_path / "serve-cache"))
    try:
        assert good.usage() == (BIG_CHUNK, 1)  # chunk 0 only
    finally:
        good.close()


def test_the_server_process_tunes_malloc() -> None:
    """On glibc every mallopt call is accepted (in a process of its own: the tests' allocator is left alone)."""
    out = subprocess.run([sys.executable, "-c", "from wsfs.service.server import tune_malloc; print(tune_malloc())"],
                         capture_output=True, text=True, check=True).stdout.strip()
    if platform.libc_ver()[0] == "glibc":
        assert out == "True"
