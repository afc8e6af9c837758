"""What a write layer changed, as paths: for ``wsfs status`` and, later, commit.

Format 2 keys are paths, so this is a diff of two trees (the base and the
merged view) by path, like ``wsfs diff`` of two versions: ``A`` added,
``D`` deleted, ``M`` modified (another inode at the path, or the inode's
attributes, xattrs or content differ), ``T`` type changed.  Its cost follows
the change, not the tree: only directories on the way to a change are
listed (the *dirty* set: every directory holding a changed entry, and its
ancestors in the merged tree); an unchanged directory with the same inode at
the same path is skipped whole.  A renamed directory is O(1) in the layer
but not here: every path below it is deleted under the old name and added
under the new one, which is what commit must write.

Finding the names of an inode changed in place (chmod or write, no entry
changed) needs one scan of the base's ``dentries`` (it has no index by
inode), once per call and only if there is such an inode: linear in the
base, not measured at scale.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from wsfs.format.manifest import ROOT_INO, Inode

if TYPE_CHECKING:
    from wsfs.layer.layer import WriteLayer


class Change(NamedTuple):
    """One changed path: *kind* A, D, M or T; *ino* the merged tree's inode there (0 for D)."""

    path: bytes
    kind: str
    ino: int


def _key(path: bytes) -> bytes:
    """The format 2 key of *path*: parent path, NUL, name (so entries sort as commit writes them)."""
    head, _, name = path.rpartition(b"/")
    return head + b"\0" + name


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _node_changed(layer: WriteLayer, b: Inode, c: Inode) -> bool:
    """Whether inode *c* (the same number as base *b*) differs from the base in anything a record holds."""
    if layer._row(c.ino) is None and c.ino not in layer.contents:
        return False
    same = (b.mode, b.uid, b.gid, b.mtime_ns, b.rdev, b.target) == (c.mode, c.uid, c.gid, c.mtime_ns, c.rdev, c.target)
    if not same or layer.xattrs(c.ino) != layer.m.xattrs(b.ino):
        return True
    if not stat.S_ISDIR(c.mode) and b.nlink != c.nlink:
        return True  # names added or removed: its LINK/LINKED flags change in the records
    if stat.S_ISREG(c.mode):
        return not layer.content_unchanged(c.ino)
    return False


def _dirty_dirs(layer: WriteLayer) -> set[int]:
    db = layer.db
    seeds = {p for (p,) in db.execute("SELECT DISTINCT parent FROM dentries")}
    in_place: set[int] = set()
    for ino, mode in db.execute("SELECT ino, mode FROM nodes WHERE nlink > 0"):
        if stat.S_ISDIR(mode):
            seeds.add(layer.parent_of(ino))
        elif ino <= layer.base_max:
            in_place.add(ino)  # may also have base names: find them below
    in_place.update(i for i in layer.contents if i <= layer.base_max)
    if in_place:
        for parent, ino in layer.m.db.execute("SELECT parent, ino FROM dentries"):
            if ino in in_place:
                seeds.add(parent)
    dirty: set[int] = set()
    for d in seeds:
        hops = 0
        while d not in dirty and hops < 1 << 16:
            dirty.add(d)
            if d == ROOT_INO:
                break
            d = layer.parent_of(d)
            hops += 1
    return dirty


def _walk_current(layer: WriteLayer, ino: int, prefix: bytes) -> Iterator[tuple[bytes, Inode]]:
    for name, a in layer.entries(ino):
        p = _join(prefix, name)
        yield p, a
        if a.is_dir:
            yield from _walk_current(layer, a.ino, p)


def changes(layer: WriteLayer) -> list[Change]:
    """Every path whose entry differs between the base and the merged view, in format 2 key order."""
    dirty = _dirty_dirs(layer)
    out: list[Change] = []
    m = layer.m

    def gone(path: bytes, b: Inode) -> None:
        if b.is_dir:
            out.extend(Change(p, "D", 0) for p, _ in m.walk(b.ino, path))

    def new(path: bytes, c: Inode) -> None:
        if c.is_dir:
            out.extend(Change(p, "A", a.ino) for p, a in _walk_current(layer, c.ino, path))

    def compare(path: bytes, b: int, c: int) -> None:
        if b == c and c not in dirty:
            return
        base = {name: node for _, name, node in m.readdir(b)} if b else {}
        cur = {name: a for _, name, a in layer.readdir(c)} if c else {}
        for name in sorted(base.keys() | cur.keys()):
            p = _join(path, name)
            bn, cn = base.get(name), cur.get(name)
            if cn is None:
                assert bn is not None
                out.append(Change(p, "D", 0))
                gone(p, bn)
            elif bn is None:
                out.append(Change(p, "A", cn.ino))
                new(p, cn)
            elif stat.S_IFMT(bn.mode) != stat.S_IFMT(cn.mode):
                out.append(Change(p, "T", cn.ino))
                gone(p, bn)
                new(p, cn)
            else:
                if bn.ino != cn.ino or _node_changed(layer, bn, cn):
                    out.append(Change(p, "M", cn.ino))
                if cn.is_dir:
                    compare(p, bn.ino, cn.ino)

    root_b = m.getattr(ROOT_INO)
    root_c = layer.getattr(ROOT_INO)
    if _node_changed(layer, root_b, root_c):
        out.append(Change(b"", "M", ROOT_INO))
    compare(b"", ROOT_INO, ROOT_INO)
    out.sort(key=lambda ch: _key(ch.path) if ch.path else b"")
    return out
