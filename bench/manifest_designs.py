#!/usr/bin/env python3
"""Format 2 research (issue 12): what each manifest design costs per version.

A measurement prototype, not product code.  For one input tree (a generated
node_modules-like tree, or ``--tree DIR``) it builds versions under the edits
of issue 12's goal table and, for each candidate encoding of a version,
simulates the store as a dict of content-addressed objects (id -> stored
size; nothing is uploaded anywhere) and reports:

* uploaded bytes and objects (PUTs) per edit, against a store that holds v0;
* bytes (and GETs) a host that has v0 cached downloads to mount the new version;
* a cold mount of v0: objects, bytes, sequential request rounds and the widest
  round (how many GETs can go in parallel), the part needed for the tree
  (``find -ls``) and for the first ``ls`` of the root;
* CPU time to encode a version from scratch, and with the parent's encoded
  pieces remembered (what a commit that reuses its parent's pieces does);
* determinism: the same final tree reached by two histories gives the same
  objects (asserted for the content-defined designs);
* the changeset object each version would store, per edit.

Edits: 1 small file modified, 100 spread over the tree, a 50-file package
added, nothing changed, the biggest top-level package renamed, and a second
workspace pushing the same tree.

Large files (> 128 KiB) are 4 MiB chunks in every design (format 1's chunk
blobs); they are counted separately (``chunks``) since no design changes them.

Designs (encodings written here only, kept small):

``f1``        format 1: the real ``ManifestBuilder`` (one SQLite file, stored zstd as a whole).
``f1-pages``  the same SQLite file cut into fixed 256 KiB pieces (page-aligned), each an object.
``rng-inl-*`` key ranges (lakeFS Graveler-like): entries sorted by (parent path, name), one
              compact record each, small files' bytes inline in the record; cut where
              hash(key) % R == 0 after a minimum size; a meta-range lists the ranges.
``rng-pk-*``  the same ranges without file bytes (metadata only), plus data packs: the small
              files' bytes in key order, cut by the same rule into packs (dedup inside a pack).
``*-2l``      the meta-range itself cut into pieces by the same rule, under a small top object.
``*-2l-c``    and pack boundaries decided by the content id, not the key (a renamed subtree keeps its packs).
``git-blob``  one tree object per directory + one blob per small file (Git).
``git-dir``   one tree object per directory with its small files' bytes inside (packed per dir).

Run: ``PYTHONPATH=src python bench/manifest_designs.py [--files 20000] [--tree DIR] [--json F]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import blake3

from wsfs.format.blobs import content_id, encode_blob
from wsfs.format.manifest import ROOT_INO, ManifestBuilder, content_id_chunked
from wsfs.format.tree import put_bytes, put_uv

KiB = 1024
MiB = 1024 * KiB
INLINE = 128 * KiB
CHUNK = 4 * MiB

# -- the tree, in memory --------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One entry: what every design records.  ``data`` for small files, ``chunks`` for large ones."""

    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    cid: bytes | None = None  # regular files: content id
    data: bytes | None = None
    chunks: tuple[bytes | None, ...] | None = None
    target: bytes | None = None
    xattrs: tuple[tuple[bytes, bytes], ...] = ()


Tree = dict[bytes, Node]  # relative path ('' = root) -> node
CHUNK_SIZES: dict[bytes, int] = {}  # chunk id -> stored size (every large-file chunk seen)


def small_file(mode: int, mtime_ns: int, data: bytes, uid: int = 0, gid: int = 0) -> Node:
    return Node(mode, uid, gid, len(data), mtime_ns, content_id(data), data)


def load_tree(top: str) -> Tree:
    """Read a directory into memory (symlinks not followed, small files whole, large files as chunk ids)."""
    tree: Tree = {}
    st = os.lstat(top)
    tree[b""] = Node(st.st_mode, st.st_uid, st.st_gid, 0, st.st_mtime_ns)
    stack = [(os.fsencode(top), b"")]
    while stack:
        dpath, rel = stack.pop()
        for name in sorted(os.listdir(dpath)):
            p = dpath + b"/" + name
            r = rel + b"/" + name if rel else name
            st = os.lstat(p)
            m = st.st_mode
            xa = ()
            if stat.S_ISDIR(m):
                tree[r] = Node(m, st.st_uid, st.st_gid, 0, st.st_mtime_ns, xattrs=xa)
                stack.append((p, r))
            elif stat.S_ISLNK(m):
                t = os.readlink(p)
                tree[r] = Node(m, st.st_uid, st.st_gid, len(t), st.st_mtime_ns, target=t)
            elif stat.S_ISREG(m):
                with open(p, "rb") as f:
                    data = f.read()
                if len(data) <= INLINE:
                    tree[r] = small_file(m, st.st_mtime_ns, data, st.st_uid, st.st_gid)
                else:
                    cids = []
                    for off in range(0, len(data), CHUNK):
                        piece = data[off : off + CHUNK]
                        c = content_id(piece)
                        if c not in CHUNK_SIZES:
                            CHUNK_SIZES[c] = len(encode_blob(piece))
                        cids.append(c)
                    tree[r] = Node(m, st.st_uid, st.st_gid, len(data), st.st_mtime_ns,
                                   content_id_chunked(len(data), CHUNK, cids), chunks=tuple(cids))
            # fifos, devices, sockets: not in these trees
    return tree


def chunk_objects(tree: Tree) -> dict[bytes, int]:
    return {c: CHUNK_SIZES[c] for n in tree.values() if n.chunks for c in n.chunks if c is not None}


# -- edits (issue 12's goal table) ----------------------------------------------


def _modified(n: Node, rng: random.Random) -> Node:
    assert n.data is not None
    extra = f"\n// edited {rng.randrange(1 << 30)}\n".encode()
    return small_file(n.mode, n.mtime_ns + 1_000_000_000, n.data + extra, n.uid, n.gid)


def _small_files(tree: Tree) -> list[bytes]:
    return sorted(p for p, n in tree.items() if n.data is not None)


def edit_one(tree: Tree, seed: int = 1) -> Tree:
    rng = random.Random(seed)
    files = _small_files(tree)
    p = files[len(files) // 2]
    return {**tree, p: _modified(tree[p], rng)}


def edit_spread(tree: Tree, count: int = 100, seed: int = 2) -> Tree:
    rng = random.Random(seed)
    files = _small_files(tree)
    step = len(files) / count
    picks = [files[int(i * step + rng.random() * step)] for i in range(count)]
    new = dict(tree)
    for p in picks:
        new[p] = _modified(tree[p], rng)
    return new


def edit_add_package(tree: Tree, nfiles: int = 50, seed: int = 3) -> Tree:
    """A new package directory under the top node_modules (or the root) with *nfiles* JS-like files."""
    rng = random.Random(seed)
    top = b"node_modules" if b"node_modules" in tree else b""
    pkg = (top + b"/" if top else b"") + b"zz-added-package-%d" % seed
    assert pkg not in tree
    files = _small_files(tree)
    words = [rng.choice(files) for _ in range(64)]
    pool = b"".join(tree[w].data or b"" for w in words)
    d = tree[top]
    new = dict(tree)
    t = d.mtime_ns + 5_000_000_000
    dirs = {pkg}
    for i in range(nfiles):
        sub = [b"", b"lib/", b"dist/", b"types/"][i % 4] if i else b""
        name = b"package.json" if i == 0 else sub + b"f%03d.js" % i
        size = min(INLINE, max(100, int(rng.lognormvariate(7.8, 1.0))))
        off = rng.randrange(0, max(1, len(pool) - size))
        new[pkg + b"/" + name] = small_file(0o100644, t, pool[off : off + size])
        if sub:
            dirs.add(pkg + b"/" + sub.rstrip(b"/"))
    for dp in dirs:
        new[dp] = Node(0o40755, d.uid, d.gid, 0, t)
    new[top] = replace(d, mtime_ns=t)  # the parent directory's mtime changes too
    return new


def edit_rename_dir(tree: Tree) -> Tree:
    """Rename the child of the top node_modules (or root) holding the most small files (under a third of all)."""
    top = b"node_modules" if b"node_modules" in tree else b""
    pre = top + b"/" if top else b""
    counts: dict[bytes, int] = {}
    for p, n in tree.items():
        if n.data is not None and p.startswith(pre):
            head = p[len(pre):].split(b"/", 1)[0]
            if head.startswith(b"@"):  # a scope: count its packages
                head = b"/".join(p[len(pre):].split(b"/", 2)[:2])
            counts[head] = counts.get(head, 0) + 1
    limit = len(_small_files(tree)) // 3
    victim = max((c, h) for h, c in counts.items() if c < limit and (pre + h) in tree and stat.S_ISDIR(tree[pre + h].mode))[1]
    old, new = pre + victim, pre + victim + b"-renamed"
    out: Tree = {}
    for p, n in tree.items():
        if p == old or p.startswith(old + b"/"):
            out[new + p[len(old):]] = n
        else:
            out[p] = n
    parent = old.rpartition(b"/")[0]
    out[parent] = replace(tree[parent], mtime_ns=tree[parent].mtime_ns + 7_000_000_000)
    return out


# -- the simulated store -----------------------------------------------------------


@dataclass
class Encoded:
    """One version as a design stores it."""

    root: bytes  # what the version record names
    objects: dict[bytes, int]  # id -> stored size, everything the version references but large-file chunks
    tree_objects: set[bytes]  # the part needed to serve the whole tree (find -ls); the rest is file data
    first_ls: set[bytes]  # objects needed before the root directory can be listed
    rounds: list[int]  # GETs per sequential round of a cold mount (after the record)
    extra: dict[str, float] = field(default_factory=dict)


CAPTURE: dict[bytes, tuple[int, bytes]] | None = None  # when set: id -> (plaintext size, stored bytes)


def _put(objs: dict[bytes, int], raw: bytes, memo: dict[bytes, int] | None) -> bytes:
    """Add the object of plaintext *raw* (stored as codec byte + zstd); returns its id."""
    oid = blake3.blake3(raw).digest()
    if CAPTURE is not None:
        CAPTURE[oid] = (len(raw), encode_blob(raw))
    if memo is not None and oid in memo:
        objs[oid] = memo[oid]
    else:
        objs[oid] = len(encode_blob(raw))
        if memo is not None:
            memo[oid] = objs[oid]
    return oid


def _uv(out: bytearray, *vals: int) -> None:
    """Unsigned LEB128 varints (format 2's own writer)."""
    for v in vals:
        put_uv(out, v)


_bytes = put_bytes


def record(name: bytes, n: Node, *, with_data: bool) -> bytes:
    """A compact entry record: name/key, attributes, content id (+ bytes), chunk ids, link target, xattrs."""
    out = bytearray()
    _bytes(out, name)
    _uv(out, n.mode, n.uid, n.gid, n.size, n.mtime_ns)
    if n.cid is not None:
        out += n.cid
        if n.chunks is not None:
            _uv(out, len(n.chunks))
            for c in n.chunks:
                out += c if c is not None else bytes(32)
        elif with_data:
            assert n.data is not None
            _bytes(out, n.data)
    if n.target is not None:
        _bytes(out, n.target)
    _uv(out, len(n.xattrs))
    for k, v in n.xattrs:
        _bytes(out, k)
        _bytes(out, v)
    return bytes(out)


def changeset(old: Tree, new: Tree) -> bytes:
    """The changeset a format 2 version would store against its parent: sorted (op, path, old id, new id).

    Ids are the content id for regular files, else blake3 of the entry's
    record (attributes, target); a change of attributes only is a modification
    with equal content ids.  Returns the stored object (codec byte + zstd).
    """
    def rid(n: Node) -> bytes:
        return n.cid if n.cid is not None else content_id(record(b"", n, with_data=False))

    out = bytearray()
    for p in sorted(old.keys() | new.keys()):
        a, b = old.get(p), new.get(p)
        if a == b:
            continue
        op = 0 if a is None else 1 if b is None else 2  # added, removed, modified
        out.append(op)
        _bytes(out, p)
        if a is not None:
            out += rid(a)
        if b is not None:
            out += rid(b)
            _uv(out, b.mode, b.size, b.mtime_ns)
    return encode_blob(bytes(out))


def decode_cost(ids: set[bytes]) -> float:
    """CPU seconds to decompress and verify (blake3) the captured objects *ids*: what a reader does first."""
    from wsfs.format.blobs import decompress

    assert CAPTURE is not None
    t = time.process_time()
    for oid in ids:
        size, stored = CAPTURE[oid]
        data = decompress(stored[0], stored[1:], size)
        assert blake3.blake3(data).digest() == oid
    return time.process_time() - t


# -- design 1: format 1, the real ManifestBuilder --------------------------------------


class Format1:
    name = "f1"

    def __init__(self, workdir: str, pieces: int = 0) -> None:
        self.workdir = workdir
        self.pieces = pieces  # 0: one object; else fixed pieces of this size (f1-pages)
        if pieces:
            self.name = f"f1-pages{pieces // KiB}K"

    def sqlite(self, tree: Tree, workspace: str) -> bytes:
        """The manifest push would write for *tree* (same walk order: entries of a directory, then its subdirs)."""
        path = os.path.join(self.workdir, "m.sqlite")
        b = ManifestBuilder(path, chunk_size=CHUNK)
        children: dict[bytes, list[bytes]] = {}
        for p in tree:
            if p:
                children.setdefault(p.rpartition(b"/")[0], []).append(p)

        def st(n: Node) -> SimpleNamespace:
            return SimpleNamespace(st_mode=n.mode, st_uid=n.uid, st_gid=n.gid, st_size=n.size,
                                   st_blocks=(n.size + 511) // 512, st_mtime_ns=n.mtime_ns, st_rdev=0)

        root = b.add_inode(st(tree[b""]), nlink=2)
        assert root == ROOT_INO
        chunked = []
        stack = [(b"", root)]
        while stack:
            dp, dino = stack.pop()
            entries, subdirs = [], []
            for p in sorted(children.get(dp, ())):
                n = tree[p]
                ino = b.add_inode(st(n), target=n.target)
                if n.data is not None:
                    b.set_inline(ino, n.data)
                elif n.chunks is not None:
                    chunked.append((ino, n.size, list(n.chunks)))
                if stat.S_ISDIR(n.mode):
                    subdirs.append((p, ino))
                entries.append((p.rpartition(b"/")[2], ino))
            b.add_dentries(dino, entries)
            b.set_nlink(dino, 2 + len(subdirs))
            stack.extend(reversed(subdirs))
        for ino, size, cids in chunked:
            b.set_chunks(ino, size, cids)
        b.finish({"workspace": workspace})
        with open(path, "rb") as f:
            raw = f.read()
        return raw

    def encode(self, tree: Tree, workspace: str, memo: dict[bytes, int] | None) -> Encoded:
        raw = self.sqlite(tree, workspace)
        objs: dict[bytes, int] = {}
        if not self.pieces:
            oid = _put(objs, raw, memo)
            return Encoded(oid, objs, {oid}, {oid}, [1])
        ids = [_put(objs, raw[o : o + self.pieces], memo) for o in range(0, len(raw), self.pieces)]
        index = _put(objs, b"".join(ids), memo)
        return Encoded(index, objs, set(objs), set(objs), [1, len(ids)])


# -- design 2: content-defined key ranges (Graveler-like) -------------------------------------

_KEY_HASH: dict[bytes, int] = {}


def key_of(path: bytes) -> bytes:
    """Sort key: parent path, NUL, name; a directory's entries are contiguous (readdir = a range scan)."""
    parent, _, name = path.rpartition(b"/")
    return parent + b"\0" + name if path else b""


def cut(items: list[tuple[bytes, bytes]], min_size: int, r: int, max_size: int,
        by: list[bytes] | None = None) -> list[list[tuple[bytes, bytes]]]:
    """Split sorted (key, record) into ranges: end after a key with hash % r == 0 once min_size is reached.

    A function of the sorted items only, so any history that reaches the same
    tree cuts the same ranges; an edit changes the range it falls in, and the
    boundaries re-synchronise at the next boundary key.
    """
    out: list[list[tuple[bytes, bytes]]] = []
    cur: list[tuple[bytes, bytes]] = []
    size = 0
    for i, (k, rec) in enumerate(items):
        cur.append((k, rec))
        size += len(rec)
        hk = k if by is None else by[i]  # what decides a boundary: the key, or (packs) the content id
        h = _KEY_HASH.get(hk)
        if h is None:
            h = _KEY_HASH[hk] = int.from_bytes(blake3.blake3(hk).digest()[:8], "little")
        if size >= max_size or (size >= min_size and h % r == 0):
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return out


@dataclass(frozen=True)
class RangeParams:
    min_size: int  # raw (uncompressed) bytes before a cut is allowed
    r: int  # a key is a boundary with probability 1/r
    max_size: int  # forced cut


class Ranges:
    """Key ranges; ``packs`` None: file bytes inline in the records; else small-file data in packs cut likewise.

    ``two_level``: the meta-range's entries (one per range or pack) are cut
    into pieces by the same rule, and the version's top object lists the
    pieces (Graveler's meta-range is itself a range of ranges): a commit then
    rewrites a piece of the listing, not all of it.
    """

    LISTING = RangeParams(8 * KiB, 32, 64 * KiB)  # listing entries are ~100 B: pieces of ~10 KiB raw

    def __init__(self, name: str, meta: RangeParams, packs: RangeParams | None, two_level: bool = False,
                 packs_by_content: bool = False) -> None:
        self.packs_by_content = packs_by_content  # pack boundaries from content ids: a renamed subtree keeps its packs
        self.name = name
        self.meta = meta
        self.packs = packs
        self.two_level = two_level

    @staticmethod
    def _entry(oid: bytes, first: bytes, last: bytes) -> bytes:
        out = bytearray(oid)
        _bytes(out, first)
        _bytes(out, last)
        return bytes(out)

    def encode(self, tree: Tree, workspace: str, memo: dict[bytes, int] | None) -> Encoded:
        objs: dict[bytes, int] = {}
        inline = self.packs is None
        keys = sorted((key_of(p), p) for p in tree)
        items = [(k, record(k, tree[p], with_data=inline)) for k, p in keys]
        ranges = cut(items, self.meta.min_size, self.meta.r, self.meta.max_size)
        # Listing entries: per range (then per pack) its id, first and last key.
        rlist: list[tuple[bytes, bytes]] = []
        for rg in ranges:
            raw = bytearray()
            _uv(raw, len(rg))
            for _, rec in rg:
                raw += rec
            rlist.append((rg[0][0], self._entry(_put(objs, bytes(raw), memo), rg[0][0], rg[-1][0])))
        rids = [e[:32] for _, e in rlist]
        plist: list[tuple[bytes, bytes]] = []
        if self.packs is not None:
            # A pack: (content id, length) of each distinct content, then the bytes, one zstd frame.
            # cut() weighs items by len(item[1]): the file's bytes.
            pitems = [(k, tree[p].data) for k, p in keys if tree[p].data is not None]
            by = [tree[p].cid for _, p in keys if tree[p].data is not None] if self.packs_by_content else None
            for pk in cut(pitems, self.packs.min_size, self.packs.r, self.packs.max_size, by):  # type: ignore[arg-type]
                seen: set[bytes] = set()
                head, body = bytearray(), bytearray()
                for _k, p in pk:
                    c = content_id(p)
                    if c in seen:
                        continue
                    seen.add(c)
                    head += c
                    _uv(head, len(p))
                    body += p
                raw = bytearray()
                _uv(raw, len(seen))
                plist.append((pk[0][0], self._entry(_put(objs, bytes(raw + head + body), memo), pk[0][0], pk[-1][0])))
        pids = [e[:32] for _, e in plist]
        tree_ids = set(rids)
        # The root's entries are the keys "\0name": in the first range(s).
        first = {rids[i] for i, rg in enumerate(ranges) if rg[0][0] < b"\x01"}
        rounds = [1, len(rids) + len(pids)]
        listing = bytearray()
        if not self.two_level:
            for lst in (rlist, plist):
                _uv(listing, len(lst))
                for _, e in lst:
                    listing += e
        else:
            npieces = 0
            for lst in (rlist, plist):
                pieces = cut(lst, self.LISTING.min_size, self.LISTING.r, self.LISTING.max_size) if lst else []
                _uv(listing, len(pieces))
                for i, pc in enumerate(pieces):
                    pid = _put(objs, b"".join(e for _, e in pc), memo)
                    npieces += 1
                    if lst is rlist:
                        tree_ids.add(pid)
                        if i == 0:
                            first.add(pid)
                    listing += self._entry(pid, pc[0][0], pc[-1][0])
            rounds = [1, npieces, len(rids) + len(pids)]
        top = _put(objs, bytes(listing), memo)
        tree_ids.add(top)
        first.add(top)
        sizes = [objs[r] for r in rids]
        return Encoded(top, objs, tree_ids, first, rounds,
                       {"ranges": len(rids), "packs": len(pids), "range_kib": sum(sizes) / len(sizes) / KiB,
                        "pack_kib": (sum(objs[p] for p in pids) / len(pids) / KiB) if pids else 0.0,
                        "top_kib": objs[top] / KiB})


# -- design 3: Git-like tree objects ----------------------------------------------------------


class GitTrees:
    """One object per directory (entries sorted by name, child ids); small files as blobs or inside it."""

    def __init__(self, name: str, inline: bool) -> None:
        self.name = name
        self.inline = inline

    def encode(self, tree: Tree, workspace: str, memo: dict[bytes, int] | None) -> Encoded:
        objs: dict[bytes, int] = {}
        children: dict[bytes, list[bytes]] = {}
        for p in tree:
            if p:
                children.setdefault(p.rpartition(b"/")[0], []).append(p)
        def depth(p: bytes) -> int:
            return p.count(b"/") + 1 if p else 0

        dirs = sorted((p for p, n in tree.items() if stat.S_ISDIR(n.mode)), key=depth, reverse=True)  # deepest first
        tid: dict[bytes, bytes] = {}
        blobs = set()
        level_count: dict[int, int] = {}
        for d in dirs:
            raw = bytearray()
            for p in sorted(children.get(d, ())):
                n = tree[p]
                raw += record(p.rpartition(b"/")[2], n, with_data=self.inline)
                if stat.S_ISDIR(n.mode):
                    raw += tid[p]
                elif n.data is not None and not self.inline:
                    blobs.add(_put(objs, n.data, memo))
            tid[d] = _put(objs, bytes(raw), memo)
            level_count[depth(d)] = level_count.get(depth(d), 0) + 1
        rounds = [level_count[i] for i in sorted(level_count)]
        if blobs:
            rounds.append(len(blobs))  # a directory's files can be fetched once it is known
        tree_ids = set(objs) - blobs
        return Encoded(tid[b""], objs, tree_ids, {tid[b""]}, rounds,
                       {"tree_objects": len(tree_ids), "blobs": len(blobs)})


# -- measurement ------------------------------------------------------------------------------


def designs(workdir: str) -> list:
    return [
        Format1(workdir),
        Format1(workdir, pieces=256 * KiB),
        # inline ranges: file records average ~9 KB raw here; ~3x compression
        Ranges("rng-inl-64K", RangeParams(96 * KiB, 12, 1 * MiB), None),
        Ranges("rng-inl-256K", RangeParams(384 * KiB, 48, 4 * MiB), None),
        # metadata-only ranges (~100 B records) + data packs
        Ranges("rng-pk-32K", RangeParams(32 * KiB, 256, 256 * KiB), RangeParams(48 * KiB, 6, 512 * KiB)),
        Ranges("rng-pk-64K", RangeParams(32 * KiB, 256, 256 * KiB), RangeParams(96 * KiB, 12, 1 * MiB)),
        Ranges("rng-pk-32K-2l", RangeParams(32 * KiB, 256, 256 * KiB), RangeParams(48 * KiB, 6, 512 * KiB), True),
        Ranges("rng-pk-64K-2l", RangeParams(32 * KiB, 256, 256 * KiB), RangeParams(96 * KiB, 12, 1 * MiB), True),
        Ranges("rng-pk-32K-2l-c", RangeParams(32 * KiB, 256, 256 * KiB), RangeParams(48 * KiB, 6, 512 * KiB), True,
               packs_by_content=True),
        Ranges("rng-pk-16K-2l-c", RangeParams(16 * KiB, 128, 128 * KiB), RangeParams(24 * KiB, 3, 256 * KiB), True,
               packs_by_content=True),
        Ranges("rng-pk-256K", RangeParams(32 * KiB, 256, 256 * KiB), RangeParams(384 * KiB, 48, 4 * MiB)),
        GitTrees("git-blob", inline=False),
        GitTrees("git-dir", inline=True),
    ]


def timed(fn: Callable[[], Encoded]) -> tuple[Encoded, float]:
    t = time.process_time()
    e = fn()
    return e, time.process_time() - t


def stat_walk(top: str) -> tuple[int, float]:
    """What a stat cache costs on an unchanged tree: lstat of every entry, keyed by (dev, ino, size, mtime, ctime)."""
    t = time.perf_counter()
    seen = {}
    stack = [top]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                s = e.stat(follow_symlinks=False)
                seen[e.path] = (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)
                if stat.S_ISDIR(s.st_mode):
                    stack.append(e.path)
    return len(seen), time.perf_counter() - t


class LeanGet:
    """GET with SigV4 signed here (one SHA-256 and one HMAC per request) over http.client, one connection per thread.

    What a GET could cost without botocore on the request path: a sketch for
    the measurement, not hardened (no retries, no time budget).
    """

    def __init__(self, endpoint: str, bucket: str, access: str, secret: str, region: str) -> None:
        import threading
        from urllib.parse import urlsplit

        u = urlsplit(endpoint)
        self.host, self.port, self.bucket = u.hostname, u.port, bucket
        self.hosthdr = f"{u.hostname}:{u.port}"
        self.access, self.secret, self.region = access, secret, region
        self._local = threading.local()
        self._keys: dict[str, bytes] = {}

    def _signing_key(self, day: str) -> bytes:
        import hmac

        k = self._keys.get(day)
        if k is None:
            k = ("AWS4" + self.secret).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), "sha256").digest()
            self._keys[day] = k
        return k

    def get(self, key: str) -> bytes:
        import hashlib
        import hmac
        import http.client
        from urllib.parse import quote

        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        now = time.gmtime()
        amzdate, day = time.strftime("%Y%m%dT%H%M%SZ", now), time.strftime("%Y%m%d", now)
        path = "/" + self.bucket + "/" + quote(key, safe="/~")
        canonical = (f"GET\n{path}\n\nhost:{self.hosthdr}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\n"
                     f"x-amz-date:{amzdate}\n\nhost;x-amz-content-sha256;x-amz-date\nUNSIGNED-PAYLOAD")
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amzdate}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        sig = hmac.new(self._signing_key(day), to_sign.encode(), "sha256").hexdigest()
        conn.request("GET", path, headers={
            "Host": self.hosthdr, "x-amz-date": amzdate, "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
            "Authorization": f"AWS4-HMAC-SHA256 Credential={self.access}/{scope}, "
                             f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {key}: HTTP {r.status} {data[:200]!r}")
        return data


def s3_fanout(rtts: list[float], total_mib: int, piece_kib: list[int], threads: list[int]) -> dict:
    """Wall and client CPU time of a cold fetch: one streamed GET of *total_mib* vs many parallel GETs of pieces.

    SeaweedFS on loopback (tests/support/s3server.py) behind bench/latency_proxy.py
    (a process of its own), read with the product's S3Store (botocore, its
    pool of 32 connections): what a format 2 cold hydration would pay per
    piece, without the decoding, against format 1's single manifest GET.
    """
    import concurrent.futures
    from pathlib import Path

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.join(os.path.dirname(here), "tests")]
    from latency_proxy import LatencyProxy

    from support.s3server import ACCESS_KEY, REGION, SECRET_KEY, seaweedfs_server, server_env
    from wsfs.store.s3 import S3Store

    rng = random.Random(1)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="wsfs-fanout-") as td, seaweedfs_server(Path(td)) as s3:
        os.environ.update(server_env(s3.endpoint_url))
        port = int(s3.endpoint_url.rsplit(":", 1)[1])
        direct = S3Store(s3.bucket, "fanout", endpoint_url=s3.endpoint_url)
        big = rng.randbytes(total_mib * MiB)
        direct.put("big", big)
        sets = {}
        for kib in piece_kib:
            n = total_mib * MiB // (kib * KiB)
            keys = [f"p{kib}/{i}" for i in range(n)]
            with concurrent.futures.ThreadPoolExecutor(16) as ex:
                piece = big[:kib * KiB]
                list(ex.map(lambda k, piece=piece: direct.put(k, piece), keys))
            sets[kib] = keys
        for rtt in rtts:
            with LatencyProxy(port, rtt) as proxy:
                store = S3Store(s3.bucket, "fanout", endpoint_url=f"http://127.0.0.1:{proxy.port}")
                store.get("big")  # connection set up, as a mount's record GET would
                t, c = time.perf_counter(), time.process_time()
                n = sum(len(p) for p in store.get_stream("big"))
                assert n == len(big)
                row = {"1 GET streamed": (time.perf_counter() - t, time.process_time() - c, 1)}
                for kib, keys in sets.items():
                    for th in threads:
                        with concurrent.futures.ThreadPoolExecutor(th) as ex:
                            list(ex.map(store.get, keys[:th]))  # warm the connections
                            t, c = time.perf_counter(), time.process_time()
                            got = sum(map(len, ex.map(store.get, keys)))
                            row[f"{len(keys)} GETs of {kib} KiB, {th} threads"] = (
                                time.perf_counter() - t, time.process_time() - c, len(keys))
                        assert got == len(keys) * kib * KiB
                    # The same GETs without botocore on the request path: URLs presigned by
                    # botocore (counted), bodies fetched with urllib3 on 32 threads.
                    import urllib3

                    pool = urllib3.PoolManager(maxsize=32)
                    client = store._client

                    def fetch(url: str, pool: urllib3.PoolManager = pool) -> bytes:
                        return pool.request("GET", url, preload_content=True).data

                    with concurrent.futures.ThreadPoolExecutor(32) as ex:
                        list(ex.map(fetch, [client.generate_presigned_url(
                            "get_object", Params={"Bucket": s3.bucket, "Key": store._key(k)}) for k in keys[:32]]))
                        t, c = time.perf_counter(), time.process_time()
                        urls = [client.generate_presigned_url(
                            "get_object", Params={"Bucket": s3.bucket, "Key": store._key(k)}) for k in keys]
                        got = sum(map(len, ex.map(fetch, urls)))
                        row[f"{len(keys)} GETs of {kib} KiB, presigned + urllib3, 32 threads"] = (
                            time.perf_counter() - t, time.process_time() - c, len(keys))
                    assert got == len(keys) * kib * KiB
                    lean = LeanGet(f"http://127.0.0.1:{proxy.port}", s3.bucket, ACCESS_KEY, SECRET_KEY, REGION)
                    with concurrent.futures.ThreadPoolExecutor(32) as ex:
                        list(ex.map(lean.get, [store._key(k) for k in keys[:32]]))
                        t, c = time.perf_counter(), time.process_time()
                        got = sum(map(len, ex.map(lean.get, [store._key(k) for k in keys])))
                        row[f"{len(keys)} GETs of {kib} KiB, own SigV4 + http.client, 32 threads"] = (
                            time.perf_counter() - t, time.process_time() - c, len(keys))
                    assert got == len(keys) * kib * KiB
                out[f"rtt {rtt:g} ms"] = row
                for k, (wall, cpu, _) in row.items():
                    print(f"rtt {rtt:g} ms  {k:62s} wall {wall:6.2f} s  client CPU {cpu:6.2f} s", flush=True)
    return out


def fmt_b(n: float) -> str:
    if n >= MiB:
        return f"{n / MiB:.2f} MiB"
    if n >= KiB:
        return f"{n / KiB:.1f} KiB"
    return f"{int(n)} B"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", help="a real tree to measure instead of a generated one")
    ap.add_argument("--files", type=int, default=20000, help="generated tree: about this many files")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", help="comma-separated design names")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--keep", metavar="DIR", help="generate the tree into DIR (once) and keep it, for runs in pieces")
    ap.add_argument("--report", nargs="+", metavar="JSON", help="only print the tables of these --json files, merged")
    ap.add_argument("--s3-fanout", action="store_true",
                    help="instead: time one streamed GET vs many parallel small GETs against SeaweedFS (+latency proxy)")
    ap.add_argument("--fanout-rtt", default="0,20", help="--s3-fanout: added RTTs in ms")
    ap.add_argument("--fanout-mb", type=int, default=56, help="--s3-fanout: total MiB")
    args = ap.parse_args()
    if args.s3_fanout:
        r = s3_fanout([float(x) for x in args.fanout_rtt.split(",")], args.fanout_mb, [24, 44], [16, 32])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(r, f, indent=1)
        return 0
    if args.report:
        merged: dict = {"designs": {}}
        for path in args.report:
            with open(path) as f:
                r = json.load(f)
            merged["designs"].update(r["designs"])
        print_table(merged)
        return 0

    work = tempfile.mkdtemp(prefix="wsfs-mdesign-")
    try:
        if args.tree:
            top = args.tree
        elif args.keep and os.path.isdir(os.path.join(args.keep, "tree")):
            top = os.path.join(args.keep, "tree")
        else:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from bench_push_checkout import TreeGen

            top = os.path.join(args.keep or work, "tree")
            os.makedirs(top)
            TreeGen(args.seed, 8 * MiB).generate(top, args.files)
        t = time.perf_counter()
        v0 = load_tree(top)
        load_s = time.perf_counter() - t
        n_walk, walk_s = stat_walk(top)
        n_walk, walk_s2 = stat_walk(top)
        nfiles = sum(1 for n in v0.values() if stat.S_ISREG(n.mode))
        ndirs = sum(1 for n in v0.values() if stat.S_ISDIR(n.mode))
        nbytes = sum(n.size for n in v0.values() if stat.S_ISREG(n.mode))
        print(f"tree: {top}: {nfiles} files, {ndirs} dirs, {len(v0) - nfiles - ndirs} other, {nbytes / 1e6:.1f} MB; "
              f"loaded in {load_s:.1f} s; lstat walk of {n_walk} entries: {walk_s:.2f} s, again {walk_s2:.2f} s")
        edits = {
            "1 file modified": edit_one(v0),
            "100 files modified": edit_spread(v0),
            "package added (50 files)": edit_add_package(v0),
            "nothing changed": dict(v0),
            "directory renamed": edit_rename_dir(v0),
        }
        moved = sorted(v0.keys() - edits["directory renamed"].keys())
        print(f"directory renamed: {moved[0].decode(errors='replace')} ({len(moved)} entries, "
              f"{sum(1 for p in moved if v0[p].data is not None)} small files)")
        results_cs = {label: len(changeset(v0, tree)) for label, tree in edits.items()}
        print("changeset objects (format 2, any design): " + ", ".join(f"{k}: {fmt_b(v)}" for k, v in results_cs.items()))
        hist_final = edit_spread(edit_one(v0))  # history A: v0 -> one -> +spread; history B: that tree alone
        chunks0 = chunk_objects(v0)
        results: dict = {"tree": {"path": top, "files": nfiles, "dirs": ndirs, "bytes": nbytes,
                                  "stat_walk_s": [walk_s, walk_s2]},
                         "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                                     "cpus": os.cpu_count()},
                         "changeset_bytes": results_cs, "designs": {}}
        only = set(args.only.split(",")) if args.only else None
        for d in designs(work):
            if only and d.name not in only:
                continue
            memo: dict[bytes, int] = {}
            global CAPTURE
            CAPTURE = {}
            e0, cold_s = timed(lambda d=d, memo=memo: d.encode(v0, "ws1", memo))
            dec_all, dec_tree, dec_first = (decode_cost(set(e0.objects)), decode_cost(e0.tree_objects),
                                            decode_cost(e0.first_ls))
            CAPTURE = None
            store = dict(e0.objects) | chunks0
            res: dict = {"cold": {
                "objects": len(e0.objects), "bytes": sum(e0.objects.values()),
                "tree_objects": len(e0.tree_objects), "tree_bytes": sum(e0.objects[o] for o in e0.tree_objects),
                "first_ls_bytes": sum(e0.objects[o] for o in e0.first_ls), "rounds": e0.rounds,
                "encode_s": cold_s, "decode_all_s": dec_all, "decode_tree_s": dec_tree, "decode_first_ls_s": dec_first,
                **e0.extra}, "edits": {}}
            for label, tree in edits.items():
                e, inc_s = timed(lambda d=d, tree=tree, memo=memo: d.encode(tree, "ws1", memo))
                new = {o: s for o, s in e.objects.items() if o not in store}
                newc = {o: s for o, s in chunk_objects(tree).items() if o not in store}
                dl = {o: s for o, s in e.objects.items() if o not in e0.objects}
                res["edits"][label] = {"put_objects": len(new) + len(newc) + 1, "put_bytes": sum(new.values()),
                                       "put_chunk_bytes": sum(newc.values()),
                                       "remount_gets": len(dl), "remount_bytes": sum(dl.values()),
                                       "encode_s": inc_s}
            # a second workspace pushes the same tree
            e, inc_s = timed(lambda d=d, memo=memo: d.encode(v0, "ws2", memo))
            new = {o: s for o, s in e.objects.items() if o not in store}
            dl = {o: s for o, s in e.objects.items() if o not in e0.objects}
            res["edits"]["second workspace, same tree"] = {
                "put_objects": len(new) + 1, "put_bytes": sum(new.values()), "put_chunk_bytes": 0,
                "remount_gets": len(dl), "remount_bytes": sum(dl.values()), "encode_s": inc_s}
            # determinism across histories: A = v0 -> one -> final (with memo), B = final alone (fresh)
            ea = d.encode(edit_one(v0), "ws1", memo)
            ea = d.encode(hist_final, "ws1", memo)
            eb = d.encode(hist_final, "ws1", None)
            same = ea.root == eb.root and set(ea.objects) == set(eb.objects)
            res["deterministic"] = same
            if not d.name.startswith("f1"):
                assert same, f"{d.name}: two histories gave different objects"
            results["designs"][d.name] = res
            c = res["cold"]
            print(f"\n## {d.name}: cold v0 {c['objects']} objects, {fmt_b(c['bytes'])} "
                  f"(tree part {c['tree_objects']} objects, {fmt_b(c['tree_bytes'])}; first ls {fmt_b(c['first_ls_bytes'])}); "
                  f"rounds {c['rounds'][:8]}{'...' if len(c['rounds']) > 8 else ''}; encode {cold_s:.2f} s; "
                  f"{ {k: round(v, 1) for k, v in e0.extra.items()} }; deterministic: {same}")
            for label, r in res["edits"].items():
                print(f"  {label:30s} PUT {r['put_objects']:5d} objs {fmt_b(r['put_bytes']):>11s}"
                      f" (+chunks {fmt_b(r['put_chunk_bytes'])}) | re-mount {r['remount_gets']:5d} GETs "
                      f"{fmt_b(r['remount_bytes']):>11s} | encode {r['encode_s']:.2f} s")
            sys.stdout.flush()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        print_table(results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(results: dict) -> None:
    """The decision record's tables, in Markdown."""
    ds = results["designs"]
    labels = list(next(iter(ds.values()))["edits"]) if ds else []
    print("\n| design | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for name, res in ds.items():
        cells = [f"{fmt_b(r['put_bytes'])} / {r['put_objects']}" for r in res["edits"].values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n(re-mount download from v0: bytes / GETs)\n\n| design | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for name, res in ds.items():
        cells = [f"{fmt_b(r['remount_bytes'])} / {r['remount_gets']}" for r in res["edits"].values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n| design | cold objects | cold bytes | tree part (objects, bytes) | first ls bytes | rounds | widest round"
          " | decode+verify all / tree / first ls (s) | encode full (s) | encode 1-file edit, parent's pieces known (s)"
          " | same objects across histories |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, res in ds.items():
        c = res["cold"]
        print(f"| {name} | {c['objects']} | {fmt_b(c['bytes'])} | {c['tree_objects']}, {fmt_b(c['tree_bytes'])} | "
              f"{fmt_b(c['first_ls_bytes'])} | {len(c['rounds'])} | {max(c['rounds'])} | "
              f"{c['decode_all_s']:.2f} / {c['decode_tree_s']:.2f} / {c['decode_first_ls_s']:.3f} | {c['encode_s']:.2f} | "
              f"{res['edits']['1 file modified']['encode_s']:.2f} | {'yes' if res['deterministic'] else 'no'} |")


if __name__ == "__main__":
    sys.exit(main())
