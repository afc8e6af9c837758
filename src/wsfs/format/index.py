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


class _Packs:
    """Assigns packed files, in key order, to the packs their references list."""

    def __init__(self, b: ManifestBuilder, refs: list[Ref], places: Callable[[], list[Place]] | None) -> None:
        self.b = b
        self.refs = iter(refs)
        self.n = len(refs)
        self._get_places = places
        self.places: list[Place] | None = None
        self.ref: Ref | None = None
        self.row = 0
        self.left = 0
        self.offsets: dict[bytes, int] = {}
        self.end = 0
        self.rows: list[tuple[int, bytes, int, bytes | None, int, int]] = []  # written by finish()

    def place(self, e: Entry) -> tuple[int, int]:
        if self.left == 0:
            self.ref = next(self.refs, None)
            if self.ref is None:
                raise IntegrityError(f"{e.path!r} is a small file in no pack")
            if self.ref.first != e.key:
                raise IntegrityError(f"a pack's first key is not that of {e.path!r}")
            self.row += 1
            if self.places is None:  # on first use: the caller may still be fetching the map
                self.places = self._get_places() if self._get_places is not None else [STANDALONE] * self.n
                if len(self.places) != self.n:
                    raise IntegrityError(f"the pack map places {len(self.places)} packs, the version has {self.n}")
            where = self.places[self.row - 1]
            if where.length > self.ref.size + self.ref.size // 64 + 1024:
                # An encoded pack is its codec byte plus at most about its plaintext: a map claiming more would
                # only make readers download bytes that cannot verify.
                raise IntegrityError(f"the pack map gives pack {self.ref.id.hex()} {where.length} stored bytes "
                                     f"for {self.ref.size} of content")
            self.rows.append((self.row, self.ref.id, self.ref.size, where.segment, where.offset, where.length))
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
        self.b.add_packs(self.rows)


def build_index(
    path: str, ranges: Iterable[list[Entry]], pack_refs: list[Ref], layout: Layout, meta: dict[str, object],
    places: Callable[[], list[Place]] | None = None,
) -> None:
    """Write the index of the version whose ranges (in order) yield *ranges* to *path*.

    *places* returns where each pack is stored (its pack map), in the order of *pack_refs*; called when
    the first packed file is placed.  Default: blobs of their own.
    """
    b = ManifestBuilder(path, chunk_size=layout.chunk_size, index=True)
    try:
        _fill(b, ranges, pack_refs, layout, places)
        b.finish(dict(meta, index_version=INDEX_VERSION))
    except BaseException:
        b.abort()
        raise


_BATCH = 4096  # rows handed to SQLite at once (memory stays bounded whatever the tree's size)


def _fill(
    b: ManifestBuilder, ranges: Iterable[list[Entry]], pack_refs: list[Ref], layout: Layout,
    places: Callable[[], list[Place]] | None,
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
            inodes.append((
                ino, e.mode, e.uid, e.gid, e.size, blocks, e.mtime_ns, 2 if fmt == stat.S_IFDIR else 1,
                e.rdev, e.target, e.content, pack, offset,
            ))
            dentries.append((parent, name, ino))
            if e.xattrs:
                b.add_xattrs(ino, dict(e.xattrs))
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
    if prev is None:
        raise IntegrityError("a version without entries")
    b.add_rows(inodes, chunks, dentries)
    packs.finish()
    b.set_nlinks([(2 + n, ino) for ino, n in subdirs.items() if n] + [(n, ino) for ino, n in nlinks.items() if n != 1])
