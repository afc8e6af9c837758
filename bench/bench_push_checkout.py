#!/usr/bin/env python3
"""Benchmark ``wsfs push`` / ``wsfs checkout`` against ``tar | zstd`` and ``cp -a``.

Two data sets are generated in a temporary directory:

* ``small``: a tree shaped like a JavaScript ``node_modules`` (nested package
  directories, ``package.json`` files with similar text, identical LICENSE
  files, duplicated packages, ``.bin`` symlinks; most files 200 B-20 KiB, a
  few up to ~200 KiB, JS-like compressible text);
* ``large``: a few large incompressible files (default 3 x 256 MiB).

For each data set and each of ``--runs`` runs (median reported) it times:

* ``wsfs push`` into a fresh local repository (cold) and a second push of the
  unchanged tree into the same repository (warm);
* ``wsfs checkout`` of that version into a new directory, with a fresh cache
  directory (as on another machine: the manifest is fetched from the store);
* ``tar -cf - . | zstd -3 -T0 > x.tar.zst`` and ``zstd -dc x.tar.zst | tar -xf -``;
* ``cp -a``.

Every timed step is followed by a ``sync`` whose time is included (wsfs' local
store fsyncs every object it writes; tar and cp leave dirty pages behind, so
without the sync they would be measured against an unequal durability bar).
Page caches are dropped before every timed step when possible (root).

Nothing about time is asserted; the script exits 0 unless a tool fails or
the checked-out tree differs from the source.

    python bench/bench_push_checkout.py                # full: 20,000 files + 3 x 256 MiB, 3 runs
    python bench/bench_push_checkout.py --quick        # 2,000 files + 64 MiB, 1 run, < 1 minute
    python bench/bench_push_checkout.py --small-files 5000 --large-mb 64 --runs 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MB = 1_000_000  # throughput is reported in MB/s (10^6 bytes)
MiB = 1024 * 1024
KiB = 1024

# --------------------------------------------------------------------------
# data generation
# --------------------------------------------------------------------------

_JS_WORDS = (
    "function return const let var if else for while of in new this typeof "
    "undefined null true false export default import from require module exports "
    "async await yield class extends super static get set try catch finally throw "
    "Object Array String Number Promise Symbol Error prototype length push map "
    "filter reduce forEach keys values assign defineProperty call apply bind "
    "options callback value result args key index item node parent children "
    "props state context config path file buffer stream options.default"
).split()
_PUNCT = ["(", ")", "{", "}", ";", ",", ".", "=", "=>", "===", "!==", "&&", "||", "+", "\n", "\n  ", "\n    ", ": ", "[", "]"]

_MIT = """MIT License

Copyright (c) {year} {author}

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

_PKG_JSON = """{{
  "name": "{name}",
  "version": "{version}",
  "description": "{desc}",
  "main": "index.js",
  "types": "types/index.d.ts",
  "license": "MIT",
  "author": "{author}",
  "repository": {{
    "type": "git",
    "url": "git+https://github.com/{author}/{short}.git"
  }},
  "scripts": {{
    "build": "tsc -p .",
    "test": "jest"
  }},
  "bin": {{
    "{short}": "bin/cli.js"
  }},
  "engines": {{
    "node": ">={node}"
  }},
  "dependencies": {{
{deps}
  }}
}}
"""


class TreeGen:
    """Deterministic generator of a node_modules-like tree."""

    def __init__(self, seed: int, pool_bytes: int) -> None:
        self.rng = random.Random(seed)
        r = self.rng
        idents = ["".join(r.choice("abcdefghijklmnopqrstuvwxyz_$") for _ in range(r.randint(3, 12))) for _ in range(3000)]
        vocab = _JS_WORDS * 8 + idents + _PUNCT * 40
        toks = r.choices(vocab, k=pool_bytes // 4)
        self.pool = " ".join(toks).encode()[:pool_bytes]
        self.authors = ["".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(4, 10))) for _ in range(200)]
        self.licenses = [_MIT.format(year=y, author=a).encode() for y, a in zip((2014, 2017, 2019, 2021, 2023), self.authors[:5], strict=True)]
        self.files = 0
        self.bytes = 0
        self.dirs = 0
        self.symlinks = 0
        self.packages: list[list[tuple[str, bytes]]] = []

    def text(self, size: int) -> bytes:
        out = []
        need = size
        while need > 0:
            off = self.rng.randrange(0, len(self.pool) - 1)
            piece = self.pool[off : off + min(need, self.rng.randint(512, 16 * KiB))]
            out.append(piece)
            need -= len(piece)
        return b"".join(out)[:size]

    def size(self) -> int:
        r = self.rng.random()
        if r < 0.05:
            return self.rng.randint(20, 200)
        if r < 0.85:
            return int(min(20 * KiB, max(200, self.rng.lognormvariate(7.8, 1.0))))  # median ~2.4 KiB
        if r < 0.97:
            return self.rng.randint(20 * KiB, 64 * KiB)
        return self.rng.randint(64 * KiB, 200 * KiB)

    def name(self) -> str:
        r = self.rng
        base = "-".join(r.choice(self.authors)[: r.randint(3, 8)] for _ in range(r.randint(1, 2)))
        if r.random() < 0.15:
            return f"@{r.choice(self.authors)[:6]}/{base}"
        return base

    def package_files(self, name: str) -> list[tuple[str, bytes]]:
        r = self.rng
        short = name.split("/")[-1]
        deps = ",\n".join(f'    "{self.name()}": "^{r.randint(0, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}"' for _ in range(r.randint(0, 6)))
        files = [
            ("package.json", _PKG_JSON.format(
                name=name, version=f"{r.randint(0, 12)}.{r.randint(0, 30)}.{r.randint(0, 20)}",
                desc=self.text(60).decode(errors="replace").replace('"', "").replace("\n", " ").replace("\\", ""),
                author=r.choice(self.authors), short=short, node=r.choice(["8", "10", "12", "14", "16"]), deps=deps,
            ).encode()),
            ("LICENSE", r.choice(self.licenses)),
            ("README.md", b"# " + short.encode() + b"\n\n" + self.text(self.size())),
            ("index.js", b"'use strict';\nmodule.exports = require('./lib/" + short.encode() + b"');\n"),
        ]
        n = max(1, int(r.lognormvariate(1.8, 0.9)))  # median ~6 more files
        for i in range(n):
            kind = r.random()
            if kind < 0.55:
                files.append((f"lib/{r.choice(self.authors)[:8]}{i}.js", self.text(self.size())))
            elif kind < 0.75:
                files.append((f"types/{r.choice(self.authors)[:8]}{i}.d.ts", self.text(self.size())))
            elif kind < 0.9:
                files.append((f"dist/{short}{i}.min.js", self.text(self.size())))
            else:
                files.append((f"dist/{short}{i}.js.map", self.text(self.size())))
        files.append(("bin/cli.js", b"#!/usr/bin/env node\nrequire('../index.js');\n"))
        return files

    def write_package(self, root: str, files: list[tuple[str, bytes]]) -> None:
        made = set()
        for rel, data in files:
            p = os.path.join(root, rel)
            d = os.path.dirname(p)
            if d not in made:
                if not os.path.isdir(d):
                    os.makedirs(d)
                    self.dirs += 1
                made.add(d)
            with open(p, "wb") as f:
                f.write(data)
            if rel == "bin/cli.js":
                os.chmod(p, 0o755)
            self.files += 1
            self.bytes += len(data)

    def generate(self, top: str, nfiles: int) -> None:
        """Write packages under *top*/node_modules until about *nfiles* regular files exist."""
        nm = os.path.join(top, "node_modules")
        os.makedirs(os.path.join(nm, ".bin"))
        self.dirs += 2
        level_dirs = [nm]  # node_modules directories packages may go into
        r = self.rng
        while self.files < nfiles:
            if self.packages and r.random() < 0.08:
                files = r.choice(self.packages)  # the same package version installed twice (nested)
            else:
                files = self.package_files(self.name())
                self.packages.append(files)
            name = self.name()
            parent = r.choice(level_dirs)
            root = os.path.join(parent, name)
            if os.path.exists(root):
                continue
            self.write_package(root, files)
            if parent == nm and r.random() < 0.5:
                short = name.split("/")[-1]
                link = os.path.join(nm, ".bin", short)
                if not os.path.lexists(link):
                    os.symlink(os.path.join("..", name, "bin", "cli.js"), link)
                    self.symlinks += 1
            if root.count("node_modules") < 4 and r.random() < 0.15:
                level_dirs.append(os.path.join(root, "node_modules"))


def gen_large(top: str, count: int, size_mb: int) -> tuple[int, int]:
    os.makedirs(top)
    total = 0
    for i in range(count):
        with open(os.path.join(top, f"blob{i}.bin"), "wb") as f:
            left = size_mb * MiB
            while left:
                n = min(left, 4 * MiB)
                f.write(os.urandom(n))
                left -= n
        total += size_mb * MiB
    return count, total


# --------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


class Runner:
    def __init__(self, work: str, wsfs: list[str], jobs: int | None, verbose: bool, drop: bool = True) -> None:
        self.work = work
        self.drop = drop
        self.wsfs = wsfs
        self.jobs = jobs
        self.verbose = verbose
        self.drop_ok: bool | None = None
        self.counter = 0

    def fresh(self, what: str) -> str:
        self.counter += 1
        return os.path.join(self.work, f"{what}-{self.counter}")

    def timed(self, cmd: list[str] | str, env: dict[str, str] | None = None) -> tuple[float, float, str]:
        """Drop caches, run *cmd*, sync; returns (seconds incl. sync, sync seconds, stdout)."""
        ok = drop_caches() if self.drop else False
        self.drop_ok = ok if self.drop_ok is None else (self.drop_ok and ok)
        shell = isinstance(cmd, str)
        if self.verbose:
            print("  $", cmd if shell else " ".join(cmd), file=sys.stderr)
        t0 = time.perf_counter()
        p = subprocess.run(
            ["bash", "-o", "pipefail", "-c", cmd] if shell else cmd,
            env=env, capture_output=True,
        )
        t1 = time.perf_counter()
        os.sync()
        t2 = time.perf_counter()
        if p.returncode != 0:
            raise SystemExit(f"command failed ({p.returncode}): {cmd}\n{p.stderr.decode(errors='replace')}")
        return t2 - t0, t2 - t1, p.stdout.decode(errors="replace")

    def wsfs_env(self, repo: str, cache: str) -> dict[str, str]:
        env = dict(os.environ)
        env["WSFS_REPO"] = repo
        env["WSFS_CACHE_DIR"] = cache
        return env

    def jobs_args(self) -> list[str]:
        return ["-j", str(self.jobs)] if self.jobs else []

    def one_run(self, src: str, verify: bool) -> dict[str, dict]:
        out: dict[str, dict] = {}
        repo, cache = self.fresh("repo"), self.fresh("cache")
        env = self.wsfs_env(repo, cache)
        subprocess.run(self.wsfs + ["-q", "init", repo], env=env, check=True, stdout=subprocess.DEVNULL)

        t, s, so = self.timed(self.wsfs + ["-q", "push", *self.jobs_args(), "--json", src, "bench"], env)
        out["wsfs push (cold)"] = {"seconds": t, "sync": s, "push": json.loads(so)}
        t, s, so = self.timed(self.wsfs + ["-q", "push", *self.jobs_args(), "--json", src, "bench"], env)
        out["wsfs push (warm)"] = {"seconds": t, "sync": s, "push": json.loads(so)}
        repo_bytes = du(repo)

        dest = self.fresh("wsfs-co")
        env2 = self.wsfs_env(repo, self.fresh("cache"))  # another machine: manifest comes from the store
        t, s, _ = self.timed(self.wsfs + ["-q", "checkout", *self.jobs_args(), "bench@1", dest], env2)
        out["wsfs checkout"] = {"seconds": t, "sync": s}
        if verify:
            compare_trees(src, dest)
        shutil.rmtree(dest)
        shutil.rmtree(repo)

        tz = self.fresh("x") + ".tar.zst"
        t, s, _ = self.timed(f"tar -cf - -C {q(src)} . | zstd -3 -T0 -q > {q(tz)}")
        out["tar|zstd create"] = {"seconds": t, "sync": s}
        dest = self.fresh("tar-x")
        os.mkdir(dest)
        t, s, _ = self.timed(f"zstd -dc {q(tz)} | tar -xf - -C {q(dest)}")
        out["zstd|tar extract"] = {"seconds": t, "sync": s}
        tz_bytes = os.path.getsize(tz)
        os.unlink(tz)
        shutil.rmtree(dest)

        dest = self.fresh("cp")
        t, s, _ = self.timed(["cp", "-a", src, dest])
        out["cp -a"] = {"seconds": t, "sync": s}
        shutil.rmtree(dest)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(env2["WSFS_CACHE_DIR"], ignore_errors=True)
        out["_sizes"] = {"repo_bytes": repo_bytes, "tar_zst_bytes": tz_bytes}
        return out


def q(s: str) -> str:
    import shlex

    return shlex.quote(s)


def du(path: str) -> int:
    total = 0
    for dp, _dn, fn in os.walk(path):
        for n in fn:
            try:
                total += os.lstat(os.path.join(dp, n)).st_size
            except OSError:
                pass
    return total


def compare_trees(a: str, b: str) -> None:
    """Contents, symlink targets and modes must match (``diff -r --no-dereference`` plus a mode walk)."""
    p = subprocess.run(["diff", "-r", "--no-dereference", "-q", a, b], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise SystemExit(f"checkout differs from source:\n{p.stdout.decode(errors='replace')[:4000]}")
    for dp, dn, fn in os.walk(a):
        for n in dn + fn:
            pa = os.path.join(dp, n)
            pb = os.path.join(b, os.path.relpath(pa, a))
            sa, sb = os.lstat(pa), os.lstat(pb)
            if (sa.st_mode, sa.st_size, sa.st_mtime_ns) != (sb.st_mode, sb.st_size, sb.st_mtime_ns):
                if not (os.path.isdir(pa) and sa.st_mode == sb.st_mode):  # dir sizes/mtimes may differ
                    raise SystemExit(f"checkout differs from source at {pa}: {sa} vs {sb}")


def settle_atimes(path: str) -> None:
    """List every directory and read every file once.

    With ``relatime`` the first listing/read after a write updates atime.  A
    manifest that records atimes (wsfs at c4f127f did) would then differ
    between the first and second push of an unchanged tree because of the
    first push's own directory listing.  Settling first makes every run equal.
    """
    for dp, _dn, fn in os.walk(path):
        for n in fn:
            p = os.path.join(dp, n)
            if os.path.islink(p):
                os.readlink(p)
            else:
                with open(p, "rb") as f:
                    while f.read(4 * MiB):
                        pass


def count_tree(path: str) -> tuple[int, int, int]:
    files = nbytes = dirs = 0
    for dp, dn, fn in os.walk(path):
        dirs += len(dn)
        for n in fn:
            st = os.lstat(os.path.join(dp, n))
            if not os.path.islink(os.path.join(dp, n)):
                files += 1
                nbytes += st.st_size
    return files, nbytes, dirs


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

PAIRS = {  # wsfs step -> (tar step, cp step) it is compared with
    "wsfs push (cold)": ("tar|zstd create", "cp -a"),
    "wsfs push (warm)": ("tar|zstd create", "cp -a"),
    "wsfs checkout": ("zstd|tar extract", "cp -a"),
}


def summarize(runs: list[dict], files: int, nbytes: int) -> dict[str, dict]:
    steps = [k for k in runs[0] if not k.startswith("_")]
    res: dict[str, dict] = {}
    for step in steps:
        secs = [r[step]["seconds"] for r in runs]
        med = statistics.median(secs)
        res[step] = {
            "median_s": med,
            "runs_s": secs,
            "sync_median_s": statistics.median(r[step]["sync"] for r in runs),
            "files_per_s": files / med,
            "MB_per_s": nbytes / MB / med,
        }
    for step, (tar, cp) in PAIRS.items():
        res[step]["time_ratio_vs_tar_zstd"] = res[step]["median_s"] / res[tar]["median_s"]
        res[step]["time_ratio_vs_cp"] = res[step]["median_s"] / res[cp]["median_s"]
    last = runs[-1]
    res["wsfs push (cold)"]["store"] = last["wsfs push (cold)"]["push"]["store"]
    res["wsfs push (warm)"]["store"] = last["wsfs push (warm)"]["push"]["store"]
    st = dict(last["wsfs push (cold)"]["push"]["stats"])
    st.pop("skipped", None)
    res["wsfs push (cold)"]["stats"] = st
    res["_sizes"] = last["_sizes"]
    # bytes the warm push sent per run: ~0.3 KB when the manifest was reused, the manifest size when not
    res["wsfs push (warm)"]["bytes_out_per_run"] = [r["wsfs push (warm)"]["push"]["store"]["bytes_out"] for r in runs]
    res["wsfs push (warm)"]["manifest_size"] = last["wsfs push (warm)"]["push"]["manifest_size"]
    return res


def print_table(name: str, desc: str, res: dict[str, dict]) -> None:
    print(f"\n### {name}: {desc}\n")
    print("| step | median s | files/s | MB/s | wsfs/tar+zstd (time) | wsfs/cp (time) |")
    print("|---|---:|---:|---:|---:|---:|")
    for step, r in res.items():
        if step.startswith("_"):
            continue
        rt = f"{r['time_ratio_vs_tar_zstd']:.2f}" if "time_ratio_vs_tar_zstd" in r else ""
        rc = f"{r['time_ratio_vs_cp']:.2f}" if "time_ratio_vs_cp" in r else ""
        print(f"| {step} | {r['median_s']:.2f} | {r['files_per_s']:,.0f} | {r['MB_per_s']:,.1f} | {rt} | {rc} |")
    sz = res["_sizes"]
    cold = res["wsfs push (cold)"]
    print(f"\nrepository after two pushes: {sz['repo_bytes'] / MB:,.1f} MB; x.tar.zst: {sz['tar_zst_bytes'] / MB:,.1f} MB")
    warm = res["wsfs push (warm)"]
    print(f"cold push store requests: {cold['store']['requests']}; warm push: {warm['store']['requests']}")
    print(f"manifest {human(warm['manifest_size'])}; bytes the warm push uploaded, per run: "
          + ", ".join(human(b) for b in warm["bytes_out_per_run"]))


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def human(n: float) -> str:
    return f"{n / MB:,.1f} MB" if n >= 100_000 else f"{n:,.0f} B"


def machine() -> dict[str, str]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout.strip()
        except OSError:
            return "?"

    return {
        "nproc": sh("nproc"),
        "memory": sh("free -h | awk '/^Mem:/ {print $2}'"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
        "filesystem": sh(f"df -T {tempfile.gettempdir()} | awk 'NR==2 {{print $2}}'"),
        "zstd": sh("zstd --version"),
        "tar": sh("tar --version | head -1"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small-files", type=int, default=20_000, help="regular files in the node_modules-like tree (default 20000)")
    ap.add_argument("--large-mb", type=int, default=256, help="size of each large file in MiB (default 256)")
    ap.add_argument("--large-count", type=int, default=3, help="number of large files (default 3)")
    ap.add_argument("--runs", type=int, default=None, help="runs per measurement, median reported (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="2,000 small files, one 64 MiB file, 1 run: a smoke test")
    ap.add_argument("--jobs", "-j", type=int, default=None, help="wsfs -j (default: wsfs' own default)")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON to FILE")
    ap.add_argument("--workdir", help="parent of the temporary directory (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep", action="store_true", help="do not delete the temporary directory")
    ap.add_argument("--no-verify", action="store_true", help="skip comparing the first checkout with the source")
    ap.add_argument("--only", choices=["small", "large"], help="run only one data set")
    ap.add_argument("--no-drop-caches", action="store_true", help="do not drop the page cache before each step")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true", help="print every command")
    args = ap.parse_args(argv)
    if args.quick:
        args.small_files, args.large_mb, args.large_count = 2000, 64, 1
    runs = args.runs or (1 if args.quick else 3)

    wsfs = [shutil.which("wsfs")] if shutil.which("wsfs") else [sys.executable, "-m", "wsfs"]
    for tool in ("tar", "zstd", "cp"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found on PATH")
    work = tempfile.mkdtemp(prefix="wsfs-bench-", dir=args.workdir)
    t_start = time.perf_counter()
    report: dict = {"machine": machine(), "argv": sys.argv, "runs": runs, "datasets": {}, "loadavg_at_start": load_average()}
    try:
        datasets = []
        if args.only in (None, "small"):
            src = os.path.join(work, "small")
            t0 = time.perf_counter()
            g = TreeGen(args.seed, pool_bytes=(4 if args.quick else 32) * MiB)
            g.generate(src, args.small_files)
            files, nbytes, dirs = count_tree(src)
            desc = (f"{files:,} files, {dirs:,} dirs, {g.symlinks} symlinks, {nbytes / MB:,.1f} MB "
                    f"(node_modules-like; generated in {time.perf_counter() - t0:.1f}s)")
            datasets.append(("small", src, files, nbytes, desc))
        if args.only in (None, "large"):
            src = os.path.join(work, "large")
            files, nbytes = gen_large(src, args.large_count, args.large_mb)
            desc = f"{files} files x {args.large_mb} MiB incompressible = {nbytes / MB:,.1f} MB"
            datasets.append(("large", src, files, nbytes, desc))

        runner = Runner(work, wsfs, args.jobs, args.verbose, drop=not args.no_drop_caches)
        for name, src, files, nbytes, desc in datasets:
            settle_atimes(src)
            print(f"[{name}] {desc}: {runs} run(s)", file=sys.stderr)
            rr = []
            for i in range(runs):
                rr.append(runner.one_run(src, verify=(i == 0 and not args.no_verify)))
                print(f"[{name}] run {i + 1}/{runs}: " + ", ".join(
                    f"{k} {v['seconds']:.2f}s" for k, v in rr[-1].items() if not k.startswith("_")), file=sys.stderr)
            res = summarize(rr, files, nbytes)
            report["datasets"][name] = {"description": desc, "files": files, "bytes": nbytes, "results": res}
        report["page_cache_dropped"] = bool(runner.drop_ok)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    m = report["machine"]
    print(f"# wsfs push/checkout benchmark ({runs} run(s), median; every step includes a final sync; "
          f"page cache dropped before each step: {'yes' if report['page_cache_dropped'] else 'NO'})")
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, kernel {m['kernel']}, Python {m['python']}, "
          f"{m['filesystem']}, {m['zstd']}")
    for name, d in report["datasets"].items():
        print_table(name, d["description"], d["results"])
    print("\nratios are wsfs time / other tool's time (above 1: wsfs is slower). MB = 10^6 bytes.")
    report["total_seconds"] = time.perf_counter() - t_start
    report["loadavg_at_end"] = load_average()
    print(f"total benchmark time {report['total_seconds']:.0f}s; load average at start {report['loadavg_at_start']}, "
          f"at end {report['loadavg_at_end']} (other work on the machine skews the times)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
