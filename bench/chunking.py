#!/usr/bin/env python3
"""Fixed-size chunking (what wsfs does) against content-defined chunking (FastCDC).

Measures, for a large random file and a few edits of it:

* chunking throughput (boundary finding alone, and boundaries + blake3 of
  every chunk, single-threaded, data in memory so the disk is not measured);
* number of chunks and their mean size;
* bytes that would have to be uploaded after the edit (chunks of the new
  version whose id is not among the old version's);
* the cost of a random 4 KiB read: the lookup (Python division vs bisect over
  the chunk offsets, and the SQLite query either layout needs) and the bytes
  that must be fetched (the chunk(s) covering the range; chunks are stored
  compressed as whole objects, so a read fetches whole chunks).

Scenarios: (i) 100 bytes inserted in the middle (everything after shifts),
(ii) 100 bytes overwritten in place, (iii) 1 MiB appended, (iv) a tar of a
node_modules-like tree (see bench_push_checkout.py) in which one file in the
middle of the archive grew by 700 bytes.

Needs ``pyfastcdc`` (``pip install pyfastcdc``), for this measurement only;
wsfs does not depend on it.

    python bench/chunking.py                         # 256 MiB file, 20,000-file tree
    python bench/chunking.py --size-mb 64 --tree-files 3000 --json out.json
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import blake3

try:
    import pyfastcdc
    from pyfastcdc import FastCDC
except ImportError:  # pragma: no cover - the benchmark's only extra dependency
    raise SystemExit("pyfastcdc is needed for this benchmark: pip install pyfastcdc") from None

MiB = 1024 * 1024
KiB = 1024
MB = 1_000_000


# --------------------------------------------------------------------------
# chunkers: each returns [(offset, length), ...]
# --------------------------------------------------------------------------


class Fixed:
    def __init__(self, size: int) -> None:
        self.size = size
        self.name = f"fixed {size // KiB} KiB" if size < MiB else f"fixed {size // MiB} MiB"

    def cut(self, data: bytes) -> list[tuple[int, int]]:
        n, s = len(data), self.size
        return [(off, min(s, n - off)) for off in range(0, n, s)]


class CDC:
    def __init__(self, avg: int, min_size: int, max_size: int, label: str) -> None:
        self.cdc = FastCDC(avg, min_size=min_size, max_size=max_size)
        self.name = label
        self.params = {"avg_size": avg, "min_size": min_size, "max_size": max_size}

    def cut(self, data: bytes) -> list[tuple[int, int]]:
        return [(c.offset, c.length) for c in self.cdc.cut_buf(data)]


def chunkers() -> list:
    # pyfastcdc's real mean chunk size is about avg_size + min_size (cut-point
    # skipping); the parameters below give means near 4 MiB and 1 MiB.
    return [
        Fixed(4 * MiB),
        CDC(3 * MiB, 1 * MiB, 16 * MiB, "FastCDC ~4 MiB (avg 3M, min 1M, max 16M)"),
        Fixed(1 * MiB),
        CDC(768 * KiB, 256 * KiB, 4 * MiB, "FastCDC ~1 MiB (avg 768K, min 256K, max 4M)"),
    ]


def ids(data: bytes, spans: list[tuple[int, int]]) -> list[bytes]:
    mv = memoryview(data)
    return [blake3.blake3(mv[o : o + n]).digest() for o, n in spans]


# --------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------


def throughput(ch, data: bytes, reps: int) -> dict:
    cut_s, full_s = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        spans = ch.cut(data)
        t1 = time.perf_counter()
        ids(data, spans)
        t2 = time.perf_counter()
        cut_s.append(t1 - t0)
        full_s.append(t2 - t0)
    cut, full = statistics.median(cut_s), statistics.median(full_s)
    return {
        "cut_MB_per_s": len(data) / MB / cut if cut > 0 else float("inf"),
        "cut_and_hash_MB_per_s": len(data) / MB / full,
        "cut_s": cut,
        "cut_and_hash_s": full,
    }


def change_cost(ch, old: bytes, new: bytes) -> dict:
    so, sn = ch.cut(old), ch.cut(new)
    io, inew = ids(old, so), ids(new, sn)
    known = set(io)
    seen: set[bytes] = set()
    up_chunks = up_bytes = 0
    for cid, (_o, n) in zip(inew, sn, strict=True):
        if cid in known or cid in seen:
            continue
        seen.add(cid)
        up_chunks += 1
        up_bytes += n
    lengths = [n for _o, n in sn]
    return {
        "chunks": len(sn),
        "mean_chunk": statistics.fmean(lengths),
        "new_chunks": up_chunks,
        "upload_bytes": up_bytes,
        "upload_fraction": up_bytes / len(new),
    }


def random_read_cost(spans: list[tuple[int, int]], size: int, fixed: int | None, samples: int, rng: random.Random) -> dict:
    """Bytes fetched to serve a random 4 KiB read, and Python lookup time."""
    offs = [o for o, _n in spans]
    lens = [n for _o, n in spans]
    reads = [rng.randrange(0, size - 4096) for _ in range(samples)]
    fetched = []
    chunks_touched = []
    for r in reads:
        i = bisect.bisect_right(offs, r) - 1
        j = bisect.bisect_right(offs, r + 4095) - 1
        fetched.append(sum(lens[i : j + 1]))
        chunks_touched.append(j - i + 1)
    # lookup time: division (fixed) vs bisect (any chunk table)
    t0 = time.perf_counter()
    if fixed:
        for r in reads:
            _ = r // fixed
    else:
        for r in reads:
            _ = bisect.bisect_right(offs, r) - 1
    lookup_ns = (time.perf_counter() - t0) / samples * 1e9
    lens_sorted = sorted(lens)
    return {
        "mean_fetched_bytes": statistics.fmean(fetched),
        "p99_fetched_bytes": sorted(fetched)[int(0.99 * len(fetched))],
        "max_chunk": lens_sorted[-1],
        "mean_chunks_per_read": statistics.fmean(chunks_touched),
        "python_lookup_ns": lookup_ns,
        "table_rows": len(spans),
    }


def sqlite_lookup_us(spans: list[tuple[int, int]], size: int, fixed: int | None, samples: int, rng: random.Random) -> float:
    """Per-read time of the manifest query that finds the chunk of an offset.

    Fixed: ``(ino, idx)`` primary key, idx = offset // size (what wsfs does).
    CDC: the chunk table needs each chunk's offset and a range query.
    Every file is in one table with 1,000 other files' rows, as in a manifest.
    """
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE chunks (ino INTEGER, idx INTEGER, off INTEGER, length INTEGER, cid BLOB, PRIMARY KEY (ino, idx))")
    if not fixed:
        db.execute("CREATE INDEX chunks_off ON chunks (ino, off)")
    filler = os.urandom(32)
    rows = [(ino, k, k * 4 * MiB, 4 * MiB, filler) for ino in range(2, 1002) for k in range(8)]
    rows += [(1, k, o, n, filler) for k, (o, n) in enumerate(spans)]
    db.executemany("INSERT INTO chunks VALUES (?,?,?,?,?)", rows)
    db.commit()
    reads = [rng.randrange(0, size - 4096) for _ in range(samples)]
    if fixed:
        q = "SELECT cid, length FROM chunks WHERE ino=? AND idx=?"
        t0 = time.perf_counter()
        for r in reads:
            db.execute(q, (1, r // fixed)).fetchone()
    else:
        q = "SELECT cid, off, length FROM chunks WHERE ino=? AND off<=? ORDER BY off DESC LIMIT 1"
        t0 = time.perf_counter()
        for r in reads:
            db.execute(q, (1, r)).fetchone()
    return (time.perf_counter() - t0) / samples * 1e6


def pure_python_cdc_MB_per_s(data: bytes) -> float | None:
    """Speed of pyfastcdc's pure-Python implementation: what CDC costs without a C extension."""
    try:
        from pyfastcdc.py import FastCDC as PyFastCDC
    except ImportError:
        return None
    c = PyFastCDC(3 * MiB, min_size=1 * MiB, max_size=16 * MiB)
    t0 = time.perf_counter()
    for _ in c.cut_buf(data):
        pass
    return len(data) / MB / (time.perf_counter() - t0)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------


def make_tree_tar(n_files: int, seed: int) -> tuple[bytes, bytes, str]:
    """A tar of a node_modules-like tree, and the tar after one file in the middle grew by 700 bytes."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_push_checkout import TreeGen

    with tempfile.TemporaryDirectory(prefix="wsfs-chunking-") as d:
        src = os.path.join(d, "t")
        TreeGen(seed, pool_bytes=16 * MiB).generate(src, n_files)
        tar = ["tar", "--sort=name", "--mtime=@1700000000", "--owner=0", "--group=0", "-cf", "-", "-C", src, "."]
        old = subprocess.run(tar, check=True, stdout=subprocess.PIPE).stdout
        names = subprocess.run(["tar", "-tf", "-"], input=old, check=True, stdout=subprocess.PIPE).stdout.decode().split("\n")
        files = [n for n in names if n and not n.endswith("/") and os.path.isfile(os.path.join(src, n)) and not os.path.islink(os.path.join(src, n))]
        victim = files[len(files) // 2]
        with open(os.path.join(src, victim), "ab") as f:
            f.write(b"\n// patched: " + b"x" * 686 + b"\n")  # 700 bytes: the rest of the archive shifts
        new = subprocess.run(tar, check=True, stdout=subprocess.PIPE).stdout
    return old, new, victim


def machine() -> dict:
    def sh(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout.strip()

    return {
        "nproc": sh("nproc"),
        "memory": sh("free -h | awk '/^Mem:/ {print $2}'"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
        "pyfastcdc": getattr(pyfastcdc, "__version__", "?"),
        "blake3": getattr(blake3, "__version__", "?"),
    }


def fmt_bytes(n: float) -> str:
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n:.0f} B"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=256, help="size of the random file in MiB (default 256)")
    ap.add_argument("--tree-files", type=int, default=20_000, help="files in the tree behind the tar scenario (default 20000; 0 skips it)")
    ap.add_argument("--reps", type=int, default=3, help="throughput repetitions, median reported (default 3)")
    ap.add_argument("--read-samples", type=int, default=20_000, help="random 4 KiB reads simulated (default 20000)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    t_start = time.perf_counter()

    size = args.size_mb * MiB
    base = b"".join(rng.randbytes(min(16 * MiB, size - o)) for o in range(0, size, 16 * MiB))
    mid = size // 2 + 12345  # not on a chunk boundary
    scenarios = {
        "(i) insert 100 B in the middle": base[:mid] + rng.randbytes(100) + base[mid:],
        "(ii) overwrite 100 B in place": base[:mid] + rng.randbytes(100) + base[mid + 100 :],
        "(iii) append 1 MiB": base + rng.randbytes(MiB),
    }
    olds = dict.fromkeys(scenarios, base)
    tar_note = ""
    if args.tree_files:
        t0 = time.perf_counter()
        old_tar, new_tar, victim = make_tree_tar(args.tree_files, args.seed)
        key = "(iv) tar of the tree, one file grew 700 B"
        scenarios[key] = new_tar
        olds[key] = old_tar
        tar_note = (f"tar of {args.tree_files:,} files = {fmt_bytes(len(old_tar))}; changed {victim} "
                    f"(built in {time.perf_counter() - t0:.1f}s)")

    chs = chunkers()
    report: dict = {"machine": machine(), "argv": sys.argv, "size": size, "tar": tar_note, "throughput": {}, "changes": {}, "reads": {}}

    print(f"# chunking benchmark: random file {fmt_bytes(size)}; {tar_note}", file=sys.stderr)
    for ch in chs:
        report["throughput"][ch.name] = throughput(ch, base, args.reps)
        print(f"throughput {ch.name}: {report['throughput'][ch.name]}", file=sys.stderr)
    py_speed = pure_python_cdc_MB_per_s(base[: 4 * MiB])
    report["pure_python_cdc_MB_per_s"] = py_speed

    for sc, new in scenarios.items():
        report["changes"][sc] = {}
        for ch in chs:
            report["changes"][sc][ch.name] = change_cost(ch, olds[sc], new)
            print(f"{sc} {ch.name}: {report['changes'][sc][ch.name]}", file=sys.stderr)

    for ch in chs:
        fixed = ch.size if isinstance(ch, Fixed) else None
        spans = ch.cut(base)
        r = random_read_cost(spans, size, fixed, args.read_samples, random.Random(args.seed + 1))
        r["sqlite_lookup_us"] = sqlite_lookup_us(spans, size, fixed, args.read_samples, random.Random(args.seed + 2))
        report["reads"][ch.name] = r

    # ---- report
    m = report["machine"]
    print("# Chunking: fixed vs content-defined (FastCDC)\n")
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, kernel {m['kernel']}, Python {m['python']}, "
          f"pyfastcdc {m['pyfastcdc']}, blake3 {m['blake3']}")
    print(f"random file: {fmt_bytes(size)}; {tar_note}\n")
    print("## Throughput (single thread, in memory)\n")
    print("| chunker | boundaries MB/s | boundaries + blake3 MB/s |")
    print("|---|---:|---:|")
    for name, t in report["throughput"].items():
        cut = "n/a (a division)" if name.startswith("fixed") else f"{t['cut_MB_per_s']:,.0f}"
        print(f"| {name} | {cut} | {t['cut_and_hash_MB_per_s']:,.0f} |")
    if py_speed:
        print(f"\nFastCDC in pure Python (pyfastcdc.py, no C extension): {py_speed:.2f} MB/s")
    print("\n## Bytes to upload after a change (new unique chunks)\n")
    print("| scenario | chunker | chunks | mean chunk | new chunks | upload | of file |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for sc, rows in report["changes"].items():
        for name, c in rows.items():
            print(f"| {sc} | {name} | {c['chunks']:,} | {fmt_bytes(c['mean_chunk'])} | {c['new_chunks']:,} | "
                  f"{fmt_bytes(c['upload_bytes'])} | {100 * c['upload_fraction']:.2f}% |")
    print("\n## A random 4 KiB read\n")
    print("| chunker | lookup (Python) | lookup (SQLite query) | chunks fetched | bytes fetched (mean) | p99 | largest chunk |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in report["reads"].items():
        how = "division" if name.startswith("fixed") else "bisect"
        print(f"| {name} | {r['python_lookup_ns']:.0f} ns ({how}) | {r['sqlite_lookup_us']:.1f} µs | "
              f"{r['mean_chunks_per_read']:.4f} | {fmt_bytes(r['mean_fetched_bytes'])} | {fmt_bytes(r['p99_fetched_bytes'])} | "
              f"{fmt_bytes(r['max_chunk'])} |")
    report["total_seconds"] = time.perf_counter() - t_start
    print(f"\ntotal benchmark time {report['total_seconds']:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
