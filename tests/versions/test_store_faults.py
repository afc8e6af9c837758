"""fsck, gc and reads through a faulty store: a fault-injecting proxy between wsfs and the S3 server.

503 SlowDown, connections reset mid-body, bodies cut short, bodies with a
flipped byte, and a store that fails for good part-way: retries stay
bounded, errors are one line with the right exit code, gc deletes nothing a
kept version needs, and no byte that did not verify is ever written out.
"""

from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path

import pytest

from support.cli import Wsfs
from support.faultproxy import Fault, FaultProxy
from support.s3server import delete_prefix
from support.trees import assert_same_tree

pytestmark = pytest.mark.s3

CHUNK = 64 * 1024


@pytest.fixture
def proxied(s3_server, s3_client, tmp_path):
    """``wsfs`` on a fresh S3 repository reached through a FaultProxy (no faults until a test sets a rule)."""
    prefix = f"wsfs-test/faults-{uuid.uuid4().hex[:12]}"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        env = {**os.environ, **s3_server.env, "AWS_ENDPOINT_URL": proxy.url, "WSFS_OP_TIMEOUT": "20"}
        w = Wsfs(f"s3://{s3_server.bucket}/{prefix}", str(tmp_path / "cache"), env)
        w("init", "--chunk-size", str(CHUNK), "--inline-threshold", "4096")
        try:
            yield w, proxy
        finally:
            delete_prefix(s3_client, s3_server.bucket, prefix + "/")


def two_versions(w: Wsfs, tmp_path: Path) -> tuple[Path, bytes]:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(20):
        (src / "d" / f"f{i}").write_bytes(os.urandom(100 + 37 * i))
    big = os.urandom(5 * CHUNK + 11)
    (src / "big").write_bytes(big)
    w.push(src, "demo")
    (src / "big").write_bytes(os.urandom(2 * CHUNK))  # demo@1's big file is only in demo@1
    (src / "d" / "f0").write_bytes(b"changed\n")
    w.push(src, "demo")
    return src, big


def test_fsck_full_and_gc_get_through_slowdowns_resets_and_short_bodies(proxied, tmp_path):
    w, proxy = proxied
    src, _ = two_versions(w, tmp_path)
    # Every third distinct request fails its first attempt, by turns with each kind of fault; retries succeed.
    faults = itertools.cycle([Fault.error(503, "SlowDown"), Fault.reset(), Fault.truncate(), Fault.error(500, "InternalError")])
    counter = itertools.count(1)
    attempts: dict[tuple[str, str, str], int] = {}

    def first_attempts_fail(method: str, path: str, query: str) -> Fault | None:
        n = attempts[method, path, query] = attempts.get((method, path, query), 0) + 1
        return next(faults) if n == 1 and next(counter) % 3 == 0 else None

    proxy.set_rule(first_attempts_fail)
    r = w("fsck", "--full", "--cache-dir", str(tmp_path / "fresh"))
    assert "0 problem(s)" in r.text, r.text
    r = w("gc", "--keep-last", "1", "--grace", "0")
    assert "dropped demo@1" in r.text
    r = w("gc", "--keep-last", "1", "--grace", "0")
    assert " 0 deleted" not in r.text, r.text
    assert len(proxy.faults()) > 10
    proxy.set_rule(None)
    out = tmp_path / "out"
    w("checkout", "demo@2", str(out), "--cache-dir", str(tmp_path / "fresh2"))
    assert_same_tree(src, out)
    assert "1 version(s)" in w("fsck", "--full", "--cache-dir", str(tmp_path / "fresh3")).text


def test_a_flipped_byte_is_retried_once_and_a_lasting_one_is_an_error_never_output(proxied, tmp_path):
    w, proxy = proxied
    src, _ = two_versions(w, tmp_path)
    big = (src / "big").read_bytes()
    # Every first GET of an object comes back with a flipped byte: the retry gets it right.
    seen: set[str] = set()

    def first_is_bad(method: str, path: str, query: str) -> Fault | None:
        if method == "GET" and "/blobs/" in path and path not in seen:
            seen.add(path)
            return Fault.corrupt()
        return None

    proxy.set_rule(first_is_bad)
    assert w("cat", "demo@2", "big", "--cache-dir", str(tmp_path / "c1")).out == big
    assert "0 problem(s)" in w("fsck", "--full", "--cache-dir", str(tmp_path / "c2")).text
    assert any(f == "corrupt" for _, _, f in proxy.faults())
    # One chunk always corrupt: cat fails with exit 6 and writes nothing of that chunk; fsck names it.
    proxy.set_rule(None)
    ls = [p for p in proxy.requests if p[0] == "GET" and "/blobs/" in p[1]]
    assert ls
    victim = {"path": ""}

    def chunk_two_always_bad(method: str, path: str, query: str) -> Fault | None:
        return Fault.corrupt() if method == "GET" and path == victim["path"] else None

    from wsfs.format.blobs import content_id

    second = content_id(big[CHUNK : 2 * CHUNK]).hex()
    victim["path"] = next(p for _, p, _ in proxy.requests if p.endswith(second))
    proxy.set_rule(chunk_two_always_bad)
    r = w("cat", "demo@2", "big", "--cache-dir", str(tmp_path / "c3"), check=False)
    assert r.code == 6 and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert big.startswith(r.out) and len(r.out) <= CHUNK  # at most the verified first chunk
    r = w("fsck", "--full", "--cache-dir", str(tmp_path / "c4"), check=False)
    assert r.code == 6 and second in r.text


def test_gc_against_a_store_that_breaks_part_way_deletes_nothing_a_kept_version_needs(proxied, tmp_path):
    w, proxy = proxied
    src, _ = two_versions(w, tmp_path)
    w("tag", "demo@1", "keep")
    (src / "extra").write_bytes(os.urandom(3 * CHUNK))
    w.push(src, "demo")  # demo@3
    w("gc", "--keep-last", "1", "--grace", "0")  # drops demo@2 (demo@1 is tagged), marks its objects
    deletes = itertools.count(1)

    def breaks_after_two_deletes(method: str, path: str, query: str) -> Fault | None:
        if method == "DELETE" and next(deletes) > 2:
            return Fault.error(500, "InternalError")
        return None

    proxy.set_rule(breaks_after_two_deletes)
    r = w("gc", "--keep-last", "1", "--grace", "0", check=False)
    assert r.code == 8 and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err
    proxy.set_rule(None)
    w("gc", "--keep-last", "1", "--grace", "0")
    for ref in ("demo@1", "demo@3"):
        out = tmp_path / ref.replace("@", "-")
        w("checkout", ref, str(out), "--cache-dir", str(tmp_path / f"co-{ref}"))
    assert_same_tree(src, tmp_path / "demo-3")
    r = w("fsck", "--full", "--cache-dir", str(tmp_path / "fsck"))
    assert "2 version(s)" in r.text and "0 problem(s)" in r.text


def test_a_stalled_store_ends_fsck_with_exit_8_in_bounded_time(proxied, tmp_path):
    import time

    w, proxy = proxied
    two_versions(w, tmp_path)
    proxy.set_rule(lambda m, p, q: Fault.stall(60) if m == "GET" and "/blobs/" in p else None)
    t0 = time.monotonic()
    r = w("fsck", "--full", "--cache-dir", str(tmp_path / "c"), check=False,
          env={"WSFS_OP_TIMEOUT": "3"}, timeout=120)
    assert r.code == 8 and len(r.err.strip().splitlines()) == 1, r.err
    assert time.monotonic() - t0 < 60
