"""gc racing a read-write mount's commits and another writer's pushes (issue 14, "gc ... safe against
everything running at the same time"): afterwards every remaining version checks out as it was published,
fsck is clean, and the mount commits again."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from mountkit import Mounter

from support.cli import Wsfs
from support.trees import describe

CHUNK = 64 * 1024


def test_gc_during_commits_and_pushes_keeps_every_kept_version_whole(mount: Mounter, tmp_path: Path) -> None:
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init", "--chunk-size", str(CHUNK), "--inline-threshold", "4096")
    src = tmp_path / "src"
    (src / "pushed").mkdir(parents=True)
    (src / "base-big").write_bytes(os.urandom(3 * CHUNK))
    w.push(src, "demo")
    m = mount(w.repo, "demo", extra=("--rw", "-o", f"state_dir={tmp_path / 'state'}"))
    mc = Wsfs(w.repo, str(m.cache_dir), m.env)
    # gc in a loop, as aggressive as the contract allows: keep only the latest (and leased) version, and a
    # grace far longer than a commit here takes (commits and pushes must finish within it).
    gc_log = open(tmp_path / "gc.log", "wb")  # noqa: SIM115 - closed in finally
    gc_loop = subprocess.Popen(
        ["bash", "-c", "while :; do wsfs gc --keep-last 1 --grace 4s -q || exit 1; sleep 0.3; done"],
        env={**w.env, "WSFS_CACHE_DIR": str(tmp_path / "gccache")}, stdout=gc_log, stderr=subprocess.STDOUT)
    published: dict[int, dict] = {}  # version -> its tree as checked out right after it was published
    rng = random.Random(5)
    other = tmp_path / "other"

    def record(v: int) -> None:
        out = tmp_path / f"co{v}"
        w("checkout", f"demo@{v}", str(out))
        published[v] = describe(out)
        shutil.rmtree(out)
    try:
        for n in range(8):
            d = m.path / f"round{n}"
            d.mkdir()
            for i in range(5):
                (d / f"small{i}").write_bytes(os.urandom(rng.randrange(10, 3000)))
            (d / "big").write_bytes(os.urandom(2 * CHUNK + n))
            if n:
                os.unlink(m.path / f"round{n - 1}" / "big")  # its chunks become garbage once dropped versions go
            r = mc("commit", "--json", str(m.path), check=False)
            if r.code == 0:
                record(json.loads(r.out)["version"])
            else:
                assert r.code == 5, r.err  # only a conflict with the other writer may stop a commit
            # Another writer pushes a tree of its own (a different path) in between: our versions get dropped.
            shutil.rmtree(other, ignore_errors=True)
            w("checkout", "demo", str(other))
            (other / "pushed" / f"p{n}").write_bytes(os.urandom(rng.randrange(10, 2 * CHUNK)))
            w.push(other, "demo")
            record(json.loads(w("log", "--json", "demo").out)[0]["version"])
            time.sleep(rng.uniform(0, 1.5))
            assert gc_loop.poll() is None, (tmp_path / "gc.log").read_text()
    finally:
        gc_loop.kill()
        gc_loop.wait()
        gc_log.close()
    assert mc("commit", str(m.path), check=False).code in (0, 5)
    # Two more gc runs with no grace: whatever is unreferenced now goes; nothing a kept version needs.
    for _ in range(2):
        w("gc", "--keep-last", "1", "--grace", "0", "-q")
    assert " 0 problem(s)" in " " + w("fsck", "--full").text
    left = [r["version"] for r in json.loads(w("log", "--json", "demo").out)]
    base = json.loads(mc("status", "--json", str(m.path)).out)["base_version"]  # (re-based after idle commits)
    assert base in left and len(left) <= 3  # the base (leased by the mount), the latest, maybe the mount's last
    for v in left:
        out = tmp_path / f"left{v}"
        w("checkout", f"demo@{v}", str(out))
        assert v == 1 or describe(out) == published[v], v
    # The mount still reads every byte of its tree (the base chunks it leases) and commits on top.
    (m.path / "after").write_bytes(b"after gc\n")
    v = json.loads(mc("commit", "--ours", "--json", str(m.path)).out)["version"]
    out2 = tmp_path / "final"
    w("checkout", f"demo@{v}", str(out2))
    files = [p.relative_to(m.path) for p in m.path.rglob("*") if p.is_file()]
    assert len(files) >= 14 and all((out2 / f).read_bytes() == (m.path / f).read_bytes() for f in files)
