#!/usr/bin/env python3
"""A whole tree written into a read-write mount, then ``wsfs commit`` to S3, against ``tar | zstd`` + one PUT.

Issue 13: "``npm ci`` of ~30k files, then ``wsfs commit`` to S3 at 20 ms RTT: within 2x of ``tar | zstd``
+ one PUT of the same files".  Not collected by pytest; prints what it measured and exits 0.

One run: SeaweedFS on loopback behind ``latency_proxy.py`` at ``--rtt`` ms; a repository in it with a
workspace of its own per round (``ws<round>@1``: one file); for each of ``--rounds`` rounds, in
alternating order:

* **wsfs**: a fresh ``wsfs mount --rw`` of that workspace (its own state folder and cache), ``cp -a`` of the
  tree into it (timed apart: the writing, which ``npm ci`` would do), then ``wsfs commit`` (timed: every
  byte to the store, pieces, changeset, record), then unmount;
* **tar.zst + PUT**: ``tar -cf - -C TREE . | zstd -3 -T0`` into a file, then one ``put_object`` of it
  through the same proxy (timed together: the naive floor of "store these files").

The tree: ``--tree DIR`` or the generated node_modules-like tree of ``bench_first_ls.py`` (``--files``,
kept under ``--trees``).  Page cache not dropped (both sides read the same warm tree).

    python bench/bench_commit_vs_tar.py --files 30000 --rtt 20 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_first_ls import env_for, log, s3_session, tree_for  # noqa: E402
from bench_mount import Owned, s3_client  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402

MiB = 1024 * 1024


def wsfs(env: dict[str, str], *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsfs", *args], env=env, check=True, capture_output=True,
                          text=True, timeout=timeout)


def daemon_pid(mnt: Path) -> int | None:
    """The pid of the daemon serving *mnt* (its command line names the mount point)."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(mnt).encode() in argv and b"mount" in argv:
                return int(d.name)
    return None


def commit_side(owned: Owned, work: Path, env: dict[str, str], tree: Path, proxy: LatencyProxy,
                ws: str, profile: Path | None = None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="c-", dir=work))
    mnt = base / "mnt"
    mnt.mkdir()
    one = base / "one"
    one.mkdir()
    (one / "README").write_text("base\n")
    env = {**env, "WSFS_CACHE_DIR": str(base / "cache")}
    wsfs(env, "-q", "push", str(one), ws)  # a workspace of its own: ws@1, one file
    owned.add(mnt, None)
    out: dict[str, Any] = {}
    try:
        wsfs(env, "mount", "--rw", "-o", f"state_dir={base / 'state'}", "--log", str(base / "daemon.log"),
             ws, str(mnt))
        t0 = time.perf_counter()
        subprocess.run(["cp", "-a", f"{tree}/.", str(mnt / "tree")], check=True)
        out["write (cp -a)"] = time.perf_counter() - t0
        proxy.reset()
        spy = None
        if profile is not None and (pid := daemon_pid(mnt)) is not None:
            # py-spy's collapsed stacks of the daemon's threads while it commits (``--profile``)
            spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "200", "--threads", "-f", "raw",
                                    "-o", str(profile / f"commit-{ws}.txt")], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        t0 = time.perf_counter()
        r = wsfs(env, "commit", "--json", str(mnt))
        out["commit"] = time.perf_counter() - t0
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        res = json.loads(r.stdout)
        st = proxy.stats()
        out.update(version=res.get("version"), uploaded_mib=res.get("bytes_uploaded", 0) / MiB,
                   objects=res.get("objects_uploaded"), requests=st["requests"], mib_up=st.get("bytes_up", 0) / MiB)
        # The daemon's own account of the commit: its phases (versions/commit.py, CommitStats).
        lines = [x for x in (base / "daemon.log").read_text(errors="replace").splitlines() if ": commit: " in x]
        if lines:
            log("  daemon: " + lines[-1].split(": commit: ", 1)[1])
    finally:
        owned.release(mnt, None)
        shutil.rmtree(base, ignore_errors=True)
    return out


def tar_side(work: Path, tree: Path, client: Any, bucket: str, proxy: LatencyProxy) -> dict[str, Any]:
    archive = work / "tree.tar.zst"
    proxy.reset()
    t0 = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", f"tar -cf - -C {tree} . | zstd -q -3 -T0 -f -o {archive}"],
                   check=True)
    t1 = time.perf_counter()
    with open(archive, "rb") as f:
        client.put_object(Bucket=bucket, Key="naive/tree.tar.zst", Body=f)
    t2 = time.perf_counter()
    out = {"tar | zstd": t1 - t0, "PUT": t2 - t1, "tar.zst + PUT": t2 - t0,
           "archive_mib": archive.stat().st_size / MiB, "requests": proxy.stats()["requests"]}
    archive.unlink()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=30000)
    ap.add_argument("--tree", help="a directory to use instead of the generated tree")
    ap.add_argument("--trees", default="/var/tmp/wsfs-first-ls-trees")
    ap.add_argument("--rtt", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--profile", type=Path, help="record py-spy stacks of the daemon's commit into this folder")
    args = ap.parse_args()
    tree = Path(args.tree) if args.tree else tree_for(Path(args.trees), args.files)

    rows: list[dict[str, Any]] = []
    with s3_session("wsfs-commit-tar-", args.workdir) as (work, owned, s3, port):
        with LatencyProxy(port, args.rtt) as proxy:
            repo = f"s3://{s3.bucket}/wsfs"
            env = env_for(str(HERE.parent / "src"), proxy.url, repo, work / "cli-cache")
            env["PYTHONPATH"] = os.environ.get("PYTHONPATH", env["PYTHONPATH"])
            wsfs(env, "-q", "init", repo)
            client = s3_client(proxy.url)
            for r in range(args.rounds):
                for side in (("wsfs", "tar") if r % 2 == 0 else ("tar", "wsfs")):
                    load = os.getloadavg()[0]
                    if side == "wsfs":
                        res = commit_side(owned, work, env, tree, proxy, f"ws{r + 1}", args.profile)
                    else:
                        res = tar_side(work, tree, client, s3.bucket, proxy)
                    res.update(side=side, round=r + 1, load1=load)
                    rows.append(res)
                    log(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()))
    nfiles = sum(len(f) for _, _, f in os.walk(tree))
    print(f"\n{nfiles:,} files from {tree}, RTT {args.rtt:g} ms, {args.rounds} rounds, medians (min-max)")
    for side, keys in (("wsfs", ["write (cp -a)", "commit", "uploaded_mib", "objects", "requests"]),
                       ("tar", ["tar | zstd", "PUT", "tar.zst + PUT", "archive_mib", "requests"])):
        got = [x for x in rows if x["side"] == side]
        cells = [f"{k} {statistics.median(x[k] for x in got):.2f} ({min(x[k] for x in got):.2f}-"
                 f"{max(x[k] for x in got):.2f})" for k in keys]
        print(f"  {side:5} " + "; ".join(cells))
    c = statistics.median(x["commit"] for x in rows if x["side"] == "wsfs")
    t = statistics.median(x["tar.zst + PUT"] for x in rows if x["side"] == "tar")
    print(f"  wsfs commit / (tar | zstd + PUT) = {c / t:.2f} (goal of issue 13: <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
