"""Offline: with the store unreachable, what is cached keeps working and the rest fails fast with EIO."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from mountkit import CHUNK

from support.cli import Wsfs
from support.s3server import moto_server


def test_cached_version_mounts_and_reads_offline(tmp_path: Path, mount, aws_env) -> None:
    a, b = os.urandom(2 * CHUNK), os.urandom(2 * CHUNK)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(a)
    (src / "b.bin").write_bytes(b)
    (src / "small.txt").write_bytes(b"small")
    cache = tmp_path / "cache"
    with moto_server(tmp_path / "moto") as srv:  # a server of our own, to stop mid-test
        env = {**os.environ, **srv.env}
        url = f"s3://{srv.bucket}/offline"
        w = Wsfs(url, str(tmp_path / "push-cache"), env)
        w("init")
        w.push(src, "ws")
        m1 = mount(url, "ws", cache_dir=cache, env=env)
        assert (m1.path / "a.bin").read_bytes() == a
        assert (m1.path / "small.txt").read_bytes() == b"small"  # format 2: caches its pack
        m1.unmount()

    # the server is gone; a short retry budget keeps the failures quick
    offline = {**env, "WSFS_S3_MAX_ATTEMPTS": "2", "WSFS_S3_CONNECT_TIMEOUT": "1", "WSFS_S3_READ_TIMEOUT": "2"}
    t0 = time.monotonic()
    m2 = mount(url, "ws", cache_dir=cache, env=offline)  # "latest": falls back to the newest version known here
    for pattern in ("store unreachable", "access profile", "failed", r"answered EIO: S3 endpoint .* is unreachable"):
        m2.expect_log(pattern)
    assert time.monotonic() - t0 < 30
    assert (m2.path / "small.txt").read_bytes() == b"small"
    assert (m2.path / "a.bin").read_bytes() == a  # from the disk cache
    t0 = time.monotonic()
    with pytest.raises(OSError) as e, open(m2.path / "b.bin", "rb") as f:
        f.read(4096)
    assert e.value.errno == errno.EIO
    assert time.monotonic() - t0 < 30, "an uncached read must fail after bounded retries, not hang"
    assert (m2.path / "a.bin").read_bytes()[:10] == a[:10]  # and the mount still works
