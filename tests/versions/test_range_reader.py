"""versions.read.RangeReader: verified byte ranges of a version's files from several threads at once."""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor

from support.cli import Wsfs
from wsfs.cache import BlobCache
from wsfs.repository import Ref, Repository
from wsfs.store import open_store
from wsfs.versions.read import RangeReader

CHUNK = 64 * 1024


def test_ranges_of_packed_chunked_and_sparse_files_from_many_threads(tmp_path):
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init", "--chunk-size", str(CHUNK), "--inline-threshold", "4096")
    src = tmp_path / "src"
    src.mkdir()
    files = {"small": os.urandom(3000), "big": os.urandom(5 * CHUNK + 17),
             "sparse": bytes(2 * CHUNK) + b"tail" + bytes(CHUNK), "empty": b""}
    for name, data in files.items():
        (src / name).write_bytes(data)
    w.push(src, "demo")
    repo = Repository.open(open_store(w.repo), str(tmp_path / "c2"))
    record = repo.resolve(Ref.parse("demo"))
    m = repo.open_manifest(record)
    nodes = {name: m.resolve(name.encode()) for name in files}
    cache = BlobCache(repo, str(tmp_path / "c2"))
    reader = RangeReader(repo, m.path, cache)
    rng = random.Random(3)
    jobs = []
    for _ in range(400):
        name = rng.choice(list(files))
        size = len(files[name])
        off = rng.randrange(0, size + 10)
        jobs.append((name, off, rng.randrange(0, 3 * CHUNK)))
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda j: reader.read(nodes[j[0]], j[1], j[2]), jobs))
    finally:
        cache.close()
        m.close()
    for (name, off, n), data in zip(jobs, got, strict=True):
        assert data == files[name][off:off + n], (name, off, n)
