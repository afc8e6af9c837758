#!/usr/bin/env python3
"""Stress probe (not a test, not a benchmark): fsstress on read-write mounts while commits race the writes.

Two read-write mounts of one workspace in a local-directory repository; fsstress runs in a subtree of its
own in each (``a/`` and ``b/``), while each mount is committed at random intervals (0.2-2 s: snapshots,
uploads, re-bases and live re-bases against the other writer's versions).  Then both commit until nothing is
left, the head is checked out, and each mount's subtree must equal the checkout's entry by entry (type,
mode, owner, size, mtime, bytes, link target, device).  Files over 64 MiB (fsstress's sparse giants) are
compared by their first MiB and 16 MiB at fixed offsets.  Prints what it found; exits 1 on a difference,
a failed commit or an ERROR line in a daemon's log.  Needs root and fsstress (scripts/build_posix_suites.sh).

    python3 scripts/stress_rw.py --seed 22 --ops 15000 --dir /var/tmp/stress   # ~8 min on 2 vCPUs

Found with it (2026-12-07): read-ahead ending a mount on a full cache disk, and checkout writing the zeros
of sparse files (docs/benchmarks.md and the closing notes of issue 13).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

SUITES = Path(os.environ.get("WSFS_POSIX_SUITES") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
              / "wsfs-test" / "posix-suites")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def describe(root: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for dp, dn, fn in os.walk(root):
        for n in dn + fn:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            rel, m = os.path.relpath(p, root), st.st_mode
            d: list = [stat.S_IFMT(m), stat.S_IMODE(m), st.st_uid, st.st_gid]
            if stat.S_ISREG(m):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    if st.st_size <= 64 << 20:
                        h.update(f.read())
                    else:
                        rr = random.Random(rel)
                        for off in [0] + sorted(rr.randrange(st.st_size) for _ in range(16)):
                            f.seek(off)
                            h.update(f.read(1 << 20))
                d += [st.st_size, st.st_mtime_ns, h.hexdigest()]
            elif stat.S_ISLNK(m):
                d += [os.readlink(p), st.st_mtime_ns]
            elif not stat.S_ISDIR(m):
                d += [st.st_rdev, st.st_mtime_ns]
            else:
                d += [st.st_mtime_ns]
            out[rel] = d
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ops", type=int, default=3000, help="fsstress operations per process (3 per mount)")
    ap.add_argument("--dir", default="/var/tmp/wsfs-stress", help="work directory (removed first and after)")
    args = ap.parse_args()
    fsstress = SUITES / "xfstests" / "ltp" / "fsstress"
    work = Path(args.dir) / f"seed{args.seed}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "one" / "a").mkdir(parents=True)
    (work / "one" / "b").mkdir()
    (work / "one" / "README").write_text("base\n")

    def run(i: int, *a: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, WSFS_CACHE_DIR=str(work / f"cache{i}"), WSFS_REPO=str(work / "repo"), PYTHONPATH=SRC)
        return subprocess.run([sys.executable, "-m", "wsfs", *a], env=env, check=check, capture_output=True,
                              text=True)

    run(0, "init", str(work / "repo"))
    run(0, "-q", "push", str(work / "one"), "ws")
    mnts = [str(work / f"mnt{i}") for i in (0, 1)]
    bad = 0
    try:
        for i, m in enumerate(mnts):
            os.makedirs(m)
            run(i, "mount", "--rw", "-o", f"state_dir={work}/state{i}", "--log", f"{work}/daemon{i}.log", "ws", m)
        stop = threading.Event()
        results: dict[int, list[tuple[int, str]]] = {0: [], 1: []}

        def committer(i: int) -> None:
            rng = random.Random(args.seed * 10 + i)
            while not stop.is_set():
                r = run(i, "commit", "--json", mnts[i], check=False)
                results[i].append((r.returncode, r.stderr.strip()[-300:]))
                stop.wait(rng.uniform(0.2, 2.0))

        threads = [threading.Thread(target=committer, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        procs = [subprocess.Popen([str(fsstress), "-d", f"{mnts[i]}/{'ab'[i]}/s", "-n", str(args.ops), "-p", "3",
                                   "-s", str(args.seed + i)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for i in (0, 1)]
        rcs = [p.wait() for p in procs]
        stop.set()
        for t in threads:
            t.join()
        print(f"fsstress exit codes {rcs}; commits meanwhile: "
              + ", ".join(f"mount {i}: {len(r)} (exit codes {sorted({c for c, _ in r})})" for i, r in results.items()))
        bad += sum(rc != 0 for rc in rcs) + sum(c != 0 for r in results.values() for c, _ in r)
        for _ in range(3):  # until each has published what it holds and caught up with the other
            for i in (0, 1):
                r = run(i, "commit", "--json", mnts[i], check=False)
                bad += r.returncode != 0
        head = max(e["version"] for e in json.loads(run(0, "log", "--json", "ws").stdout))
        run(0, "checkout", f"ws@{head}", str(work / "co"))
        for i, sub in ((0, "a"), (1, "b")):
            live, got = describe(f"{mnts[i]}/{sub}"), describe(f"{work}/co/{sub}")
            diff = sorted(set(live) ^ set(got)) + sorted(k for k in set(live) & set(got) if live[k] != got[k])
            print(f"mount {i}, {sub}/: {len(live)} entries, ws@{head} has {len(got)}, {len(diff)} differ")
            for k in diff[:8]:
                print("   ", k, live.get(k), got.get(k))
            bad += len(diff)
        for i in (0, 1):
            errors = [x for x in Path(f"{work}/daemon{i}.log").read_text(errors="replace").splitlines()
                      if " ERROR " in x or "Traceback" in x]
            print(f"daemon {i}: {len(errors)} ERROR lines", *errors[:3], sep="\n    ")
            bad += len(errors)
    finally:
        for m in mnts:
            subprocess.run(["fusermount3", "-u", m], capture_output=True)
            if os.path.ismount(m):
                subprocess.run(["fusermount3", "-u", "-z", m], capture_output=True)
        if not any(os.path.ismount(m) for m in mnts):  # never a tree walk into a mount
            shutil.rmtree(work, ignore_errors=True)
    print("OK" if not bad else f"FAILED ({bad} problems)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
