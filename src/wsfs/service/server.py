"""Running ``wsfs serve``: the listen address policy, the socket, uvicorn.

Loopback by default.  A non-loopback address is refused unless a token
config is given: without tokens every workspace of the repository would be
readable by anyone who can reach the port (and the server speaks plain
HTTP: put a TLS proxy in front of it for anything but a trusted network).
The socket is bound here, before uvicorn starts, so that "address in use"
is a one-line error with an exit code like every other failure.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable

from wsfs import redact
from wsfs.errors import UsageError, WsfsError
from wsfs.repository import Repository
from wsfs.sdnotify import notify_systemd

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8080"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; ``localhost`` is 127.0.0.1) as an IP address and a port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--listen {text!r}: the host must be an IP address (or localhost)") from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether IP address *host* is a loopback address."""
    return ipaddress.ip_address(host).is_loopback


def check_exposure(host: str, has_tokens: bool) -> None:
    """Refuse a non-loopback address without tokens (see the module docstring)."""
    if not is_loopback(host) and not has_tokens:
        raise UsageError(
            f"refusing to listen on {host}: without a token config (--config FILE with [[token]] entries) "
            "every workspace would be readable by anyone who reaches the port; listen on 127.0.0.1 or give tokens"
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on *host*:*port*; WsfsError (one line) if the address is taken or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise WsfsError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    # Listening now: connections made once the address is printed queue until uvicorn accepts them.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(app: object, sock: socket.socket, *, access_log: bool) -> None:
    """Run uvicorn on *sock* until SIGINT/SIGTERM (then return: exit status 0)."""
    import uvicorn

    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_config=None,  # the CLI's logging (redacting, escaping) stays in charge
        access_log=access_log,
        lifespan="off",
        server_header=False,
        # Connections and requests at once, beyond which uvicorn answers 503: memory stays bounded.
        limit_concurrency=1024,
        timeout_graceful_shutdown=5,
        # uvloop and httptools (dependencies) when they are installed, else asyncio and h11: streaming a
        # file costs the server 0.6-0.7 s of CPU per GiB from its cache against 0.9-1.3 s.
        loop="auto",
        http="auto",
    )
    server = uvicorn.Server(config)
    if threading.current_thread() is not threading.main_thread():
        server.run(sockets=[sock])
        return
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again
    # under the handler that was there before it; with these no-op handlers that
    # is a clean exit 0 (a stop asked for is not a failure) instead of death by signal.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# glibc malloc settings of the server process (mallopt parameters).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 64 << 20
MALLOC_ARENAS = 2


def tune_malloc() -> bool:
    """Keep freed blob-sized buffers in the heap for reuse instead of returning them to the kernel; whether set.

    A streamed file allocates and frees a 4 MiB buffer per chunk (a store
    GET's body, a cache file's read).  With glibc's defaults each free at the
    top of the heap is trimmed and the next allocation faults in and zeroes
    fresh pages: 0.4-0.6 s of the server's CPU per GiB sent from the cache
    (1.16-1.36 s against 0.73-0.77 s), up to 0.4 s per GiB fetched from the
    store (docs/benchmarks.md, "wsfs serve").  The heap keeps up
    to :data:`MALLOC_TRIM_THRESHOLD` free bytes instead, and the threads share
    :data:`MALLOC_ARENAS` arenas (glibc's default, 8 per CPU, gives each busy
    thread its own, each keeping freed buffers of its own: peak RSS 272 MiB
    against 175-191 MiB with two, for a 1 GiB file).  What is kept is bounded
    by the buffers in flight, not by the file's size.  Not glibc: nothing is
    done.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return all(mallopt(param, value) for param, value in (
        (_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD),
        (_M_ARENA_MAX, MALLOC_ARENAS),
    ))


def run(
    listen: str,
    config: str | None,
    open_repo: Callable[[], Repository],
    cache_dir: str,
    *,
    access_log: bool = False,
    threads: int = 16,
    max_upload: int = 4 << 30,
) -> int:
    """``wsfs serve``: check the address and config, open the repository and cache, serve until stopped."""
    from wsfs.cache import BlobCache
    from wsfs.service.app import create_app
    from wsfs.service.auth import AuthConfig
    from wsfs.service.backend import Backend

    if threads < 1:
        raise UsageError("--threads must be at least 1")
    auth = AuthConfig.load(config) if config else None
    host, port = parse_listen(listen)
    check_exposure(host, auth is not None)
    repo = open_repo()
    tune_malloc()
    backend = Backend(repo, BlobCache(repo, cache_dir), blob_workers=threads, max_upload=max_upload)
    try:
        sock = bind(host, port)
        shown = f"[{host}]" if ":" in host else host
        print(f"wsfs: serving {redact.redact(repo.store.url)} on http://{shown}:{sock.getsockname()[1]}"
              + (f" ({len(auth.grants)} tokens)" if auth else " (no tokens: open read on loopback)"),
              file=sys.stderr, flush=True)
        with sock:
            notify_systemd("READY=1")  # bound and listening: connections wait in the backlog until uvicorn runs
            serve(create_app(backend, auth), sock, access_log=access_log)
    finally:
        backend.close()
    return 0
