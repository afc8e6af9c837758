"""``mount.wsfs`` (mount -t wsfs, fstab) and the ``wsfs@.service`` systemd unit.

Three layers:

* pure functions of ``wsfs.daemon.mount_helper``: the util-linux calling
  convention, option translation, the environment file, "already mounted";
* real mounts through util-linux: ``mount -t wsfs``, ``mount -t fuse.wsfs``
  and ``mount -T <fstab>``, then ``umount``, which must make the daemon exit.
  mount(8) looks for helpers in ``/sbin`` only (not ``$PATH``; ``-i`` would
  skip helpers), so unless ``scripts/install.sh`` linked ``/sbin/mount.wsfs``
  to this interpreter's console script, the ``sbin_helper`` fixture links it
  for the module to a wrapper running this interpreter, and removes it after;
* the unit: ``systemd-analyze verify``, and its ExecStart/ExecStopPost run as
  systemd would (environment file, ``${VAR}`` expansion, ``$NOTIFY_SOCKET``):
  READY=1 must come from the main pid, SIGTERM must unmount and exit 0, and
  after a SIGKILL ExecStopPost must detach the dead mount.

The daemons started by mount(8) are not our children: they are found through
the control socket (or ``/proc``, by their unique mountpoint argument), and
teardown unmounts lazily and kills those pids only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mountkit import helper_pids, is_mounted, wait_gone

from support.cli import Wsfs
from support.procs import end
from wsfs.daemon import mount_helper as mh
from wsfs.daemon.mount_helper import HelperError, Invocation

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "wsfs@.service"
CONF_EXAMPLE = ROOT / "systemd" / "wsfs-mount.conf.example"
HELPER_NAMES = ("mount.wsfs", "mount.fuse.wsfs")
SBIN = Path("/sbin")

# -- (a) pure functions ----------------------------------------------------------------


def test_parse_argv_util_linux_forms() -> None:
    inv = mh.parse_argv(["demo@3", "/mnt/demo", "-o", "ro,repo=s3://b/p"])
    assert inv == Invocation("demo@3", "/mnt/demo", ["ro", "repo=s3://b/p"])
    inv = mh.parse_argv(["demo", "/mnt/x", "-sfnv", "-oro", "-t", "fuse.wsfs", "-o", "allow_other"])
    assert (inv.sloppy, inv.fake, inv.no_mtab, inv.verbose) == (True, True, True, True)
    assert inv.options == ["ro", "allow_other"] and inv.fstype == "fuse.wsfs"
    # Options before the operands, and a value glued to its flag.
    inv = mh.parse_argv(["-v", "-twsfs", "-o", "ro", "ws@tag", "/m"])
    assert (inv.spec, inv.mountpoint, inv.verbose) == ("ws@tag", "/m", True)


@pytest.mark.parametrize("argv, message", [
    (["demo"], "expected SPEC and MOUNTPOINT"),
    (["a", "b", "c"], "expected SPEC and MOUNTPOINT"),
    (["demo", "/m", "-o"], "needs a value"),
    (["demo", "/m", "-t", "ext4"], "not 'ext4'"),
    (["demo", "/m", "-N", "/proc/1/ns/mnt"], "namespace"),
    (["demo", "/m", "-x"], "unknown flag -x"),
    (["--", "-demo", "/m"], "not a WORKSPACE"),
])
def test_parse_argv_errors(argv: list[str], message: str) -> None:
    with pytest.raises(HelperError, match=re.escape(message)):
        mh.parse_argv(argv)


def test_translate_drops_fstab_options_and_maps_wsfs_ones() -> None:
    items = ("ro,nofail,_netdev,defaults,auto,noauto,user,users,nouser,owner,group,user=alice,"
             "x-systemd.requires=net.target,X-mount.mkdir,comment=systemd.automount,"
             "repo=s3://bucket/prefix,endpoint_url=http://127.0.0.1:8333,cache_dir=/var/cache/wsfs,"
             "cache_size=20G,allow_other,log=/var/log/wsfs.log,debug,nosuid,nodev,noatime").split(",")
    tr = mh.translate_options(items)
    assert tr.warnings == []
    assert tr.global_args == ["--repo", "s3://bucket/prefix", "--endpoint-url", "http://127.0.0.1:8333",
                              "--cache-dir", "/var/cache/wsfs"]
    assert tr.mount_options == ["ro", "allow_other", "debug", "nosuid", "nodev", "noatime",
                                "cache_size=20G", "log=/var/log/wsfs.log"]


def test_translate_rw_mounts_read_write() -> None:
    # mount(8) passes "-o rw" whenever no mode is given (plain mount -t wsfs, fstab "defaults").
    tr = mh.translate_options(["rw", "state_dir=/var/lib/wsfs/demo"])
    assert tr.mount_options == ["rw", "state_dir=/var/lib/wsfs/demo"]
    assert tr.warnings == []
    assert mh.translate_options(["rw", "ro"]).mount_options == ["ro"]  # the last one wins, as in mount(8)
    assert mh.translate_options([]).mount_options == ["ro"]
    with pytest.raises(mh.HelperError, match="state_dir= is for read-write mounts"):
        mh.translate_options(["ro", "state_dir=/x"])


def test_translate_last_value_wins_and_flags_are_not_repeated() -> None:
    tr = mh.translate_options(["repo=/a", "cache_size=1G", "allow_other", "repo=/b", "cache_size=2G",
                               "allow_other"])
    assert tr.global_args == ["--repo", "/b"]
    assert tr.mount_options == ["ro", "allow_other", "cache_size=2G"]


@pytest.mark.parametrize("item, message", [
    ("bogus", "unknown or malformed option 'bogus'"),
    ("allow_other=1", "unknown or malformed option 'allow_other=1'"),
    ("repo=", "repo= needs a value"),
    ("cache_size=", "cache_size= needs a value"),
    ("remount", "cannot be remounted"),
    ("cache_dir", "unknown or malformed option 'cache_dir'"),
])
def test_translate_errors(item: str, message: str) -> None:
    with pytest.raises(HelperError, match=re.escape(message)):
        mh.translate_options(["ro", item])


def test_translate_sloppy_drops_unknown_options_with_a_warning() -> None:
    tr = mh.translate_options(["ro", "bogus", "uid=1000"], sloppy=True)
    assert tr.mount_options == ["ro"]
    assert tr.warnings == ["ignoring unknown option 'bogus' (sloppy mode)",
                           "ignoring unknown option 'uid=1000' (sloppy mode)"]


def test_wsfs_argv_is_what_the_wsfs_parser_expects() -> None:
    from wsfs.cli import build_parser

    inv = mh.parse_argv(["demo@3", "/mnt/demo", "-o", "ro,repo=s3://b/p,cache_dir=/c,cache_size=5G,allow_other"])
    cmd = mh.wsfs_argv(inv, mh.translate_options(inv.options))
    assert cmd == ["mount", "--repo", "s3://b/p", "--cache-dir", "/c", "-o", "ro,allow_other,cache_size=5G",
                   "demo@3", "/mnt/demo"]
    args = build_parser().parse_args(cmd)
    assert (args.ref, args.mountpoint, args.repo, args.cache_dir) == ("demo@3", "/mnt/demo", "s3://b/p", "/c")
    assert args.options == ["ro,allow_other,cache_size=5G"] and not args.foreground


def test_environment_file_syntax() -> None:
    text = """
# credentials for fstab mounts
; also a comment
AWS_ACCESS_KEY_ID=AKIA123
AWS_SECRET_ACCESS_KEY = "se cret\\"x"
export WSFS_REPO='s3://bucket/prefix'
EMPTY=
"""
    assert mh.parse_environment_file(text) == {
        "AWS_ACCESS_KEY_ID": "AKIA123", "AWS_SECRET_ACCESS_KEY": 'se cret"x',
        "WSFS_REPO": "s3://bucket/prefix", "EMPTY": "",
    }
    for bad in ("JUST_A_NAME", "1ABC=x", "A-B=x"):
        with pytest.raises(HelperError, match="expected KEY=VALUE"):
            mh.parse_environment_file(bad)


def test_load_environment_keeps_variables_already_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "environment"
    env_file.write_text("WSFS_TEST_A=from-file\nWSFS_TEST_B=from-file\n")
    monkeypatch.setenv("WSFS_TEST_A", "from-env")
    monkeypatch.delenv("WSFS_TEST_B", raising=False)
    monkeypatch.setenv("WSFS_ENVIRONMENT_FILE", str(env_file))
    assert mh.load_environment() == ["WSFS_TEST_B"]
    assert (os.environ["WSFS_TEST_A"], os.environ["WSFS_TEST_B"]) == ("from-env", "from-file")
    assert mh.load_environment(str(tmp_path / "missing")) == []


def test_mounted_source_and_same_version(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "42 27 0:39 / /mnt/my\\040demo ro,nosuid,nodev,relatime - fuse.wsfs wsfs:demo@3 ro,user_id=0\n"
        "43 27 0:40 / /mnt/other rw,relatime shared:5 - fuse.sshfs host:/x rw\n"
    )
    assert mh.mounted_source("/mnt/my demo", str(mi)) == "wsfs:demo@3"
    assert mh.mounted_source("/mnt/other", str(mi)) is None
    assert mh.mounted_source("/mnt/none", str(mi)) is None
    assert mh.same_version_mounted("demo@3", "wsfs:demo@3")
    assert mh.same_version_mounted("demo", "wsfs:demo@3")  # latest: any version is fine
    assert mh.same_version_mounted("demo@03", "wsfs:demo@3")
    assert not mh.same_version_mounted("demo@4", "wsfs:demo@3")
    assert not mh.same_version_mounted("demo@release", "wsfs:demo@3")  # a tag needs the repository
    assert not mh.same_version_mounted("other@3", "wsfs:demo@3")
    assert not mh.same_version_mounted("demo@3", None)


def test_main_fake_and_usage_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    monkeypatch.setenv("WSFS_ENVIRONMENT_FILE", str(tmp_path / "none"))
    assert mh.main(["demo@1", "/mnt/x", "-f", "-v", "-s", "-o", "ro,odd,repo=/r"]) == mh.EX_SUCCESS
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "mount.wsfs: warning: ignoring unknown option 'odd' (sloppy mode)",
        "mount.wsfs: wsfs mount --repo /r -o ro demo@1 /mnt/x",
    ]
    assert mh.main(["demo@1", "/mnt/x", "-o", "ro,odd"]) == mh.EX_USAGE
    assert capsys.readouterr().err.startswith("mount.wsfs: unknown or malformed option 'odd' (known: ro, rw, state_dir=DIR, repo=URL")
    bad_env = tmp_path / "bad"
    bad_env.write_text("not an assignment\n")
    monkeypatch.setenv("WSFS_ENVIRONMENT_FILE", str(bad_env))
    assert mh.main(["demo@1", "/mnt/x", "-f"]) == mh.EX_USAGE
    assert capsys.readouterr().err == f"mount.wsfs: {bad_env}: line 1: expected KEY=VALUE, got 'not an assignment'\n"


def test_options_from_the_pipe_of_a_re_execution(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """The re-executed helper takes its -o string from the pipe $WSFS_MOUNT_OPTIONS_FD names (and prints it
    redacted with -v)."""
    monkeypatch.setenv("WSFS_ENVIRONMENT_FILE", str(tmp_path / "none"))
    r, w = os.pipe()
    os.write(w, b"ro,repo=/r,endpoint_url=http://u:pw-secret@h:1/")
    os.close(w)
    monkeypatch.setenv(mh.OPTIONS_FD_VARIABLE, str(r))
    assert mh.main(["-t", "wsfs", "-fv", "--", "demo@1", "/mnt/x"]) == mh.EX_SUCCESS
    assert capsys.readouterr().err == (
        "mount.wsfs: wsfs mount --repo /r --endpoint-url http://u:***@h:1/ -o ro demo@1 /mnt/x\n")
    assert mh.OPTIONS_FD_VARIABLE not in os.environ  # not inherited by the daemon's helpers


# -- helpers for real mounts ---------------------------------------------------------------


def _scripts_helper() -> Path:
    return Path(sysconfig.get_path("scripts")) / "mount.wsfs"


def _wrapper_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"wsfs-test-mount-helper-{os.geteuid()}"


@pytest.fixture(scope="module")
def sbin_helper() -> Iterator[str]:
    """``/sbin/mount.wsfs`` and ``/sbin/mount.fuse.wsfs`` running this interpreter's wsfs.

    Installed links (scripts/install.sh) to this interpreter's console script
    are used as they are.  Missing ones are linked to a wrapper script for the
    module and removed afterwards, by the last user: every user holds a shared
    flock on a lock file, and only a holder that can upgrade it to exclusive
    removes the links.  A link to anything else is left alone and the tests skip.
    """
    wdir = _wrapper_dir()
    wdir.mkdir(mode=0o700, exist_ok=True)
    wrapper = wdir / "mount.wsfs"
    lock = os.open(wdir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tmp = wdir / f".wrapper.{os.getpid()}"
        tmp.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -P -m wsfs.daemon.mount_helper \"$@\"\n")
        tmp.chmod(0o755)
        tmp.replace(wrapper)
        ours = {os.path.realpath(wrapper), os.path.realpath(_scripts_helper())}
        how = "installed"
        for name in HELPER_NAMES:
            link = SBIN / name
            if not os.path.lexists(link):
                os.symlink(wrapper, link)
                how = f"linked to {wrapper} for this module"
            elif os.path.realpath(link) not in ours:
                pytest.skip(f"{link} exists and runs {os.path.realpath(link)}, not this interpreter's "
                            "mount.wsfs; not replacing it")
            elif not os.path.exists(link):
                pytest.skip(f"{link} points to {os.path.realpath(link)}, which does not exist: "
                            "reinstall (pip install -e . or scripts/install.sh)")
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield how
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for name in HELPER_NAMES:  # only our temporary links; install.sh's stay
                link = SBIN / name
                if link.is_symlink() and os.readlink(link) == str(wrapper):
                    link.unlink()
        os.close(lock)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``demo@1`` in a local repository: (source tree, repository)."""
    base = tmp_path_factory.mktemp("helper")
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    (src / "hello.txt").write_bytes(b"hello from wsfs\n")
    (src / "sub" / "big.bin").write_bytes(os.urandom(300 * 1024))  # above the inline threshold: a blob
    w = Wsfs(str(base / "repo"), str(base / "push-cache"))
    w("init")
    w.push(src, "demo")
    return src, base / "repo"


def _env(tmp_path: Path) -> dict[str, str]:
    """The environment mount(8) gets: no wsfs settings but ours, no system environment file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSFS_") and k != "NOTIFY_SOCKET"}
    cfg = tmp_path / "xdg-config"
    cfg.mkdir(exist_ok=True)
    env.update(WSFS_ENVIRONMENT_FILE=str(tmp_path / "no-environment"), XDG_CONFIG_HOME=str(cfg))
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"  # a zombie has exited
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _daemon_pids(mnt: Path, cache: Path) -> set[int]:
    """The daemon serving *mnt*: from its control socket, else ``/proc`` (argv holding our unique *mnt*)."""
    from wsfs.daemon.control import query

    pids = set()
    with contextlib.suppress(Exception):
        pids.add(int(query(str(mnt), str(cache), "status", timeout=2.0)["pid"]))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mnt) in argv and any(b"mount_helper" in a or b"mount.wsfs" in a for a in argv):
            pids.add(int(entry))
    return {p for p in pids if _alive(p)}


def _force_cleanup(mnt: Path, pids: set[int]) -> None:
    """Teardown: unmount (lazily if needed), then end these pids only.  Asserts nothing is left."""
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=30)
    for pid in pids:
        _wait_gone(pid, 10)
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, 5):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
    assert not is_mounted(mnt), f"{mnt} is still mounted after teardown"


@dataclass
class HelperMount:
    mnt: Path
    cache: Path
    env: dict[str, str]
    pids: set[int]

    @property
    def log(self) -> Path:
        from wsfs.daemon.mount import default_log_path

        return Path(default_log_path(str(self.cache), str(self.mnt)))


@pytest.fixture
def place(tmp_path: Path) -> Iterator[HelperMount]:
    """A mountpoint and cache; teardown finds and ends whatever daemon serves it."""
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    hm = HelperMount(mnt, cache, _env(tmp_path), set())
    try:
        yield hm
    finally:
        _force_cleanup(mnt, hm.pids | _daemon_pids(mnt, cache))


def _mountinfo(mnt: Path) -> list[tuple[str, str, str]]:
    """(fstype, source, per-mount options) of every mount on *mnt*."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields, rest = head.split(), tail.split()
            if fields[4] == str(mnt):
                out.append((rest[0], rest[1], fields[5]))
    return out


def _check_live(hm: HelperMount, src: Path) -> int:
    """The mount serves demo@1 read-only; returns the daemon's pid."""
    assert _mountinfo(hm.mnt) == [("fuse.wsfs", "wsfs:demo@1", "ro,nosuid,nodev,relatime")]
    assert (hm.mnt / "hello.txt").read_bytes() == (src / "hello.txt").read_bytes()
    assert (hm.mnt / "sub" / "big.bin").read_bytes() == (src / "sub" / "big.bin").read_bytes()
    with pytest.raises(OSError) as e:
        (hm.mnt / "new").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    pids = _daemon_pids(hm.mnt, hm.cache)
    hm.pids |= pids
    assert len(pids) == 1, pids
    return pids.pop()


def _umount_and_check(hm: HelperMount, pid: int) -> None:
    """util-linux umount: the mount goes, the daemon exits, its log says it unmounted cleanly."""
    r = _run(["umount", str(hm.mnt)], hm.env)
    assert r.returncode == 0, r.stderr
    assert _wait_gone(pid, 30), f"daemon {pid} still running after umount"
    assert not is_mounted(hm.mnt)
    log = hm.log.read_text()
    assert f"demo@1: unmounted {hm.mnt}" in log, log
    bad = [line for line in log.splitlines() if re.search(r" (ERROR|WARNING|CRITICAL) |Traceback", line)]
    assert not bad, "\n".join(bad)


# -- (b) mount -t wsfs ----------------------------------------------------------------------


@pytest.mark.parametrize("fstype", ["wsfs", "fuse.wsfs"])
def test_mount_t_wsfs_then_umount(sbin_helper: str, demo: tuple[Path, Path], place: HelperMount,
                                  fstype: str) -> None:
    src, repo = demo
    r = _run(["mount", "-t", fstype, "demo@1", str(place.mnt), "-o", f"ro,repo={repo},cache_dir={place.cache}"],
             place.env)
    assert r.returncode == 0, f"({sbin_helper}) {r.stderr}"
    assert r.stderr == ""
    pid = _check_live(place, src)
    _umount_and_check(place, pid)


def test_mount_without_ro_mounts_read_write(sbin_helper: str, demo: tuple[Path, Path], place: HelperMount,
                                            tmp_path: Path) -> None:
    # No mode: mount(8) passes rw, as for any file system (fstab "defaults").
    src, repo = demo
    state = tmp_path / "state"
    r = _run(["mount", "-t", "wsfs", "demo@1", str(place.mnt), "-o",
              f"repo={repo},cache_dir={place.cache},state_dir={state}"], place.env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert _mountinfo(place.mnt) == [("fuse.wsfs", "wsfs:demo@1", "rw,nosuid,nodev,relatime")]
    (place.mnt / "new").write_bytes(b"written")
    assert (place.mnt / "hello.txt").read_bytes() == (src / "hello.txt").read_bytes()
    pids = _daemon_pids(place.mnt, place.cache)
    place.pids |= pids
    _umount_and_check(place, pids.pop())
    assert (state / "layer.db").exists()


def test_mount_failures_are_one_line_and_mount_nothing(sbin_helper: str, demo: tuple[Path, Path],
                                                      place: HelperMount) -> None:
    _, repo = demo
    base = ["mount", "-t", "wsfs"]
    r = _run([*base, "demo@9", str(place.mnt), "-o", f"ro,repo={repo},cache_dir={place.cache}"], place.env)
    assert (r.returncode, r.stderr) == (32, "mount.wsfs: workspace 'demo' has no version 9\n")
    r = _run([*base, "demo@1", str(place.mnt), "-o", f"ro,bogus,repo={repo}"], place.env)
    assert r.returncode == 1
    assert r.stderr.startswith("mount.wsfs: unknown or malformed option 'bogus' (known:"), r.stderr
    r = _run([*base, "demo@1", str(place.mnt / "missing"), "-o", f"ro,repo={repo},cache_dir={place.cache}"],
             place.env)
    assert r.returncode != 0 and "missing" in r.stderr
    assert not is_mounted(place.mnt)
    # -f (fake): checked and translated, nothing mounted, no daemon.
    r = _run([*base, "-f", "-v", "demo@1", str(place.mnt), "-o", f"ro,repo={repo}"], place.env)
    assert r.returncode == 0, r.stderr
    assert f"mount.wsfs: wsfs mount --repo {repo} -o ro demo@1 {place.mnt}" in r.stderr
    assert not is_mounted(place.mnt) and not _daemon_pids(place.mnt, place.cache)


# -- (c) fstab ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fstype", ["wsfs", "fuse.wsfs"])
def test_fstab_line_mount_a_is_idempotent_then_umount(sbin_helper: str, demo: tuple[Path, Path],
                                                      place: HelperMount, tmp_path: Path, fstype: str) -> None:
    src, repo = demo
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a wsfs line as in docs/mounting.md\n"
        f"demo@1  {place.mnt}  {fstype}  ro,nofail,repo={repo},cache_dir={place.cache},_netdev,"
        "x-systemd.requires=network-online.target,comment=wsfs  0 0\n"
    )
    r = _run(["mount", "-T", str(fstab), str(place.mnt)], place.env)
    assert r.returncode == 0, r.stderr
    pid = _check_live(place, src)
    # mount -a skips what is mounted: the helper answers for it (sources differ: demo@1 vs wsfs:demo@1).
    r = _run(["mount", "-T", str(fstab), "-a"], place.env)
    assert r.returncode == 0, r.stderr
    assert len(_mountinfo(place.mnt)) == 1 and _daemon_pids(place.mnt, place.cache) == {pid}
    _umount_and_check(place, pid)


def test_fstab_credentials_from_the_environment_file(sbin_helper: str, demo: tuple[Path, Path],
                                                     place: HelperMount, tmp_path: Path) -> None:
    """No repo= on the line: WSFS_REPO (like AWS_*) comes from the environment file."""
    src, repo = demo
    env_file = tmp_path / "environment"
    env_file.write_text(f"# as /etc/wsfs/environment\nWSFS_REPO={repo}\nWSFS_CACHE_DIR={place.cache}\n")
    place.env["WSFS_ENVIRONMENT_FILE"] = str(env_file)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"demo@1 {place.mnt} wsfs ro,nofail,_netdev 0 0\n")
    r = _run(["mount", "-v", "-T", str(fstab), str(place.mnt)], place.env)
    assert r.returncode == 0, r.stderr
    assert "(environment: WSFS_REPO, WSFS_CACHE_DIR)" in r.stderr
    _umount_and_check(place, _check_live(place, src))


# -- (d) the systemd unit --------------------------------------------------------------------


def _unit_service_section(unit: Path = UNIT) -> dict[str, list[str]]:
    """``[Service]`` of the unit: key -> values in order (continuation lines are not used)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _systemd_argv(line: str, env: dict[str, str]) -> tuple[str, list[str]]:
    """A systemd command line as systemd runs it: (prefix flags, argv).

    ``${VAR}`` expands inside its word, ``$VAR`` as a word of its own splits
    on whitespace, ``$$`` is a literal ``$`` (the unit uses no other forms).
    """
    prefix = re.match(r"[-@:+!]*", line).group()
    argv = []
    for word in shlex.split(line[len(prefix):]):
        if m := re.fullmatch(r"\$([A-Za-z_]\w*)", word):
            argv.extend(env.get(m[1], "").split())
            continue
        word = word.replace("$$", "\0")
        word = re.sub(r"\$\{([A-Za-z_]\w*)\}", lambda m: env.get(m[1], ""), word)
        argv.append(word.replace("\0", "$"))
    return prefix, argv


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd); not installing it from a test")
    unit = UNIT.read_text()
    wsfs = Path("/usr/local/bin/wsfs")
    if not os.access(wsfs, os.X_OK):
        # verify checks that ExecStart's program exists; point it at this interpreter's console script.
        script = Path(sysconfig.get_path("scripts")) / "wsfs"
        assert script.exists(), f"neither {wsfs} nor {script} exists"
        unit = unit.replace(str(wsfs), str(script))
    copy = tmp_path / "wsfs@.service"
    copy.write_text(unit)
    r = subprocess.run([exe, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "wsfs@" not in r.stdout + r.stderr, r.stdout + r.stderr
    inst = tmp_path / "wsfs@demo.service"
    inst.write_text(unit)
    r = subprocess.run([exe, "verify", "--man=no", str(inst)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "wsfs@" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_unit_shape() -> None:
    s = _unit_service_section()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["EnvironmentFile"] == ["-/etc/wsfs/environment", "/etc/wsfs/mounts/%i.conf"]
    assert s["KillSignal"] == ["SIGTERM"] and s["Restart"] == ["on-failure"]
    assert "ExecStop" not in s
    assert s["DeviceAllow"] == ["/dev/fuse rw"]
    # Anything that gives the service a mount namespace would hide the mount from the host.
    for key in ("PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateDevices", "PrivateMounts", "ReadOnlyPaths",
                "ReadWritePaths", "InaccessiblePaths", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "TemporaryFileSystem",
                "BindPaths", "BindReadOnlyPaths", "RootDirectory", "MountFlags", "ProtectHostname",
                "ProtectClock", "MountAPIVFS", "PrivateUsers"):
        assert key not in s, key


def _recv_notify(sock: socket.socket, want: bytes, proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for a datagram holding *want*; returns the sender's pid (SCM_CREDENTIALS)."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            msg, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            if proc.poll() is not None and want == b"READY=1":
                pytest.fail(f"the unit's ExecStart exited with {proc.returncode} before READY=1")
            continue
        pid = next(struct.unpack("3i", data)[0] for level, kind, data in anc
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        if want in msg.split(b"\n"):
            return pid
    pytest.fail(f"no {want!r} within {timeout}s")


def test_unit_commands_as_systemd_runs_them(demo: tuple[Path, Path], tmp_path: Path) -> None:
    """ExecStartPre/ExecStart/ExecStopPost with the example conf: notify from the main pid, SIGTERM, crash."""
    src, repo = demo
    s = _unit_service_section()
    conf = mh.parse_environment_file(CONF_EXAMPLE.read_text())
    assert {"WSFS_REF", "WSFS_MOUNTPOINT", "WSFS_OPTIONS", "WSFS_REPO", "WSFS_CACHE_DIR"} <= conf.keys()
    mnt = tmp_path / "new" / "mnt"  # ExecStartPre creates it
    conf.update(WSFS_REF="demo@1", WSFS_MOUNTPOINT=str(mnt), WSFS_REPO=str(repo),
                WSFS_CACHE_DIR=str(tmp_path / "cache"))
    # What systemd gives a system service: a fixed PATH, no HOME (root), the environment files.
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "LANG": "C.UTF-8",
           "XDG_CONFIG_HOME": str(tmp_path / "xdg"), **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
           **conf}
    (pre,) = s["ExecStartPre"]
    (start,) = s["ExecStart"]
    (post,) = s["ExecStopPost"]
    _, pre_argv = _systemd_argv(pre, env)
    subprocess.run(pre_argv, env=env, check=True, timeout=30)
    assert mnt.is_dir()
    _, argv = _systemd_argv(start, env)
    assert argv == ["/usr/local/bin/wsfs", "mount", "-f", "-o", f"ro,{conf['WSFS_OPTIONS']}", "demo@1", str(mnt)]
    argv = [sys.executable, "-m", "wsfs", *argv[1:]]  # the console script execs the same interpreter
    post_prefix, post_argv = _systemd_argv(post, env)
    assert post_prefix == "-"
    notify_dir = tempfile.mkdtemp(prefix="wsfs-", dir="/tmp")  # AF_UNIX paths must stay short
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for ending in ("SIGTERM", "SIGKILL"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            addr = os.path.join(notify_dir, ending)
            sock.bind(addr)
            with sock, open(tmp_path / f"{ending}.out", "wb") as out:
                proc = subprocess.Popen(argv, env={**env, "NOTIFY_SOCKET": addr}, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=out, start_new_session=True)
                procs.append(proc)
                # Type=notify with NotifyAccess=main: systemd only believes the main pid.
                assert _recv_notify(sock, b"READY=1", proc, 30) == proc.pid
                assert (mnt / "hello.txt").read_bytes() == (src / "hello.txt").read_bytes()
                assert _mountinfo(mnt)[0][:2] == ("fuse.wsfs", "wsfs:demo@1")
                if ending == "SIGTERM":  # systemctl stop: KillSignal to the main pid
                    proc.send_signal(signal.SIGTERM)
                    assert _recv_notify(sock, b"STOPPING=1", proc, 30) == proc.pid
                    assert proc.wait(timeout=30) == 0
                    assert not is_mounted(mnt)
                    r = subprocess.run(post_argv, env=env, capture_output=True, timeout=30)
                    assert r.returncode == 0, r.stderr  # nothing to detach: a no-op
                    assert not is_mounted(mnt) and mnt.is_dir()
                else:  # a crash: the kernel keeps a dead mount until ExecStopPost detaches it
                    helpers = helper_pids(proc.pid)
                    proc.kill()
                    proc.wait(timeout=30)
                    wait_gone(helpers)  # the preload helper dies with it (and with it the connection)
                    assert is_mounted(mnt)
                    with pytest.raises(OSError) as e:
                        os.statvfs(mnt)
                    assert e.value.errno == errno.ENOTCONN
                    r = subprocess.run(post_argv, env=env, capture_output=True, timeout=30)
                    assert r.returncode == 0, r.stderr
                    assert not is_mounted(mnt)
            os.unlink(addr)
    finally:
        for proc in procs:
            end(proc, 10)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)
        shutil.rmtree(notify_dir, ignore_errors=True)
        assert not is_mounted(mnt)


def test_mount_option_sizes() -> None:
    from wsfs.daemon.cli import parse_mount_options
    from wsfs.errors import UsageError

    assert parse_mount_options(["prefetch_small=0,cache_size=2G"]) == {"prefetch_small": 0, "cache_size": 2 << 30}
    assert parse_mount_options(["prefetch_small=256k"]) == {"prefetch_small": 256 << 10}
    for bad in ("prefetch_small=-1", "prefetch_small=x", "cache_size=0", "prefetch_small"):
        with pytest.raises(UsageError):
            parse_mount_options([bad])
    assert "prefetch_small" in mh.KNOWN
    assert "prefetch_small=0" in mh.translate_options(["prefetch_small=0"]).mount_options


def test_rw_unit_stop_checkpoints_and_commits_as_systemd_runs_it(demo: tuple[Path, Path], tmp_path: Path) -> None:
    """wsfs-rw@.service's ExecStart with commit_on_umount: READY=1, a write, SIGTERM: exit 0 and a new version."""
    repo = tmp_path / "repo"
    shutil.copytree(demo[1], repo)  # the module's repository stays at demo@1 for the other tests
    s = _unit_service_section(ROOT / "systemd" / "wsfs-rw@.service")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    state = tmp_path / "var-lib-wsfs-layers-work"  # systemd's StateDirectory=wsfs/layers/%i
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "LANG": "C.UTF-8",
           "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "WSFS_REF": "demo", "WSFS_MOUNTPOINT": str(mnt),
           "WSFS_OPTIONS": "commit_on_umount", "WSFS_REPO": str(repo), "WSFS_CACHE_DIR": str(tmp_path / "cache")}
    (start,) = s["ExecStart"]
    _, argv = _systemd_argv(start.replace("/var/lib/wsfs/layers/%i", str(state)), env)
    assert argv == ["/usr/local/bin/wsfs", "mount", "-f", "-o", f"rw,state_dir={state},commit_on_umount", "demo",
                    str(mnt)]
    assert s["StateDirectory"] == ["wsfs/layers/%i"] and int(s["TimeoutStopSec"][0]) > 600
    argv = [sys.executable, "-m", "wsfs", *argv[1:]]
    notify_dir = tempfile.mkdtemp(prefix="wsfs-", dir="/tmp")
    addr = os.path.join(notify_dir, "n")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(addr)
    before = json.loads(subprocess.run([sys.executable, "-m", "wsfs", "log", "--json", "demo"], env=env,
                                       capture_output=True, check=True, timeout=60).stdout)[0]["version"]
    with sock, open(tmp_path / "out", "wb") as out:
        proc = subprocess.Popen(argv, env={**env, "NOTIFY_SOCKET": addr}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=True)
        try:
            assert _recv_notify(sock, b"READY=1", proc, 30) == proc.pid
            (mnt / "written-under-systemd").write_bytes(b"kept\n")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)
            shutil.rmtree(notify_dir, ignore_errors=True)
    assert not is_mounted(mnt)
    r = subprocess.run([sys.executable, "-m", "wsfs", "cat", f"demo@{before + 1}", "written-under-systemd"], env=env,
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == b"kept\n", r.stderr
