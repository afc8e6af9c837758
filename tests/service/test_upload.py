"""``POST /v1/workspaces/{ws}/versions``: a tar body becomes the next version, only with a write token;
hostile archives are refused whole, nothing written outside, nothing published."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.service import make_repo, request, serve, write
from support.trees import assert_same_tree
from wsfs.repository import Ref, Repository
from wsfs.service.auth import AuthConfig, new_token
from wsfs.store import open_store
from wsfs.versions.checkout import checkout
from wsfs.versions.push import push


def tar_of(src: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                ti = tf.gettarinfo(full, os.path.relpath(full, src))
                for x in os.listxattr(full, follow_symlinks=False):
                    ti.pax_headers["SCHILY.xattr." + x] = os.getxattr(full, x, follow_symlinks=False).decode(
                        "utf-8", "surrogateescape")
                if ti.isreg():
                    with open(full, "rb") as f:
                        tf.addfile(ti, f)
                else:
                    tf.addfile(ti)
    return buf.getvalue()


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[int, dict[str, str], dict[str, str], Repository]]:
    repo = make_repo(tmp_path)
    src = tmp_path / "first"
    src.mkdir()
    write(src / "old", b"old\n")
    push(repo, str(src), "ws")
    writer, reader = new_token(), new_token()
    auth = AuthConfig.parse({"token": [
        {"name": "ci-writer", "sha256": writer[1], "scopes": ["read", "write"], "workspaces": ["ws"]},
        {"name": "reader", "sha256": reader[1], "scopes": ["read"], "workspaces": ["*"]},
    ]})
    server, backend = serve(repo, tmp_path / "serve-cache", auth)
    try:
        yield (server.port, {"Authorization": f"Bearer {writer[0]}", "Content-Type": "application/x-tar"},
               {"Authorization": f"Bearer {reader[0]}", "Content-Type": "application/x-tar"}, repo)
    finally:
        server.stop()
        backend.close()


def test_a_tar_becomes_the_next_version_exactly(served, tmp_path):
    port, w, _, repo = served
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    write(src / "d" / "small", b"small\n", 0o640)
    write(src / "big", os.urandom(300_000), 0o755)
    open(os.fsencode(src) + b"/d/\xff name", "wb").close()
    os.symlink("/usr/bin/python3", src / "abs-link")  # any target: stored, never followed
    os.symlink("d/small", src / "rel-link")
    os.link(src / "d" / "small", src / "hard")
    os.setxattr(src / "big", "user.note", b"x\x00y")
    r = request(port, "POST", "/v1/workspaces/ws/versions?message=from%20ci", w, tar_of(src))
    assert r.status == 201, r.body
    body = r.json()
    assert body["version"] == 2 and body["message"] == "from ci" and "ci-writer" in body["author"]
    assert r.headers["location"] == "/v1/workspaces/ws/versions/2"
    fresh = Repository.open(open_store(repo.store.url), str(tmp_path / "fresh"))
    out = tmp_path / "out"
    with fresh.open_manifest(fresh.resolve(Ref.parse("ws@2"))) as m:
        checkout(fresh, m, str(out))
    assert_same_tree(src, out, mtimes=False)
    assert os.stat(out / "hard").st_ino == os.stat(out / "d" / "small").st_ino
    assert not list((tmp_path / "serve-cache").rglob("upload*"))  # temporary data removed


@pytest.mark.parametrize("who", ["none", "reader", "anonymous"])
def test_writing_needs_a_write_token(served, tmp_path, who):
    port, _, reader_headers, repo = served
    headers = {"none": {"Content-Type": "application/x-tar"}, "reader": reader_headers,
               "anonymous": {"Authorization": "Bearer not-a-token"}}[who]
    r = request(port, "POST", "/v1/workspaces/ws/versions", headers, tar_of(tmp_path))
    assert r.status == (403 if who == "reader" else 401)
    assert repo.versions("ws") == [1]


def test_without_a_token_config_nothing_can_be_written(tmp_path):
    repo = make_repo(tmp_path)
    src = tmp_path / "s"
    src.mkdir()
    push(repo, str(src), "ws")
    server, backend = serve(repo, tmp_path / "c")
    try:
        r = request(server.port, "POST", "/v1/workspaces/ws/versions", {"Content-Type": "application/x-tar"}, b"")
    finally:
        server.stop()
        backend.close()
    assert r.status == 403 and repo.versions("ws") == [1]


def _hostile(kind: str, outside: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, data: bytes = b"x", **kw: object) -> None:
            ti = tarfile.TarInfo(name)
            for k, v in kw.items():
                setattr(ti, k, v)
            ti.size = len(data) if ti.isreg() else 0
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)

        add("fine", b"ok")
        if kind == "dotdot":
            add(f"../../../../../../..{outside}/evil")
        elif kind == "through-symlink":
            add("a", type=tarfile.SYMTYPE, linkname=str(outside))
            add("a/evil")
        elif kind == "hardlink-out":
            add("h", type=tarfile.LNKTYPE, linkname=str(outside / "victim"))
        elif kind == "garbage":
            return b"this is not a tar archive at all" * 100
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "through-symlink", "hardlink-out", "garbage"])
def test_hostile_archives_are_refused_whole(served, tmp_path, kind):
    port, w, _, repo = served
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "victim", b"victim\n")
    r = request(port, "POST", "/v1/workspaces/ws/versions", w, _hostile(kind, outside))
    assert r.status == 400 and r.json()["error"] == "bad_request", r.body
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"victim\n"
    assert repo.versions("ws") == [1]


def test_a_body_over_the_limit_is_413_and_publishes_nothing(served, tmp_path):
    port, w, _, repo = served
    src = tmp_path / "big"
    src.mkdir()
    write(src / "f", os.urandom(64 * 1024))
    from support import service

    service_backend_limit = 32 * 1024
    # The fixture's backend: reach it through the app is not possible; set the limit on a new server instead.
    server, backend = service.serve(repo, tmp_path / "c2", AuthConfig.parse({"token": [
        {"name": "w", "sha256": __import__("hashlib").sha256(b"tok").hexdigest(), "scopes": ["read", "write"],
         "workspaces": ["*"]}]}))
    backend.max_upload = service_backend_limit
    try:
        r = request(server.port, "POST", "/v1/workspaces/ws/versions",
                    {"Authorization": "Bearer tok", "Content-Type": "application/x-tar"}, tar_of(src))
    finally:
        server.stop()
        backend.close()
    assert r.status == 413 and repo.versions("ws") == [1]


def test_a_sparse_member_is_refused(served, tmp_path):
    port, w, _, repo = served
    sparse = tmp_path / "sp"
    sparse.mkdir()
    with open(sparse / "f", "wb") as f:
        f.truncate(1 << 30)
        f.write(b"x")
    tar = tmp_path / "s.tar"
    import subprocess

    subprocess.run(["tar", "--sparse", "-cf", str(tar), "-C", str(sparse), "f"], check=True)
    r = request(port, "POST", "/v1/workspaces/ws/versions", w, tar.read_bytes())
    assert r.status == 400 and b"sparse" in r.body and repo.versions("ws") == [1]
