"""Helpers for the commit tests: a tree described the same way from a layer's merged view and from a version."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator

import blake3
from layer_support import Base

from wsfs.format.manifest import ROOT_INO, Inode
from wsfs.layer import WriteLayer
from wsfs.repository import Repository


def _describe(walk: Iterator[tuple[bytes, Inode]], read: Callable[[Inode], bytes], link: Callable[[Inode], bytes],
              xattrs: Callable[[int], dict[bytes, bytes]]) -> dict[bytes, tuple]:
    out: dict[bytes, tuple] = {}
    groups: dict[int, list[bytes]] = {}
    for path, a in walk:
        fmt = stat.S_IFMT(a.mode)
        extra: object = None
        if fmt == stat.S_IFREG:
            extra = (a.size, blake3.blake3(read(a)).hexdigest())
            groups.setdefault(a.ino, []).append(path)
        elif fmt == stat.S_IFLNK:
            extra = link(a)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            extra = a.rdev
        xa = tuple(sorted((k, v) for k, v in xattrs(a.ino).items() if k.startswith(b"user.")))
        out[path] = (fmt, stat.S_IMODE(a.mode), a.uid, a.gid, a.mtime_ns, extra, xa, None)
    for paths in groups.values():
        if len(paths) > 1:
            for p in paths:
                out[p] = out[p][:-1] + (tuple(sorted(paths)),)
    return out


def layer_walk(layer: WriteLayer) -> Iterator[tuple[bytes, Inode]]:
    yield b"", layer.getattr(ROOT_INO)
    stack = [(ROOT_INO, b"")]
    while stack:
        ino, prefix = stack.pop()
        for _, name, a in layer.readdir(ino):
            p = prefix + b"/" + name if prefix else name
            if stat.S_ISSOCK(a.mode):
                continue
            yield p, a
            if a.is_dir:
                stack.append((a.ino, p))


def describe_layer(layer: WriteLayer) -> dict[bytes, tuple]:
    return _describe(layer_walk(layer), lambda a: layer.read(a.ino, 0, a.size), lambda a: layer.readlink(a.ino),
                     layer.xattrs)


def describe_version(repo: Repository, ws: str, n: int) -> dict[bytes, tuple]:
    b = Base(repo, ws, n, "", "")
    try:
        m = b.m

        def walk() -> Iterator[tuple[bytes, Inode]]:
            yield b"", m.getattr(ROOT_INO)
            yield from m.walk()

        return _describe(walk(), lambda a: b.read_base(a, 0, a.size) if a.size else b"", lambda a: a.target or b"",
                         m.xattrs)
    finally:
        b.m.close()
