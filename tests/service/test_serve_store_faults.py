"""``wsfs serve`` over a faulty store (tests/support/faultproxy.py between the server and S3):
transient faults are retried and the bytes are right; bad data is a 502 before the status line or a
cut stream after it, never a wrong byte; a stalled store is a 504 in bounded time."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.faultproxy import Fault, FaultProxy
from support.s3server import delete_prefix
from support.service import CHUNK, Server, file_url, make_repo, request, write
from wsfs.cache import BlobCache
from wsfs.format.blobs import content_id
from wsfs.repository import Repository, blob_key
from wsfs.service.app import create_app
from wsfs.service.backend import Backend
from wsfs.store import open_store
from wsfs.versions.push import push

pytestmark = pytest.mark.s3


@pytest.fixture
def pushed(s3_server, s3_client, tmp_path) -> Iterator[tuple[str, bytes, bytes]]:
    """A version on S3 (pushed directly): ``(url, big file bytes, small file bytes)``."""
    url = f"s3://{s3_server.bucket}/wsfs-test/serve-faults-{uuid.uuid4().hex[:12]}"
    repo = make_repo(tmp_path, url)
    src = tmp_path / "src"
    src.mkdir()
    big, small = os.urandom(4 * CHUNK + 5), b"small file\n"
    write(src / "big", big)
    write(src / "small", small)
    push(repo, str(src), "ws")
    yield url, big, small
    delete_prefix(s3_client, s3_server.bucket, url.split("/", 3)[3] + "/")


def served_through(proxy: FaultProxy, url: str, cache: Path, timeout: float | None = None) -> tuple[Server, Backend]:
    repo = Repository.open(open_store(url, endpoint_url=proxy.url, timeout=timeout), str(cache))
    backend = Backend(repo, BlobCache(repo, str(cache)), blob_workers=8)
    return Server(create_app(backend, None)), backend


def test_transient_faults_are_retried_and_every_byte_is_right(s3_server, pushed, tmp_path):
    url, big, small = pushed
    attempts: dict[str, int] = {}
    kinds = [Fault.error(503, "SlowDown"), Fault.reset(), Fault.truncate(), Fault.corrupt()]

    def first_attempt_fails(method: str, path: str, query: str) -> Fault | None:
        n = attempts[path] = attempts.get(path, 0) + 1
        return kinds[len(attempts) % len(kinds)] if n == 1 and method == "GET" else None

    with FaultProxy(s3_server.endpoint_url, first_attempt_fails) as proxy:
        server, backend = served_through(proxy, url, tmp_path / "c")
        try:
            assert request(server.port, "GET", file_url("ws", 1, b"big")).body == big
            assert request(server.port, "GET", file_url("ws", 1, b"small")).body == small
            r = request(server.port, "GET", file_url("ws", 1, b"big"), {"Range": f"bytes={3 * CHUNK}-"})
            assert r.status == 206 and r.body == big[3 * CHUNK:]
        finally:
            server.stop()
            backend.close()
        assert {f for _, _, f in proxy.faults()} >= {"503 SlowDown", "reset", "truncate", "corrupt"}


def test_lasting_bad_bytes_are_a_502_or_a_cut_stream_never_a_wrong_byte(s3_server, pushed, tmp_path):
    url, big, _ = pushed
    bad = "/" + blob_key(content_id(big[2 * CHUNK : 3 * CHUNK]))  # the third chunk, always corrupt

    with FaultProxy(s3_server.endpoint_url, lambda m, p, q: Fault.corrupt() if p.endswith(bad) else None) as proxy:
        server, backend = served_through(proxy, url, tmp_path / "c")
        try:
            whole = request(server.port, "GET", file_url("ws", 1, b"big"))
            only = request(server.port, "GET", file_url("ws", 1, b"big"), {"Range": f"bytes={2 * CHUNK}-{2 * CHUNK + 9}"})
        finally:
            server.stop()
            backend.close()
    assert any(p.endswith(bad) for _, p, f in proxy.requests if f == "corrupt")
    # The first part was sent before the bad chunk was reached: the stream is cut, what came is right.
    assert whole.status == 502 or whole.incomplete
    assert big.startswith(whole.body) and len(whole.body) < len(big)
    assert only.status == 502 and big[2 * CHUNK : 2 * CHUNK + 10] not in only.body


def test_a_stalled_store_is_a_504_in_bounded_time(s3_server, pushed, tmp_path):
    url, _, _ = pushed
    with FaultProxy(s3_server.endpoint_url, lambda m, p, q: Fault.stall(60) if "/blobs/" in p else None) as proxy:
        server, backend = served_through(proxy, url, tmp_path / "c", timeout=2)
        try:
            t0 = time.monotonic()
            r = request(server.port, "GET", file_url("ws", 1, b"big"))
            took = time.monotonic() - t0
        finally:
            server.stop()
            backend.close()
    assert r.status in (503, 504) and took < 30, (r.status, took)
