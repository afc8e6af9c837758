"""Developer workflows on read-write mounts backed by S3: wsfs vs ``rclone mount --vfs-cache-mode writes`` vs s3fs.

Issue 13, "Peers on the same steps ... over the same S3, including the time
until the result is stored in S3".  Not collected by pytest.  Run from the
repository root, as root (FUSE), with rclone and s3fs installed
(``bash bench/setup.sh``)::

    PYTHONPATH=src python bench/bench_rw_peers.py [--rtt 20] [--step-timeout 600] [--targets wsfs,rclone,s3fs,tmpfs]

One SeaweedFS server on loopback (``tests/support/s3server.py``) behind
``latency_proxy.py`` at ``--rtt`` ms per request serves every target, each
under its own prefix.  The steps are ``bench_rw_workflows.py``'s (git clone,
status, checkout, log; npm ci; venv + pip; tar, configure, make; rm -rf),
run in the same order on:

* ``wsfs``: ``wsfs mount --rw`` of a small pushed version; after ``make``,
  ``wsfs commit`` (the result is then a version in S3; timed as "stored");
* ``rclone``: ``rclone mount --vfs-cache-mode writes`` (the mode rclone
  documents for applications that write; uploads go in the background after
  close); "stored" is the time after ``make`` until its VFS reports no upload
  queued or in progress (``rclone rc vfs/stats``);
* ``s3fs``: uploads on close (flush), so every step's end is "stored";
* ``tmpfs``: the floor the ratios are taken against.

A step that fails or takes longer than ``--step-timeout`` ends that target's
run (reported as such; its later steps are not run).  Prints seconds per
step and target, ratios to tmpfs, the "stored" times, and the load average;
exits 0.  Every mount is unmounted in ``finally`` and only the processes this
script started are killed, by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_mount import mounted, peer_command  # noqa: E402
from bench_rw_workflows import loadavg, log, one_wsfs, prepare_inputs, steps  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402

from support.s3server import seaweedfs_server, server_env  # noqa: E402

READY_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_steps(work: Path, inp: Path, branch: str, cap: float, after_make=None) -> dict:
    """The workflow steps in *work*; stops at the first failure or timeout.  *after_make()* -> seconds."""
    (work / "npm").mkdir(parents=True)
    shutil.copy(inp / "npm-proj" / "package.json", work / "npm")
    shutil.copy(inp / "npm-proj" / "package-lock.json", work / "npm")
    out: dict = {"steps": {}, "load": {}}
    for name, cwd, cmd in steps(inp, branch):
        if name == "rm -rf all" and after_make is not None:
            out["stored_s"] = after_make()
            log(f"  {'(stored in S3)':<24} {out['stored_s']:8.2f} s")
        t0 = time.perf_counter()
        try:
            p = subprocess.run(["bash", "-c", cmd], cwd=work / cwd, capture_output=True, timeout=cap,
                               start_new_session=True)
        except subprocess.TimeoutExpired:
            out["stopped"] = f"{name}: over {cap:g} s"
            log(f"  {name:<24} timeout after {cap:g} s: stopping this target")
            return out
        t = time.perf_counter() - t0
        if p.returncode != 0:
            out["stopped"] = f"{name}: failed ({p.returncode}): {p.stderr.decode(errors='replace')[-300:]}"
            log(f"  {name:<24} FAILED after {t:.1f} s: {out['stopped']}")
            return out
        out["steps"][name] = t
        out["load"][name] = loadavg()
        log(f"  {name:<24} {t:8.2f} s   load {loadavg()}")
    return out


@contextlib.contextmanager
def peer_mount(tool: str, endpoint: str, path: str, base: Path, options: tuple[str, ...]):
    mnt = base / "mnt"
    mnt.mkdir(parents=True)
    argv, env = peer_command(tool, endpoint, path, mnt, base, options, read_only=False)
    with open(base / "daemon.out", "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        t0 = time.perf_counter()
        while not mounted(mnt):
            if proc.poll() is not None or time.perf_counter() - t0 > READY_TIMEOUT:
                raise RuntimeError(f"{tool} did not mount: {(base / 'daemon.out').read_bytes()[-800:]!r}")
            time.sleep(0.01)
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()  # ours, by pid
            proc.wait()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def rclone_settled(rc: str, cap: float) -> float:
    """Seconds until rclone's VFS has no upload queued or in progress (``vfs/stats`` over its rc API)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < cap:
        req = urllib.request.Request(f"http://{rc}/vfs/stats", data=b"{}", headers={"Content-Type": "application/json"})
        stats = json.loads(urllib.request.urlopen(req, timeout=30).read())
        dc = stats.get("diskCache", {})
        if dc.get("uploadsInProgress", 0) == 0 and dc.get("uploadsQueued", 0) == 0:
            return time.perf_counter() - t0
        time.sleep(0.2)
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--shm", default="/dev/shm")
    ap.add_argument("--inputs", default="/var/tmp/wsfs-bench-inputs")
    ap.add_argument("--git-source", default="file:///work/.mirror/pallets+click/repo")
    ap.add_argument("--rtt", type=float, default=20.0)
    ap.add_argument("--step-timeout", type=float, default=600.0)
    ap.add_argument("--targets", default="wsfs,rclone,s3fs,tmpfs")
    ap.add_argument("--json")
    a = ap.parse_args()
    targets = a.targets.split(",")
    inp = Path(a.inputs)
    info = prepare_inputs(inp, a.git_source)
    branch = info["git_branch"]
    versions = {t: subprocess.run([t, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
                for t in ("rclone", "s3fs") if shutil.which(t)}
    print(f"# bench_rw_peers: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, load {loadavg()}, "
          f"S3 = SeaweedFS on loopback at {a.rtt:g} ms RTT; step timeout {a.step_timeout:g} s; {versions}")
    base_all = Path(tempfile.mkdtemp(prefix="wsfs-bench-peers-", dir=a.dir))
    res: dict[str, dict] = {}
    try:
        with seaweedfs_server(base_all / "s3") as s3, \
                LatencyProxy(int(s3.endpoint_url.rsplit(":", 1)[1]), a.rtt) as proxy:
            for t in targets:
                log(f"{t}:")
                try:
                    if t == "wsfs":
                        r = one_wsfs(base_all / "wsfs", inp, branch, True, f"s3://{s3.bucket}/wsfs",
                                     server_env(proxy.url))
                        res[t] = {"steps": r["steps"], "stored_s": r.get("commit_all_s"), "load": r["load"],
                                  "commit": r.get("commit_all_msg")}
                    elif t == "rclone":
                        rc = f"127.0.0.1:{free_port()}"
                        opts = ("--vfs-cache-mode", "writes", "--rc", "--rc-addr", rc, "--rc-no-auth")
                        with peer_mount("rclone", proxy.url, f"{s3.bucket}/rclone", base_all / "rclone", opts) as m:
                            res[t] = run_steps(m / "w", inp, branch, a.step_timeout,
                                               lambda rc=rc: rclone_settled(rc, a.step_timeout))
                    elif t == "s3fs":
                        # the bucket's root (s3fs wants the prefix to exist as a directory object); its own folder
                        with peer_mount("s3fs", proxy.url, s3.bucket, base_all / "s3fs", ()) as m:
                            res[t] = run_steps(m / "s3fs-w", inp, branch, a.step_timeout, lambda: 0.0)
                    elif t == "tmpfs":
                        shm = Path(tempfile.mkdtemp(prefix="wsfs-bench-peers-", dir=a.shm))
                        try:
                            res[t] = run_steps(shm / "w", inp, branch, a.step_timeout)
                        finally:
                            shutil.rmtree(shm, ignore_errors=True)
                except Exception as e:  # noqa: BLE001 - one target failing must not lose the others
                    log(f"{t} failed: {e}")
                    res[t] = {"steps": {}, "stopped": str(e)[-300:]}
    finally:
        shutil.rmtree(base_all, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    names = [n for n, _, _ in steps(inp, branch)]
    floor = res.get("tmpfs", {}).get("steps", {})
    print(f"\n{'step':<24}" + "".join(f"{t:>18}" for t in targets))
    for n in names:
        row = f"{n:<24}"
        for t in targets:
            v = res.get(t, {}).get("steps", {}).get(n)
            ratio = f" ({v / floor[n]:.1f}x)" if v is not None and floor.get(n) and t != "tmpfs" else ""
            row += ("-" if v is None else f"{v:.2f}{ratio}").rjust(18)
        print(row)
    row = f"{'total (steps run)':<24}"
    for t in targets:
        st = res.get(t, {}).get("steps", {})
        tot = sum(st.values())
        ftot = sum(floor.get(n, 0) for n in st)
        ratio = f" ({tot / ftot:.1f}x)" if ftot and t != "tmpfs" else ""
        row += f"{tot:.2f}{ratio}".rjust(18)
    print(row)
    print(f"{'stored in S3 after make':<24}" + "".join(
        f"{'-' if res.get(t, {}).get('stored_s') is None else format(res[t]['stored_s'], '.2f')}".rjust(18)
        for t in targets))
    for t in targets:
        if res.get(t, {}).get("stopped"):
            print(f"# {t} stopped: {res[t]['stopped']}")
    print(f"# load at end {loadavg()}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a time cap still runs the finally blocks
    sys.exit(main())
