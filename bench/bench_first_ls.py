#!/usr/bin/env python3
"""Time from ``wsfs mount`` to the first ``ls``, and cold hydration, A/B between checkouts, over S3 with latency.

One run: generates the node_modules-like tree (``TreeGen`` of ``bench_push_checkout``, seed 7) at each
``--files`` size (kept under ``--trees``, reused by later runs), starts SeaweedFS on loopback, pushes each
tree (format 2, with the first checkout's code) into a repository of its own, then for each of
``--rounds`` rounds, each size and each checkout (``--side NAME=SRC_DIR``; the order alternates between
rounds), with the page cache dropped (unless ``--warm-page-cache``) and a fresh cache directory (a never-seen version); each side's
sources are byte-compiled first (``compileall``), as an installed package's are:

* ``wsfs mount`` (``PYTHONPATH=SRC_DIR``; for a side named in ``--mountd``, through a ``wsfs mountd`` of
  that checkout started once at the beginning, with the same environment; every other side with
  ``WSFS_MOUNTD_SOCKET=`` so that no host mountd is used) behind ``latency_proxy.py`` at ``--rtt`` ms, until it returns (the
  daemon is live), or with ``--foreground`` ``wsfs mount -f`` until ``READY=1``;
* ``ls MNT`` (the first ``ls`` of the mount point), then ``ls MNT/node_modules``;
* with ``--hydrate``: ``find MNT -ls`` and ``tar -cf - -C MNT . | cat`` (every byte), in the same mount.

Prints one line per measurement and the medians per size and side; ``--json FILE`` keeps everything.

    python bench/bench_first_ls.py --files 30000,100000 --rtt 20 --rounds 3 \\
        --side base=/work/wt-firstls-base/src --side new=/work/wt-firstls/src --hydrate
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_mount import Owned, s3_client, unwind_on_signals, wait_ready  # noqa: E402
from bench_push_checkout import TreeGen, drop_caches, settle_atimes  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402

from support.mountd import started_mountd  # noqa: E402
from support.s3server import ACCESS_KEY, REGION, SECRET_KEY, seaweedfs_server  # noqa: E402

MiB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tree_for(base: Path, n: int) -> Path:
    """``base/tree-<n>/node_modules``, generated once."""
    d = base / f"tree-{n}"
    if not (d / ".done").exists():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        log(f"generating {n:,} files in {d}")
        TreeGen(7, pool_bytes=32 * MiB).generate(str(d), n)
        settle_atimes(str(d))
        (d / ".done").write_text("ok\n")
    return d


def env_for(src: str, endpoint: str, repo: str, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=src, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_DEFAULT_REGION=REGION, AWS_ENDPOINT_URL=endpoint, WSFS_REPO=repo, WSFS_CACHE_DIR=str(cache))
    return env


def run_exact(cmd: list[str], env: dict[str, str], timeout: float) -> None:
    """*cmd* to its end, seen at once: ``subprocess.run(timeout=)`` polls the child with sleeps of up to
    50 ms, which quantized every "ready" time measured with it into 50 ms steps (0.617, 0.668, 0.719 s...).
    Here the wait blocks in ``waitpid``; a timer kills the child at *timeout*."""
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        code = p.wait()
    finally:
        timer.cancel()
    if code:
        raise subprocess.CalledProcessError(code, cmd)


@contextlib.contextmanager
def s3_session(prefix: str, workdir: str) -> Iterator[tuple[Path, Owned, Any, int]]:
    """A benchmark's scaffolding: SIGTERM/SIGINT unwind, a work directory (removed at the end), the mounts
    it owns (unmounted at the end, ``Owned``) and SeaweedFS on loopback: ``(work, owned, server, port)``."""
    unwind_on_signals()
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    owned = Owned()
    try:
        with seaweedfs_server(work / "s3") as s3:
            yield work, owned, s3, int(s3.endpoint_url.rsplit(":", 1)[1])
    finally:
        owned.close()
        shutil.rmtree(work, ignore_errors=True)


def timed(cmd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def one_mount(owned: Owned, work: Path, env: dict[str, str], proxy: LatencyProxy, hydrate: bool,
              foreground: bool = False, drop: bool = True) -> dict[str, Any]:
    """One cold mount: ``wsfs mount`` until it returns (background, the default: the daemon is then live),
    or with *foreground* ``wsfs mount -f`` until ``READY=1``; then the steps; unmounted at the end."""
    base = Path(tempfile.mkdtemp(prefix="m-", dir=work))
    mnt = base / "mnt"
    mnt.mkdir()
    sock_path = str(base / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(0.05)
    env = {**env, "WSFS_CACHE_DIR": str(base / "cache")}
    out: dict[str, Any] = {}
    proc = None
    daemon_pid = None
    try:
        if drop:
            drop_caches()
        proxy.reset()
        cmd = [sys.executable, "-m", "wsfs", "mount", *(["-f"] if foreground else []), "--log",
               str(base / "daemon.log"), "bench@1", str(mnt)]
        t0 = time.perf_counter()
        if foreground:
            proc = subprocess.Popen(cmd, env={**env, "NOTIFY_SOCKET": sock_path}, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            owned.add(mnt, proc)
            wait_ready(notify, proc, t0 + 300, base / "daemon.log")
        else:
            owned.add(mnt, None)
            run_exact(cmd, env, 300)
        out["ready"] = time.perf_counter() - t0
        out["ls /"] = timed(f"ls {mnt} > /dev/null")
        out["mount + ls /"] = time.perf_counter() - t0
        out["ls node_modules"] = timed(f"ls {mnt}/node_modules > /dev/null")
        out["mount + ls both"] = time.perf_counter() - t0
        out["requests_first_ls"] = proxy.stats()["requests"]
        if hydrate:
            out["find -ls"] = timed(f"find {mnt} -ls > /dev/null")
            out["read all"] = timed(f"tar -cf - -C {mnt} . | cat > /dev/null")
            out["hydration"] = time.perf_counter() - t0
        st = proxy.stats()
        out["requests"] = st["requests"]
        out["bytes_down"] = st.get("bytes_down")
        if not foreground:
            p = subprocess.run([sys.executable, "-m", "wsfs", "stats", "--json", str(mnt)], env=env,
                               capture_output=True, timeout=60)
            daemon_pid = json.loads(p.stdout)["pid"] if p.returncode == 0 else None
    finally:
        notify.close()
        out["exit"] = owned.release(mnt, proc)
        if daemon_pid is not None:  # the background daemon this run started: it exits after the unmount
            for _ in range(600):
                if not os.path.exists(f"/proc/{daemon_pid}"):
                    break
                time.sleep(0.05)
        shutil.rmtree(base, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", default="30000", help="tree sizes, comma-separated")
    ap.add_argument("--rtt", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--side", action="append", required=True, help="NAME=SRC_DIR (PYTHONPATH of that side)")
    ap.add_argument("--mountd", action="append", default=[], metavar="NAME",
                    help="mount side NAME through a resident wsfs mountd of its checkout (repeatable; a side may "
                    "be given twice under two names, once with and once without)")
    ap.add_argument("--hydrate", action="store_true", help="also find -ls and read every byte in each mount")
    ap.add_argument("--foreground", action="store_true", help="wsfs mount -f, timed until READY=1 (default: "
                    "wsfs mount, timed until it returns)")
    ap.add_argument("--warm-page-cache", action="store_true",
                    help="do not drop the page cache before each mount (programs and libraries stay in memory, "
                    "as on a host that ran them recently; the version and its cache directory are still new)")
    ap.add_argument("--trees", default="/var/tmp/wsfs-first-ls-trees")
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--json")
    args = ap.parse_args()
    sides = [tuple(s.split("=", 1)) for s in args.side]
    for _, src in sides:
        # Byte-compiled first, as an installed package is: a side without its .pyc files (a fresh worktree,
        # and PYTHONDONTWRITEBYTECODE=1 keeps it so) compiles every module at every mount, ~0.1 s.
        subprocess.run([sys.executable, "-m", "compileall", "-q", src], check=True, stdout=subprocess.DEVNULL)
    sizes = [int(x) for x in args.files.split(",")]
    trees = {n: tree_for(Path(args.trees), n) for n in sizes}
    results: list[dict[str, Any]] = []
    with s3_session("wsfs-first-ls-", args.workdir) as (work, owned, s3, port):
        s3_client(s3.endpoint_url)
        for n in sizes:
            repo = f"s3://{s3.bucket}/wsfs-{n}"
            env = env_for(sides[0][1], s3.endpoint_url, repo, work / "push-cache")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "wsfs", "-q", "init", repo], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run([sys.executable, "-m", "wsfs", "-q", "push", str(trees[n]), "bench"], env=env,
                           check=True, stdout=subprocess.DEVNULL)
            shutil.rmtree(work / "push-cache", ignore_errors=True)
            log(f"pushed {n:,} files in {time.perf_counter() - t0:.1f} s")
        with LatencyProxy(port, args.rtt) as proxy, contextlib.ExitStack() as stack:
            sockets = {name: str(stack.enter_context(started_mountd(work / f"mountd-{name}",
                                                                    env_for(src, proxy.url, "unused", work / "unused"))).socket)
                       for name, src in sides if name in args.mountd}
            for r in range(args.rounds):
                order = sides if r % 2 == 0 else sides[::-1]
                for n in sizes:
                    for name, src in order:
                        env = env_for(src, proxy.url, f"s3://{s3.bucket}/wsfs-{n}", work / "unused")
                        env["WSFS_MOUNTD_SOCKET"] = sockets.get(name, "")
                        load = os.getloadavg()[0]
                        res = one_mount(owned, work, env, proxy, args.hydrate, args.foreground,
                                        drop=not args.warm_page_cache)
                        res.update(side=name, files=n, round=r + 1, load1=load)
                        results.append(res)
                        log(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in res.items()))
    keys = ["ready", "ls /", "mount + ls /", "mount + ls both", "requests_first_ls"]
    if args.hydrate:
        keys += ["find -ls", "read all", "hydration", "requests"]
    print(f"\nRTT {args.rtt:g} ms, {args.rounds} rounds, medians (min-max); load1 at start of each mount")
    for n in sizes:
        for name, _ in sides:
            rs = [x for x in results if x["files"] == n and x["side"] == name]
            cells = []
            for k in keys:
                v = [x[k] for x in rs]
                cells.append(f"{k} {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})")
            print(f"{n:>7} {name:>6}: " + "; ".join(cells)
                  + f"; load1 {statistics.median(x['load1'] for x in rs):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
