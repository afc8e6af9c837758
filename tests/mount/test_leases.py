"""Mounts hold a lease on their version in the store while mounted, so gc keeps it (docs/operations.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mountkit import Mounter

from support.cli import Wsfs


def leases(repo: Path) -> list[dict]:
    d = repo / "leases" / "demo"
    return [json.loads(p.read_bytes()) for p in sorted(d.iterdir())] if d.exists() else []


def test_a_mounted_version_is_leased_kept_by_gc_and_released_at_unmount(mount: Mounter, tmp_path: Path) -> None:
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"one\n")
    w.push(src, "demo")
    (src / "f").write_bytes(b"two\n")
    w.push(src, "demo")
    ro = mount(w.repo, "demo@1")
    rw = mount(w.repo, "demo@2", extra=("--rw", "-o", f"state_dir={tmp_path / 'state'}"))
    deadline = time.monotonic() + 15  # written just after the mount is up, not before (it costs a PUT)
    while len(held := leases(Path(w.repo))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted((x["version"], x["mode"]) for x in held) == [(1, "ro"), (2, "rw")]
    r = w("gc", "--keep-last", "0", "--grace", "0").text
    assert "2 kept (2 named by a live mount's lease), 0 dropped" in r, r
    assert (ro.path / "f").read_bytes() == b"one\n"
    ro.unmount()
    rw.unmount()
    assert leases(Path(w.repo)) == []
    r = w("gc", "--keep-last", "0", "--grace", "0").text
    assert "dropped demo@1" in r, r
