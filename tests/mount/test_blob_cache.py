"""The blob cache without a mount: single-flight (threads and processes), verification, eviction.

These run without FUSE.  They belong with the daemon's read path, which is
why they live next to the mount tests; ``tests/cache/`` is their natural home
once it exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from wsfs.cache import TMP_MAX_AGE, BlobCache
from wsfs.errors import IntegrityError
from wsfs.format.blobs import content_id
from wsfs.format.records import RepoConfig
from wsfs.repository import Repository
from wsfs.store.local import LocalStore

KIB = 1024


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    root = tmp_path / "repo"
    root.mkdir()
    return Repository.init(LocalStore(str(root)), RepoConfig(), str(tmp_path / "cache"))


def put(repo: Repository, data: bytes) -> bytes:
    cid = content_id(data)
    repo.put_blob(cid, data)
    return cid


def gets(repo: Repository) -> int:
    return int(repo.store.stats.snapshot()["requests"].get("get", 0))  # type: ignore[union-attr]


def slow_gets(repo: Repository, monkeypatch: pytest.MonkeyPatch, delay: float = 0.2) -> None:
    real = repo.get_blob

    def slow(cid: bytes, size: int | None, *args: Any, **kwargs: Any) -> bytes:
        time.sleep(delay)
        return real(cid, size, *args, **kwargs)

    monkeypatch.setattr(repo, "get_blob", slow)


def test_read_ranges_hits_and_misses(repo: Repository, tmp_path: Path) -> None:
    data = os.urandom(300 * KIB)
    cid = put(repo, data)
    cache = BlobCache(repo, str(tmp_path / "cache"))
    g0 = gets(repo)
    assert cache.try_read(cid, 0, 10) is None  # not there yet: never fetches
    assert cache.read(cid, 1000, 5000, size=len(data)) == data[1000:6000]
    assert cache.read(cid, len(data) - 10, 100) == data[-10:]  # short at the end
    assert cache.try_read(cid, 5, 5, size=len(data)) == data[5:10]  # verified in this process now
    s = cache.statistics()
    assert (s["misses"], s["fetches"], s["hits"], gets(repo) - g0) == (1, 1, 2, 1)
    assert s["bytes"] == len(data) and s["files"] == 1
    with open(cache.path(cid), "rb") as f:
        assert f.read() == data  # plaintext, preadable
    cache.close()


def test_ten_threads_one_missing_blob_one_get(repo: Repository, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(200 * KIB)
    cid = put(repo, data)
    slow_gets(repo, monkeypatch)
    cache = BlobCache(repo, str(tmp_path / "cache"))
    g0 = gets(repo)
    results: list[bytes | memoryview] = []
    start = threading.Barrier(10)

    def reader(i: int) -> None:
        start.wait()
        results.append(cache.read(cid, i * 100, 100))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(bytes(r) for r in results) == sorted(data[i * 100 : i * 100 + 100] for i in range(10))
    assert gets(repo) - g0 == 1
    s = cache.statistics()
    assert s["fetches"] == 1 and s["joined"] == 9
    cache.close()


_WORKER = r"""
import json, sys, time
from wsfs.cache import BlobCache
from wsfs.repository import Repository
from wsfs.store.local import LocalStore
repo = Repository.open(LocalStore(sys.argv[1]), sys.argv[2])
real = repo.get_blob
def slow(cid, size, *args, **kwargs):
    time.sleep(0.3)
    return real(cid, size, *args, **kwargs)
repo.get_blob = slow
cache = BlobCache(repo, sys.argv[2])
ids = [bytes.fromhex(h) for h in sys.argv[4:]]
while time.time() < float(sys.argv[3]):
    time.sleep(0.005)
out = [cache.read(cid, 0, 16).hex() for cid in ids]
cache.close()
print(json.dumps({"out": out, "stats": cache.stats.__dict__, "gets": repo.store.stats.snapshot()["requests"].get("get", 0)}))
"""


def test_processes_sharing_the_cache_fetch_each_blob_once(repo: Repository, tmp_path: Path) -> None:
    blobs = [os.urandom(64 * KIB + i) for i in range(4)]
    ids = [put(repo, b) for b in blobs]
    cache_dir = str(tmp_path / "cache")
    BlobCache(repo, cache_dir).close()  # create the index before the race
    Repository.open(repo.store, cache_dir)  # and the local copy of the descriptor: workers open with no GET
    start_at = str(time.time() + 1.0)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, repo.store.url, cache_dir, start_at,  # type: ignore[attr-defined]
                          *(c.hex() for c in ids)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out))
    for r in results:
        assert r["out"] == [b[:16].hex() for b in blobs]
    # Every blob was downloaded by exactly one of the three processes.  The
    # other two either waited for its lock (filled_by_other) or, once the
    # fetcher's writer thread had installed it, found the file (a hit).
    assert sum(r["stats"]["fetches"] for r in results) == len(blobs)
    assert sum(r["gets"] for r in results) == len(blobs)
    assert sum(r["stats"]["filled_by_other"] + r["stats"]["hits"] for r in results) == 2 * len(blobs)
    assert not list(Path(cache_dir, "blobs").rglob("*.lock")) and not list(Path(cache_dir, "blobs").rglob("*.tmp"))


def test_corrupt_or_truncated_cache_file_is_refetched(repo: Repository, tmp_path: Path) -> None:
    data = os.urandom(100 * KIB)
    cid = put(repo, data)
    cache_dir = str(tmp_path / "cache")
    first = BlobCache(repo, cache_dir)
    first.read(cid, 0, 1)
    first.drain()  # the content file is written after the bytes are returned
    path = first.path(cid)

    # Same size, wrong bytes, seen by a process that has not verified the file yet.
    with open(path, "r+b") as f:
        f.seek(500)
        f.write(b"\0garbage\0")
    second = BlobCache(repo, cache_dir, memory_bytes=0)  # no copies in memory: every read sees the file
    assert second.read(cid, 0, len(data)) == data
    assert second.statistics()["corrupt"] == 1 and second.statistics()["fetches"] == 1

    # Truncated: the size check catches it even in a process that verified the file.
    os.truncate(path, 10)
    assert second.try_read(cid, 0, 5, size=len(data)) is None
    assert second.read(cid, 0, len(data), size=len(data)) == data
    assert second.statistics()["corrupt"] == 2

    # Rewritten in place after verification, its mtime restored: the ctime still changed, so it is verified again.
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"X")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert second.try_read(cid, 0, 5) is None
    assert second.read(cid, 0, len(data)) == data
    assert second.statistics()["corrupt"] == 3
    first.close()
    second.close()


def test_cache_files_are_private_and_leftovers_of_killed_writers_go(repo: Repository, tmp_path: Path) -> None:
    """Content, index and lock files 0600 in 0700 directories; a stale .tmp is removed when its directory is
    next written to (a dead pid at once, a live one after TMP_MAX_AGE), never by a read."""
    a, b = os.urandom(100 * KIB), os.urandom(100 * KIB)
    cid_a = put(repo, a)
    cache_dir = tmp_path / "cache"
    cache = BlobCache(repo, str(cache_dir))
    cache.read(cid_a, 0, 1)
    cache.drain()
    directory = Path(cache.path(cid_a)).parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_tmp = directory / f".{'0' * 64}.{int(dead.stdout)}.1.tmp"
    live_tmp = directory / f".{'1' * 64}.{os.getpid()}.1.tmp"
    old_tmp = directory / f".{'2' * 64}.{os.getpid()}.2.tmp"
    for p in (dead_tmp, live_tmp, old_tmp):
        p.write_bytes(b"partial")
    os.utime(old_tmp, (time.time() - TMP_MAX_AGE - 10,) * 2)
    cache.close()
    for dirpath, _, files in os.walk(cache_dir):
        assert os.stat(dirpath).st_mode & 0o777 == 0o700, dirpath
        for f in files:
            if not f.endswith(".tmp"):
                assert os.stat(os.path.join(dirpath, f)).st_mode & 0o777 == 0o600, f
    # a new process writes into the same directory: the leftovers of dead or stuck writers go
    cid_b = bytes.fromhex(cid_a.hex()[:2] + "0" * 62)  # not a real id: only its directory matters
    reader = BlobCache(repo, str(cache_dir))
    assert reader.read(cid_a, 0, 3) == a[:3]  # a read tidies nothing
    assert dead_tmp.exists()
    reader._install(reader.path(cid_b), b)
    assert not dead_tmp.exists() and not old_tmp.exists() and live_tmp.exists()
    assert os.stat(reader.path(cid_b)).st_mode & 0o777 == 0o600
    reader.close()


def test_lru_eviction_keeps_the_limit(repo: Repository, tmp_path: Path) -> None:
    blobs = [os.urandom(100 * KIB) for _ in range(6)]
    ids = [put(repo, b) for b in blobs]
    cache = BlobCache(repo, str(tmp_path / "cache"), max_bytes=350 * KIB)
    for i, cid in enumerate(ids):
        cache.read(cid, 0, 1)
        time.sleep(0.002)
        if i >= 1:
            cache.read(ids[0], 0, 1)  # keep blob 0 recently used
            cache.flush(force=True)
    used, files = cache.usage()
    assert used <= 350 * KIB and files == 3
    present = [cache.contains(cid) for cid in ids]
    assert present == [True, False, False, False, True, True]
    assert cache.statistics()["evictions"] == 3
    # An evicted blob is simply fetched again.
    assert cache.read(ids[1], 0, 100 * KIB) == blobs[1]
    cache.close()


def test_missing_or_bad_blob_fails_and_fails_fast(repo: Repository, tmp_path: Path) -> None:
    cache = BlobCache(repo, str(tmp_path / "cache"))
    absent = content_id(b"never stored")
    g0 = gets(repo)
    for _ in range(3):
        with pytest.raises(IntegrityError, match="missing from the store"):
            cache.read(absent, 0, 1)
    assert gets(repo) - g0 == 1  # remembered: later reads fail without asking the store
    data = os.urandom(10 * KIB)
    cid = put(repo, data)
    with pytest.raises(IntegrityError, match="manifest says|expected 10241"):
        cache.read(cid, 0, 1, size=len(data) + 1)
    assert not cache.contains(cid)
    cache.close()


def test_fetched_blobs_are_served_from_memory_within_the_bound(repo: Repository, tmp_path: Path) -> None:
    blobs = [os.urandom(100 * KIB + i) for i in range(4)]
    ids = [put(repo, b) for b in blobs]
    cache = BlobCache(repo, str(tmp_path / "cache"), memory_bytes=250 * KIB)  # room for two
    for cid in ids:
        cache.read(cid, 0, 1)
    cache.drain()
    for cid in ids:
        os.unlink(cache.path(cid))  # memory hits never look at the file
    g0 = gets(repo)
    got = cache.try_read(ids[3], 10, 20)
    assert isinstance(got, memoryview) and got == blobs[3][10:30]
    assert cache.read(ids[2], 0, 100 * KIB + 2) == blobs[2]
    assert cache.try_read(ids[0], 0, 1) is None  # pushed out of memory (least recently used), file gone
    assert cache.read(ids[0], 5, 5) == blobs[0][5:10]  # fetched again
    assert gets(repo) - g0 == 1
    assert cache.statistics()["memory_hits"] == 2
    cache.close()


def test_content_files_are_written_behind_and_a_failed_write_costs_only_the_copy(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(300 * KIB + 123)  # not a whole number of blocks: the O_DIRECT path truncates
    cid = put(repo, data)
    cache_dir = str(tmp_path / "cache")
    cache = BlobCache(repo, cache_dir)
    release = threading.Event()
    real_install = cache._install

    def slow_install(path: str, blob: bytes) -> os.stat_result:
        release.wait(10)
        return real_install(path, blob)

    monkeypatch.setattr(cache, "_install", slow_install)
    # The reader gets verified bytes before the content file exists...
    assert cache.read(cid, 0, len(data), size=len(data)) == data
    assert not os.path.exists(cache.path(cid))
    assert cache.try_read(cid, 1, 2, size=len(data)) == data[1:3]  # ...from memory meanwhile
    release.set()
    cache.drain()
    with open(cache.path(cid), "rb") as f:
        assert f.read() == data
    assert cache.usage() == (len(data), 1)
    assert not list(Path(cache_dir, "blobs").rglob("*.lock")) and not list(Path(cache_dir, "blobs").rglob("*.tmp"))
    cache.close()

    # A write that fails (disk full...) is logged and counted; the read succeeded all the same.
    other = put(repo, os.urandom(64 * KIB))
    cache = BlobCache(repo, cache_dir)

    def failing_install(path: str, blob: bytes) -> os.stat_result:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "_install", failing_install)
    assert len(cache.read(other, 0, 64 * KIB)) == 64 * KIB
    cache.drain()
    assert cache.statistics()["write_failures"] == 1 and not cache.contains(other)
    assert not list(Path(cache_dir, "blobs").rglob("*.lock"))  # the lock was released
    cache.close()


def test_without_o_direct_content_files_are_written_normally(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wsfs.cache

    real_fcntl = wsfs.cache.fcntl.fcntl

    def no_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == wsfs.cache.fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(22, "Invalid argument")  # what a file system without O_DIRECT answers
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(wsfs.cache.fcntl, "fcntl", no_direct)
    blobs = [os.urandom(300 * KIB + i) for i in range(2)]
    ids = [put(repo, b) for b in blobs]
    cache = BlobCache(repo, str(tmp_path / "cache"))
    for cid in ids:
        cache.read(cid, 0, 1)
    cache.drain()
    assert not cache._direct_ok
    for cid, data in zip(ids, blobs, strict=True):
        with open(cache.path(cid), "rb") as f:
            assert f.read() == data
    cache.close()


def test_recall_gives_only_verified_bytes_in_memory_and_never_touches_a_file(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recall`` (the server's event loop): what a fetch or a first-use verification kept in memory, else None."""
    blobs = [os.urandom(300 * KIB + i) for i in range(2)]
    ids = [put(repo, b) for b in blobs]
    cache_dir = str(tmp_path / "cache")
    first = BlobCache(repo, cache_dir)
    assert first.recall(ids[0], 0, 1) is None  # not here: and no fetch either
    assert gets(repo) == 0
    first.prepare(ids[0], size=len(blobs[0]))  # fetched, verified: in memory
    got = first.recall(ids[0], 7, 100, size=len(blobs[0]))
    assert isinstance(got, memoryview) and got == blobs[0][7:107]
    assert first.recall(ids[0], 0, 1, size=len(blobs[0]) + 1) is None  # not the size the caller expects
    first.prepare(ids[1], size=len(blobs[1]))
    first.close()

    # Another process: the files are not verified by it.  One of them is corrupt.
    with open(first.path(ids[1]), "r+b") as f:
        f.write(b"\0bad\0")
    cache = BlobCache(repo, cache_dir)
    real_open = os.open
    opened: list[str] = []
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    assert all(cache.recall(cid, 0, 1) is None for cid in ids)
    assert opened == []  # memory only
    monkeypatch.setattr(os, "open", real_open)
    g0 = gets(repo)
    for cid, data in zip(ids, blobs, strict=True):
        cache.prepare(cid, size=len(data))  # verified (the bad file dropped and fetched again): in memory
        assert cache.recall(cid, 0, len(data), size=len(data)) == data
    assert gets(repo) - g0 == 1 and cache.statistics()["corrupt"] == 1
    cache.close()


def test_the_writer_indexes_queued_blobs_together_and_one_failed_write_loses_only_its_copy(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = [os.urandom(64 * KIB + i) for i in range(6)]
    ids = [put(repo, b) for b in blobs]
    cache = BlobCache(repo, str(tmp_path / "cache"))
    release = threading.Event()
    real_install = cache._install
    bad = cache.path(ids[3])

    def install(path: str, blob: bytes) -> os.stat_result:
        release.wait(10)  # the first write waits: the others queue behind it and go in one batch
        if path == bad:
            raise OSError(28, "No space left on device")
        return real_install(path, blob)

    monkeypatch.setattr(cache, "_install", install)
    transactions: list[int] = []
    real_batch = cache._write_batch
    monkeypatch.setattr(cache, "_write_batch", lambda batch: (transactions.append(len(batch)), real_batch(batch))[1])
    for cid, data in zip(ids, blobs, strict=True):
        assert cache.read(cid, 0, len(data)) == data
    release.set()
    cache.drain()
    assert sum(transactions) == 6 and len(transactions) < 6
    assert cache.usage() == (sum(len(b) for i, b in enumerate(blobs) if i != 3), 5)
    assert [cache.contains(cid) for cid in ids] == [True, True, True, False, True, True]
    assert cache.statistics()["write_failures"] == 1
    assert not list(Path(tmp_path, "cache", "blobs").rglob("*.lock"))  # every lock released
    # Memory still has every blob (the failed one too): the readers never noticed.
    assert all(cache.recall(cid, 0, len(b)) == b for cid, b in zip(ids, blobs, strict=True))
    cache.close()


def test_offered_blobs_are_written_behind_without_locks_and_never_wait(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit offers the packs it uploaded: served from memory at once, installed by the writer (no lock
    file), and dropped rather than waited for when the writer is behind; a file already there is kept."""
    cache_dir = str(tmp_path / "cache")
    cache = BlobCache(repo, cache_dir)
    cache.pending_bytes = 200 * KIB
    release = threading.Event()
    real_install = cache._install
    installs: list[str] = []

    def slow_install(path: str, blob: bytes) -> os.stat_result:
        release.wait(10)
        installs.append(path)
        return real_install(path, blob)

    monkeypatch.setattr(cache, "_install", slow_install)
    blobs = [os.urandom(150 * KIB + i) for i in range(3)]
    ids = [content_id(b) for b in blobs]
    g0 = gets(repo)
    t0 = time.monotonic()
    assert cache.offer(ids[0], blobs[0]) is True
    assert cache.offer(ids[1], blobs[1]) is False  # 150 KiB wait already, 300 would exceed 200: dropped
    assert cache.offer(ids[0], blobs[0]) is True  # queued already: nothing more
    assert time.monotonic() - t0 < 1.0  # the writer is held, and nobody waited for it
    assert cache.try_read(ids[0], 5, 10) == blobs[0][5:15]  # served from memory meanwhile
    assert not list(Path(cache_dir, "blobs").rglob("*.lock"))
    release.set()
    cache.drain()
    with open(cache.path(ids[0]), "rb") as f:
        assert f.read() == blobs[0]
    assert not os.path.exists(cache.path(ids[1])) and len(installs) == 1
    # A content file that exists when the writer gets to the offer is kept as it is.
    os.makedirs(os.path.dirname(cache.path(ids[2])), exist_ok=True)
    with open(cache.path(ids[2]), "wb") as f:
        f.write(blobs[2])
    before = os.stat(cache.path(ids[2])).st_ino
    assert cache.offer(ids[2], blobs[2]) is True
    cache.drain()
    assert os.stat(cache.path(ids[2])).st_ino == before and len(installs) == 1
    assert cache.read(ids[0], 0, len(blobs[0])) == blobs[0] and gets(repo) == g0  # no GET for any of it
    assert not list(Path(cache_dir, "blobs").rglob("*.lock")) and not list(Path(cache_dir, "blobs").rglob("*.tmp"))
    cache.close()
