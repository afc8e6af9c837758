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
from wsfs.repository import Ref, Repository
from wsfs.versions.reach import PIECES, Object, version_objects

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


class _Checker:
    def __init__(self, repo: Repository, *, full: bool, sample: int, workers: int,
                 progress: Callable[[int], None]) -> None:
        self.repo = repo
        self.full = full
        self.sample = sample
        self.workers = workers
        self.progress = progress
        self.report = FsckReport()
        self.keys: set[str] = set()
        self.blobs: dict[bytes, Object] = {}  # chunks and packs, by content id
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
            self.tops[(ws, n)] = parse_hexid(record.manifest)
            try:
                self.version(record, where)
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

    def version(self, record: VersionRecord, where: str) -> None:
        for o in version_objects(self.repo, record):
            if o.kind in PIECES or o.kind == "manifest":
                assert o.cid is not None
                if o.kind == "changeset":
                    self.changeset(record, o, where)  # per version: versions may share a changeset piece
                if o.cid in self.pieces_seen:
                    continue
                self.pieces_seen.add(o.cid)
                self.report.pieces += 1
                if not self.present(o.key):
                    self.problem(o.where, f"{o.kind} {hexid(o.cid)} is missing from the store")
                elif self.full and o.kind != "manifest":  # a manifest was verified as it was downloaded
                    self.repo.get_blob(o.cid, o.size, o.kind)  # the store's copy, not the local one
            elif o.kind == "pack map":
                continue  # decoded by version_objects; without it, its packs show up missing (below)
            elif o.cid is not None and o.cid not in self.blobs:
                self.blobs[o.cid] = o

    def changeset(self, record: VersionRecord, o: Object, where: str) -> None:
        assert o.cid is not None
        parent_top, _ = tree.decode_changeset(self.repo.get_piece(o.cid, o.size, "changeset"))
        if record.parent is None:
            return
        try:
            expected = self.tops.get((record.workspace, record.parent)) or parse_hexid(
                self.repo.record(record.workspace, record.parent, stored=True).manifest)
        except NotFound:
            return  # the parent's record was dropped (gc): nothing to compare with
        if parent_top != expected:
            self.problem(where, f"the changeset is against top {hexid(parent_top)}, "
                         f"not version {record.parent}'s {hexid(expected)}")

    # -- chunks and packs -------------------------------------------------

    def objects(self) -> None:
        blobs = list(self.blobs.values())
        self.report.objects = len(blobs)
        there = []
        for b in blobs:
            assert b.cid is not None
            if self.present(b.key):
                there.append(b)
            elif b.place is not None and b.place.segment is not None:
                self.problem(b.where, f"pack {hexid(b.cid)}: its segment {hexid(b.place.segment)} is missing from the store")
            else:
                self.problem(b.where, f"{b.kind} {hexid(b.cid)} is missing from the store")
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

    def verify(self, b: Object) -> tuple[Object, str | None, int]:
        assert b.cid is not None
        try:
            data = self.repo.get_blob(b.cid, b.size, b.kind, place=b.place)
        except (IntegrityError, NotFound) as e:
            return b, str(e), 0
        off = 0
        for cid, size in b.contents:
            if content_id(bytes(data[off : off + size])) != cid:
                return b, f"pack {hexid(b.cid)}: a file's bytes (content {hexid(cid)}) do not match its id", 0
            off += size
        if b.kind == "pack" and off != len(data):
            return b, f"pack {hexid(b.cid)} holds {len(data)} bytes, its files {off}", 0
        return b, None, len(data)


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
