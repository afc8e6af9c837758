"""Read-write mounts (``wsfs mount --rw``): real FUSE mounts of a pushed version with a write layer.

What an application sees (POSIX calls and their errnos), what the store is
asked for (writing into a cold large file fetches the one chunk touched),
and what survives: ``kill -9`` after ``fsync``, a clean unmount, a remount
with the same state folder; ``wsfs status``; the usage errors of a state
folder over another version, in use, or of a format 1 version.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from mountkit import MIB, Mount, Mounter, PushedTree, is_mounted

from support.cli import Wsfs

DATA = Path(__file__).parent.parent / "data"

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


def rw(mount: Mounter, tree: PushedTree, state: Path, ref: str = "rich", *extra: str) -> Mount:
    return mount(tree.repo, ref, extra=("--rw", "-o", f"state_dir={state}", *extra))


def errno_of(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno  # type: ignore[return-value]


def test_files_write_read_append_truncate_and_overwrite_base(mount: Mounter, rich: PushedTree, tmp_path: Path) -> None:
    m = rw(mount, rich, tmp_path / "state")
    p = m.path
    mounts = Path("/proc/mounts").read_text()
    assert "rw" in next(line for line in mounts.splitlines() if str(p) in line).split()[3].split(",")
    (p / "new.txt").write_bytes(b"hello\n")
    assert (p / "new.txt").read_bytes() == b"hello\n"
    with open(p / "new.txt", "ab") as f:  # O_APPEND: the kernel sends the offsets
        f.write(b"more\n")
    assert (p / "new.txt").read_bytes() == b"hello\nmore\n"
    os.truncate(p / "new.txt", 3)
    assert (p / "new.txt").read_bytes() == b"hel"
    os.truncate(p / "new.txt", 5)
    assert (p / "new.txt").read_bytes() == b"hel\0\0"
    # a base file: overwrite in the middle, append, O_TRUNC
    src = (rich.src / "text.txt").read_bytes()
    with open(p / "text.txt", "r+b") as f:
        f.seek(5000)
        f.write(b"XYZ")
    assert (p / "text.txt").read_bytes() == src[:5000] + b"XYZ" + src[5003:]
    assert (p / "hardlink-to-text").read_bytes() == src[:5000] + b"XYZ" + src[5003:]  # the same inode
    with open(p / "f100k", "ab") as f:
        f.write(b"tail")
    assert (p / "f100k").read_bytes() == (rich.src / "f100k").read_bytes() + b"tail"
    os.close(os.open(p / "f100k", os.O_RDONLY | os.O_TRUNC))  # Linux truncates even then (tmpfs does)
    assert (p / "f100k").read_bytes() == b""
    with open(p / "over128k", "wb") as f:
        f.write(b"short")
    assert (p / "over128k").read_bytes() == b"short"
    assert (p / "a" / "big-hardlink").read_bytes() == b"short"
    # a large write, read back through a fresh open (no page cache kept for changed files)
    data = os.urandom(3 * MIB + 12345)
    (p / "big.bin").write_bytes(data)
    assert (p / "big.bin").read_bytes() == data
    # O_DIRECT opens work (direct_io)
    fd = os.open(p / "direct", os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
    try:
        buf = ctypes.create_string_buffer(b"d" * 4096, 4096)
        mm = memoryview(buf).cast("B")[:4096]
        assert os.pwrite(fd, mm, 0) == 4096
    finally:
        os.close(fd)
    assert (p / "direct").read_bytes() == b"d" * 4096


def test_overwrite_inside_a_large_base_file_fetches_one_chunk(mount: Mounter, rich: PushedTree, tmp_path: Path) -> None:
    m = rw(mount, rich, tmp_path / "state")
    before = m.gets()
    with open(m.path / "big9m", "r+b") as f:  # 9 MiB: three 4 MiB chunks, none cached
        f.seek(5 * MIB + 100)
        f.write(b"x" * 4096)
        f.seek(0, os.SEEK_END)
        f.write(b"appended")  # beyond the base: nothing fetched
    assert m.gets() - before == 1
    os.truncate(m.path / "big9m", 1 * MIB)  # nothing fetched either
    assert m.gets() - before == 1
    src = (rich.src / "big9m").read_bytes()
    assert (m.path / "big9m").read_bytes() == src[:1 * MIB]


def test_names_links_modes_xattrs_and_errnos(mount: Mounter, rich: PushedTree, tmp_path: Path) -> None:
    m = rw(mount, rich, tmp_path / "state")
    p = m.path
    os.mkdir(p / "d")
    (p / "d" / "f").write_bytes(b"f")
    assert errno_of(os.rmdir, p / "d") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, p / "a") == errno.ENOTEMPTY  # a base directory
    assert errno_of(os.mkdir, p / "d") == errno.EEXIST
    assert errno_of(os.open, p / "d" / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert errno_of(os.stat, p / "nope") == errno.ENOENT
    assert errno_of(os.stat, p / "one" / "x") == errno.ENOTDIR
    assert errno_of(os.open, p / "d", os.O_WRONLY) == errno.EISDIR
    assert errno_of(os.unlink, p / "d") == errno.EISDIR
    assert errno_of(os.rmdir, p / "one") == errno.ENOTDIR
    assert errno_of(os.mkdir, p / ("n" * 256)) == errno.ENAMETOOLONG
    (p / ("n" * 255)).write_bytes(b"long name")
    assert (p / ("n" * 255)).read_bytes() == b"long name"
    # rename: a file over another, a base directory (whole subtree), the flags
    (p / "d" / "g").write_bytes(b"g")
    os.rename(p / "d" / "g", p / "d" / "f")
    assert (p / "d" / "f").read_bytes() == b"g" and not (p / "d" / "g").exists()
    os.rename(p / "a", p / "d" / "moved-a")
    assert (p / "d" / "moved-a" / "b" / "c" / "leaf").read_bytes() == b"leaf\n"
    assert not (p / "a").exists()
    (p / "x").write_bytes(b"x")
    (p / "y").write_bytes(b"y")
    assert errno_of(renameat2, p / "x", p / "y", RENAME_NOREPLACE) == errno.EEXIST
    renameat2(p / "x", p / "y", RENAME_EXCHANGE)
    assert (p / "x").read_bytes() == b"y" and (p / "y").read_bytes() == b"x"
    renameat2(p / "x", p / "z", RENAME_NOREPLACE)
    assert (p / "z").read_bytes() == b"y" and not (p / "x").exists()
    os.mkdir(p / "e1")
    (p / "e1" / "inside").write_bytes(b"i")
    os.mkdir(p / "e2")
    os.rename(p / "e1", p / "e2")  # a directory over an empty one
    assert (p / "e2" / "inside").read_bytes() == b"i" and not (p / "e1").exists()
    os.mkdir(p / "e3")
    assert errno_of(os.rename, p / "e3", p / "d") == errno.ENOTEMPTY
    assert errno_of(os.rename, p / "e3", p / "one") == errno.ENOTDIR
    assert errno_of(os.rename, p / "one", p / "e3") == errno.EISDIR
    assert errno_of(os.rename, p / "d", p / "d" / "moved-a" / "under") == errno.EINVAL
    os.rmdir(p / "sticky")  # an empty base directory
    # unlink while open: the data stays readable (and writable) until close
    fd = os.open(p / "z", os.O_RDWR)
    os.unlink(p / "z")
    os.pwrite(fd, b"Y2", 0)
    assert os.pread(fd, 10, 0) == b"Y2"
    assert os.fstat(fd).st_nlink == 0
    os.close(fd)
    assert not (p / "z").exists()
    # hard links: one inode, coherent through both names
    os.link(p / "y", p / "d" / "y-link")
    with open(p / "d" / "y-link", "ab") as f:
        f.write(b"+")
    assert (p / "y").read_bytes() == b"x+"
    assert os.stat(p / "y").st_ino == os.stat(p / "d" / "y-link").st_ino
    assert os.stat(p / "y").st_nlink == 2
    os.unlink(p / "y")
    assert os.stat(p / "d" / "y-link").st_nlink == 1
    # symlinks
    os.symlink("d/f", p / "sl")
    assert os.readlink(p / "sl") == "d/f" and (p / "sl").read_bytes() == b"g"
    # modes, owners, times (UTIME_NOW and UTIME_OMIT through os.utime variants)
    os.chmod(p / "d" / "f", 0o4751)
    assert stat.S_IMODE(os.stat(p / "d" / "f").st_mode) == 0o4751
    os.chown(p / "d" / "f", 1234, 5678)
    st = os.stat(p / "d" / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st.st_mode) == 0o751  # chown clears SUID
    os.utime(p / "d" / "f", ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(p / "d" / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    t0 = time.time_ns()
    os.utime(p / "d" / "f")  # both now
    assert os.stat(p / "d" / "f").st_mtime_ns >= t0 - 10**9
    # xattrs: user.* on a new file and on a base file (copied up)
    os.setxattr(p / "d" / "f", "user.k", b"v")
    assert os.getxattr(p / "d" / "f", "user.k") == b"v"
    assert errno_of(os.setxattr, p / "d" / "f", "user.k", b"w", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, p / "d" / "f", "user.none", b"w", os.XATTR_REPLACE) == errno.ENODATA
    assert os.getxattr(p / "xattrs", "user.comment") == b"hello"
    os.setxattr(p / "xattrs", "user.comment", b"changed")
    os.removexattr(p / "xattrs", "user.binary")
    assert sorted(os.listxattr(p / "xattrs")) == ["user.comment"]
    assert os.getxattr(p / "xattrs", "user.comment") == b"changed"
    assert errno_of(os.getxattr, p / "xattrs", "user.binary") == errno.ENODATA
    # POSIX ACLs: not enforced by the kernel here, so refused rather than kept as opaque bytes; cp -a keeps modes
    acl = b"\x02\x00\x00\x00" + b"".join(t.to_bytes(2, "little") + perm.to_bytes(2, "little") + b"\xff" * 4
                                       for t, perm in ((1, 6), (4, 4), (0x20, 4)))
    assert errno_of(os.setxattr, p / "d" / "f", "system.posix_acl_access", acl) == errno.EOPNOTSUPP
    (tmp_path / "acl-src").mkdir()
    (tmp_path / "acl-src" / "x").write_bytes(b"x")
    os.chmod(tmp_path / "acl-src" / "x", 0o640)
    subprocess.run(["cp", "-a", str(tmp_path / "acl-src"), str(p / "acl-copy")], check=True)
    assert stat.S_IMODE(os.stat(p / "acl-copy" / "x").st_mode) == 0o640
    assert "system.posix_acl_access" not in os.listxattr(p / "acl-copy" / "x")
    # mknod, fifo
    os.mkfifo(p / "fifo2")
    assert stat.S_ISFIFO(os.lstat(p / "fifo2").st_mode)
    # statfs: the state folder's file system
    sv, sf = os.statvfs(p), os.statvfs(tmp_path)
    assert sv.f_namemax == 255 and sv.f_bavail > 0
    assert abs(sv.f_bavail * sv.f_frsize - sf.f_bavail * sf.f_frsize) < 256 * MIB
    assert not m.stats()["errors"].get("write")


def _requests(m: Mount) -> dict[str, int]:
    return dict(m.stats()["requests"])


def test_the_kernel_keeps_entries_and_attributes_and_forgets_what_discard_changes(
        mount: Mounter, rich: PushedTree, tmp_path: Path) -> None:
    """A day's timeouts (the daemon is the only writer): a second look costs no request, even a second
    later; what ``wsfs discard`` changes behind the kernel (a deleted base file back, a chmod undone, the
    parent's link count and mtime) is visible at once, not after the timeout."""
    m = rw(mount, rich, tmp_path / "state")
    p = m.path
    base_root = os.stat(p)
    os.chmod(p / "text.txt", 0o644)
    os.unlink(p / "one")
    os.mkdir(p / "newdir")
    (p / "a" / "added").write_bytes(b"added")
    seen = {n: os.lstat(p / n) for n in ("text.txt", "a", "a/added", ".")}
    assert errno_of(os.lstat, p / "one") == errno.ENOENT  # a negative entry, cached
    time.sleep(1.2)  # past the 1 s of libfuse's default timeouts
    before = _requests(m)
    again = {n: os.lstat(p / n) for n in ("text.txt", "a", "a/added", ".")}
    assert errno_of(os.lstat, p / "one") == errno.ENOENT
    after = _requests(m)
    asked = {k: v - before.get(k, 0) for k, v in after.items() if k in ("lookup", "getattr") and v != before.get(k, 0)}
    # (the stats call itself may look at the mount's root once)
    assert sum(asked.values()) <= 1, asked
    assert again == seen and stat.S_IMODE(seen["text.txt"].st_mode) == 0o644 and seen["."].st_nlink == base_root.st_nlink + 1
    w = Wsfs(str(rich.repo), str(m.cache_dir), m.env)
    w("discard", str(p))
    # At once: the kernel was told to forget what the layer changed behind it.
    assert (p / "one").read_bytes() == b"1"
    assert stat.S_IMODE(os.lstat(p / "text.txt").st_mode) == 0o600
    assert not (p / "newdir").exists() and not (p / "a" / "added").exists()
    root = os.stat(p)
    assert (root.st_nlink, root.st_mtime_ns) == (base_root.st_nlink, base_root.st_mtime_ns)
    assert os.stat(p / "a").st_mtime_ns == os.stat(rich.src / "a").st_mtime_ns
    assert "one" in os.listdir(p) and "added" not in os.listdir(p / "a")


def test_attributes_follow_every_change_made_through_the_mount(mount: Mounter, rich: PushedTree,
                                                               tmp_path: Path) -> None:
    """With attributes kept for a day, each change is seen by the next stat: mmap writes, xattrs (ctime),
    links, truncation, SUID/SGID cleared by another user's write or O_TRUNC, listings."""
    import mmap

    m = rw(mount, rich, tmp_path / "state", "rich", "-o", "allow_other")
    p = m.path
    f = p / "m"
    f.write_bytes(bytes(8192))
    st = os.stat(f)
    time.sleep(0.02)
    with open(f, "r+b") as fh, mmap.mmap(fh.fileno(), 8192) as mm:
        mm[:5] = b"hello"
        mm.flush()
    assert os.stat(f).st_mtime_ns != st.st_mtime_ns and f.read_bytes()[:5] == b"hello"
    st = os.stat(f)
    time.sleep(0.02)
    os.setxattr(f, "user.k", b"v")
    assert os.stat(f).st_ctime_ns != st.st_ctime_ns
    os.link(f, p / "m2")
    assert os.stat(f).st_nlink == 2
    os.unlink(p / "m2")
    assert os.stat(f).st_nlink == 1
    os.truncate(f, 3)
    assert os.stat(f).st_size == 3
    s = p / "s"
    s.write_bytes(b"#!/bin/sh\n")
    os.chmod(s, 0o6777)
    os.stat(s)
    for cmd in ("echo x >> s", ": > s"):  # a write, an O_TRUNC open: by another user, both clear SUID/SGID
        os.chmod(s, 0o6777)
        assert stat.S_IMODE(os.stat(s).st_mode) == 0o6777
        subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", cmd],
                       check=True, cwd=p)
        assert stat.S_IMODE(os.stat(s).st_mode) == 0o0777, cmd
    assert "s" in os.listdir(p)
    os.unlink(s)
    assert "s" not in os.listdir(p)
    assert not m.stats()["errors"]


def test_suid_is_cleared_when_another_user_writes(mount: Mounter, rich: PushedTree, tmp_path: Path) -> None:
    m = rw(mount, rich, tmp_path / "state", "rich", "-o", "allow_other")
    f = m.path / "s"
    f.write_bytes(b"#!/bin/sh\n")
    os.chmod(f, 0o6777)
    # (cwd: the test's tmp_path is private to root; the mount's root is not)
    subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", "echo x >> s"],
                   check=True, cwd=m.path)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o0777
    os.chmod(f, 0o6777)
    with open(f, "ab") as out:  # root keeps them (CAP_FSETID)
        out.write(b"y")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o6777


def _fsynced_write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_fsynced_writes_survive_kill_9_of_the_daemon(mount: Mounter, rich: PushedTree, tmp_path: Path) -> None:
    state = tmp_path / "state"
    m = rw(mount, rich, state)
    data = os.urandom(300_000)
    _fsynced_write(m.path / "kept.bin", data)
    os.mkdir(m.path / "kept-dir")
    with open(m.path / "text.txt", "r+b") as f:
        f.write(b"CHANGED")
        f.flush()
        os.fsync(f.fileno())
    m.expected_exit = -signal.SIGKILL
    os.kill(m.pid, signal.SIGKILL)  # this daemon only
    m.proc.wait(timeout=10)
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True, timeout=30)
    assert not is_mounted(m.path)
    m2 = rw(mount, rich, state)
    assert (m2.path / "kept.bin").read_bytes() == data
    assert (m2.path / "kept-dir").is_dir()
    assert (m2.path / "text.txt").read_bytes()[:10] == b"CHANGEDorl"


def test_status_of_a_large_layer_lists_every_path(mount: Mounter, rich: PushedTree, tmp_path: Path) -> None:
    """Over 4,096 inodes the daemon reads the layer whole before walking it (Snapshot.prefetch_if_large)
    and the CLI reads a reply of megabytes: every path is there, with its type and size, and nothing else."""
    m = rw(mount, rich, tmp_path / "state")
    want = {("M", "", "dir"), ("A", "@scope", "dir")}
    for d in range(42):
        sub = m.path / "@scope" / f"p{d}"
        sub.mkdir(parents=True)
        want.add(("A", f"@scope/p{d}", "dir"))
        for f in range(100):
            (sub / f"f{f}.js").write_bytes(b"x" * f)
            want.add(("A", f"@scope/p{d}/f{f}.js", "file"))
    os.symlink("@scope", m.path / "link")
    want.add(("A", "link", "symlink"))
    os.unlink(m.path / "empty")
    want.add(("D", "empty", None))
    (m.path / "one").write_bytes(b"changed")
    want.add(("M", "one", "file"))
    s = json.loads(subprocess.run([sys.executable, "-m", "wsfs", "status", "--json", str(m.path)], env=m.env,
                                  capture_output=True, check=True).stdout)
    assert {(c["kind"], c["path"], c.get("type")) for c in s["changes"]} == want
    assert len(s["changes"]) == len(want)
    sizes = {c["path"]: c.get("size") for c in s["changes"]}
    assert sizes["@scope/p3/f77.js"] == 77 and sizes["one"] == 7
    assert next(c for c in s["changes"] if c["path"] == "@scope/p0/f1.js")["path_pct"] == "%40scope/p0/f1.js"


def test_clean_umount_keeps_everything_and_status_lists_it(mount: Mounter, rich: PushedTree, tmp_path: Path) -> None:
    state = tmp_path / "state"
    m = rw(mount, rich, state)
    (m.path / "added").write_bytes(b"12345")
    (m.path / "one").write_bytes(b"changed")
    os.unlink(m.path / "empty")
    os.mkdir(m.path / "newdir")
    os.symlink("added", m.path / "newdir" / "sl")
    open(os.fsencode(m.path) + b"/newdir/\xff odd", "wb").close()
    s = json.loads(subprocess.run([sys.executable, "-m", "wsfs", "status", "--json", str(m.path)], env=m.env,
                                  capture_output=True, check=True).stdout)
    # names as every --json writes them: text for display, the exact bytes percent-encoded
    odd = next(c for c in s["changes"] if c["path"].startswith("newdir/\ufffd"))
    assert odd["path"] == "newdir/\ufffd odd" and odd["path_pct"] == "newdir/%FF%20odd"
    assert s["base_version"] == 1 and s["workspace"] == "rich" and not s["read_only"]
    assert s["state_dir"] == str(state) and s["layer_bytes"] > 0
    got = {(c["kind"], c["path"]) for c in s["changes"]}
    assert {("A", "added"), ("M", "one"), ("D", "empty"), ("A", "newdir"), ("A", "newdir/sl")} <= got
    assert next(c for c in s["changes"] if c["path"] == "added")["size"] == 5
    text = subprocess.run([sys.executable, "-m", "wsfs", "status", str(m.path)], env=m.env,
                          capture_output=True, check=True, text=True).stdout
    assert "rich@1" in text and "A added  5 B" in text and "D empty" in text
    assert "A newdir/\\xff odd" in text  # the exact bytes, escaped
    m.unmount()
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(state / n).st_mode) == 0o600 for n in ("layer.db", "data/slots"))
    m2 = mount(rich.repo, "rich", extra=("--rw", "-o", f"state_dir={state}"))  # no version: the layer's base
    assert (m2.path / "added").read_bytes() == b"12345"
    assert (m2.path / "one").read_bytes() == b"changed"
    assert not (m2.path / "empty").exists()
    assert os.readlink(m2.path / "newdir" / "sl") == "added"
    # the same state folder cannot serve a second mount at once
    other = tmp_path / "other-mnt"
    other.mkdir()
    r = Wsfs(str(rich.repo), str(m2.cache_dir))("mount", "--rw", "-o", f"state_dir={state}", "rich", other, check=False)
    assert r.code == 2 and "in use" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not is_mounted(other)


def test_a_state_folder_over_another_version_is_refused(mount: Mounter, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"1")
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init")
    w.push(src, "ws")
    (src / "f").write_bytes(b"2")
    w.push(src, "ws")
    state = tmp_path / "state"
    m = mount(w.repo, "ws@1", extra=("--rw", "-o", f"state_dir={state}"))
    (m.path / "g").write_bytes(b"g")
    m.unmount()
    mnt = tmp_path / "mnt2"
    mnt.mkdir()
    r = w("mount", "--rw", "-o", f"state_dir={state}", "ws@2", mnt, check=False)
    assert r.code == 2 and "ws@1" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not is_mounted(mnt)
    m1 = mount(w.repo, "ws", extra=("--rw", "-o", f"state_dir={state}"))  # no version: the layer's base, not the latest
    assert (m1.path / "g").read_bytes() == b"g" and (m1.path / "f").read_bytes() == b"1"
    m1.unmount()
    # the default state folder: under $XDG_STATE_HOME, private
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    m2 = mount(w.repo, "ws", extra=("--rw",), env={**os.environ, **env})
    (m2.path / "h").write_bytes(b"h")
    layers = list((tmp_path / "xdg" / "wsfs" / "layers").iterdir())
    assert len(layers) == 1 and layers[0].name.endswith("-ws") and stat.S_IMODE(layers[0].stat().st_mode) == 0o700


def test_a_format_1_version_is_refused_read_write(tmp_path: Path) -> None:
    with tarfile.open(DATA / "format1-repo.tar.gz") as t:
        t.extractall(tmp_path, filter="data")
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = w("mount", "--rw", "-o", f"state_dir={tmp_path / 'state'}", "demo@1", mnt, check=False)
    assert r.code == 2 and "wsfs upgrade" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not is_mounted(mnt)


def test_a_full_state_folder_fails_the_write_with_enospc_and_keeps_the_rest(mount: Mounter, rich: PushedTree,
                                                                           tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(small)], check=True)
    try:
        m = rw(mount, rich, small / "state")
        (m.path / "first").write_bytes(b"kept")
        with pytest.raises(OSError) as e, open(m.path / "huge", "wb") as f:
            for _ in range(64):
                f.write(os.urandom(MIB))
                f.flush()
        assert e.value.errno == errno.ENOSPC
        assert os.statvfs(m.path).f_bavail * os.statvfs(m.path).f_frsize < 4 * MIB
        os.unlink(m.path / "huge")
        (m.path / "second").write_bytes(b"after")
        assert (m.path / "first").read_bytes() == b"kept"
        m.unmount()
        m2 = rw(mount, rich, small / "state")
        assert (m2.path / "first").read_bytes() == b"kept" and (m2.path / "second").read_bytes() == b"after"
        m2.unmount()
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_sigterm_unmounts_and_commits_what_was_not_fsynced(mount: Mounter, rich: PushedTree, tmp_path: Path) -> None:
    state = tmp_path / "state"
    m = rw(mount, rich, state)
    (m.path / "unsynced").write_bytes(b"closed, never fsynced")
    os.rename(m.path / "one", m.path / "one-renamed")
    os.kill(m.pid, signal.SIGTERM)
    assert m.proc.wait(timeout=30) == 0
    assert not is_mounted(m.path)
    m2 = rw(mount, rich, state)
    assert (m2.path / "unsynced").read_bytes() == b"closed, never fsynced"
    assert (m2.path / "one-renamed").read_bytes() == b"1" and not (m2.path / "one").exists()


def test_offline_writes_go_on_and_only_uncached_base_bytes_fail(tmp_path: Path, mount: Mounter, aws_env) -> None:  # type: ignore[no-untyped-def]
    from mountkit import CHUNK

    from support.s3server import moto_server

    a, b = os.urandom(2 * CHUNK), os.urandom(2 * CHUNK)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(a)
    (src / "b.bin").write_bytes(b)
    cache, state = tmp_path / "cache", tmp_path / "state"
    with moto_server(tmp_path / "moto") as srv:
        env = {**os.environ, **srv.env}
        url = f"s3://{srv.bucket}/offline"
        w = Wsfs(url, str(tmp_path / "push-cache"), env)
        w("init")
        w.push(src, "ws")
        m1 = mount(url, "ws", cache_dir=cache, env=env, extra=("--rw", "-o", f"state_dir={state}"))
        assert (m1.path / "a.bin").read_bytes() == a  # cached now
        m1.unmount()
    offline = {**env, "WSFS_S3_MAX_ATTEMPTS": "2", "WSFS_S3_CONNECT_TIMEOUT": "1", "WSFS_S3_READ_TIMEOUT": "2"}
    m2 = mount(url, "ws", cache_dir=cache, env=offline, extra=("--rw", "-o", f"state_dir={state}"))
    for pattern in ("store unreachable", "failed", r"answered EIO: S3 endpoint .* is unreachable"):
        m2.expect_log(pattern)
    p = m2.path
    (p / "new").write_bytes(b"offline")  # new files, appends and cached base bytes need no store
    with open(p / "b.bin", "ab") as f:
        f.write(b"tail")
    with open(p / "a.bin", "r+b") as f:
        f.seek(CHUNK + 10)
        f.write(b"in a cached chunk")
    with pytest.raises(OSError) as e, open(p / "b.bin", "r+b") as f:
        f.seek(100)
        f.write(b"x")
        f.flush()
    assert e.value.errno in (errno.EIO, errno.ETIMEDOUT)
    assert (p / "new").read_bytes() == b"offline"
    assert (p / "a.bin").read_bytes()[CHUNK + 10:CHUNK + 27] == b"in a cached chunk"
    assert os.stat(p / "b.bin").st_size == 2 * CHUNK + 4
