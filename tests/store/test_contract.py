"""The ObjectStore contract, run against every store kind.

Why both kinds: every layer above the store is written against this contract
alone, so a difference between LocalStore and S3Store (ordering, prefixes,
ranges past the end, conditional creation, request counts) would be a bug that
only shows in production on one backend.  S3-only behaviour (URL parsing,
retries, credentials, unreachable endpoints) is in test_s3_store.py.
"""

from __future__ import annotations

import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from wsfs.errors import AlreadyExists, InvalidName, NotFound
from wsfs.store import ObjectStore, open_store


def test_round_trip_small(store: ObjectStore) -> None:
    store.put("a", b"hello")
    store.put("dir/sub/b", b"\x00\xff" * 10)
    assert store.get("a") == b"hello"
    assert store.get("dir/sub/b") == b"\x00\xff" * 10


def test_round_trip_empty(store: ObjectStore) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.exists("empty")


def test_round_trip_10mib(store: ObjectStore) -> None:
    data = os.urandom(10 * 1024 * 1024)
    store.put("big", data)
    assert store.get("big") == data
    assert store.get_range("big", 5 * 1024 * 1024 - 3, 7) == data[5 * 1024 * 1024 - 3 : 5 * 1024 * 1024 + 4]


def test_get_missing_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        store.get("missing")
    with pytest.raises(NotFound):
        store.get_range("missing", 0, 10)


def test_get_range(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable mod 256
    store.put("r", data)
    assert store.get_range("r", 0, 1) == data[:1]
    assert store.get_range("r", 100, 50) == data[100:150]
    assert store.get_range("r", 1000, 24) == data[1000:]  # exactly to the end
    assert store.get_range("r", 1000, 100) == data[1000:]  # across the end: shortened
    assert store.get_range("r", 0, 5000) == data
    assert store.get_range("r", 1023, 1) == data[1023:]
    assert store.get_range("r", 1024, 10) == b""  # starts at the end
    assert store.get_range("r", 5000, 10) == b""  # starts past the end
    assert store.get_range("r", 10, 0) == b""


def test_get_stream(store: ObjectStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    store.put("s/obj", data)
    before = store.stats.snapshot()
    pieces = list(store.get_stream("s/obj", 1024 * 1024))
    after = store.stats.snapshot()
    assert b"".join(pieces) == data
    assert all(0 < len(p) <= 1024 * 1024 for p in pieces) and len(pieces) >= 4
    assert after["requests"].get("get", 0) - before["requests"].get("get", 0) == 1  # type: ignore[attr-defined]
    assert after["bytes_in"] - before["bytes_in"] == len(data)  # type: ignore[operator]
    with pytest.raises(NotFound):
        store.get_stream("s/missing")  # before the first piece, not while iterating
    store.put("s/empty", b"")
    assert list(store.get_stream("s/empty")) == []


def test_put_overwrites(store: ObjectStore) -> None:
    store.put("k", b"first version, longer")
    store.put("k", b"second")
    assert store.get("k") == b"second"


def test_put_if_absent_creates_then_refuses(store: ObjectStore) -> None:
    store.put_if_absent("once", b"original")
    assert store.get("once") == b"original"
    with pytest.raises(AlreadyExists):
        store.put_if_absent("once", b"intruder")
    with pytest.raises(AlreadyExists):
        store.put_if_absent("once", b"original")  # same bytes: still not ours to create
    assert store.get("once") == b"original"


def test_put_if_absent_after_put(store: ObjectStore) -> None:
    store.put("k", b"plain put")
    with pytest.raises(AlreadyExists):
        store.put_if_absent("k", b"conditional")
    assert store.get("k") == b"plain put"


@pytest.mark.parametrize("round_", range(3))
def test_put_if_absent_race_has_one_winner(store: ObjectStore, round_: int) -> None:
    # SeaweedFS serialises contending conditional PUTs with ~1 s lock waits, so
    # more writers cost seconds there; 12 threads still race hard on one key.
    writers = 12
    barrier = threading.Barrier(writers)
    key = f"race/{round_}"

    def attempt(i: int) -> int | None:
        payload = f"writer {i} ".encode() * 1000  # distinct bytes per writer
        barrier.wait()
        try:
            store.put_if_absent(key, payload)
        except AlreadyExists:
            return None
        return i

    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(attempt, range(writers)))
    winners = [i for i in results if i is not None]
    assert len(winners) == 1, f"winners: {winners}"
    assert store.get(key) == f"writer {winners[0]} ".encode() * 1000
    assert store.stats.requests["put"] >= writers  # everyone really tried


def test_exists(store: ObjectStore) -> None:
    assert not store.exists("e")
    store.put("e", b"")
    assert store.exists("e")
    assert not store.exists("e2")
    store.put("folder/x", b"1")
    assert not store.exists("folder/y")


KEYS = ["a", "b/c", "b/d/e", "b-x", "ba", "c/\u00e9", "c/z", "b/d/f"]


def test_list_sorted_relative_nested(store: ObjectStore) -> None:
    for key in KEYS:
        store.put(key, key.encode())
    assert list(store.list("")) == sorted(KEYS)
    # Folder prefixes match whole names: "b/" is not "b-x" or "ba".
    assert list(store.list("b/")) == ["b/c", "b/d/e", "b/d/f"]
    assert list(store.list("b/d/")) == ["b/d/e", "b/d/f"]
    assert list(store.list("c/")) == ["c/z", "c/\u00e9"]
    assert list(store.list("nothing/")) == []
    # With sizes: the same keys, each with its stored length.
    assert list(store.list_sizes("b/")) == [("b/c", 3), ("b/d/e", 5), ("b/d/f", 5)]
    assert [k for k, _ in store.list_sizes("")] == sorted(KEYS)


def test_list_empty_store(store: ObjectStore) -> None:
    assert list(store.list("")) == []
    assert store.list_dirs("") == []


def test_prefix_isolation(repo_url: str) -> None:
    # Sibling stores whose names share a prefix ("x" and "x-y"): neither sees the other.
    x = open_store(repo_url + "/x")
    xy = open_store(repo_url + "/x-y")
    x.put("k1", b"x")
    xy.put("k2", b"xy")
    assert list(x.list("")) == ["k1"]
    assert list(xy.list("")) == ["k2"]
    assert x.list_dirs("") == []
    assert not x.exists("k2")
    with pytest.raises(NotFound):
        xy.get("k1")
    parent = open_store(repo_url)
    assert list(parent.list("")) == ["x-y/k2", "x/k1"]
    assert parent.list_dirs("") == ["x", "x-y"]


def test_list_more_than_one_page(store: ObjectStore, store_kind: str) -> None:
    # S3 pages hold at most 1000 keys; 1100 forces a continuation on s3.
    keys = [f"many/{i:05d}" for i in range(1100)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: store.put(k, b""), keys))
    store.put("other/x", b"")
    before = store.stats.requests["list"]
    assert list(store.list("many/")) == keys
    # One ListObjectsV2 per page of 1000 on s3; one directory walk locally.
    assert store.stats.requests["list"] - before == (2 if store_kind == "s3" else 1)


def test_list_dirs(store: ObjectStore) -> None:
    for key in ["a/1", "a/b/2", "a/c/d/3", "c/3", "top", "d-e/4"]:
        store.put(key, b"")
    assert store.list_dirs("") == ["a", "c", "d-e"]
    assert store.list_dirs("a/") == ["b", "c"]
    assert store.list_dirs("a/c/") == ["d"]
    assert store.list_dirs("a/b/") == []
    assert store.list_dirs("none/") == []


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("d/k", b"x")
    store.put("d/keep", b"y")
    store.delete("d/k")
    assert not store.exists("d/k")
    with pytest.raises(NotFound):
        store.get("d/k")
    store.delete("d/k")  # again: fine
    store.delete("never/existed")
    assert list(store.list("")) == ["d/keep"]


@pytest.mark.parametrize("key", ["", "../x", "/x", "a//b", "a/", "a/./b", "a/../b", ".", "a\\b", "a\0b"])
def test_invalid_keys_rejected(store: ObjectStore, store_kind: str, key: str) -> None:
    with pytest.raises(InvalidName):
        store.get(key)
    with pytest.raises(InvalidName):
        store.get_range(key, 0, 1)
    with pytest.raises(InvalidName):
        store.get_stream(key)
    with pytest.raises(InvalidName):
        store.put(key, b"x")
    with pytest.raises(InvalidName):
        store.put_if_absent(key, b"x")
    with pytest.raises(InvalidName):
        store.exists(key)
    with pytest.raises(InvalidName):
        store.delete(key)
    if store_kind == "s3":  # (LocalStore counts exists/delete before validating)
        assert store.stats.requests == {}, "an invalid key must be refused before any request"


def test_stats_count_exactly(store: ObjectStore) -> None:
    data = b"0123456789" * 100
    store.put("s/one", data)
    assert store.get("s/one") == data
    assert store.get_range("s/one", 10, 5) == b"01234"
    # bytes_in counts what reads returned, bytes_out what was written.
    assert store.stats.snapshot() == {
        "requests": {"put": 1, "get": 2},
        "errors": {},
        "retries": {},
        "bytes_in": 1000 + 5,
        "bytes_out": 1000,
    }
    store.put_if_absent("s/two", b"abc")
    assert store.exists("s/two")
    assert not store.exists("s/three")
    assert list(store.list("s/")) == ["s/one", "s/two"]
    store.delete("s/two")
    with pytest.raises(NotFound):
        store.get("s/two")
    assert store.stats.snapshot() == {
        "requests": {"put": 2, "get": 3, "head": 2, "list": 1, "delete": 1},
        "errors": {},  # a missing key is an answer, not an error
        "retries": {},
        "bytes_in": 1005,
        "bytes_out": 1003,
    }


def test_check(store: ObjectStore) -> None:
    store.put("k", b"")  # a local repository directory exists once written to
    store.check()


def test_missing_location_is_not_found(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if store_kind == "local":
        url = str(tmp_path / "does-not-exist")
    else:
        request.getfixturevalue("s3_server")  # the endpoint, from AWS_ENDPOINT_URL
        url = f"s3://wsfs-missing-{uuid.uuid4().hex[:12]}/repo"
    missing = open_store(url)
    with pytest.raises(NotFound):
        missing.check()
    with pytest.raises(NotFound):
        missing.get("k")
