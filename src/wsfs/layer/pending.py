"""What a write layer has not committed yet (``wsfs status``), and dropping it (``wsfs discard``).

**Pending** is what the next commit would publish as ours: the paths whose
entry differs from what the layer last committed there (the commit memo,
``published``) or, for a path never committed, from the base.  It is
computed without reading content: a path is taken as unchanged since its
commit when the same inode is there with the same ctime (every change of
content, attributes, xattrs or names sets ctime), as git's index does with
stat data; so a chmod to the same mode shows as ``M`` although commit then
finds nothing to publish.  Cost: the layer's changes against the base
(:mod:`wsfs.layer.changes`) plus one path lookup per memo key.

**Discard** drops pending changes and shows the base again at those paths.
In this step the layer is not re-based after a commit, so it can only go
back to its base: a path with a pending change *over a committed state*
(its last commit is not the base's entry) is refused, as are changes that
cannot be undone path by path (a directory moved elsewhere, a file whose
other names are not discarded with it, anything open).  Refusals change
nothing.  Returned: ``(path, inode)`` of every path that changed, for the
daemon to invalidate the kernel's entries and attributes.
"""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING, NamedTuple

from wsfs.errors import UsageError
from wsfs.format.manifest import ROOT_INO, Inode
from wsfs.layer.changes import _key

if TYPE_CHECKING:
    from wsfs.layer.layer import WriteLayer


class Pending(NamedTuple):
    """One path the next commit would publish: *kind* A, D, M or T; *size* its size now (0 if deleted);
    *ctime_ns* when it last changed: its entry's ctime, or for a deletion its directory's (0 if that is
    gone too); *mode* its mode now (0 if deleted)."""

    path: bytes
    kind: str
    size: int
    ctime_ns: int
    mode: int = 0


def resolve(layer: WriteLayer, path: bytes, dirs: dict[bytes, Inode | None] | None = None) -> Inode | None:
    """The merged view's entry at *path* (symlinks are not followed), or None.

    *dirs*: the entries found at directory paths (by earlier calls, or by the
    caller), used and filled, so that resolving many paths (a commit's memo: 40,000 keys)
    walks from the root once per directory instead of once per path.  Valid
    while the layer does not change.
    """
    if not path:
        return layer.getattr(ROOT_INO)
    if dirs is not None and path in dirs:  # (a directory the caller found, or a parent found before)
        return dirs[path]
    parent_path, _, name = path.rpartition(b"/")
    if dirs is not None and parent_path in dirs:
        a = dirs[parent_path]
    else:
        a = layer.getattr(ROOT_INO)
        for part in parent_path.split(b"/") if parent_path else ():
            ino = layer._lookup_ino(a.ino, part) if a.is_dir else 0
            if not ino:
                a = None
                break
            a = layer.getattr(ino)
        if dirs is not None:
            dirs[parent_path] = a
    if a is None or not a.is_dir:
        return None
    ino = layer._lookup_ino(a.ino, name)
    return layer.getattr(ino) if ino else None


def _base_at(layer: WriteLayer, path: bytes) -> Inode | None:
    a = layer.m.getattr(ROOT_INO)
    if not path:
        return a
    for name in path.split(b"/"):
        if not a.is_dir:
            return None
        b = layer.m.lookup(a.ino, name)
        if b is None:
            return None
        a = b
    return a


def _memo(layer: WriteLayer) -> dict[bytes, tuple[bytes | None, int, int]]:
    return {k: (b, i, c) for k, b, i, c in layer.db.execute("SELECT key, body, ino, ctime_ns FROM published")}


def _path(key: bytes) -> bytes:
    parent, _, name = key.partition(b"\0")
    return parent + b"/" + name if parent else name


def pending(layer: WriteLayer) -> list[Pending]:
    """What the next commit would publish, by path in format 2 key order (see the module docstring)."""
    memo = _memo(layer)
    out: dict[bytes, Pending] = {}
    dirs: dict[bytes, Inode | None] = {}  # directory paths resolved so far

    def deleted(path: bytes) -> Pending:
        d = resolve(layer, path.rpartition(b"/")[0], dirs)
        return Pending(path, "D", 0, d.ctime_ns if d is not None else 0)

    for c in layer.changes():
        if (_key(c.path) if c.path else b"") not in memo:
            if c.ino:
                a = layer.getattr(c.ino)
                out[c.path] = Pending(c.path, c.kind, a.size, a.ctime_ns, a.mode)
            else:
                out[c.path] = deleted(c.path)
    for key, (body, ino, ctime) in memo.items():
        path = _path(key) if key else b""
        a = resolve(layer, path, dirs)
        if a is None:
            if body is not None:
                out[path] = deleted(path)
        elif body is None:
            out[path] = Pending(path, "A", a.size, a.ctime_ns, a.mode)
        elif (a.ino, a.ctime_ns) != (ino, ctime):
            kind = "T" if a.ino != ino and not _same_type(layer, a.ino, ino) else "M"
            out[path] = Pending(path, kind, a.size, a.ctime_ns, a.mode)
    return sorted(out.values(), key=lambda p: _key(p.path) if p.path else b"")


def _same_type(layer: WriteLayer, a: int, b: int) -> bool:
    try:
        return stat.S_IFMT(layer.getattr(a).mode) == stat.S_IFMT(layer.getattr(b).mode)
    except Exception:  # noqa: BLE001 - the old inode is gone: compare nothing
        return True


def discard(layer: WriteLayer, paths: list[bytes] | None = None) -> list[tuple[bytes, int]]:
    """Drop the pending changes (all, or those at or below *paths*); see the module docstring."""
    layer.sync_all()  # a clean commit point: a refused discard rolls back to it
    todo = pending(layer)
    if paths is not None:
        norm = [p.strip(b"/") for p in paths]
        todo = [t for t in todo if any(not p or t.path == p or t.path.startswith(p + b"/") for p in norm)]
    memo = _memo(layer)
    refused = [t.path for t in todo if (_key(t.path) if t.path else b"") in memo]
    if refused:
        raise UsageError(
            f"cannot discard {_shown(refused)}: committed since the mount's base, and the layer cannot show "
            "a committed version before it is re-based (remount on the new version)"
        )
    current = {t.path: resolve(layer, t.path) for t in todo}
    busy = [p for p, a in current.items() if a is not None and layer.opens.get(a.ino)]
    if busy:
        raise UsageError(f"cannot discard {_shown(busy)}: open")
    affected = [(t.path, a.ino if a is not None else 0) for t, a in zip(todo, current.values(), strict=True)]
    if paths is None and not memo and not layer.opens:
        _reset(layer)
        return affected
    due = layer.commit_interval, layer.batch_ops
    layer.commit_interval, layer.batch_ops = float("inf"), 1 << 62  # one batch: all of it, or none
    try:
        _undo(layer, todo, current)
    except BaseException:
        layer._reload()
        raise
    finally:
        layer.commit_interval, layer.batch_ops = due
    layer._commit(durable=True)
    return affected


def _shown(paths: list[bytes]) -> str:
    return ", ".join(p.decode(errors="replace") or "/" for p in paths[:10]) + (" ..." if len(paths) > 10 else "")


def _reset(layer: WriteLayer) -> None:
    """Everything back to the base: no node, entry, block or xattr row left."""
    layer._begin()
    for (slot,) in layer.db.execute("SELECT slot FROM blocks"):
        layer.pool.release(slot, durable=True)
    for table in ("blocks", "xattrs", "dentries", "nodes"):
        layer.db.execute(f"DELETE FROM {table}")
    layer.contents.clear()
    layer._base_parents = None
    layer._commit(durable=True)


def _drop_node(layer: WriteLayer, ino: int) -> None:
    """Forget the layer's row of base inode *ino*: its base attributes, content and xattrs show again."""
    for (slot,) in layer.db.execute("SELECT slot FROM blocks WHERE ino = ?", (ino,)):
        layer.pool.release(slot, durable=True)
    c = layer.contents.pop(ino, None)
    if c is not None:
        layer._tx_contents.discard(c)
    layer.db.execute("DELETE FROM blocks WHERE ino = ?", (ino,))
    layer.db.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))
    layer.db.execute("DELETE FROM nodes WHERE ino = ?", (ino,))


def _undo(layer: WriteLayer, todo: list[Pending], current: dict[bytes, Inode | None]) -> None:
    layer._begin()
    base = {t.path: _base_at(layer, t.path) for t in todo}

    def refuse(path: bytes, why: str) -> UsageError:
        return UsageError(f"cannot discard {_shown([path])}: {why}; discard its directory instead")

    # 1. Remove what is there and should not be (deepest first).
    for t in reversed(todo):
        a, b = current[t.path], base[t.path]
        if a is None or (b is not None and b.ino == a.ino):
            continue
        parent_path, _, name = t.path.rpartition(b"/")
        parent = resolve(layer, parent_path)
        assert parent is not None
        if a.is_dir:
            if a.ino <= layer.base_max:
                raise refuse(t.path, "a directory of the base moved here")
            layer.rmdir(parent.ino, name)  # NotEmpty: something below it is not being discarded
        else:
            if a.ino <= layer.base_max and a.nlink > 1:
                raise refuse(t.path, "a further name of a file of the base")
            layer.unlink(parent.ino, name)
    # 2. Bring back the base's entries (parents first).
    for t in todo:
        a, b = current[t.path], base[t.path]
        if b is None or (a is not None and a.ino == b.ino):
            continue
        parent_path, _, name = t.path.rpartition(b"/")
        parent_b = _base_at(layer, parent_path)
        parent = resolve(layer, parent_path)
        if parent is None or parent_b is None or parent.ino != parent_b.ino:
            raise refuse(t.path, "its directory is not the base's")
        r = layer._row(b.ino)
        if r is not None and r[8] > 0:
            raise refuse(t.path, "it lives on under another name")
        layer.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (parent.ino, name))
        _drop_node(layer, b.ino)
        if b.is_dir and layer._row(parent.ino) is not None:
            layer._update(parent.ino, nlink=layer.getattr(parent.ino).nlink + 1)
    # 3. Attributes, content and xattrs of inodes changed in place.
    for t in todo:
        a, b = current[t.path], base[t.path]
        if a is None or b is None or a.ino != b.ino:
            continue
        if not b.is_dir:
            if layer.getattr(a.ino).nlink != b.nlink:
                raise refuse(t.path, "names of this file were added or removed elsewhere")
            _drop_node(layer, a.ino)
        elif layer._row(a.ino) is not None:
            layer.db.execute("DELETE FROM xattrs WHERE ino = ?", (a.ino,))
            layer._update(a.ino, mode=b.mode, uid=b.uid, gid=b.gid, atime_ns=b.atime_ns, mtime_ns=b.mtime_ns,
                          ctime_ns=b.ctime_ns, xattrs=0)
