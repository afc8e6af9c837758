"""Diff: what changed between two versions.

A merge walk over both trees, one directory at a time (memory bounded by the
largest directory).  Statuses: ``A`` added, ``D`` removed, ``M`` modified
(content, symlink target, mode, owner or xattrs; a change of times alone is
not a modification), ``T`` type changed.  Under an added or removed
directory every entry is listed.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator

from wsfs.format.manifest import ROOT_INO, Inode, Manifest


def _same(a: Manifest, na: Inode, b: Manifest, nb: Inode) -> bool:
    if (na.mode, na.uid, na.gid) != (nb.mode, nb.uid, nb.gid):
        return False
    if na.is_reg and (na.content, na.size) != (nb.content, nb.size):
        return False
    if na.is_link and na.target != nb.target:
        return False
    if stat.S_ISCHR(na.mode) or stat.S_ISBLK(na.mode):
        if na.rdev != nb.rdev:
            return False
    return a.xattrs(na.ino) == b.xattrs(nb.ino)


def _all(m: Manifest, node: Inode, path: bytes, status: str) -> Iterator[tuple[str, bytes]]:
    yield status, path
    if node.is_dir:
        for sub, _ in m.walk(node.ino, path):
            yield status, sub


def _dir(a: Manifest, b: Manifest, ino_a: int, ino_b: int, prefix: bytes) -> Iterator[tuple[str, bytes, int, int]]:
    """Differences in one directory; ``(status, path, ino_a, ino_b)`` with inos set to recurse into."""
    ea = {name: node for _, name, node in a.readdir(ino_a)}
    eb = {name: node for _, name, node in b.readdir(ino_b)}
    for name in sorted(ea.keys() | eb.keys()):
        path = prefix + b"/" + name if prefix else name
        na, nb = ea.get(name), eb.get(name)
        if nb is None:
            assert na is not None
            for st, p in _all(a, na, path, "D"):
                yield st, p, 0, 0
        elif na is None:
            for st, p in _all(b, nb, path, "A"):
                yield st, p, 0, 0
        elif stat.S_IFMT(na.mode) != stat.S_IFMT(nb.mode):
            yield "T", path, 0, 0
            if na.is_dir:
                for sub, _ in a.walk(na.ino, path):
                    yield "D", sub, 0, 0
            if nb.is_dir:
                for sub, _ in b.walk(nb.ino, path):
                    yield "A", sub, 0, 0
        else:
            if not _same(a, na, b, nb):
                yield "M", path, 0, 0
            if na.is_dir:
                yield "", path, na.ino, nb.ino


def diff(a: Manifest, b: Manifest) -> Iterator[tuple[str, bytes]]:
    """``(status, path)`` for every difference from *a* to *b*, in path order.

    Iterative (a stack of per-directory generators), so depth is not limited
    by Python's recursion limit.
    """
    stack = [_dir(a, b, ROOT_INO, ROOT_INO, b"")]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        status, path, ia, ib = item
        if status:
            yield status, path
        else:
            stack.append(_dir(a, b, ia, ib, path))
