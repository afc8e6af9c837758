"""Fixtures of the REST API tests: a repository with every kind of entry, served over real HTTP on loopback.

The server is uvicorn in a thread of the test process, on a port the kernel
picks (``127.0.0.1:0``); requests go through ``http.client``
(``support/service.py``).  Most tests share one module-scoped repository
(local directory store): building it costs a push of ~2,600 entries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from support.service import Served, make_repo, make_tree, serve, write
from wsfs.versions.push import push


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("served")
    repo = make_repo(tmp)
    src1 = make_tree(tmp / "v1")
    push(repo, str(src1), "demo", message="first")
    src2 = tmp / "v2"
    os.system(f"cp -a {src1} {src2}")  # noqa: S605 - a test tree, our own paths
    write(src2 / "small.txt", b"changed\n")
    os.unlink(src2 / "mid.bin")
    write(src2 / "new.txt", b"new")
    push(repo, str(src2), "demo", message="second")
    repo.set_tag("demo", "rel-1", 1)
    push(repo, str(tmp / "v1" / "dir"), "other")
    server, backend = serve(repo, tmp / "serve-cache")
    try:
        yield Served(server.port, repo, backend, {1: src1, 2: src2})
    finally:
        server.stop()
        backend.close()
