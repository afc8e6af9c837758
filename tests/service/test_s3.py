"""The API over a repository in S3 (the session's S3 server: SeaweedFS by default, moto with
``WSFS_TEST_S3_SERVER=moto``): the same code reads through ``S3Store`` instead of the local one, so one
test of each kind of read (listing, tree, small and chunked bytes, a range, an archive) shows it is wired
the same way; the rest of ``tests/service`` uses a local repository (faster, no server).
"""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.s3server import delete_prefix
from support.service import CHUNK, file_url, make_repo, request, serve, write
from wsfs.versions.push import push


@pytest.fixture
def s3_url(s3_server, s3_client) -> Iterator[str]:
    """A fresh repository location on the session's S3 server, emptied afterwards."""
    prefix = f"wsfs-test/serve-{uuid.uuid4().hex[:12]}"
    yield f"s3://{s3_server.bucket}/{prefix}"
    delete_prefix(s3_client, s3_server.bucket, prefix + "/")


@pytest.mark.s3
def test_serve_from_s3(s3_url: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, s3_url)
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    big = os.urandom(3 * CHUNK + 99)
    write(src / "big", big)
    write(src / "d" / "small", b"small")
    record, _ = push(repo, str(src), "s3ws")
    server, backend = serve(repo, tmp_path / "serve-cache")
    try:
        port = server.port
        assert request(port, "GET", "/v1/workspaces").json() == {"workspaces": [{"name": "s3ws"}]}
        tree = request(port, "GET", "/v1/workspaces/s3ws/versions/1/tree").json()
        assert [e["name"] for e in tree["entries"]] == ["big", "d"]
        r = request(port, "GET", file_url("s3ws", 1, b"big"))
        assert r.status == 200 and r.body == big
        r = request(port, "GET", file_url("s3ws", "latest", b"big"), {"Range": f"bytes={CHUNK - 5}-{CHUNK + 5}"})
        assert r.status == 206 and r.body == big[CHUNK - 5 : CHUNK + 6]
        assert request(port, "GET", file_url("s3ws", 1, b"d/small")).body == b"small"
        r = request(port, "GET", "/v1/workspaces/s3ws/versions/1/archive?path=d")
        with tarfile.open(fileobj=io.BytesIO(r.body), mode="r|") as tf:
            names = [ti.name for ti in tf]
        assert names == ["d/", "d/small"] or names == ["d", "d/small"]
    finally:
        server.stop()
        backend.close()
