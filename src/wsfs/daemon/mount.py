"""Lifecycle of a mount (read-only, or read-write over a write layer): open, mount, signal ready, serve, unmount.

:func:`run_mount` is the whole story, in order:

1. check the mountpoint (a directory, not already mounted);
2. background mode only: fork; the parent waits on a readiness pipe and
   exits 0 once the mount is live, or with the child's exit status and error
   message; the child starts a new session and logs to a file;
3. open the repository, resolve the version, fetch and validate its manifest
   (these can fail with a clear message before anything is mounted); with
   ``--history``, list the workspace's versions and tags instead (each
   manifest is fetched on first use, see ``history.py``);
   with ``--rw``, open the write layer in its state folder over that
   version instead (:func:`open_layer_base`: a folder that holds changes
   already keeps its base version);
4. ``pyfuse3.init`` with ``fsname=wsfs:<ws>@<v>,subtype=wsfs,ro,default_permissions``
   (``rw`` for a read-write mount; ``wsfs:<ws>@*`` for a history;
   ``allow_other`` on request);
5. in ``trio.run``: start the control socket, the signal watcher and the
   cache maintenance task, then send ``READY=1`` to ``$NOTIFY_SOCKET``
   (systemd ``Type=notify``) and to the readiness pipe, then run
   ``pyfuse3.main`` until the file system is unmounted (``fusermount3 -u``)
   or a SIGTERM/SIGINT calls ``pyfuse3.terminate``;
6. a read-write mount closes its layer (a durable commit of everything
   written: ``docs/write-layer.md``), also after SIGTERM and after a crash
   of the main loop;
7. ``pyfuse3.close(unmount=clean)``: after a clean end the mount is removed
   and the exit status is 0.  After a crash of the main loop it is left in
   place on purpose: users see ENOTCONN rather than an empty directory a
   sync tool could mirror (``wsfs umount`` lazily removes it).

Stopping never waits for the store.  A SIGTERM first ends every operation
still waiting (``Deadline.stop``: they answer ENOTCONN), so the main loop
returns at once even when worker threads are blocked in the store; those
threads are daemon threads and are abandoned.  The access profile gets
``SAVE_BUDGET`` (0.5 s) in a thread of its own, and none if the store was
failing (a read timed out, a fetch failed, or the profile's own load is
still unanswered).  If the process still has not exited ``_STOP_GRACE`` seconds after
the signal, a watchdog detaches the mount and ends it (``os._exit``).
"""

from __future__ import annotations

import errno
import faulthandler
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, NoReturn

import blake3
import pyfuse3
import trio

from wsfs import collector, redact
from wsfs.cache import DEFAULT_CACHE_SIZE, BlobCache
from wsfs.config import Settings, default_state_dir
from wsfs.daemon import control
from wsfs.daemon import policy as cache_policy
from wsfs.daemon.building import BuildingIndex
from wsfs.daemon.history import HistoryView
from wsfs.daemon.mount_helper import mounted_device
from wsfs.daemon.ops import INODE_AS_HANDLE, Operations
from wsfs.daemon.preload import Preloader, StoreAccess
from wsfs.daemon.profile import AccessRecorder, prefetch_profile, save_profile_briefly
from wsfs.daemon.verdict import Verdict, exit_mounted, read_verdict, verdict_error
from wsfs.daemon.view import KERNEL_READAHEAD_KIB, SMALL_PREFETCH_MAX, Deadline, VersionView
from wsfs.daemon.writable import Prepared, WritableTree, layer_disk_bytes, prepare_rebase
from wsfs.errors import MountError, UsageError, WsfsError
from wsfs.format.manifest import Manifest
from wsfs.format.names import named
from wsfs.format.records import VersionRecord
from wsfs.localfs import private_dir, touch_private
from wsfs.repository import Ref, Repository
from wsfs.sdnotify import notify_systemd
from wsfs.store import open_store
from wsfs.store.base import default_timeout
from wsfs.terminal import EscapingFormatter
from wsfs.versions import leases

log = logging.getLogger(__name__)

_MAINTENANCE_INTERVAL = 5.0  # seconds between cache index flushes
_WARM_CONNECTIONS = 8  # opened to S3 at start, in the background (S3Store.warm_connections)
_STOP_GRACE = 1.8  # seconds after SIGTERM before the watchdog detaches the mount and exits
# A read-write mount's stop commits its layer durably (local fsyncs of what was
# written): more time, still bounded.  Killed past it, the layer keeps its last commit.
_STOP_GRACE_RW = 30.0
# ... and with commit_on_umount, long enough for a commit (TimeoutStopSec of the rw unit is longer still).
_STOP_GRACE_COMMIT = 600.0
_LISTED_EARLY_MAX = 4096  # directories listed before the index was finished, remembered for the preload helper
_MEMO_STEP = 5000  # memo rows a commit writes per turn of the trio thread (40,000 rows: ~0.4 s in one)
_COMMIT_TICK = 0.5  # seconds between the read-write mount's checks for a batch due to commit
# FUSE operations that change a read-write mount (what starts the clock of the oldest uncommitted write).
_MUTATIONS = ("write", "create", "mknod", "mkdir", "symlink", "link", "unlink", "rmdir", "rename", "setattr",
              "setxattr", "removexattr")
_PENDING_MIN_INTERVAL = 10.0  # seconds between two computations of the pending summary, at least
_PENDING_COST_FACTOR = 1000  # ... and at least this many times what the last one cost (<= 0.1% of the thread)
_PENDING_BUSY_MAX = 30.0  # a computation due waits for a second without FUSE requests, at most this long


@dataclass
class MountOptions:
    """What ``wsfs mount`` was asked for beyond the repository and the version."""

    foreground: bool = False
    allow_other: bool = False
    cache_size: int = DEFAULT_CACHE_SIZE
    log_path: str | None = None
    debug_fuse: bool = False
    verbose: int = 0
    history: bool = False  # every version as <mnt>/<n>, every tag as <mnt>/<tag> -> <n> (daemon/history.py)
    profile: bool = True  # record what is read; prefetch the workspace's access profile (daemon/profile.py)
    prefetch_small: int = SMALL_PREFETCH_MAX  # listed one-chunk files up to this size are prefetched (0: off)
    preload: bool = True  # a helper process stores listed inline files in the page cache (daemon/preload.py)
    timeout: float | None = None  # deadline of a FUSE operation and budget of a store request (s); None: env/30
    rw: bool = False  # read-write: changes go to a write layer in state_dir (daemon/writable.py)
    lease: bool = True  # keep a lease on the mounted version in the store, for gc (versions/leases.py)
    metrics: str | None = None  # HOST:PORT (loopback) of a Prometheus endpoint (wsfs/metrics.py); None: none
    commit_interval: float | None = None  # --rw: commit pending changes every this many seconds
    commit_on_umount: bool = False  # --rw: commit pending changes at unmount or on a stop signal
    rebase: bool = True  # --rw: go on over each version an idle commit published (docs/decisions/live-rebase.md)
    state_dir: str | None = None  # the write layer's folder; None: default_layer_dir(repo, workspace)


# -- helpers ------------------------------------------------------------------


def mounted_paths() -> set[str]:
    """Mountpoints in this mount namespace, including dead FUSE mounts (``ismount`` misses those)."""
    out = set()
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 1:
                # /proc/mounts escapes space, tab, newline and backslash as octal.
                out.add(os.fsdecode(fields[1].decode("unicode_escape").encode("latin-1")))
    return out


def is_mounted(path: str) -> bool:
    return os.path.abspath(path) in mounted_paths()


def default_log_path(cache_dir: str, mountpoint: str) -> str:
    """``<cache_dir>/logs/<mountpoint with / as _>.log`` (long names keep their tail)."""
    name = os.path.realpath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(cache_dir, "logs", name[-120:] + ".log")


class _LateReplyFilter(logging.Filter):
    """pyfuse3's "fuse_reply_* failed with No such file or directory" is not an error: demoted to DEBUG.

    The kernel answers ENOENT to a reply for a request it no longer holds: one
    interrupted by a fatal signal, or any request still queued when the
    connection ends at unmount (a RELEASEDIR of the last ``os.walk`` is the
    common case).  libfuse itself stays silent about it (``fuse_send_msg``);
    pyfuse3 logs it as an ERROR.  Every other failed reply stays an error.
    """

    _LATE = "failed with " + os.strerror(errno.ENOENT)

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging's name
        if record.levelno >= logging.ERROR and "fuse_reply_" in str(record.msg):
            if record.getMessage().endswith(self._LATE):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _setup_logging(options: MountOptions, log_path: str | None, *, to_stderr: bool) -> IO[str] | None:
    """Daemon logging: stderr and/or a file, INFO by default (mount and unmount are worth a line)."""
    root = logging.getLogger()
    fmt = EscapingFormatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    if not to_stderr:
        for h in list(root.handlers):
            root.removeHandler(h)
    else:
        for h in root.handlers:
            h.setFormatter(fmt)
    log_file = None
    if log_path:
        # The log may name files and endpoints: 0600, and secrets redacted (wsfs.redact).
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        touch_private(log_path)
        handler = logging.FileHandler(log_path)
        handler.setFormatter(fmt)
        root.addHandler(handler)
        log_file = handler.stream
    redact.install()
    pyfuse3_log = logging.getLogger("pyfuse3")
    if not any(isinstance(f, _LateReplyFilter) for f in pyfuse3_log.filters):
        pyfuse3_log.addFilter(_LateReplyFilter())
    level = logging.DEBUG if options.verbose >= 2 else logging.INFO
    root.setLevel(level)
    logging.getLogger("wsfs").setLevel(level)
    # Uncaught exceptions of worker threads go through logging (escaped and
    # redacted) rather than raw to stderr.
    threading.excepthook = _log_thread_exception
    # faulthandler: a hung daemon dumps every thread's stack on SIGUSR1.
    faulthandler.register(signal.SIGUSR1, file=log_file or sys.stderr, all_threads=True)
    return log_file


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.error("uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def default_layer_dir(repo_url: str, workspace: str) -> str:
    """``<state dir>/layers/<hash of the repository URL>-<workspace>``: one write layer per (repository, workspace)."""
    key = blake3.blake3(repo_url.encode()).hexdigest()[:16]
    return os.path.join(default_state_dir(), "layers", f"{key}-{workspace}")


def layer_base(state_dir: str) -> tuple[str, int] | None:
    """``(workspace, version)`` of the write layer in *state_dir*, or None if it holds none (read only, no lock)."""
    import apsw

    path = os.path.join(state_dir, "layer.db")
    if not os.path.isfile(path):
        return None
    try:
        db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('workspace', 'version')"))
        finally:
            db.close()
    except apsw.Error:
        return None  # no schema yet (a layer created and never written): as good as none
    if "workspace" not in meta or "version" not in meta:
        return None
    return str(meta["workspace"]), int(meta["version"])


def open_layer_base(repo: Repository, ref: Ref, state_dir: str) -> VersionRecord:
    """The version a read-write mount of *ref* with *state_dir* is based on.

    A state folder holding a layer keeps its base: *ref* without a version
    means that one; a *ref* naming another version is refused (a layer is
    rebased by commit, not by mounting).  A format 1 version is refused too.
    """
    held = layer_base(state_dir)
    if held is not None:
        ws, version = held
        if ws != ref.workspace:
            raise UsageError(f"state folder {state_dir} holds changes of workspace {ws}, not {ref.workspace}")
        if ref.ref is None:
            ref = Ref(ws, str(version))
    record = repo.resolve(ref)
    if held is not None and record.version != held[1]:
        raise UsageError(f"state folder {state_dir} holds changes over {held[0]}@{held[1]}, not @{record.version}: "
                         f"mount {held[0]}@{held[1]} (or {held[0]}) read-write, or name another -o state_dir=")
    if record.format != 2:
        raise UsageError(f"{record.workspace}@{record.version} is a format 1 version: read-write mounts need "
                         "format 2 (run `wsfs upgrade`, then push a new version)")
    return record


# -- entry point ----------------------------------------------------------------


def _spin_where_it_pays() -> None:
    """pyfuse3's third patch polls the FUSE descriptor for up to ``WSFS_SPIN_NS`` before waiting through
    trio (``docs/daemon.md``, "Spin before wait"): that pays when the client runs on another CPU meanwhile;
    with one CPU the poll would only keep the client from running, so it is switched off."""
    if getattr(pyfuse3, "WSFS_SPIN_NS", 0) and len(os.sched_getaffinity(0)) < 2:
        pyfuse3.WSFS_SPIN_NS = 0


def run_mount(settings: Settings, ref: Ref, mountpoint: str, options: MountOptions,
              *, verdict_fd: int | None = None) -> int:
    """Mount version *ref* at *mountpoint*; returns the exit status (0 after a clean unmount).

    *verdict_fd*: this process is already the daemon, forked by ``wsfs mountd`` for a
    background mount (:mod:`wsfs.daemon.mountd`); the starter reads the readiness pipe
    whose write end that is.  This call then never returns: it serves, then exits.
    """
    mountpoint = os.path.abspath(mountpoint)
    if options.history and ref.ref is not None:
        raise UsageError(f"--history mounts every version of {ref.workspace}: give WORKSPACE, not {ref}")
    if options.history and options.rw:
        raise UsageError("--history mounts are read-only: drop --rw (or -o rw)")
    if options.rw and options.state_dir is None:
        options.state_dir = default_layer_dir(settings.repo, ref.workspace)
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mountpoint {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise UsageError(f"{mountpoint} is already a mountpoint (unmount it first: wsfs umount {mountpoint})")
    if options.foreground:
        _setup_logging(options, options.log_path, to_stderr=True)
        return _serve(settings, ref, mountpoint, options, Verdict(None))
    if options.log_path is None:
        private_dir(os.path.join(settings.cache_dir, "logs"))  # 0700, like the rest of the cache
    log_path = options.log_path or default_log_path(settings.cache_dir, mountpoint)
    if verdict_fd is not None:
        _daemon(settings, ref, mountpoint, options, log_path, verdict_fd)
    return _daemonize(settings, ref, mountpoint, options, log_path)


def _daemonize(settings: Settings, ref: Ref, mountpoint: str, options: MountOptions, log_path: str) -> int:
    # Fork before anything starts threads or opens connections (boto3, apsw):
    # the child does all the work, the parent only waits for its verdict.
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _daemon(settings, ref, mountpoint, options, log_path, w)
    os.close(w)
    verdict = read_verdict(r)
    if verdict.startswith(b"OK"):
        exit_mounted()
    _, status = os.waitpid(pid, 0)
    err = verdict_error(verdict, f"the mount daemon exited ({status:#x}) before the mount was ready; see {log_path}")
    assert err is not None
    raise err


def _daemon(settings: Settings, ref: Ref, mountpoint: str, options: MountOptions, log_path: str,
            verdict_fd: int) -> NoReturn:
    """The background daemon, in a process of its own: detach, log to *log_path*, serve, exit."""
    code = 1
    verdict = Verdict(verdict_fd)
    try:
        os.setsid()
        log_file = _setup_logging(options, log_path, to_stderr=False)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        # stderr goes to the log, so C-level messages (libfuse) and crashes are kept.
        os.dup2(log_file.fileno() if log_file else devnull, 2)
        os.close(devnull)
        os.chdir("/")
        code = _serve(settings, ref, mountpoint, options, verdict)
    except WsfsError as e:
        log.error("%s", e)
        verdict.send(f"{e.exit_code} {e}")
        code = e.exit_code
    except BaseException as e:  # noqa: BLE001 - the starter must hear about anything
        log.exception("mount daemon failed")
        verdict.send(f"1 mount daemon failed: {e!r}; see {log_path}")
    finally:
        logging.shutdown()
        os._exit(code)


def _serve(settings: Settings, ref: Ref, mountpoint: str, options: MountOptions, verdict: Verdict) -> int:
    timeout = options.timeout if options.timeout is not None else default_timeout()
    store = open_store(settings.repo, endpoint_url=settings.endpoint_url, timeout=timeout)
    warm = getattr(store, "warm_connections", None)
    if warm is not None:
        warm(_WARM_CONNECTIONS)  # S3: ready for the burst of a first mount's index build
    # A read-only mount of the latest version lists the versions next: beside the descriptor, if that is fetched.
    latest = ref.ref is None and not options.history and not options.rw
    repo = Repository.open(store, settings.cache_dir, listing=ref.workspace if latest else None)
    view: VersionView | HistoryView
    tree: WritableTree | None = None
    if options.history:
        # Only the listing now; each version's record and manifest on first use.
        workspace, version, label = ref.workspace, None, f"{ref.workspace}@*"
        cache = BlobCache(repo, settings.cache_dir, max_bytes=options.cache_size)
        view = HistoryView(repo, workspace, cache, label=label, deadline=Deadline(timeout, label=label))
        close = view.close
        try:
            view.refresh()  # NotFound (exit 3) if the workspace has no versions
        except BaseException:
            cache.close()
            raise
    else:
        record = open_layer_base(repo, ref, options.state_dir) if options.rw and options.state_dir else repo.resolve(ref)
        workspace, version, label = record.workspace, record.version, f"{record.workspace}@{record.version}"
        manifest: Manifest | BuildingIndex
        if record.format == 2 and not options.rw and not repo.index_cached(record):
            # The first mount of this version here: its index is built in a thread while the mount goes
            # live, and the first requests are answered from its rows as they come (daemon/building.py).
            # The top comes first: a version whose top is missing or fails verification is not mounted.
            repo.version_top(record)
            manifest = BuildingIndex.start(repo, record, label)
        else:
            manifest = repo.open_manifest(record)
        cache = BlobCache(repo, settings.cache_dir, max_bytes=options.cache_size)
        view = VersionView(manifest, cache, label=label, stats=record.stats, deadline=Deadline(timeout, label=label))
        view.small_prefetch_max = options.prefetch_small
        close = manifest.close
        if options.rw and options.state_dir:
            tree = _open_tree(view, record, options.state_dir, cache, close)
            close = functools.partial(_close_tree, tree)  # (the tree closes its views' indexes)
        elif options.profile:
            view.recorder = AccessRecorder()
    if tree is not None:
        ops = Operations(tree, cache_policy.choose(writable=True, inode_as_handle=INODE_AS_HANDLE,
                                                   listings_change=True, has_xattrs=True))
    else:
        # The read-only policy for this tree (the history root's listing changes, so OPENDIR stays on).
        ops = Operations(view)
    fuse_options = {f"fsname=wsfs:{label}", "subtype=wsfs", "rw" if tree is not None else "ro",
                    "default_permissions"}
    if options.allow_other:
        fuse_options.add("allow_other")
    if options.debug_fuse:
        fuse_options.add("debug")
    daemon = _Daemon(repo, view, ops, mountpoint, settings.cache_dir, workspace, version)
    daemon.tree = tree
    daemon.lease = options.lease
    daemon.metrics = options.metrics
    daemon.commit_interval = options.commit_interval
    daemon.commit_on_umount = options.commit_on_umount
    daemon.rebase = options.rebase
    collector.relax()  # its commits hold objects per path (wsfs.collector)
    try:
        try:
            pyfuse3.init(ops, mountpoint, fuse_options)
        except RuntimeError as e:
            raise MountError(
                f"cannot mount {mountpoint}: {e} (is /dev/fuse usable, and allow_other permitted in /etc/fuse.conf?)"
            ) from None
        device = mounted_device(mountpoint)
        if device is not None:
            # The kernel sets the mount's read-ahead when it processes our INIT
            # reply; any later request comes after that, and before any OPEN is answered.
            ops.first_request = functools.partial(raise_kernel_readahead, mountpoint, device)
        if isinstance(view, VersionView) and options.preload and tree is None:
            # The helper fetches the packs of listed directories (daemon/preload.py), unless prefetch is off.
            access = (StoreAccess(settings.repo, settings.endpoint_url, settings.cache_dir, timeout, options.cache_size)
                      if options.prefetch_small else None)
            # Started early, as it takes a while; an index still being built is where it will be once
            # finished, and the helper opens it with the first directory, which it gets only then
            # (_Daemon._index_ready).  While that index is built, just after READY (_Daemon.main): its
            # spawn is then not between the mount and `wsfs mount` returning.
            path = manifest.final_path if isinstance(manifest, BuildingIndex) else view.manifest.path
            if path and isinstance(manifest, BuildingIndex):
                daemon.start_preloader = functools.partial(Preloader.start, path, cache.root, label, access)
            elif path:
                daemon.preloader = Preloader.start(path, cache.root, label, access)
        clean = False
        try:
            _spin_where_it_pays()
            trio.run(daemon.main, verdict)
            clean = True
        finally:
            if not clean:
                log.error("%s: the FUSE loop ended abnormally; leaving the dead mount at %s", label, mountpoint)
            pyfuse3.close(unmount=clean)
            if daemon.preloader is not None:
                daemon.preloader.stop()
        log.info("%s: unmounted %s (%s)", label, mountpoint, _short_stats(daemon))
        notify_systemd("STOPPING=1")
        if isinstance(view, VersionView) and view.recorder is not None and version is not None:
            if view.deadline.timeouts or cache.stats.failures or daemon.profile_loading:
                if view.recorder.dirty:
                    log.info("%s: access profile not stored: the store was failing", label)
            else:
                save_profile_briefly(repo, workspace, version, view.recorder)
        return 1 if daemon.final_commit_failed else 0  # commit_on_umount failed: the changes stay in the layer
    finally:
        try:
            close()  # a read-write mount: its layer first (durable), then the manifest
        finally:
            cache.close()


def _open_tree(view: VersionView, record: VersionRecord, state_dir: str, cache: BlobCache, close: Any) -> WritableTree:
    """The write layer in *state_dir* over *record* (LayerBusy: another mount has it; exit 2)."""
    from wsfs.layer import BaseId, WriteLayer

    def factory(read_base: Any) -> WriteLayer:
        return WriteLayer(state_dir, view.manifest, BaseId(record.workspace, record.version, record.manifest), read_base)

    try:
        tree = WritableTree(view, factory, label=view.label, state_dir=state_dir)
    except BaseException:
        cache.close()
        close()
        raise
    log.info("%s: read-write, changes in %s", view.label, state_dir)
    return tree


def _close_tree(tree: WritableTree) -> None:
    """Close the layer (a durable commit), then the indexes of its base and earlier bases (WritableTree.close);
    a failed close is the daemon's exit status 1."""
    try:
        tree.close()
    except Exception as e:
        log.exception("%s: closing the write layer in %s failed; it keeps its last commit", tree.label, tree.state_dir)
        raise WsfsError(f"closing the write layer in {tree.state_dir} failed ({e}); it keeps its last commit") from None


def _throttled(progress: control.Progress | None, every: float = 0.1) -> Callable[[str, int, int], None]:
    """commit's ``progress(step, done, total)`` as control progress lines: each new step, the end of
    one, and otherwise at most one per *every* seconds."""
    if progress is None:
        return lambda step, done, total: None
    last = ["", 0.0]

    def report(step: str, done: int, total: int) -> None:
        now = time.monotonic()
        if step != last[0] or done >= total > 0 or now - last[1] >= every:
            last[0], last[1] = step, now
            progress({"step": step, "done": done, "total": total})

    return report


def _short_stats(daemon: _Daemon) -> str:
    s = daemon.stats()
    return f"{sum(s['requests'].values())} requests, {s['store']['requests'].get('get', 0)} store GETs"


class _PendingGauge:
    """What a read-write mount has not committed: entries, bytes, and the age of the oldest such write.

    Entries and bytes come from the layer's pending list (``wsfs status``'s),
    recomputed when something changed, at most every
    :data:`_PENDING_MIN_INTERVAL` s and never more often than
    :data:`_PENDING_COST_FACTOR` times its own cost (40,000 pending entries:
    about 1.1 s of CPU), in a second without FUSE requests if one comes within
    :data:`_PENDING_BUSY_MAX` s, so a scrape never walks the layer.  The walk
    reads a snapshot of the layer in a worker thread (:meth:`count`): the trio
    thread only takes the snapshot, and answers requests meanwhile.  A commit
    or a discard that ends during a walk makes its result void (:attr:`generation`).

    The age is kept without walking: a write is noticed within a second, or at
    the next scrape (by the FUSE requests that change the mount), and counts
    from then; a commit that saw no write while it ran leaves nothing pending,
    else what is left counts from the commit's start (never younger than it
    is).  Only at mount and after a discard is it taken from the layer: the
    oldest pending entry's ctime (every change sets it; a deletion counts from
    its directory's), which the pending list carries (no path is resolved
    for it: that walk held a 40,000-entry mount's requests for 5.6 s).
    """

    def __init__(self) -> None:
        self.entries = 0
        self.bytes = 0
        self.oldest_ns: int | None = None  # wall clock of the oldest uncommitted change known
        self.first_new_ns: int | None = None  # wall clock when a change was first noticed since the last walk
        self.seen = 0  # the mutating requests counted so far
        self.stale = True  # walk at the next tick whatever the interval (after a commit or discard)
        self.ages = True  # ... and take the age from the entries' ctimes (at mount, after a discard)
        self.due = 0.0
        self.cost = 0.0
        self.generation = 0  # moved by every commit and discard: a walk begun before counts for nothing
        self._lock = threading.Lock()  # (commits and discards end in worker threads, walks on the trio thread)

    def observe(self, mutations: int) -> None:
        if mutations != self.seen:
            self.seen = mutations
            if self.first_new_ns is None:
                self.first_new_ns = time.time_ns()

    def committed(self, mutations_before: int, started_ns: int, mutations_after: int) -> None:
        """A commit that started at *started_ns* succeeded.

        With no write while it ran nothing is pending now, known without a walk (which, with the memo of
        a 40,000-entry commit, held the mount's requests for 3-9 s); else the next tick walks."""
        with self._lock:
            self.generation += 1
            self.first_new_ns = None
            if mutations_after == mutations_before:
                self.entries = self.bytes = 0
                self.oldest_ns = None
                self.stale = False
            else:
                self.oldest_ns = started_ns
                self.stale = True

    def invalidate(self, *, ages: bool = False) -> None:
        """(any thread) A commit failed or changes were discarded: walk at the next tick (*ages*: take the
        age from the entries, as at mount); a walk under way counts for nothing."""
        with self._lock:
            self.generation += 1
            self.stale = True
            self.ages = self.ages or ages

    def due_now(self) -> bool:
        return self.stale or (self.first_new_ns is not None and time.monotonic() >= self.due)

    @staticmethod
    def count(layer: Any) -> tuple[int, int, int | None]:
        """(any thread, over a snapshot) Entries, bytes and the oldest ctime of *layer*'s pending list."""
        entries = size = 0
        oldest: int | None = None
        for p in layer.pending():
            entries += 1
            size += p.size
            if p.ctime_ns and (oldest is None or p.ctime_ns < oldest):
                oldest = p.ctime_ns
        return entries, size, oldest

    def apply(self, counted: tuple[int, int, int | None], generation: int, cost: float,
              written_since_ns: int | None = None) -> bool:
        """The figures of a walk begun at *generation* that took *cost* s; False (and nothing changed but
        the next walk's time) if a commit or discard ended meanwhile.  *written_since_ns*: the mount was
        written to after the snapshot was taken (at that wall-clock time), which the figures do not hold:
        those writes count from then, and the next walk is due after the interval."""
        with self._lock:
            self.cost = cost
            self.due = time.monotonic() + max(_PENDING_MIN_INTERVAL, _PENDING_COST_FACTOR * cost)
            if generation != self.generation:
                return False
            entries, size, oldest = counted
            self.entries, self.bytes = entries, size
            if not entries:
                self.oldest_ns = None
            elif self.ages:
                self.oldest_ns = oldest
            else:
                known = [t for t in (self.oldest_ns, self.first_new_ns) if t is not None]
                self.oldest_ns = min(known) if known else time.time_ns()
            self.first_new_ns, self.stale, self.ages = written_since_ns, False, False
            return True

    def summary(self, mutations: int) -> dict[str, Any]:
        """The figures now (a change not yet noticed by the watcher counts from now)."""
        self.observe(mutations)
        starts = [t for t in (self.oldest_ns, self.first_new_ns) if t is not None]
        age = max(0.0, (time.time_ns() - min(starts)) / 1e9) if starts else 0.0
        return {"pending_entries": self.entries, "pending_bytes": self.bytes,
                "oldest_uncommitted_write_age_seconds": round(age, 3), "pending_scan_seconds": round(self.cost, 4)}



def raise_kernel_readahead(mountpoint: str, device: tuple[int, int], kib: int = KERNEL_READAHEAD_KIB) -> None:
    """Raise the kernel's read-ahead for the mount (device *device*) to *kib* KiB (best effort).

    Call it after the kernel processed the INIT reply (it sets the read-ahead
    then), that is from the first request.  Writing it takes root: otherwise,
    or if it is already larger, it is left as it is.
    """
    path = f"/sys/class/bdi/{device[0]}:{device[1]}/read_ahead_kb"
    try:
        with open(path) as f:
            current = int(f.read())
        if current < kib:
            with open(path, "w") as f:
                f.write(f"{kib}\n")
    except (OSError, ValueError) as e:
        log.debug("%s: kernel read-ahead not raised (%s: %s)", mountpoint, path, e)
        return
    log.debug("%s: kernel read-ahead %d KiB (was %d)", mountpoint, max(kib, current), current)


class _Daemon:
    """The trio side of a mount: FUSE loop, control socket, signals, maintenance."""

    def __init__(
        self,
        repo: Repository,
        view: VersionView | HistoryView,
        ops: Operations,
        mountpoint: str,
        cache_dir: str,
        workspace: str,
        version: int | None,  # None: a history mount
    ) -> None:
        self.repo = repo
        self.view = view
        self.ops = ops
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.workspace = workspace
        self.version = version
        self.label = view.label
        self.started = time.monotonic()
        self.profile_prefetched: int | None = None  # chunks the access-profile prefetch prepared (when done)
        self.profile_loading = False  # the profile's GET has had no answer yet
        self.preloader: Preloader | None = None  # the page-cache preload helper, if running
        self.start_preloader: Callable[[], Preloader | None] | None = None  # ... if it starts after READY
        self._listed_early: list[int] = []  # directories listed while the index was built, for the helper
        self.tree: WritableTree | None = None  # a read-write mount's tree
        self.lease = True  # keep a lease on the version in the store (MountOptions.lease)
        self.metrics: str | None = None  # HOST:PORT of the Prometheus endpoint (MountOptions.metrics)
        self._commit_lock = threading.Lock()  # one commit or discard at a time
        self.commit_interval: float | None = None  # MountOptions.commit_interval
        self.commit_on_umount = False  # MountOptions.commit_on_umount
        self.final_commit_done = False
        self.final_commit_failed = False  # the daemon then exits 1 (the changes stay in the layer)
        # this mount's commits (metrics): published versions, failed attempts, conflicts among them
        self.commits = {"count": 0, "bytes_uploaded": 0, "seconds": 0.0, "failures": 0, "conflicts": 0}
        self.pending = _PendingGauge()
        # Set to move a lease: "published" after a commit (the published version's), "base" after a re-base.
        self._lease_wakes: dict[str, trio.Event] = {}
        self.rebase = True  # a read-write mount goes on over the version an idle commit published
        self.rebases = 0  # re-bases tried (ended, one way or the other)
        self.trio_token: trio.lowlevel.TrioToken | None = None  # (set when the loop runs)

    def stats(self) -> dict[str, Any]:
        out = {
            "mountpoint": self.mountpoint,
            "workspace": self.workspace,
            "version": self.version,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            **self.ops.stats.snapshot(),
            "kernel": self.ops.statistics(),
            "cache": self.view.cache.statistics(),
            "store": self.repo.store.stats.snapshot(),
        }
        if self.preloader is not None:
            out["store"] = self.preloader.add_store_requests(out["store"])
        if isinstance(self.view, HistoryView):
            out["history"] = self.view.statistics()
        elif self.view.recorder is not None:
            out["profile"] = {"recorded": len(self.view.recorder), "prefetched": self.profile_prefetched}
        if isinstance(self.view, VersionView) and isinstance(self.view.manifest, BuildingIndex):
            out["index"] = self.view.manifest.state  # building (the mount answers from its first rows), built, failed
        if self.preloader is not None:
            out["preload"] = self.preloader.statistics()
        if self.tree is not None:
            out["layer"] = {"open_files": len(self.tree.layer.contents),
                            "disk_bytes": layer_disk_bytes(self.tree.state_dir),
                            **self.pending.summary(self._mutations())}
            out["commits"] = dict(self.commits)
        return out

    def handle(self, request: dict[str, Any], progress: control.Progress | None = None) -> dict[str, Any]:
        """A control request (runs in a worker thread); *progress*: the client asked for progress lines."""
        cmd = request.get("cmd")
        if cmd == "ping":
            return {"ok": True}
        if cmd == "status":
            return {"ok": True, "pid": os.getpid(), "mountpoint": self.mountpoint, "workspace": self.workspace,
                    "version": self.version, "history": self.version is None, "read_only": self.tree is None}
        if cmd == "stats":
            return {"ok": True, **self.stats()}
        if cmd == "changes":
            return {"ok": True, **self.layer_status()}
        if cmd in ("commit", "discard"):
            if self.tree is None:
                return {"ok": False, "exit_code": 2,
                        "error": f"{self.mountpoint} is a read-only mount: nothing to {cmd} (mount with --rw)"}
            try:
                return {"ok": True, **(self._commit(request, progress) if cmd == "commit"
                                       else self.layer_discard(request))}
            except WsfsError as e:
                out: dict[str, Any] = {"ok": False, "error": str(e), "exit_code": e.exit_code}
                paths = getattr(e, "paths", None)  # a CommitConflict's (not imported by every mount)
                if isinstance(paths, list):
                    out["paths"] = [named("path", p) for p in paths]  # as every --json names paths
                return out
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _commit(self, request: dict[str, Any], progress: control.Progress | None = None) -> dict[str, Any]:
        """(worker thread) :meth:`layer_commit`, counted: failures and conflicts (``CommitConflict``, exit 5)."""
        before, started = self._mutations(), time.time_ns()
        try:
            out = self.layer_commit(request, progress)
        except WsfsError as e:
            self.commits["failures"] += 1
            self.commits["conflicts"] += isinstance(getattr(e, "paths", None), list)
            self.pending.invalidate()  # the figures are shown fresh after every commit
            raise
        self.pending.committed(before, started, self._mutations())
        self._wake_lease("published")
        return out

    def layer_commit(self, request: dict[str, Any], progress: control.Progress | None = None) -> dict[str, Any]:
        """(worker thread) ``wsfs commit``: publish what the layer changed since its last commit.

        The snapshot is taken on the trio thread (a batch commit, made durable here, not there; the layer
        goes on taking writes, which belong to the next commit); the upload and the record run here,
        reading base content through a :class:`~wsfs.versions.read.RangeReader`; the memo is updated on
        the trio thread (its fsync too runs here).  One commit at a time.  *progress* gets ``{"step", "done", "total"}`` at most every 0.1 s
        and at each new step (``wsfs commit``'s bar).
        """
        from wsfs.versions.commit import commit
        from wsfs.versions.read import RangeReader

        tree = self.tree
        assert tree is not None and isinstance(self.view, VersionView)
        message, ours = request.get("message", ""), bool(request.get("ours", False))
        if not isinstance(message, str):
            raise UsageError("commit: the message must be text")
        self._commit_lock.acquire()
        handed = False  # the lock (and the snapshot) went to a re-base thread, which releases them
        try:
            view = tree.view
            reader = RangeReader(self.repo, view.manifest.path, view.cache)
            # No fsync on the trio thread (it would hold up every FUSE request): the snapshot's batch commit
            # and the memo's are made durable here (Snapshot.sync before the record, Snapshot.recorded).
            snap, mark, held = trio.from_thread.run_sync(self._snapshot, reader.read)
            try:
                record, stats = commit(self.repo, snap, message=message, ours=ours, cache=view.cache,
                                       progress=_throttled(progress), catch_up=self.rebase)
                if snap.publication is not None:  # the memo in parts: each holds the trio thread for ~50 ms
                    rows = list(snap.publication.rows.items())
                    for i in range(0, len(rows), _MEMO_STEP):
                        trio.from_thread.run_sync(tree.layer.write_memo, snap, rows[i:i + _MEMO_STEP])
                trio.from_thread.run_sync(functools.partial(tree.layer.mark_published, snap, durable=False,
                                                            rows_written=True))
                snap.recorded()
                # The version to go on over: the one published, or with nothing to publish a newer head.
                onto = record if record is not None else (
                    self.repo.record(self.workspace, stats.catch_up) if stats.catch_up is not None else None)
                if onto is not None and self.rebase:
                    # After the answer: `wsfs commit` takes what the commit takes; the next commit or
                    # discard waits for the lock.
                    threading.Thread(target=self._rebase_after, args=(snap, onto, stats, held, mark),
                                     name="wsfs-rebase", daemon=True).start()
                    handed = True
            finally:
                if not handed:
                    snap.close()
            self.commits["count"] += record is not None
            self.commits["bytes_uploaded"] += stats.bytes_uploaded
            self.commits["seconds"] += stats.seconds
        finally:
            if not handed:
                self._commit_lock.release()
        if record is not None:
            log.info("%s: commit: %s@%d in %.2f s (%s)", self.label, self.workspace, record.version, stats.seconds,
                     ", ".join(f"{k} {v:.2f}" for k, v in stats.phases.items()))
        elif handed:
            log.info("%s: commit: nothing to commit; going on over %s@%s", self.label, self.workspace, stats.catch_up)
        else:
            log.debug("%s: commit: nothing to commit", self.label)  # (every periodic catch-up that finds none)
        return {"workspace": self.workspace, "version": record.version if record else None,
                "changed": stats.changed, "ours": stats.ours, "rebased": stats.rebased, "rebasing": handed,
                "catch_up": stats.catch_up if handed and record is None else None,
                "overwritten": [named("path", p) for p in stats.overwritten], "recovered": stats.recovered,
                "files_read": stats.files_read, "objects_uploaded": stats.objects_uploaded,
                "bytes_uploaded": stats.bytes_uploaded, "seconds": round(stats.seconds, 3)}

    def _rebase_after(self, snap: Any, record: VersionRecord, stats: Any, held: set[int], mark: int) -> None:
        """(its own thread, holding the commit lock) The re-base after a commit; then releases both."""
        try:
            prepared = None
            try:
                prepared = self._prepare_rebase(snap, record, stats, held, mark)
            finally:
                snap.close()
            if prepared is not None:
                self._rebase(record, prepared, mark)
        except trio.RunFinishedError:  # unmounted meanwhile: the layer stays where it is
            pass
        except Exception:  # noqa: BLE001 - the commit stands; the mount goes on over its base
            log.exception("%s: re-base onto %s@%d failed", self.label, self.workspace, record.version)
        finally:
            self.rebases += 1
            self._commit_lock.release()

    def _snapshot(self, read_base: Any) -> tuple[Any, int, set[int]]:
        """(trio thread) The layer's snapshot for a commit, the mutations count at that moment, and the
        layer's inodes the kernel holds then."""
        tree = self.tree
        assert tree is not None
        return tree.layer.snapshot(read_base, durable=False), tree.mutations, tree.held(self.ops.inodes.counts)

    def _prepare_rebase(self, snap: Any, record: VersionRecord, stats: Any, held: set[int],
                        mark: int) -> tuple[VersionView, Prepared] | None:
        """(worker thread, after a commit) If the mount stayed idle (*mark*: the mutations count at the
        snapshot) and no file is open, the new version's view and what the re-base onto it needs: the
        mount then shows other writers' changes and commits from there (``docs/decisions/live-rebase.md``).

        Otherwise, or if the new version's index cannot be had now, None: the layer stays where it is
        (correct, only more to compare at the next commit), and the next commit tries again.
        """
        from wsfs.format.tree import path_of
        from wsfs.versions.diff import record_changes

        tree = self.tree
        assert tree is not None
        if not trio.from_thread.run_sync(self._idle, mark, trio_token=self.trio_token):
            log.info("%s: stays over %s@%d: written to since the commit began", self.label,
                     self.workspace, snap.base_id.version)
            return None
        old = tree.view
        manifest = None
        try:
            t0 = time.monotonic()
            base = self.repo.record(self.workspace, snap.base_id.version)
            # Where the new version differs from what the mount showed (the merged view): of the keys
            # commit compared, those it found unlike; any other holds the base's record in the merged view.
            keys = set(stats.unlike)
            if stats.compared is not None:
                keys.update(c.key for c in record_changes(self.repo, base, record) or () if c.key not in stats.compared)
            theirs = [path_of(k) for k in sorted(keys)]
            t1 = time.monotonic()
            manifest = self.repo.open_manifest(record)
            t2 = time.monotonic()
            prepared = prepare_rebase(snap, manifest, held, theirs)
            log.debug("%s: re-base prepared: changes %.3f s, index %.3f s, walk %.3f s", self.label, t1 - t0,
                      t2 - t1, time.monotonic() - t2)
        except WsfsError as e:
            log.info("%s: stays over %s@%d for now (%s)", self.label, self.workspace, snap.base_id.version, e)
            if manifest is not None:
                manifest.close()
            return None
        view = VersionView(manifest, old.cache, label=f"{self.workspace}@{record.version}", stats=record.stats,
                           deadline=old.deadline)
        view.small_prefetch_max = old.small_prefetch_max
        return view, prepared

    def _rebase(self, record: VersionRecord, prepared: tuple[VersionView, Prepared], mark: int) -> bool:
        """(worker thread) Finish what :meth:`_prepare_rebase` began, on the trio thread if still idle."""
        from wsfs.layer import BaseId

        view, found = prepared
        started = time.monotonic()
        try:
            calls = trio.from_thread.run_sync(self._rebase_now, view, BaseId(self.workspace, record.version,
                                                                             record.manifest), found, mark,
                                              trio_token=self.trio_token)
        except Exception:  # the commit stands; the layer's transaction decides where it is (WriteLayer.rebase)
            log.exception("%s: re-base onto %s@%d failed", self.label, self.workspace, record.version)
            calls = None
        if calls is None:
            assert self.tree is not None
            if self.tree.view is not view:
                view.manifest.close()
            return False
        took = time.monotonic() - started
        self._wake_lease("base")
        self._wake_lease("published")  # (now the base's: that lease goes)
        self._invalidate(calls)
        log.info("%s: now over %s@%d (%d paths other writers changed; %d inodes the kernel holds; "
                 "%.3f s on the request thread)", self.label, self.workspace, record.version, len(found.theirs),
                 len(self.ops.inodes), took)
        return True

    def _idle(self, mark: int) -> bool:
        """(trio thread) No change since *mark* (the merged view is what the commit published) and no read or
        write under way (they hold the layer's inode numbers across awaits).  Open files may stay open."""
        assert self.tree is not None
        return self.tree.mutations == mark and not self.tree.busy

    def _rebase_now(self, view: VersionView, base_id: Any, prepared: Prepared,
                    mark: int) -> list[tuple[int, bytes, int]] | None:
        """(trio thread) :meth:`WritableTree.rebase` if still idle; the kernel's entries to invalidate."""
        tree = self.tree
        assert tree is not None
        if not self._idle(mark):
            return None
        out = tree.rebase(view, base_id, prepared, list(self.ops.inodes.counts))
        if out is not None:
            self.view = view
            self.version = base_id.version
        return out

    @staticmethod
    def _invalidate(changed: list[tuple[int, bytes, int]]) -> None:
        """(worker thread) Make the kernel drop what it cached of ``(parent, name, inode)``: the entry, the
        inode's attributes and pages, the parent's listing and attributes (kernel numbers; 0: none)."""
        # Here, not on the trio thread, which is free to answer requests the kernel holds locks for
        # (so synchronous calls, whose ENOENT for what the kernel never cached is no error).
        calls: list[tuple[Any, tuple[Any, ...]]] = []
        for parent, name, ino in changed:
            if parent:
                calls.append((pyfuse3.invalidate_entry, (parent, name)))
            if ino:
                calls.append((pyfuse3.invalidate_inode, (ino,)))
        calls += [(pyfuse3.invalidate_inode, (parent,)) for parent in {p for p, _, _ in changed if p}]
        for call, args in calls:
            try:
                call(*args)
            except (OSError, pyfuse3.FUSEError):  # the kernel does not know it: nothing cached
                pass

    def layer_discard(self, request: dict[str, Any]) -> dict[str, Any]:
        """(worker thread) ``wsfs discard``: drop pending changes, then make the kernel forget what it
        cached of those paths (entries and attributes: the base shows through again)."""
        tree = self.tree
        assert tree is not None
        raw = request.get("paths")
        if raw is not None and (not isinstance(raw, list) or not all(isinstance(p, str) for p in raw)):
            raise UsageError("discard: paths must be a list of text")
        paths = None if raw is None else [os.fsencode(p) for p in raw]
        with self._commit_lock:
            changed = trio.from_thread.run_sync(tree.discard, paths)
        self.pending.invalidate(ages=True)
        self._invalidate(changed)
        return {"discarded": len(changed)}

    def layer_status(self) -> dict[str, Any]:
        """(worker thread) ``wsfs status``: the layer's base and pending changes, read here from a snapshot
        of the layer (the trio thread only takes it: a walk there held a 40,000-entry mount's requests for
        1.7 s)."""
        tree = self.tree
        if tree is None:
            return {"read_only": True, "mountpoint": self.mountpoint, "workspace": self.workspace,
                    "version": self.version}
        snap = trio.from_thread.run_sync(functools.partial(tree.layer.snapshot, durable=False))
        try:
            snap.prefetch_if_large()
            out = tree.status(snap)
        finally:
            snap.close()
        out.update(read_only=False, mountpoint=self.mountpoint, pid=os.getpid(),
                   layer_bytes=layer_disk_bytes(tree.state_dir), rebases=self.rebases)
        return out

    async def main(self, verdict: Verdict) -> None:
        self.trio_token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.view.nursery = nursery  # read-ahead tasks run here
            await nursery.start(self._watch_signals)
            await nursery.start(control.serve, self.mountpoint, self.cache_dir, self.handle)
            nursery.start_soon(self._maintenance)
            if self.version is not None and self.lease:
                nursery.start_soon(self._lease, lambda: self.version, "base")  # (a re-base moves it)
                if self.tree is not None:
                    nursery.start_soon(self._lease, self._published_version, "published")
            if self.tree is not None:
                nursery.start_soon(self._commit_timer, self.tree)
                nursery.start_soon(self._watch_pending, self.tree)
                if self.commit_interval:
                    nursery.start_soon(self._auto_commit, self.commit_interval)
            if isinstance(self.view, VersionView):
                index = self.view.manifest
                if isinstance(index, BuildingIndex) and not index.ready:
                    # Served from the index's first rows until it is finished; then what needs all of it.
                    early = self._listed_early
                    self.view.listed_hook = lambda ino: len(early) < _LISTED_EARLY_MAX and early.append(ino)
                    index.on_ready.append(functools.partial(self._index_ready, self.view, nursery))
                    index.attach(trio.lowlevel.current_trio_token())
                else:
                    self._index_ready(self.view, nursery)
            endpoint = self._start_metrics() if self.metrics else None
            log.info("%s: mounted at %s (pid %d)", self.label, self.mountpoint, os.getpid())
            notify_systemd("READY=1")
            verdict.send("OK")
            if self.start_preloader is not None:
                # No checkpoint since the index was attached: _index_ready cannot have run before this.
                self.preloader = self.start_preloader()
            try:
                await pyfuse3.main()
                if self.tree is not None and self.commit_on_umount:
                    await self._final_commit()  # unmounted by the kernel (umount): no request can come now
            finally:
                if endpoint is not None:
                    endpoint.shutdown()
                    endpoint.server_close()
            self.view.deadline.stop()
            nursery.cancel_scope.cancel()

    def _index_ready(self, view: VersionView, nursery: trio.Nursery) -> None:
        """(trio thread) The version's index is open: the view queries it directly from now on; the preload
        helper is told about directories; the profile's prefetch starts."""
        if isinstance(view.manifest, BuildingIndex) and view.manifest.manifest is not None:
            view.manifest = view.manifest.manifest  # (the BuildingIndex closes it at unmount)
        if self.preloader is not None:
            # Hints go out at the next scheduler tick, after the handler's
            # reply: the kernel is then creating the listed inodes already.
            token, listed = trio.lowlevel.current_trio_token(), self.preloader.listed
            view.listed_hook = lambda ino: token.run_sync_soon(listed, ino)
            preloader = self.preloader
            view.packs_elsewhere = lambda: preloader.fetches_packs
            for ino in self._listed_early:  # listed before the helper could be told
                listed(ino)
        else:
            view.listed_hook = None
        self._listed_early = []
        if view.recorder is not None and self.version is not None:
            nursery.start_soon(self._prefetch_profile, view, self.version)

    async def _commit_now(self, message: str) -> bool:
        """Commit the layer from a worker thread (as ``wsfs commit``); False (logged) if it failed."""
        try:
            r = await trio.to_thread.run_sync(self._commit, {"message": message})
        except WsfsError as e:
            log.error("%s: %s failed, the changes stay in the layer: %s", self.label, message, e)
            return False
        if r["version"] is not None:
            log.info("%s: %s: %s@%d, %d entries changed", self.label, message, self.workspace, r["version"],
                     r["changed"])
        return True

    async def _final_commit(self) -> None:
        if not self.final_commit_done:
            self.final_commit_done = True
            self.rebase = False  # unmounting: no mount to go on over anything
            self.final_commit_failed = not await self._commit_now("commit at unmount")

    async def _auto_commit(self, interval: float) -> None:
        """``-o commit_interval=``: commit whatever is pending that often.  With nothing pending the same
        commit catches up (unless ``norebase``): if other writers published since, the mount goes on over
        the latest version (a re-base), so their changes show without a commit of ours; else nothing
        happens but one look at the head."""
        tree = self.tree
        assert tree is not None
        while True:
            await trio.sleep(interval)
            if tree.layer.pending():
                await self._commit_now("periodic commit")
            elif self.rebase:
                await self._commit_now("periodic catch-up")

    def _start_metrics(self) -> Any:
        """The ``-o metrics=`` endpoint: each scrape reads ``stats()`` on the trio thread (which owns the state)."""
        from wsfs import metrics

        assert self.metrics is not None
        token = trio.lowlevel.current_trio_token()
        server, port = metrics.serve(self.metrics, lambda: trio.from_thread.run_sync(self.stats, trio_token=token))
        log.info("%s: metrics at http://%s/metrics", self.label, self.metrics.rsplit(":", 1)[0] + f":{port}")
        return server

    async def _prefetch_profile(self, view: VersionView, version: int) -> None:
        """Warm the cache with what earlier mounts of this workspace read (background, 2 threads)."""
        cache = view.cache
        self.profile_loading = True

        def loaded() -> None:
            self.profile_loading = False

        self.profile_prefetched = await prefetch_profile(
            self.repo,
            self.workspace,
            version,
            view.manifest.chunk_sizes,  # runs here, on the trio thread that owns the manifest
            lambda cid, size: cache.prepare(cid, size=size),
            trio.CapacityLimiter(2),
            loaded,
        )

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    continue  # a closed terminal must not unmount a background daemon
                log.info("%s: %s received, unmounting", self.label, signal.Signals(signum).name)
                if self.tree is not None and self.commit_on_umount:
                    # Committed while the mount still answers (requests meanwhile are served, and go in
                    # or after the commit); the watchdog then waits as long as a commit may take.
                    _start_watchdog(self.mountpoint, self.label, _STOP_GRACE_COMMIT)
                    await self._final_commit()
                else:
                    _start_watchdog(self.mountpoint, self.label, _STOP_GRACE if self.tree is None else _STOP_GRACE_RW)
                self.view.deadline.stop()  # operations waiting for the store answer now
                pyfuse3.terminate()
                return

    async def _commit_timer(self, tree: WritableTree) -> None:
        """Commit the layer's open batch once it is due (``commit_interval``), so an idle mount commits too."""
        failing = False
        while True:
            await trio.sleep(_COMMIT_TICK)
            try:
                tree.commit_if_due()
                failing = False
            except Exception as e:  # noqa: BLE001 - e.g. a full state folder: retried at the next tick
                if not failing:
                    log.error("%s: committing the write layer failed (retrying): %s", self.label, e)
                failing = True

    def _mutations(self) -> int:
        """FUSE requests so far that changed the mount (succeeded)."""
        requests, errors = self.ops.stats.requests, self.ops.stats.errors
        return sum(requests[op] - errors[op] for op in _MUTATIONS)

    async def _watch_pending(self, tree: WritableTree) -> None:
        """Keep :attr:`pending` (the uncommitted entries, bytes and the oldest write's age) current."""
        failing = False
        seen, waiting_since = -1, None
        while True:
            self.pending.observe(self._mutations())
            # The walk costs CPU (40,200 pending entries: ~1.1 s) that the mount's users would wait for: when
            # one is due, it waits for a second without requests (at mount, a user's first `ls` comes
            # first), or at most _PENDING_BUSY_MAX.
            before, seen = seen, sum(self.ops.stats.requests.values())
            # Nor while a commit runs: it sets the figures itself when it ends (committed).
            due = self.pending.due_now() and not self._commit_lock.locked()
            if due and before != seen:  # requests came in the last second
                waiting_since = waiting_since or time.monotonic()
                due = time.monotonic() - waiting_since >= _PENDING_BUSY_MAX
            if due:
                waiting_since = None
                generation, t0, snap = self.pending.generation, time.monotonic(), None
                try:
                    # The snapshot on this thread (the layer's), the walk in a worker thread over it; what is
                    # written meanwhile is not in it.
                    mark, taken_ns = self._mutations(), time.time_ns()
                    snap = tree.layer.snapshot(durable=False)
                    counted = await trio.to_thread.run_sync(_PendingGauge.count, snap)
                    self.pending.apply(counted, generation, time.monotonic() - t0,
                                       taken_ns if self._mutations() != mark else None)
                    failing = False
                except Exception:  # noqa: BLE001 - a metric must never end the mount
                    if not failing:
                        log.warning("%s: computing the pending changes failed", self.label, exc_info=True)
                    failing, self.pending.stale = True, False
                    self.pending.due = time.monotonic() + _PENDING_MIN_INTERVAL
                finally:
                    if snap is not None:
                        snap.close()
            await trio.sleep(1.0)

    def _wake_lease(self, name: str) -> None:
        """(any thread but the trio one) Have the lease *name* rewritten now (its version moved)."""
        wake = self._lease_wakes.get(name)
        if wake is not None and self.trio_token is not None:
            try:
                trio.from_thread.run_sync(wake.set, trio_token=self.trio_token)
            except trio.RunFinishedError:
                pass

    async def _lease(self, version_of: Callable[[], int | None], wake_name: str | None = None) -> None:
        """Keep a lease in the store (``versions/leases.py``) on the version ``version_of()`` names, so gc keeps
        it while mounted: the mounted version; for a read-write mount also the version its layer last
        published, which its next commit reads (the changes other writers made since).

        Written at mount, renewed every ``leases.RENEW`` s and when :meth:`_wake_lease` names *wake_name*
        (``version_of()`` changed: the same key is rewritten), deleted when ``version_of()`` is None and at unmount.  A store that
        cannot be reached (or credentials that may not write) cost only the lease, logged once at INFO: the
        mount works, and gc treats the version as unleased (its grace period still applies).
        """
        store, lease_id = self.repo.store, leases.new_lease_id()
        mode = "ro" if self.tree is None else "rw"
        key = None
        failing = False
        if wake_name is not None:
            self._lease_wakes[wake_name] = trio.Event()

        async def delete() -> None:
            assert key is not None
            try:
                await trio.to_thread.run_sync(store.delete, key, abandon_on_cancel=True)
            except WsfsError as e:
                log.info("%s: lease %s not deleted (it expires by itself): %s", self.label, key, e)

        try:
            while True:
                version = version_of()
                try:
                    if version is not None:
                        key = await trio.to_thread.run_sync(functools.partial(
                            leases.write_lease, store, self.workspace, version, lease_id, mode=mode),
                            abandon_on_cancel=True)  # a hung store must not hold up the unmount
                    elif key is not None:
                        await delete()
                        key = None
                    failing = False
                except WsfsError as e:
                    # INFO, not a warning: offline mounts and read-only credentials are normal; without
                    # a lease, gc's grace period is what protects the mounted version.
                    if not failing:
                        log.info("%s: cannot write its lease for gc (retrying): %s", self.label, e)
                    failing = True
                with trio.move_on_after(leases.RENEW if not failing else 30):
                    if wake_name is None:
                        await trio.sleep_forever()
                    await self._lease_wakes[wake_name].wait()
                    self._lease_wakes[wake_name] = trio.Event()  # a fresh one for the next change
        finally:
            if key is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await delete()

    def _published_version(self) -> int | None:
        """(trio thread) The version a read-write mount's layer last published, if not its base."""
        assert self.tree is not None
        v = self.tree.layer.published()[0]
        return v if v != self.version else None

    async def _maintenance(self) -> None:
        while True:
            await trio.sleep(_MAINTENANCE_INTERVAL)
            try:
                await trio.to_thread.run_sync(self.view.cache.flush)
            except Exception:  # noqa: BLE001 - a busy index must not end the mount
                log.warning("cache index flush failed", exc_info=True)


def _start_watchdog(mountpoint: str, label: str, grace: float = _STOP_GRACE) -> None:
    """After a stop signal: if the process still runs ``_STOP_GRACE`` s later, detach the mount and exit.

    Stopping is bounded by design (see the module docstring); this is the
    guarantee for what was not foreseen, so that a supervisor's SIGTERM
    always frees the mountpoint quickly.  A daemon thread: a normal exit
    does not wait for it.
    """

    def fire() -> None:
        time.sleep(grace)
        log.error("%s: still running %g s after the stop signal; detaching %s and exiting",
                  label, grace, mountpoint)
        try:
            if is_mounted(mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True, timeout=2)
        except (OSError, subprocess.SubprocessError) as e:
            log.error("%s: cannot detach %s: %s", label, mountpoint, e)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=fire, name="wsfs-stop-watchdog", daemon=True).start()
