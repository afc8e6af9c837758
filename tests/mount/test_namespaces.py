"""A container-style mount: the daemon runs in a private mount namespace (unshare), as in a container."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
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


@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare is not installed")
def test_host_mount_bind_mounted_into_containers_shares_one_daemon_and_cache(mount, tmp_path: Path) -> None:
    """Recipe 1 of docs/containers.md: one host mount (allow_other), bound read-only into two "containers"
    (private mount namespaces, processes of another uid); both read through the one daemon and its cache."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("from the workspace\n")
    (src / "big.bin").write_bytes(os.urandom(300_000))
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init")
    w.push(src, "ctr")
    m = mount(w.repo, "ctr@1", extra=("-o", "allow_other"))
    gets = []
    roots = [Path(tempfile.mkdtemp(prefix="wsfs-ctr-", dir="/tmp")) for _ in range(2)]  # traversable by uid 65534
    try:
        for n, root in enumerate(roots):
            os.chmod(root, 0o755)
            target = root / "workspace"
            target.mkdir()
            # The "container": a private mount namespace in which the host's mount is bound read-only at
            # /workspace, and a process of another user (65534) that reads it.
            script = (
                f"set -e; mount --bind {m.path} {target}; mount -o remount,bind,ro {target}; "
                f"setpriv --reuid 65534 --regid 65534 --clear-groups sh -c "
                f"'cat {target}/hello.txt; sha256sum < {target}/big.bin; touch {target}/x 2>/dev/null || echo read-only'"
            )
            r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            want = ["from the workspace", hashlib.sha256((src / "big.bin").read_bytes()).hexdigest() + "  -", "read-only"]
            assert n >= 0 and r.stdout.splitlines() == want, r.stderr
            assert not any(str(target) in line for line in Path("/proc/self/mounts").read_text().splitlines())
            gets.append(m.gets())
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    assert gets[1] == gets[0]  # the second container fetched nothing: one daemon, one cache, one page cache
