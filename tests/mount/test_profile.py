"""Access profiles: a mount records the large content it read; the next mount prefetches it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mountkit import CHUNK

from support.cli import Wsfs
from wsfs.repository import Repository, profile_key
from wsfs.store import open_store


def _wait_prefetched(m, deadline_s: float = 30) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        s = m.stats()
        if s["profile"]["prefetched"] is not None:
            return s
        time.sleep(0.05)
    raise AssertionError("the access-profile prefetch did not finish")


def test_profile_is_recorded_and_prefetched(tmp_path: Path, mount) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = {f"model{i}.bin": os.urandom(2 * CHUNK) for i in range(3)}
    for name, b in data.items():
        (src / name).write_bytes(b)
    (src / "small.txt").write_bytes(b"small")
    repo = tmp_path / "repo"
    w = Wsfs(str(repo), str(tmp_path / "push-cache"))
    w("init")
    w.push(src, "ws")

    # 1st mount: nothing to prefetch; read two of the three large files
    m1 = mount(repo, "ws@1", profile=True)
    assert _wait_prefetched(m1)["profile"]["prefetched"] == 0
    for name in ("model0.bin", "model2.bin"):
        assert (m1.path / name).read_bytes() == data[name]
    assert (m1.path / "small.txt").read_bytes() == b"small"  # a small file (its pack): not part of a profile
    assert m1.stats()["profile"]["recorded"] == 4
    m1.unmount()
    r = Repository.open(open_store(str(repo)), str(tmp_path / "check"))
    assert len(r.get_profile("ws", 1)) == 4
    assert r.store.exists(profile_key("ws", 1))

    # 2nd mount, cold cache: the four chunks arrive without anyone reading them ...
    m2 = mount(repo, "ws@1", profile=True)
    s = _wait_prefetched(m2)
    assert s["profile"]["prefetched"] == 4
    gets = s["store"]["requests"].get("get", 0)
    # ... so reading those files costs no GET, and model1.bin was not fetched
    for name in ("model0.bin", "model2.bin"):
        assert (m2.path / name).read_bytes() == data[name]
    s = m2.stats()
    assert s["store"]["requests"].get("get", 0) == gets
    assert s["cache"]["fetches"] == 4

    # a later version (model1 changed) uses the newest earlier profile, minus what it no longer references
    (src / "model0.bin").write_bytes(os.urandom(2 * CHUNK))
    w.push(src, "ws")
    m3 = mount(repo, "ws@2")  # noprofile: what the fixture passes by default
    assert "profile" not in m3.stats()
    m4 = mount(repo, "ws@2", profile=True)
    assert _wait_prefetched(m4)["profile"]["prefetched"] == 2  # model2.bin's chunks only
