"""The ``mount``, ``umount`` and ``stats`` subcommands.

:func:`register` adds them to the main parser (``wsfs.cli.build_parser``).
pyfuse3 and trio are imported only when ``mount`` runs, so the other
commands start fast and work where pyfuse3 is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from wsfs.config import Settings, resolve
from wsfs.errors import UsageError, WsfsError

# Generic mount(8) options that mean nothing to us (fstab, mount -t wsfs).
_IGNORED_OPTIONS = {
    "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "exec", "noexec",
    "suid", "nosuid", "dev", "nodev", "atime", "noatime", "relatime", "nodiratime", "sync", "async",
}


def _parse_size(text: str, *, what: str = "cache size", zero: bool = False) -> int:
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    suffix = t[-1:] if t[-1:] in units else ""
    try:
        n = int(float(t[: len(t) - len(suffix)]) * units[suffix])
    except ValueError:
        raise UsageError(f"not a size: {text!r}") from None
    if n < 0 or (n == 0 and not zero):
        raise UsageError(f"{what} must be {'zero or more' if zero else 'positive'}, got {text!r}")
    return n


def parse_mount_options(values: list[str]) -> dict[str, Any]:
    """``-o a,b=c`` (repeatable) as a dict; unknown options are a usage error."""
    out: dict[str, Any] = {}
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item or item in _IGNORED_OPTIONS:
                continue
            key, eq, val = item.partition("=")
            if key in ("ro", "rw") and not eq:
                out["rw"] = key == "rw"  # the last one wins, as in mount(8)
                continue
            if key in ("allow_other", "debug", "history", "noprofile", "nopreload", "nolease", "commit_on_umount",
                       "norebase") and not eq:
                out[key] = True
            elif key in ("cache_dir", "log", "state_dir", "metrics") and eq and val:
                out[key] = val
            elif key == "cache_size" and eq:
                out[key] = _parse_size(val)
            elif key == "prefetch_small" and eq:
                out[key] = _parse_size(val, what="prefetch_small", zero=True)
            elif key == "commit_interval" and eq:
                from wsfs.versions.gc import parse_duration

                out[key] = parse_duration(val)
                if out[key] <= 0:
                    raise UsageError(f"commit_interval={val}: must be a positive duration (e.g. 10m)")
            elif key == "timeout" and eq:
                from wsfs.store.base import parse_timeout

                out[key] = parse_timeout(val, "timeout")
            else:
                raise UsageError(f"unknown or malformed mount option {item!r} "
                                 "(known: ro, rw, state_dir=DIR, allow_other, history, noprofile, nopreload, nolease, metrics=HOST:PORT, commit_interval=DURATION, commit_on_umount, norebase, cache_dir=DIR, cache_size=SIZE, "
                                 "prefetch_small=SIZE, timeout=SECONDS, log=PATH)")
    return out


@contextlib.contextmanager
def _importing_beside(module: str | None) -> Iterator[None]:
    """Import *module* in a thread while the block runs (its own imports), and wait for it at the end.

    A mount imports the daemon (pyfuse3, trio: ~0.4 s) and, for S3, botocore (~0.3 s, more after the
    page cache was dropped); much of either is reading files, so side by side they take about as long
    as the larger alone.  The thread is over before the block's caller goes on (a background mount
    forks next, which must happen with no other thread).  A failure is left to the caller's own import.
    """
    if module is None:
        yield
        return
    t = threading.Thread(target=_try_import, args=(module,), name="wsfs-import", daemon=True)
    t.start()
    try:
        yield
    finally:
        t.join()


def _try_import(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - imported again, and reported, where it is used
        pass


def cmd_mount(args: argparse.Namespace) -> int:
    opts = parse_mount_options(args.options)
    cache_dir = opts.get("cache_dir") or args.cache_dir
    settings = resolve(args.repo, args.endpoint_url, cache_dir)
    # The fields of wsfs.daemon.mount.MountOptions (plain values: they may travel to wsfs mountd).
    fields: dict[str, Any] = dict(
        foreground=args.foreground,
        allow_other=opts.get("allow_other", False),
        log_path=args.log or opts.get("log"),
        debug_fuse=opts.get("debug", False),
        verbose=args.verbose,
        history=args.history or opts.get("history", False),
        profile=not opts.get("noprofile", False),
        preload=not opts.get("nopreload", False),
        lease=not opts.get("nolease", False),
        metrics=opts.get("metrics"),
        commit_interval=opts.get("commit_interval"),
        commit_on_umount=opts.get("commit_on_umount", False),
        rebase=not opts.get("norebase", False),
        rw=args.rw or opts.get("rw", False),
        state_dir=os.path.abspath(opts["state_dir"]) if opts.get("state_dir") else None,
    )
    if fields["metrics"] is not None:
        from wsfs.metrics import parse_listen

        parse_listen(fields["metrics"])  # a usage error now, not after mounting
    if (fields["commit_interval"] or fields["commit_on_umount"] or not fields["rebase"]) and not fields["rw"]:
        raise UsageError("-o commit_interval=, commit_on_umount and norebase are for read-write mounts: add --rw")
    if fields["state_dir"] and not fields["rw"]:
        raise UsageError("-o state_dir= is for read-write mounts: add --rw")
    for key in ("cache_size", "prefetch_small", "timeout"):
        if key in opts:
            fields[key] = opts[key]
    if fields["log_path"] is not None:
        fields["log_path"] = os.path.abspath(fields["log_path"])
    if not args.foreground and _started_by_mountd(settings, args, fields):
        return 0
    with _importing_beside("wsfs.store.s3" if settings.repo.startswith("s3://") else None):
        from wsfs.daemon.mount import MountOptions, run_mount
        from wsfs.repository import Ref
    return run_mount(settings, Ref.parse(args.ref), args.mountpoint, MountOptions(**fields))


def _started_by_mountd(settings: Settings, args: argparse.Namespace, fields: dict[str, Any]) -> bool:
    """A background mount through a resident ``wsfs mountd`` (docs/daemon.md), if one serves us.

    Exits (status 0) once the mount is live; raises the error if it failed (as a mount in this
    process would have raised it); False if no mountd took it: mount in this process.
    """
    from wsfs.daemon.mountd import request_mount
    from wsfs.daemon.verdict import exit_mounted, verdict_error

    mountpoint = os.path.abspath(args.mountpoint)
    verdict = request_mount({"settings": settings._asdict(), "ref": args.ref, "mountpoint": mountpoint,
                             "options": fields})
    if verdict is None:
        return False
    if verdict.startswith(b"OK"):
        exit_mounted()
    from wsfs.daemon.mount import default_log_path

    log_path = fields["log_path"] or default_log_path(settings.cache_dir, mountpoint)
    err = verdict_error(verdict, f"the mount daemon exited before the mount was ready; see {log_path}")
    assert err is not None
    raise err


def cmd_mountd(args: argparse.Namespace) -> int:
    from wsfs.daemon.mountd import serve

    return serve(args.socket)


def _mounted(path: str) -> bool:
    from wsfs.daemon.mount import is_mounted

    return is_mounted(path)


def cmd_umount(args: argparse.Namespace) -> int:
    from wsfs.daemon.control import query, remove_stale

    mp = os.path.abspath(args.mountpoint)
    if not _mounted(mp):
        raise UsageError(f"{mp} is not mounted")
    settings = resolve(args.repo, args.endpoint_url, args.cache_dir)
    pid = None
    try:
        pid = int(query(mp, settings.cache_dir, "status", timeout=2.0)["pid"])
    except (WsfsError, OSError, ValueError, KeyError):
        pass  # a dead daemon, or one we cannot reach: unmount anyway
    r = subprocess.run(["fusermount3", "-u", mp], capture_output=True, text=True)
    if r.returncode != 0:
        if not _daemon_dead(mp):
            raise WsfsError(f"cannot unmount {mp}: {r.stderr.strip() or 'fusermount3 failed'}")
        # The daemon is gone (ENOTCONN): detach the dead mount.
        r = subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, text=True)
        if r.returncode != 0:
            raise WsfsError(f"cannot unmount {mp}: {r.stderr.strip() or 'fusermount3 -z failed'}")
    if pid is not None:
        _wait_exit(pid, 30.0)
    else:
        remove_stale(mp, settings.cache_dir)
    return 0


def _daemon_dead(mp: str) -> bool:
    """Whether the FUSE connection of *mp* is gone (ENOTCONN).

    ``statvfs`` always reaches the daemon; ``stat`` may be answered from the
    kernel's attribute cache even after the daemon died.
    """
    try:
        os.statvfs(mp)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def _wait_exit(pid: int, timeout: float) -> None:
    """Wait until the daemon *pid* (not our child) has exited, so the cache is closed when we return."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                # A zombie has exited; reaping it is its (adoptive) parent's business.
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.02)
    raise WsfsError(f"unmounted, but the daemon (pid {pid}) is still running after {timeout:.0f}s")


def cmd_stats(args: argparse.Namespace) -> int:
    from wsfs.daemon.control import query

    mp = os.path.abspath(args.mountpoint)
    settings = resolve(args.repo, args.endpoint_url, args.cache_dir)
    s = query(mp, settings.cache_dir, "stats")
    s.pop("ok", None)
    if args.json:
        print(json.dumps(s, sort_keys=True))
        return 0
    if args.prometheus:
        from wsfs.metrics import exposition

        sys.stdout.buffer.write(exposition(s))
        return 0
    what = f"{s['workspace']}@{s['version']}" if s["version"] is not None else f"{s['workspace']} (history)"
    print(f"{what} at {s['mountpoint']} (pid {s['pid']}, up {s['uptime_s']:.0f}s)")
    print(f"{'OP':<12} {'REQUESTS':>9} {'ERRORS':>7} {'MEAN µs':>9} {'MAX µs':>9}")
    for op, n in sorted(s["requests"].items(), key=lambda kv: -kv[1]):
        lat = s["latency_us"].get(op, {})
        print(f"{op:<12} {n:>9} {s['errors'].get(op, 0):>7} {lat.get('mean', 0):>9.1f} {lat.get('max', 0):>9.1f}")
    c = s["cache"]
    print(f"cache: {c['hits']} hits, {c['misses']} misses, {c['fetches']} fetches ({c['fetch_bytes']} B), "
          f"{c['corrupt']} corrupt, {c['failures']} failures; {c['bytes']} of {c['max_bytes']} B in {c['files']} files")
    st = s["store"]
    print(f"store: {st['requests']} requests, {st['bytes_in']} B in")
    if "history" in s:
        h = s["history"]
        print(f"history: {h['versions']} versions, {h['tags']} tags; open: {h['open_versions']}; "
              f"{h['manifest_opens']} manifest opens, {h['listings']} listings")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from wsfs.daemon.control import query
    from wsfs.terminal import escape, escape_name

    mp = os.path.abspath(args.mountpoint)
    settings = resolve(args.repo, args.endpoint_url, args.cache_dir)
    s = query(mp, settings.cache_dir, "changes", timeout=60.0)
    s.pop("ok", None)
    if args.json:
        print(json.dumps(s, sort_keys=True))
        return 0
    if s.get("read_only"):
        print(f"{s['workspace']}@{s['version']} at {s['mountpoint']}: read-only, no changes")
        return 0
    changes = s["changes"]
    published = s.get("published_version", s["base_version"])
    print(f"{s['workspace']}@{s['base_version']} at {s['mountpoint']} (read-write, pid {s['pid']})"
          + (f"; this mount last published {s['workspace']}@{published}" if published != s["base_version"] else ""))
    print(f"state folder: {escape(s['state_dir'])} ({_human(s['layer_bytes'])} on disk)")
    print(f"{len(changes)} pending change{'s' if len(changes) != 1 else ''}" + (":" if changes else ""))
    for c in changes:
        size = f"  {_human(c['size'])}" if c.get("type") == "file" else ""
        kind = "/" if c.get("type") == "dir" else ""
        raw = unquote_to_bytes(c["path_pct"]) if "path_pct" in c else os.fsencode(c["path"])  # (an older daemon)
        path = escape_name(raw).decode("utf-8", "backslashreplace")
        print(f"{c['kind']} {path}{kind}{size}")
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    from wsfs.daemon.control import query

    mp = os.path.abspath(args.mountpoint)
    settings = resolve(args.repo, args.endpoint_url, args.cache_dir)
    t0 = time.monotonic()
    try:
        with _commit_progress(args) as progress:
            s = query(mp, settings.cache_dir, "commit", timeout=None, args={"message": args.message, "ours": args.ours},
                      progress=progress)
    except WsfsError as e:
        if args.json:
            out = {"ok": False, "error": str(e), "exit_code": e.exit_code}
            if isinstance(getattr(e, "paths", None), list):
                out["paths"] = e.paths  # type: ignore[attr-defined]  # a conflict's: [{path, path_pct}]
            print(json.dumps(out))
        raise
    s.pop("ok", None)
    if args.json:
        print(json.dumps(s, sort_keys=True))
        return 0
    if s["version"] is None:
        print(f"nothing to commit: {s['workspace']} already holds every change of {args.mountpoint}"
              + (f" (recorded {s['workspace']}@{s['recovered']}, published by an interrupted commit)"
                 if s.get("recovered") else "")
              + (f"; the mount goes on over {s['workspace']}@{s['catch_up']}, the latest" if s.get("catch_up") else ""))
        return 0
    extra = ""
    if s.get("rebased"):
        extra += ", on top of other writers' versions"
    if s.get("overwritten"):
        extra += f"; ours replaced theirs at {len(s['overwritten'])} path(s)"
    print(f"committed {s['workspace']}@{s['version']}: {s['changed']} entries changed, "
          f"{_human(s['bytes_uploaded'])} uploaded in {s['objects_uploaded']} objects, "
          f"{s['seconds'] if s.get('seconds') is not None else time.monotonic() - t0:.2f} s{extra}")
    return 0


@contextlib.contextmanager
def _commit_progress(args: argparse.Namespace) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """On a terminal (stderr), a bar per step of the daemon's commit from its progress lines; else None
    (no progress asked: the daemon answers with its one reply line, as before)."""
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    from wsfs.terminal import escape

    units = {"reading": " entries", "uploading": " objects"}
    bar: list[Any] = [None, ""]

    def show(info: dict[str, Any]) -> None:
        step = str(info.get("step", ""))[:20]
        done, total = info.get("done"), info.get("total")
        if not isinstance(done, int) or not isinstance(total, int):
            return
        if bar[0] is None or bar[1] != step:
            if bar[0] is not None:
                bar[0].close()
            bar[0] = tqdm(desc=f"commit: {escape(step)}", unit=units.get(step, ""), total=total or None,
                          file=sys.stderr, leave=False)
            bar[1] = step
        b = bar[0]
        if total and b.total != total:
            b.total = total
        b.n = done
        b.refresh()

    try:
        yield show
    finally:
        if bar[0] is not None:
            bar[0].close()


def cmd_discard(args: argparse.Namespace) -> int:
    from wsfs.daemon.control import query

    mp = os.path.abspath(args.mountpoint)
    settings = resolve(args.repo, args.endpoint_url, args.cache_dir)
    paths = None
    if args.paths:
        paths = []
        for p in args.paths:
            rel = os.path.relpath(p, mp) if os.path.isabs(p) else os.path.normpath(p)
            if rel == os.pardir or rel.startswith(os.pardir + os.sep):
                raise UsageError(f"{p} is not inside {args.mountpoint}")
            paths.append("" if rel == os.curdir else rel)
    s = query(mp, settings.cache_dir, "discard", timeout=120.0, args={"paths": paths})
    n = s.get("discarded", 0)
    print(f"discarded {n} pending change{'s' if n != 1 else ''}" + ("" if paths is None else f" at {len(paths)} path(s)"))
    return 0


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def register(subparsers: Any, common_parent: argparse.ArgumentParser) -> None:
    """Add ``mount``, ``umount`` and ``stats`` to the ``wsfs`` subparsers."""

    def add(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = subparsers.add_parser(name, help=help, description=help, parents=[common_parent])
        sp.set_defaults(fn=fn)
        return sp

    sp = add("mount", cmd_mount, "mount a version (or with --history every version) at MOUNTPOINT, fetched lazily: "
             "read-only, or with --rw read-write (changes kept locally in a state folder until committed)")
    sp.epilog = ("Read-write (--rw): changes go to the state folder at once and are committed there within about "
                 "1 s (a crash loses at most the last second, as a whole); fsync and fdatasync of any file make every change so far durable (syncfs and sync do not reach FUSE daemons) (a crash or kill -9 "
                 "keeps them); unmount commits everything durably. The changes stay in the state folder: "
                 "wsfs status lists them. Base content is fetched per 64 KiB block touched, never per file.")
    sp.add_argument("ref", metavar="WORKSPACE[@V]")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    sp.add_argument("-f", "--foreground", action="store_true",
                    help="stay in the foreground and log to stderr (default: detach once mounted)")
    sp.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS",
                    help="comma-separated: ro, rw (same as --rw), state_dir=DIR (--rw: the folder keeping the "
                         "changes; default <state dir>/layers/<repo hash>-<workspace>), allow_other, history, noprofile (no access profile), "
                         "nopreload (no helper process putting listed small files into the page cache), nolease (write no lease "
                         "on the version for gc: read-only credentials; gc's grace period alone then protects it), "
                         "metrics=HOST:PORT (serve Prometheus metrics on that loopback address), commit_interval=DURATION (--rw: "
                         "commit pending changes that often, e.g. 10m; with nothing pending, go on over a newer "
                         "version another writer published), commit_on_umount (--rw: commit them when "
                         "unmounted or stopped), norebase (--rw: stay over the mounted version after commits instead of "
                         "going on over each version published; other writers' changes then show only after a remount), "
                         "cache_dir=DIR, cache_size=SIZE, "
                         "prefetch_small=SIZE (fetch listed one-chunk files up to SIZE, and listed small files' packs, in the background; "
                         "default 1M, 0: off), timeout=SECONDS (an operation that waits longer for the store "
                         "fails with ETIMEDOUT, and so does each store request; default $WSFS_OP_TIMEOUT or 30), "
                         "log=PATH")
    sp.add_argument("--history", action="store_true",
                    help="every version as MOUNTPOINT/<n>/..., every tag as a symlink MOUNTPOINT/<tag> -> <n> "
                         "(give WORKSPACE without @V; same as -o history)")
    sp.add_argument("--rw", action="store_true",
                    help="read-write: writes go to a local write layer (a state folder, kept across unmounts and "
                         "crashes; fsync makes them durable) over the version, which must be format 2; a later --rw "
                         "mount with the same state folder shows them again. WORKSPACE without @V then means the "
                         "layer's base version")
    sp.add_argument("--log", metavar="PATH",
                    help="log file (default in background: <cache_dir>/logs/<mountpoint>.log)")

    sp = add("mountd", cmd_mountd, "stay resident, warm, and start background mounts (wsfs mount without -f) "
             "for callers in this process's own context: each mount is live ~0.5 s sooner (docs/daemon.md 4b)")
    sp.epilog = ("A background wsfs mount (or mount -t wsfs) asks mountd first: mountd forks, and the child, "
                 "with every module already imported, becomes the mount daemon, with the caller's environment, "
                 "working directory and umask. Callers with another uid, gid, groups, capabilities, namespaces, "
                 "root, interpreter or wsfs mount in their own process, as without mountd. Mounts outlive "
                 "mountd (systemd: KillMode=process, systemd/wsfs-mountd.service). If wsfs' files change on "
                 "disk, mountd exits with status 75 at the next request, for its supervisor to start a fresh "
                 "one. Stop with SIGTERM or Ctrl-C; READY=1 to $NOTIFY_SOCKET once listening.")
    sp.add_argument("--socket", metavar="PATH",
                    help="listen here (default: $WSFS_MOUNTD_SOCKET, else /run/wsfs/mountd.sock for root, "
                    "$XDG_RUNTIME_DIR/wsfs/mountd.sock otherwise; wsfs mount looks in the same place)")

    sp = add("umount", cmd_umount, "unmount a wsfs mount and wait for its daemon to exit")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")

    sp = add("status", cmd_status, "a read-write mount's base version, pending changes (A/M/D/T, sizes), "
             "layer size and state folder")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    sp.add_argument("--json", action="store_true", help="print the status as JSON")

    sp = add("commit", cmd_commit, "publish the pending changes of a read-write mount as the workspace's next "
             "version (exit 5 with the paths if another writer changed the same paths since; 8 if the store "
             "cannot be reached: nothing is lost, run it again)")
    sp.epilog = ("Writes made while a commit runs go into the next one. The mount goes on as it is: it shows what "
                 "you wrote; changes other writers published are in the new version but not shown by this mount "
                 "until it is mounted again. On a terminal a progress bar per step (reading, building, "
                 "uploading) is shown on stderr (-q: none).")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    sp.add_argument("-m", "--message", default="", help="the version's message")
    sp.add_argument("--ours", action="store_true",
                    help="where another writer changed the same paths, publish ours over theirs")
    sp.add_argument("--json", action="store_true", help="print the result (version, entries, bytes...) as JSON")

    sp = add("discard", cmd_discard, "drop pending changes of a read-write mount (all, or at and below PATHs): "
             "the base version shows there again")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    sp.add_argument("paths", nargs="*", metavar="PATH",
                    help="paths inside the mount (absolute, or relative to MOUNTPOINT); none: everything")

    sp = add("stats", cmd_stats, "request, cache and store counters of a mount")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    fmt = sp.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the counters as JSON")
    fmt.add_argument("--prometheus", action="store_true",
                     help="print them in the Prometheus text format (what -o metrics=HOST:PORT serves)")
