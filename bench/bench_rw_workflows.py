"""Developer workflows on a read-write mount (``wsfs mount --rw``) vs tmpfs and ext4, in one run.

Issue 13, section "Benchmarks".  Not collected by pytest.  Run from the
repository root, as root (FUSE)::

    PYTHONPATH=src python bench/bench_rw_workflows.py [--dir /var/tmp] [--runs 1] [--json out.json]
        [--steps "git clone,git status,git checkout,tar,rm"] [--no-commit-target]
        [--passthrough-c BIN] [--passthrough-py FILE] [--plot DIR]

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

``--steps`` keeps the steps whose names start with one of the given
prefixes (comma-separated; a step needs the ones it works on: ``git status``
the clone, ``./configure`` the ``tar``); ``--no-commit-target`` leaves out
``wsfs+commit``.

Targets, in this order in every round:

* ``wsfs``: a read-write mount of a small pushed version (local-directory
  repository, state folder and cache under ``--dir``); nothing committed
  until the final ``wsfs commit`` after ``rm -rf`` (so rm removes files that
  exist only in the write layer);
* ``wsfs+commit``: the same, plus a timed ``wsfs commit`` after ``make``
  (publishes everything the workflows made; not in the step sum), so
  ``rm -rf`` removes committed files (whiteouts over the new base);
* ``wsfs+commit S3`` (``--s3``): ``wsfs+commit`` with the repository in S3
  (SeaweedFS, ``tests/support/s3server.py``) behind ``latency_proxy.py`` at
  ``--rtt`` ms;
* ``C passthrough`` (``--passthrough-c BIN``): libfuse's ``passthrough_ll``
  example (C, multi-threaded, its default caching) over a directory under
  ``--dir``: what a FUSE file system in C that only forwards each request
  costs on this kernel, the floor for the per-request ratios.  Built from
  the libfuse source of the installed version (``example/passthrough_ll.c``
  and ``passthrough_helpers.h``, tag ``fuse-3.14.0``)::

      gcc -O2 -o passthrough_ll passthrough_ll.c $(pkg-config fuse3 --cflags --libs)

* ``py passthrough`` (``--passthrough-py FILE``): pyfuse3's
  ``examples/passthroughfs.py`` (in the pyfuse3 sdist) run by this
  interpreter over a directory under ``--dir``: the same with pyfuse3 and trio;
* ``tmpfs``: a directory on ``/dev/shm``; ``ext4``: a directory under ``--dir``.

On the mounts, ``wsfs stats --json`` is read after every step (FUSE
requests by op, the handlers' total time), the daemon's CPU time comes from
``/proc/PID/stat``, and its peak RSS (VmHWM of the pid ``wsfs stats`` names)
is read before unmounting.  Prints seconds per step
and target, ratios wsfs/tmpfs and wsfs/ext4, the overall ratio (sum of the
steps) against the issue's goal (<= 2x tmpfs overall, no step over 5x) and
the load average; exits 0.  The mount is unmounted in ``finally`` (the
daemon, only ours, killed by pid if ``wsfs umount`` fails).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mount import vm_hwm_kib  # noqa: E402

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


STEP_FILTER: list[str] = []  # --steps: name prefixes


def steps(inp: Path, branch: str) -> list[tuple[str, str, str]]:
    """(name, cwd relative to the work dir, shell command), those ``--steps`` keeps."""
    return [s for s in _all_steps(inp, branch) if not STEP_FILTER or any(s[0].startswith(p) for p in STEP_FILTER)]


def _all_steps(inp: Path, branch: str) -> list[tuple[str, str, str]]:
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
    def __init__(self, base: Path, repo: str | None = None, env: dict[str, str] | None = None) -> None:
        self.base = base
        self.env = {**os.environ, **(env or {}), "WSFS_REPO": repo or str(base / "repo"),
                    "WSFS_CACHE_DIR": str(base / "cache")}
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


def _more_fds() -> None:
    """passthrough_ll keeps a descriptor per inode the kernel knows: 30,000 files need more than 20,000."""
    import resource

    with contextlib.suppress(ValueError, OSError):  # (raising the hard limit needs root)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))


class Passthrough:
    """A passthrough FUSE file system over *base*/src at *base*/mnt, run in the foreground by us (its pid is ours)."""

    def __init__(self, base: Path, argv: list[str]) -> None:
        self.src, self.mnt = base / "src", base / "mnt"
        self.src.mkdir(parents=True)
        self.mnt.mkdir()
        self.proc = subprocess.Popen([*(a.replace("{src}", str(self.src)) for a in argv), str(self.mnt)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_more_fds)
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{argv[0]} did not mount: {self.proc.stderr.read().decode()[-500:]}")
            time.sleep(0.05)

    def close(self) -> None:
        try:
            if os.path.ismount(self.mnt):
                subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # only the process we started
                self.proc.wait()
        finally:
            if os.path.ismount(self.mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)


def c_passthrough_argv(binary: str) -> list[str]:
    """How :class:`Passthrough` runs libfuse's ``passthrough_ll`` built at *binary*."""
    return [binary, "-f", "-o", "source={src}"]


def one_passthrough(base: Path, inp: Path, branch: str, argv: list[str]) -> dict:
    pt = Passthrough(base, argv)
    try:
        return run_target(pt.mnt, inp, branch, None)
    finally:
        pt.close()


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_target(root: Path, inp: Path, branch: str, w: Wsfs | None, commit_before_rm: bool = False) -> dict:
    work = root / "work"
    work.mkdir()
    (work / "npm").mkdir()
    shutil.copy(inp / "npm-proj" / "package.json", work / "npm")
    shutil.copy(inp / "npm-proj" / "package-lock.json", work / "npm")
    out: dict = {"steps": {}, "requests": {}, "handler_s": {}, "daemon_cpu_s": {}, "load": {}, "wsfs": bool(w)}
    prev = w.stats() if w else None
    for name, cwd, cmd in steps(inp, branch):
        if w and commit_before_rm and name == "rm -rf all":
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
        out["layer_bytes_end"] = st["layer"]["disk_bytes"]
    return out


def one_wsfs(base: Path, inp: Path, branch: str, commit_before_rm: bool, repo: str | None = None,
             env: dict[str, str] | None = None) -> dict:
    base.mkdir()
    w = Wsfs(base, repo, env)
    try:
        w.mount()
        return run_target(w.mnt, inp, branch, w, commit_before_rm)
    finally:
        w.umount()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/var/tmp", help="ext4 directory for the ext4 target and wsfs's state/cache")
    ap.add_argument("--shm", default="/dev/shm")
    ap.add_argument("--inputs", default="/var/tmp/wsfs-bench-inputs")
    ap.add_argument("--git-source", default="file:///work/.mirror/pallets+click/repo")
    ap.add_argument("--runs", type=int, default=1, help="rounds over the targets (median reported)")
    ap.add_argument("--s3", action="store_true",
                    help="also a mount whose repository is in SeaweedFS behind latency_proxy.py (--rtt ms)")
    ap.add_argument("--rtt", type=float, default=20.0)
    ap.add_argument("--json")
    ap.add_argument("--steps", default="", help="comma-separated prefixes of the step names to run (default: all)")
    ap.add_argument("--no-commit-target", action="store_true", help="leave out the wsfs+commit target")
    ap.add_argument("--passthrough-c", metavar="BIN", help="also libfuse's passthrough_ll built at BIN (see above)")
    ap.add_argument("--passthrough-py", metavar="FILE", help="also pyfuse3's examples/passthroughfs.py at FILE")
    ap.add_argument("--plot", metavar="DIR", help="write rw_workflows.png to DIR (rw_plots.py, needs matplotlib)")
    a = ap.parse_args()
    if a.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("--plot needs matplotlib (pip install matplotlib)") from None
    STEP_FILTER[:] = [p.strip() for p in a.steps.split(",") if p.strip()]
    inp = Path(a.inputs)
    info = prepare_inputs(inp, a.git_source)
    print(f"# bench_rw_workflows: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, "
          f"load at start {loadavg()}")
    print(f"# git: {info['git_commits']} commits on {info['git_branch']}; npm: {', '.join(NPM_DEPS)}; "
          f"wheels: {len(list((inp / 'wheels').glob('*.whl')))}; C: pjdfstest")
    print("# targets: wsfs = rw mount, local-directory repository, no commit until the end (the final commit "
          "after rm -rf);\n#   wsfs+commit = the same, plus `wsfs commit` after make (timed apart, not in the "
          "sum), so rm -rf removes committed (base) files;"
          + (f"\n#   wsfs+commit S3 = wsfs+commit with the repository in S3 (SeaweedFS) at {a.rtt:g} ms RTT"
             if a.s3 else ""))
    stack = contextlib.ExitStack()
    s3_env = None
    base_all = Path(tempfile.mkdtemp(prefix="wsfs-bench-wf-", dir=a.dir))
    rounds: list[dict[str, dict]] = []
    try:
        if a.s3:
            here = Path(__file__).resolve().parent
            sys.path[:0] = [str(here), str(here.parent / "tests")]
            from latency_proxy import LatencyProxy

            from support.s3server import seaweedfs_server, server_env
            s3 = stack.enter_context(seaweedfs_server(base_all / "s3"))
            proxy = stack.enter_context(LatencyProxy(int(s3.endpoint_url.rsplit(":", 1)[1]), a.rtt))
            s3_env = server_env(proxy.url)
            s3_bucket = s3.bucket
        for r in range(a.runs):
            res: dict[str, dict] = {}
            rb = base_all / f"r{r}"
            rb.mkdir()
            shm = Path(tempfile.mkdtemp(prefix="wsfs-bench-wf-", dir=a.shm))
            try:
                log(f"round {r + 1}: wsfs rw mount, no commit before rm")
                res["wsfs"] = one_wsfs(rb / "w1", inp, info["git_branch"], False)
                if not a.no_commit_target:
                    log(f"round {r + 1}: wsfs rw mount, commit before rm")
                    res["wsfs+commit"] = one_wsfs(rb / "w2", inp, info["git_branch"], True)
                if a.s3:
                    log(f"round {r + 1}: wsfs rw mount, S3 at {a.rtt:g} ms, commit before rm")
                    res["wsfs+commit S3"] = one_wsfs(rb / "w3", inp, info["git_branch"], True,
                                                     f"s3://{s3_bucket}/wf-{r}", s3_env)
                if a.passthrough_c:
                    log(f"round {r + 1}: C passthrough ({a.passthrough_c})")
                    res["C passthrough"] = one_passthrough(rb / "pc", inp, info["git_branch"],
                                                           c_passthrough_argv(a.passthrough_c))
                if a.passthrough_py:
                    log(f"round {r + 1}: pyfuse3 passthrough ({a.passthrough_py})")
                    res["py passthrough"] = one_passthrough(rb / "pp", inp, info["git_branch"],
                                                            [sys.executable, a.passthrough_py, "{src}"])
                log(f"round {r + 1}: tmpfs")
                res["tmpfs"] = run_target(shm, inp, info["git_branch"], None)
                log(f"round {r + 1}: ext4")
                (rb / "ext4").mkdir()
                res["ext4"] = run_target(rb / "ext4", inp, info["git_branch"], None)
            finally:
                shutil.rmtree(shm, ignore_errors=True)
                shutil.rmtree(rb, ignore_errors=True)
            rounds.append(res)
    finally:
        stack.close()
        shutil.rmtree(base_all, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"info": info, "rounds": rounds}, indent=1))
    report(rounds, a)
    if a.plot:
        from rw_plots import plot
        print(f"plot: {plot({'info': info, 'rounds': rounds}, Path(a.plot))}")
    return 0


def report(rounds: list[dict[str, dict]], a: argparse.Namespace) -> None:
    targets = list(rounds[0])
    ws = [t for t in targets if rounds[0][t]["wsfs"]]
    fuse = [t for t in targets if t not in ("tmpfs", "ext4")]  # the FUSE targets: ratios to tmpfs and ext4
    names = list(rounds[0]["wsfs"]["steps"])

    def med(target: str, step: str) -> float:
        v = sorted(r[target]["steps"][step] for r in rounds)
        return v[len(v) // 2]

    print(f"\nseconds per step (median of {a.runs} round(s)); ratios > 1: wsfs slower")
    head = " | ".join(targets)
    rat = " | ".join(f"{t}/tmpfs | {t}/ext4" for t in fuse)
    print(f"| step | {head} | {rat} |")
    print("|---|" + "---:|" * (len(targets) + 2 * len(fuse)))
    tot = {t: 0.0 for t in targets}
    worst = {t: (0.0, "") for t in fuse}
    for s in names:
        v = {t: med(t, s) for t in targets}
        for t in targets:
            tot[t] += v[t]
        for t in fuse:
            rt = v[t] / v["tmpfs"]
            if rt > worst[t][0]:
                worst[t] = (rt, s)
        cells = " | ".join(f"{v[t]:.2f}" for t in targets)
        rc = " | ".join(f"{v[t] / v['tmpfs']:.2f} | {v[t] / v['ext4']:.2f}" for t in fuse)
        print(f"| {s} | {cells} | {rc} |")
    cells = " | ".join(f"**{tot[t]:.2f}**" for t in targets)
    rc = " | ".join(f"**{tot[t] / tot['tmpfs']:.2f}** | **{tot[t] / tot['ext4']:.2f}**" for t in fuse)
    print(f"| **total** | {cells} | {rc} |")
    print()
    for t in fuse:
        ov = tot[t] / tot["tmpfs"]
        print(f"goal (issue 13), {t}: overall <= 2x tmpfs: {ov:.2f}x -> {'met' if ov <= 2 else 'NOT met'}; "
              f"no step over 5x: worst {worst[t][0]:.2f}x ({worst[t][1]}) -> "
              f"{'met' if worst[t][0] <= 5 else 'NOT met'}")
    print()
    for t in ws:
        for i, r in enumerate(rounds):
            x = r[t]
            line = f"{t}, round {i + 1}: "
            if "commit_all_s" in x:
                line += (f"commit after make (layer {x['layer_bytes_before_commit'] / 1e6:.0f} MB on disk): "
                         f"{x['commit_all_s']:.2f} s [{x['commit_all_msg']}]; ")
            line += (f"final commit after rm -rf: {x['commit_final_s']:.2f} s [{x['commit_final_msg']}]; "
                     f"daemon peak RSS (VmHWM) {x['vm_hwm_kib'] / 1024:.0f} MiB; layer at end "
                     f"{x['layer_bytes_end'] / 1e6:.1f} MB; daemon errors {x['errors']}")
            print(line)
    last = rounds[-1]
    for t in ws:
        x = last[t]
        print(f"\nFUSE requests, daemon CPU and handler time per step ({t}, last round; top ops):")
        for s in names:
            req = x["requests"][s]
            top = ", ".join(f"{k} {v}" for k, v in list(req.items())[:7])
            print(f"  {s:<24} {sum(req.values()):>7} req, CPU {x['daemon_cpu_s'][s]:5.1f} s, handlers "
                  f"{x['handler_s'][s]:5.1f} s ({top})")
        print(f"  {'total':<24} {sum(sum(q.values()) for q in x['requests'].values()):>7} req, CPU "
              f"{sum(x['daemon_cpu_s'].values()):5.1f} s, handlers {sum(x['handler_s'].values()):5.1f} s")
    print("\nload average (1/5/15 min) after each step, last round:")
    print("  " + " / ".join(targets))
    for s in names:
        print(f"  {s:<24} " + " / ".join(last[t]["load"][s] for t in targets))
    print(f"load at end {loadavg()}")


if __name__ == "__main__":
    sys.exit(main())
