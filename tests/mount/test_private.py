"""Local attacks on what wsfs keeps on a host (docs/daemon.md, "Cache": modes, verification, fsck).

Each test performs the attack: a second uid opening the cache, a push killed
with its spill file (small files' bytes) on disk, a ``-vv`` run with a session token, a
password in ``endpoint_url=`` read from ``/proc/*/cmdline``, a flipped byte
in a cached chunk with its mtime restored, and ``wsfs fsck --cache`` finding
it.  They need root (another uid, mounts).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest
from mountkit import CHUNK, is_mounted

from support.cli import Wsfs
from wsfs.daemon.mount import default_log_path
from wsfs.format.blobs import content_id

NOBODY = 65534
SECRET = "SeCrEt-7f3a91"
TOKEN = "TOKEN-MARKER-5b8e2d"


# -- helpers -----------------------------------------------------------------------------


def _everything(top: Path) -> list[tuple[str, bool]]:
    """Every path under *top* (itself included), with whether it is a directory."""
    out = [(str(top), True)]
    for d, dirs, files in os.walk(top):
        out += [(os.path.join(d, n), True) for n in dirs] + [(os.path.join(d, n), False) for n in files]
    return out


def _opened_by_nobody(paths: list[tuple[str, bool]]) -> list[str]:
    """What uid/gid 65534 manages to list (directories) or open for reading (files), or fails on otherwise than EACCES."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, try everything, report, exit without cleanup
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            got = []
            for path, is_dir in paths:
                try:
                    if is_dir:
                        os.listdir(path)
                    else:
                        os.close(os.open(path, os.O_RDONLY))
                    got.append(f"opened {path}")
                except PermissionError:
                    pass
                except OSError as e:
                    got.append(f"{e.strerror} on {path}")
            os.write(w, json.dumps(got).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0
    return list(json.loads(data))


def _wide(paths: list[tuple[str, bool]]) -> list[str]:
    """Paths with any group or other permission bit."""
    return [f"{oct(os.lstat(p).st_mode & 0o777)} {p}" for p, _ in paths if os.lstat(p).st_mode & 0o077]


def _daemon_pid(w: Wsfs, mnt: Path) -> int:
    return int(json.loads(w("stats", "--json", mnt).out)["pid"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def _unmount(mnt: Path, pids: set[int]) -> None:
    """Unmount *mnt*, wait for *pids* (its daemon) to exit; lazily and by force if needed, those pids only."""
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=30)
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)
    for p in pids:
        if _alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    assert not is_mounted(mnt)


def _flip_byte_keep_mtime(path: str, offset: int) -> None:
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns


def _blob_path(cache: Path, data: bytes) -> str:
    h = content_id(data).hex()
    return str(cache / "blobs" / h[:2] / h)


def _drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# -- A: modes --------------------------------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="wsfs-private-", dir="/tmp"))
    d.chmod(0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_second_user_cannot_read_the_cache_tmp_or_logs(tmp_path: Path, open_dir: Path) -> None:
    """A 0600 file pushed and read through a mount: nobody else can open anything wsfs keeps, while it
    runs and after; a cache left with wide modes by an older wsfs is narrowed."""
    src = tmp_path / "src"
    src.mkdir()
    secret = os.urandom(CHUNK + 12345)
    (src / "private.bin").write_bytes(secret)
    (src / "small.txt").write_bytes(b"inline secret\n")
    for p in (src / "private.bin", src / "small.txt"):
        p.chmod(0o600)
    cache = open_dir / "cache"
    for d in (cache, cache / "blobs", cache / "logs", cache / "tmp"):  # as an older wsfs left them
        d.mkdir(mode=0o755)
        d.chmod(0o755)
    w = Wsfs(str(tmp_path / "repo"), str(cache))
    w("init")
    w.push(src, "ws")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    pids: set[int] = set()
    try:
        w("mount", "ws@1", mnt)  # background: logs to <cache>/logs
        pids.add(_daemon_pid(w, mnt))
        assert (mnt / "private.bin").read_bytes() == secret
        assert (mnt / "small.txt").read_bytes() == b"inline secret\n"
        w("stats", mnt)  # written behind: wait for the content files (stats drains the writes)
        paths = _everything(cache)
        names = {os.path.basename(p) for p, _ in paths}
        assert {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm", content_id(secret[:CHUNK]).hex()} <= names
        assert any(p.endswith(".log") for p, _ in paths)
        # format 2: the version's local index, its metadata pieces, and the pack holding small.txt
        assert any(p.endswith(".index") and "manifests" in p for p, _ in paths)
        assert any(not d and f"{os.sep}pieces{os.sep}" in p for p, d in paths)
        assert _blob_path(cache, b"inline secret\n") in {p for p, _ in paths}  # the pack: small.txt alone
        assert _opened_by_nobody(paths) == []
        assert _wide(paths) == []
    finally:
        _unmount(mnt, pids)
    paths = _everything(cache)
    assert _opened_by_nobody(paths) == []
    assert _wide(paths) == []


def test_a_killed_push_leaves_a_private_spill_file_that_the_next_command_removes(tmp_path: Path,
                                                                                open_dir: Path) -> None:
    src = tmp_path / "src"
    for i in range(6000):
        d = src / f"d{i // 100}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(f"small file {i}\n".encode() * 20)
    cache = open_dir / "cache"
    w = Wsfs(str(tmp_path / "repo"), str(cache))
    w("init")
    proc = subprocess.Popen([sys.executable, "-m", "wsfs", "push", "-q", str(src), "ws"], env=w.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    leftover = None
    try:
        deadline = time.monotonic() + 60
        while leftover is None and proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                found = [n for n in os.listdir(cache / "tmp") if n.startswith("spill")]
                if found:
                    leftover = cache / "tmp" / found[0]
                    proc.send_signal(signal.SIGKILL)
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert leftover is not None, "the push ended before its spill file (small files' bytes) was seen"
    assert proc.returncode == -signal.SIGKILL
    assert leftover.exists()
    assert _opened_by_nobody(_everything(cache)) == []
    assert _wide(_everything(cache)) == []
    assert os.stat(leftover).st_mode & 0o777 == 0o600
    assert os.stat(cache / "tmp").st_mode & 0o777 == 0o700
    # A live push's spill file is kept: another pid's file is removed only if that pid is dead.
    live = cache / "tmp" / f"spill-{os.getpid()}-abc123"
    live.write_bytes(b"")
    w("workspaces")
    assert not leftover.exists()
    assert live.exists()
    # fsck --cache sweeps tmp/ too
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    leftover = cache / "tmp" / f"spill-{dead}-def456"
    leftover.write_bytes(b"")
    r = w("fsck", "--cache")
    assert "1 leftover temporary files removed" in r.text and not leftover.exists() and live.exists()


# -- A: secrets --------------------------------------------------------------------------


@pytest.mark.s3
def test_a_session_token_and_signatures_never_reach_a_vv_log(s3_server, tmp_path: Path) -> None:
    env = {**os.environ, **s3_server.env, "AWS_SESSION_TOKEN": TOKEN}
    url = f"s3://{s3_server.bucket}/wsfs-test/redact-{os.getpid()}-{time.monotonic_ns()}"
    w = Wsfs(url, str(tmp_path / "cache"), env)
    r = w("-vv", "workspaces", check=False)
    # botocore logged the headers, the canonical request and the signature: all masked.
    # (header values are bytes in the client's requests, str in the store's own GETs)
    assert re.search(r"'X-Amz-Security-Token': b?'\*\*\*'", r.err) and "x-amz-security-token:***" in r.err, r.err[-3000:]
    assert re.search(r"'Authorization': b?'\*\*\*'", r.err) and "Signature:" in r.err
    assert TOKEN not in r.err
    assert not re.search(r"Signature[=:]\s*[0-9a-f]{16}", r.err)
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in r.err
    # The daemon's log file, at -vv: the mount may or may not be accepted with a fake token; either way
    # its requests are logged, and redacted.
    log = tmp_path / "daemon.log"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run([sys.executable, "-m", "wsfs", "-vv", "mount", "-f", "--log", str(log), "ws", str(mnt)],
                       env={**w.env, "NOTIFY_SOCKET": ""}, capture_output=True, text=True, timeout=60)
    assert not is_mounted(mnt)
    text = log.read_text() + p.stderr
    assert "security-token" in text.lower(), text[-3000:]
    assert TOKEN not in text
    assert os.stat(log).st_mode & 0o777 == 0o600


@pytest.mark.s3
@pytest.mark.parametrize("how", ["mount -t wsfs", "wsfs --endpoint-url"])
def test_a_password_in_endpoint_url_is_in_no_cmdline(s3_server, tmp_path: Path, how: str) -> None:
    """endpoint_url=http://user:SECRET@host/ given to mount(8) or typed on the wsfs command line: once the
    mount is up, no process has SECRET in its argv (the daemon's included)."""
    env = {**os.environ, **s3_server.env}
    url = f"s3://{s3_server.bucket}/wsfs-test/argv-{os.getpid()}-{time.monotonic_ns()}"
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_bytes(b"hello\n")
    cache = tmp_path / "cache"
    Wsfs(url, str(tmp_path / "push-cache"), env)("init")
    Wsfs(url, str(tmp_path / "push-cache"), env).push(src, "ws")
    endpoint = s3_server.endpoint_url.replace("://", f"://wsfs:{SECRET}@")
    menv = {k: v for k, v in env.items() if not k.startswith("WSFS_") and k not in ("AWS_ENDPOINT_URL",
                                                                                      "NOTIFY_SOCKET")}
    menv["WSFS_ENVIRONMENT_FILE"] = str(tmp_path / "none")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    pids: set[int] = set()
    if how == "mount -t wsfs":
        cmd = ["mount", "-t", "wsfs", "-v", "ws@1", str(mnt), "-o", f"ro,repo={url},endpoint_url={endpoint},"
               f"cache_dir={cache}"]
    else:
        cmd = [sys.executable, "-m", "wsfs", "--repo", url, "--endpoint-url", endpoint, "--cache-dir", str(cache),
               "-v", "mount", "ws@1", str(mnt)]
    try:
        r = subprocess.run(cmd, env=menv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        pids.add(_daemon_pid(Wsfs(url, str(cache), env), mnt))
        assert (mnt / "hello.txt").read_bytes() == b"hello\n"
        holders = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if SECRET.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                        holders.append(entry)
        assert holders == []
        daemon_argv = Path(f"/proc/{next(iter(pids))}/cmdline").read_bytes().split(b"\0")
        assert os.fsencode(mnt) in daemon_argv  # ps still says what is mounted where
        assert SECRET not in r.stderr
        if how == "mount -t wsfs":
            assert "wsfs:***@" in r.stderr  # -v printed the command, redacted
    finally:
        _unmount(mnt, pids)
    log = Path(default_log_path(str(cache), str(mnt))).read_text()
    assert "mounted at" in log and SECRET not in log


# -- B: bit rot ----------------------------------------------------------------------------


def _pushed_big_file(tmp_path: Path, chunks: int) -> tuple[bytes, Wsfs]:
    """``ws@1`` in a new local repository: one random file ``big.bin`` of *chunks* chunks."""
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(chunks * CHUNK)
    (src / "big.bin").write_bytes(big)
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "push-cache"))
    w("init")
    w.push(src, "ws")
    return big, w


def test_b_a_flipped_byte_with_its_mtime_restored_is_not_served(tmp_path: Path, mount) -> None:
    """The daemon verified the chunk earlier; the edit keeps inode, size and mtime, not the ctime."""
    big, w = _pushed_big_file(tmp_path, 20)  # more than the daemon keeps in memory (48 MiB)
    cache = tmp_path / "cache"
    m = mount(w.repo, "ws@1", cache_dir=cache)
    m.expect_log(r"cached blob [0-9a-f]+ is corrupt")
    assert (m.path / "big.bin").read_bytes() == big  # every chunk fetched, written and verified
    assert m.stats()["cache"]["corrupt"] == 0
    _flip_byte_keep_mtime(_blob_path(cache, big[:CHUNK]), 100)
    _drop_page_cache(m.path / "big.bin")
    with open(m.path / "big.bin", "rb") as f:
        assert f.read(4096) == big[:4096]
    s = m.stats()["cache"]
    assert s["corrupt"] >= 1
    assert s["fetches"] == 21  # the refetch


# -- B: fsck --cache -------------------------------------------------------------------------


def test_b_fsck_cache_drops_what_fails_and_a_mount_fetches_it_again(tmp_path: Path, mount) -> None:
    big, w = _pushed_big_file(tmp_path, 3)
    cache = tmp_path / "cache"
    m = mount(w.repo, "ws@1", cache_dir=cache)
    assert (m.path / "big.bin").read_bytes() == big
    m.unmount()
    fsck = Wsfs(w.repo, str(cache))
    r = fsck("fsck", "--cache", check=False)
    assert r.code == 0, r.err
    assert "3 cached blobs" in r.text and "0 corrupt" in r.text
    bad = _blob_path(cache, big[CHUNK : 2 * CHUNK])
    _flip_byte_keep_mtime(bad, CHUNK - 1)
    with contextlib.closing(apsw.Connection(str(cache / "blobs" / "index.sqlite"))) as db:
        db.execute("INSERT INTO entries VALUES (?, 5, 0)", ("ab" * 32,))  # a row whose file is gone
    r = fsck("fsck", "--cache", check=False)
    assert r.code == 6, r.err
    assert "3 cached blobs" in r.text and "1 corrupt" in r.text and "1 stale rows removed" in r.text
    assert "1 corrupt cached blob(s) dropped" in r.err
    assert not os.path.exists(bad)
    r = fsck("fsck", "--cache")
    assert "2 cached blobs" in r.text and "0 stale rows" in r.text  # the dropped file's row went with it
    r = fsck("fsck")  # without --cache: the repository in the store, which is whole
    assert "1 version(s)" in r.text and "0 problem(s)" in r.text
    m = mount(w.repo, "ws@1", cache_dir=cache)
    assert (m.path / "big.bin").read_bytes() == big
    s = m.stats()["cache"]
    assert (s["fetches"], s["corrupt"]) == (1, 0)
