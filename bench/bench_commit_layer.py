#!/usr/bin/env python3
"""A whole-tree commit of a saved write layer, in-process: the commit alone, A/B between source trees.

Not collected by pytest; prints what it measured and exits 0.  The quick loop
for work on the commit itself (``bench_commit_vs_tar.py`` measures the same
through a mount and the CLI, ~2.5 minutes a round; this ~20-40 s a round).

Once (kept under ``--work``): a version of one small file is pushed into a
local repository, and a write layer over it is filled with ``--tree`` (every
directory, file and symlink, as ``cp -a`` into a read-write mount would):
the layer of a whole tree written, ~40,200 pending changes for the default
30,000-file tree.  Then for each of ``--rounds`` rounds, each ``--src`` in
turn (alternating order), a child process with ``PYTHONPATH=SRC``:

* copies the saved state folder, pushes the same one-file version into a
  fresh repository (local, or with ``--s3`` in SeaweedFS behind
  ``latency_proxy.py`` at ``--rtt`` ms), and
* times :func:`wsfs.versions.commit.commit_layer` of the copy, printing the
  commit's phases (``CommitStats.phases``).

Medians per source tree at the end.  The layer's on-disk format must be
the same for every ``--src`` (it is read by each).

    python bench/bench_commit_layer.py --s3 --rounds 6 --src /tmp/wt-old/src --src src
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONE_FILE = b"one\n"


def _open_layer(repo, state: str):  # noqa: ANN001, ANN202
    from wsfs.cache import BlobCache
    from wsfs.layer import BaseId, WriteLayer
    from wsfs.versions.read import RangeReader

    rec = repo.record("w", 1)
    m = repo.open_manifest(rec)
    cache = BlobCache(repo, repo.cache_dir)
    reader = RangeReader(repo, m.path, cache)
    lay = WriteLayer(state, m, BaseId("w", 1, rec.manifest), lambda node, off, size: reader.read(node, off, size))
    return lay, cache


def _one_file_version(url: str, work: Path):  # noqa: ANN202
    from wsfs.format.records import RepoConfig
    from wsfs.repository import Repository
    from wsfs.store import open_store
    from wsfs.versions.push import push

    src = work / "one"
    src.mkdir(parents=True, exist_ok=True)
    (src / "one").write_bytes(ONE_FILE)
    os.utime(src / "one", ns=(10**18, 10**18))
    os.utime(src, ns=(10**18, 10**18))  # the same version (top) every time: the saved layer's base
    repo = Repository.init(open_store(url), RepoConfig(), str(work / "cache"))
    push(repo, str(src), "w", exclude={})
    return repo


def prepare(tree: Path, saved: Path) -> None:
    """The saved layer: *tree* written into a layer over the one-file version."""
    from wsfs.format.manifest import ROOT_INO

    shutil.rmtree(saved, ignore_errors=True)
    repo = _one_file_version(f"file://{saved / 'repo'}", saved)
    lay, _ = _open_layer(repo, str(saved / "state"))
    count = 0

    def walk(src: str, ino: int) -> None:
        nonlocal count
        for de in sorted(os.scandir(src), key=lambda d: d.name):
            st = de.stat(follow_symlinks=False)
            name = os.fsencode(de.name)
            if de.is_symlink():
                lay.symlink(ino, name, os.fsencode(os.readlink(de.path)), st.st_uid, st.st_gid)
            elif de.is_dir(follow_symlinks=False):
                walk(de.path, lay.mkdir(ino, name, st.st_mode & 0o7777, st.st_uid, st.st_gid).ino)
            elif de.is_file(follow_symlinks=False):
                f = lay.create(ino, name, stat.S_IFREG | (st.st_mode & 0o7777), st.st_uid, st.st_gid)
                with open(de.path, "rb") as fh:
                    off = 0
                    while data := fh.read(1 << 20):
                        lay.write(f.ino, off, data)
                        off += len(data)
                lay.release(f.ino)
            else:
                continue
            count += 1

    walk(str(tree), ROOT_INO)
    lay.sync_all()
    lay.close()
    print(f"saved layer: {count} entries of {tree} in {saved}", flush=True)


def child(saved: Path, work: Path, url: str) -> None:
    """One timed commit of a copy of the saved layer (run with the source tree under test first on the path)."""
    from wsfs.versions.commit import commit_layer

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(saved / "state", work / "state")
    repo = _one_file_version(url, work)
    lay, cache = _open_layer(repo, str(work / "state"))
    try:
        t0 = time.monotonic()
        record, stats = commit_layer(repo, lay, cache=cache)
        total = time.monotonic() - t0
    finally:
        lay.close()
    assert record is not None and record.version == 2
    print(json.dumps({"total": round(total, 3), **{k: round(v, 3) for k, v in stats.phases.items()},
                      "objects": stats.objects_uploaded, "mib": round(stats.bytes_uploaded / 2**20, 2)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default="/var/tmp/wsfs-first-ls-trees/tree-30000",
                    help="the tree the layer holds (default: bench_first_ls.py's 30,000-file tree)")
    ap.add_argument("--work", default="/var/tmp/wsfs-bench-commit-layer", help="kept: the saved layer, copies")
    ap.add_argument("--src", action="append", help="a source tree to measure (repeatable; default: src)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--s3", action="store_true", help="SeaweedFS on loopback behind the delay proxy")
    ap.add_argument("--rtt", type=float, default=20.0)
    ap.add_argument("--fresh", action="store_true", help="build the saved layer again")
    ap.add_argument("--child", nargs=3, metavar=("SAVED", "WORK", "URL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.child[2])
        return 0
    work = Path(args.work)
    saved = work / "saved"
    srcs = [os.path.abspath(s) for s in (args.src or [str(HERE.parent / "src")])]
    if args.fresh or not (saved / "state").is_dir():
        prepare(Path(args.tree), saved)
    rows: dict[str, list[dict[str, float]]] = {s: [] for s in srcs}

    def run(url_of) -> None:  # noqa: ANN001
        n = 0
        for r in range(args.rounds):
            for src in (srcs if r % 2 == 0 else srcs[::-1]):
                n += 1
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(saved), str(work / "run"), url_of(n)],
                    env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([src, str(HERE.parent / "tests")])},
                    capture_output=True, text=True, timeout=1800)
                if out.returncode != 0:
                    print(f"round {r + 1}, {src}: failed\n{out.stderr[-3000:]}")
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows[src].append(row)
                print(f"round {r + 1} {src}: {json.dumps(row)}", flush=True)

    env: dict[str, str] = {}
    if args.s3:
        sys.path.insert(0, str(HERE))
        sys.path.insert(0, str(HERE.parent / "tests"))
        from latency_proxy import LatencyProxy

        from support.s3server import seaweedfs_server, server_env

        shutil.rmtree(work / "s3", ignore_errors=True)  # a server of this run only: fresh buckets
        with seaweedfs_server(work / "s3") as s3:
            with LatencyProxy(int(s3.endpoint_url.rsplit(":", 1)[1]), args.rtt) as proxy:
                env = server_env(proxy.url)
                print(f"S3: SeaweedFS on loopback behind latency_proxy.py at {args.rtt:g} ms RTT", flush=True)
                run(lambda n: f"s3://{s3.bucket}/run{n}")
    else:
        run(lambda n: f"file://{work / 'run' / 'repo'}")
    where = f"S3 at {args.rtt:g} ms RTT" if args.s3 else "local repository"
    print(f"\nmedians of {args.rounds} rounds ({where}), s:")
    keys = [k for k in ("total", "changes", "read", "delta", "theirs", "merge", "build", "upload", "intent")
            if any(k in row for r in rows.values() for row in r)]
    print(f"{'phase':<10}" + "".join(f"{os.path.relpath(s)[-28:]:>30}" for s in srcs))
    for k in keys:
        meds = [statistics.median(row.get(k, 0.0) for row in rows[s]) if rows[s] else float("nan") for s in srcs]
        print(f"{k:<10}" + "".join(f"{m:>30.2f}" for m in meds))
    shutil.rmtree(work / "run", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
