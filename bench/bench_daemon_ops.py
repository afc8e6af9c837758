"""Benchmark of the read-only mount: cold ``find`` + read-all, per-op latency, big-file throughput.

Not collected by pytest (no ``test_`` prefix).  Run as root, from the repository root::

    python bench/bench_daemon_ops.py [--files 5000] [--big-mib 64] [--keep]

It builds a tree of small files (and one big file) in a temporary directory,
pushes it to a local repository with the CLI, mounts it with a cold cache,
and reports what ``wsfs stats --json`` counted around each step.  The numbers
in ``docs/daemon.md`` come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def wsfs(env: dict[str, str], *args: str, capture: bool = True) -> str:
    p = subprocess.run([sys.executable, "-m", "wsfs", *args], env=env, capture_output=capture, text=True)
    if p.returncode != 0:
        raise SystemExit(f"wsfs {args} failed: {p.stderr}")
    return p.stdout


def make_small_tree(root: Path, files: int, rng: random.Random) -> int:
    words = [b"alpha", b"beta", b"gamma", b"delta", b"import", b"return", b"def", b"class", b"\n"]
    total = 0
    per_dir = 100
    for i in range(files):
        d = root / f"pkg{i // per_dir:03d}" / ("sub" if i % 3 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        size = rng.randint(200, 8000)
        data = b" ".join(rng.choice(words) for _ in range(size // 5))[:size]
        (d / f"mod{i:05d}.py").write_bytes(data)
        total += len(data)
    return total


class Mount:
    def __init__(self, env: dict[str, str], ref: str, mnt: Path, log: Path) -> None:
        self.env, self.mnt = env, mnt
        sock_dir = tempfile.mkdtemp(prefix="wsfs-b", dir="/tmp")
        path = os.path.join(sock_dir, "n")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        s.settimeout(30)
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wsfs", "mount", "-f", "--log", str(log), ref, str(mnt)],
            env={**env, "NOTIFY_SOCKET": path}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while b"READY=1" not in s.recv(4096):
                pass
        finally:
            s.close()
            shutil.rmtree(sock_dir)
        self.ready_s = time.perf_counter() - t0

    def stats(self) -> dict[str, Any]:
        return dict(json.loads(wsfs(self.env, "stats", "--json", str(self.mnt))))

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
            self.proc.kill()
            self.proc.wait()


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    ops = {}
    for op, n in after["requests"].items():
        n0 = before["requests"].get(op, 0)
        if n == n0:
            continue
        t = after["latency_us"][op]["total_ms"] - before["latency_us"].get(op, {}).get("total_ms", 0)
        ops[op] = {"n": n - n0, "mean_us": round(t * 1000 / (n - n0), 1), "total_ms": round(t, 1),
                   "max_us": after["latency_us"][op]["max"]}
    gets = after["store"]["requests"].get("get", 0) - before["store"]["requests"].get("get", 0)
    return {"ops": ops, "store_gets": gets,
            "store_bytes": after["store"]["bytes_in"] - before["store"]["bytes_in"]}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


READ_ALL = "import os,sys\nn=0\nfor d,_,fs in os.walk(sys.argv[1]):\n for f in fs:\n  p=os.path.join(d,f)\n  if os.path.isfile(p) and not os.path.islink(p):\n   with open(p,'rb') as h: n+=len(h.read())\nprint(n)"


def report(title: str, seconds: float, d: dict[str, Any]) -> None:
    print(f"\n{title}: {seconds * 1000:.0f} ms wall, {d['store_gets']} store GETs ({d['store_bytes']} B)")
    print(f"  {'op':<10} {'requests':>8} {'mean µs':>9} {'max µs':>9} {'total ms':>9}")
    for op, v in sorted(d["ops"].items(), key=lambda kv: -kv[1]["total_ms"]):
        print(f"  {op:<10} {v['n']:>8} {v['mean_us']:>9} {v['max_us']:>9} {v['total_ms']:>9}")


def thread_hop(repo: str, cache: str) -> None:
    """Cost of a manifest lookup inline vs through trio.to_thread.run_sync (the hop the daemon avoids)."""
    import trio

    from wsfs.repository import Ref, Repository
    from wsfs.store import open_store

    r = Repository.open(open_store(repo), cache)
    m = r.open_manifest(r.resolve(Ref.parse("bench")))
    names = [(1, f"pkg{i:03d}".encode()) for i in range(50)]
    n = 20000

    async def main() -> None:
        t0 = time.perf_counter()
        for i in range(n):
            m.lookup(*names[i % 50])
        inline = (time.perf_counter() - t0) / n
        limiter = trio.CapacityLimiter(16)
        t0 = time.perf_counter()
        for i in range(n // 4):
            await trio.to_thread.run_sync(m.lookup, *names[i % 50], limiter=limiter)
        hop = (time.perf_counter() - t0) / (n // 4)
        print(f"\nmanifest lookup: {inline * 1e6:.1f} µs inline, {hop * 1e6:.1f} µs through to_thread.run_sync")

    trio.run(main)
    m.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--big-mib", type=int, default=64)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wsfs-bench-"))
    try:
        src, repo, cache = work / "src", work / "repo", work / "cache"
        rng = random.Random(1)
        src.mkdir()
        total = make_small_tree(src, args.files, rng)
        (src / "big.bin").write_bytes(os.urandom(args.big_mib << 20))
        env = {**os.environ, "WSFS_REPO": str(repo), "WSFS_CACHE_DIR": str(cache)}
        wsfs(env, "init")
        wsfs(env, "-q", "push", str(src), "bench")
        print(f"tree: {args.files} small files ({total / 1e6:.1f} MB) in {args.files // 100} dirs, "
              f"+ one {args.big_mib} MiB file; local store; python {sys.version.split()[0]}")
        shutil.rmtree(cache)  # cold: the mount downloads the manifest
        mnt = work / "mnt"
        mnt.mkdir()
        m = Mount(env, "bench", mnt, work / "daemon.log")
        try:
            print(f"mount ready (READY=1) after {m.ready_s * 1000:.0f} ms (cold cache, manifest downloaded)")
            s0 = m.stats()
            t = timed(["find", str(mnt)])
            s1 = m.stats()
            report("cold find", t, delta(s0, s1))
            t = timed([sys.executable, "-c", READ_ALL, str(mnt)])
            s2 = m.stats()
            report("cold read-all (small files + big.bin, after find)", t, delta(s1, s2))
            t = timed(["find", str(mnt)]) + timed([sys.executable, "-c", READ_ALL, str(mnt)])
            s3 = m.stats()
            report("warm find + read-all (kernel caches)", t, delta(s2, s3))
        finally:
            m.stop()
        # Big file from the disk cache, through a new mount (empty kernel page cache).
        m = Mount(env, "bench", mnt, work / "daemon2.log")
        try:
            s0 = m.stats()
            t = timed(["cat", str(mnt / "big.bin")])
            d = delta(s0, m.stats())
            print(f"\nbig.bin from the disk cache, new mount: {args.big_mib / t:.0f} MiB/s, {d['store_gets']} GETs, "
                  f"read mean {d['ops']['read']['mean_us']} µs over {d['ops']['read']['n']} requests")
        finally:
            m.stop()
        shutil.rmtree(cache / "blobs")
        m = Mount(env, "bench", mnt, work / "daemon3.log")
        try:
            s0 = m.stats()
            t = timed(["cat", str(mnt / "big.bin")])
            s1 = m.stats()
            d = delta(s0, s1)
            print(f"big.bin cold (fetch from the local store, read-ahead 1 chunk): {args.big_mib / t:.0f} MiB/s, "
                  f"{d['store_gets']} GETs, {s1['cache']['prefetches']} prefetches")
        finally:
            m.stop()
        thread_hop(str(repo), str(cache))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
