"""Micro-benchmark of the write layer as a library (no FUSE): what a developer's workload asks of it.

Not collected by pytest.  Run from the repository root::

    python bench/bench_write_layer.py [--files 30000] [--gib 1] [--renames 10000] [--dir DIR]

Steps, each on a fresh layer over a small pushed base version, the state
folder under ``--dir`` (default ``$TMPDIR``):

* ``small files``: create + open + write 1-4 KiB + release, spread over 300
  directories (npm/git checkout-like), then ``sync_all``;
* ``sequential``: one new file written in 128 KiB writes up to ``--gib`` GiB,
  release, ``fsync``;
* ``renames``: renames of files between directories;
* ``fsync loop``: 1,000 x (write 4 KiB + fsync) of one file (an editor or a database).

and, for scale, the first two done directly on the state folder's file system
(``os.open``/``os.pwrite``/``os.close`` from Python, and one ``fsync``): what a
FUSE daemon would add the layer's cost to.

For each: operations per second, MB/s where it applies, and the share of
wall time spent inside SQLite calls (``execute``/``executemany`` timed by a
proxy around the connection; stepping of rows a caller iterates later is not
counted, which for these point queries is nothing).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wsfs.format.manifest import Inode
from wsfs.layer import BaseId, WriteLayer
from wsfs.repository import Repository
from wsfs.store import open_store


class TimedDb:
    """The layer's connection, with the time spent in execute/executemany added up."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.seconds = 0.0
        self.calls = 0

    def _timed(self, fn: Any, *a: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1

    def execute(self, *a: Any) -> Any:
        return self._timed(self._db.execute, *a)

    def executemany(self, *a: Any) -> Any:
        return self._timed(self._db.executemany, *a)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def make_base(work: Path) -> tuple[Repository, Any, BaseId]:
    src = work / "src"
    src.mkdir()
    (src / "README").write_bytes(b"base\n")
    env = dict(os.environ, WSFS_REPO=str(work / "repo"), WSFS_CACHE_DIR=str(work / "cache"))
    for args in (["init"], ["push", str(src), "bench"]):
        subprocess.run([sys.executable, "-m", "wsfs", *args], env=env, check=True, capture_output=True)
    repo = Repository.open(open_store(str(work / "repo")), str(work / "cache"))
    record = repo.record("bench", 1)
    return repo, repo.open_manifest(record), BaseId("bench", 1, record.manifest)


def no_base(node: Inode, off: int, n: int) -> bytes:
    raise AssertionError("the benchmark reads nothing from the base")


def fresh(work: Path, m: Any, bid: BaseId, name: str) -> tuple[WriteLayer, TimedDb]:
    state = work / name
    shutil.rmtree(state, ignore_errors=True)
    layer = WriteLayer(str(state), m, bid, no_base)
    timed = TimedDb(layer.db)
    layer.db = timed  # type: ignore[assignment]
    return layer, timed


def report(name: str, ops: int, seconds: float, timed: TimedDb, nbytes: int = 0) -> None:
    mbs = f", {nbytes / seconds / 1e6:8.1f} MB/s" if nbytes else ""
    print(f"{name:<34} {ops:>8} ops in {seconds:6.2f} s: {ops / seconds:>10.0f} ops/s{mbs}; "
          f"SQLite {timed.seconds:5.2f} s ({100 * timed.seconds / seconds:4.1f}%, {timed.calls} calls)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=30000)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--renames", type=int, default=10000)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wsfs-bench-layer-", dir=args.dir))
    try:
        repo, m, bid = make_base(work)
        fs = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
        print(f"state folder on {fs} ({work})")
        reg = stat.S_IFREG | 0o644
        payload = os.urandom(4096)

        layer, timed = fresh(work, m, bid, "s1")
        t = time.perf_counter()
        dirs = [layer.mkdir(1, b"d%d" % i, 0o755, 0, 0).ino for i in range(300)]
        total = 0
        for i in range(args.files):
            f = layer.create(dirs[i % 300], b"file-%d.js" % i, reg, 0, 0)
            layer.open(f.ino)
            n = 1024 + (i * 7919) % 3072
            layer.write(f.ino, 0, payload[:n])
            layer.release(f.ino)
            total += n
        layer.sync_all()
        report("small files (create+write+close)", args.files, time.perf_counter() - t, timed, total)
        layer.close()

        layer, timed = fresh(work, m, bid, "s2")
        block = os.urandom(128 * 1024)
        size = int(args.gib * (1 << 30))
        t = time.perf_counter()
        f = layer.create(1, b"big", reg, 0, 0)
        layer.open(f.ino)
        for off in range(0, size, len(block)):
            layer.write(f.ino, off, block)
        layer.release(f.ino)
        layer.fsync(f.ino)
        report(f"sequential {args.gib:g} GiB, 128 KiB writes", size // len(block), time.perf_counter() - t, timed, size)
        layer.close()

        raw = work / "raw"
        raw.mkdir()
        t = time.perf_counter()
        dfds = []
        for i in range(300):
            os.mkdir(raw / f"d{i}")
            dfds.append(os.open(raw / f"d{i}", os.O_RDONLY | os.O_DIRECTORY))
        for i in range(args.files):
            fd = os.open(f"file-{i}.js", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfds[i % 300])
            os.pwrite(fd, payload[:1024 + (i * 7919) % 3072], 0)
            os.close(fd)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs(dfds[0])  # this file system only, as sync_all syncs the layer's files
        secs = time.perf_counter() - t
        print(f"{'  same, directly on the file system':<34} {args.files:>8} ops in {secs:6.2f} s: {args.files / secs:>10.0f} ops/s")
        for fd in dfds:
            os.close(fd)
        fd = os.open(raw / "big", os.O_WRONLY | os.O_CREAT, 0o644)
        t = time.perf_counter()
        for off in range(0, size, len(block)):
            os.pwrite(fd, block, off)
        os.fsync(fd)
        os.close(fd)
        secs = time.perf_counter() - t
        print(f"{'  sequential, directly':<34} {size // len(block):>8} ops in {secs:6.2f} s: "
              f"{size // len(block) / secs:>10.0f} ops/s, {size / secs / 1e6:8.1f} MB/s")
        shutil.rmtree(raw)

        layer, timed = fresh(work, m, bid, "s3")
        a, b = layer.mkdir(1, b"a", 0o755, 0, 0).ino, layer.mkdir(1, b"b", 0o755, 0, 0).ino
        for i in range(1000):
            layer.create(a, b"f%d" % i, reg, 0, 0)
        timed.seconds, timed.calls = 0.0, 0
        t = time.perf_counter()
        for i in range(args.renames):
            src, dst = (a, b) if (i // 1000) % 2 == 0 else (b, a)
            layer.rename(src, b"f%d" % (i % 1000), dst, b"f%d" % (i % 1000))
        layer.sync_all()
        report("renames", args.renames, time.perf_counter() - t, timed)
        layer.close()

        layer, timed = fresh(work, m, bid, "s4")
        f = layer.create(1, b"log", reg, 0, 0)
        t = time.perf_counter()
        for i in range(1000):
            layer.write(f.ino, i * 4096, payload)
            layer.fsync(f.ino)
        report("write 4 KiB + fsync", 1000, time.perf_counter() - t, timed, 1000 * 4096)
        layer.close()
        m.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
