"""``wsfs mountd``: background mounts forked by a resident process, for callers in its own context only.

Each test starts its own mountd on a socket in its tmp_path (``WSFS_MOUNTD_SOCKET``), stops it by
its pid, and unmounts (and if needed kills, by pid) every daemon it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mountkit import PushedTree, fuse_unavailable, helper_pids, is_mounted, running, wait_gone

from support.cli import Wsfs
from support.mountd import started_mountd

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=fuse_unavailable() or "")

SRC = Path(__file__).resolve().parents[2] / "src"


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


class Daemons:
    """Background mounts a test made: unmounted, and their daemons killed by pid if still there, at the end."""

    def __init__(self, w: Wsfs) -> None:
        self.w = w
        self.mounts: list[Path] = []
        self.pids: list[int] = []

    def mount(self, *args: str | os.PathLike[str], at: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> tuple[int, str, int | None]:
        """``wsfs mount ARGS`` (the last being the mountpoint, *at* as an absolute path): (status, stderr, daemon pid)."""
        self.mounts.append(at)
        r = self.w.run("mount", *args, check=False, env=env, timeout=60, cwd=cwd)
        pid = None
        if r.code == 0:
            pid = int(self.w.run("stats", "--json", at, env=env).json()["pid"])
            self.pids.append(pid)
        return r.code, r.err, pid

    def close(self) -> None:
        for mnt in self.mounts:
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                if running(pid):
                    os.kill(pid, signal.SIGKILL)
        for mnt in self.mounts:
            assert not is_mounted(mnt)


@pytest.fixture
def daemons(rich: PushedTree, tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(Wsfs(str(rich.repo), str(tmp_path / "cache")))
    try:
        yield d
    finally:
        d.close()


def _mnt(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name / "mnt"
    p.mkdir(parents=True)
    return p


def test_a_background_mount_is_forked_by_mountd(daemons: Daemons, tmp_path: Path) -> None:
    with started_mountd(tmp_path / "md", daemons.w.env) as md:
        env = {"WSFS_MOUNTD_SOCKET": str(md.socket)}
        mnt = _mnt(tmp_path, "a")
        # The output is captured (pipes): had the daemon kept the caller's stdout or stderr, this would
        # wait for their end until the unmount and time out.
        code, err, pid = daemons.mount("rich", mnt, at=mnt, env=env)
        assert code == 0, err
        assert (mnt / "one").read_bytes() == b"1"
        assert _ppid(pid) == md.pid  # mountd's child, not a fork of the caller
        assert f"daemon {pid}" in md.log.read_text()
        assert os.stat(md.socket).st_mode & 0o777 == 0o600
        # A second mount through the same mountd, and the first one's daemon reaped after its unmount.
        mnt2 = _mnt(tmp_path, "b")
        code, err, pid2 = daemons.mount("rich@1", mnt2, at=mnt2, env=env)
        assert code == 0 and pid2 != pid and _ppid(pid2) == md.pid
        assert daemons.w.run("umount", mnt, env=env).code == 0
        assert not is_mounted(mnt)
        wait_gone([pid])  # not a zombie either: mountd collected it
        assert (mnt2 / "one").read_bytes() == b"1"
        assert daemons.w.run("umount", mnt2, env=env).code == 0
        wait_gone([pid2])
        assert md.proc.poll() is None  # mounts come and go, mountd stays
    assert md.proc.returncode == 0  # SIGTERM: a clean stop
    assert not md.socket.exists()


def test_mount_errors_through_mountd_are_the_callers(daemons: Daemons, tmp_path: Path) -> None:
    with started_mountd(tmp_path / "md", daemons.w.env) as md:
        env = {"WSFS_MOUNTD_SOCKET": str(md.socket)}
        mnt = _mnt(tmp_path, "e")
        code, err, _ = daemons.mount("rich@9", mnt, at=mnt, env=env)
        assert code == 3 and "no version 9" in err and err.count("\n") == 1
        code, err, _ = daemons.mount("rich", tmp_path / "absent" / "mnt", at=tmp_path / "absent" / "mnt", env=env)
        assert code == 2 and "not a directory" in err
        code, err, _ = daemons.mount("rich", mnt, at=mnt, env=env)
        assert code == 0, err
        code, err, _ = daemons.mount("rich", mnt, at=mnt, env=env)
        assert code == 2 and "already a mountpoint" in err
        # mount.wsfs keeps its statuses: a usage error is mount(8)'s 1, another failure 32.
        for spec, where, status in (("rich", tmp_path / "absent" / "mnt", 1), ("rich@9", _mnt(tmp_path, "h"), 32)):
            helper = subprocess.run([sys.executable, "-m", "wsfs.daemon.mount_helper", spec, str(where)],
                                    env={**daemons.w.env, **env}, capture_output=True, timeout=60)
            assert helper.returncode == status, helper.stderr
        assert "mount of rich@9" in md.log.read_text()  # these went through mountd
        assert md.proc.poll() is None


def test_mountd_mounts_with_the_callers_environment_and_directory(rich: PushedTree, daemons: Daemons,
                                                                 tmp_path: Path) -> None:
    with started_mountd(tmp_path / "md", {**daemons.w.env, "WSFS_CACHE_DIR": str(tmp_path / "mountd-cache")}) as md:
        work = tmp_path / "work"
        (work / "m" / "mnt").mkdir(parents=True)
        env = {"WSFS_MOUNTD_SOCKET": str(md.socket), "WSFS_CACHE_DIR": str(tmp_path / "caller-cache")}
        # A relative mountpoint and log path: the caller's working directory, not mountd's.
        code, err, pid = daemons.mount("--log", "mount.log", "rich", "m/mnt", at=work / "m" / "mnt", env=env, cwd=work)
        assert code == 0, err
        assert _ppid(pid) == md.pid
        assert (work / "m" / "mnt" / "one").read_bytes() == b"1"
        assert "mounted" in (work / "mount.log").read_text()
        assert (tmp_path / "caller-cache").is_dir() and not (tmp_path / "mountd-cache").exists()
        # What the daemon starts gets the caller's environment too (its own /proc/PID/environ is mountd's:
        # the environment it was exec'd with); its page-cache helper was exec'd by it.
        helpers = helper_pids(pid)
        assert helpers
        environ = Path(f"/proc/{helpers[0]}/environ").read_bytes().split(b"\0")
        assert b"WSFS_CACHE_DIR=" + str(tmp_path / "caller-cache").encode() in environ


def test_mountd_leaves_other_interpreters_and_code_to_the_caller(daemons: Daemons, tmp_path: Path) -> None:
    with started_mountd(tmp_path / "md", daemons.w.env) as md:
        mnt = _mnt(tmp_path, "p")
        extra = tmp_path / "elsewhere"
        extra.mkdir()
        path = os.pathsep.join(filter(None, [str(extra), os.environ.get("PYTHONPATH")]))
        code, err, pid = daemons.mount("rich", mnt, at=mnt, env={"WSFS_MOUNTD_SOCKET": str(md.socket), "PYTHONPATH": path})
        assert code == 0, err
        assert _ppid(pid) != md.pid  # mounted by the caller's own fork
        assert (mnt / "one").read_bytes() == b"1"
        assert "another interpreter, sys.path or wsfs" in md.log.read_text()


def test_mountd_refuses_callers_in_another_context() -> None:
    from wsfs.daemon import mountd

    identity = mountd._code_identity()
    request = {"code": identity}
    me = (os.getpid(), os.geteuid(), os.getegid())
    assert mountd._refusal(*me, request, identity) is None
    assert mountd._refusal(me[0], me[1] + 1, me[2], request, identity) == "another user or group"
    assert mountd._refusal(*me, {"code": {**identity, "wsfs": "/elsewhere"}}, identity) is not None
    others = {
        "another mnt namespace": ["unshare", "-m", "sleep", "30"],
        "another net namespace": ["unshare", "-n", "sleep", "30"],
        "other credentials, capabilities or restrictions": ["setpriv", "--bounding-set", "-sys_admin", "sleep", "30"],
    }
    for reason, cmd in others.items():
        p = subprocess.Popen(cmd)
        try:
            deadline = time.monotonic() + 10
            while Path(f"/proc/{p.pid}/exe").resolve().name != "sleep":  # past the exec into sleep
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert mountd._refusal(p.pid, me[1], me[2], request, identity) == reason
        finally:
            p.kill()
            p.wait()


def test_mountd_exits_when_its_code_changes_on_disk(rich: PushedTree, daemons: Daemons, tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(SRC / "wsfs", copy / "wsfs", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**daemons.w.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(copy), os.environ.get("PYTHONPATH")]))}
    with started_mountd(tmp_path / "md", env) as md:
        mnt = _mnt(tmp_path, "c")
        client = {"PYTHONPATH": env["PYTHONPATH"], "WSFS_MOUNTD_SOCKET": str(md.socket)}
        code, err, pid = daemons.mount("rich", mnt, at=mnt, env=client)
        assert code == 0 and _ppid(pid) == md.pid, err
        assert daemons.w.run("umount", mnt, env=client).code == 0
        (copy / "wsfs" / "errors.py").write_text((copy / "wsfs" / "errors.py").read_text() + "\n# changed\n")
        code, err, pid = daemons.mount("rich", mnt, at=mnt, env=client)
        assert code == 0, err  # mounted all the same, by the caller
        assert _ppid(pid) != md.pid
        assert md.proc.wait(timeout=10) == 75
        assert "changed on disk" in md.log.read_text()


def test_mountd_survives_bad_requests_and_a_second_mountd(daemons: Daemons, tmp_path: Path) -> None:
    with started_mountd(tmp_path / "md", daemons.w.env) as md:
        def ask(data: bytes, fds: list[int]) -> bytes:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(md.socket))
                if fds:
                    s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
                else:
                    s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                return s.recv(4096)

        body = json.dumps({"protocol": 1}).encode()
        r, w = os.pipe()
        try:
            assert ask(struct.pack("!I", 1 << 30), [w, w, w]).startswith(b"no bad request")
            assert ask(struct.pack("!I", len(body)) + body, [w]).startswith(b"no bad request")
            assert ask(struct.pack("!I", len(body)) + body, [w, w, w]).startswith(b"no bad request")
            assert ask(b"\0\0\0\x10{", [w, w, w]).startswith(b"no bad request")
            assert ask(b"", []).startswith(b"no bad request")  # connected, said nothing
            for junk in (b"not json", b"\xff\xfe", b"[" * 100_000, b'"a string"'):
                assert ask(struct.pack("!I", len(junk)) + junk, [w, w, w]).startswith(b"no bad request"), junk[:10]
            fg = json.dumps({"protocol": 1, "env": {}, "cwd": "/", "ref": "rich", "mountpoint": "/x", "umask": 0o22,
                             "options": {"foreground": True}, "settings": {}, "code": {}}).encode()
            assert ask(struct.pack("!I", len(fg)) + fg, [w, w, w]) == b"no bad request: a foreground mount\n"
        finally:
            os.close(r)
            os.close(w)
        # A second mountd on the same socket is refused; the first goes on.
        second = subprocess.run([sys.executable, "-m", "wsfs", "mountd", "--socket", str(md.socket)],
                                env=daemons.w.env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "another mountd is listening" in second.stderr
        mnt = _mnt(tmp_path, "s")
        code, err, pid = daemons.mount("rich", mnt, at=mnt, env={"WSFS_MOUNTD_SOCKET": str(md.socket)})
        assert code == 0 and _ppid(pid) == md.pid, err
    # A socket left behind by a mountd that is gone (SIGKILL) is taken over by the next one.
    with started_mountd(tmp_path / "md2", daemons.w.env) as md2:
        md2.proc.kill()
        md2.proc.wait()
        assert md2.socket.exists()
        with started_mountd(tmp_path / "md2", daemons.w.env) as md3:
            assert md3.proc.poll() is None


def test_a_read_write_mount_through_mountd_commits(rich: PushedTree, tmp_path: Path) -> None:
    # A repository of its own: this test publishes a version.
    repo = tmp_path / "repo"
    w = Wsfs(str(repo), str(tmp_path / "cache"))
    w("init")
    w.push(rich.src, "ws")
    d = Daemons(w)
    try:
        with started_mountd(tmp_path / "md", w.env) as md:
            env = {"WSFS_MOUNTD_SOCKET": str(md.socket)}
            mnt = _mnt(tmp_path, "rw")
            code, err, pid = d.mount("--rw", "-o", f"state_dir={tmp_path / 'state'}", "ws", mnt, at=mnt, env=env)
            assert code == 0, err
            assert _ppid(pid) == md.pid
            (mnt / "new.txt").write_bytes(b"written through a mountd daemon\n")
            (mnt / "one").unlink()
            r = w.run("commit", "--json", "-m", "via mountd", mnt, env=env)
            assert r.json()["version"] == 2
            assert w.run("umount", mnt, env=env).code == 0
            wait_gone([pid])
        assert w.run("cat", "ws@2", "new.txt").out == b"written through a mountd daemon\n"
        assert w.run("cat", "ws@2", "one", check=False).code == 3
        assert w.run("cat", "ws@1", "one").out == b"1"
    finally:
        d.close()
