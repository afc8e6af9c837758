"""``mount.wsfs``: the mount(8) helper behind ``mount -t wsfs`` and ``/etc/fstab``.

util-linux runs ``/sbin/mount.<type> SPEC DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]``
for a type it cannot mount itself.  Helpers are looked up in ``/sbin``,
``/sbin/fs.d`` and ``/sbin/fs`` only (never ``$PATH``), with a sanitized
environment (no ``$HOME``, a standard ``$PATH``).  ``mount -t fuse.wsfs``
looks for ``mount.fuse.wsfs`` first: the same program, installed under both
names (``scripts/install.sh``).

The helper translates the call into ``wsfs mount`` arguments and runs the
mount in background mode in this process: it returns once the mount is live
(exit 0) or with a one-line message and a mount(8) exit status.

Options (``-o``, comma-separated):

* mount(8)/fstab bookkeeping, dropped: ``defaults auto noauto user users
  nouser owner group user=* nofail _netdev x-* X-* comment=*``.
* ``ro`` (read-only) or ``rw`` (read-write: ``wsfs mount --rw``, changes
  kept in a write layer, ``state_dir=DIR`` names its folder); the last one
  wins.  mount(8) passes ``rw`` whenever no mode is given (``defaults``), so
  a plain ``mount -t wsfs ws /mnt`` is read-write, as for any file system:
  write ``ro`` in fstab for a read-only mount.
* wsfs-specific: ``repo=URL`` (``--repo``), ``endpoint_url=URL``
  (``--endpoint-url``), ``cache_dir=DIR`` (``--cache-dir``), and
  ``cache_size=SIZE``, ``timeout=SECONDS``, ``allow_other``, ``log=PATH``, ``debug`` (passed on
  as ``wsfs mount -o``).
* kernel flags ``exec noexec suid nosuid dev nodev atime noatime relatime
  nodiratime sync async``: passed on to ``wsfs mount -o``, which decides
  (FUSE mounts are always ``nosuid,nodev`` here).
* anything else is an error (exit 1), or with ``-s`` (sloppy) a warning.

Flags: ``-f`` (fake) checks and translates but does not mount; ``-v`` prints
the ``wsfs mount`` command; ``-n`` is accepted (there is no mtab to write);
``-N`` (another mount namespace) is refused.  When the mountpoint already
serves the requested version (``demo@3`` on a mount of ``wsfs:demo@3``; any
version for a bare ``demo``), the helper succeeds without mounting again:
``mount -a`` compares the fstab source with the mounted one, which never
match (``wsfs:`` prefix), and would otherwise fail on every wsfs line.

The environment of an fstab mount is not a user's, so before mounting the
helper loads ``/etc/wsfs/environment`` (``$WSFS_ENVIRONMENT_FILE`` overrides
the path) if it exists: ``KEY=VALUE`` lines as in a systemd
``EnvironmentFile=`` (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``AWS_SHARED_CREDENTIALS_FILE``, ``WSFS_REPO``...).  Variables already set
win.  ``NOTIFY_SOCKET`` is removed: a helper's daemon is never a service's
main process.

Secrets stay out of argv: ``-o`` may carry ``endpoint_url=http://user:password@host``,
and a mount daemon is a fork of this process, whose ``/proc/PID/cmdline``
(readable by every local user) it would keep for its whole life.  So before
doing anything else the helper re-executes itself (``python -P -m
wsfs.daemon.mount_helper SPEC DIR [-sfnv]``) with the option string in a
pipe whose descriptor ``$WSFS_MOUNT_OPTIONS_FD`` names; the new process reads
it, closes it and removes the variable.  Messages it prints pass through
``wsfs.redact``.

Exit statuses follow mount(8): 0 mounted; 1 a bad invocation or option,
including what ``wsfs mount`` rejects as a usage error (a bad name, a
mountpoint that is not a directory or is already mounted); 2 a system error;
4 an internal error; 8 interrupted; 32 the mount failed (no such workspace or version, store
unreachable or denied, integrity or format error, FUSE refused the mount).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NoReturn

from wsfs import redact
from wsfs.format.names import version_number

PROG = "mount.wsfs"
ENVIRONMENT_FILE = "/etc/wsfs/environment"
FSTYPES = ("wsfs", "fuse.wsfs")

# mount(8) exit statuses (util-linux include/exitcodes.h, MNT_EX_*).
EX_SUCCESS = 0
EX_USAGE = 1
EX_SYSERR = 2
EX_SOFTWARE = 4
EX_USER = 8
EX_FAIL = 32

# Options for mount(8), fstab and systemd only; never passed on.
_DROPPED = frozenset({
    "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "nofail", "_netdev",
})
_DROPPED_PREFIXES = ("x-", "X-", "comment=", "user=")
# Generic kernel mount flags: passed on to ``wsfs mount -o``, which owns their meaning.
_KERNEL_FLAGS = frozenset({
    "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime", "relatime", "nodiratime",
    "sync", "async",
})
# wsfs options that become ``wsfs`` arguments rather than ``-o`` items.
_GLOBAL_OPTIONS = {"repo": "--repo", "endpoint_url": "--endpoint-url", "cache_dir": "--cache-dir"}
_VALUE_OPTIONS = frozenset({"cache_size", "prefetch_small", "timeout", "log", "state_dir"})
_FLAG_OPTIONS = frozenset({"allow_other", "debug", "history", "noprofile", "nopreload"})

OPTIONS_FD_VARIABLE = "WSFS_MOUNT_OPTIONS_FD"
_MAX_OPTIONS = 60_000  # bytes: the option string must fit in a pipe's buffer (64 KiB)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

KNOWN = "ro, rw, state_dir=DIR, repo=URL, endpoint_url=URL, cache_dir=DIR, cache_size=SIZE, prefetch_small=SIZE, timeout=SECONDS, allow_other, history, noprofile, nopreload, log=PATH, debug"


class HelperError(Exception):
    """A bad invocation or option: one line on stderr, exit 1."""


@dataclass
class Invocation:
    """``mount.wsfs SPEC DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`` as parsed."""

    spec: str
    mountpoint: str
    options: list[str] = field(default_factory=list)  # the -o items, in order
    fake: bool = False
    sloppy: bool = False
    verbose: bool = False
    no_mtab: bool = False
    fstype: str = "wsfs"


@dataclass
class Translation:
    """What ``-o`` becomes: ``wsfs`` arguments, ``wsfs mount -o`` items, and notes for the user."""

    global_args: list[str] = field(default_factory=list)
    mount_options: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse_argv(argv: list[str]) -> Invocation:
    """Parse the util-linux helper convention; options and operands may come in any order."""
    operands: list[str] = []
    inv = Invocation("", "")
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            operands.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            continue
        # A cluster of short options: -sfnv, -oOPTS, -o OPTS, -tTYPE, -NNS.
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c in "otN":
                value = arg[j:]
                if not value:
                    if i >= len(argv):
                        raise HelperError(f"option -{c} needs a value")
                    value = argv[i]
                    i += 1
                if c == "o":
                    inv.options.extend(item.strip() for item in value.split(","))
                elif c == "t":
                    if value not in FSTYPES:
                        raise HelperError(f"this helper mounts type wsfs or fuse.wsfs, not {value!r}")
                    inv.fstype = value
                else:
                    raise HelperError("mounting in another namespace (-N) is not supported")
                break
            if c == "f":
                inv.fake = True
            elif c == "s":
                inv.sloppy = True
            elif c == "v":
                inv.verbose = True
            elif c == "n":
                inv.no_mtab = True
            elif c == "r":
                inv.options.append("ro")
            elif c == "w":
                inv.options.append("rw")
            elif c == "h":
                raise HelperError(usage())
            else:
                raise HelperError(f"unknown flag -{c}\n{usage()}")
    if len(operands) != 2:
        raise HelperError(f"expected SPEC and MOUNTPOINT, got {len(operands)} operand(s)\n{usage()}")
    inv.spec, inv.mountpoint = operands
    if not inv.spec or inv.spec.startswith("-"):
        raise HelperError(f"not a WORKSPACE[@VERSION]: {inv.spec!r}")
    return inv


def usage() -> str:
    return (f"usage: {PROG} WORKSPACE[@VERSION] MOUNTPOINT [-sfnv] [-o OPTIONS]\n"
            f"       (normally run by mount -t wsfs or an fstab line); options: {KNOWN}")


def translate_options(items: Iterable[str], *, sloppy: bool = False) -> Translation:
    """Map mount(8) ``-o`` items to ``wsfs`` arguments; the last value of a repeated option wins."""
    out = Translation()
    globals_: dict[str, str] = {}
    values: dict[str, str] = {}
    flags: list[str] = []
    asked_rw = False
    for item in items:
        if not item or item in _DROPPED or item.startswith(_DROPPED_PREFIXES):
            continue
        key, eq, val = item.partition("=")
        if item == "ro":
            asked_rw = False
        elif item == "rw":
            asked_rw = True
        elif item in _KERNEL_FLAGS or (item in _FLAG_OPTIONS):
            if item not in flags:
                flags.append(item)
        elif eq and key in _GLOBAL_OPTIONS:
            if not val:
                raise HelperError(f"option {key}= needs a value")
            globals_[key] = val
        elif eq and key in _VALUE_OPTIONS:
            if not val:
                raise HelperError(f"option {key}= needs a value")
            values[key] = val
        elif key == "remount":
            raise HelperError("a wsfs mount cannot be remounted; unmount it and mount again")
        elif sloppy:
            out.warnings.append(f"ignoring unknown option {item!r} (sloppy mode)")
        else:
            raise HelperError(f"unknown or malformed option {item!r} (known: {KNOWN})")
    if "state_dir" in values and not asked_rw:
        raise HelperError("state_dir= is for read-write mounts (rw)")
    for key, val in globals_.items():
        out.global_args += [_GLOBAL_OPTIONS[key], val]
    out.mount_options = ["rw" if asked_rw else "ro", *flags, *(f"{k}={v}" for k, v in values.items())]
    return out


def wsfs_argv(inv: Invocation, tr: Translation) -> list[str]:
    """The ``wsfs`` command line (without the program name) that performs the mount in background mode."""
    return ["mount", *tr.global_args, "-o", ",".join(tr.mount_options), inv.spec, inv.mountpoint]


def parse_environment_file(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's ``EnvironmentFile=`` reads them (the common subset).

    Blank lines and lines starting with ``#`` or ``;`` are skipped; a value
    wholly in single or double quotes loses them (``\\"`` and ``\\\\`` unescape
    in double quotes); ``export`` before the name is tolerated.
    """
    env: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, eq, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        if not eq or not _ENV_NAME.fullmatch(key):
            raise HelperError(f"line {n}: expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = value.replace('\\"', '"').replace("\\\\", "\\")
        env[key] = value
    return env


def load_environment(path: str | None = None) -> list[str]:
    """Set the variables of the environment file that are not set yet; returns their names."""
    path = path or os.environ.get("WSFS_ENVIRONMENT_FILE") or ENVIRONMENT_FILE
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise HelperError(f"cannot read {path}: {e.strerror}") from None
    try:
        values = parse_environment_file(text)
    except HelperError as e:
        raise HelperError(f"{path}: {e}") from None
    added = []
    for key, value in values.items():
        if key not in os.environ:
            os.environ[key] = value
            added.append(key)
    return added


def _unescape_mountinfo(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal (\040...).
    return os.fsdecode(field.encode("utf-8", "surrogateescape").decode("unicode_escape").encode("latin-1"))


def _topmost_mount(mountpoint: str, mountinfo: str) -> tuple[list[str], list[str]] | None:
    """The fields of the topmost mount on *mountpoint* in *mountinfo*: (before " - ", after it)."""
    mp = os.path.abspath(mountpoint)
    found = None
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            head, sep, tail = line.rstrip("\n").partition(" - ")
            fields, rest = head.split(" "), tail.split(" ")
            if not sep or len(fields) < 5 or len(rest) < 2:
                continue
            if _unescape_mountinfo(fields[4]) == mp:
                found = fields, rest
    return found


def mounted_source(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The source (``wsfs:demo@3``) of the topmost ``fuse.wsfs`` mount on *mountpoint*, if any."""
    top = _topmost_mount(mountpoint, mountinfo)
    if top is None or top[1][0] != "fuse.wsfs":
        return None
    return _unescape_mountinfo(top[1][1])


def mounted_device(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> tuple[int, int] | None:
    """``(major, minor)`` of the topmost mount on *mountpoint*, if any.

    Read from the mount table, not by ``stat``: a FUSE daemon must never send a
    request to its own mount (a thread waiting for its own answer keeps the
    process, and with it the connection, alive even through SIGKILL).
    """
    top = _topmost_mount(mountpoint, mountinfo)
    if top is None:
        return None
    major, _, minor = top[0][2].partition(":")
    try:
        return int(major), int(minor)
    except ValueError:
        return None


def same_version_mounted(spec: str, source: str | None) -> bool:
    """Whether a mount showing *source* already serves what *spec* asks for.

    ``demo@3`` matches ``wsfs:demo@3``; ``demo`` (the latest version) matches
    any version of ``demo``; a tag cannot be checked without the repository,
    so it never matches.
    """
    if not source or not source.startswith("wsfs:"):
        return False
    ws, _, version = source[len("wsfs:"):].rpartition("@")
    want_ws, at, want = spec.partition("@")
    if want_ws != ws or version_number(version) is None:
        return False
    return not at or version_number(want) == version_number(version)


def _live(mountpoint: str) -> bool:
    try:
        os.statvfs(mountpoint)  # a dead FUSE mount (no daemon) answers ENOTCONN
    except OSError:
        return False
    return True


def _one_line(text: object) -> str:
    return " ".join(redact.redact(str(text)).split())


def _reexec_with_options_in_a_pipe(inv: Invocation) -> NoReturn:
    """Run this helper again with the same operands and flags, and the ``-o`` items in a pipe, not in argv."""
    data = ",".join(inv.options).encode()
    if len(data) > _MAX_OPTIONS:
        raise HelperError(f"the mount options are too long ({len(data)} bytes)")
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    os.set_inheritable(r, True)
    flags = "".join(c for c, on in (("f", inv.fake), ("s", inv.sloppy), ("v", inv.verbose), ("n", inv.no_mtab)) if on)
    argv = [sys.executable, "-P", "-m", "wsfs.daemon.mount_helper", "-t", inv.fstype,
            *([f"-{flags}"] if flags else []), "--", inv.spec, inv.mountpoint]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, {**os.environ, OPTIONS_FD_VARIABLE: str(r)})
    except OSError as e:
        raise HelperError(f"cannot run {sys.executable}: {e.strerror}") from None


def _options_from_pipe() -> list[str] | None:
    """The ``-o`` items our parent passed in a pipe (see the module docstring), or None if not re-executed."""
    fd = os.environ.pop(OPTIONS_FD_VARIABLE, None)
    if fd is None:
        return None
    try:
        with os.fdopen(int(fd), "rb") as f:
            text = f.read(_MAX_OPTIONS + 1).decode()
    except (ValueError, OSError) as e:
        raise HelperError(f"cannot read the mount options from ${OPTIONS_FD_VARIABLE}={fd}: {e}") from None
    return [item.strip() for item in text.split(",")] if text else []


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mount.wsfs`` (and ``mount.fuse.wsfs``); returns a mount(8) exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        inv = parse_argv(argv)
        piped = _options_from_pipe()
        if piped is not None:
            inv.options = piped
        tr = translate_options(inv.options, sloppy=inv.sloppy)  # a bad option fails before the re-execution
        if piped is None and inv.options and not inv.fake:
            _reexec_with_options_in_a_pipe(inv)
        for w in tr.warnings:
            print(f"{PROG}: warning: {w}", file=sys.stderr)
        loaded = load_environment()
    except HelperError as e:
        print(f"{PROG}: {redact.redact(str(e))}", file=sys.stderr)
        return EX_USAGE
    cmd = wsfs_argv(inv, tr)
    if inv.verbose:
        extra = f" (environment: {', '.join(loaded)})" if loaded else ""
        print(f"{PROG}: wsfs {redact.redact(shlex.join(cmd))}{extra}", file=sys.stderr)
    if inv.fake:
        return EX_SUCCESS
    # mount -a compares the fstab source (demo@3) with the mounted one (wsfs:demo@3), never equal:
    # answer for it, so that mount -a stays idempotent.  A dead mount is not "already mounted".
    if same_version_mounted(inv.spec, mounted_source(inv.mountpoint)) and _live(inv.mountpoint):
        if inv.verbose:
            print(f"{PROG}: {inv.spec} is already mounted on {inv.mountpoint}", file=sys.stderr)
        return EX_SUCCESS
    # Not a service's main process: a READY=1 from the daemon would go to whoever started mount(8).
    os.environ.pop("NOTIFY_SOCKET", None)
    return _run(cmd, inv.verbose)


def _run(cmd: list[str], verbose: bool) -> int:
    from wsfs.cli import build_parser
    from wsfs.errors import UsageError, WsfsError
    from wsfs.terminal import EscapingFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter(f"{PROG}: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    redact.install()
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args = build_parser().parse_args(cmd)
    except SystemExit as e:  # argparse has printed why
        return EX_SUCCESS if e.code == 0 else EX_USAGE
    try:
        code = int(args.fn(args))
    except UsageError as e:
        print(f"{PROG}: {_one_line(e)}", file=sys.stderr)
        return EX_USAGE
    except WsfsError as e:
        print(f"{PROG}: {_one_line(e)}", file=sys.stderr)
        return EX_FAIL
    except OSError as e:
        print(f"{PROG}: {_one_line(e)}", file=sys.stderr)
        return EX_SYSERR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EX_USER
    except Exception as e:  # noqa: BLE001 - mount(8) wants one line and a status, not a traceback
        print(f"{PROG}: internal error: {_one_line(repr(e))}", file=sys.stderr)
        return EX_SOFTWARE
    return EX_SUCCESS if code == 0 else EX_FAIL


if __name__ == "__main__":
    sys.exit(main())
