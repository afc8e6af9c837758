"""Building source trees with every kind of entry, and comparing two trees the way a user would.

Used by the push/checkout tests and the mount tests: a tree read back must
match the source in names (bytes), types, modes, owners, sizes, link
targets, hard-link structure, nanosecond mtimes, user xattrs and bytes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import blake3

INLINE = 128 * 1024
CHUNK = 4 * 1024 * 1024


def write(path: Path | bytes, data: bytes, mode: int = 0o644, mtime_ns: int | None = None) -> None:
    p = os.fsencode(path)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)
    if mtime_ns is not None:
        os.utime(p, ns=(mtime_ns, mtime_ns))


def make_rich_tree(root: Path, *, big: bool = True) -> Path:
    """A tree with one of everything the format must keep; returns *root*."""
    root.mkdir(parents=True, exist_ok=True)
    r = os.fsencode(root)
    rnd = os.urandom
    write(root / "empty", b"")
    write(root / "tiny", b"x")
    write(root / "at-threshold", rnd(INLINE))
    write(root / "below-threshold", rnd(INLINE - 1))
    write(root / "above-threshold", rnd(INLINE + 1))
    write(root / "text.txt", b"hello world\n" * 1000, 0o600, mtime_ns=1_234_567_890_123_456_789)
    if big:
        write(root / "big.bin", rnd(2 * CHUNK + 12345))
        # sparse: holes at the start, between and at the end; a data island in the middle
        with open(root / "sparse", "wb") as f:
            f.truncate(3 * 1024**3)
            f.seek(CHUNK * 100 + 17)
            f.write(b"island")
            f.seek(3 * 1024**3 - 5)
            f.write(b"end")
        # a chunk of real zeros (not a hole) followed by data
        write(root / "zeros-then-data", bytes(CHUNK) + b"data")
    d = root / "dir" / "sub" / "deeper"
    d.mkdir(parents=True)
    write(d / "leaf", b"leaf")
    (root / "emptydir").mkdir()
    os.chmod(root / "emptydir", 0o1777)  # sticky
    write(root / "setuid", b"#!/bin/sh\n", 0o4755)
    write(root / "setgid", b"#!/bin/sh\n", 0o2750)
    os.symlink("text.txt", root / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("dir/sub", root / "dir-link")
    os.link(root / "text.txt", root / "hardlink-to-text")
    os.link(root / "text.txt", root / "dir" / "another-hardlink")
    os.mkfifo(root / "fifo", 0o640)
    weird = [b"caf\xe9-latin1", b"new\nline", b"-leading-dash", b"a" * 255, b" space ", b"\x01ctl", "ünïcode".encode()]
    for name in weird:
        write(r + b"/dir/" + name, name)
    write(root / "xattr-file", b"x")
    os.setxattr(root / "xattr-file", "user.comment", b"hello")
    os.setxattr(root / "xattr-file", "user.binary", bytes(range(256)))
    os.setxattr(root / "dir", "user.on-dir", b"dir value")
    os.chown(root / "tiny", 1234, 5678)
    os.lchown(root / "rel-link", 4321, 8765)
    os.utime(root / "rel-link", ns=(111, 222_333_444_555_666_777), follow_symlinks=False)
    os.utime(root / "dir" / "sub", ns=(1, 987_654_321_000_000_001))
    return root


def _hash(path: bytes) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as f:
        while True:
            b = f.read(8 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _xattrs(path: bytes) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names if n.startswith("user.")}


def describe(root: Path | bytes, *, mtimes: bool = True, content: bool = True) -> dict[bytes, tuple]:
    """Everything a user can observe about each entry below *root*, keyed by relative path.

    Hard links are described by the group of paths sharing an inode, so the
    structure (not the inode numbers) is compared.  Directory sizes and
    atimes/ctimes are left out: they are not the filesystem's to preserve.
    """
    r = os.fsencode(root)
    out: dict[bytes, tuple] = {}
    groups: dict[tuple[int, int], list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(r):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, r)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = (st.st_size, _hash(p) if content else None)
                groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = st.st_rdev
            out[rel] = (
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_mtime_ns if mtimes else None,
                st.st_nlink if not stat.S_ISDIR(st.st_mode) else None,
                extra,
                tuple(sorted(_xattrs(p).items())),
            )
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    for paths in groups.values():
        if len(paths) > 1:
            key = tuple(sorted(paths))
            for p in paths:
                out[p] = out[p] + (key,)
    st = os.lstat(r)
    out[b"."] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, tuple(sorted(_xattrs(r).items())))
    return out


def assert_same_tree(a: Path | bytes, b: Path | bytes, **kw: bool) -> None:
    da, db = describe(a, **kw), describe(b, **kw)
    missing = sorted(set(da) - set(db))
    extra = sorted(set(db) - set(da))
    assert not missing and not extra, f"missing {missing[:10]}, extra {extra[:10]}"
    diffs = [(k, da[k], db[k]) for k in sorted(da) if da[k] != db[k]]
    assert not diffs, f"{len(diffs)} entries differ, first: {diffs[:3]}"
