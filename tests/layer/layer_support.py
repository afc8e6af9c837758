"""Helpers for the write layer tests: a pushed base (``Base``, ``push_tree``, ``standard_tree``), path
resolution and a whole-tree snapshot through the layer.  Imported by name (``layer_support``), never
through ``conftest``: several test directories have a conftest module."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from support.cli import Wsfs
from wsfs.format.manifest import ROOT_INO, Inode, Manifest
from wsfs.layer import BaseId, WriteLayer
from wsfs.repository import Repository
from wsfs.store import open_store


def resolve(layer: WriteLayer, path: bytes) -> Inode:
    node = layer.getattr(ROOT_INO)
    for name in path.split(b"/"):
        node = layer.lookup(node.ino, name)
    return node


def names(layer: WriteLayer, ino: int) -> list[bytes]:
    return sorted(name for _, name, _ in layer.readdir(ino))


def tree(layer: WriteLayer, ino: int = ROOT_INO, prefix: bytes = b"", skip: frozenset[bytes] = frozenset()) -> dict:
    """``{path: (kind, permission bits, bytes or target)}`` of everything below *ino*, read through the layer."""
    out: dict[bytes, tuple[str, int, bytes | None]] = {}
    for _, name, a in layer.readdir(ino):
        p = prefix + b"/" + name if prefix else name
        if p in skip:
            continue
        perm = stat.S_IMODE(a.mode)
        if a.is_dir:
            out[p] = ("d", perm, None)
            out.update(tree(layer, a.ino, p, skip))
        elif stat.S_ISLNK(a.mode):
            out[p] = ("l", perm, layer.readlink(a.ino))
        elif stat.S_ISREG(a.mode):
            out[p] = ("f", perm, layer.read(a.ino, 0, a.size))
        else:
            out[p] = ("o", perm, None)
    return out


class Base:
    """A pushed version: its index, and a ``read_base`` that counts what the layer asks for."""

    def __init__(self, repo: Repository, ws: str, version: int, repo_url: str, cache_dir: str) -> None:
        self.repo = repo
        self.repo_url, self.cache_dir = repo_url, cache_dir
        record = repo.record(ws, version)
        self.m: Manifest = repo.open_manifest(record)
        self.id = BaseId(ws, version, record.manifest)
        self.calls: list[tuple[int, int, int]] = []  # (ino, offset, length) per read_base call
        self._chunks: dict[bytes, bytes] = {}

    def read_base(self, node: Inode, off: int, length: int) -> bytes:
        """What the daemon's blob cache will do: fetch the pack or the chunks covering the range."""
        self.calls.append((node.ino, off, length))
        if node.packed:
            pack, at = self.m.pack_ref(node)
            data = self.repo.get_blob(pack.cid, pack.length, place=pack.place)
            return bytes(data[at + off:at + min(off + length, node.size)])
        cs = self.m.chunk_size
        out = bytearray()
        chunks = {c.idx: c for c in self.m.chunks(node.ino)}
        pos, end = off, min(off + length, node.size)
        while pos < end:
            c = chunks[pos // cs]
            if c.cid is None:
                data = bytes(c.length)
            else:
                if c.cid not in self._chunks:
                    self._chunks[c.cid] = bytes(self.repo.get_blob(c.cid, c.length))
                data = self._chunks[c.cid]
            inner = pos - c.idx * cs
            piece = data[inner:inner + end - pos]
            out += piece
            pos += len(piece)
        return bytes(out)

    def path(self, path: bytes) -> Inode:
        return self.m.resolve(path)


def push_tree(tmp_path: Path, build: Callable[[Path], None], ws: str = "w") -> Base:
    src = tmp_path / "src"
    src.mkdir()
    build(src)
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init")
    w.push(src, ws)
    repo = Repository.open(open_store(w.repo), w.cache_dir)
    return Base(repo, ws, 1, w.repo, w.cache_dir)


def standard_tree(src: Path) -> None:
    """Small files, a directory tree, a symlink, a hard link, xattrs, and a sparse 1 GiB file with data in it."""
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "b.txt").write_bytes(b"bravo" * 1000)
    (src / "d").mkdir()
    (src / "d" / "x").write_bytes(b"x" * 10)
    (src / "d" / "y").write_bytes(b"y" * 20)
    (src / "d" / "sub").mkdir()
    (src / "d" / "sub" / "z").write_bytes(b"zulu")
    (src / "empty").mkdir()
    (src / "link").symlink_to("a.txt")
    os.link(src / "b.txt", src / "b2.txt")
    os.setxattr(src / "a.txt", "user.color", b"red")
    (src / "big").mkdir()
    with open(src / "big" / "huge", "wb") as f:
        f.truncate(1 << 30)
        for i in range(0, 1 << 30, 128 << 20):  # one non-zero run per 128 MiB
            f.seek(i + 12345)
            f.write(os.urandom(100) + b"%d" % i)
    (src / "medium").write_bytes(os.urandom(300 * 1024))  # a chunked file of one chunk, five blocks
