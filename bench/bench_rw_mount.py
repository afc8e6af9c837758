"""Benchmark of a read-write mount (``wsfs mount --rw``) against the same work on tmpfs and ext4 directly.

Not collected by pytest.  Run from the repository root, as root (FUSE)::

    PYTHONPATH=src python bench/bench_rw_mount.py [--files 5000] [--mib 512] [--dir /tmp]

Steps, each in a fresh target directory:

* ``untar``: ``tar -x`` of an archive of ``--files`` small files (1-4 KiB, in
  50 directories), then ``sync -f`` (syncfs: on ext4 and tmpfs a flush; on
  the mount it never reaches the daemon, whose layer commits within 1 s by
  itself, so the wsfs figure includes no durable commit);
* ``rm -rf`` of that tree;
* ``sequential write``: ``dd`` of ``--mib`` MiB in 1 MiB writes with
  ``conv=fsync``.

Targets: a read-write mount of a small pushed version (state folder and
cache under ``--dir``), a directory on tmpfs (``/dev/shm``), and a directory
under ``--dir`` (ext4 here); ``--passthrough-c BIN``: also libfuse's
``passthrough_ll`` over a directory under ``--dir``, the floor of a FUSE file
system in C (how to build it: ``bench_rw_workflows.py``); ``--mount-only``:
the mount alone (for A/B runs of two trees: ``PYTHONPATH=<tree>/src``,
alternated).  On the mount, each
step's FUSE requests by operation (``wsfs stats --json``) and the daemon's
CPU time (``/proc/PID/stat``) are reported too.  Prints seconds and rates
(``--json FILE``: also as JSON); exits 0.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def make_tar(path: Path, files: int) -> int:
    rnd = random.Random(1)
    total = 0
    with tarfile.open(path, "w") as t:
        for i in range(files):
            data = rnd.randbytes(rnd.randrange(1024, 4097))
            info = tarfile.TarInfo(f"tree/d{i % 50:02d}/f{i:05d}.txt")
            info.size = len(data)
            info.mtime = 1_700_000_000
            t.addfile(info, io.BytesIO(data))
            total += len(data)
    return total


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Probe:
    """A mount's FUSE requests by operation and its daemon's CPU time, between two calls of :meth:`step`."""

    def __init__(self, mnt: Path, env: dict[str, str]) -> None:
        self.mnt, self.env = mnt, env
        self.last = self._stats()
        self.pid = int(self.last["pid"])
        self.cpu = cpu_s(self.pid)

    def _stats(self) -> dict:
        p = subprocess.run([sys.executable, "-m", "wsfs", "stats", "--json", str(self.mnt)], env=self.env,
                           capture_output=True, text=True, check=True)
        return json.loads(p.stdout)

    def step(self) -> dict:
        cpu = cpu_s(self.pid)
        cur = self._stats()
        req = {k: v - self.last["requests"].get(k, 0) for k, v in cur["requests"].items()}
        out = {"requests": {k: v for k, v in sorted(req.items(), key=lambda kv: -kv[1]) if v},
               "daemon_cpu_s": cpu - self.cpu}
        self.last, self.cpu = cur, cpu_s(self.pid)
        return out


def run_steps(target: Path, tar: Path, files: int, mib: int, probe: Probe | None = None) -> dict:
    out: dict = {}
    work = target / "work"
    work.mkdir()
    if probe:
        probe.step()
    t0 = time.perf_counter()
    subprocess.run(["tar", "-xf", str(tar)], cwd=work, check=True)
    subprocess.run(["sync", "-f", "."], cwd=work, check=True)
    out["untar_s"] = time.perf_counter() - t0
    out["untar_files_per_s"] = files / out["untar_s"]
    if probe:
        out["untar"] = probe.step()
    out["rm_s"] = timed(["rm", "-rf", "tree"], work)
    if probe:
        out["rm"] = probe.step()
    t = timed(["dd", "if=/dev/zero", "of=seq.bin", "bs=1M", f"count={mib}", "conv=fsync"], work)
    out["seq_write_mb_s"] = mib * 1.048576 / t
    os.unlink(work / "seq.bin")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--mount-only", action="store_true", help="only the wsfs mount (A/B runs of two trees)")
    ap.add_argument("--passthrough-c", metavar="BIN", help="also libfuse's passthrough_ll built at BIN")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="wsfs-bench-rw-", dir=a.dir))
    env = {**os.environ, "WSFS_REPO": str(base / "repo"), "WSFS_CACHE_DIR": str(base / "cache")}
    wsfs = [sys.executable, "-m", "wsfs"]
    mnt = base / "mnt"
    shm = Path(tempfile.mkdtemp(prefix="wsfs-bench-rw-", dir="/dev/shm"))
    try:
        tar = base / "files.tar"
        total = make_tar(tar, a.files)
        src = base / "src"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "hello").write_bytes(b"hello\n")
        subprocess.run([*wsfs, "init"], env=env, check=True, capture_output=True)
        subprocess.run([*wsfs, "push", str(src), "bench"], env=env, check=True, capture_output=True)
        mnt.mkdir()
        subprocess.run([*wsfs, "mount", "--rw", "-o", f"state_dir={base / 'state'},noprofile", "bench", str(mnt)],
                       env=env, check=True)
        results = {}
        try:
            results["wsfs rw mount"] = run_steps(mnt, tar, a.files, a.mib, Probe(mnt, env))
        finally:
            subprocess.run([*wsfs, "umount", str(mnt)], env=env, check=True)
        if a.passthrough_c and not a.mount_only:
            from bench_rw_workflows import Passthrough, c_passthrough_argv
            pt = Passthrough(base / "pc", c_passthrough_argv(a.passthrough_c))
            try:
                results["C passthrough"] = run_steps(pt.mnt, tar, a.files, a.mib)
            finally:
                pt.close()
        if not a.mount_only:
            results["tmpfs"] = run_steps(shm, tar, a.files, a.mib)
            ext4 = base / "ext4"
            ext4.mkdir()
            results[f"{a.dir} directly"] = run_steps(ext4, tar, a.files, a.mib)
        print(f"{a.files} files ({total / 1e6:.1f} MB) untarred, then sync -f; rm -rf; {a.mib} MiB dd conv=fsync")
        print(f"{'target':<22} {'untar s':>8} {'files/s':>9} {'rm -rf s':>9} {'seq MB/s':>9}")
        for name, r in results.items():
            print(f"{name:<22} {r['untar_s']:>8.2f} {r['untar_files_per_s']:>9.0f} {r['rm_s']:>9.2f} "
                  f"{r['seq_write_mb_s']:>9.0f}")
        m = results["wsfs rw mount"]
        for step in ("untar", "rm"):
            req = m[step]["requests"]
            top = ", ".join(f"{k} {v}" for k, v in list(req.items())[:9])
            print(f"mount, {step}: {sum(req.values())} FUSE requests ({sum(req.values()) / a.files:.1f} per file: "
                  f"{top}), daemon CPU {m[step]['daemon_cpu_s']:.2f} s")
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
