"""Serving a repository over real HTTP in tests: uvicorn in a thread on a free loopback port, ``http.client`` requests.

Used by ``tests/service``.  Also the tree every API test reads: one of
every kind of content (inline/packed, chunked, empty, sparse), links, odd
names and a directory of 2,500 entries.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import uvicorn

from wsfs.cache import BlobCache
from wsfs.format.records import RepoConfig
from wsfs.repository import Repository
from wsfs.service.app import create_app
from wsfs.service.auth import AuthConfig
from wsfs.service.backend import Backend
from wsfs.service.server import bind
from wsfs.store import open_store

CHUNK = 64 * 1024
INLINE = 16 * 1024
WEIRD = [b"caf\xe9-latin1", b"sp ace", b"per%cent", b"q?mark", b"hash#tag", b"plus+sign", "ünï".encode(), b"\x01ctl"]
MANY = 2500


class Server:
    """uvicorn serving *app* on a free loopback port, in a thread; :meth:`stop` ends it."""

    def __init__(self, app: Any) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    incomplete: bool = False

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Served:
    """A served repository: its URL base, the source trees pushed, and a request helper."""

    port: int
    repo: Repository
    backend: Backend
    sources: dict[int, Path] = field(default_factory=dict)

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
        return request(self.port, method, path, headers)

    def json(self, path: str) -> Any:
        r = self.get(path)
        assert r.status == 200, (r.status, r.body[:500])
        return r.json()


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        hs = {k.lower(): v for k, v in r.getheaders()}
        try:
            body = r.read()
            incomplete = False
        except http.client.IncompleteRead as e:
            body, incomplete = e.partial, True
        return Reply(r.status, hs, body, incomplete)
    finally:
        conn.close()


def file_url(ws: str, v: str | int, path: bytes) -> str:
    return f"/v1/workspaces/{ws}/versions/{v}/files/" + quote_from_bytes(path, safe="/")


def write(path: Path | bytes, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def make_tree(root: Path) -> Path:
    """Every kind of content the API serves: inline/packed, chunked, empty, sparse, links, odd names, a big directory."""
    root.mkdir(parents=True)
    r = os.fsencode(root)
    write(root / "small.txt", b"hello\n")
    write(root / "mid.bin", os.urandom(10_000))
    write(root / "big.bin", os.urandom(5 * CHUNK + 1234))
    write(root / "exact.bin", os.urandom(2 * CHUNK))
    write(root / "empty", b"")
    with open(root / "sparse", "wb") as f:
        f.truncate(20 * CHUNK)
        f.seek(7 * CHUNK + 100)
        f.write(b"island")
    write(root / "setuid", b"#!/bin/sh\n", 0o4755)
    os.utime(root / "small.txt", ns=(1, 1_234_567_890_123_456_789))
    d = root / "dir" / "sub"
    d.mkdir(parents=True)
    write(d / "leaf", b"leaf")
    for name in WEIRD:
        write(r + b"/dir/" + name, b"content of " + name)
    os.symlink("small.txt", root / "link")
    os.symlink("dir", root / "dirlink")
    os.symlink("/etc/passwd", root / "abslink")
    os.link(root / "big.bin", root / "dir" / "hard-big")
    os.link(root / "mid.bin", root / "hard-mid")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null-dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(root / "small.txt", "user.comment", b"hello")
    os.setxattr(root / "dir", "user.binary", bytes(range(256)))
    many = root / "many"
    many.mkdir()
    for i in range(MANY):
        write(many / f"f{i:05d}", b"%d" % i)
    return root


def make_repo(tmp: Path, url: str | None = None) -> Repository:
    store = open_store(url or str(tmp / "repo"))
    if url is None:
        os.makedirs(tmp / "repo")
    return Repository.init(store, RepoConfig(chunk_size=CHUNK, inline_threshold=INLINE), str(tmp / "push-cache"))


def serve(repo: Repository, cache_dir: Path, auth: AuthConfig | None = None) -> tuple[Server, Backend]:
    served_repo = Repository.open(repo.store, str(cache_dir))  # the server's own cache: it fetches what it serves
    backend = Backend(served_repo, BlobCache(served_repo, str(cache_dir)), blob_workers=8)
    return Server(create_app(backend, auth)), backend


