"""A mount's metrics: ``-o metrics=127.0.0.1:PORT`` and ``wsfs stats --prometheus``, read back with
prometheus_client's parser."""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

from mountkit import Mounter
from prometheus_client.parser import text_string_to_metric_families

from support.cli import Wsfs


def samples(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_endpoint_and_stats_prometheus(mount: Mounter, tmp_path: Path) -> None:
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(b"x" * i)
    w.push(src, "demo")
    port = free_port()
    m = mount(w.repo, "demo", extra=("--rw", "-o", f"state_dir={tmp_path / 'state'},metrics=127.0.0.1:{port}"))
    assert sorted(os.listdir(m.path)) == [f"f{i}" for i in range(5)]
    (m.path / "new").write_bytes(b"hello")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    s = samples(body)
    assert s["wsfs_info"] == {(("mode", "read-write"), ("version", "1"), ("workspace", "demo")): 1}
    assert s["wsfs_fuse_requests_total"][(("op", "write"),)] >= 1
    assert s["wsfs_fuse_request_duration_seconds_count"][(("op", "write"),)] >= 1
    assert s["wsfs_layer_disk_bytes"][()] > 0
    assert s["process_resident_memory_bytes"][()] > 10 << 20
    r = Wsfs(w.repo, str(m.cache_dir), m.env)("stats", "--prometheus", str(m.path))
    assert samples(r.text)["wsfs_fuse_requests_total"][(("op", "write"),)] >= 1
    m.unmount()
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
        raise AssertionError("the endpoint outlived the mount")
    except OSError:
        pass


def test_a_non_loopback_metrics_address_is_a_usage_error(tmp_path: Path) -> None:
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init")
    (tmp_path / "mnt").mkdir()
    r = w("mount", "demo", str(tmp_path / "mnt"), "-o", "metrics=0.0.0.0:9101", check=False)
    assert r.code == 2 and "loopback" in r.err and r.err.count("\n") == 1
