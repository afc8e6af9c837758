"""Developer workflows on a read-write mount (``wsfs mount --rw``) vs tmpfs and ext4, in one run.

Issue 13, section "Benchmarks".  Not collected by pytest.  Run from the
repository root, as root (FUSE)::

    PYTHONPATH=src python bench/bench_rw_workflows.py [--dir /var/tmp] [--runs 1] [--json out.json]

Inputs are prepared once, outside every timed region, and cached under
``--inputs`` (default ``/var/tmp/wsfs-bench-inputs``) so reruns are fast:

* ``click.git``: a bare copy of a real repository with a long history
  (``--git-source``, default the local mirror of pallets/click, ~3,300
  commits, 31k objects, 34 MB pack);
* ``npm-proj`` + ``npm-cache``: a package.json with a few popular
  dependencies, its package-lock (``npm install --package-lock-only``) and an
  npm cache filled by one ``npm ci --cache`` (needs the npm registry once);
* ``wheels``: ``pip download`` of a few pure-Python wheels (needs PyPI once);
* ``pjdfstest-autoreconf.tar.gz``: the pjdfstest source archive from
  ``/work/shared/tools/posix-suites`` after ``autoreconf -ifs``.

Timed steps, in this order, each in the same fresh directory of the target
(wall time of the command; caches are warm, nothing is dropped):

1. ``git clone --no-hardlinks file://.../click.git``; ``git status``;
   ``git checkout`` of an old tag (7.0) and back to the default branch;
   ``git log --oneline | wc -l``;
2. ``npm ci --offline --cache CACHE --no-audit --no-fund``;
3. ``python3 -m venv v`` then ``v/bin/pip install --no-index --find-links
   WHEELS --no-cache-dir`` of the wheels;
4. ``tar -xzf`` of the pjdfstest tree, ``./configure``, ``make -j2``;
5. ``rm -rf`` of everything.

Targets: a read-write mount of a small pushed version (local-directory
repository, state folder and cache under ``--dir``), a directory on tmpfs
(``/dev/shm``) and a directory under ``--dir`` (ext4 here).  On the mount,
``wsfs stats --json`` is read after every step (FUSE requests by op and the
daemon's handler time), ``wsfs commit`` is timed twice: after step 4 (it
publishes everything the workflows made) and after ``rm -rf`` (the final
commit: it publishes the deletions), and the daemon's peak RSS (VmHWM of the
pid ``wsfs stats`` names) is read before unmounting.  Prints seconds per step
and target, ratios wsfs/tmpfs and wsfs/ext4, the overall ratio (sum of the
steps) against the issue's goal (<= 2x tmpfs overall, no step over 5x) and
the load average; exits 0.  The mount is unmounted in ``finally`` (the
daemon, only ours, killed by pid if ``wsfs umount`` fails).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WHEELS = ("requests rich attrs six idna urllib3 certifi charset-normalizer pygments markdown-it-py mdurl").split()
NPM_DEPS = {"typescript": "5.4.5", "express": "4.19.2", "lodash": "4.17.21", "react": "18.3.1",
            "react-dom": "18.3.1", "eslint": "8.57.0", "webpack": "5.91.0"}
OLD_TAG = "7.0"
PJD_GLOB = "/work/shared/tools/posix-suites/pjdfstest-*.tar.gz"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def sh(cmd: str, cwd: Path, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True)
    t = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd!r} in {cwd} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-2000:]}")
    return t


# -- inputs -----------------------------------------------------------------------------


def prepare_inputs(inp: Path, git_source: str) -> dict[str, str]:
    inp.mkdir(parents=True, exist_ok=True)
    info: dict[str, str] = {}
    git = inp / "click.git"
    if not git.exists():
        log(f"inputs: copying {git_source} -> {git}")
        subprocess.run(["git", "clone", "-q", "--bare", "--no-hardlinks", git_source, str(git)], check=True)
    info["git_commits"] = subprocess.run(["git", "-C", str(git), "rev-list", "--count", "HEAD"],
                                         capture_output=True, text=True, check=True).stdout.strip()
    info["git_branch"] = subprocess.run(["git", "-C", str(git), "symbolic-ref", "--short", "HEAD"],
                                        capture_output=True, text=True, check=True).stdout.strip()
    proj = inp / "npm-proj"
    if not (proj / "package-lock.json").exists() or not (inp / "npm-cache").exists():
        log("inputs: npm package-lock and cache (needs the npm registry once)")
        proj.mkdir(exist_ok=True)
        (proj / "package.json").write_text(json.dumps({"name": "wsfs-bench-npm", "version": "1.0.0",
                                                       "private": True, "dependencies": NPM_DEPS}))
        subprocess.run("npm install --package-lock-only --no-audit --no-fund", shell=True, cwd=proj,
                       check=True, capture_output=True)
        tmp = Path(tempfile.mkdtemp(prefix="npm-prep-", dir=inp))
        shutil.copy(proj / "package.json", tmp)
        shutil.copy(proj / "package-lock.json", tmp)
        subprocess.run(f"npm ci --cache {inp / 'npm-cache'} --no-audit --no-fund", shell=True, cwd=tmp,
                       check=True, capture_output=True)
        shutil.rmtree(tmp)
    wheels = inp / "wheels"
    if not wheels.exists() or not any(wheels.glob("requests-*.whl")):
        log("inputs: pip download of wheels (needs PyPI once)")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), "--only-binary=:all:",
                        *WHEELS], check=True)
    pjd = inp / "pjdfstest-autoreconf.tar.gz"
    if not pjd.exists():
        log("inputs: pjdfstest + autoreconf")
        import glob
        tmp = Path(tempfile.mkdtemp(prefix="pjd-prep-", dir=inp))
        subprocess.run(["tar", "-xzf", sorted(glob.glob(PJD_GLOB))[-1], "-C", str(tmp)], check=True)
        subprocess.run("autoreconf -ifs", shell=True, cwd=tmp / "pjdfstest", check=True, capture_output=True)
        subprocess.run(["tar", "-czf", str(pjd), "pjdfstest"], cwd=tmp, check=True)
        shutil.rmtree(tmp)
    return info


# -- steps ------------------------------------------------------------------------------


def steps(inp: Path, branch: str) -> list[tuple[str, str, str]]:
    """(name, cwd relative to the work dir, shell command)."""
    npm_cache = inp / "npm-cache"
    return [
        ("git clone", ".", f"git clone -q --no-hardlinks file://{inp / 'click.git'} repo"),
        ("git status", "repo", "git status >/dev/null"),
        ("git checkout old+back", "repo", f"git checkout -q {OLD_TAG} && git checkout -q {branch}"),
        ("git log | wc -l", "repo", "git log --oneline | wc -l >/dev/null"),
        ("npm ci", "npm", f"npm ci --offline --cache {npm_cache} --no-audit --no-fund"),
        ("venv + pip install", ".", f"{sys.executable} -m venv v && v/bin/pip install -q --no-index --no-cache-dir "
                                    f"--disable-pip-version-check --find-links {inp / 'wheels'} {' '.join(WHEELS)}"),
        ("tar -xzf (C project)", ".", f"tar -xzf {inp / 'pjdfstest-autoreconf.tar.gz'}"),
        ("./configure", "pjdfstest", "./configure -q"),
        ("make -j2", "pjdfstest", "make -s -j2"),
        ("rm -rf all", ".", "rm -rf repo npm v pjdfstest"),
    ]


class Wsfs:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.env = {**os.environ, "WSFS_REPO": str(base / "repo"), "WSFS_CACHE_DIR": str(base / "cache")}
        self.mnt = base / "mnt"
        self.pid: int | None = None
        self.mounted = False

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wsfs", *args], env=self.env, capture_output=True, text=True,
                              check=check)

    def mount(self) -> None:
        src = self.base / "src"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "hello").write_bytes(b"hello\n")
        self.run("init")
        self.run("push", str(src), "bench")
        self.mnt.mkdir()
        self.run("mount", "--rw", "-o", f"state_dir={self.base / 'state'},noprofile", "bench", str(self.mnt))
        self.mounted = True
        self.pid = self.stats()["pid"]

    def stats(self) -> dict:
        return json.loads(self.run("stats", "--json", str(self.mnt)).stdout)

    def umount(self) -> None:
        if not self.mounted:
            return
        p = self.run("umount", str(self.mnt), check=False)
        if p.returncode != 0:
            log(f"wsfs umount failed ({p.returncode}): {p.stderr.strip()}; killing daemon {self.pid}")
            if self.pid:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        self.mounted = False


def vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_target(root: Path, inp: Path, branch: str, w: Wsfs | None) -> dict:
    work = root / "work"
    work.mkdir()
    (work / "npm").mkdir()
    shutil.copy(inp / "npm-proj" / "package.json", work / "npm")
    shutil.copy(inp / "npm-proj" / "package-lock.json", work / "npm")
    out: dict = {"steps": {}, "requests": {}, "handler_s": {}, "daemon_cpu_s": {}, "load": {}}
    prev = w.stats() if w else None
    for name, cwd, cmd in steps(inp, branch):
        if w and name == "rm -rf all":
            out["layer_bytes_before_commit"] = w.stats()["layer"]["disk_bytes"]
            t0 = time.perf_counter()
            c = w.run("commit", str(w.mnt), "-m", "workflows")
            out["commit_all_s"] = time.perf_counter() - t0
            out["commit_all_msg"] = c.stdout.strip()
            prev = w.stats()
        c0 = cpu_s(w.pid) if w else 0.0
        out["steps"][name] = sh(cmd, work / cwd)
        out["load"][name] = loadavg()
        if w:
            out["daemon_cpu_s"][name] = cpu_s(w.pid) - c0
            cur = w.stats()
            req = {k: v - prev["requests"].get(k, 0) for k, v in cur["requests"].items()}
            out["requests"][name] = {k: v for k, v in sorted(req.items(), key=lambda kv: -kv[1]) if v}
            out["handler_s"][name] = sum(v.get("total_ms", 0) - prev["latency_us"].get(k, {}).get("total_ms", 0)
                                         for k, v in cur["latency_us"].items()) / 1e3
            prev = cur
        log(f"  {name:<24} {out['steps'][name]:8.2f} s   load {loadavg()}")
    if w:
        t0 = time.perf_counter()
        c = w.run("commit", str(w.mnt), "-m", "rm")
        out["commit_final_s"] = time.perf_counter() - t0
        out["commit_final_msg"] = c.stdout.strip()
        st = w.stats()
        out["errors"] = st.get("errors")
        out["kernel"] = st.get("kernel")
        out["vm_hwm_kib"] = vm_hwm_kib(w.pid)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/var/tmp", help="ext4 directory for the ext4 target and wsfs's state/cache")
    ap.add_argument("--shm", default="/dev/shm")
    ap.add_argument("--inputs", default="/var/tmp/wsfs-bench-inputs")
    ap.add_argument("--git-source", default="file:///work/.mirror/pallets+click/repo")
    ap.add_argument("--runs", type=int, default=1, help="rounds over the three targets (median reported)")
    ap.add_argument("--json")
    a = ap.parse_args()
    inp = Path(a.inputs)
    info = prepare_inputs(inp, a.git_source)
    nfiles = {}
    print(f"# bench_rw_workflows: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, "
          f"load at start {loadavg()}")
    print(f"# git: {info['git_commits']} commits on {info['git_branch']}; npm: {', '.join(NPM_DEPS)}; "
          f"wheels: {len(list((inp / 'wheels').glob('*.whl')))}; C: pjdfstest")
    rounds: list[dict[str, dict]] = []
    for r in range(a.runs):
        res: dict[str, dict] = {}
        base = Path(tempfile.mkdtemp(prefix="wsfs-bench-wf-", dir=a.dir))
        shm = Path(tempfile.mkdtemp(prefix="wsfs-bench-wf-", dir=a.shm))
        w = Wsfs(base)
        try:
            log(f"round {r + 1}: wsfs rw mount")
            w.mount()
            try:
                res["wsfs"] = run_target(w.mnt, inp, info["git_branch"], w)
            finally:
                w.umount()
            log(f"round {r + 1}: tmpfs")
            res["tmpfs"] = run_target(shm, inp, info["git_branch"], None)
            log(f"round {r + 1}: ext4")
            (base / "ext4").mkdir()
            res["ext4"] = run_target(base / "ext4", inp, info["git_branch"], None)
        finally:
            w.umount()
            shutil.rmtree(shm, ignore_errors=True)
            shutil.rmtree(base, ignore_errors=True)
        rounds.append(res)
    names = list(rounds[0]["wsfs"]["steps"])

    def med(target: str, step: str) -> float:
        v = sorted(r[target]["steps"][step] for r in rounds)
        return v[len(v) // 2]

    print(f"\nseconds per step (median of {a.runs} round(s)); ratio > 1: wsfs slower")
    print(f"| step | wsfs rw | tmpfs | ext4 ({a.dir}) | wsfs/tmpfs | wsfs/ext4 | FUSE requests | daemon CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    tot = {"wsfs": 0.0, "tmpfs": 0.0, "ext4": 0.0}
    worst = (0.0, "")
    last = rounds[-1]["wsfs"]
    for s in names:
        v = {t: med(t, s) for t in tot}
        for t in tot:
            tot[t] += v[t]
        rt = v["wsfs"] / v["tmpfs"]
        if rt > worst[0]:
            worst = (rt, s)
        nreq = sum(last["requests"][s].values())
        print(f"| {s} | {v['wsfs']:.2f} | {v['tmpfs']:.2f} | {v['ext4']:.2f} | {rt:.2f} | "
              f"{v['wsfs'] / v['ext4']:.2f} | {nreq} | {last['daemon_cpu_s'][s]:.1f} |")
    print(f"| **total** | **{tot['wsfs']:.2f}** | **{tot['tmpfs']:.2f}** | **{tot['ext4']:.2f}** | "
          f"**{tot['wsfs'] / tot['tmpfs']:.2f}** | **{tot['wsfs'] / tot['ext4']:.2f}** | "
          f"{sum(sum(x.values()) for x in last['requests'].values())} | {sum(last['daemon_cpu_s'].values()):.1f} |")
    ov = tot["wsfs"] / tot["tmpfs"]
    print(f"\ngoal (issue 13): overall <= 2x tmpfs: {ov:.2f}x -> {'met' if ov <= 2 else 'NOT met'}; "
          f"no step over 5x: worst {worst[0]:.2f}x ({worst[1]}) -> {'met' if worst[0] <= 5 else 'NOT met'}")
    print(f"wsfs commit after step 4 (publishes everything, layer {last['layer_bytes_before_commit'] / 1e6:.0f} MB "
          f"on disk): {last['commit_all_s']:.2f} s: {last['commit_all_msg']}")
    print(f"wsfs commit after rm -rf (final): {last['commit_final_s']:.2f} s: {last['commit_final_msg']}")
    hwm = last["vm_hwm_kib"]
    print(f"wsfs daemon peak RSS (VmHWM): {hwm / 1024:.0f} MiB" if hwm else "daemon VmHWM: n/a")
    print(f"daemon errors: {last['errors']}; kernel: {last['kernel']}")
    print("\nFUSE requests per step (wsfs, last round; top ops):")
    for s in names:
        req = last["requests"][s]
        hs = last["handler_s"].get(s)
        top = ", ".join(f"{k} {v}" for k, v in list(req.items())[:7])
        print(f"  {s:<24} {sum(req.values()):>8} ({top})" + (f"; handler time {hs:.1f} s" if hs else ""))
    print(f"\nload average per step (wsfs / tmpfs / ext4, last round):")
    for s in names:
        print(f"  {s:<24} {rounds[-1]['wsfs']['load'][s]} / {rounds[-1]['tmpfs']['load'][s]} / "
              f"{rounds[-1]['ext4']['load'][s]}")
    print(f"load at end {loadavg()}")
    if a.json:
        Path(a.json).write_text(json.dumps({"info": info, "rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
