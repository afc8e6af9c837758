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


def test_uncommitted_writes_and_commit_outcomes(mount: Mounter, tmp_path: Path) -> None:
    """The write layer's pending entries, bytes and oldest uncommitted write's age; commits, conflicts."""
    import json
    import time

    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init")
    src = tmp_path / "src"
    src.mkdir()
    (src / "shared").write_bytes(b"base\n")
    w.push(src, "demo")

    def rw(name: str):
        return mount(w.repo, "demo", extra=("--rw", "-o", f"state_dir={tmp_path / name}"))

    def layer(m) -> dict:
        return json.loads(Wsfs(w.repo, str(m.cache_dir), m.env)("stats", "--json", str(m.path)).out)

    def wait_for(m, pred, what: str) -> dict:
        deadline = time.monotonic() + 15
        while True:
            s = layer(m)
            if pred(s["layer"], s["commits"]):
                return s
            assert time.monotonic() < deadline, f"{what}: {s['layer']} {s['commits']}"
            time.sleep(0.2)

    a = rw("sa")
    s = wait_for(a, lambda lay, c: True, "stats")
    assert s["layer"]["pending_entries"] == 0 and s["layer"]["oldest_uncommitted_write_age_seconds"] == 0
    (a.path / "new").write_bytes(b"x" * 1000)
    t_write = time.monotonic()
    time.sleep(2.5)
    s = wait_for(a, lambda lay, c: lay["pending_entries"] >= 1, "the new file counted")
    lay = s["layer"]
    assert lay["pending_bytes"] >= 1000
    assert 2.0 <= lay["oldest_uncommitted_write_age_seconds"] <= time.monotonic() - t_write + 1.5, lay
    # The same numbers through the Prometheus exposition.
    prom = samples(Wsfs(w.repo, str(a.cache_dir), a.env)("stats", "--prometheus", str(a.path)).text)
    assert prom["wsfs_layer_pending_entries"][()] >= 1
    assert prom["wsfs_layer_oldest_uncommitted_write_age_seconds"][()] >= 2.0
    Wsfs(w.repo, str(a.cache_dir), a.env)("commit", str(a.path))
    s = wait_for(a, lambda lay, c: lay["pending_entries"] == 0, "nothing pending after the commit")
    assert s["layer"]["oldest_uncommitted_write_age_seconds"] == 0 and s["commits"]["count"] == 1
    # A second writer over version 1 changes the same file as the first: its commit is a conflict, counted.
    b = rw("sb")
    (a.path / "shared").write_bytes(b"a\n")
    (b.path / "shared").write_bytes(b"b\n")
    Wsfs(w.repo, str(a.cache_dir), a.env)("commit", str(a.path))
    r = Wsfs(w.repo, str(b.cache_dir), b.env)("commit", str(b.path), check=False)
    assert r.code == 5
    s = layer(b)
    assert s["commits"] == {**s["commits"], "count": 0, "failures": 1, "conflicts": 1}
    s = wait_for(b, lambda lay, c: lay["pending_entries"] >= 1, "the conflicting change kept")
    assert s["layer"]["oldest_uncommitted_write_age_seconds"] > 0
    # Pending changes left in a layer: the next mount of it counts their age from when they were made.
    b.unmount()
    time.sleep(1.0)
    b2 = rw("sb")
    s = wait_for(b2, lambda lay, c: lay["pending_entries"] >= 1, "the pending change found at mount")
    assert s["layer"]["oldest_uncommitted_write_age_seconds"] >= 1.0
