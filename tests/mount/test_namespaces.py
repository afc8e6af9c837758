"""A container-style mount: the daemon runs in a private mount namespace (unshare), as in a container."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mountkit import is_mounted

from support.cli import Wsfs


@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare is not installed")
def test_mount_inside_a_private_mount_namespace(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("from the workspace\n")
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    w = Wsfs(str(repo), str(cache))
    w("init")
    w.push(src, "ctr")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # the "container": a new mount namespace whose mounts do not propagate to the host
    pidfile = tmp_path / "daemon.pid"
    script = (
        f"set -e; {sys.executable} -m wsfs mount ctr@1 {mnt}; "
        f"{sys.executable} -m wsfs stats --json {mnt} | {sys.executable} -c "
        f"'import json,sys; print(json.load(sys.stdin)[\"pid\"])' > {pidfile}; "
        f"cat {mnt}/hello.txt; grep -c ' {mnt} ' /proc/self/mounts; "
        f"{sys.executable} -m wsfs umount {mnt}"
    )
    env = {**os.environ, "WSFS_REPO": str(repo), "WSFS_CACHE_DIR": str(cache)}
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["from the workspace", "1"]
        assert not is_mounted(mnt)  # never visible on the host
    finally:
        # the daemon we started inside the namespace, by its pid, if it outlived a failure
        pid = int(pidfile.read_text()) if pidfile.exists() and pidfile.read_text().strip() else None
        if pid is not None and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, 9)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
