"""A store that accepts connections and never answers: every wait is bounded (issue 11, finding 6).

The endpoint is :mod:`support.blackhole` (a thread of this process on
127.0.0.1): ``silent`` never answers a request, ``stall`` sends the headers
and the first bytes of a body, then nothing.  The version was pushed through
a moto server of our own, and the version's tree (its pieces and index), its
record, one file's chunk and the packs of the small files were cached before
the moto server stopped; the mounts then point at the black hole.  Reads of the mount and clocks run in subprocesses, so a
regression fails a subprocess timeout instead of hanging the test run.

What must hold: a read of an uncached chunk fails with ETIMEDOUT within the
deadline (``-o timeout=``), while listings, small files and chunks in the
cache keep working; a second read of the same blob times out as well; SIGTERM and
``wsfs umount`` take less than 2 s however many threads are blocked in the
store; the CLI (``cat``, ``log``, ``checkout``) fails with exit 8 within
about the deadline.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mountkit import CHUNK, helper_pids, is_mounted, running, wait_gone

from support.blackhole import BlackHole, black_hole
from support.cli import Wsfs
from support.s3server import moto_server
from wsfs.cache import BlobCache
from wsfs.repository import Ref, Repository
from wsfs.store import open_store

# Generous bounds for a loaded 2-core machine; the measured times are far below.
SIGNAL_BOUND = 2.5
SLACK = 2.0

# One pread of 4 KiB, timed; prints {"errno": 0 or E, "seconds": S}.
_READER = """
import json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
t = time.monotonic()
try:
    os.pread(fd, 4096, int(sys.argv[2]))
    e = 0
except OSError as x:
    e = x.errno
print(json.dumps({"errno": e, "seconds": time.monotonic() - t}), flush=True)
"""


@dataclass
class HungRepo:
    url: str
    cache: Path
    big: bytes
    cached: bytes

    def env(self, hole: BlackHole, **extra: str) -> dict[str, str]:
        return {**os.environ, "AWS_ENDPOINT_URL": hole.url, "WSFS_CACHE_DIR": str(self.cache), **extra}


@pytest.fixture(scope="module")
def hung(tmp_path_factory: pytest.TempPathFactory, aws_env: dict[str, str]) -> Iterator[HungRepo]:
    """``ws@1`` in S3 with its tree, record, ``cached.bin`` and the small files cached locally, ``big.bin`` not."""
    base = tmp_path_factory.mktemp("hung")
    src = base / "src"
    (src / "dir").mkdir(parents=True)
    big, cached = os.urandom(2 * CHUNK), os.urandom(CHUNK)
    (src / "big.bin").write_bytes(big)
    (src / "cached.bin").write_bytes(cached)
    (src / "small.txt").write_bytes(b"small")
    (src / "dir" / "leaf").write_bytes(b"leaf")
    cache = base / "cache"
    with moto_server(base / "moto") as srv:
        url = f"s3://{srv.bucket}/hung"
        w = Wsfs(url, str(base / "push-cache"), {**os.environ, **srv.env})
        w("init")
        w.push(src, "ws")
        repo = Repository.open(open_store(url, endpoint_url=srv.endpoint_url), str(cache))
        with repo.open_manifest(repo.resolve(Ref.parse("ws@1"))) as m:
            chunks = m.chunks(m.resolve(b"cached.bin").ino)
            # format 2: the small files are slices of packs, cached like chunks
            chunks += [m.pack_ref(m.resolve(p))[0] for p in (b"small.txt", b"dir/leaf")]
        blobs = BlobCache(repo, str(cache))
        try:
            for c in chunks:
                assert c.cid is not None
                blobs.read(c.cid, 0, c.length, size=c.length, place=c.place)
        finally:
            blobs.close()
    yield HungRepo(url, cache, big, cached)


def _start_read(path: Path, offset: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", _READER, str(path), str(offset)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(reader: subprocess.Popen[bytes], timeout: float) -> dict[str, float]:
    try:
        out, err = reader.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(reader)
        pytest.fail(f"a read of the mount still blocked after {timeout} s")
    assert reader.returncode == 0, err.decode(errors="replace")
    return dict(json.loads(out))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """End *proc* if it runs, and close its pipes: left to the garbage collector, a failed test's pipes
    turn into ResourceWarnings that pytest reports as an error of whichever later test collects them."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _wait_for(cond: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _timed(fn: object) -> float:
    t0 = time.monotonic()
    fn()  # type: ignore[operator]
    return time.monotonic() - t0


@pytest.mark.parametrize("mode", ["silent", "stall"])
def test_uncached_read_times_out_and_the_rest_is_served(hung: HungRepo, mount, mode: str) -> None:
    with black_hole(mode) as hole:
        # The store's own read timeout is long: only the operation's deadline can end the read.
        m = mount(hung.url, "ws@1", cache_dir=hung.cache, env=hung.env(hole, WSFS_S3_READ_TIMEOUT="60"),
                  extra=("-o", "timeout=3,nolease"))
        m.expect_log("did not finish within 3 s")
        reader = _start_read(m.path / "big.bin")
        try:
            _wait_for(lambda: hole.requests >= 1, 10)  # the daemon's GET is out, unanswered
            # Meanwhile everything that needs no store is served at once.
            assert _timed(lambda: sorted(os.listdir(m.path))) < 1
            assert sorted(os.listdir(m.path)) == ["big.bin", "cached.bin", "dir", "small.txt"]
            assert _timed(lambda: (m.path / "small.txt").read_bytes()) < 1
            assert (m.path / "dir" / "leaf").read_bytes() == b"leaf"
            t0 = time.monotonic()
            assert (m.path / "cached.bin").read_bytes() == hung.cached  # a chunk in the disk cache
            assert time.monotonic() - t0 < 1
            assert reader.poll() is None, "the uncached read ended before its deadline"
            first = _result(reader, 3 + SLACK + 5)
        finally:
            _kill(reader)
        print(f"uncached read ({mode}): errno {first['errno']} after {first['seconds']:.2f} s")
        assert first["errno"] == errno.ETIMEDOUT
        assert 2.5 < first["seconds"] < 3 + SLACK
        # A second read of the same blob, whose fetch is still stuck, fails at once; another blob
        # waits for its own deadline.
        r = _result(_start_read(m.path / "big.bin", 8192), 3 + SLACK + 5)
        assert r["errno"] == errno.ETIMEDOUT and r["seconds"] < 1, r
        r = _result(_start_read(m.path / "big.bin", CHUNK + 4096), 3 + SLACK + 5)
        assert r["errno"] == errno.ETIMEDOUT and 2.5 < r["seconds"] < 3 + SLACK, r
        # ... and the mount still serves what it can.
        assert (m.path / "small.txt").read_bytes() == b"small"
        assert (m.path / "cached.bin").read_bytes()[:100] == hung.cached[:100]
        s = m.stats()
        assert s["errors"]["read"] >= 3  # (the kernel retries a failed read-ahead: two READs per pread)
        # one store request per blob: the later reads of the first one started none
        assert s["store"]["requests"].get("get", 0) == 2
        m.unmount()  # strict: exit status 0 with threads still blocked in the store


def test_store_giving_up_first_is_etimedout_once(hung: HungRepo, mount) -> None:
    """With the store's own defaults for a 6 s budget (1 s connect, 2 s read), the store gives up first.

    The kernel answers a failed read-ahead with a second READ of the page at
    once; that one must fail at once too, not ask the store again (which
    doubled the wait: 617 s for one read before deadlines existed).
    """
    with black_hole("silent") as hole:
        m = mount(hung.url, "ws@1", cache_dir=hung.cache, env=hung.env(hole), extra=("-o", "timeout=6,nolease"))
        m.expect_log("failed: S3 endpoint .* did not answer within")
        r = _result(_start_read(m.path / "big.bin"), 20)
        print(f"read with the store giving up first: errno {r['errno']} after {r['seconds']:.2f} s")
        assert r["errno"] == errno.ETIMEDOUT
        assert 1.5 < r["seconds"] < 3.5, r  # one store budget (2 s), not two
        assert hole.requests == 1
        s = m.stats()
        assert s["store"]["requests"].get("get", 0) == 1 and s["errors"]["read"] >= 2


def test_sigterm_stops_within_two_seconds_while_a_read_is_stuck(hung: HungRepo, mount) -> None:
    with black_hole("silent") as hole:
        m = mount(hung.url, "ws@1", cache_dir=hung.cache, env=hung.env(hole, WSFS_S3_READ_TIMEOUT="60"),
                  extra=("-o", "nolease"))
        reader = _start_read(m.path / "big.bin")  # default deadline: 30 s
        try:
            _wait_for(lambda: hole.requests >= 1, 10)
            time.sleep(0.2)
            assert reader.poll() is None
            helpers = helper_pids(m.pid)
            t0 = time.monotonic()
            m.proc.send_signal(signal.SIGTERM)
            _wait_for(lambda: m.proc.poll() is not None and not is_mounted(m.path), SIGNAL_BOUND + 5)
            took = time.monotonic() - t0
            print(f"SIGTERM to exit and unmount: {took:.2f} s")
            assert took < SIGNAL_BOUND
            assert m.proc.returncode == 0
            r = _result(reader, 5)  # the reader is released too
            assert r["errno"] in (errno.ENOTCONN, errno.ECONNABORTED), r
            wait_gone(helpers, 5)
        finally:
            _kill(reader)


@pytest.mark.parametrize("case", ["profile-to-save", "profile-load-stuck", "fetch-stuck"])
def test_umount_returns_within_two_seconds(hung: HungRepo, mount, case: str) -> None:
    with black_hole("silent") as hole:
        # profile-to-save: the store's own timeouts (1/3 of 2 s) end the profile's load at mount time,
        # so at unmount there is a profile to store, into a store that does not answer.
        # profile-load-stuck: the profile's load at mount time is still unanswered at unmount.
        # fetch-stuck: a read timed out and its worker thread stays blocked in the store.
        stuck_read = case == "fetch-stuck"
        env = hung.env(hole, **({} if case == "profile-to-save" else {"WSFS_S3_READ_TIMEOUT": "60"}))
        m = mount(hung.url, "ws@1", cache_dir=hung.cache, env=env, extra=("-o", "timeout=2,nolease"), profile=True)
        m.expect_log("access profile")
        m.expect_log("did not finish within")
        assert (m.path / "cached.bin").read_bytes() == hung.cached
        if stuck_read:
            assert _result(_start_read(m.path / "big.bin"), 10)["errno"] == errno.ETIMEDOUT
        elif case == "profile-to-save":
            _wait_for(lambda: "could not load the access profile" in m.log_path.read_text(), 10)
        helpers = helper_pids(m.pid)
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "wsfs", "umount", str(m.path)], env=env,
                           capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
        print(f"wsfs umount: {took:.2f} s")
        assert p.returncode == 0, p.stderr
        assert took < SIGNAL_BOUND
        assert not is_mounted(m.path)
        assert not running(m.pid)
        assert m.proc.wait(timeout=1) == 0
        wait_gone(helpers, 5)
        log = m.log_path.read_text()
        if case == "profile-to-save":
            assert "access profile of ws@1 not stored: the store did not answer within 0.5 s" in log
        else:
            assert "access profile not stored: the store was failing" in log


@pytest.mark.parametrize("args", [("cat", "ws@1", "big.bin"), ("log", "ws"), ("checkout", "ws@1", "{dir}")],
                         ids=["cat", "log", "checkout"])
def test_cli_fails_with_exit_8_within_the_deadline(hung: HungRepo, tmp_path: Path, args: tuple[str, ...]) -> None:
    with black_hole("silent") as hole:
        argv = [a.format(dir=tmp_path / "out") for a in args]
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "wsfs", "--repo", hung.url, *argv],
                           env=hung.env(hole, WSFS_OP_TIMEOUT="3"), capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
        print(f"wsfs {args[0]}: exit {p.returncode} after {took:.2f} s: {p.stderr.strip()}")
        assert p.returncode == 8, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "S3 endpoint" in lines[0] and "did not answer within" in lines[0], p.stderr
        assert took < 3 + SLACK
        assert hole.requests >= 1
