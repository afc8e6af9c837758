#!/usr/bin/env python3
"""What a new version costs (issue 12): wsfs push beside git, restic and a re-uploaded tar.zst.

One working copy of a tree (``--tree``, copied to a work directory first) goes
through a sequence of states; after each, every tool snapshots it:

1. initial import;
2. 1 small file modified (a line appended; the middle one by path);
3. 100 small files modified, spread evenly over the sorted paths;
4. an npm-like package added (50 files in 4 new directories, under the
   top ``node_modules`` if there is one, else at the root);
5. nothing changed;

and, for wsfs only, a second workspace pushing the final tree with a fresh
cache (cross-workspace dedup), and the download a host that has version N
cached needs to open version N+1 (the Python API with a counting store: the
metadata of ``Repository.open_manifest``, then the packs and chunks of N+1
it does not have, i.e. what reading every file of N+1 fetches).

Tools (each on its own repository in the work directory, local disk):

* ``wsfs``: ``python -m wsfs push --json SRC demo`` into a local directory
  repository; bytes and PUTs from the JSON (``store.bytes_out``,
  ``store.requests.put``), the repository's growth too;
* ``git``: ``git add -A && git commit -q --allow-empty -m x`` (``GIT_DIR``
  outside the tree, ``gc.auto=0``: loose objects, no gc); bytes = growth of
  ``.git/objects`` (sum of file sizes), objects = new files there;
* ``restic``: ``restic backup --json SRC`` to a local repository (its cache
  in the work directory); bytes = growth of the repository directory,
  objects = new files there (packs, indexes, the snapshot);
* ``tar``: ``tar -cf - . | zstd -3 -T0`` of the whole tree (the naive floor:
  upload the archive again); bytes = the archive's size.

Every edit is followed by ``sleep 2.5`` (wsfs' stat cache, like git's index,
does not remember a file modified less than 2 s before the push). Times are
wall-clock seconds of the command (process start included) with a warm page
cache; CPU seconds (user+sys of the command's processes) are recorded too.

Run from the repository root (no install needed, ``src`` is put on the path)::

    python bench/bench_versions.py                                    # the real npm tree, ~3 min
    python bench/bench_versions.py --tree /var/tmp/wsfs-mdesign/tree --label generated --json g.json --plot plots/
    python bench/bench_versions.py --tools wsfs,git                   # a subset

Needs git, restic, tar, zstd (``bash bench/setup.sh``); a missing tool is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import stat
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

from wsfs.format.tree import ZERO_ID  # noqa: E402
from wsfs.repository import Repository  # noqa: E402

DEFAULT_TREE = "/var/tmp/wsfs-mdesign/npm/node_modules"
TOOLS = ("wsfs", "git", "restic", "tar")
SMALL = 100 * 1024  # files edited are below this (well under the 128 KiB inline threshold)
RACY = 2.5  # seconds: after this a file's stat is old enough to be remembered by wsfs (and git)


# -- helpers ----------------------------------------------------------------------


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def dir_usage(path: Path) -> tuple[int, int]:
    """``(bytes, files)``: the sum of the sizes of the regular files under *path* (apparent, like ``du -b``
    without directories), and how many there are."""
    total = files = 0
    for dp, _dirs, names in os.walk(path):
        for n in names:
            try:
                st = os.lstat(os.path.join(dp, n))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                files += 1
    return total, files


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str] | str, env: dict[str, str], timeout: float, *, shell: bool = False,
        cwd: str | None = None) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run *cmd*; returns ``(completed, wall seconds, cpu seconds)``; raises on a non-zero exit."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    p = subprocess.run(cmd, env=env, shell=shell, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       executable="/bin/bash" if shell else None)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd!r} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p, wall, cpu


def tool_version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=30).stdout.strip()
        return out + ("+dirty src" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


# -- edits --------------------------------------------------------------------------


def small_files(src: Path) -> list[Path]:
    out = []
    for dp, dirs, names in os.walk(src):
        dirs.sort()
        for n in names:
            p = Path(dp) / n
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and 0 < st.st_size < SMALL:
                out.append(p)
    return sorted(out, key=lambda p: os.fsencode(p.relative_to(src)))


def append_line(p: Path, rng: random.Random) -> None:
    with open(p, "ab") as f:
        f.write(f"\n// edited {rng.randrange(1 << 30)}\n".encode())


def edit_one(src: Path) -> str:
    files = small_files(src)
    p = files[len(files) // 2]
    append_line(p, random.Random(1))
    return str(p.relative_to(src))


def edit_spread(src: Path, count: int = 100) -> str:
    rng = random.Random(2)
    files = small_files(src)
    step = len(files) / count
    picks = sorted({files[int(i * step + rng.random() * step)] for i in range(count)})
    for p in picks:
        append_line(p, rng)
    return f"{len(picks)} files, {picks[0].relative_to(src)} ... {picks[-1].relative_to(src)}"


def edit_add_package(src: Path, nfiles: int = 50) -> str:
    """A new package (package.json + JS-like files in lib/, dist/, types/): bytes sliced from the tree's own
    small files, so it compresses like the rest (none of it is a whole existing file)."""
    rng = random.Random(3)
    top = src / "node_modules" if (src / "node_modules").is_dir() else src
    pkg = top / "zz-added-package-3"
    files = small_files(src)
    pool = b"".join(p.read_bytes() for p in (rng.choice(files) for _ in range(64)))
    for i in range(nfiles):
        sub = ["", "lib/", "dist/", "types/"][i % 4] if i else ""
        name = "package.json" if i == 0 else f"{sub}f{i:03d}.js"
        size = min(SMALL - 1, max(100, int(rng.lognormvariate(7.8, 1.0))))
        off = rng.randrange(0, max(1, len(pool) - size))
        dest = pkg / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(pool[off : off + size])
    return f"{nfiles} files in {pkg.relative_to(src)}"


EDITS = [
    ("initial import", None),
    ("1 file modified", edit_one),
    ("100 files modified", edit_spread),
    ("package added (50 files)", edit_add_package),
    ("nothing changed", lambda src: "-"),
]
SECOND_WS = "2nd workspace, same tree"


# -- the tools ----------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir) / args.label
        self.src = self.work / "src"
        self.timeout = args.step_timeout
        base = {k: v for k, v in os.environ.items() if not k.startswith(("WSFS_", "GIT_", "RESTIC_"))}
        self.wsfs_env = {**base, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), base.get("PYTHONPATH")) if p),
                         "WSFS_REPO": str(self.work / "wsfs-repo"), "WSFS_CACHE_DIR": str(self.work / "wsfs-cache")}
        self.git_env = {**base, "GIT_DIR": str(self.work / "git"), "GIT_WORK_TREE": str(self.src),
                        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
                        "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
                        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
        self.restic_env = {**base, "RESTIC_REPOSITORY": str(self.work / "restic"), "RESTIC_PASSWORD": "bench",
                           "RESTIC_CACHE_DIR": str(self.work / "restic-cache")}
        self.tar_dir = self.work / "tar"
        self.reader: Repository | None = None
        self.reader_seen: set[bytes] = set()
        self.results: dict[str, dict[str, dict[str, Any]]] = {}  # edit -> tool -> numbers
        self.remounts: dict[str, dict[str, Any]] = {}  # edit -> wsfs reader numbers
        self.wsfs_version = 0

    # setup

    def prepare(self) -> dict[str, Any]:
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        t0 = time.perf_counter()
        subprocess.run(["cp", "-a", self.args.tree, str(self.src)], check=True)
        copy_s = time.perf_counter() - t0
        nfiles = nlinks = ndirs = 0
        for _dp, dirs, names in os.walk(self.src):
            ndirs += len(dirs)
            for n in names:
                m = os.lstat(os.path.join(_dp, n)).st_mode
                nfiles += stat.S_ISREG(m)
                nlinks += stat.S_ISLNK(m)
        size, _ = dir_usage(self.src)
        time.sleep(RACY)  # the copies' ctimes leave the stat cache's racy window
        # warm the page cache for every tool alike (the copy did most of it)
        subprocess.run(f"tar -C {self.src} -cf - . > /dev/null", shell=True, check=True)
        tree = {"path": self.args.tree, "files": nfiles, "symlinks": nlinks, "dirs": ndirs + 1, "bytes": size,
                "copy_seconds": round(copy_s, 2)}
        print(f"tree {self.args.tree}: {nfiles:,} files, {nlinks:,} symlinks, {ndirs + 1:,} directories, "
              f"{fmt_bytes(size)}; working copy {self.src}", flush=True)
        for tool in self.args.tools:
            getattr(self, f"init_{tool}")()
        return tree

    def init_wsfs(self) -> None:
        run([sys.executable, "-m", "wsfs", "init", "-q"], self.wsfs_env, self.timeout)
        self.reader = Repository.open_url(str(self.work / "wsfs-repo"), str(self.work / "wsfs-reader-cache"))

    def init_git(self) -> None:
        run(["git", "init", "-q"], self.git_env, self.timeout)
        for k, v in (("gc.auto", "0"), ("core.autocrlf", "false"), ("commit.gpgsign", "false")):
            run(["git", "config", k, v], self.git_env, self.timeout)

    def init_restic(self) -> None:
        run(["restic", "init", "-q"], self.restic_env, self.timeout)

    def init_tar(self) -> None:
        self.tar_dir.mkdir()

    # one snapshot per tool

    def snap_wsfs(self, edit: str, ws: str = "demo", cache: str | None = None) -> dict[str, Any]:
        env = dict(self.wsfs_env)
        if cache:
            env["WSFS_CACHE_DIR"] = cache
        before, nb = dir_usage(self.work / "wsfs-repo")
        p, wall, cpu = run([sys.executable, "-m", "wsfs", "push", "-q", "--json", str(self.src), ws], env,
                           self.timeout)
        after, na = dir_usage(self.work / "wsfs-repo")
        j = json.loads(p.stdout)
        req = j["store"]["requests"]
        return {"bytes": j["store"]["bytes_out"], "objects": req.get("put", 0), "seconds": wall, "cpu": cpu,
                "repo_growth": after - before, "repo_new_files": na - nb, "requests": req,
                "push_seconds": j["seconds"], "files": j["stats"]["files"], "unread_files": j["stats"]["unread_files"],
                "version": j["version"], "manifest": j["manifest"]}

    def snap_git(self, edit: str) -> dict[str, Any]:
        objects = self.work / "git" / "objects"
        before, nb = dir_usage(objects)
        _, wall, cpu = run("git add -A && git commit -q --allow-empty -m x", self.git_env, self.timeout, shell=True,
                           cwd=str(self.src))
        after, na = dir_usage(objects)
        out = {"bytes": after - before, "objects": na - nb, "seconds": wall, "cpu": cpu}
        if edit == EDITS[0][0]:
            p, _, _ = run(["git", "ls-files", "-z"], self.git_env, self.timeout, cwd=str(self.src))
            out["tracked"] = p.stdout.count("\0")
        return out

    def snap_restic(self, edit: str) -> dict[str, Any]:
        repo = self.work / "restic"
        before, nb = dir_usage(repo)
        p, wall, cpu = run(["restic", "backup", "--json", "--host", "bench", str(self.src)], self.restic_env,
                           self.timeout)
        after, na = dir_usage(repo)
        summary: dict[str, Any] = {}
        for line in p.stdout.splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if d.get("message_type") == "summary":
                summary = d
        keep = ("files_new", "files_changed", "files_unmodified", "data_blobs", "tree_blobs", "data_added",
                "total_duration")
        return {"bytes": after - before, "objects": na - nb, "seconds": wall, "cpu": cpu,
                "summary": {k: summary.get(k) for k in keep}}

    def snap_tar(self, edit: str) -> dict[str, Any]:
        for old in self.tar_dir.iterdir():  # only the latest archive is kept (each is uploaded whole)
            old.unlink()
        out = self.tar_dir / "tree.tar.zst"
        _, wall, cpu = run(f"set -o pipefail; tar -C '{self.src}' -cf - . | zstd -3 -T0 -q -o '{out}'", os.environ.copy(),
                           self.timeout, shell=True)
        return {"bytes": out.stat().st_size, "objects": 1, "seconds": wall, "cpu": cpu}

    # wsfs: what a host with version N cached fetches to open (and read) N+1

    def remount(self, ws: str, n: int) -> dict[str, Any]:
        repo = self.reader
        assert repo is not None
        stats = repo.store.stats
        s0 = stats.snapshot()
        t0 = time.perf_counter()
        record = repo.record(ws, n)
        with repo.open_manifest(record):
            pass
        t1 = time.perf_counter()
        s1 = stats.snapshot()
        ranges, packs = repo.version_refs(record)  # pieces now cached: no request
        places = dict(zip((r.id for r in packs), repo.pack_places(record, len(packs)), strict=True))  # its map: a GET
        want: dict[bytes, int | None] = {r.id: r.size for r in packs}
        for entries in repo.version_ranges(ranges):
            for e in entries:
                for c in e.chunks:
                    if c != ZERO_ID:
                        want.setdefault(c, None)
        s2 = stats.snapshot()
        new = [(c, size) for c, size in want.items() if c not in self.reader_seen]
        for c, size in new:
            repo.get_blob(c, size, "pack" if size is not None else "chunk", place=places.get(c))
        t2 = time.perf_counter()
        s3 = stats.snapshot()
        self.reader_seen.update(want)

        def gets(a: dict[str, Any], b: dict[str, Any]) -> int:
            return b["requests"].get("get", 0) - a["requests"].get("get", 0)

        return {"meta_gets": gets(s0, s1), "meta_bytes": s1["bytes_in"] - s0["bytes_in"],
                "meta_seconds": t1 - t0, "extra_gets": gets(s1, s2),
                "content_gets": gets(s2, s3), "content_bytes": s3["bytes_in"] - s2["bytes_in"],
                "content_seconds": t2 - t1, "objects_in_version": len(want) + len(ranges),
                "new_content_objects": len(new)}

    # the sequence

    def measure(self) -> None:
        for edit, fn in EDITS:
            what = fn(self.src) if fn else "-"
            if fn:
                time.sleep(RACY)
            print(f"\n== {edit}: {what}", flush=True)
            row = self.results.setdefault(edit, {})
            for tool in self.args.tools:
                try:
                    row[tool] = getattr(self, f"snap_{tool}")(edit)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"  {tool}: FAILED: {e}", flush=True)
                    row[tool] = {"error": str(e)[:2000]}
                    continue
                r = row[tool]
                extra = ""
                if tool == "wsfs":
                    extra = (f"  (HEAD {r['requests'].get('head', 0)}, files read "
                             f"{r['files'] - r['unread_files']:,} of {r['files']:,}, repo +{fmt_bytes(r['repo_growth'])})")
                    self.wsfs_version = r["version"]
                if tool == "restic":
                    extra = f"  (restic: {r['summary']})"
                print(f"  {tool:7s} {fmt_bytes(r['bytes']):>11s}  {r['objects']:>6,} objects  "
                      f"{r['seconds']:6.2f} s  cpu {r['cpu']:6.2f} s{extra}", flush=True)
            if "wsfs" in self.args.tools and "error" not in row.get("wsfs", {"error": 1}):
                rm = self.remount("demo", self.wsfs_version)
                self.remounts[edit] = rm
                print(f"  wsfs re-mount of v{self.wsfs_version}: metadata {rm['meta_gets']} GETs "
                      f"{fmt_bytes(rm['meta_bytes'])}, new content {rm['content_gets']} GETs "
                      f"{fmt_bytes(rm['content_bytes'])}", flush=True)
        if "wsfs" in self.args.tools:
            print(f"\n== {SECOND_WS} (wsfs only: workspace 'other', fresh cache)", flush=True)
            r = self.snap_wsfs(SECOND_WS, "other", str(self.work / "wsfs-cache2"))
            self.results[SECOND_WS] = {"wsfs": r}
            print(f"  wsfs    {fmt_bytes(r['bytes']):>11s}  {r['objects']:>6,} objects  {r['seconds']:6.2f} s  "
                  f"(files read {r['files'] - r['unread_files']:,})", flush=True)
            rm = self.remount("other", r["version"])
            self.remounts[SECOND_WS] = rm
            print(f"  wsfs open of other@{r['version']} on the host that has demo: {rm['meta_gets']} GETs "
                  f"{fmt_bytes(rm['meta_bytes'])}, content {rm['content_gets']} GETs", flush=True)

    def final_sizes(self, gc: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "wsfs" in self.args.tools:
            out["wsfs repository"] = dir_usage(self.work / "wsfs-repo")[0]
        if "git" in self.args.tools:
            out["git objects (loose)"] = dir_usage(self.work / "git" / "objects")[0]
            if gc:
                _, wall, _ = run(["git", "gc", "-q"], self.git_env, self.timeout * 4, cwd=str(self.src))
                out["git objects after git gc"] = dir_usage(self.work / "git" / "objects")[0]
                out["git gc seconds"] = round(wall, 2)
        if "restic" in self.args.tools:
            out["restic repository"] = dir_usage(self.work / "restic")[0]
        if "tar" in self.args.tools:
            out["tar.zst x versions"] = sum(r["tar"]["bytes"] for r in self.results.values() if "tar" in r
                                             and "bytes" in r["tar"])
        return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run 1's numbers, with the median of every run's seconds and CPU seconds (each run's list kept);
    sizes that differ between runs are listed as ``<key>_runs``."""
    out: dict[str, dict[str, Any]] = {}
    for edit, row in runs[0]["results"].items():
        out[edit] = {}
        for tool, r in row.items():
            all_r = [run["results"].get(edit, {}).get(tool, {}) for run in runs]
            agg = dict(r)
            if "error" not in r:
                for key in ("seconds", "cpu", "push_seconds"):
                    if key in r:
                        vals = [x[key] for x in all_r if key in x]
                        agg[key] = statistics.median(vals)
                        agg[f"{key}_runs"] = [round(v, 3) for v in vals]
                for key in ("bytes", "objects"):
                    vals = [x.get(key) for x in all_r]
                    if len(set(vals)) > 1:
                        agg[f"{key}_runs"] = vals
            out[edit][tool] = agg
    return out


# -- report -------------------------------------------------------------------------


def cell(r: dict[str, Any] | None, key: str, f: Any) -> str:
    if r is None:
        return ""
    if "error" in r:
        return "FAILED"
    if f is None:  # a median and its range
        runs = r.get(f"{key}_runs", [])
        return fmt_s(r[key]) + (f" ({min(runs):.2f}-{max(runs):.2f})" if len(runs) > 1 else "")
    return f(r[key])


def report(res: dict[str, Any]) -> None:
    tools = res["tools"]
    edits = list(res["results"])
    print("\n## What each version cost\n")
    print(f"Tree: {res['tree']['path']} ({res['tree']['files']:,} files, {res['tree']['symlinks']:,} symlinks, "
          f"{res['tree']['dirs']:,} directories, {fmt_bytes(res['tree']['bytes'])}).\n")
    for title, key, f in (("bytes added (wsfs: uploaded; git, restic: repository growth; tar: archive)", "bytes",
                           fmt_bytes),
                          ("objects written (wsfs: PUTs; git: loose objects; restic: files; tar: 1)", "objects",
                           lambda x: f"{x:,}"),
                          (f"seconds (wall, warm page cache; median of {res['runs']} runs, min-max)", "seconds",
                           None),
                          ("CPU seconds (user+sys)", "cpu", fmt_s)):
        print(f"### {title}\n")
        print("| edit | " + " | ".join(tools) + " |")
        print("|---|" + "---:|" * len(tools))
        for e in edits:
            row = res["results"][e]
            print(f"| {e} | " + " | ".join(cell(row.get(t), key, f) for t in tools) + " |")
        print()
    others = [t for t in tools if t != "wsfs"]
    if "wsfs" in tools and others:
        print("### bytes added / wsfs bytes uploaded (above 1: wsfs stores less)\n")
        print("| edit | " + " | ".join(others) + " |")
        print("|---|" + "---:|" * len(others))
        for e in edits:
            row = res["results"][e]
            w = row.get("wsfs", {}).get("bytes")
            cells = []
            for t in others:
                b = row.get(t, {}).get("bytes")
                cells.append(f"{b / w:.2f}" if w and b is not None else "")
            print(f"| {e} | " + " | ".join(cells) + " |")
        print()
    if "wsfs" in tools:
        print("### wsfs detail\n")
        print("| edit | PUTs | HEADs | bytes uploaded | repository growth | files read / files | push s (own) "
              "| re-mount: metadata GETs, bytes | re-mount: new content GETs, bytes |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for e in edits:
            r = res["results"][e].get("wsfs")
            if not r or "error" in r:
                continue
            rm = res["remount"].get(e, {})
            meta = f"{rm['meta_gets']}, {fmt_bytes(rm['meta_bytes'])}" if rm else ""
            cont = f"{rm['content_gets']}, {fmt_bytes(rm['content_bytes'])}" if rm else ""
            print(f"| {e} | {r['objects']:,} | {r['requests'].get('head', 0):,} | {fmt_bytes(r['bytes'])} | "
                  f"{fmt_bytes(r['repo_growth'])} | {r['files'] - r['unread_files']:,} / {r['files']:,} | "
                  f"{r['push_seconds']:.2f} | {meta} | {cont} |")
        print("\nre-mount: a host that has opened (and read all of) the previous version opens this one "
              "(`open_manifest`: record, top, listings, ranges it lacks) and reads every file "
              "(packs and chunks it lacks). Initial import: a cold host. 2nd workspace: the host that has "
              "`demo` opens `other@1`.\n")
    if "restic" in tools:
        print("### restic's own summary\n")
        print("| edit | files new / changed / unmodified | data_added (restic) |")
        print("|---|---:|---:|")
        for e in edits:
            r = res["results"][e].get("restic")
            if r and "summary" in r:
                s = r["summary"]
                print(f"| {e} | {s['files_new']} / {s['files_changed']} / {s['files_unmodified']} | "
                      f"{fmt_bytes(s['data_added'])} |")
        print()
    varied = [(e, t, k, r[k]) for e, row in res["results"].items() for t, r in row.items()
              for k in ("bytes_runs", "objects_runs")
              if k in r and None not in r[k] and max(r[k]) - min(r[k]) > 0.01 * max(r[k])]
    if varied:  # timestamps in records and commits make a few bytes differ in any case
        print("### sizes that differed by more than 1% between runs (run 1's are shown above)\n")
        for e, t, k, v in varied:
            print(f"* {e}, {t}, {k[:-5]}: {v}")
        print()
    print("### repository size after the sequence (run 1)\n")
    for k, v in res["final"].items():
        print(f"* {k}: {v if 'seconds' in k else fmt_bytes(v)}")
    print()


def plot(res: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is missing (pip install matplotlib); no plots", file=sys.stderr)
        return []
    out.mkdir(parents=True, exist_ok=True)
    tools = res["tools"]
    edits = list(res["results"])
    colors = {"wsfs": "#1f77b4", "git": "#d62728", "restic": "#2ca02c", "tar": "#7f7f7f"}
    label = res["label"]
    written = []
    for key, ylabel, title, log in (
        ("bytes", "bytes added (log scale)", "bytes a version adds", True),
        ("seconds", "seconds (wall, log scale)", "time to make a version", True),
        ("objects", "objects written (log scale)", "objects a version writes (wsfs: PUTs)", True),
    ):
        fig, ax = plt.subplots(figsize=(10, 4.8))
        width = 0.8 / len(tools)
        for i, t in enumerate(tools):
            xs, ys = [], []
            for j, e in enumerate(edits):
                r = res["results"][e].get(t)
                if r and key in r:
                    xs.append(j + (i - (len(tools) - 1) / 2) * width)
                    ys.append(max(r[key], 1e-3 if key == "seconds" else 1))
            bars = ax.bar(xs, ys, width, label=t, color=colors.get(t))
            for b, y in zip(bars, ys, strict=True):
                txt = fmt_bytes(y) if key == "bytes" else (f"{y:.2f}" if key == "seconds" else f"{int(y):,}")
                ax.annotate(txt, (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=6,
                            rotation=90, xytext=(0, 2), textcoords="offset points")
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(edits)))
        ax.set_xticklabels([e.replace(" (", "\n(") for e in edits], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {label} ({res['tree']['files']:,} files, {fmt_bytes(res['tree']['bytes'])})")
        ax.legend(fontsize=8)
        ax.margins(y=0.25)
        fig.tight_layout()
        path = out / f"{key}-{label}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=DEFAULT_TREE, help=f"tree to copy and edit (default {DEFAULT_TREE})")
    ap.add_argument("--label", help="name of the run (default: the tree's directory name)")
    ap.add_argument("--workdir", default="/var/tmp/wsfs-bench-versions", help="where the copy and the repositories go")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    ap.add_argument("--step-timeout", type=float, default=900, help="seconds allowed to one command")
    ap.add_argument("--runs", type=int, default=3, help="repeat the whole sequence; median times (default 3)")
    ap.add_argument("--no-gc", action="store_true", help="skip the final git gc (the packed size)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", metavar="FILE", help="write everything measured")
    ap.add_argument("--plot", metavar="DIR", help="write PNG charts (matplotlib)")
    args = ap.parse_args()
    args.tree = os.path.abspath(args.tree)
    args.label = args.label or os.path.basename(args.tree.rstrip("/"))
    want = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in want:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}")
    need = {"git": ["git"], "restic": ["restic"], "tar": ["tar", "zstd"], "wsfs": []}
    args.tools = []
    for t in want:
        missing = [c for c in need[t] if not shutil.which(c)]
        if missing:
            print(f"skipping {t}: {', '.join(missing)} not found (bash bench/setup.sh)", file=sys.stderr)
        else:
            args.tools.append(t)
    if not os.path.isdir(args.tree):
        ap.error(f"no directory {args.tree}")

    versions = {"wsfs": git_commit(), "python": platform.python_version(), "git": tool_version(["git", "--version"]),
                "restic": tool_version(["restic", "version"]), "tar": tool_version(["tar", "--version"]),
                "zstd": tool_version(["zstd", "--version"])}
    machine = {"nproc": os.cpu_count(), "kernel": platform.release(), "loadavg_start": os.getloadavg()}
    print(f"machine: {machine['nproc']} CPUs, kernel {machine['kernel']}, load average {machine['loadavg_start']}")
    print("versions: " + "; ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        print(f"\n######## run {i + 1} of {args.runs}", flush=True)
        b = Bench(args)
        tree = b.prepare()
        b.measure()
        final = b.final_sizes(gc=i == 0 and not args.no_gc)
        runs.append({"results": b.results, "remount": b.remounts, "final": final, "tree": tree})
        if not args.keep:
            shutil.rmtree(b.work, ignore_errors=True)
    machine["loadavg_end"] = os.getloadavg()
    res = {"label": args.label, "tree": runs[0]["tree"], "tools": args.tools, "versions": versions,
           "machine": machine, "runs": len(runs), "results": aggregate(runs), "remount": runs[0]["remount"],
           "final": runs[0]["final"], "all_runs": runs, "seconds_total": round(time.perf_counter() - t0, 1)}
    report(res)
    print(f"load average at the end {machine['loadavg_end']}; whole run {res['seconds_total']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
        print(f"wrote {args.json}")
    if args.plot:
        for p in plot(res, Path(args.plot)):
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
