"""A pushed version mounted read-only through the real kernel, compared with its source.

The tree (``conftest.make_tree``) holds regular files of 0, 1, 100 KiB,
exactly 128 KiB (the inline threshold), 128 KiB + 1 and 9 MiB (three 4 MiB
chunks, the last partial), nested directories, relative/absolute/dangling
symlinks, hard links (inline and chunked), setuid/setgid/sticky/0 modes, a
fifo, a character device, ``user.*`` xattrs, foreign owners and names that are
not UTF-8.  Store requests are counted by the daemon (``wsfs stats --json``).
Local store only: the daemon talks to the store through the cache, which the
S3 tests of the store layer already cover.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pyfuse3
import pytest
from mountkit import (
    CHUNK,
    INLINE,
    KIB,
    Mounter,
    PushedTree,
    helper_pids,
    is_mounted,
    pack_ids,
    running,
    version_costs,
    wait_for_blobs,
    wait_gone,
)

from support.cli import Wsfs
from support.trees import assert_same_tree
from wsfs.daemon.ops import EioLog


def test_tree_matches_source(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich@1")
    assert_same_tree(rich.src, m.path)
    # Directory link counts (describe() leaves them out): 2 + subdirectories, as on ext4.
    for dirpath, dirnames, _ in os.walk(m.path):
        real = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        assert os.lstat(dirpath).st_nlink == 2 + len(real), dirpath
    st = os.lstat(m.path / "big9m")
    assert st.st_mtime_ns == 1_600_000_000 * 10**9 + 123_456_789
    assert st.st_blocks == os.lstat(rich.src / "big9m").st_blocks
    # Names come back as the same bytes.
    assert b"\xff\xfe-not-utf8" in os.listdir(os.fsencode(m.path / "a"))
    # What the kernel shows in /proc/mounts.
    with open("/proc/self/mounts") as f:
        line = next(line for line in f if f" {m.path} " in line)
    source, _, fstype, opts = line.split()[:4]
    assert (source, fstype) == ("wsfs:rich@1", "fuse.wsfs")
    assert "ro" in opts.split(",") and "default_permissions" in opts.split(",")
    sv = os.statvfs(m.path)
    assert sv.f_bfree == 0 and sv.f_namemax == 255 and sv.f_files > 0
    s = m.stats()
    assert s["cache"]["prefetches"] >= 1  # big9m was read sequentially: read-ahead kicked in
    assert s["cache"]["failures"] == 0 and s["cache"]["corrupt"] == 0


def test_writes_fail_with_erofs(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich@1")
    p = m.path
    attempts = {
        "create": lambda: open(p / "new-file", "w"),
        "mkdir": lambda: os.mkdir(p / "new-dir"),
        "unlink": lambda: os.unlink(p / "one"),
        "rmdir": lambda: os.rmdir(p / "sticky"),
        "chmod": lambda: os.chmod(p / "one", 0o777),
        "chown": lambda: os.chown(p / "one", 0, 0),
        "utime": lambda: os.utime(p / "one", ns=(1, 1)),
        "truncate": lambda: os.truncate(p / "f100k", 0),
        "write-open": lambda: os.open(p / "one", os.O_WRONLY),
        "rdwr-open": lambda: os.open(p / "one", os.O_RDWR),
        "append-open": lambda: open(p / "one", "a"),
        "rename": lambda: os.rename(p / "one", p / "two"),
        "symlink": lambda: os.symlink("x", p / "new-link"),
        "link": lambda: os.link(p / "one", p / "new-hardlink"),
        "mkfifo": lambda: os.mkfifo(p / "new-fifo"),
        "setxattr": lambda: os.setxattr(p / "xattrs", "user.new", b"v"),
        "removexattr": lambda: os.removexattr(p / "xattrs", "user.comment"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == errno.EROFS, (what, exc.value)
    # Nothing changed, and the daemon still serves.
    assert (p / "one").read_bytes() == b"1"
    assert sorted(os.listdir(p)) == sorted(os.listdir(rich.src))


def test_missing_paths_enoent_and_cached_negative(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich@1")
    for missing in ("nope", "a/nope", "a/b/c/nope", "nope/deeper"):
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / missing)
    with pytest.raises(NotADirectoryError):
        os.stat(m.path / "one" / "x")
    with pytest.raises(OSError) as exc:
        os.getxattr(m.path / "xattrs", "user.absent")
    assert exc.value.errno == errno.ENODATA
    with pytest.raises(FileNotFoundError):
        os.readlink(m.path / "dangling" / "x")
    # Kernel caching: a repeated miss, stat and listing cost no request (entry_timeout,
    # attr_timeout and readdirplus attributes).
    def again() -> None:
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / "a" / "nope")
        os.stat(m.path / "a" / "b" / "c" / "leaf")
        os.listdir(m.path / "a" / "b")
        assert (m.path / "one").read_bytes() == b"1"

    again()  # the first time, the kernel asks
    # A global cache drop (other jobs on the host write /proc/sys/vm/drop_caches)
    # evicts dentries and pages, so one clean window out of a few proves the point;
    # a kernel-cache bug fails every window.
    windows = []
    for _ in range(5):
        before = m.stats()["requests"]
        for _ in range(3):
            again()  # then it answers from its own caches
        after = m.stats()["requests"]
        delta = {op: after.get(op, 0) - before.get(op, 0) for op in ("lookup", "getattr", "read", "forget")}
        if not any(delta.values()):
            break
        windows.append(delta)
    else:
        pytest.fail(f"the kernel asked the daemon again in every window: {windows}")


def _requests(m) -> dict[str, int]:
    return {op: int(n) for op, n in m.stats()["requests"].items()}


@pytest.mark.skipif(not getattr(pyfuse3, "WSFS_INODE_AS_HANDLE", False),
                    reason="stock pyfuse3: wsfs answers OPEN/OPENDIR itself (see test_pyfuse3_is_patched)")
def test_reading_a_file_costs_no_open_or_release(rich: PushedTree, mount) -> None:
    """OPEN/OPENDIR answered ENOSYS once: afterwards opens, closes and listings cost no request."""
    m = mount(rich.repo, "rich@1", extra=("-o", "nopreload"))  # so that the READs still arrive
    files = [os.path.join(d, f) for d, _, fs in os.walk(m.path) for f in fs]
    dirs = [d for d, _, _ in os.walk(m.path)]
    assert len(files) > 20 and len(dirs) >= 5
    for path in files:
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                f.read()
    r = _requests(m)
    assert r.get("open", 0) <= 1 and r.get("opendir", 0) <= 1, r  # the ENOSYS answers
    assert r.get("release", 0) == 0 and r.get("releasedir", 0) == 0 and r.get("flush", 0) <= 1, r
    assert r.get("read", 0) >= len(files) // 2  # the reads themselves still arrive
    # Listings are cached by the kernel (FOPEN_CACHE_DIR): listing every
    # directory again sends no READDIR, in at least one of a few windows
    # (another job's drop_caches can evict the cached listings).
    windows = []
    for _ in range(5):
        before = _requests(m).get("readdir", 0)
        for d in dirs:
            os.listdir(d)
        delta = _requests(m).get("readdir", 0) - before
        if delta == 0:
            break
        windows.append(delta)
    else:
        pytest.fail(f"listings were read from the daemon again in every window: {windows}")


def test_pyfuse3_is_patched() -> None:
    """scripts/install.sh installs pyfuse3 with third_party/pyfuse3's patches (WSFS_ALLOW_STOCK_PYFUSE3=1 to waive)."""
    if os.environ.get("WSFS_ALLOW_STOCK_PYFUSE3") == "1":
        pytest.skip("stock pyfuse3 allowed by WSFS_ALLOW_STOCK_PYFUSE3=1")
    assert getattr(pyfuse3, "WSFS_INODE_AS_HANDLE", False), "run scripts/install_pyfuse3.sh"
    assert getattr(pyfuse3, "WSFS_PATCH", 0) >= 3, "an older patched build: run scripts/install_pyfuse3.sh"


def test_metadata_and_small_files_need_no_blob_gets(rich: PushedTree, mount) -> None:
    # Its own, cold cache: the tree was fetched at mount.  No prefetch of listed one-chunk files
    # (over128k) or packs, which test_listing_prefetches_one_chunk_files checks.
    m = mount(rich.repo, "rich@1", extra=("-o", "prefetch_small=0"))
    gets0 = m.gets()
    meta, packs = version_costs(rich.repo, rich.repo.parent / "count-cache", "rich@1")
    assert gets0 == 2 + meta  # at mount: wsfs-repo.json, the version record, the tree's pieces
    subprocess.run(["find", str(m.path), "-printf", "%p %s %m %u %T@\n"], check=True, capture_output=True)
    subprocess.run(["ls", "-laR", str(m.path)], check=True, capture_output=True)
    small = 0
    for dirpath, _, filenames in os.walk(os.fsencode(m.path)):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size <= INLINE:
                with open(path, "rb") as f:
                    assert len(f.read()) == st.st_size
                small += 1
    assert small > 40
    s = m.stats()
    # small files: one GET per pack (the first file read of each), never one per file
    assert s["store"]["requests"].get("get", 0) == gets0 + packs < gets0 + small / 4, s["store"]
    assert s["cache"]["fetches"] == packs


def test_listing_prefetches_one_chunk_files(rich: PushedTree, mount) -> None:
    """Listing a directory fetches its one-chunk files up to prefetch_small (the daemon) and the packs of its
    small files (the preload helper: with a few packs read ahead, side by side in a segment, so several per
    GET); not the chunks of larger files."""
    m = mount(rich.repo, "rich@1")  # default prefetch_small=1M
    gets0 = m.gets()
    count_cache = rich.repo.parent / "count-cache"
    every_pack = pack_ids(rich.repo, count_cache, "rich@1")
    os.listdir(m.path / "a")  # a/big-hardlink is over128k (one chunk), listed here
    wait_for_blobs(m.cache_dir, pack_ids(rich.repo, count_cache, "rich@1", b"a"))
    deadline = time.monotonic() + 20
    while m.stats()["cache"]["fetches"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # nothing else may follow
    s = m.stats()
    over = (rich.src / "over128k").stat().st_size
    assert s["cache"]["fetches"] == 1 and s["cache"]["fetch_bytes"] == over, s["cache"]
    assert gets0 + 1 < m.gets() <= gets0 + 1 + len(every_pack)
    # The read is then served from the cache; big9m (3 chunks) was listed too but not fetched.
    os.listdir(m.path)
    wait_for_blobs(m.cache_dir, pack_ids(rich.repo, count_cache, "rich@1", b""))
    time.sleep(0.3)
    assert (m.path / "over128k").read_bytes() == (rich.src / "over128k").read_bytes()
    s = m.stats()
    assert s["cache"]["fetches"] == 1 and s["cache"]["fetch_bytes"] == over, s["cache"]
    assert m.gets() <= gets0 + 1 + len(every_pack)
    assert m.stats()["preload"]["pack_failures"] == 0


def test_random_read_fetches_exactly_one_chunk(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich@1")
    size = (rich.src / "big9m").stat().st_size
    rng = random.Random(size)
    idx = rng.randrange(size // CHUNK + 1)
    chunk_end = min(size, (idx + 1) * CHUNK)
    off = rng.randrange(idx * CHUNK, chunk_end - 4096)
    gets0 = m.gets()
    fd = os.open(m.path / "big9m", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no kernel read-ahead beyond the request
        data = os.pread(fd, 4096, off)
    finally:
        os.close(fd)
    with open(rich.src / "big9m", "rb") as f:
        f.seek(off)
        assert data == f.read(4096)
    s = m.stats()
    assert s["store"]["requests"].get("get", 0) - gets0 == 1
    assert s["cache"]["fetches"] == 1
    assert s["cache"]["fetch_bytes"] == chunk_end - idx * CHUNK
    assert s["cache"]["prefetches"] == 0


def test_corrupt_blob_gives_eio_and_other_files_still_read(tmp_path: Path, mount) -> None:
    src = tmp_path / "src"
    src.mkdir()
    good, bad = os.urandom(300 * KIB), os.urandom(300 * KIB)
    (src / "good.bin").write_bytes(good)
    (src / "bad.bin").write_bytes(bad)
    (src / "small.txt").write_bytes(b"small\n")
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "push-cache"))
    w("init")
    w.push(src, "ws")
    # bad.bin is one chunk (< 4 MiB): its blob id is the blake3 of its bytes.
    h = blake3.blake3(bad).hexdigest()
    blob = tmp_path / "repo" / "blobs" / h[:2] / h
    stored = bytearray(blob.read_bytes())
    stored[len(stored) // 2] ^= 0xFF
    blob.write_bytes(bytes(stored))

    m = mount(tmp_path / "repo", "ws")  # cold cache
    m.expect_log(rf"blob {h}")
    for _ in range(40):  # later reads fail fast, from the remembered failure: an application retrying
        with open(m.path / "bad.bin", "rb") as f:
            with pytest.raises(OSError) as exc:
                f.read()
        assert exc.value.errno == errno.EIO
    answered = [line for line in m.log_path.read_text().splitlines() if "answered EIO" in line]
    assert 1 <= len(answered) <= EioLog.BURST and f"blob {h}" in answered[0], answered[:3]  # each says why
    assert (m.path / "good.bin").read_bytes() == good
    assert (m.path / "small.txt").read_bytes() == b"small\n"
    assert os.stat(m.path / "bad.bin").st_size == len(bad)
    s = m.stats()
    assert s["cache"]["failures"] >= 1
    assert not os.path.exists(os.path.join(m.cache_dir, "blobs", h[:2], h)), "bad bytes were cached"
    assert f"blob {h}" in m.log_path.read_text()


def test_two_versions_share_one_cache(tmp_path: Path, mount) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shared = os.urandom(5 * 1024 * 1024)  # two chunks, identical in both versions
    (src / "shared.bin").write_bytes(shared)
    (src / "changing.txt").write_bytes(b"version one\n")
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "push-cache"))
    w("init")
    w.push(src, "ws")
    (src / "changing.txt").write_bytes(b"version two!\n")
    (src / "added").write_bytes(b"only in two")
    w.push(src, "ws")

    cache = tmp_path / "shared-cache"
    m1 = mount(tmp_path / "repo", "ws@1", cache_dir=cache)
    m2 = mount(tmp_path / "repo", "ws@2", cache_dir=cache)
    assert (m1.path / "changing.txt").read_bytes() == b"version one\n"
    assert (m2.path / "changing.txt").read_bytes() == b"version two!\n"
    assert not (m1.path / "added").exists() and (m2.path / "added").read_bytes() == b"only in two"
    s1, s2 = m1.stats(), m2.stats()  # the small files came from each version's own pack
    assert hashlib.sha256((m1.path / "shared.bin").read_bytes()).digest() == hashlib.sha256(shared).digest()
    assert (m2.path / "shared.bin").read_bytes() == shared
    t1, t2 = m1.stats(), m2.stats()
    assert t1["store"]["requests"]["get"] - s1["store"]["requests"]["get"] == 2  # both chunks, once
    assert t2["store"]["requests"].get("get", 0) - s2["store"]["requests"].get("get", 0) == 0  # m1's files
    assert t2["cache"]["fetches"] == s2["cache"]["fetches"] and t2["cache"]["hits"] > s2["cache"]["hits"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_cleanly(rich: PushedTree, mount, sig: signal.Signals) -> None:
    m = mount(rich.repo, "rich@1")
    assert (m.path / "one").read_bytes() == b"1"
    m.proc.send_signal(sig)
    assert m.proc.wait(timeout=15) == 0
    assert not is_mounted(m.path)
    assert f"{sig.name} received" in m.log_path.read_text()


def test_mount_options_reach_the_kernel(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich", extra=("-o", "ro,allow_other,cache_size=64M,noatime"))
    with open("/proc/self/mounts") as f:
        opts = next(line for line in f if f" {m.path} " in line).split()[3].split(",")
    assert "allow_other" in opts and "ro" in opts
    assert m.stats()["cache"]["max_bytes"] == 64 << 20


def test_background_mount_and_umount(rich: PushedTree, tmp_path: Path) -> None:
    mnt = tmp_path / "bg" / "mnt"
    mnt.mkdir(parents=True)
    w = Wsfs(str(rich.repo), str(tmp_path / "cache"))
    pid = None
    try:
        r = w("mount", "rich", mnt, timeout=60)
        assert r.code == 0 and os.path.ismount(mnt)
        assert (mnt / "one").read_bytes() == b"1"
        pid = int(w("stats", "--json", mnt).json()["pid"])
        # A second mount on the same mountpoint is refused with a usage error.
        again = w("mount", "rich", mnt, check=False)
        assert again.code == 2 and "already a mountpoint" in again.err
        r = w("umount", mnt)  # waits for the daemon to exit
        assert not is_mounted(mnt)
        assert not running(pid)
        log = (tmp_path / "cache" / "logs").glob("*.log")
        assert any("unmounted" in p.read_text() for p in log)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)  # the daemon this test started, if still there
            except ProcessLookupError:
                pass
        assert not is_mounted(mnt)


def test_umount_of_dead_daemon_is_lazy(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich@1")
    helpers = helper_pids(m.pid)
    m.proc.kill()
    m.expected_exit = -9
    m.proc.wait(timeout=30)  # (stop() aborts the connection if SIGKILL does not end it)
    # The preload helper dies with the daemon (PR_SET_PDEATHSIG); until its copy of the
    # /dev/fuse descriptor is closed, a request would wait and then end with ECONNABORTED.
    wait_gone(helpers)
    with pytest.raises(OSError) as exc:
        os.statvfs(m.path)  # (a stat may still be answered from the kernel's attribute cache)
    assert exc.value.errno == errno.ENOTCONN
    p = subprocess.run([sys.executable, "-m", "wsfs", "umount", str(m.path)], env=m.env, capture_output=True)
    assert p.returncode == 0, p.stderr
    assert not is_mounted(m.path)
    from wsfs.daemon.control import socket_paths

    assert not any(os.path.exists(p) for p in socket_paths(str(m.path), str(m.cache_dir))), "stale socket left"


def test_mount_errors_are_one_line(rich: PushedTree, tmp_path: Path) -> None:
    w = Wsfs(str(rich.repo), str(tmp_path / "cache"))
    mnt = tmp_path / "e" / "mnt"
    mnt.mkdir(parents=True)
    r = w("mount", "-f", "rich@9", mnt, check=False)
    assert r.code == 3 and "no version 9" in r.err
    r = w("mount", "rich", tmp_path / "absent" / "mnt", check=False)
    assert r.code == 2 and "not a directory" in r.err
    r = w("mount", "-o", "state_dir=/x", "rich", mnt, check=False)
    assert r.code == 2 and "read-write" in r.err
    r = w("mount", "-o", "frobnicate", "rich", mnt, check=False)
    assert r.code == 2 and "frobnicate" in r.err
    r = w("stats", mnt, check=False)
    assert r.code == 3 and "no wsfs daemon" in r.err
    assert not is_mounted(mnt)


def test_ready_notification_reaches_abstract_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd may hand out an abstract NOTIFY_SOCKET ('@name'); no mount needed for this one."""
    import socket

    from wsfs.daemon.mount import notify_systemd

    name = f"wsfs-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notify_systemd("READY=1")
        assert s.recv(100) == b"READY=1"


def test_without_the_helper_the_daemon_prefetches_listed_packs_in_runs(tmp_path: Path, mount) -> None:
    """With -o nopreload the daemon prefetches a listed directory's packs itself: neighbours in one segment
    with one ranged GET, not one GET per pack."""
    src = tmp_path / "src"
    (src / "many").mkdir(parents=True)
    rng = random.Random(3)
    for i in range(600):
        (src / "many" / f"f{i:03d}").write_bytes(rng.randbytes(400))  # incompressible: ~240 KB of packs
    repo = tmp_path / "repo"
    w = Wsfs(str(repo), str(tmp_path / "push-cache"))
    w("init")
    w.push(src, "t")
    want = pack_ids(repo, tmp_path / "count-cache", "t@1", b"many")
    assert len(want) >= 5
    m = mount(repo, "t@1", extra=("-o", "nopreload"))
    gets0 = m.gets()
    os.listdir(m.path / "many")
    wait_for_blobs(m.cache_dir, want)
    time.sleep(0.3)
    # at most a run per readdir reply of the daemon (256 entries each: 3 here), however many packs
    assert m.gets() - gets0 <= 3 < len(want), (m.gets() - gets0, len(want))
    assert (m.path / "many" / "f007").read_bytes() == (src / "many" / "f007").read_bytes()
    assert m.stats()["cache"]["failures"] == 0


def test_a_full_cache_disk_serves_reads_uncached_and_keeps_the_mount(mount: Mounter, rich: PushedTree,
                                                                    tmp_path: Path) -> None:
    """The cache's file system fills up (no blocks, no inodes) under a mounted version: every file still reads
    exactly, fetched and verified but not cached, and no read-ahead failure takes the mount down."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,nr_inodes=4000,mode=0700", "tmpfs", str(tiny)],
                   check=True)
    m = None
    try:
        m = mount(rich.repo, "rich", cache_dir=tiny / "cache")
        m.expect_log("cannot cache blobs|cannot write cached blob|cache index")
        m.stats()  # the version's index is built (it lives in the cache)
        with open(tiny / "fill", "wb") as f:  # every block ...
            with pytest.raises(OSError) as e:
                while True:
                    f.write(bytes(1 << 20))
                    f.flush()
            assert e.value.errno == errno.ENOSPC
        n = 0
        with pytest.raises(OSError) as e:  # ... and every inode
            while True:
                (tiny / f"i{n}").touch()
                n += 1
        assert e.value.errno == errno.ENOSPC
        for p in sorted(rich.src.rglob("*")):
            if p.is_file() and not p.is_symlink():
                got = (m.path / p.relative_to(rich.src)).read_bytes()
                assert got == p.read_bytes(), p
        assert os.path.ismount(m.path) and m.proc.poll() is None
        assert m.stats()["cache"]["write_failures"] > 0  # served, not kept
        m.unmount()
        m = None
    finally:
        if m is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
            m.proc.wait(timeout=30)
        subprocess.run(["umount", "-l", str(tiny)], check=False)
