"""A format 1 repository (tests/data, written before format 2) served: inline small files, chunked files,
tags, and the diff that compares trees because format 1 versions have no changesets."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from support.service import file_url, request, serve
from wsfs.repository import Repository
from wsfs.store import open_store

DATA = Path(__file__).resolve().parent.parent / "data"


def test_format1_repository(tmp_path: Path) -> None:
    with tarfile.open(DATA / "format1-repo.tar.gz") as t:
        t.extractall(tmp_path, filter="data")
    repo = Repository.open(open_store(str(tmp_path / "repo")), str(tmp_path / "cache"))
    assert repo.record("demo", 1).format == 1
    server, backend = serve(repo, tmp_path / "serve-cache")
    try:
        port = server.port
        r = request(port, "GET", file_url("demo", 1, b"a/hello.txt"))
        assert r.status == 200 and r.body == b"hello\n"
        assert request(port, "GET", file_url("demo", "v1", b"a/hello.txt")).body == b"hello\n"  # a tag
        assert request(port, "GET", file_url("demo", 2, b"a/hello.txt")).body == b"hello\nchanged\n"
        r = request(port, "GET", file_url("demo", 1, b"d/text.txt"), {"Range": "bytes=5-9"})
        assert r.status == 206 and r.body == (b"line\n" * 3000)[5:10]
        big = request(port, "GET", file_url("demo", 1, b"a/b/c/big.bin"))
        assert big.status == 200 and len(big.body) == 150000
        d = request(port, "GET", "/v1/workspaces/demo/diff?from=1&to=2").json()
        assert [(c["status"], c["path"]) for c in d["changes"]] == [
            ("M", "a/hardlink"), ("M", "a/hello.txt"), ("D", "d/text.txt"), ("A", "new"), ("A", "new/x")
        ]
        r = request(port, "GET", "/v1/workspaces/demo/versions/1/archive?path=a")
        with tarfile.open(fileobj=io.BytesIO(r.body), mode="r|") as tf:
            members = {ti.name: ti for ti in tf}
        assert members["a/hardlink"].islnk() or members["a/hello.txt"].islnk()
        assert request(port, "GET", file_url("demo", 1, b"link")).json()["target"] == "a/hello.txt"
    finally:
        server.stop()
        backend.close()
