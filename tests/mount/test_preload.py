"""The page-cache preload (``daemon/preload.py``): listed small files are read with no FUSE request.

What a user would check: after a directory is listed, its small files are
resident in the page cache (``mincore``) and reading them sends no READ to
the daemon; the bytes are the source's; ``-o nopreload`` turns it off; the
helper process never outlives its mount; a file whose inline bytes do not
match their content id is never stored.
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest
from mountkit import INLINE, PushedTree, helper_pids, is_mounted, running, wait_gone

from wsfs.daemon import preload
from wsfs.format.manifest import ROOT_INO, ManifestBuilder

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
_PROT_READ, _MAP_SHARED, _MAP_FAILED = 1, 1, ctypes.c_void_p(-1).value


def resident(path: Path) -> bool:
    """Whether every page of *path* is in the page cache (mincore of a mapping; faults nothing in)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if addr == _MAP_FAILED:
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            pages = (size + 4095) // 4096
            vec = ctypes.create_string_buffer(pages)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return all(b & 1 for b in vec.raw)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def _small_files(root: Path) -> list[Path]:
    """Non-empty regular files stored inline (at most INLINE bytes), found by walking (which lists every directory)."""
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            p = Path(d) / f
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and 0 < st.st_size <= INLINE and st.st_mode & 0o444:
                out.append(p)
    return out


def _reads(m) -> int:
    return int(m.stats()["requests"].get("read", 0))


def test_listed_small_files_are_read_with_no_request(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich@1")
    files = _small_files(m.path)  # lists every directory: the helper hears of each
    assert len(files) >= 45
    deadline = time.monotonic() + 20
    while not all(resident(p) for p in files):
        assert time.monotonic() < deadline, [str(p) for p in files if not resident(p)][:5]
        time.sleep(0.05)
    before = _reads(m)
    for p in files:
        assert p.read_bytes() == (rich.src / p.relative_to(m.path)).read_bytes(), p
    assert _reads(m) == before  # every byte came from the page cache
    s = m.stats()["preload"]
    assert s["hints"] >= 4 and s["dropped"] == 0 and s["exit"] is None


def test_nopreload_reads_go_to_the_daemon(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich@1", extra=("-o", "nopreload"))
    files = _small_files(m.path)
    time.sleep(0.3)  # what a helper would have had to store them
    assert not any(resident(p) for p in files)
    before = _reads(m)
    for p in files:
        assert p.read_bytes() == (rich.src / p.relative_to(m.path)).read_bytes(), p
    assert _reads(m) - before >= len({p.stat().st_ino for p in files})  # hard links share their pages
    assert "preload" not in m.stats()


def test_helper_ends_with_the_mount(rich: PushedTree, mount) -> None:
    m = mount(rich.repo, "rich@1")
    pid = m.stats()["preload"]["pid"]
    assert running(pid) and helper_pids(m.pid) == [pid]
    m.unmount()
    wait_gone([pid])
    assert "preload helper:" in m.out_path.read_text()  # its summary line


def test_helper_ends_when_the_daemon_is_killed(rich: PushedTree, mount) -> None:
    """A dead daemon's helper must not keep the FUSE connection (its /dev/fuse descriptor) alive."""
    m = mount(rich.repo, "rich@1")
    pid = m.stats()["preload"]["pid"]
    m.expected_exit = -signal.SIGKILL
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(timeout=10)
    wait_gone([pid])
    # The connection is gone with the last descriptor: the mount answers ENOTCONN, not a hang.
    with pytest.raises(OSError) as e:
        os.listdir(m.path)
    assert e.value.errno == 107  # ENOTCONN
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], check=True, capture_output=True)
    assert not is_mounted(m.path)


# -- the helper alone, on a pipe instead of /dev/fuse ----------------------------------------


def _st(mode: int, size: int = 0):
    from types import SimpleNamespace

    return SimpleNamespace(st_mode=mode, st_uid=0, st_gid=0, st_size=size, st_blocks=0, st_rdev=0,
                           st_atime_ns=1, st_mtime_ns=2, st_ctime_ns=3)


def test_helper_stores_verified_bytes_only(tmp_path: Path) -> None:
    """One FUSE_NOTIFY_STORE per good inline file, in the kernel's layout; a corrupt one is skipped."""
    path = str(tmp_path / "m.sqlite")
    b = ManifestBuilder(path, chunk_size=65536)
    root = b.add_inode(_st(stat.S_IFDIR | 0o755))
    good = b.add_inode(_st(stat.S_IFREG | 0o644, 5))
    b.set_inline(good, b"hello")
    bad = b.add_inode(_st(stat.S_IFREG | 0o644, 6))
    b.set_inline(bad, b"secret")
    empty = b.add_inode(_st(stat.S_IFREG | 0o644, 0))
    b.set_inline(empty, b"")
    b.add_dentries(root, [(b"good", good), (b"bad", bad), (b"empty", empty)])
    b.finish({"workspace": "t"})
    import apsw

    db = apsw.Connection(path)
    payload = db.execute("SELECT d.payload FROM data d JOIN inodes i ON i.data = d.id WHERE i.ino = ?",
                         (bad,)).fetchone()[0]
    db.execute("UPDATE data SET payload = ? WHERE id = (SELECT data FROM inodes WHERE ino = ?)",
               (b"S" + payload[1:], bad))
    db.close()

    r, w = os.pipe()
    helper = preload._Helper(path, w, "t@1")
    helper.directory(ROOT_INO)
    helper.close(0.0)
    os.close(w)
    out = os.read(r, 65536)
    os.close(r)
    length, code, unique = struct.unpack_from("<IiQ", out)
    nodeid, offset, size, _ = struct.unpack_from("<QQII", out, 16)
    assert (length, code, unique) == (len(out), preload.FUSE_NOTIFY_STORE, 0)
    assert (nodeid, offset, size) == (good, 0, 5) and out[40:] == b"hello"
    assert helper.stored == 1 and helper.failed == 1


def test_helper_stores_packed_files_from_the_blob_cache(tmp_path: Path, monkeypatch) -> None:
    """Format 2: a packed file is sliced from its pack's cache file and verified; a damaged slice is skipped,
    a pack that never arrives is given up after the last delay, and nothing else is written."""
    from support.cli import Wsfs
    from wsfs.repository import Repository
    from wsfs.store import open_store

    src = tmp_path / "src"
    src.mkdir()
    (src / "good").write_bytes(b"hello")
    (src / "bad").write_bytes(b"secret")
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init")
    w.push(src, "t")
    repo = Repository.open(open_store(w.repo), w.cache_dir)
    m = repo.open_manifest(repo.record("t", 1))
    nodes = {name: node for _, name, node in m.readdir(ROOT_INO)}
    assert nodes[b"good"].packed and nodes[b"bad"].packed
    pack, _ = m.pack_ref(nodes[b"good"])
    assert m.pack_ref(nodes[b"bad"])[0].cid == pack.cid  # one pack holds both
    pack_bytes = repo.get_blob(pack.cid, pack.length, place=pack.place)
    path = m.path
    m.close()

    def run(blobs: Path) -> tuple[bytes, preload._Helper]:
        r, wfd = os.pipe()
        helper = preload._Helper(path, wfd, "t@1", str(blobs))
        helper.directory(ROOT_INO)
        while (wait := helper.due()) is not None:
            time.sleep(wait)
        helper.close(0.0)
        os.close(wfd)
        out = os.read(r, 65536)
        os.close(r)
        return out, helper

    monkeypatch.setattr(preload, "_PACK_DELAYS", (0.01, 0.02))
    out, helper = run(tmp_path / "empty")
    assert out == b"" and helper.missed == 2 and helper.stored == 0

    blobs = tmp_path / "blobs"
    h = pack.cid.hex()
    (blobs / h[:2]).mkdir(parents=True)
    damaged = bytes(pack_bytes).replace(b"secret", b"SECRET")
    assert damaged != bytes(pack_bytes)
    (blobs / h[:2] / h).write_bytes(damaged)
    out, helper = run(blobs)
    length, code, unique = struct.unpack_from("<IiQ", out)
    nodeid, offset, size, _ = struct.unpack_from("<QQII", out, 16)
    assert (length, code, unique) == (len(out), preload.FUSE_NOTIFY_STORE, 0)
    assert (nodeid, offset, size) == (nodes[b"good"].ino, 0, 5) and out[40:] == b"hello"
    assert helper.stored == 1 and helper.failed == 1 and helper.missed == 0
