"""Commit: publish what a write layer changed as the next version of its workspace.

A read-write mount is a base version B plus a write layer
(:mod:`wsfs.layer`).  In this step the layer is not re-based after a commit:
it keeps its changes relative to B, and a **memo** (the layer's
``published`` table) remembers, per key it has committed, the record body
its merged view had there then (and the inode and ctime, so unchanged
content is not read again).  So:

* **our delta** = every key whose record body in the layer's merged view
  (read from a :class:`~wsfs.layer.snapshot.Snapshot`) differs from the
  *reference*: the memo's body if the key was committed before, else B's.
  Only the paths the layer changed against B and the memo's keys are read
  (every other path is B's entry, record for record), the whole merged
  view only where hard links are involved;
* **their changes** = the changesets from the version we last published to
  the head (other writers);
* **overlap** (a conflict, :class:`CommitConflict`, exit 5, nothing
  published, nothing changed): a key both changed to different records, or
  a directory one side removed (or turned into something else) with a
  change below it on the other side.  A directory both changed merges
  attribute by attribute (three-way; the later mtime: each side's own
  entries changed it) and conflicts only where both changed one attribute
  differently.  A hard-linked file changed under all its names.  With
  *ours*, our merged view wins at every overlapping key;
* the **new tree** = the head's entries with our delta applied, published
  as head + 1 on top of the head (with a changeset against it).

Order of writes (children before parents, as push): chunks of changed large
files (a chunk no written block touches keeps its base id:
``chunk_sources``; written chunks are read and hashed, HEAD-checked and
uploaded), then the pieces (:func:`wsfs.versions.publish.store_tree`:
ranges and packs not stored yet, the head's reused by id; new packs back to
back in segments, the pack map, listings, the top), then the **intent** (the
record and the memo rows, fsynced into the state folder), then the record,
created with a conditional put.  A version appears whole or not at all;
an interruption anywhere leaves the layer as it was and the next commit
simply runs again (what was uploaded is found stored and skipped).

The record's create is recognised when retried: if the conditional put
fails (another record at that number, or an error after which it may or
may not exist), the record at that number is read back and compared with
ours byte for byte (time, author, message, top and changeset: a different
commit cannot match unless it published the same tree the same second).
Ours: done.  Another writer's: rebase onto the new head and try again
(bounded).  Unreachable: the intent stays, and the next commit finds the
record (ours: it applies the intent's memo rows first) or not (it
publishes again).

The memo is written only after the record exists, by the layer's own
thread (:meth:`WriteLayer.mark_published`); the intent file covers the
crash in between.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from wsfs.errors import Conflict, IntegrityError, NotFound, StoreUnavailable
from wsfs.format.blobs import content_id
from wsfs.format.manifest import ROOT_INO, Inode, content_id_chunked
from wsfs.format.records import VersionRecord
from wsfs.format.tree import (
    EMPTY_ID,
    F_LINK,
    F_LINKED,
    ZERO_ID,
    Change,
    Entry,
    Layout,
    PackPlan,
    decode_body,
    encode_body,
    key_of,
    pack_contents,
    path_of,
    plan_packs,
    with_link_names,
)
from wsfs.fsops import XATTR_PREFIX
from wsfs.layer.snapshot import Memo, Publication, Snapshot
from wsfs.repository import Repository
from wsfs.versions.diff import record_changes
from wsfs.versions.publish import Parent, store_tree, version_record
from wsfs.versions.push import PushStats, _default_author, _Spill, _Uploader

if TYPE_CHECKING:
    from wsfs.cache import BlobCache

log = logging.getLogger(__name__)

PREFETCH_ALL = 4096  # a commit reading at least this many keys reads the layer's tables whole (prefetch_all)
ASK_BELOW = 1024 * 1024  # a chunk of a commit smaller than this is put without a HEAD first (see _Uploader)

REBASES = 8  # other writers publishing while we commit: try this many heads, then give up (Conflict)


@dataclass
class CommitStats:
    """What a commit did (printed by ``wsfs commit``)."""

    version: int | None = None  # the version published (None: nothing to commit)
    changed: int = 0  # entries in the version's changeset (against the version it is on top of)
    ours: int = 0  # keys of our delta (what changed in the layer since its last commit)
    rebased: bool = False  # published on top of other writers' versions
    overwritten: list[bytes] = field(default_factory=list)  # paths where ours replaced theirs (ours=True)
    recovered: int | None = None  # a version an interrupted commit had published, found and recorded
    files_read: int = 0  # regular files whose content was read (changed since the base and the memo)
    chunks_uploaded: int = 0
    objects_uploaded: int = 0  # chunks, pieces, segments, pack map (not the record)
    bytes_uploaded: int = 0
    seconds: float = 0.0
    skipped: list[bytes] = field(default_factory=list)  # sockets: not stored (as push)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step (bench_commit prints them)
    # For the re-base after it: where the published version may differ from the layer's merged view.
    # *compared*: the keys whose merged-view record commit read (None: all), *unlike*: those of them where
    # the version differs; any other key holds the base's record in the merged view.
    compared: set[bytes] | None = None
    unlike: set[bytes] = field(default_factory=set)
    catch_up: int | None = None  # nothing to publish, and the head (this version) is newer than the base

    def lap(self, name: str, since: list[float]) -> None:
        """Add the time since ``since[0]`` to phase *name*; ``since[0]`` becomes now."""
        now = time.monotonic()
        self.phases[name] = self.phases.get(name, 0.0) + now - since[0]
        since[0] = now


class CommitConflict(Conflict):
    """Other writers changed paths this commit changes too (exit 5); :attr:`paths` lists them."""

    def __init__(self, paths: list[bytes], detail: str = "") -> None:
        self.paths = paths
        # (bytes that are not UTF-8 shown as \xNN: the message is text, --json has the exact names)
        shown = ", ".join(p.decode("utf-8", "backslashreplace") or "/" for p in paths[:10]) + (
            " ..." if len(paths) > 10 else "")
        super().__init__(
            f"{len(paths)} path(s) changed both here and in versions published since: {shown}{detail} "
            "(commit --ours publishes ours over theirs; discard PATH takes theirs)"
        )


# -- the merged view as entries ----------------------------------------------------


class _View:
    """The snapshot's merged tree as format 2 entries, as push would read it from a directory."""

    def __init__(self, snap: Snapshot, repo: Repository, uploader: _Uploader, spill: _Spill, stats: CommitStats) -> None:
        self.snap = snap
        self.layout = repo.config.layout
        self.up = uploader
        self.spill = spill
        self.stats = stats
        # content id -> a small file showing it, not read by this commit: its bytes in the layer's own
        # slots (committed before, unchanged since: local), or the base's (read through read_base)
        self.small_local: dict[bytes, int] = {}
        self.small_base: dict[bytes, int] = {}
        self._content: dict[int, tuple[bytes, tuple[bytes, ...]]] = {}
        # Content the memo vouches for: same inode and ctime as when committed -> same content, not read.
        self._known: dict[tuple[int, int], Entry] = {}
        for key, m in snap.memo.items():
            if m.body is not None and m.ino:
                e = decode_body(m.body, key, self.layout, "memo")
                if e.link is None and stat.S_ISREG(e.mode):
                    self._known[(m.ino, m.ctime_ns)] = e
        # key -> (entry, inode, ctime)
        self.entries: dict[bytes, tuple[Entry, int, int]] = {}
        self.hard_links = False
        self.progress: Callable[[str, int, int], None] = lambda step, done, total: None

    def read_all(self) -> None:
        """Walk the whole merged view (parents before children); hard links resolved as push does."""
        snap = self.snap
        self.entries.clear()
        links: dict[int, list[bytes]] = {}
        root = snap.getattr(ROOT_INO)
        self._add(b"", root, links)
        stack = [(ROOT_INO, b"")]
        while stack:
            dino, dpath = stack.pop()
            snap.prefetch(dino)
            for _, name, a in snap.readdir(dino):
                key = key_of(dpath, name)
                if self._add(key, a, links) and a.is_dir:
                    stack.append((a.ino, dpath + b"/" + name if dpath else name))
                self.progress("reading", len(self.entries), 0)
        for keys in links.values():
            if len(keys) > 1:
                first = min(keys)
                e, ino, ctime = self.entries[first]
                for k in keys:
                    self.entries[k] = (e._replace(key=k, linked=True) if k == first else Entry(k, link=first), ino, ctime)

    def read_keys(self, keys: set[bytes]) -> None:
        """Read the entries at *keys* only (absent keys are left out); :attr:`hard_links` if any is one."""
        self.progress("reading", 0, len(keys))
        snap = self.snap
        if len(keys) >= PREFETCH_ALL:
            snap.prefetch_all()
        last_parent: bytes | None = None  # keys are sorted: the entries of a directory come together,
        parent_dir: Inode | None = None  # so its path is resolved once for all of them
        dirs: dict[bytes, Inode | None] = {}  # and a directory read among the keys is not looked up again
        for i, key in enumerate(sorted(keys), 1):
            if not key:
                a = snap.resolve(b"")
            else:
                parent, _, name = key.partition(b"\0")
                if parent != last_parent:
                    last_parent = parent
                    parent_dir = snap.resolve(parent, dirs)
                    if parent_dir is not None and parent_dir.is_dir:
                        snap.prefetch(parent_dir.ino)  # its entries' rows and block maps, in two queries
                a = None
                if parent_dir is not None and parent_dir.is_dir:
                    with contextlib.suppress(NotFound):
                        a = snap.lookup(parent_dir.ino, name)
                if a is not None and a.is_dir:
                    dirs[parent + b"/" + name if parent else name] = a  # (its key sorts before its entries')
            if a is not None:
                self._add(key, a, {})
                if a.is_reg and a.nlink > 1:
                    self.hard_links = True
            self.progress("reading", i, len(keys))

    def _add(self, key: bytes, a: Inode, links: dict[int, list[bytes]]) -> bool:
        e = self.entry(key, a)
        if e is None:
            return False
        self.entries[key] = (e, a.ino, a.ctime_ns)
        if a.is_reg and a.nlink > 1:
            links.setdefault(a.ino, []).append(key)
        return True

    def entry(self, key: bytes, a: Inode) -> Entry | None:
        """The entry of inode *a* at *key* (None for a socket: not stored, as push)."""
        fmt = stat.S_IFMT(a.mode)
        if fmt == stat.S_IFSOCK:
            self.stats.skipped.append(path_of(key))
            return None
        xattrs = tuple(sorted((k, v) for k, v in self.snap.xattrs(a.ino).items() if k.startswith(XATTR_PREFIX)))
        e = Entry(key, a.mode, a.uid, a.gid, 0, a.mtime_ns, xattrs=xattrs)
        if fmt == stat.S_IFDIR:
            return e._replace(size=a.size)
        if fmt == stat.S_IFLNK:
            target = self.snap.readlink(a.ino)
            return e._replace(size=len(target), target=target)
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            return e._replace(rdev=a.rdev)
        if fmt == stat.S_IFREG:
            content, chunks = self.content(a)
            return e._replace(size=a.size, content=content, chunks=chunks)
        return e

    def content(self, a: Inode) -> tuple[bytes, tuple[bytes, ...]]:
        """``(content id, chunk ids)`` of regular file *a*: reused if unchanged, else read and hashed."""
        hit = self._content.get(a.ino)
        if hit is not None:
            return hit
        out = self._compute(a)
        self._content[a.ino] = out
        return out

    def _compute(self, a: Inode) -> tuple[bytes, tuple[bytes, ...]]:
        snap, layout = self.snap, self.layout
        if a.size == 0:
            return EMPTY_ID, ()
        small = a.size <= layout.inline_threshold
        if snap.content_unchanged(a.ino):
            b = snap.m.getattr(a.ino)
            assert b.content is not None
            if small:
                self.small_base.setdefault(b.content, a.ino)
                return b.content, ()
            return b.content, tuple(c.cid or ZERO_ID for c in snap.m.chunks(a.ino))
        known = self._known.get((a.ino, a.ctime_ns))
        if known is not None and known.size == a.size and known.content is not None:
            if small:
                self.small_local.setdefault(known.content, a.ino)
            return known.content, known.chunks
        self.stats.files_read += 1
        if small:
            data = snap.read_small(a.ino)
            if data is None or len(data) != a.size:
                data = snap.read(a.ino, 0, a.size)
            cid = content_id(data)
            self.spill.add(cid, data)
            return cid, ()
        cs = layout.chunk_size
        cids = []
        for i, src in enumerate(snap.chunk_sources(a.ino)):
            if src is not None:
                cids.append(src.cid or ZERO_ID)
                continue
            off = i * cs
            # The id now; the HEAD and PUT in the uploader's pool, awaited before anything refers to it.
            cids.append(self.up.submit_hashed(snap.read(a.ino, off, min(cs, a.size - off))) or ZERO_ID)
        return content_id_chunked(a.size, cs, [None if c == ZERO_ID else c for c in cids]), tuple(cids)


# -- their changes, overlaps --------------------------------------------------------


def _is_dir(body: bytes | None, key: bytes, layout: Layout) -> bool:
    if body is None:
        return False
    e = decode_body(body, key, layout)
    return e.link is None and stat.S_ISDIR(e.mode)


def _under(paths: list[bytes], top: bytes) -> list[bytes]:
    """Those of sorted *paths* strictly below directory path *top*."""
    import bisect

    if not top:
        return list(paths)
    lo = bisect.bisect_left(paths, top + b"/")
    hi = bisect.bisect_left(paths, top + b"0")  # "0" follows "/"
    return paths[lo:hi]


def _overlaps(
    ours: dict[bytes, tuple[bytes | None, bytes | None]],
    theirs: dict[bytes, tuple[bytes | None, bytes | None]],
    layout: Layout,
) -> tuple[set[bytes], dict[bytes, Entry]]:
    """Keys where both sides' changes collide, and directories both changed compatibly (merged).

    Each side maps key -> (old body, new body).  Nothing collides with nothing: a side without changes
    (no other writer since) returns at once, without decoding the other side's records.
    """
    if not ours or not theirs:
        return set(), {}
    clash: set[bytes] = set()
    merged: dict[bytes, Entry] = {}
    for k in ours.keys() & theirs.keys():
        a, b = ours[k][1], theirs[k][1]
        if a == b:
            continue
        if _is_dir(a, k, layout) and _is_dir(b, k, layout):
            dir_ = _merge_dir(k, ours[k][0], a, theirs[k][0], b, layout)  # type: ignore[arg-type]
            if dir_ is not None:
                merged[k] = dir_
                continue
        clash.add(k)
    for one, other in ((ours, theirs), (theirs, ours)):
        for k, (_, new) in one.items():  # a name added for a file whose first name the other side changed
            target = _link_target(new, k, layout) if k not in other else None
            if target is not None and target in other and other[target][1] != one.get(target, (None, None))[1]:
                clash.update((k, target))
        other_paths = sorted(path_of(k) for k in other)
        for k, (old, new) in one.items():
            if _is_dir(old, k, layout) and not _is_dir(new, k, layout):
                below = _under(other_paths, path_of(k))
                if below:
                    clash.add(k)
                    clash.update(_key(p) for p in below)
    # Both sides changed the names of one hard-linked file (a file's names are part of it), differently:
    # e.g. one moved its second name here, the other there.  Its first name's record need not change.
    ours_links, theirs_links = _link_names(ours, layout), _link_names(theirs, layout)
    for target in ours_links.keys() & theirs_links.keys():
        names = ours_links[target] | theirs_links[target]
        if any((k in ours) != (k in theirs) or ours[k][1] != theirs[k][1] for k in names):
            clash.update(names | {target})
    return clash, merged


def _link_names(side: dict[bytes, tuple[bytes | None, bytes | None]], layout: Layout) -> dict[bytes, set[bytes]]:
    """``first name -> the keys of *side* whose old or new record is a further name of that file``."""
    out: dict[bytes, set[bytes]] = {}
    for k, bodies in side.items():
        for body in bodies:
            target = _link_target(body, k, layout)
            if target is not None:
                out.setdefault(target, set()).add(k)
    return out


def _link_target(body: bytes | None, key: bytes, layout: Layout) -> bytes | None:
    """The first name that the record *body* at *key* names if it is a link record, else None (an empty body
    is no record: decoding would reject it)."""
    return decode_body(body, key, layout).link if body and body[0] & F_LINK else None


_DIR_FIELDS = ("mode", "uid", "gid", "size", "xattrs")


def _merge_dir(key: bytes, old_a: bytes | None, new_a: bytes, old_b: bytes | None, new_b: bytes,
               layout: Layout) -> Entry | None:
    """A directory both sides changed: each attribute from the side that changed it (three-way), the
    later mtime (each side's entries changed it); None if both changed one attribute differently."""
    na, nb = decode_body(new_a, key, layout), decode_body(new_b, key, layout)
    oa = decode_body(old_a, key, layout) if _is_dir(old_a, key, layout) else None
    ob = decode_body(old_b, key, layout) if _is_dir(old_b, key, layout) else None
    out = na._replace(mtime_ns=max(na.mtime_ns, nb.mtime_ns))
    for f in _DIR_FIELDS:
        va, vb = getattr(na, f), getattr(nb, f)
        if va == vb:
            continue
        a_changed = oa is None or getattr(oa, f) != va
        b_changed = ob is None or getattr(ob, f) != vb
        if a_changed and b_changed:
            return None
        if b_changed:
            out = out._replace(**{f: vb})
    return out


def _key(path: bytes) -> bytes:
    head, _, name = path.rpartition(b"/")
    return key_of(head, name)


def _their_changes(repo: Repository, ws: str, since: int, head: int) -> dict[bytes, tuple[bytes | None, bytes | None]]:
    """Keys the versions after *since* up to *head* changed: ``key -> (body at since, body at head)``."""
    out: dict[bytes, tuple[bytes | None, bytes | None]] = {}
    records = [repo.record(ws, n) for n in range(since, head + 1)]
    pairs = list(zip(records, records[1:], strict=False))
    if not all(b.changeset and b.parent == a.version for a, b in pairs):
        pairs = [(records[0], records[-1])]  # no chain of changesets: compare the two trees' ranges
    for a, b in pairs:
        items = record_changes(repo, a, b)
        if items is None:
            raise Conflict(f"{ws}@{b.version} is a format 1 version: commit cannot rebase over it")
        for c in items:
            old = out[c.key][0] if c.key in out else c.old
            out[c.key] = (old, c.new)
    return out


def _unseen(repo: Repository, head: Parent, keys: Iterable[bytes], memo: dict[bytes, Memo],
            base_bodies: dict[bytes, bytes], base_rec: VersionRecord) -> dict[bytes, tuple[bytes | None, bytes | None]]:
    """At *keys* and their directories: ``key -> (what this layer saw, the head's body)`` where they differ.

    What the layer saw at a key is the body it last committed there (the
    memo), else the base's; the merge base of a mount that does not show
    other writers' changes.  The head's bodies are its records, already
    loaded; of the base only the ranges holding keys not yet read are.
    """
    want: set[bytes] = set()
    walked: set[bytes] = set()  # directory paths whose ancestors are in want already
    for k in keys:
        want.add(k)
        path = path_of(k)
        while path:
            path = path.rpartition(b"/")[0]
            if path in walked:
                break
            walked.add(path)
            want.add(_key(path) if path else b"")
    at_head = {k: r[1] for k in want if (r := head.records.get(k)) is not None}
    need = want - memo.keys() - base_bodies.keys()
    at_base = {**base_bodies, **(_bodies_at(repo, base_rec, need) if need else {})}
    out: dict[bytes, tuple[bytes | None, bytes | None]] = {}
    for k in want:
        seen = memo[k].body if k in memo else at_base.get(k)
        if seen != at_head.get(k):
            out[k] = (seen, at_head.get(k))
    return out


def _bodies_at(repo: Repository, record: VersionRecord, keys: set[bytes] | None) -> dict[bytes, bytes]:
    """Record bodies of *record*'s version at *keys* (all if None), fetching only the ranges holding them."""
    import bisect

    refs = repo.version_refs(record, packs=False)[0]
    if keys is not None:
        firsts = [r.first for r in refs]
        want = sorted({i for k in keys if (i := bisect.bisect_right(firsts, k) - 1) >= 0 and k <= refs[i].last})
        refs = [refs[i] for i in want]
    out: dict[bytes, bytes] = {}
    for run, bodies in repo.version_range_bodies(refs):
        for e, body in zip(run, bodies, strict=True):
            if keys is None or e.key in keys:
                out[e.key] = body
    return out


def _check_tree(entries: list[Entry]) -> list[bytes]:
    """Paths that make the sorted *entries* no valid tree (a parent that is no directory, a broken hard link)."""
    dirs: set[bytes] = set()
    linked: dict[bytes, int] = {}
    bad: list[bytes] = []
    for e in entries:
        parent = e.key.partition(b"\0")[0]
        if e.key and parent not in dirs:
            bad.append(e.key)
        if e.link is not None:
            if e.link not in linked:
                bad.append(e.key)
            else:
                linked[e.link] += 1
            continue
        if stat.S_ISDIR(e.mode):
            dirs.add(e.path)
        if e.linked:
            linked[e.key] = 0
    bad.extend(k for k, n in linked.items() if n == 0)
    return [path_of(k) for k in sorted(set(bad))]


# -- commit ---------------------------------------------------------------------------


def commit(
    repo: Repository,
    snap: Snapshot,
    *,
    message: str = "",
    author: str | None = None,
    ours: bool = False,
    workers: int = 8,
    progress: Callable[[str, int, int], None] = lambda step, done, total: None,
    cache: BlobCache | None = None,
    catch_up: bool = False,
    _full: bool = False,
) -> tuple[VersionRecord | None, CommitStats]:
    """Publish what *snap* changed since the layer's last commit as the next version of its workspace.

    *catch_up*: with nothing to publish and a newer head, say where the head differs from the layer's
    merged view (:attr:`CommitStats.catch_up`, ``compared``, ``unlike``), for a re-base onto it.

    Returns the published record (None if there was nothing to commit) and
    stats; sets ``snap.publication`` for :meth:`WriteLayer.mark_published`,
    which the caller runs on the layer's thread afterwards.  *cache* (the
    daemon's blob cache): the head's packs are read through it, and the packs
    this commit uploads are offered to it.  *progress(step, done, total)*
    is called as the work goes: ``reading`` (entries read of those that may
    have changed; total 0 while the whole tree is walked), ``building``
    (the new tree's pieces: 0 of 0), ``uploading`` (objects written of those
    to write, large files' chunks during ``reading``).  Raises
    :class:`CommitConflict` (overlap with other writers; nothing published),
    :class:`~wsfs.errors.StoreUnavailable` (exit 8; nothing lost: run it again).

    Python's cyclic garbage collector is paused meanwhile: a commit
    allocates a few objects per entry of the tree (tens of thousands), which
    triggers full collections over everything the process holds (the tree
    kept for the next commit among it), about a third of a 1-file commit's
    CPU time; it creates no reference cycles worth collecting.
    """
    with _gc_paused():
        return _commit(repo, snap, message=message, author=author, ours=ours, workers=workers, progress=progress,
                       cache=cache, catch_up=catch_up, _full=_full)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _commit(
    repo: Repository,
    snap: Snapshot,
    *,
    message: str,
    author: str | None,
    ours: bool,
    workers: int,
    progress: Callable[[str, int, int], None],
    cache: BlobCache | None,
    catch_up: bool,
    _full: bool,
) -> tuple[VersionRecord | None, CommitStats]:
    t0 = time.monotonic()
    mark = [t0]
    stats = CommitStats()
    ws = snap.base_id.workspace
    layout = repo.config.layout
    memo = dict(snap.memo)
    last_v = snap.published_version
    recovered = _recover(repo, snap)
    if recovered is not None:  # an interrupted commit published it: its memo rows come first
        memo.update(recovered.rows)
        last_v = recovered.version
        stats.recovered = recovered.version
    snap.publication = recovered
    push_stats = PushStats()
    spill = _Spill(repo.temp_path("commit"))
    # A commit's chunks are mostly new (written since the base): one under 1 MiB is put unasked.
    uploader = _Uploader(repo, set(), push_stats, workers, ask_below=ASK_BELOW)
    try:
        stats.lap("recover", mark)
        head = repo.latest(ws) or last_v
        stats.lap("latest", mark)
        view = _View(snap, repo, uploader, spill, stats)
        base_rec = repo.record(ws, snap.base_id.version)
        # Every key that differs from the base in the layer's terms (status shows them) is memoised,
        # also where its record did not change (a further name of a hard-linked file written to).
        # A layer with many inodes not committed yet (a tree written whole) is read whole first: the change
        # walk and the read then take rows from memory (the walk took ~2.8 s of a 40,000-entry commit).
        snap.prefetch_if_large(PREFETCH_ALL + len(memo))
        seen = {_key(c.path) if c.path else b"" for c in snap.changes()}
        stats.lap("changes", mark)
        # Candidates: what differs from the base, and what we committed.  Any other key holds the
        # base's entry in the merged view, and the base's record (the same code encodes both).
        # Hard links spoil that (a name's record depends on the file's other names): then the
        # whole merged view is read and compared.
        keys: set[bytes] | None = seen | memo.keys()
        view.progress = progress
        if not _full:
            view.read_keys(keys)
        if _full or view.hard_links or any(m.body and m.body[0] & (F_LINK | F_LINKED) for m in memo.values()):
            keys = None
        # The reference of each key: the memo's body where we committed before, else the base's
        # (only the base's ranges holding candidates are read, from the local piece cache).
        base_bodies = _bodies_at(repo, base_rec, None if keys is None else keys - memo.keys())
        if keys is not None and any(b[0] & (F_LINK | F_LINKED) for b in base_bodies.values()):
            keys = None  # a hard link of the base among them
            base_bodies = _bodies_at(repo, base_rec, None)
        if keys is None:
            view.read_all()
        uploader.wait()  # every chunk read is stored before a piece can name it
        uploader.close()
        stats.lap("read", mark)
        cur = {k: encode_body(e, layout) for k, (e, _, _) in view.entries.items()}
        delta: dict[bytes, tuple[bytes | None, bytes | None]] = {}
        for k in (cur.keys() | memo.keys() | base_bodies.keys()) if keys is None else keys:
            ref = memo[k].body if k in memo else base_bodies.get(k)
            if cur.get(k) != ref:
                delta[k] = (ref, cur.get(k))
        stats.ours = len(delta)
        # Memo rows whose inode or ctime moved though the record did not (a name of the file came and
        # went): refreshed, or status would show them forever.
        stale = {k for k, m in memo.items() if _memo(view, k, cur) != m}
        if not delta:
            news = (seen - memo.keys()) | stale
            if news:  # nothing to publish, but keys to memoise (no version: the last one stays)
                rows = {**(recovered.rows if recovered else {}), **{k: _memo(view, k, cur) for k in news}}
                top = recovered.top if recovered else snap.published_top
                snap.publication = Publication(last_v, top, b"", rows)
            if catch_up and head != snap.base_id.version:
                # The layer holds nothing unpublished: a mount may go on over the head (a re-base), which
                # differs from its merged view where the comparison below says, or off the keys compared.
                at_head = _head(repo, ws, head).records
                stats.catch_up = head
                stats.compared = set(keys) if keys is not None else None
                stats.unlike = {k for k in (keys if keys is not None else cur.keys() | at_head.keys())
                                if cur.get(k) != (r[1] if (r := at_head.get(k)) is not None else None)}
            stats.seconds = time.monotonic() - t0
            return None, stats
        stats.lap("delta", mark)
        parent = _head(repo, ws, head)  # what the new version is built on
        stats.lap("head", mark)
        # A hard-linked file changed under all its names: they all take part in the conflict check.
        links = ((e.key, e.link, cur[k]) for k, (e, _, _) in view.entries.items() if e.link is not None)
        checked = {c.key: (c.old, c.new) for c in with_link_names([Change(k, *delta[k]) for k in sorted(delta)], links)}
        for _attempt in range(REBASES):
            try:
                theirs = _their_changes(repo, ws, last_v, head) if head != last_v else {}
            except NotFound as e:  # versions since ours were dropped (gc): the comparison below covers our keys
                log.info("%s: the versions since %s@%d are not all there any more (%s): other writers' changes "
                         "are taken against what this layer saw", ws, ws, last_v, e)
                theirs = {}
            stats.rebased = bool(theirs)
            # This layer never shows other writers' changes (no re-base): what it saw at a key is what it
            # committed there, else the base's.  A key of ours whose head differs from that was changed by
            # someone else, since our last commit or before it; ours over it unseen would be a lost update.
            theirs.update(_unseen(repo, parent, checked.keys(), memo, base_bodies, base_rec))
            stats.lap("theirs", mark)
            clash, merged_dirs = _overlaps(checked, theirs, layout)
            if clash and not ours:
                raise CommitConflict(sorted(path_of(k) for k in clash))
            tree = {k: e for k, (e, _) in parent.records.items()}
            for k, (_, new) in delta.items():
                if new is None:
                    tree.pop(k, None)
                else:
                    tree[k] = view.entries[k][0]
            tree.update(merged_dirs)
            stats.overwritten = []
            view.read_keys({k for k in clash if k not in view.entries})  # ours where we did not change it
            for k in sorted(clash):  # ours=True: our merged view at every overlapping key
                stats.overwritten.append(path_of(k))
                if k in view.entries:
                    tree[k] = view.entries[k][0]
                else:
                    tree.pop(k, None)
            order = sorted(tree)
            entries = [tree[k] for k in order]
            bad = _check_tree(entries)
            if bad:
                raise CommitConflict(bad, " (merging them would give no valid tree)")
            bodies = {k: _body(k, e, view, cur, parent, layout) for k, e in tree.items()}
            stats.compared = set(keys) if keys is not None else None
            stats.unlike = {k for k in (keys if keys is not None else cur.keys() | tree.keys())
                            if cur.get(k) != bodies.get(k)}
            stats.lap("merge", mark)
            progress("building", 0, 0)
            pack_bytes, plans = _pack_source(repo, parent, view, spill, entries, workers, cache)
            stored = store_tree(repo, parent, entries, [bodies[k] for k in order], pack_bytes, workers,
                                check=False, successor=True,
                                progress=lambda done, total: progress("uploading", done, total), plans=plans)
            if cache is not None:  # the next commit re-cuts some of them: kept on this host, not fetched back
                for pid, data in stored.new_packs.items():
                    cache.offer(pid, data)
            stats.lap("store", mark)
            for k, v in stored.phases.items():
                stats.phases[k] = stats.phases.get(k, 0.0) + v
            stats.changed = stored.changed or 0
            stats.chunks_uploaded = push_stats.blobs_uploaded
            stats.objects_uploaded = push_stats.blobs_uploaded + stored.objects
            stats.bytes_uploaded = push_stats.bytes_uploaded + stored.bytes
            rows = {**(recovered.rows if recovered else {}),
                    **{k: _memo(view, k, cur) for k in delta.keys() | clash | seen | stale}}
            if stored.top_id == parent.top:  # the head already holds our changes: nothing to publish
                snap.publication = Publication(head, parent.top.hex(), b"", rows)
                stats.seconds = time.monotonic() - t0
                return None, stats
            when = datetime.now(UTC).isoformat(timespec="seconds")
            record = version_record(ws, head + 1, stored, when=when, author=author or _default_author(),
                                    message=message, tree=_tree_stats(entries))
            pub = Publication(record.version, record.manifest, record.to_json(), rows)
            snap.sync()  # the state published is durable in the layer (if the layer's thread left that to us)
            snap.write_intent(pub)
            stats.lap("intent", mark)
            created = _create(repo, record)
            stats.lap("record", mark)
            if created:
                assert stored.successor is not None
                _remember(repo, record, stored.successor)
                snap.publication = pub
                stats.version = record.version
                stats.seconds = time.monotonic() - t0
                return record, stats
            head = repo.latest(ws) or head  # another writer took head + 1: rebase onto theirs
            parent = _head(repo, ws, head)
        raise Conflict(f"could not publish a version of {ws!r}: {REBASES} other versions were published meanwhile")
    finally:
        uploader.close()
        spill.close()


# The last version this process published, as a Parent: the next commit of the daemon is built on it
# (unless another writer published since), and decoding all of its ranges again would cost ~0.4 s per
# 20k entries.  ((store, workspace, version, top), parent); one at a time.
_last: tuple[tuple[str, str, int, str], Parent] | None = None
_last_lock = threading.Lock()


def _head(repo: Repository, ws: str, n: int) -> Parent:
    """``Parent.load(repo, ws, n)``, or the same from memory if this process published *n*."""
    hit = _last
    if hit is not None and hit[0][:3] == (repo.store.url, ws, n):
        try:
            if repo.record(ws, n).manifest == hit[0][3]:
                return hit[1]
        except NotFound:
            pass
    return Parent.load(repo, ws, n)


def _remember(repo: Repository, record: VersionRecord, parent: Parent) -> None:
    global _last
    with _last_lock:
        _last = ((repo.store.url, record.workspace, record.version, record.manifest), parent)


def _recover(repo: Repository, snap: Snapshot) -> Publication | None:
    """The publication an interrupted commit made (its record exists and is the intent's), if any."""
    intent = snap.intent()
    if intent is None or intent.version <= snap.published_version or not intent.record:
        return None
    try:
        there = repo.record(snap.base_id.workspace, intent.version).to_json()
    except NotFound:
        return None
    return intent if there == intent.record else None


def _body(key: bytes, e: Entry, view: _View, cur: dict[bytes, bytes], parent: Parent, layout: Layout) -> bytes:
    """The record body of entry *e* of the new tree, encoded once: the head's bytes where the head has the
    same entry, ours (*cur*) where it is our merged view's entry, else encoded (a merged directory)."""
    hit = view.entries.get(key)
    return parent.body(e, layout, cur[key] if hit is not None and hit[0] is e else None)


def _memo(view: _View, key: bytes, cur: dict[bytes, bytes]) -> Memo:
    hit = view.entries.get(key)
    if hit is None:
        return Memo(None, 0, 0)
    return Memo(cur[key], hit[1], hit[2])


def _tree_stats(entries: list[Entry]) -> dict[str, int]:
    s = {"files": 0, "dirs": 0, "symlinks": 0, "specials": 0, "bytes": 0}
    for e in entries:
        if e.link is not None:
            continue
        fmt = stat.S_IFMT(e.mode)
        if fmt == stat.S_IFREG:
            s["files"] += 1
            s["bytes"] += e.size
        elif fmt == stat.S_IFDIR:
            s["dirs"] += 1
        elif fmt == stat.S_IFLNK:
            s["symlinks"] += 1
        else:
            s["specials"] += 1
    return s


def _pack_source(repo: Repository, parent: Parent, view: _View, spill: _Spill, entries: list[Entry], workers: int,
                 cache: BlobCache | None) -> tuple[Callable[[PackPlan], bytes], list[tuple[PackPlan, bytes]]]:
    """Bytes of a pack to build: small files read by this commit or held by the layer, else the head's packs,
    else the base (through the snapshot).

    The packs the new tree needs that the head does not have are planned
    first (:func:`~wsfs.format.tree.plan_packs`, as ``build_version`` will
    cut them), and only the head's packs holding contents they need and
    nothing local has are fetched, in parallel, through *cache* if given (so
    that packs an earlier commit offered it are not fetched at all).  A
    removal needs none of the packs of what it removed.  Returns the
    function and the plans with their signatures (``build_version`` cuts once).
    """
    from concurrent.futures import ThreadPoolExecutor

    layout = repo.config.layout
    need: set[bytes] = set()
    plans = [(plan, plan.signature()) for plan in plan_packs(entries, layout, repo.config.cuts)]
    for plan, sig in plans:
        hit = parent.packs.get(sig)
        if hit is not None and hit[1] == plan.size:
            continue  # the head's pack, reused unread
        need.update(cid for cid, _ in plan.contents if not spill.has(cid) and cid not in view.small_local)
    refs = parent.pack_refs
    where: dict[bytes, tuple[int, int, int]] = {}  # content id -> (index of the head's pack, offset, size)
    if need:
        files = (e for e, _ in parent.records.values())
        for i, (_, contents) in enumerate(pack_contents(files, refs, layout)):
            off = 0
            for cid, size in contents:
                if cid in need and cid not in where:
                    where[cid] = (i, off, size)
                off += size

    def fetch(i: int) -> bytes:
        ref = refs[i]
        place = parent.places.get(ref.id)
        if cache is not None:
            return bytes(cache.read(ref.id, 0, ref.size, size=ref.size, place=place))
        return bytes(repo.get_blob(ref.id, ref.size, "pack", place=place))

    packs: dict[int, bytes] = {}
    wanted = sorted({i for i, _, _ in where.values()})
    if wanted:
        with ThreadPoolExecutor(max_workers=min(workers, len(wanted)), thread_name_prefix="wsfs-packs") as ex:
            packs.update(zip(wanted, ex.map(fetch, wanted), strict=True))

    def pack_bytes(plan: PackPlan) -> bytes:
        out = []
        spilled = spill.read_many([cid for cid, _ in plan.contents])
        for (cid, size), data in zip(plan.contents, spilled, strict=True):
            if data is not None and len(data) == size:  # hashed as it was read, into this commit's own file
                out.append(data)
                continue
            if data is None and cid in view.small_local:
                data = view.snap.read(view.small_local[cid], 0, size)
            if data is None and cid in where:
                i, off, n = where[cid]
                if i not in packs:
                    packs[i] = fetch(i)
                data = packs[i][off:off + n]
            if data is None and cid in view.small_base:
                data = view.snap.read(view.small_base[cid], 0, size)
            if data is None or content_id(data) != cid:
                raise IntegrityError(f"the content of a small file ({cid.hex()[:16]}) could not be found")
            out.append(data)
        return b"".join(out)

    return pack_bytes, plans


def _create(repo: Repository, record: VersionRecord) -> bool:
    """Create *record* (conditional put); True if it is ours now, False if another writer took the number.

    A put whose answer was lost is recognised by reading the record back.
    """
    for _ in range(3):
        try:
            repo.publish(record)
            return True
        except Conflict:
            pass
        except StoreUnavailable:
            pass  # it may or may not have been created: ask
        try:
            there = repo.record(record.workspace, record.version)
        except NotFound:
            continue  # not created: try again
        return there.to_json() == record.to_json()
    raise StoreUnavailable(f"could not create {record.workspace}@{record.version}: the store keeps failing")


def commit_layer(repo: Repository, layer, **kw) -> tuple[VersionRecord | None, CommitStats]:  # noqa: ANN001, ANN003
    """Snapshot, commit and record it in one thread (``wsfs commit`` with no daemon, tests), in the order the
    daemon uses across its threads: the fsyncs are the snapshot's (:meth:`Snapshot.sync`, before the
    record is created; :meth:`Snapshot.recorded`, before the intent goes)."""
    snap = layer.snapshot(durable=False)
    try:
        out = commit(repo, snap, **kw)
        layer.mark_published(snap, durable=False)
        snap.recorded()
        return out
    finally:
        snap.close()
