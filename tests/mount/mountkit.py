"""Helpers for real FUSE mounts in tests (STYLE.md section 6.4); fixtures are in conftest.py.

``mount(ref, ...)`` starts ``python -m wsfs mount -f`` as a subprocess in its
own session, with ``NOTIFY_SOCKET`` pointing at a datagram socket we bound,
waits for ``READY=1`` (30 s, failing at once with the log tail if the daemon
exits), and returns a :class:`Mount`.  Teardown, always: ``fusermount3 -u``,
wait for the daemon, then if needed ``fusermount3 -u -z`` and SIGTERM/SIGKILL
of that pid only; then the mountpoint must no longer be mounted.  On a clean
stop the daemon must exit 0 and its log must hold no ERROR/WARNING/traceback
the test did not declare with ``Mount.expect_log``.

Mountpoints are always directories named ``mnt``; the test never touches a
mount from a thread of its own process other than through plain syscalls.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.cli import Wsfs
from support.ready import wait_for_ready
from wsfs.daemon.mount_helper import mounted_device

READY_DEADLINE = 30.0
KIB, MIB = 1024, 1024 * 1024
CHUNK = 4 * MIB
INLINE = 128 * KIB


def fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse in this environment"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt install fuse3)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible to this user"
    if os.geteuid() != 0:
        return "the mount tests chown and mknod source files: they need root"
    return None


# -- helpers ----------------------------------------------------------------------


def mounted_paths() -> set[str]:
    """Mountpoints, dead FUSE mounts included (``os.path.ismount`` says False for those)."""
    out = set()
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            out.add(os.fsdecode(fields[1].decode("unicode_escape").encode("latin-1")))
    return out


def is_mounted(path: Path | str) -> bool:
    return os.path.abspath(path) in mounted_paths()


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


def helper_pids(daemon: int) -> list[int]:
    """The daemon's page-cache preload helpers (children running ``wsfs.daemon.preload``)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == daemon and b"wsfs.daemon.preload" in cmd:
                out.append(int(d))
    return out


def running(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], seconds: float = 10) -> None:
    """Wait until none of *pids* runs; fail after *seconds*."""
    deadline = time.monotonic() + seconds
    while any(running(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if running(p)]}"
        time.sleep(0.02)


@dataclass
class Mount:
    """A running ``wsfs mount -f`` daemon and its mountpoint."""

    path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    out_path: Path
    cache_dir: Path
    env: dict[str, str]
    expected_log: list[str] = field(default_factory=list)
    expected_exit: int = 0  # what a strict stop requires of the daemon's exit status
    device: tuple[int, int] | None = None  # the mount's (major, minor): names its FUSE connection

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        """``wsfs stats --json`` of this mount (through the control socket), once the version's index is built.

        A cold mount of a format 2 version answers from the index's first rows while it builds the rest
        (``daemon/building.py``); counts taken then would include the rest of the build's GETs later.
        """
        deadline = time.monotonic() + 60
        while True:
            p = subprocess.run(
                [sys.executable, "-m", "wsfs", "stats", "--json", str(self.path)],
                env=self.env, capture_output=True, timeout=30,
            )
            assert p.returncode == 0, p.stderr.decode(errors="replace")
            out = dict(json.loads(p.stdout))
            if out.get("index") != "building" or time.monotonic() > deadline:
                return out
            time.sleep(0.05)

    def gets(self) -> int:
        """Store GETs so far (manifest and record included)."""
        return int(self.stats()["store"]["requests"].get("get", 0))

    def unmount(self) -> None:
        """Unmount now, strictly (clean exit, no unexpected log lines); teardown then has nothing to do."""
        stop(self, strict=True)

    def expect_log(self, pattern: str) -> None:
        """Declare an ERROR/WARNING line matching *pattern* as expected."""
        self.expected_log.append(pattern)

    def log_problems(self) -> list[str]:
        text = self.log_path.read_text(errors="replace") + self.out_path.read_text(errors="replace")
        bad = []
        for line in text.splitlines():
            if re.search(r" (ERROR|WARNING|CRITICAL) |Traceback", line) and not any(
                re.search(p, line) for p in self.expected_log
            ):
                bad.append(line)
        return bad


def _wait_ready(notify: socket.socket, proc: subprocess.Popen[bytes], log_path: Path, out_path: Path) -> None:
    why = wait_for_ready(notify, proc, READY_DEADLINE)
    if why == "timeout":
        pytest.fail(f"no READY=1 from wsfs mount within {READY_DEADLINE}s\n--- log ---\n{_tail(log_path)}")
    if why is not None:
        pytest.fail(
            f"wsfs mount {why} before READY=1\n"
            f"--- log ---\n{_tail(log_path)}\n--- stderr ---\n{_tail(out_path)}"
        )


def abort_connection(device: tuple[int, int] | None) -> bool:
    """Abort the FUSE connection of the mount that had *device* (fusectl), as the kernel does when
    every /dev/fuse descriptor closes: every request waiting on it ends with ECONNABORTED.

    The last resort of a teardown whose daemon does not exit even after SIGKILL (a thread
    stuck in a request to its own mount); returns whether it did.
    """
    if device is None:
        return False
    conns = Path("/sys/fs/fuse/connections")
    if not any(conns.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(conns)], capture_output=True, timeout=30)
    abort = conns / str((device[0] << 20) | device[1]) / "abort"  # the kernel's dev_t, not glibc's
    try:
        abort.write_text("1\n")
    except OSError:
        return False
    return True


def _reap(m: Mount) -> None:
    """SIGTERM, then SIGKILL *m*'s daemon; if even that leaves it running, abort its connection."""
    m.proc.terminate()
    try:
        m.proc.wait(timeout=5)
        return
    except subprocess.TimeoutExpired:
        m.proc.kill()
    try:
        m.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        aborted = abort_connection(m.device)
        m.proc.wait(timeout=30)
        pytest.fail(f"daemon {m.pid} survived SIGKILL until its FUSE connection was aborted ({aborted})")


def stop(m: Mount, *, strict: bool) -> None:
    """Unmount and reap *m*; lazily and by force if needed.  Asserts nothing is left mounted."""
    try:
        if is_mounted(m.path):
            subprocess.run(["fusermount3", "-u", str(m.path)], capture_output=True, timeout=30)
        try:
            code: int | None = m.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        if is_mounted(m.path):
            subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True, timeout=30)
        if m.proc.poll() is None:
            m.proc.send_signal(signal.SIGUSR1)  # stacks into the log before we kill it
            time.sleep(0.2)
            _reap(m)
        if strict:
            assert code == m.expected_exit, f"daemon exited with {code}\n{_tail(m.log_path)}\n{_tail(m.out_path)}"
            problems = m.log_problems()
            assert not problems, "unexpected daemon log lines:\n" + "\n".join(problems[:20])
    finally:
        assert not is_mounted(m.path), f"{m.path} is still mounted after teardown"


class Mounter:
    """``mount(ref, ...)``: start a daemon; all are stopped at teardown."""

    def __init__(self, tmp_path: Path, notify_dir: str) -> None:
        self.tmp_path = tmp_path
        self.notify_dir = notify_dir
        self.mounts: list[Mount] = []

    def __call__(
        self,
        repo: str | Path,
        ref: str,
        *,
        cache_dir: Path | None = None,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        profile: bool = False,
    ) -> Mount:
        """Start ``wsfs mount -f`` and wait for READY.

        Access profiles are off unless *profile*: a profile left by an earlier
        test's mount of the same repository would prefetch chunks and change
        the request counts that most tests assert.
        """
        n = len(self.mounts)
        base = self.tmp_path / f"m{n}"
        mnt = base / "mnt"
        mnt.mkdir(parents=True)
        cache = cache_dir or base / "cache"
        env = dict(os.environ if env is None else env)
        env.update(WSFS_REPO=str(repo), WSFS_CACHE_DIR=str(cache))
        notify_path = os.path.join(self.notify_dir, f"n{n}")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        log_path, out_path = base / "daemon.log", base / "daemon.out"
        cmd = [sys.executable, "-X", "faulthandler", "-m", "wsfs", "mount", "-f", "--log", str(log_path),
               *(() if profile else ("-o", "noprofile")), *extra, ref, str(mnt)]
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                cmd, env={**env, "NOTIFY_SOCKET": notify_path}, stdin=subprocess.DEVNULL,
                stdout=out, stderr=out, start_new_session=True,
            )
        m = Mount(mnt, proc, log_path, out_path, cache, env)
        self.mounts.append(m)
        try:
            _wait_ready(notify, proc, log_path, out_path)
        finally:
            notify.close()
        assert os.path.ismount(mnt)
        m.device = mounted_device(str(mnt))
        return m


def version_costs(url: str | Path, cache: Path, ref: str) -> tuple[int, int]:
    """``(metadata objects, packs)`` of format 2 version *ref*: the GETs a cold mount makes to open it (besides
    the descriptor and the record: its pieces and, if it has packs, its pack map), and the packs that hold its
    small files.  Read in-process, through a cache directory of its own (*cache*), not the mount's."""
    from wsfs.format.tree import decode_top
    from wsfs.repository import Ref, Repository

    r = Repository.open_url(str(url), str(cache))
    record = r.resolve(Ref.parse(ref))
    ranges, packs = r.version_refs(record)
    top = decode_top(r.get_piece(bytes.fromhex(record.manifest), record.manifest_size))
    return 1 + len(top.ranges) + len(top.packs) + len(ranges) + (1 if packs else 0), len(packs)


def pack_ids(url: str | Path, cache: Path, ref: str, *dirs: bytes) -> set[bytes]:
    """The ids of format 2 version *ref*'s packs; with *dirs*, of those holding the small files directly in them."""
    from wsfs.repository import Ref, Repository

    r = Repository.open_url(str(url), str(cache))
    record = r.resolve(Ref.parse(ref))
    if not dirs:
        return {p.id for p in r.version_refs(record)[1]}
    with r.open_manifest(record) as man:
        return {c.cid for d in dirs for _, _, node in man.readdir(man.resolve(d).ino)
                if node.packed and (c := man.pack_ref(node)[0]).cid is not None}


def wait_for_blobs(cache_dir: Path, ids: set[bytes], timeout: float = 20.0) -> None:
    """Wait until the blob cache in *cache_dir* holds every one of *ids* (the preload helper fetches packs)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [i for i in ids if not (cache_dir / "blobs" / i.hex()[:2] / i.hex()).exists()]
        if not missing:
            return
        assert time.monotonic() < deadline, f"{len(missing)} of {len(ids)} blobs never arrived in {cache_dir}"
        time.sleep(0.05)


# -- the source tree -----------------------------------------------------------------

NS = 1_000_000_000


def _write(path: Path | bytes, data: bytes, mode: int = 0o644, mtime_ns: int | None = None) -> None:
    p = os.fsencode(path)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)
    if mtime_ns is not None:
        os.utime(p, ns=(mtime_ns, mtime_ns))


def make_tree(root: Path) -> Path:
    """Every kind of entry the mount must show as pushed (see the module docstring of test_readonly)."""
    root.mkdir(parents=True)
    r = os.fsencode(root)
    rnd = os.urandom
    _write(root / "empty", b"")
    _write(root / "one", b"1")
    _write(root / "f100k", rnd(100 * KIB))
    _write(root / "exact128k", rnd(INLINE))
    _write(root / "over128k", rnd(INLINE + 1))
    _write(root / "big9m", rnd(9 * MIB), mtime_ns=1_600_000_000 * NS + 123_456_789)
    _write(root / "text.txt", b"hello world\n" * 1000, 0o600, mtime_ns=1_234_567_890_123_456_789)
    d = root / "a" / "b" / "c"
    d.mkdir(parents=True)
    _write(d / "leaf", b"leaf\n")
    for i in range(40):
        _write(root / "a" / f"small{i:02d}", f"small file {i}\n".encode() * (i + 1))
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    _write(root / "setuid", b"#!/bin/sh\n", 0o4755)
    _write(root / "setgid", b"#!/bin/sh\n", 0o2750)
    _write(root / "noaccess", b"secret", 0o000)
    os.symlink("text.txt", root / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("a/b", root / "dir-link")
    os.link(root / "text.txt", root / "hardlink-to-text")
    os.link(root / "text.txt", root / "a" / "another-hardlink")
    os.link(root / "over128k", root / "a" / "big-hardlink")
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "nulldev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    for name in (b"caf\xe9-latin1", b"new\nline", b"\xff\xfe-not-utf8", "ünïcode".encode()):
        _write(r + b"/a/" + name, name)
    _write(root / "xattrs", b"x")
    os.setxattr(root / "xattrs", "user.comment", b"hello")
    os.setxattr(root / "xattrs", "user.binary", bytes(range(256)))
    os.setxattr(root / "a", "user.on-dir", b"dir value")
    os.chown(root / "one", 1234, 5678)
    os.lchown(root / "rel-link", 4321, 8765)
    os.chown(root / "a" / "b", 1000, 1000)
    os.utime(root / "rel-link", ns=(111, 222_333_444_555_666_777), follow_symlinks=False)
    # Directory mtimes last, deepest first (creating entries above changed them).
    for i, p in enumerate([d, d.parent, root / "a", root / "sticky", root]):
        os.utime(p, ns=(NS, 1_500_000_000 * NS + i * 1001))
    return root


@dataclass
class PushedTree:
    """A source tree and the local repository it was pushed to."""

    src: Path
    repo: Path
    wsfs: Wsfs
