"""A base version pushed with the real CLI into a local repository, and write layers over it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.cli import Wsfs
from wsfs.format.manifest import Inode, Manifest
from wsfs.layer import BaseId, WriteLayer
from wsfs.repository import Repository
from wsfs.store import open_store


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


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    b = push_tree(tmp_path_factory.mktemp("base"), standard_tree)
    yield b
    b.m.close()


@pytest.fixture
def layer_factory(base: Base, tmp_path: Path) -> Iterator[Callable[..., WriteLayer]]:
    opened: list[WriteLayer] = []

    def make(state: Path | None = None, **kw: object) -> WriteLayer:
        base.calls.clear()
        lay = WriteLayer(str(state or tmp_path / "state"), base.m, base.id, base.read_base, **kw)  # type: ignore[arg-type]
        opened.append(lay)
        return lay

    yield make
    for lay in opened:
        try:
            lay.close()
        except Exception:
            pass


@pytest.fixture
def layer(layer_factory: Callable[..., WriteLayer]) -> WriteLayer:
    return layer_factory()
