"""``wsfs mountd``: a resident process that starts background mounts, already warm.

A background ``wsfs mount`` spends ~0.35 s of CPU before its first request
to the store: the interpreter, importing trio, pyfuse3, botocore and wsfs,
and parsing S3's models for a client (``docs/benchmarks.md``).  ``wsfs
mountd`` pays that once: it imports everything a mount needs, parses the
models, then waits on a Unix socket.  ``wsfs mount`` (and ``mount.wsfs``)
without ``-f`` first asks it; mountd forks, and the child, already holding
every module, becomes the mount daemon at once.  Nothing else changes: the
child runs :func:`wsfs.daemon.mount.run_mount` as the forked daemon of a
plain ``wsfs mount`` would, with the caller's environment, working
directory and umask, and answers on the caller's readiness pipe
(:mod:`wsfs.daemon.verdict`), so ``wsfs mount`` prints and exits exactly as
it would have.

Only the same security context is served, anything else is told to mount in
its own process ("fallback", silent but for ``-vv``): the peer
(``SO_PEERCRED``) must have mountd's uid, gid, supplementary groups,
capability sets, no-new-privileges and seccomp state (``/proc/PID/status``),
the same root directory and the same mount, network, user, pid, ipc, uts and
cgroup namespaces, the same interpreter, ``sys.path`` and wsfs package
directory, and the package's files must not have changed since mountd
imported them (then mountd also exits, status 75, for its supervisor to start
a fresh one).  The socket (``/run/wsfs/mountd.sock`` for root,
``$XDG_RUNTIME_DIR/wsfs/mountd.sock`` otherwise, ``$WSFS_MOUNTD_SOCKET``
overrides, empty disables) is ``0600`` in a ``0700`` directory, and the
client talks to a socket only if its owner is the client's own uid.

What differs from a mount started in the caller's process: the daemon is a
child of mountd, so it lives in mountd's cgroup (a systemd unit's, with
``KillMode=process`` so that stopping mountd leaves the mounts alone) and
with mountd's resource limits; ``/proc/PID/cmdline`` says ``wsfs mountd``.

Protocol (``SOCK_STREAM``): the client sends a 4-byte big-endian length and
a JSON request of at most 1 MiB, with three descriptors attached
(``SCM_RIGHTS``): the readiness pipe's write end, its stdout and its stderr.
mountd answers one line: ``go`` (the child has the request; read the pipe)
or ``no <reason>``.
"""

from __future__ import annotations

import array
import gc
import json
import logging
import os
import signal
import socket
import stat
import struct
import sys
import time
from typing import Any

from wsfs.errors import UsageError

log = logging.getLogger(__name__)

PROTOCOL = 1
EXIT_STALE = 75  # EX_TEMPFAIL: the code on disk changed under mountd; its supervisor starts a fresh one
_MAX_REQUEST = 1 << 20
_FDS = 3  # the readiness pipe's write end, stdout, stderr
_CLIENT_TIMEOUT = 5.0  # seconds a client may take to send its request, and mountd to answer
_NAMESPACES = ("mnt", "net", "user", "pid", "ipc", "uts", "cgroup")
_STATUS_FIELDS = (b"Uid:", b"Gid:", b"Groups:", b"CapInh:", b"CapPrm:", b"CapEff:", b"CapBnd:", b"CapAmb:",
                  b"NoNewPrivs:", b"Seccomp:")
_MAX_PATH = 108  # AF_UNIX sun_path, with its terminating NUL


def socket_path() -> str | None:
    """Where mountd listens for this user; None: no mountd (``WSFS_MOUNTD_SOCKET=`` disables it)."""
    env = os.environ.get("WSFS_MOUNTD_SOCKET")
    if env is not None:
        return os.path.abspath(env) if env else None
    if os.geteuid() == 0:
        return "/run/wsfs/mountd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "wsfs", "mountd.sock") if runtime else None


def _package_dir() -> str:
    import wsfs

    return os.path.dirname(os.path.realpath(wsfs.__file__))


def _code_identity() -> dict[str, Any]:
    """What must be equal in client and mountd for the child to run the client's code."""
    # sys.path[0] is the script's directory or, with -m, the working directory: not where modules come from.
    return {"executable": os.path.realpath(sys.executable), "version": sys.version, "path": list(sys.path[1:]),
            "wsfs": _package_dir()}


# -- the client: wsfs mount ---------------------------------------------------------


def request_mount(request: dict[str, Any]) -> bytes | None:
    """Have mountd start the mount described by *request*; the verdict it sent, or None: mount here.

    *request* holds ``settings``, ``ref``, ``mountpoint`` and ``options`` (see
    :func:`_start`).  None when no mountd listens for us or it declines;
    the reason is logged at debug level.
    """
    path = socket_path()
    if not path:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        log.debug("mountd: %s is not a socket of ours; mounting in this process", path)
        return None
    from wsfs.daemon.verdict import read_verdict

    body = json.dumps({
        "protocol": PROTOCOL, "code": _code_identity(), "env": dict(os.environ), "cwd": os.getcwd(),
        "umask": _umask(), **request,
    }).encode()
    if len(body) > _MAX_REQUEST:
        return None
    r, w = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_CLIENT_TIMEOUT)
            sock.connect(path)
            sys.stdout.flush()
            sys.stderr.flush()
            fds = array.array("i", [w, sys.stdout.fileno(), sys.stderr.fileno()])
            sock.sendmsg([struct.pack("!I", len(body)), body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            os.close(w)
            w = -1
            answer = _read_line(sock)
    except (OSError, ValueError) as e:
        log.debug("mountd at %s: %s; mounting in this process", path, e)
        answer = b""
    finally:
        if w >= 0:
            os.close(w)
    if answer != b"go":
        os.close(r)
        if answer:
            log.debug("mountd at %s declined (%s); mounting in this process", path, answer.decode(errors="replace"))
        return None
    return read_verdict(r)  # the pipe's only other write end is in the child: end of file when it is done


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _read_line(sock: socket.socket, limit: int = 4096) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        piece = sock.recv(limit - len(data))
        if not piece:
            break
        data += piece
    return data.strip()


# -- mountd -----------------------------------------------------------------------


def serve(path: str | None) -> int:
    """``wsfs mountd``: warm up, listen on *path* (default :func:`socket_path`), start mounts until stopped."""
    path = os.path.abspath(path) if path else socket_path()
    if not path:
        raise UsageError("no socket path: not root and no $XDG_RUNTIME_DIR; give --socket PATH")
    if len(os.fsencode(path)) >= _MAX_PATH:
        raise UsageError(f"socket path {path} is longer than {_MAX_PATH - 1} bytes")
    _warm_up()
    identity = _code_identity()
    files = _code_files(identity["wsfs"])
    listener = _listen(path, private=path == socket_path() and "WSFS_MOUNTD_SOCKET" not in os.environ)
    bound = os.stat(path)
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from wsfs.sdnotify import notify_systemd

    log.info("mountd %d listening on %s", os.getpid(), path)
    notify_systemd("READY=1")
    # What was imported stays put: the children's garbage collections do not copy it page by page.
    gc.collect()
    gc.freeze()
    code = 0
    try:
        while not stop:
            _reap()
            try:
                conn, _ = listener.accept()
            except (TimeoutError, InterruptedError):
                continue
            except OSError as e:  # out of descriptors, or memory: not a reason to stop starting mounts
                log.warning("mountd: accept failed: %s", e)
                time.sleep(0.5)
                continue
            with conn:
                if _handle(conn, listener, identity, files) == "stale":
                    code = EXIT_STALE
                    break
    finally:
        notify_systemd("STOPPING=1")
        listener.close()
        try:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino):
                os.unlink(path)  # ours still: another mountd may have replaced it
        except OSError:
            pass
    log.info("mountd %d stopped%s", os.getpid(), " (its code changed on disk)" if code == EXIT_STALE else "")
    return code


def _warm_up() -> None:
    """Import what a mount imports and parse S3's models: what each mount would do by itself."""
    import wsfs.cli  # noqa: F401
    import wsfs.daemon.mount  # noqa: F401  (trio, pyfuse3, apsw, the daemon)
    import wsfs.store.local  # noqa: F401
    import wsfs.store.s3
    import wsfs.versions.commit  # noqa: F401  (read-write mounts)

    wsfs.store.s3.warm_up()


def _code_files(package: str) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every file of the wsfs package: a change means new code on disk."""
    out = {}
    for top, dirs, names in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            if name.endswith((".py", ".so")):
                p = os.path.join(top, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                out[p] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def _listen(path: str, *, private: bool) -> socket.socket:
    """Bind *path* (0600).  *private*: its directory is wsfs' own (``/run/wsfs``), made or narrowed to 0700;
    any other directory is only created if missing, never narrowed (``--socket /tmp/x.sock`` leaves /tmp alone).
    """
    if private:
        from wsfs.localfs import private_dir

        private_dir(os.path.dirname(path))
    else:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except FileNotFoundError:
        pass
    except ConnectionRefusedError:
        os.unlink(path)  # left by a mountd that is gone
    except OSError as e:
        raise UsageError(f"cannot use {path}: {e.strerror or e}") from None
    else:
        raise UsageError(f"another mountd is listening on {path}")
    finally:
        probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    listener.settimeout(0.5)  # the loop's pace for signals and reaping
    return listener


def _reap() -> None:
    """Collect the exit status of mounts that ended (each child is a mount daemon)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _handle(conn: socket.socket, listener: socket.socket, identity: dict[str, Any],
            files: dict[str, tuple[int, int, int]]) -> str:
    """One request: refuse it, or fork the mount daemon for it.  "stale": mountd must go."""
    fds: list[int] = []
    try:
        conn.settimeout(_CLIENT_TIMEOUT)
        pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        request, fds = _receive(conn)
        reason = _refusal(pid, uid, gid, request, identity)
        if reason is None and _code_files(identity["wsfs"]) != files:
            log.warning("mountd: wsfs changed on disk since mountd started; exiting for a fresh one")
            _answer(conn, "no mountd's code is stale")
            return "stale"
        if reason is not None:
            log.info("mountd: mount for pid %d left to the caller: %s", pid, reason)
            _answer(conn, f"no {reason}")
            return "refused"
        child = os.fork()
        if child == 0:
            _start(conn, listener, request, fds)  # never returns
        log.info("mountd: mount of %s for pid %d: daemon %d", request.get("ref"), pid, child)
        _answer(conn, "go")
        return "started"
    except _BadRequest as e:
        log.warning("mountd: bad request: %s", e)
        _answer(conn, f"no bad request: {e}")
        return "refused"
    except OSError as e:
        log.warning("mountd: request failed: %s", e)
        return "refused"
    except Exception:  # no request may end mountd
        log.exception("mountd: a request failed")
        _answer(conn, "no internal error")
        return "refused"
    finally:
        for fd in fds:
            os.close(fd)


class _BadRequest(Exception):
    pass


def _answer(conn: socket.socket, line: str) -> None:
    try:
        conn.sendall(line.encode() + b"\n")
    except OSError:
        pass  # the client is gone; a child started for it answers on a pipe nobody reads


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    head, fds = _recv_with_fds(conn, 4)
    if len(head) < 4:
        head += _recv_exactly(conn, 4 - len(head))
    (size,) = struct.unpack("!I", head)
    if size > _MAX_REQUEST:
        raise _BadRequest(f"{size} bytes")
    try:
        body = _recv_exactly(conn, size)
        try:
            request = json.loads(body)
        except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
            raise _BadRequest(f"not a JSON request ({type(e).__name__})") from None
        if len(fds) != _FDS:
            raise _BadRequest(f"{len(fds)} descriptors, not {_FDS}")
        _check_request(request)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


def _recv_with_fds(conn: socket.socket, size: int) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, ancdata, flags, _ = conn.recvmsg(size, socket.CMSG_SPACE(_FDS * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    got: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            got.extend(fds)
            del fds[:]
    if flags & socket.MSG_CTRUNC:
        for fd in got:
            os.close(fd)
        raise _BadRequest("too many descriptors")
    return data, got


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        piece = conn.recv(size - len(data))
        if not piece:
            raise _BadRequest("request cut short")
        data += piece
    return bytes(data)


def _check_request(request: Any) -> None:
    if not isinstance(request, dict) or request.get("protocol") != PROTOCOL:
        raise _BadRequest("unknown protocol")
    env, options, settings = request.get("env"), request.get("options"), request.get("settings")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise _BadRequest("env")
    for key in ("cwd", "ref", "mountpoint"):
        if not isinstance(request.get(key), str):
            raise _BadRequest(key)
    if not isinstance(request.get("umask"), int) or not 0 <= request["umask"] <= 0o777:
        raise _BadRequest("umask")
    if not isinstance(options, dict) or not isinstance(settings, dict) or not isinstance(request.get("code"), dict):
        raise _BadRequest("options")
    if options.get("foreground"):
        raise _BadRequest("a foreground mount")  # it would never answer on the pipe: the caller would wait forever


def _refusal(pid: int, uid: int, gid: int, request: dict[str, Any], identity: dict[str, Any]) -> str | None:
    """Why the mount must not be started here, or None: the peer is in mountd's own context."""
    if uid != os.geteuid() or gid != os.getegid():
        return "another user or group"
    if request["code"] != identity:
        return "another interpreter, sys.path or wsfs"
    try:
        for ns in _NAMESPACES:
            mine, theirs = os.stat(f"/proc/self/ns/{ns}"), os.stat(f"/proc/{pid}/ns/{ns}")
            if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
                return f"another {ns} namespace"
        mine, theirs = os.stat("/proc/self/root"), os.stat(f"/proc/{pid}/root")
        if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
            return "another root directory"
        if _status(pid) != _status(os.getpid()):
            return "other credentials, capabilities or restrictions"
    except FileNotFoundError:
        pass  # a namespace this kernel does not have: the same for both
    except OSError as e:
        return f"cannot inspect the caller: {e.strerror or e}"
    return None


def _status(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/status", "rb") as f:
        return [line for line in f if line.startswith(_STATUS_FIELDS)]


def _start(conn: socket.socket, listener: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """The forked child: take on the caller's environment, then become its mount daemon.  Never returns."""
    code = 1
    verdict_fd = fds[0]
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        listener.close()
        conn.close()
        # Until the daemon detaches (and sends its output to its log), its output is the caller's.
        os.dup2(fds[1], 1)
        os.dup2(fds[2], 2)
        for fd in fds[1:]:
            if fd > 2:
                os.close(fd)  # else the daemon would hold the caller's pipes open: `wsfs mount | cat` would hang
        for h in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(h)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        from wsfs.config import Settings
        from wsfs.daemon.mount import MountOptions, run_mount
        from wsfs.repository import Ref

        options = MountOptions(**request["options"])
        for noisy in ("botocore", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING if options.verbose < 2 else logging.NOTSET)
        run_mount(Settings(**request["settings"]), Ref.parse(request["ref"]), request["mountpoint"], options,
                  verdict_fd=verdict_fd)
    except BaseException as e:  # noqa: BLE001 - errors before the daemon took over: the caller reports them
        from wsfs.daemon.verdict import Verdict
        from wsfs.errors import WsfsError

        if isinstance(e, WsfsError):
            code = e.exit_code
            Verdict(verdict_fd).send(f"{code} {e}")
        else:
            log.exception("mountd: starting a mount failed")
            Verdict(verdict_fd).send(f"1 mountd could not start the mount: {e!r}")
    finally:
        os._exit(code)
