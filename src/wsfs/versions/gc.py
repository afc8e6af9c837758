"""Garbage collection (``wsfs gc``): retention drops old version records; objects nothing references go, in two phases.

One run does, in this order:

1. **Decide** per workspace which versions stay: the latest, every tagged
   one, every one a live lease names (:mod:`wsfs.versions.leases`: mounts),
   and those the retention rules keep (``keep_last`` newest, ``keep_within``
   seconds of age).  No rule given: every version stays.
2. **Reference** everything the kept versions need
   (:func:`wsfs.versions.reach.version_objects`).  A kept version that cannot
   be read stops gc before anything is dropped or deleted: what it references
   is unknown (``wsfs fsck`` says what is wrong).
3. **Drop** the records (and access profiles) of the other versions.  This is
   the one irreversible step a rule asks for; the objects they alone used
   become unreferenced.
4. **Delete** the objects of earlier *marks* that are at least ``grace`` old
   and that still nothing references, reading every record, tag and lease
   again (steps 1-2 ran just now).  Tops and listing pieces first (a stored
   top tells a push that everything below it is stored), then pack maps,
   then the rest; the mark goes last, so a killed gc repeats the deletes.
5. **Mark** the objects under ``blobs/``, ``segments/``, ``packmaps/`` and
   ``manifests/`` that nothing references and no mark holds yet: a mark
   (``gc/marks/<ms>-<id>``) lists them with the time.

So an object is deleted only after it was unreferenced at two runs at least
``grace`` apart.  What this protects: a push or commit uploads its objects
before its record exists, and one that found an object already stored (a
``HEAD``) relies on it staying; both publish within ``grace`` (default 24 h)
or their version may miss objects.  Two gc runs at once only delete objects
both found unreferenced; deleting twice is harmless.  Content-addressed
objects are never rewritten.  Segments are deleted whole once no kept pack
is in them: a segment with some live packs stays, with its dead bytes
(reported as ``dead_segment_bytes``; repacking would rewrite pack maps under
readers, not done).

Known gap: a push that uploaded a tree's top and was killed before its
record leaves an orphan top whose children may be marked earlier than it;
between the deletion of the children and of the top, a push of that very
tree would find the top and skip the children.  (Tops named by orphan pack
maps are deleted first, which covers every tree with small files.)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from wsfs.errors import IntegrityError, NotFound, UsageError, WsfsError
from wsfs.format import tree
from wsfs.format.blobs import compress, decompress, hexid, parse_hexid
from wsfs.format.records import VersionRecord
from wsfs.repository import Repository, _get_small, blob_key, profile_key, version_key
from wsfs.versions.leases import live_leases
from wsfs.versions.reach import version_objects

log = logging.getLogger(__name__)

MARK_PREFIX = "gc/marks/"
COLLECTED = ("blobs/", "segments/", "packmaps/", "manifests/")  # what gc may delete: content-addressed objects
DEFAULT_GRACE = 24 * 3600.0
MAX_MARK = 1 << 30  # plaintext bytes of a mark file


@dataclass(frozen=True)
class Retention:
    """Which versions stay besides the latest, tagged and leased ones; None: no such rule."""

    keep_last: int | None = None
    keep_within: float | None = None  # seconds

    @property
    def any(self) -> bool:
        return self.keep_last is not None or self.keep_within is not None


@dataclass
class GcReport:
    versions: int = 0  # version records seen
    kept: int = 0
    leased: int = 0  # versions kept because a live lease names them
    dropped: list[str] = field(default_factory=list)  # "ws@n", records dropped (or that would be)
    referenced: int = 0  # objects the kept versions reference
    unreferenced: int = 0  # objects nothing references now
    unreferenced_bytes: int = 0
    marked: int = 0  # newly marked by this run (or that would be)
    marked_bytes: int = 0
    deleted: int = 0  # deleted by this run (or that would be)
    deleted_bytes: int = 0
    waiting: int = 0  # marked by earlier runs, not yet past the grace period
    dead_segment_bytes: int = 0  # bytes of dead packs in segments kept for their live packs


def _age(record: VersionRecord, now: float) -> float:
    try:
        return now - datetime.fromisoformat(record.time).timestamp()
    except ValueError:
        return 0.0  # an unreadable time counts as new: kept by keep_within


def _encode_mark(when: float, keys: list[str], first: list[str]) -> bytes:
    codec, payload = compress(json.dumps({"time": when, "keys": keys, "first": first}).encode())
    return bytes([codec]) + payload


def _decode_mark(raw: bytes) -> tuple[float, list[str], list[str]]:
    from wsfs.format.blobs import declared_size

    data = bytes(decompress(raw[0], memoryview(raw)[1:], declared_size(raw, MAX_MARK)))
    d = json.loads(data)
    when, keys, first = d["time"], d["keys"], d["first"]
    if not isinstance(when, int | float) or not all(isinstance(k, str) for k in keys + first):
        raise ValueError("bad fields")
    return float(when), keys, first


class _Gc:
    def __init__(self, repo: Repository, retention: Retention, grace: float, dry_run: bool, now: float,
                 progress: Callable[[int], None]) -> None:
        self.repo = repo
        self.store = repo.store
        self.retention = retention
        self.grace = grace
        self.dry_run = dry_run
        self.now = now
        self.progress = progress
        self.report = GcReport()
        self.referenced: set[str] = set()
        self.segment_live: dict[str, int] = {}  # segment key -> bytes of live packs in it

    def decide(self) -> list[VersionRecord]:
        """Records to drop; fills ``referenced`` with what the kept ones need."""
        drop: list[VersionRecord] = []
        for ws in self.repo.workspaces():
            versions = self.repo.versions(ws)
            if not versions:
                continue
            self.report.versions += len(versions)
            leased = {lease.version for lease in live_leases(self.store, ws, now=self.now)}
            self.report.leased += len(leased & set(versions))
            keep = {versions[-1]} | set(self.repo.tags(ws).values()) | leased
            if self.retention.keep_last is not None:
                keep.update(versions[-self.retention.keep_last:] if self.retention.keep_last > 0 else [])
            for n in versions:
                record = self.repo.record(ws, n, stored=True)
                within = self.retention.keep_within
                if (not self.retention.any or n in keep
                        or (within is not None and _age(record, self.now) <= within)):
                    self.report.kept += 1
                    self.reference(record)
                else:
                    drop.append(record)
                self.progress(1)
        return drop

    def reference(self, record: VersionRecord) -> None:
        try:
            for o in version_objects(self.repo, record):
                self.referenced.add(o.key)
                if o.kind == "pack" and o.place is not None and o.place.segment is not None:
                    self.segment_live[o.key] = self.segment_live.get(o.key, 0) + o.place.length
        except (IntegrityError, NotFound) as e:
            raise IntegrityError(f"gc stopped before deleting anything: {record.workspace}@{record.version} "
                                 f"cannot be read, so what it references is unknown ({e}); see wsfs fsck") from None

    def drop(self, records: Iterable[VersionRecord]) -> None:
        for r in records:
            self.report.dropped.append(f"{r.workspace}@{r.version}")
            if not self.dry_run:
                self.store.delete(version_key(r.workspace, r.version))  # the root first
                self.store.delete(profile_key(r.workspace, r.version))

    def collect(self, dropped: list[VersionRecord]) -> None:
        sizes: dict[str, int] = {}
        for prefix in COLLECTED:
            sizes.update(self.store.list_sizes(prefix))
        unreferenced = {k for k in sizes if k not in self.referenced}
        self.report.referenced = len(self.referenced)
        self.report.unreferenced = len(unreferenced)
        self.report.unreferenced_bytes = sum(sizes[k] for k in unreferenced)
        self.report.dead_segment_bytes = sum(max(0, sizes[k] - live) for k, live in self.segment_live.items()
                                             if k in sizes)
        # Earlier marks: delete what is past the grace period and still unreferenced.
        held: set[str] = set()
        for mark_key in self.store.list(MARK_PREFIX):
            try:
                when, keys, first = _decode_mark(_get_small(self.store, mark_key, MAX_MARK))  # bounded read
            except NotFound:
                continue  # another gc finished it
            except (ValueError, KeyError, TypeError, RecursionError, WsfsError) as e:
                log.warning("ignoring the malformed gc mark %s: %s", mark_key, e)
                continue
            if self.now - when < self.grace:
                held.update(keys)
                self.report.waiting += sum(1 for k in keys if k in unreferenced)
                continue
            order = [k for k in first if k in unreferenced]
            rest = [k for k in keys if k in unreferenced and k not in set(order)]
            rest.sort(key=lambda k: not k.startswith("packmaps/"))  # pack maps before the pieces they place
            for k in order + rest:
                self.report.deleted += 1
                self.report.deleted_bytes += sizes[k]
                if not self.dry_run:
                    self.store.delete(k)
                unreferenced.discard(k)
            if not self.dry_run:
                self.store.delete(mark_key)
        # A new mark for what is unreferenced and in no mark yet.
        new = sorted(unreferenced - held)
        if not new:
            return
        self.report.marked = len(new)
        self.report.marked_bytes = sum(sizes[k] for k in new)
        if not self.dry_run:
            first = self.tops_first(set(new), dropped)
            name = f"{MARK_PREFIX}{int(self.now * 1000):015d}-{os.urandom(6).hex()}"
            self.store.put(name, _encode_mark(self.now, new, first))

    def tops_first(self, new: set[str], dropped: list[VersionRecord]) -> list[str]:
        """Among *new*, the tops and listing pieces known as such, tops first: the order deletion must take."""
        tops: dict[str, tuple[bytes, int | None]] = {}
        for r in dropped:
            if r.format == 2:
                tops[blob_key(parse_hexid(r.manifest))] = (parse_hexid(r.manifest), r.manifest_size)
        for k in new:
            if k.startswith("packmaps/"):  # an orphan pack map names its top
                try:
                    top = parse_hexid(k.rsplit("/", 1)[1])
                except (ValueError, WsfsError):
                    continue
                tops.setdefault(blob_key(top), (top, None))
        first = [k for k in tops if k in new]
        listings: list[str] = []
        for k in first:
            top_id, size = tops[k]
            try:
                raw = self.repo.get_piece(top_id, size, "top") if size else bytes(self.repo.get_blob(top_id, None, "top"))
                top = tree.decode_top(raw)
            except (IntegrityError, NotFound) as e:
                log.debug("gc: top %s not read (%s): its listing pieces go with the rest", hexid(top_id), e)
                continue
            listings += [blob_key(ref.id) for ref in top.ranges + top.packs if blob_key(ref.id) in new]
        return first + listings


def gc(
    repo: Repository,
    retention: Retention = Retention(),
    *,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    now: float | None = None,
    progress: Callable[[int], None] = lambda n: None,
    report: GcReport | None = None,
) -> GcReport:
    """One gc run over every workspace of *repo* (see the module doc); with *dry_run*, nothing is changed.

    The figures go into *report* (a fresh one if None) as the run goes: after
    a failure it holds what was done before.
    """
    if grace < 0 or (retention.keep_last is not None and retention.keep_last < 0):
        raise UsageError("gc: grace and keep-last must not be negative")
    g = _Gc(repo, retention, grace, dry_run, time.time() if now is None else now, progress)
    if report is not None:
        g.report = report
    dropped = g.decide()
    g.drop(dropped)
    g.collect(dropped)
    return g.report


def parse_duration(text: str) -> float:
    """``30d``, ``24h``, ``90m``, ``45s`` or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise UsageError(f"not a duration: {text!r} (e.g. 30d, 24h, 90m)") from None
