"""The local index of a format 2 version: its entries as a manifest database on this host.

Format 2 stores a version as ranges of records and packs of small files
(:mod:`wsfs.format.tree`).  Readers (mount, history mounts, checkout, cat,
ls, diff) need point and range queries by inode and by (directory, name);
rather than a second reader for every one of them, the host that first uses
a version writes its entries into the same SQLite schema as a format 1
manifest (``wsfs.format.manifest``), plus where each small file's bytes are
(a pack and an offset).  The index is built from verified pieces, streamed
range by range (memory: one range plus one ``path -> inode`` entry per
directory), and checked here for what ranges alone cannot show: keys
strictly increasing across ranges, the root first, every entry's parent a
directory, hard links naming a file, packs covering exactly the packed files
with the sizes their references declare.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from wsfs.errors import IntegrityError
from wsfs.format.manifest import ROOT_INO, ManifestBuilder
from wsfs.format.tree import STANDALONE, ZERO_ID, Entry, Layout, Place, Ref, packed

# st_blocks are not stored in format 2: a regular file's are its data (chunks of
# zeros left out) rounded up to this, in 512-byte units, what ext4 and tmpfs
# allocate for it, so that ``du`` on a mount agrees with the source tree.
ALLOC_UNIT = 4096

# What an index holds, as this code builds it (its meta "index_version"): an
# index built by other code (say, before st_blocks were rounded to ALLOC_UNIT)
# is rebuilt rather than read.  3: packs carry where they are stored (segment, offset, length).
INDEX_VERSION = 3


class IndexObserver(Protocol):
    """Sees the rows of an index as :func:`build_index` writes them, range by range, in key order (its thread).

    *inodes*: ``(ino, mode, uid, gid, size, blocks, mtime_ns, nlink, rdev, target, content, pack, pack_offset)``
    as written (the root's first; a directory's ``nlink`` is 2 here and ``2 + its subdirectories`` in the
    finished index, a file with further names gets its count only at the end); *dentries*: ``(parent, name,
    ino)`` in the order written, so the n-th dentry ever given is row n (the readdir cursor); *xattrs*:
    ``(ino, {name: value})``; *dirs*: ``(ino, path)`` of the directories among *inodes*; *linked*: inodes of
    files with further names; *last*: the last key written (every key up to it has been given).
    """

    def rows(
        self, inodes: list[tuple[Any, ...]], dentries: list[tuple[int, bytes, int]],
        xattrs: list[tuple[int, dict[bytes, bytes]]], dirs: list[tuple[int, bytes]], linked: list[int], last: bytes,
    ) -> None: ...


class _Packs:
    """Assigns packed files, in key order, to the packs their references list (taken as needed)."""

    def __init__(self, b: ManifestBuilder, refs: Iterable[Ref], places: Callable[[int], list[Place]] | None) -> None:
        self.b = b
        self.refs = iter(refs)
        self._get_places = places
        self.ref: Ref | None = None
        self.row = 0
        self.left = 0
        self.offsets: dict[bytes, int] = {}
        self.end = 0
        self.rows: list[tuple[int, bytes, int]] = []  # (row, id, size); written with their places by finish()

    def place(self, e: Entry) -> tuple[int, int]:
        if self.left == 0:
            self.ref = next(self.refs, None)
            if self.ref is None:
                raise IntegrityError(f"{e.path!r} is a small file in no pack")
            if self.ref.first != e.key:
                raise IntegrityError(f"a pack's first key is not that of {e.path!r}")
            self.row += 1
            self.rows.append((self.row, self.ref.id, self.ref.size))
            self.left, self.offsets, self.end = self.ref.count, {}, 0
        assert self.ref is not None and e.content is not None
        off = self.offsets.get(e.content)
        if off is None:
            off = self.offsets[e.content] = self.end
            self.end += e.size
        self.left -= 1
        if self.left == 0 and (self.ref.last != e.key or self.end != self.ref.size):
            raise IntegrityError(f"a pack's reference does not match its files (ending at {e.path!r})")
        return self.row, off

    def finish(self) -> None:
        if self.left or next(self.refs, None) is not None:
            raise IntegrityError("packs are listed for files that do not exist")
        n = len(self.rows)
        # Where the packs are stored (the pack map), asked for last: nothing before needs it.
        places = self._get_places(n) if self._get_places is not None else [STANDALONE] * n
        if len(places) != n:
            raise IntegrityError(f"the pack map places {len(places)} packs, the version has {n}")
        rows = []
        for (row, cid, size), where in zip(self.rows, places, strict=True):
            if where.length > size + size // 64 + 1024:
                # An encoded pack is its codec byte plus at most about its plaintext: a map claiming more would
                # only make readers download bytes that cannot verify.
                raise IntegrityError(f"the pack map gives pack {cid.hex()} {where.length} stored bytes "
                                     f"for {size} of content")
            rows.append((row, cid, size, where.segment, where.offset, where.length))
        self.b.add_packs(rows)


def build_index(
    path: str, ranges: Iterable[list[Entry]], pack_refs: Iterable[Ref], layout: Layout, meta: dict[str, object],
    places: Callable[[int], list[Place]] | None = None, observer: IndexObserver | None = None,
) -> None:
    """Write the index of the version whose ranges (in order) yield *ranges* to *path*.

    *pack_refs* are taken as the packed files need them (an iterator may still be fetching the later
    ones).  *places(n)* returns where each of the *n* packs is stored (its pack map), in the order of
    *pack_refs*; called once every entry is placed.  Default: blobs of their own.  *observer* sees the
    rows as they are written (:class:`IndexObserver`).
    """
    b = ManifestBuilder(path, chunk_size=layout.chunk_size, index=True)
    try:
        _fill(b, ranges, pack_refs, layout, places, observer)
        b.finish(dict(meta, index_version=INDEX_VERSION))
    except BaseException:
        b.abort()
        raise


_BATCH = 4096  # rows handed to SQLite at once (memory stays bounded whatever the tree's size)


def _fill(
    b: ManifestBuilder, ranges: Iterable[list[Entry]], pack_refs: Iterable[Ref], layout: Layout,
    places: Callable[[int], list[Place]] | None, observer: IndexObserver | None = None,
) -> None:
    cs = layout.chunk_size
    dirs: dict[bytes, int] = {}  # directory path -> inode
    subdirs: dict[int, int] = {}
    linked: dict[bytes, int] = {}  # key of a file with further names -> inode
    nlinks: dict[int, int] = {}
    packs = _Packs(b, pack_refs, places)
    prev: bytes | None = None
    inodes: list[tuple] = []
    chunks: list[tuple[int, int, bytes | None, int]] = []
    dentries: list[tuple[int, bytes, int]] = []
    watch = observer is not None
    o_inodes: list[tuple[Any, ...]] = []  # this range's rows, for the observer
    o_dentries: list[tuple[int, bytes, int]] = []
    o_xattrs: list[tuple[int, dict[bytes, bytes]]] = []
    o_dirs: list[tuple[int, bytes]] = []
    o_linked: list[int] = []
    for entries in ranges:
        for e in entries:
            key = e.key
            if prev is None:
                if key != b"" or not stat.S_ISDIR(e.mode):
                    raise IntegrityError("the first entry of a version is not its root directory")
                ino = b.add_node(e.mode, e.uid, e.gid, e.size, (e.size + 511) // 512, e.mtime_ns, nlink=2)
                assert ino == ROOT_INO
                if e.xattrs:
                    b.add_xattrs(ino, dict(e.xattrs))
                if watch:
                    o_inodes.append((ino, e.mode, e.uid, e.gid, e.size, (e.size + 511) // 512, e.mtime_ns, 2, 0,
                                     None, None, None, None))
                    o_dirs.append((ino, b""))
                    if e.xattrs:
                        o_xattrs.append((ino, dict(e.xattrs)))
                dirs[b""] = ino
                subdirs[ino] = 0
                prev = key
                continue
            if not key > prev:
                raise IntegrityError("keys of a version are not strictly increasing across its ranges")
            prev = key
            parent_path, _, name = key.partition(b"\0")
            parent = dirs.get(parent_path)
            if parent is None:
                raise IntegrityError(f"{e.path!r} has no parent directory")
            if e.link is not None:
                ino = linked.get(e.link)
                if ino is None:
                    raise IntegrityError(f"{e.path!r} is a hard link to no file")
                nlinks[ino] += 1
                dentries.append((parent, name, ino))
                if watch:
                    o_dentries.append((parent, name, ino))
                continue
            fmt = stat.S_IFMT(e.mode)
            ino = b.new_ino()
            pack = offset = None
            if fmt == stat.S_IFREG:
                if e.chunks:
                    data = sum(min(cs, e.size - i * cs) for i, c in enumerate(e.chunks) if c != ZERO_ID)
                    chunks.extend(
                        (ino, i, None if c == ZERO_ID else c, min(cs, e.size - i * cs)) for i, c in enumerate(e.chunks)
                    )
                else:
                    data = e.size
                    if packed(e, layout):
                        pack, offset = packs.place(e)
                blocks = -(-data // ALLOC_UNIT) * (ALLOC_UNIT // 512)
            else:
                blocks = (e.size + 511) // 512 if fmt == stat.S_IFDIR else 0
            row = (
                ino, e.mode, e.uid, e.gid, e.size, blocks, e.mtime_ns, 2 if fmt == stat.S_IFDIR else 1,
                e.rdev, e.target, e.content, pack, offset,
            )
            inodes.append(row)
            dentries.append((parent, name, ino))
            if e.xattrs:
                b.add_xattrs(ino, dict(e.xattrs))
            if watch:
                o_inodes.append(row)
                o_dentries.append((parent, name, ino))
                if e.xattrs:
                    o_xattrs.append((ino, dict(e.xattrs)))
                if fmt == stat.S_IFDIR:
                    o_dirs.append((ino, e.path))
                if e.linked:
                    o_linked.append(ino)
            if fmt == stat.S_IFDIR:
                dirs[e.path] = ino
                subdirs[ino] = 0
                subdirs[parent] += 1
            if e.linked:
                linked[key] = ino
                nlinks[ino] = 1
            if len(inodes) >= _BATCH or len(chunks) >= _BATCH:
                b.add_rows(inodes, chunks, dentries)
                inodes, chunks, dentries = [], [], []
        if watch and prev is not None:
            assert observer is not None
            observer.rows(o_inodes, o_dentries, o_xattrs, o_dirs, o_linked, prev)
            o_inodes, o_dentries, o_xattrs, o_dirs, o_linked = [], [], [], [], []
    if prev is None:
        raise IntegrityError("a version without entries")
    b.add_rows(inodes, chunks, dentries)
    packs.finish()
    b.set_nlinks([(2 + n, ino) for ino, n in subdirs.items() if n] + [(n, ino) for ino, n in nlinks.items() if n != 1])
