"""Commit of a write layer (no FUSE): time, PUTs and bytes uploaded per change, in a node_modules-like tree.

Not collected by pytest.  Run from the repository root::

    PYTHONPATH=src python bench/bench_commit.py [--files 20000] [--dir DIR] [--s3 --rtt MS]

With ``--s3`` the repository is in a SeaweedFS S3 server on loopback
(``tests/support/s3server.py``), reached through ``latency_proxy.py`` with
``--rtt`` ms of round trip (default 20) per request.

Generates the tree of ``bench_push_checkout.py`` (``--files`` regular files),
pushes it into a fresh local repository (in-process), opens a write layer
over that version, and times :func:`wsfs.versions.commit.commit_layer` after
each of these edits (each commit on top of the previous one):

* 1 small file modified;
* 100 small files modified, spread over the tree;
* a package added: a directory with 50 new files;
* 1,000 files added, spread over 20 new directories;
* those 1,000 files removed again (``rm -rf`` of what the commit before uploaded);
* nothing changed (no version published).

For each: wall time of the commit (snapshot, walk of the merged view, loading
the head, building and storing pieces, the record), requests to the store
(GET, HEAD, PUT; LIST and the rest as "other"), bytes written (the record
included) and read, and the changeset's size in entries.  Base content is read
through a ``RangeReader`` over a ``BlobCache``, as in the daemon, which the
commit also uses for the head's packs (where the code takes ``cache=``).

``--repeat N`` runs the sequence of edits N times (each commit on top of the
previous one), for medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import inspect  # noqa: E402

from bench_push_checkout import TreeGen  # noqa: E402

from wsfs.cache import BlobCache  # noqa: E402
from wsfs.format.manifest import ROOT_INO  # noqa: E402
from wsfs.format.records import RepoConfig  # noqa: E402
from wsfs.layer import BaseId, WriteLayer  # noqa: E402
from wsfs.repository import Repository  # noqa: E402
from wsfs.store import open_store  # noqa: E402
from wsfs.versions.commit import commit, commit_layer  # noqa: E402
from wsfs.versions.push import push  # noqa: E402
from wsfs.versions.read import RangeReader  # noqa: E402


def files_of(lay: WriteLayer) -> list[tuple[int, bytes]]:
    out = []
    stack = [(ROOT_INO, b"")]
    while stack:
        ino, prefix = stack.pop()
        for _, name, a in lay.readdir(ino):
            p = prefix + b"/" + name if prefix else name
            if a.is_dir:
                stack.append((a.ino, p))
            elif stat.S_ISREG(a.mode) and 0 < a.size < 64 * 1024:
                out.append((a.ino, p))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--s3", action="store_true")
    ap.add_argument("--rtt", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--phases", action="store_true", help="print where each commit's time went")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--ab", nargs=2, metavar=("OLD_SRC", "NEW_SRC"), default=None,
                    help="A/B: run this benchmark --runs times with each src/ (alternating), print medians")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rebase", action="store_true",
                    help="after each commit, re-base the layer onto the version it published, as an idle "
                         "rw mount does (its time is printed apart, not in the commit's)")
    args = ap.parse_args()
    if args.ab:
        return ab(args)
    work = tempfile.mkdtemp(prefix="wsfs-bench-commit-", dir=args.dir)
    try:
        if not args.s3:
            return run(args, work, os.path.join(work, "repo"))
        from latency_proxy import LatencyProxy

        from support.s3server import seaweedfs_server, server_env

        with seaweedfs_server(Path(work) / "s3") as s3:
            port = int(s3.endpoint_url.rsplit(":", 1)[1])
            with LatencyProxy(port, args.rtt) as proxy:
                os.environ.update(server_env(proxy.url))
                print(f"S3: SeaweedFS on loopback behind latency_proxy.py, {args.rtt:g} ms RTT")
                return run(args, work, f"s3://{s3.bucket}/bench-commit")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ab(args: argparse.Namespace) -> int:
    """Run the benchmark in child processes, alternately with the old and the new src/, and print medians."""
    import statistics
    import subprocess

    results: dict[str, list[list[dict]]] = {"old": [], "new": []}
    base = [sys.executable, os.path.abspath(__file__), "--files", str(args.files), "--rtt", str(args.rtt)]
    base += ["--s3"] if args.s3 else []
    base += ["--dir", args.dir] if args.dir else []
    for r in range(args.runs):
        for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
            src = args.ab[0] if side == "old" else args.ab[1]
            out = tempfile.mktemp(prefix="bench-commit-", suffix=".json")
            print(f"run {r + 1}/{args.runs}, {side} ({src})", flush=True)
            subprocess.run([*base, "--json", out], check=True, env={**os.environ, "PYTHONPATH": src})
            with open(out) as f:
                results[side].append(json.load(f))
            os.unlink(out)
    where = f"S3 at {args.rtt:g} ms RTT" if args.s3 else "local store"
    print(f"\nmedians of {args.runs} runs ({where}):")
    print(f"{'edit':<28} {'old s':>7} {'new s':>7} {'old GET/HEAD/PUT':>17} {'new GET/HEAD/PUT':>17} "
          f"{'old up/down KiB':>16} {'new up/down KiB':>16}")
    for i, row in enumerate(results["old"][0]):
        med = {}
        for side in ("old", "new"):
            rows = [run[i] for run in results[side]]
            med[side] = {k: statistics.median(x[k] for x in rows)
                         for k in ("seconds", "get", "head", "put", "bytes_out", "bytes_in")}
        o, n = med["old"], med["new"]
        print(f"{row['edit']:<28} {o['seconds']:>7.2f} {n['seconds']:>7.2f} "
              f"{o['get']:>5g}/{o['head']:>4g}/{o['put']:>4g}   {n['get']:>5g}/{n['head']:>4g}/{n['put']:>4g}   "
              f"{o['bytes_out'] / 1024:>7.0f}/{o['bytes_in'] / 1024:<7.0f} {n['bytes_out'] / 1024:>7.0f}/{n['bytes_in'] / 1024:<7.0f}")
    return 0


def run(args: argparse.Namespace, work: str, url: str) -> int:
    src = os.path.join(work, "src")
    gen = TreeGen(seed=1, pool_bytes=8 << 20)
    gen.generate(src, args.files)
    store = open_store(url)
    repo = Repository.init(store, RepoConfig(), os.path.join(work, "cache"))
    t = time.monotonic()
    record, _ = push(repo, src, "w", exclude={})
    print(f"tree: {gen.files} files, {gen.dirs} dirs, {gen.symlinks} symlinks, {gen.bytes / 1e6:.1f} MB; "
          f"push {time.monotonic() - t:.2f} s")
    m = repo.open_manifest(record)
    cache = BlobCache(repo, os.path.join(work, "cache"))
    readers = [RangeReader(repo, m.path, cache)]  # the last one reads the layer's current base
    lay = WriteLayer(os.path.join(work, "state"), m, BaseId("w", 1, record.manifest),
                     lambda node, off, size: readers[-1].read(node, off, size))
    kw = {"cache": cache} if "cache" in inspect.signature(commit).parameters else {}
    files = files_of(lay)
    manifests = [m]
    rng = random.Random(2)

    def modify(n: int) -> None:
        for ino, _ in rng.sample(files, n):
            lay.write(ino, 0, b"edited %d\n" % rng.randrange(1 << 30))
            lay.flush(ino)

    def add_package() -> None:
        d = lay.mkdir(ROOT_INO, b"new-package-%d" % rng.randrange(1 << 30), 0o755, 0, 0)
        for i in range(50):
            f = lay.create(d.ino, b"file%d.js" % i, stat.S_IFREG | 0o644, 0, 0)
            lay.write(f.ino, 0, os.urandom(200 + 40 * i))
            lay.release(f.ino)

    added: list[tuple[int, bytes]] = []

    def add_many() -> None:
        name = b"many-%d" % rng.randrange(1 << 30)
        top = lay.mkdir(ROOT_INO, name, 0o755, 0, 0)
        added.append((ROOT_INO, name))
        for d in range(20):
            dd = lay.mkdir(top.ino, b"d%02d" % d, 0o755, 0, 0)
            for i in range(50):
                f = lay.create(dd.ino, b"f%03d.txt" % i, stat.S_IFREG | 0o644, 0, 0)
                lay.write(f.ino, 0, os.urandom(100 + 37 * i))
                lay.release(f.ino)

    def remove_many() -> None:
        parent, name = added.pop()
        top = lay.lookup(parent, name)
        for _, dname, d in list(lay.readdir(top.ino)):
            for _, fname, _ in list(lay.readdir(d.ino)):
                lay.unlink(d.ino, fname)
            lay.rmdir(top.ino, dname)
        lay.rmdir(parent, name)

    edits = (("1 file modified", lambda: modify(1)), ("100 files modified", lambda: modify(100)),
             ("package added (50 files)", add_package), ("1,000 files added", add_many),
             ("those 1,000 removed", remove_many), ("nothing changed", lambda: None),
             ("1 file modified, again", lambda: modify(1)))
    print(f"{'edit':<28} {'commit s':>9} {'GETs':>5} {'HEADs':>5} {'PUTs':>5} {'other':>5} {'uploaded':>12} "
          f"{'downloaded':>12} {'changeset':>9} {'files read':>10}")
    st = store.stats
    rows: list[dict] = []
    for _ in range(args.repeat):
        for label, edit in edits:
            edit()
            req0, sent, got = dict(st.requests), st.bytes_out, st.bytes_in
            t = time.monotonic()
            rec, cs = commit_layer(repo, lay, **kw)
            dt = time.monotonic() - t
            d = {k: v - req0.get(k, 0) for k, v in st.requests.items()}
            other = sum(v for k, v in d.items() if k not in ("get", "head", "put"))
            rows.append({"edit": label, "seconds": dt, "get": d.get("get", 0), "head": d.get("head", 0),
                         "put": d.get("put", 0), "other": other, "bytes_out": st.bytes_out - sent,
                         "bytes_in": st.bytes_in - got, "changed": cs.changed, "published": rec is not None})
            print(f"{label:<28} {dt:>9.2f} {d.get('get', 0):>5} {d.get('head', 0):>5} {d.get('put', 0):>5} {other:>5} "
                  f"{(st.bytes_out - sent) / 1024:>8.1f} KiB {(st.bytes_in - got) / 1024:>8.1f} KiB "
                  f"{cs.changed:>9} {cs.files_read:>10}" + ("" if rec else "  (no version)"), flush=True)
            if args.phases and getattr(cs, "phases", None):
                print("    " + ", ".join(f"{k} {v:.3f}" for k, v in cs.phases.items()), flush=True)
            if args.rebase and rec is not None:
                t = time.monotonic()
                manifests.append(repo.open_manifest(rec))
                opened = time.monotonic() - t
                readers.append(RangeReader(repo, manifests[-1].path, cache))
                lay.rebase(manifests[-1], BaseId("w", rec.version, rec.manifest))
                print(f"    re-based onto w@{rec.version} in {time.monotonic() - t:.2f} s "
                      f"(its index {opened:.2f} s)", flush=True)
                files[:] = files_of(lay)  # the new base's numbers (not timed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)
    lay.close()
    cache.close()
    for x in manifests:
        x.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
