"""Checking a repository in the store: every version whole, decodable and verified (``wsfs fsck``).

What is checked, for each version of the workspaces asked for (all by default):

- its record, as the store holds it (not a local copy), decodes and is of a
  format this wsfs reads; every tag names a version that exists;
- format 2: the top, its listing pieces and every range decode, are verified
  against their ids (a piece this host holds is hashed again locally; with
  ``full``, fetched from the store) and are present in the store; the
  changeset decodes and names the parent's top; the pack map decodes, and
  every pack is present where it says (a segment, or a blob of its own);
- format 1: the manifest downloads, verifies and passes the structure check;
- every chunk a large file names, and every pack, is present in the store
  (one listing of the store's ``blobs/``, ``segments/`` and ``manifests/``
  rather than a ``HEAD`` per object);
- with ``full``, every chunk and pack is fetched and verified against its id,
  and every small file against its own id inside its pack; with ``sample``,
  that many chunks and packs drawn at random.

An object referenced by many versions is checked once.  A problem is
reported by name (the object's id, the version and a path that uses it) and
checking goes on; the store being unreachable ends the check
(``StoreUnavailable``, exit 8): that says nothing about the repository.
What no version references is gc's business (issue 14), not reported here.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from wsfs.errors import FormatError, IntegrityError, NotFound, StoreUnavailable, WsfsError
from wsfs.format import tree
from wsfs.format.blobs import content_id, hexid, parse_hexid
from wsfs.format.records import VersionRecord
from wsfs.repository import Ref, Repository, blob_key, manifest_key, segment_key
from wsfs.terminal import escape

log = logging.getLogger(__name__)


@dataclass
class FsckReport:
    """What a check looked at and what it found (``problems``: one line each, by name)."""

    workspaces: int = 0
    versions: int = 0
    tags: int = 0
    pieces: int = 0  # metadata pieces (tops, listings, ranges, changesets) and format 1 manifests verified
    objects: int = 0  # distinct chunks and packs referenced, checked present
    verified: int = 0  # of those, fetched and verified (full or sample)
    verified_bytes: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class _Blob:
    """A chunk or pack some version references: where it is stored and who uses it (for the report)."""

    cid: bytes
    size: int
    where: str  # "ws@v: path" of the first user
    place: tree.Place | None = None  # a pack: its place (segment or a blob of its own)
    contents: list[tuple[bytes, int]] | None = None  # a pack: its files' distinct contents, in stored order


class _Checker:
    def __init__(self, repo: Repository, *, full: bool, sample: int, workers: int,
                 progress: Callable[[int], None]) -> None:
        self.repo = repo
        self.full = full
        self.sample = sample
        self.workers = workers
        self.progress = progress
        self.report = FsckReport()
        self.layout = repo.config.layout
        self.chunk_size = repo.config.chunk_size
        self.keys: set[str] = set()
        self.blobs: dict[bytes, _Blob] = {}
        self.pieces_seen: set[bytes] = set()
        self.tops: dict[tuple[str, int], bytes] = {}  # (ws, n) -> top id, for changesets' parents

    def problem(self, where: str, what: str) -> None:
        line = f"{where}: {what}"
        log.debug("fsck: %s", line)
        self.report.problems.append(line)

    def list_store(self) -> None:
        for prefix in ("blobs/", "segments/", "manifests/"):
            self.keys.update(self.repo.store.list(prefix))

    def present(self, key: str) -> bool:
        return key in self.keys

    # -- versions ---------------------------------------------------------

    def workspace(self, ws: str, only: int | None) -> None:
        self.report.workspaces += 1
        versions = self.repo.versions(ws)
        for n in versions if only is None else [only]:
            where = f"{ws}@{n}"
            try:
                record = self.repo.record(ws, n, stored=True)
            except (IntegrityError, FormatError, NotFound) as e:
                self.problem(where, f"version record: {e}")
                continue
            self.report.versions += 1
            if record.parent is not None and not 0 < record.parent < n:
                self.problem(where, f"version record names parent {record.parent}, not an earlier version")
            try:
                if record.format == 2:
                    self.version2(record, where)
                else:
                    self.version1(record, where)
            except StoreUnavailable:
                raise
            except WsfsError as e:
                self.problem(where, str(e))
            self.progress(1)
        if only is None:
            known = set(versions)
            for tag, n in self.repo.tags(ws).items():
                self.report.tags += 1
                if n not in known:
                    self.problem(f"{ws}@{tag}", f"the tag names version {n}, which does not exist")

    def piece(self, cid: bytes, size: int, what: str, where: str) -> bytes:
        """A metadata piece, verified (from the store with ``full``), and checked present in the store."""
        if cid not in self.pieces_seen:
            self.pieces_seen.add(cid)
            self.report.pieces += 1
            if not self.present(blob_key(cid)):
                self.problem(where, f"{what} {hexid(cid)} is missing from the store")
            elif self.full:
                self.repo.get_blob(cid, size, what)  # the store's copy, not the local one
        return self.repo.get_piece(cid, size, what)

    def version2(self, record: VersionRecord, where: str) -> None:
        top_id = parse_hexid(record.manifest)
        self.tops[(record.workspace, record.version)] = top_id
        top = tree.decode_top(self.piece(top_id, record.manifest_size, "top", where))
        for ref in top.ranges + top.packs:
            self.piece(ref.id, ref.size, "listing piece", where)
        ranges, packs = self.repo.version_refs(record)
        entries: list[tree.Entry] = []
        for ref, (run, _bodies) in zip(ranges, self.repo.version_range_bodies(ranges), strict=True):
            self.piece(ref.id, ref.size, "range", where)
            entries.extend(run)
        cs = self.chunk_size
        for e in entries:
            for i, c in enumerate(e.chunks):
                if c != tree.ZERO_ID and c not in self.blobs:
                    self.blobs[c] = _Blob(c, min(cs, e.size - i * cs), f"{where}: {_path(e.key)}")
        places = self.repo.pack_places(record, len(packs))
        grouped = list(tree.pack_contents(entries, packs, self.layout))
        if len(grouped) != len(packs) or sum(r.count for r in packs) != sum(tree.packed(e, self.layout) for e in entries):
            self.problem(where, f"its {len(packs)} packs do not hold its small files")
        for (ref, contents), place in zip(grouped, places, strict=False):
            if ref.id not in self.blobs:
                self.blobs[ref.id] = _Blob(ref.id, ref.size, f"{where}: {_path(ref.first)} (pack)", place, contents)
        if record.changeset is not None:
            parent_top, _ = tree.decode_changeset(
                self.piece(parse_hexid(record.changeset), record.changeset_size, "changeset", where))
            if record.parent is not None:
                try:
                    expected = self.tops.get((record.workspace, record.parent)) or parse_hexid(
                        self.repo.record(record.workspace, record.parent, stored=True).manifest)
                except NotFound:
                    expected = None  # the parent's record was dropped (gc): nothing to compare with
                if expected is not None and parent_top != expected:
                    self.problem(where, f"the changeset is against top {hexid(parent_top)}, "
                                 f"not version {record.parent}'s {hexid(expected)}")

    def version1(self, record: VersionRecord, where: str) -> None:
        cid = parse_hexid(record.manifest)
        if cid not in self.pieces_seen:
            self.pieces_seen.add(cid)
            self.report.pieces += 1
            if not self.present(manifest_key(cid)):
                self.problem(where, f"manifest {record.manifest} is missing from the store")
                return
        with self.repo.open_manifest(record) as m:
            for c, size in m.chunk_sizes().items():
                if c not in self.blobs:
                    self.blobs[c] = _Blob(c, size, f"{where}: a large file")

    # -- chunks and packs -------------------------------------------------

    def objects(self) -> None:
        blobs = list(self.blobs.values())
        self.report.objects = len(blobs)
        there = []
        for b in blobs:
            seg = b.place.segment if b.place is not None else None
            key = segment_key(seg) if seg is not None else blob_key(b.cid)
            if self.present(key):
                there.append(b)
            elif seg is not None:
                self.problem(b.where, f"pack {hexid(b.cid)}: its segment {hexid(seg)} is missing from the store")
            else:
                kind = "pack" if b.contents is not None else "chunk"
                self.problem(b.where, f"{kind} {hexid(b.cid)} is missing from the store")
        if self.full:
            todo = there
        elif self.sample:
            todo = random.sample(there, min(self.sample, len(there)))
        else:
            return
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="wsfs-fsck") as pool:
            for b, err, n in pool.map(self.verify, todo):
                if err is not None:
                    self.problem(b.where, err)
                else:
                    self.report.verified += 1
                    self.report.verified_bytes += n
                self.progress(1)

    def verify(self, b: _Blob) -> tuple[_Blob, str | None, int]:
        kind = "pack" if b.contents is not None else "chunk"
        try:
            data = self.repo.get_blob(b.cid, b.size, kind, place=b.place)
        except (IntegrityError, NotFound) as e:
            return b, str(e), 0
        off = 0
        for cid, size in b.contents or ():
            if content_id(bytes(data[off : off + size])) != cid:
                return b, f"pack {hexid(b.cid)}: a file's bytes (content {hexid(cid)}) do not match its id", 0
            off += size
        if b.contents is not None and off != len(data):
            return b, f"pack {hexid(b.cid)} holds {len(data)} bytes, its files {off}", 0
        return b, None, len(data)


def _path(key: bytes) -> str:
    """A key as a path for a report line (any byte shown, never raw control characters)."""
    return escape(tree.path_of(key).decode("utf-8", "backslashreplace") or "/")


def fsck(
    repo: Repository,
    targets: Iterable[Ref] = (),
    *,
    full: bool = False,
    sample: int = 0,
    workers: int = 8,
    progress: Callable[[int], None] = lambda n: None,
) -> FsckReport:
    """Check the workspaces (or single versions) *targets* names, every workspace if none; see the module doc."""
    c = _Checker(repo, full=full, sample=sample, workers=workers, progress=progress)
    c.list_store()
    asked = list(targets)
    if not asked:
        asked = [Ref(ws, None) for ws in repo.workspaces()]
    for ref in asked:
        only = None
        if ref.ref is not None:
            only = repo.resolve(ref).version
        c.workspace(ref.workspace, only)
    c.objects()
    return c.report
