"""What a version references in the store: every object a reader of it may need (fsck checks them, gc keeps them).

A format 2 version references its top, its listing pieces, its ranges, its
changeset, its pack map (``packmaps/<top>``), each pack where the map places
it (a segment, or a blob of its own) and every chunk of its large files; a
format 1 version its manifest and its chunks.  The pieces are read through
:meth:`Repository.get_piece` (verified; a local copy is hashed again), so a
version whose metadata is damaged raises ``IntegrityError`` part-way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from wsfs.format import tree
from wsfs.format.blobs import parse_hexid
from wsfs.format.records import VersionRecord
from wsfs.repository import Repository, blob_key, manifest_key, pack_map_key, segment_key
from wsfs.terminal import escape

PIECES = ("top", "listing piece", "range", "changeset")  # kinds of metadata pieces (blobs of their own)


class Object(NamedTuple):
    """One object a version references (several packs may share one segment's key)."""

    key: str  # where it is in the store
    kind: str  # one of PIECES, "pack map", "pack", "chunk", "manifest"
    cid: bytes | None  # its content id (None: the pack map, whose key is its top's id)
    size: int  # plaintext bytes (0 where unknown: the pack map)
    where: str  # a path that uses it, for messages ("ws@n: path")
    place: tree.Place | None = None  # a pack: where it is stored
    contents: tuple[tuple[bytes, int], ...] = ()  # a pack: its files' distinct contents, in stored order


def path_text(key: bytes) -> str:
    """A key as a path for a message (any byte shown, never raw control characters)."""
    return escape(tree.path_of(key).decode("utf-8", "backslashreplace") or "/")


def version_objects(repo: Repository, record: VersionRecord) -> Iterator[Object]:
    """Every object *record*'s version references; pieces first, then packs and chunks."""
    where = f"{record.workspace}@{record.version}"
    if record.format != 2:
        yield Object(manifest_key(parse_hexid(record.manifest)), "manifest", parse_hexid(record.manifest),
                     record.manifest_size, where)
        with repo.open_manifest(record) as m:
            for cid, size in m.chunk_sizes().items():
                yield Object(blob_key(cid), "chunk", cid, size, f"{where}: a large file")
        return
    top_id = parse_hexid(record.manifest)
    yield Object(blob_key(top_id), "top", top_id, record.manifest_size, where)
    top = tree.decode_top(repo.get_piece(top_id, record.manifest_size, "top"))
    for ref in top.ranges + top.packs:
        yield Object(blob_key(ref.id), "listing piece", ref.id, ref.size, where)
    if record.changeset is not None:
        cs = parse_hexid(record.changeset)
        yield Object(blob_key(cs), "changeset", cs, record.changeset_size, where)
    ranges, packs = repo.version_refs(record)
    entries: list[tree.Entry] = []
    for ref, run in zip(ranges, repo.version_ranges(ranges), strict=True):
        yield Object(blob_key(ref.id), "range", ref.id, ref.size, f"{where}: {path_text(ref.first)}")
        entries.extend(run)
    if packs:
        yield Object(pack_map_key(top_id), "pack map", None, 0, where)
    grouped = list(tree.pack_contents(entries, packs, repo.config.layout))
    layout = repo.config.layout
    if len(grouped) != len(packs) or sum(r.count for r in packs) != sum(tree.packed(e, layout) for e in entries):
        from wsfs.errors import IntegrityError

        raise IntegrityError(f"{where}: its {len(packs)} packs do not hold its small files")
    for (ref, contents), place in zip(grouped, repo.pack_places(record, len(packs)), strict=True):
        key = segment_key(place.segment) if place.segment is not None else blob_key(ref.id)
        yield Object(key, "pack", ref.id, ref.size, f"{where}: {path_text(ref.first)} (pack)", place, tuple(contents))
    cs = repo.config.chunk_size
    for e in entries:
        for i, c in enumerate(e.chunks):
            if c != tree.ZERO_ID:
                yield Object(blob_key(c), "chunk", c, min(cs, e.size - i * cs), f"{where}: {path_text(e.key)}")
