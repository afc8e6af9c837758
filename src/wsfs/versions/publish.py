"""What every writer of a format 2 version shares: the parent's reuse, storing the pieces, the record.

:func:`wsfs.versions.push.push` (a directory) and :func:`wsfs.versions.commit.commit`
(a write layer) both turn a sorted list of entries into a version the same
way, so the same tree gives the same pieces whichever wrote it:

* :class:`Parent`: what the version published on top of offers for reuse
  (pieces and chunks known stored, pack signatures and places, record
  bodies, ranges), loaded from its top (or, for a push, from what the
  previous push of this host kept: :meth:`Parent.save`);
* :func:`store_tree`: encode the entries (reusing the parent's record
  bodies, ranges and packs), compute the changeset against the parent,
  and store every piece not stored yet (children before parents,
  ``Repository.put_pieces``);
* :func:`version_record`: the record to create, last, with a conditional put.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from wsfs.errors import FormatError, IntegrityError, NotFound
from wsfs.format.blobs import content_id, encode_blob
from wsfs.format.records import VersionRecord
from wsfs.format.tree import (
    STANDALONE,
    ZERO_ID,
    Entry,
    Layout,
    PackPlan,
    Piece,
    Place,
    Ref,
    build_version,
    changes,
    decode_top,
    encode_body,
    encode_changeset,
    pack_signatures,
    with_link_names,
)
from wsfs.repository import Repository
from wsfs.versions.sealed import seal, unseal

log = logging.getLogger(__name__)


@dataclass
class Parent:
    """What a push reuses from the parent version: ids known stored, pack signatures, records."""

    top: bytes = bytes(32)
    pieces: set[bytes] = field(default_factory=set)  # ranges, listings, packs: stored
    chunks: set[bytes] = field(default_factory=set)  # chunks: stored
    packs: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)
    places: dict[bytes, Place] = field(default_factory=dict)  # where the parent's packs are stored
    bodies: list[tuple[bytes, bytes]] | None = None  # (key, record) of each entry, for the changeset
    ranges: dict[bytes, tuple[Ref, list[bytes], list[bytes]]] = field(default_factory=dict)  # see build_version
    pack_refs: list[Ref] = field(default_factory=list)  # the parent's packs, in order
    kept: bool = False  # taken from the local state of :meth:`save` (not decoded)
    # The tree, in key order (an unchanged tree is recognised by it); of a kept parent, as plain tuples.
    entries: Sequence[tuple] | None = None
    top_size: int = 0  # the size of the top piece (the record's manifest_size)
    _records: dict[bytes, tuple[Entry, bytes]] | None = field(default=None, repr=False)

    @property
    def records(self) -> dict[bytes, tuple[Entry, bytes]]:
        """Each entry and its record body, by key: made from ``entries`` and ``bodies`` when first asked for
        (an unchanged push never asks)."""
        if self._records is None:
            if self.entries is None or self.bodies is None:
                self._records = {}
            else:
                self._records = {kb[0]: (e if type(e) is Entry else Entry._make(e), kb[1])
                                 for e, kb in zip(self.entries, self.bodies, strict=True)}
        return self._records

    def body(self, e: Entry, layout: Layout, encoded: bytes | None = None) -> bytes:
        """The record body of *e*: the parent's bytes if the parent has the same entry, else *encoded*
        (``encode_body(e, layout)``, if the caller has it) or encoded now."""
        hit = self.records.get(e.key)
        if hit is not None and hit[0] == e:
            return hit[1]
        return encoded if encoded is not None else encode_body(e, layout)

    @classmethod
    def load(cls, repo: Repository, workspace: str, n: int | None, *, saved: str | None = None) -> Parent:
        """Version *n* of *workspace* as a parent (empty if None or unreadable).  *saved*: a local state file
        of :meth:`save` to take it from, if it holds that version's tree, instead of decoding its ranges."""
        if n is None:
            return cls()
        try:
            record = repo.record(workspace, n)
            if record.format == 1:
                # Only chunks carry over (a changeset against format 1 is not written).
                with repo.open_manifest(record) as pm:
                    return cls(chunks=pm.chunk_ids())
            raw = repo.local_state(saved) if saved is not None else None
            if raw is not None:
                got = _decode_saved(raw, bytes.fromhex(record.manifest), record.manifest_size)
                if got is not None:
                    # Where the packs are stored is the one thing the top does not fix (two pushes of one tree
                    # may store its packs in different segments): from the version's pack map, as below.
                    got.places = dict(zip((r.id for r in got.pack_refs),
                                          repo.pack_places(record, len(got.pack_refs)), strict=True))
                    return got
            ranges, packs = repo.version_refs(record)
            layout = repo.config.layout
            out = cls(top=bytes.fromhex(record.manifest), bodies=[], top_size=record.manifest_size)
            top = decode_top(repo.get_piece(out.top, record.manifest_size, "top"))
            out.pieces.add(out.top)
            out.pieces.update(r.id for r in top.ranges + top.packs)
            entries: list[Entry] = []
            assert out.bodies is not None
            for ref, (run, bodies) in zip(ranges, repo.version_range_bodies(ranges), strict=True):
                keys = [e.key for e in run]
                out.ranges[ref.first] = (ref, keys, bodies)
                out.bodies.extend(zip(keys, bodies, strict=True))
                entries.extend(run)
            for e in entries:
                if e.chunks:
                    out.chunks.update(c for c in e.chunks if c != ZERO_ID)
            out.pieces.update(r.id for r in ranges)
            out.pieces.update(r.id for r in packs)
            out.packs = pack_signatures(entries, packs, layout)
            out.pack_refs = packs
            out.entries = entries
            out.places = dict(zip((r.id for r in packs), repo.pack_places(record, len(packs)), strict=True))
            return out
        except (NotFound, IntegrityError, FormatError) as e:
            # A parent that cannot be read costs this push its reuse and its changeset, nothing else.
            log.warning("not reusing %s@%d: %s", workspace, n, e)
            return cls()

    def save(self, repo: Repository, name: str) -> None:
        """Keep this parent in local state file *name* (private, atomic) for :meth:`load`; a failure is logged."""
        try:
            repo.save_local_state(name, _encode_saved(self))
        except OSError as e:
            log.warning("the version just published is not kept for the next push (it will decode it): %s",
                        e.strerror or e)


# A parent kept in local state (``Parent.save``): what ``Parent.load`` derives from the version's pieces
# (all of it fixed by the version's top, which the file names; the packs' places are not kept, see load),
# ~0.7 s of decoding for 30,000 files, in a form that loads in a few hundredths of a second: its entries
# (with which the next push recognises an unchanged tree, and reuses the record body of an unchanged entry),
# their record bodies, the ranges, packs and ids known stored, and the top's size.  Sealed
# (wsfs.versions.sealed: a torn or damaged file is ignored), and used only for the version whose top and
# top size it names (the record's manifest size is the store's word: it must be what this host published).
_SAVED_MAGIC = b"WSPA4\n"
_SAVED_MAX = 1 << 31  # decompressed size limit


def _encode_saved(p: Parent) -> bytes:
    assert p.bodies is not None and p.entries is not None
    return seal(_SAVED_MAGIC, (
        p.top, p.top_size, list(p.pieces), list(p.chunks),
        [(sig, pid, size) for sig, (pid, size) in p.packs.items()],
        [tuple(r) for r in p.pack_refs],
        [tuple(e) for e in p.entries], [b for _, b in p.bodies],
        [tuple(ref) for ref, _, _ in p.ranges.values()],
    ))


def _decode_saved(raw: bytes, top: bytes, top_size: int) -> Parent | None:
    """The parent kept in *raw* if it is whole and holds the tree whose top is *top* of *top_size* bytes,
    else None."""
    if not raw.startswith(_SAVED_MAGIC):
        return None  # (another version's format)
    try:
        saved_top, saved_size, pieces, chunks, packs, pack_refs, rows, bodies, ranges = unseal(  # type: ignore[misc]
            _SAVED_MAGIC, raw, _SAVED_MAX)
        if (saved_top, saved_size) != (top, top_size):
            return None
        width = len(Entry._fields)
        if not all(type(r) is tuple and len(r) == width for r in rows):
            raise ValueError("not entries")
        keys = [e[0] for e in rows]
        out = Parent(top=top, pieces=set(pieces), chunks=set(chunks), bodies=list(zip(keys, bodies, strict=True)),
                     kept=True, entries=rows, top_size=top_size)
        out.packs = {sig: (pid, size) for sig, pid, size in packs}
        out.pack_refs = [Ref(*r) for r in pack_refs]
        out.ranges = _ranges(map(Ref._make, ranges), keys, bodies)
        return out
    except (ValueError, TypeError) as e:
        log.warning("ignoring the kept parent version (decoding it instead): %s", e)
        return None


@dataclass
class Stored:
    """A tree whose pieces are stored: what its record names, and what storing it cost."""

    top_id: bytes
    top_size: int
    changeset: bytes | None  # None: no parent to compare with (first version, format 1 parent), or the same tree
    changed: int | None  # entries in the changeset (0: the parent's tree; None: no parent)
    objects: int  # objects written (blobs, segments, the pack map)
    bytes: int  # bytes written
    reused: int  # pieces that were stored already
    new_packs: dict[bytes, bytes] = field(default_factory=dict)  # id -> plaintext of each pack this tree built
    phases: dict[str, float] = field(default_factory=dict)  # "build" (encoding, packs), "upload" seconds
    successor: Parent | None = None  # (store_tree(successor=True)) this tree as the parent of the next version


def store_tree(
    repo: Repository, parent: Parent, entries: Sequence[Entry], bodies: Sequence[bytes] | None,
    pack_bytes: Callable[[PackPlan], bytes], workers: int, *, check: bool = True, successor: bool = False,
    progress: Callable[[int, int], None] | None = None, plans: Sequence[tuple[PackPlan, bytes]] | None = None,
) -> Stored:
    """Encode *entries* (sorted by key, root first) as a version over *parent* and store what is missing.

    *bodies* are the entries' record bodies if the caller has them (default:
    the parent's bytes for an unchanged entry, else encoded); *pack_bytes*
    returns the bytes of a pack the parent does not have.  *check* False:
    no HEAD before a PUT (``Repository.put_pieces``).  *successor*: also
    return this tree as a :class:`Parent` (what ``Parent.load`` would give
    once it is published), so that the next commit of this process does not
    decode it again.
    *progress(done, total)*: objects written.  *plans*:
    the packs as cut already, with their signatures (see ``build_version``).

    Entries equal to the parent's (an unchanged tree) are the parent's tree: its pieces are stored (the
    parent is published) and nothing is encoded again.
    """
    t0 = time.monotonic()
    if parent.entries is not None and parent.top_size and entries == parent.entries:
        return Stored(parent.top, parent.top_size, None, 0, 0, 0, len(parent.pieces),
                      phases={"build": time.monotonic() - t0}, successor=parent if successor else None)
    layout = repo.config.layout
    if bodies is None:
        bodies = [parent.body(e, layout) for e in entries]
    pack_ids: list[bytes] = []
    refs: tuple[list[Ref], list[Ref], list[bytes]] = ([], [], [])
    # Packs are compressed in a pool of their own, one thread per CPU.  Unless asked first (check: a tree
    # some workspace has stores nothing), each new pack is compressed as soon as it is built, while the
    # ranges are encoded: the compression, a whole-tree commit's longest step, starts before the uploads do.
    cpu = ThreadPoolExecutor(max_workers=_cpus(), thread_name_prefix="wsfs-zstd")
    encoded: dict[bytes, Future[bytes]] = {}

    def compress(pid: bytes, data: bytes) -> None:
        if pid not in encoded:
            encoded[pid] = cpu.submit(encode_blob, data)

    def encoding(pid: bytes, data: bytes) -> Future[bytes]:
        """(put_pieces) The pack's compression, started now if not yet; let go of here once taken."""
        return encoded.pop(pid, None) or cpu.submit(encode_blob, data)

    try:
        top_id, top, pieces = build_version(
            entries, layout, repo.config.cuts, known=parent.pieces.__contains__,
            known_packs=parent.packs, pack_bytes=pack_bytes, bodies=bodies, known_ranges=parent.ranges,
            pack_ids=pack_ids, refs_out=refs, plans=plans, on_pack=None if check else compress,
        )
        changeset = None
        changed = None
        if parent.bodies is not None and top_id == parent.top:
            changed = 0
        elif parent.bodies is not None:
            items = list(changes(parent.bodies, zip((e.key for e in entries), bodies, strict=True)))
            links = ((e.key, e.link, body) for e, body in zip(entries, bodies, strict=True) if e.link is not None)
            items = with_link_names(items, links)
            changed = len(items)
            changeset = encode_changeset(parent.top, items)
            pieces.append(Piece(content_id(changeset), changeset))
        pieces.append(Piece(top_id, None if top_id in parent.pieces else top))
        t1 = time.monotonic()
        places: dict[bytes, Place] = {}
        n_up, b_up, pieces_up = repo.put_pieces(pieces, workers, packs=pack_ids, places=parent.places, check=check,
                                                places_out=places, progress=progress, encoding=encoding)
    finally:
        cpu.shutdown(wait=True, cancel_futures=True)
    ids = set(pack_ids)
    new_packs = {p.id: p.data for p in pieces if p.id in ids and p.data is not None}
    t2 = time.monotonic()
    nxt = _successor(top_id, len(top), entries, bodies, pieces, refs, places) if successor else None
    return Stored(top_id, len(top), changeset, changed, n_up, b_up, len(pieces) - pieces_up, new_packs,
                  {"build": t1 - t0, "upload": t2 - t1, "successor": time.monotonic() - t2}, nxt)


def _cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _ranges(refs: Iterable[Ref], keys: list[bytes], bodies: Sequence[bytes]) -> dict[bytes, tuple[Ref, list[bytes], list[bytes]]]:
    """``Parent.ranges`` of a tree: each range's reference, keys and record bodies, by its first key, from
    the tree's keys and bodies in order (ValueError if the ranges do not hold exactly those entries)."""
    out = {}
    i = 0
    for ref in refs:
        j = i + ref.count
        out[ref.first] = (ref, keys[i:j], list(bodies[i:j]))
        i = j
    if i != len(keys):
        raise ValueError("ranges and entries disagree")
    return out


def _successor(top_id: bytes, top_size: int, entries: Sequence[Entry], bodies: Sequence[bytes], pieces: list[Piece],
               refs: tuple[list[Ref], list[Ref], list[bytes]], places: dict[bytes, Place]) -> Parent:
    """The tree just stored as a :class:`Parent`, from what storing it computed (no piece decoded)."""
    keys = [e.key for e in entries]
    out = Parent(top=top_id, bodies=list(zip(keys, bodies, strict=True)), entries=list(entries), top_size=top_size)
    out.pieces = {p.id for p in pieces}
    out.chunks = {c for e in entries if e.chunks for c in e.chunks if c != ZERO_ID}
    out.ranges = _ranges(refs[0], keys, bodies)
    out.pack_refs = list(refs[1])
    out.packs = {sig: (r.id, r.size) for sig, r in zip(refs[2], out.pack_refs, strict=True)}
    out.places = {r.id: places.get(r.id, STANDALONE) for r in out.pack_refs}
    return out


def version_record(
    workspace: str, n: int, stored: Stored, *, when: str, author: str, message: str, tree: dict[str, int]
) -> VersionRecord:
    """The record of version *n* (parent n - 1) naming *stored*'s top and changeset."""
    cs = stored.changeset
    return VersionRecord(
        workspace=workspace,
        version=n,
        parent=n - 1 if n > 1 else None,
        manifest=stored.top_id.hex(),
        manifest_size=stored.top_size,
        changeset=None if cs is None else content_id(cs).hex(),
        changeset_size=0 if cs is None else len(cs),
        time=when,
        author=author,
        message=message,
        stats=tree,
    )
