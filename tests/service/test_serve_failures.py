"""Bad bytes in the store, tokens, the listen policy and the ``wsfs serve`` command.

A corrupted chunk or pack must never reach a client: before the status
line it is a 502 with a JSON body, after it the response is cut short (the
client sees fewer bytes than ``Content-Length``), and what did arrive is a
prefix of the real content.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from support.service import CHUNK, Served, file_url, make_repo, request, serve, write
from wsfs.errors import UsageError
from wsfs.repository import blob_key, segment_key
from wsfs.service.auth import AuthConfig, new_token, token_hash
from wsfs.service.server import check_exposure, parse_listen
from wsfs.versions.push import push


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture
def corrupt(tmp_path: Path):
    """A repository whose ``big`` has a bad second chunk, ``first`` a bad first chunk and ``small`` a bad pack."""
    repo = make_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(3 * CHUNK + 5)
    write(src / "big", big)
    write(src / "first", os.urandom(2 * CHUNK))
    write(src / "small", b"small file " * 10)
    write(src / "good", os.urandom(CHUNK + 7))
    record, _ = push(repo, str(src), "ws")
    root = str(tmp_path / "repo")
    with repo.open_manifest(record) as m:
        c = m.chunks(m.resolve(b"big").ino)[1]
        _flip(os.path.join(root, blob_key(c.cid)), 1000)
        c = m.chunks(m.resolve(b"first").ino)[0]
        _flip(os.path.join(root, blob_key(c.cid)), 10)
        pack, _ = m.pack_ref(m.resolve(b"small"))
        assert pack.place is not None and pack.place.segment is not None
        _flip(os.path.join(root, segment_key(pack.place.segment)), pack.place.offset + pack.place.length // 2)
    server, backend = serve(repo, tmp_path / "serve-cache")
    try:
        yield Served(server.port, repo, backend, {1: src}), big
    finally:
        server.stop()
        backend.close()


def test_corrupt_chunk_cuts_the_stream(corrupt) -> None:
    served, big = corrupt
    r = served.get(file_url("ws", 1, b"big"))
    # The first chunk verified and went out; the second did not: the response stops short.
    assert r.status == 200 and r.incomplete
    assert len(r.body) < len(big) and big.startswith(r.body)
    # A range inside the good chunk is served; one touching the bad chunk is not.
    r = served.get(file_url("ws", 1, b"big"), {"Range": "bytes=10-99"})
    assert r.status == 206 and r.body == big[10:100]
    r = served.get(file_url("ws", 1, b"big"), {"Range": f"bytes={CHUNK}-{CHUNK + 9}"})
    assert r.status == 502 and r.json()["error"] == "integrity_error"


def test_corrupt_first_chunk_and_pack_are_502(corrupt) -> None:
    served, _ = corrupt
    for name in (b"first", b"small"):
        r = served.get(file_url("ws", 1, name))
        assert r.status == 502, (name, r.status)
        assert r.json()["error"] == "integrity_error"
    assert served.get(file_url("ws", 1, b"good")).status == 200  # the rest of the version is fine


def test_corrupt_archive_is_cut(corrupt) -> None:
    served, big = corrupt
    r = served.get("/v1/workspaces/ws/versions/1/archive")
    assert r.status == 502 or r.incomplete
    if r.status == 200:
        # What arrived has no member with wrong bytes: a partial tar, every complete file right.
        with pytest.raises(tarfile.TarError):
            with tarfile.open(fileobj=io.BytesIO(r.body), mode="r|") as tf:
                for ti in tf:
                    if ti.isreg():
                        data = tf.extractfile(ti).read()  # type: ignore[union-attr]
                        assert data == (served.sources[1] / ti.name).read_bytes()


# -- tokens ----------------------------------------------------------------------------


@pytest.fixture
def authed(tmp_path: Path):
    repo = make_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    write(src / "f", b"secret bytes")
    push(repo, str(src), "team-a")
    push(repo, str(src), "team-b")
    reader, writer = new_token(), new_token()
    auth = AuthConfig.parse({"token": [
        {"name": "a-reader", "sha256": reader[1], "scopes": ["read"], "workspaces": ["team-a"]},
        {"name": "writer-only", "sha256": writer[1], "scopes": ["write"], "workspaces": ["*"]},
    ]})
    server, backend = serve(repo, tmp_path / "serve-cache", auth)
    try:
        yield server.port, reader[0], writer[0]
    finally:
        server.stop()
        backend.close()


def test_tokens(authed, caplog: pytest.LogCaptureFixture) -> None:
    port, reader, writer = authed
    url = file_url("team-a", 1, b"f")
    r = request(port, "GET", url)
    assert r.status == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"] == 'Bearer realm="wsfs"'
    r = request(port, "GET", url, {"Authorization": "Bearer wrong"})
    assert r.status == 401 and r.headers["www-authenticate"] == 'Bearer realm="wsfs", error="invalid_token"'
    r = request(port, "GET", url, {"Authorization": "Basic Zm9vOmJhcg=="})
    assert r.status == 401
    ok = {"Authorization": f"Bearer {reader}"}
    r = request(port, "GET", url, ok)
    assert r.status == 200 and r.body == b"secret bytes"
    # a known token without the workspace (or the scope): 403, whether the workspace exists or not
    assert request(port, "GET", file_url("team-b", 1, b"f"), ok).status == 403
    assert request(port, "GET", "/v1/workspaces/nope/versions", ok).status == 403
    assert request(port, "GET", url, {"Authorization": f"Bearer {writer}"}).status == 403
    # the listing shows what the token may read
    assert request(port, "GET", "/v1/workspaces", ok).json() == {"workspaces": [{"name": "team-a"}]}
    assert request(port, "GET", "/openapi.json").status == 200  # the API's description is public
    assert request(port, "GET", "/metrics").status == 401
    assert request(port, "GET", "/metrics", ok).status == 200
    assert reader not in caplog.text and writer not in caplog.text


def test_auth_config_errors(tmp_path: Path) -> None:
    digest = token_hash("x" * 40)
    good = {"name": "n", "sha256": digest, "scopes": ["read"], "workspaces": ["*"]}
    AuthConfig.parse({"token": [good]})
    for bad in (
        {},
        {"token": []},
        {"token": [good | {"sha256": "x" * 40}]},  # the token itself, not its hash
        {"token": [good | {"scopes": ["admin"]}]},
        {"token": [good | {"workspaces": []}]},
        {"token": [good, good]},  # duplicate name
        {"token": [good], "listen": "0.0.0.0:80"},
        {"token": [good | {"extra": 1}]},
    ):
        with pytest.raises(UsageError):
            AuthConfig.parse(bad)
    p = tmp_path / "bad.toml"
    p.write_text("[[token]\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        AuthConfig.load(str(p))


# -- listen policy and the command ---------------------------------------------------------


def test_listen_policy() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen("localhost:1") == ("127.0.0.1", 1)
    for bad in ("8080", "host:80", "127.0.0.1:x", "127.0.0.1:70000"):
        with pytest.raises(UsageError):
            parse_listen(bad)
    check_exposure("127.0.0.1", False)
    check_exposure("::1", False)
    check_exposure("0.0.0.0", True)
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        with pytest.raises(UsageError, match="refusing"):
            check_exposure(host, False)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "WSFS_REPO": str(tmp_path / "repo"), "WSFS_CACHE_DIR": str(tmp_path / "cache")}


def test_cli_refuses_exposure_without_tokens(tmp_path: Path) -> None:
    make_repo(tmp_path)
    p = subprocess.run([sys.executable, "-m", "wsfs", "serve", "--listen", "0.0.0.0:0"], env=_env(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "refusing to listen on 0.0.0.0" in p.stderr


def test_cli_serves_and_stops(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    write(src / "f", b"hi")
    push(repo, str(src), "demo")
    token, digest = new_token()
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'[[token]]\nname = "t"\nsha256 = "{digest}"\nworkspaces = ["*"]\n')
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # as systemd's $NOTIFY_SOCKET (Type=notify)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    proc = subprocess.Popen([sys.executable, "-m", "wsfs", "serve", "--listen", "127.0.0.1:0", "--config", str(cfg)],
                            env={**_env(tmp_path), "NOTIFY_SOCKET": str(tmp_path / "notify")},
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "serving" in line and "(1 tokens)" in line, line
        assert notify.recv(256) == b"READY=1"
        port = int(re.search(r"http://\S+:(\d+)", line)[1])
        r = request(port, "GET", file_url("demo", 1, b"f"), {"Authorization": f"Bearer {token}"})
        assert r.status == 200 and r.body == b"hi"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        rest = proc.stderr.read()
        assert token not in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        notify.close()


def test_service_never_imports_the_daemon_or_the_write_layer() -> None:
    code = (
        "import sys, wsfs.service.app, wsfs.service.server, wsfs.service.backend, wsfs.versions.diff\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('wsfs.daemon', 'wsfs.layer', 'pyfuse3', 'trio')))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
