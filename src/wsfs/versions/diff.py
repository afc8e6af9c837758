"""Diff: what changed between two versions.

A merge walk over both trees, one directory at a time (memory bounded by the
largest directory).  Statuses: ``A`` added, ``D`` removed, ``M`` modified
(content, symlink target, mode, owner or xattrs; a change of times alone is
not a modification), ``T`` type changed.  Under an added or removed
directory every entry is listed.

Two format 2 versions are compared by their records, not their trees
(:func:`diff_versions`): adjacent versions from the newer one's changeset
alone, any other pair from the ranges the two do not share (an entry in a
range both versions reference is the same in both, so only ranges present
in one of them are fetched and merged).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator

from wsfs.errors import IntegrityError
from wsfs.format.blobs import parse_hexid
from wsfs.format.manifest import ROOT_INO, Inode, Manifest
from wsfs.format.records import VersionRecord
from wsfs.format.tree import (
    Change,
    Entry,
    changes,
    decode_body,
    decode_changeset,
    path_of,
    with_link_names,
)
from wsfs.repository import Repository


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


def record_changes(repo: Repository, a: VersionRecord, b: VersionRecord) -> Iterator[Change] | None:
    """The keys whose records differ from format 2 version *a* to *b*, by key; None if either is format 1."""
    if a.format != 2 or b.format != 2:
        return None
    if a.manifest == b.manifest:
        return iter(())
    if b.changeset is not None and b.parent == a.version and b.workspace == a.workspace:
        parent_top, items = decode_changeset(repo.get_piece(parse_hexid(b.changeset), b.changeset_size, "changeset"))
        if parent_top != parse_hexid(a.manifest):
            raise IntegrityError(f"the changeset of {b.workspace}@{b.version} is not against version {a.version}")
        return iter(items)
    ra, rb = repo.version_refs(a, packs=False)[0], repo.version_refs(b, packs=False)[0]
    ids_a, ids_b = {r.id for r in ra}, {r.id for r in rb}
    layout = repo.config.layout

    def bodies(refs: list, other: set[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """``(key, record body as stored)`` of the ranges of *refs* not in *other*: what changesets compare."""
        for run, stored in repo.version_range_bodies([r for r in refs if r.id not in other]):
            for e, body in zip(run, stored, strict=True):
                yield e.key, body

    items = list(changes(bodies(ra, ids_b), bodies(rb, ids_a)))
    if any(decode_body(c.new, c.key, layout).linked for c in items if c.new is not None):
        # A hard-linked file changed: its other names may sit in ranges both
        # versions share; find them in *b* (rare: only then is every range read).
        links = (
            (e.key, e.link, body)
            for run, stored in repo.version_range_bodies(rb)
            for e, body in zip(run, stored, strict=True)
            if e.link
        )
        items = with_link_names(items, links)
    return iter(items)


def _same_entry(a: Entry, b: Entry) -> bool:
    """Equal but for times (see the module docstring)."""
    return a._replace(mtime_ns=0) == b._replace(mtime_ns=0)


def diff_versions(repo: Repository, a: VersionRecord, b: VersionRecord) -> Iterator[tuple[str, bytes]] | None:
    """``(status, path)`` from the records of two format 2 versions, in path order; None if either is format 1."""
    items = record_changes(repo, a, b)
    if items is None:
        return None
    layout = repo.config.layout
    out: list[tuple[str, bytes]] = []
    for c in items:
        if not c.key:
            continue  # the root's own attributes: not an entry of the tree
        path = path_of(c.key)
        if c.old is None or c.new is None:
            out.append((c.op, path))
            continue
        if c.old == c.new:
            out.append(("M", path))  # a further name of a hard-linked file that changed
            continue
        old, new = decode_body(c.old, c.key, layout), decode_body(c.new, c.key, layout)
        if old.link is None and new.link is None and stat.S_IFMT(old.mode) != stat.S_IFMT(new.mode):
            out.append(("T", path))
        elif not _same_entry(old, new):
            out.append(("M", path))
    out.sort(key=lambda item: item[1].split(b"/"))
    return iter(out)
