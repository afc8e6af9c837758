"""The control socket of a mount: one JSON request per connection, one JSON reply.

Protocol: the client connects to an ``AF_UNIX`` stream socket, writes one
line of JSON (``{"cmd": "stats"}``), and reads one line of JSON back, after
which the daemon closes the connection.  Replies carry ``"ok": true`` or
``"ok": false`` with an ``"error"`` message.  Commands: ``ping``, ``status``
(who serves this mountpoint), ``stats`` (counters), and for read-write
mounts ``changes``, ``commit``, ``discard``.

Progress: a request with ``"progress": true`` may be answered with any
number of lines ``{"progress": {...}}`` (no ``"ok"`` key) before the reply
line; a long command (``commit``) sends one at most every 0.1 s and when its
step changes, e.g. ``{"progress": {"step": "uploading", "done": 3,
"total": 9}}``.  A client that does not ask gets the one reply line, as before.

Where: the socket is keyed by the mountpoint, so a client that knows only the
mountpoint finds it.  Candidate directories, in order: ``/run/wsfs`` (root)
or ``$XDG_RUNTIME_DIR/wsfs``, then ``<cache_dir>/run``.  ``AF_UNIX`` paths
are limited to 108 bytes, so the name is a 16-digit hash and a directory
whose path would be too long is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import blake3
import trio

from wsfs.errors import NotFound, WsfsError
from wsfs.localfs import private_dir

log = logging.getLogger(__name__)

_MAX_PATH = 100  # bytes; sockaddr_un.sun_path is 108 including the NUL
_MAX_REQUEST = 64 * 1024


def _mount_key(mountpoint: str) -> str:
    # Resolve the parent only: the mountpoint itself is served by the daemon
    # (a stat of it from the daemon's own thread before the FUSE loop runs
    # would deadlock), and may be a dead mount (ENOTCONN) for a client.
    mp = os.path.abspath(mountpoint)
    canonical = os.path.join(os.path.realpath(os.path.dirname(mp)), os.path.basename(mp))
    return blake3.blake3(os.fsencode(canonical)).hexdigest()[:16]


def socket_dirs(cache_dir: str) -> list[str]:
    """Directories a control socket may live in, most preferred first."""
    dirs = []
    if os.geteuid() == 0:
        dirs.append("/run/wsfs")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        dirs.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "wsfs"))
    dirs.append(os.path.join(os.path.abspath(cache_dir), "run"))
    return dirs


def socket_paths(mountpoint: str, cache_dir: str) -> list[str]:
    """Candidate socket paths for *mountpoint* (only those short enough for AF_UNIX)."""
    name = _mount_key(mountpoint) + ".sock"
    paths = [os.path.join(d, name) for d in socket_dirs(cache_dir)]
    return [p for p in paths if len(os.fsencode(p)) < _MAX_PATH]


def _bind_path(mountpoint: str, cache_dir: str) -> str:
    for path in socket_paths(mountpoint, cache_dir):
        try:
            private_dir(os.path.dirname(path))  # 0700 (narrowed if ours and wider); the socket 0600
        except OSError:
            continue
        if os.access(os.path.dirname(path), os.W_OK):
            return path
    raise WsfsError(f"no usable directory for the control socket of {mountpoint} (tried {socket_dirs(cache_dir)})")


Progress = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], Progress | None], dict[str, Any]]


async def serve(
    mountpoint: str,
    cache_dir: str,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer control requests until cancelled; ``task_status.started(path)`` once listening.

    *handler* runs in a worker thread (it may read the cache index), called with the request and, if the
    client asked for progress, a function it may call (from that thread) with progress information.
    """
    path = _bind_path(mountpoint, cache_dir)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            os.unlink(path)  # left by a daemon that died; the mountpoint is ours now
        except FileNotFoundError:
            pass
        await sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started(path)
        log.debug("control socket at %s", path)

        async def connection(stream: trio.SocketStream) -> None:
            async with stream:
                await _answer(stream, handler)

        await trio.serve_listeners(connection, [listener])
    finally:
        sock.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


async def _answer(stream: trio.SocketStream, handler: Handler) -> None:
    """Read one request (within 10 s), run *handler* on it (as long as it takes: a commit may upload
    gigabytes), send the progress lines it emits meanwhile if asked, then the reply."""
    buf = b""
    with trio.move_on_after(10) as waited:
        while b"\n" not in buf and len(buf) < _MAX_REQUEST:
            data = await stream.receive_some(4096)
            if not data:
                break
            buf += data
    if waited.cancelled_caught:
        return
    try:
        request = json.loads(buf.split(b"\n", 1)[0] or b"{}")
        if not isinstance(request, dict):
            raise ValueError("not an object")
        if request.get("progress") is True:
            reply = await _with_progress(stream, handler, request)
        else:
            reply = await trio.to_thread.run_sync(handler, request, None)
    except ValueError as e:
        reply = {"ok": False, "error": f"bad request: {e}"}
    except Exception as e:  # a bug in a handler must not end the daemon
        log.exception("control request failed")
        reply = {"ok": False, "error": str(e)}
    try:
        await stream.send_all(json.dumps(reply).encode() + b"\n")
    except trio.BrokenResourceError:
        pass


async def _with_progress(stream: trio.SocketStream, handler: Handler, request: dict[str, Any]) -> dict[str, Any]:
    """Run *handler* in a thread; what it reports goes to the client as progress lines meanwhile.

    Of the reports of one step only the newest waits to be sent (a slow client misses the ones in
    between, never blocks the handler), but the last one of every step is sent; a client gone away
    stops nothing but the reports.
    """
    token = trio.lowlevel.current_trio_token()
    queued: list[dict[str, Any]] = []
    wake = trio.Event()
    done = False

    def post(info: dict[str, Any]) -> None:  # trio thread
        if queued and queued[-1].get("step") == info.get("step"):
            queued[-1] = info
        else:
            queued.append(info)
        wake.set()

    def progress(info: dict[str, Any]) -> None:  # the handler's thread
        try:
            trio.from_thread.run_sync(post, dict(info), trio_token=token)
        except trio.RunFinishedError:
            pass

    async def sender() -> None:
        nonlocal wake
        broken = False
        while True:
            await wake.wait()
            wake = trio.Event()
            while queued and not broken:
                line = json.dumps({"progress": queued.pop(0)}).encode() + b"\n"
                try:
                    await stream.send_all(line)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    broken = True
            if done:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        try:
            reply = await trio.to_thread.run_sync(handler, request, progress)
        finally:
            done = True
            wake.set()
    return reply


def remove_stale(mountpoint: str, cache_dir: str) -> None:
    """Delete sockets of *mountpoint* that no daemon listens on (left by a daemon that was killed)."""
    for path in socket_paths(mountpoint, cache_dir):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
            except ConnectionRefusedError:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            except OSError:
                pass  # absent, or not ours to judge


def query(mountpoint: str, cache_dir: str, cmd: str, *, timeout: float | None = 10.0,
          args: dict[str, Any] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Send ``{"cmd": cmd, **args}`` to the daemon serving *mountpoint*; its reply (*timeout* None: wait as
    long as the daemon works on it).  *progress*: asks for progress lines, and is called with each."""
    tried = []
    for path in socket_paths(mountpoint, cache_dir):
        if not os.path.exists(path):
            continue
        tried.append(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                continue  # a socket left by a daemon that died
            request = {**(args or {}), "cmd": cmd}
            if progress is not None:
                request["progress"] = True
            s.sendall(json.dumps(request).encode() + b"\n")
            # Lines until the reply's: appended to one buffer, and only what arrived is searched for the end
            # of a line (a status of 40,000 changes is a 5 MB line: searching and copying the whole buffer
            # at each read took seconds).
            buf = bytearray()
            seen = 0
            while True:
                end = buf.find(b"\n", seen)
                if end >= 0:
                    if progress is not None and buf.startswith(b'{"progress"'):
                        info = json.loads(buf[:end])
                        if isinstance(info, dict) and "ok" not in info:
                            if isinstance(info.get("progress"), dict):
                                progress(info["progress"])
                            del buf[:end + 1]
                            seen = 0
                            continue
                    del buf[end:]
                    break
                seen = len(buf)
                data = s.recv(1 << 20)
                if not data:
                    break
                buf += data
        reply = json.loads(buf)
        if not reply.get("ok"):
            if isinstance(reply.get("exit_code"), int):  # a WsfsError in the daemon: the same message and exit code
                err = WsfsError(str(reply.get("error")))
                err.exit_code = reply["exit_code"]
                if isinstance(reply.get("paths"), list):
                    err.paths = reply["paths"]  # type: ignore[attr-defined]  # a conflict's, for --json
                raise err
            raise WsfsError(f"the daemon of {mountpoint} refused {cmd!r}: {reply.get('error')}")
        return dict(reply)
    raise NotFound(
        f"no wsfs daemon answers for {mountpoint}"
        + (f" (stale sockets: {', '.join(tried)})" if tried else " (not a wsfs mount, or mounted with another cache dir)")
    )
