"""Helpers for the write layer tests: path resolution and a whole-tree snapshot through the layer."""

from __future__ import annotations

import stat

from wsfs.format.manifest import ROOT_INO, Inode
from wsfs.layer import WriteLayer


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
