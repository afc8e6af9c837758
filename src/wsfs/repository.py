"""A repository: the format's objects stored in an ObjectStore.

Owns the key layout (``docs/architecture.md`` section "Repository layout"),
verification of everything read back, conditional publication of versions
and tags, and the local copy of manifests (``<cache>/manifests``).  Imports
``store`` and ``format`` only.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import queue
import re
import stat
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor, Future
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import blake3

from wsfs.errors import (
    AlreadyExists,
    Conflict,
    FormatError,
    IntegrityError,
    InvalidName,
    NotFound,
    StoreTimeout,
    StoreUnavailable,
    UsageError,
    WsfsError,
)
from wsfs.format import tree
from wsfs.format.blobs import (
    BlobDecoder,
    content_id,
    declared_size,
    decode_blob,
    decompress,
    encode_blob,
    hexid,
    parse_hexid,
)
from wsfs.format.index import INDEX_VERSION, IndexObserver, build_index
from wsfs.format.manifest import VALIDATION_VERSION, Manifest, check_database
from wsfs.format.names import check_tag, check_workspace, version_number
from wsfs.format.records import REPO_KEY, RepoConfig, VersionRecord
from wsfs.localfs import private_dir, private_file, remove_stale, temp_name, temp_pid, touch_private
from wsfs.store import ObjectStore, open_store

log = logging.getLogger(__name__)

TMP_DIR = "tmp"  # <cache>/tmp: every temporary file of the cache but the blob cache's own
# A temporary file of <cache>/tmp (a push's manifest) whose creator is alive is
# kept this long (a pid may be reused); one whose creator is dead goes at once.
TMP_MAX_AGE = 7 * 86400
_VERSION_DIGITS = 10  # zero-padded so that store listings sort numerically
_REF_RE = re.compile(r"(?P<ws>[^@]+)(?:@(?P<ref>.+))?")


def blob_key(cid: bytes) -> str:
    h = hexid(cid)
    return f"blobs/{h[:2]}/{h}"


def segment_key(sid: bytes) -> str:
    h = hexid(sid)
    return f"segments/{h[:2]}/{h}"


def pack_map_key(top: bytes) -> str:
    h = hexid(top)
    return f"packmaps/{h[:2]}/{h}"


# The packs a push adds are uploaded back to back in segments of about this
# many encoded bytes (format.md, "Where packs are stored"): a cold mount then
# reads them with a few large ranged GETs instead of one GET per 24-40 KiB pack.
SEGMENT_TARGET = 16 * 1024 * 1024
# Consecutive packs of one segment are read with one ranged GET of up to this
# many bytes (gaps of dead packs up to RUN_GAP are read through).
RUN_MAX = 2 * 1024 * 1024
RUN_GAP = 64 * 1024


def joins_run(first: tree.Place | None, last: tree.Place | None, nxt: tree.Place | None) -> bool:
    """Whether the pack at *nxt* can be read with the run of packs *first* .. *last* (one ranged GET):
    the same segment, just after it (a gap of at most ``RUN_GAP``), all within ``RUN_MAX``."""
    if first is None or last is None or nxt is None or nxt.segment is None or nxt.segment != last.segment:
        return False
    return 0 <= nxt.offset - (last.offset + last.length) <= RUN_GAP and nxt.offset + nxt.length - first.offset <= RUN_MAX


def manifest_key(cid: bytes) -> str:
    h = hexid(cid)
    return f"manifests/{h[:2]}/{h}"


def version_key(ws: str, n: int) -> str:
    return f"workspaces/{ws}/versions/{n:0{_VERSION_DIGITS}d}"


def tag_key(ws: str, tag: str) -> str:
    return f"workspaces/{ws}/tags/{tag}"


def profile_key(ws: str, n: int) -> str:
    return f"workspaces/{ws}/profiles/{n:0{_VERSION_DIGITS}d}"


# No manifest is larger than this, whatever its record says: a record is
# untrusted input, and its size is how much a download may write to disk.
MAX_MANIFEST_SIZE = 16 * 1024**3
PROFILE_MAX_CHUNKS = 100_000  # an access profile names at most this many chunks (3.2 MB of ids)


SMALL_OBJECT_MAX = 1 << 20  # the descriptor, a version record or a tag: never more than this is read


def _ours(path: str) -> bool:
    """Whether *path* is a regular file of this process' effective user that no one else may write.

    A symbolic link is not followed: in a cache directory someone else can
    write (root using a user's cache), that user's link to a file of ours
    (another version's index, a blob holding a crafted database) is not ours.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _pack_map_limit(packs: int) -> int:
    """How many bytes a pack map of at most *packs* places may take: a segment id and a place per pack, the header."""
    return 64 + packs * 64


def _get_small(store: ObjectStore, key: str, limit: int = SMALL_OBJECT_MAX) -> bytes:
    """A small object (JSON, an access profile), read only up to *limit* bytes; larger is IntegrityError.

    Its size is the store's to choose, and the store is not trusted: a
    multi-gigabyte "version record" must not be read into memory.
    """
    raw = store.get_range(key, 0, limit + 1)
    if len(raw) > limit:
        raise IntegrityError(f"object {key} is larger than the {limit} bytes such an object may have")
    return raw


@dataclass(frozen=True)
class Ref:
    """``WORKSPACE[@V]`` as typed by a user: V is a number, a tag or absent (latest)."""

    workspace: str
    ref: str | None

    @classmethod
    def parse(cls, text: str) -> Ref:
        m = _REF_RE.fullmatch(text)
        if not m:
            raise UsageError(f"expected WORKSPACE[@VERSION], got {text!r}")
        ws = check_workspace(m["ws"])
        ref = m["ref"]
        if ref is not None and version_number(ref) is None:
            check_tag(ref)
        return cls(ws, ref)

    def __str__(self) -> str:
        return self.workspace if self.ref is None else f"{self.workspace}@{self.ref}"


def tidy_cache_dir(cache_dir: str) -> int:
    """Make *cache_dir* private (0700) and remove the files of ``<cache>/tmp`` whose creator is dead (one
    listing of a small directory); returns how many were removed.  See docs/daemon.md, "The blob cache"."""
    private_dir(cache_dir)
    return remove_stale(os.path.join(cache_dir, TMP_DIR), temp_pid, TMP_MAX_AGE)


def _temp_path(cache_dir: str, prefix: str, suffix: str = "") -> str:
    """A fresh path (not created) in the private ``<cache>/tmp``, named with our pid (see tidy_cache_dir)."""
    return temp_name(private_dir(os.path.join(cache_dir, TMP_DIR)), prefix, suffix)


def _local_dir(cache_dir: str, url: str) -> str:
    """Where local copies of one repository's immutable small objects live (descriptor, records)."""
    return os.path.join(cache_dir, "repos", blake3.blake3(url.encode()).hexdigest()[:16])


class _Abandoned(Exception):
    """A fetched range nobody will take (the caller stopped reading): not decoded."""


def _checked_refs(listing: list[tree.Ref], got: Iterable[list[tree.Ref]]) -> Iterator[tree.Ref]:
    """The references of listing pieces as they arrive, each piece checked against its reference in *listing*."""
    last: bytes | None = None
    for lref, sub in zip(listing, got, strict=True):
        if (not sub or sub[0].first != lref.first or sub[-1].last != lref.last
                or sum(r.count for r in sub) != lref.count or (last is not None and not sub[0].first > last)):
            raise IntegrityError(f"listing piece {hexid(lref.id)} does not match its reference")
        last = sub[-1].last
        yield from sub


class _Listing:
    """The references a version's listing pieces *listing* hold, fetched through *ex*: the first *now*
    pieces are asked for at once, the others by :meth:`ask_rest` (or when :meth:`refs` reaches them)."""

    def __init__(self, repo: Repository, listing: list[tree.Ref], ex: Executor, now: int) -> None:
        self._repo = repo
        self._listing = listing
        self._ex = ex
        self._asked = [ex.submit(self._fetch, ref) for ref in listing[:now]]

    def _fetch(self, ref: tree.Ref) -> list[tree.Ref]:
        return tree.decode_listing(self._repo.get_piece(ref.id, ref.size, "listing piece"), tree.MAX_PIECE)

    def ask_rest(self) -> None:
        self._asked.extend(self._ex.submit(self._fetch, ref) for ref in self._listing[len(self._asked):])

    def refs(self) -> Iterator[tree.Ref]:
        """The references, in order, as the pieces arrive, each piece checked against its reference."""
        def pieces() -> Iterator[list[tree.Ref]]:
            for k in range(len(self._listing)):
                if k == len(self._asked):
                    self.ask_rest()
                yield self._asked[k].result()

        return _checked_refs(self._listing, pieces())


@contextmanager
def _atomic_file(path: str, cache_dir: str, check: Callable[[str], None] | None = None) -> Iterator[BinaryIO]:
    """A local cache file (0600, in 0700 directories) written under a temporary name and renamed into place
    if the block succeeds.  The temporary file is in ``<cache>/tmp`` (same file system), named with our
    pid: if we are killed, the next command removes it (:meth:`Repository.__init__`).

    *check*, if given, is called with the temporary file's path once it is
    written and closed; an exception from it leaves nothing behind.
    """
    private_dir(os.path.dirname(path))
    tmp = _temp_path(cache_dir, "write")
    fd = private_file(tmp, os.O_WRONLY | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        if check is not None:
            check(tmp)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_atomically(path: str, data: bytes | memoryview, cache_dir: str) -> None:
    with _atomic_file(path, cache_dir) as f:
        f.write(data)


_MANIFEST_PIECES_AHEAD = 16  # pieces (of STREAM_PIECE bytes) received ahead of the decoder


def _read_ahead(pieces: Generator[bytes, None, None], depth: int) -> Generator[bytes, None, None]:
    """*pieces*, pulled by a thread up to *depth* ahead of the consumer, so that
    receiving and processing overlap (both release the GIL).  The generator is
    closed however the consumer ends; an error in the thread is raised here."""
    q: queue.Queue[tuple[bytes | None, BaseException | None]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[bytes | None, BaseException | None]) -> bool:
        while not stop.is_set():  # never blocks for good: the consumer may have left
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pull() -> None:
        try:
            for piece in pieces:
                if not put((piece, None)):
                    return
            put((None, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((None, e))
        finally:
            pieces.close()

    t = threading.Thread(target=pull, name="wsfs-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            piece, err = q.get()
            if err is not None:
                raise err
            if piece is None:
                return
            yield piece
    finally:
        stop.set()
        t.join()


class Repository:
    """Blobs, manifests, versions and tags of one repository."""

    def __init__(self, store: ObjectStore, config: RepoConfig, cache_dir: str) -> None:
        self.store = store
        self.config = config
        self.cache_dir = cache_dir
        self._manifest_lock = threading.Lock()
        self._listings_ahead: dict[str, Future[list[str]]] = {}  # see open(listing=)
        # Every command opens a repository: the cache is made private and its leftovers go.
        tidy_cache_dir(cache_dir)

    def temp_path(self, prefix: str, suffix: str = "") -> str:
        """A fresh path (not created) in the private ``<cache>/tmp``, removed by the next command if we are killed."""
        return _temp_path(self.cache_dir, prefix, suffix)

    # -- opening ----------------------------------------------------------

    @classmethod
    def init(cls, store: ObjectStore, config: RepoConfig, cache_dir: str) -> Repository:
        """Create a repository in an empty store location; refuse if one exists."""
        try:
            store.put_if_absent(REPO_KEY, config.to_json())
        except AlreadyExists:
            raise AlreadyExists(f"a repository already exists at {store.url}") from None
        return cls(store, config, cache_dir)

    @classmethod
    def open(cls, store: ObjectStore, cache_dir: str, *, listing: str | None = None) -> Repository:
        """Open the repository in *store*.

        The descriptor is read from the local copy when there is one (it never
        changes after ``init``), so opening a repository costs no request;
        otherwise it is fetched and the copy written.  *listing*: a workspace
        whose versions the caller lists next (``resolve`` of ``WORKSPACE``
        without ``@V``); when the descriptor must be fetched, that listing is
        requested beside it, in a thread, and :meth:`versions` takes it: the
        first mount on a host waits one round trip less.
        """
        local = os.path.join(_local_dir(cache_dir, store.url), REPO_KEY)
        try:
            with open(local, "rb") as f:
                return cls(store, RepoConfig.from_json(f.read()), cache_dir)
        except (FileNotFoundError, FormatError):
            pass
        ahead: Future[list[str]] | None = None
        if listing is not None:
            check_workspace(listing)
            ahead = Future()
            prefix = f"workspaces/{listing}/versions/"

            def fetch(out: Future[list[str]]) -> None:
                try:
                    out.set_result(list(store.list(prefix)))
                except BaseException as e:  # noqa: BLE001 - raised where the listing is taken
                    out.set_exception(e)

            threading.Thread(target=fetch, args=(ahead,), name="wsfs-listing", daemon=True).start()
        try:
            raw = _get_small(store, REPO_KEY)
        except NotFound:
            raise NotFound(f"no wsfs repository at {store.url} (create one with: wsfs init {store.url})") from None
        repo = cls(store, RepoConfig.from_json(raw), cache_dir)
        if listing is not None and ahead is not None:
            repo._listings_ahead[listing] = ahead
        _write_atomically(local, raw, cache_dir)
        return repo

    @classmethod
    def open_url(cls, url: str, cache_dir: str, *, endpoint_url: str | None = None) -> Repository:
        return cls.open(open_store(url, endpoint_url=endpoint_url), cache_dir)

    def upgrade(self) -> None:
        """Make a format 1 repository format 2: its descriptor only (versions keep their own format)."""
        config = RepoConfig(format=2, chunk_size=self.config.chunk_size, inline_threshold=self.config.inline_threshold)
        raw = config.to_json()
        self.store.put(REPO_KEY, raw)
        _write_atomically(os.path.join(_local_dir(self.cache_dir, self.store.url), REPO_KEY), raw, self.cache_dir)
        self.config = config

    def reload_config(self) -> None:
        """Read the descriptor from the store again (another host may have upgraded it)."""
        raw = _get_small(self.store, REPO_KEY)
        self.config = RepoConfig.from_json(raw)
        _write_atomically(os.path.join(_local_dir(self.cache_dir, self.store.url), REPO_KEY), raw, self.cache_dir)

    # -- local state ------------------------------------------------------

    def local_state(self, name: str) -> bytes | None:
        """File *name* of this repository's private local directory in the cache, or None if there is none."""
        try:
            fd = os.open(os.path.join(_local_dir(self.cache_dir, self.store.url), name),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def save_local_state(self, name: str, data: bytes) -> None:
        """Replace file *name* of this repository's local directory (private, atomic)."""
        _write_atomically(os.path.join(_local_dir(self.cache_dir, self.store.url), name), data, self.cache_dir)

    # -- blobs ------------------------------------------------------------

    def has_blob(self, cid: bytes) -> bool:
        return self.store.exists(blob_key(cid))

    def put_blob(self, cid: bytes, data: bytes) -> int:
        """Store *data* (whose id is *cid*); returns the bytes written to the store."""
        enc = encode_blob(data)
        self.store.put(blob_key(cid), enc)
        return len(enc)

    def get_blob(
        self, cid: bytes, size: int | None, what: str = "blob", *, place: tree.Place | None = None
    ) -> bytes | memoryview:
        """Fetch, decode and verify a blob of *size* plaintext bytes (a raw one as a view, see decode_blob).

        *size* is what the referencing manifest declares (a chunk's length);
        None means "at most one chunk" (the repository's chunk size), for
        callers that do not know it.  *place*: a pack stored in a segment
        (read with a ranged GET).  One retry before IntegrityError, whose
        message names the blob as *what* (``pack``, ``range``...).
        """
        if place is not None and place.segment is not None:
            seg, start, length = segment_key(place.segment), place.offset, place.length

            def fetch() -> bytes:
                return self.store.get_range(seg, start, length)
        else:
            key = blob_key(cid)

            def fetch() -> bytes:
                return self.store.get(key)
        try:
            try:
                return self._decode_blob(cid, fetch(), size, what)
            except IntegrityError:
                # A torn read on the way; a second failure is real.
                return self._decode_blob(cid, fetch(), size, what)
        except NotFound:
            raise IntegrityError(f"{what} {hexid(cid)} is missing from the store") from None

    def get_pack_run(self, run: list[tuple[bytes, int, tree.Place]]) -> list[bytes | memoryview | WsfsError]:
        """Packs ``(id, size, place)`` stored close together in one segment, read with one ranged GET.

        Each is decoded and verified on its own: the result is its bytes or
        the IntegrityError it failed with (a store failure raises).
        """
        seg = run[0][2].segment
        assert seg is not None and all(p.segment == seg for _, _, p in run)
        start = min(p.offset for _, _, p in run)
        end = max(p.offset + p.length for _, _, p in run)
        raw = memoryview(self.store.get_range(segment_key(seg), start, end - start))
        out: list[bytes | memoryview | WsfsError] = []
        for cid, size, p in run:
            try:
                piece = raw[p.offset - start : p.offset - start + p.length]
                if len(piece) != p.length:
                    raise IntegrityError(f"segment {hexid(seg)} ends before pack {hexid(cid)}")
                out.append(self._decode_blob(cid, bytes(piece), size, "pack"))
            except IntegrityError as e:
                out.append(e)
        return out

    def pack_places(self, record: VersionRecord, packs: int) -> list[tree.Place]:
        """Where each of a format 2 version's *packs* packs is stored (its pack map; all blobs of their own if none)."""
        if packs == 0:
            return []  # no packs, no map
        return self._decode_pack_map(record, self._pack_map_raw(record, packs), packs, packs)

    def _pack_map_raw(self, record: VersionRecord, packs_at_most: int) -> bytes | None:
        """The stored pack map of *record* (None if it has none), read up to what *packs_at_most* places take."""
        try:
            return _get_small(self.store, pack_map_key(parse_hexid(record.manifest)), _pack_map_limit(packs_at_most))
        except NotFound:
            return None

    def _decode_pack_map(
        self, record: VersionRecord, raw: bytes | None, packs: int, packs_at_most: int
    ) -> list[tree.Place]:
        """*raw* (:meth:`_pack_map_raw` with *packs_at_most*) as the places of exactly *packs* packs."""
        if packs == 0:
            return []
        if raw is None:
            return [tree.STANDALONE] * packs
        limit = _pack_map_limit(packs_at_most)
        try:
            data = decompress(raw[0], memoryview(raw)[1:], declared_size(raw, limit)) if raw else b""
        except IntegrityError as e:
            raise IntegrityError(f"pack map of {record.workspace}@{record.version} is malformed: {e}") from None
        return tree.decode_pack_map(data, packs, f"pack map of {record.workspace}@{record.version}")

    def _decode_blob(self, cid: bytes, stored: bytes, size: int | None, what: str) -> bytes | memoryview:
        if size is None:
            # Unknown size: bounded by one chunk, and exact once the header said it.
            size = declared_size(stored, self.config.chunk_size)
        return decode_blob(cid, stored, size, what)

    # -- manifests --------------------------------------------------------

    def put_manifest(self, path: str) -> tuple[str, int]:
        """Upload a finished manifest database; returns ``(hex id, plaintext size)``."""
        with open(path, "rb") as f:
            raw = f.read()
        cid = blake3.blake3(raw).digest()
        key = manifest_key(cid)
        if not self.store.exists(key):
            self.store.put(key, encode_blob(raw))
        self._cache_manifest_file(cid, raw)
        return hexid(cid), len(raw)

    def _manifest_path(self, cid: bytes) -> str:
        return os.path.join(self.cache_dir, "manifests", f"{hexid(cid)}.sqlite")

    def _cache_manifest_file(self, cid: bytes, raw: bytes | memoryview) -> str:
        path = self._manifest_path(cid)
        if not os.path.exists(path):
            _write_atomically(path, raw, self.cache_dir)
        return path

    # -- format 2 pieces ---------------------------------------------------

    def _piece_path(self, cid: bytes) -> str:
        h = hexid(cid)
        return os.path.join(self.cache_dir, "pieces", h[:2], h)

    def get_piece(self, cid: bytes, size: int, what: str = "piece") -> bytes:
        """A metadata piece of a format 2 version (top, listing, range, changeset), verified.

        Kept in ``<cache>/pieces`` (private, shared by every version and
        workspace): a host that has version N fetches only what N+1 changed.
        The local copy is hashed again on every use (about 1 ms per MiB).
        """
        if not 0 < size <= tree.MAX_PIECE:
            raise IntegrityError(f"{what} {hexid(cid)} has an invalid size {size}")
        path = self._piece_path(cid)
        if _ours(path):
            try:
                with open(path, "rb") as f:
                    data = f.read(size + 1)
            except FileNotFoundError:
                pass
            else:
                if len(data) == size and content_id(data) == cid:
                    return data
        data = bytes(self.get_blob(cid, size, what))
        _write_atomically(path, data, self.cache_dir)
        return data

    def put_pieces(
        self,
        pieces: list[tree.Piece],
        workers: int = 8,
        *,
        packs: list[bytes] | None = None,
        places: dict[bytes, tree.Place] | None = None,
        check: bool = True,
        places_out: dict[bytes, tree.Place] | None = None,
        progress: Callable[[int, int], None] | None = None,
        encoding: Callable[[bytes, bytes], Future[bytes]],
    ) -> tuple[int, int, int]:
        """Store the pieces that have data and are not stored yet.

        Returns ``(objects, bytes, pieces)`` uploaded: objects count segments
        and the pack map, pieces count what of *pieces* was written (a pack
        as the piece it is, inside its segment).

        Children before parents: ranges and the changeset first, the packs not
        stored yet in new segments and the pack map beside them, the listing
        pieces once the ranges are stored, the top once everything is. So a
        stored top means its pack map, its listings and every piece they list
        are stored, and a stored listing piece means its ranges are: a push of
        a tree some workspace already has costs a HEAD of its top, not one per
        piece (gc must delete parents before children). *packs* are the
        version's pack ids in order and *places* where the parent's packs are
        stored: a pack is stored again (in a segment) unless its place is
        known. Metadata pieces are also kept locally, so that the next push
        and mount on this host need not fetch them.

        With *check* False nothing is asked (no HEAD): every piece with data
        is written (a commit's new pieces are new; a PUT costs what a HEAD
        does).  *places_out* receives where every pack is stored.
        *progress(done, total)* is called after each object written (from
        the pool's threads; total grows as the levels are known).
        *encoding(id, bytes)*: a future of the pack's ``encode_blob``, from
        the caller's compression pool (which may have started it already).
        """
        from concurrent.futures import ThreadPoolExecutor

        packs = packs or []
        places = dict(places or {})
        pack_ids = set(packs)
        todo = {p.id: p for p in pieces if p.data is not None}
        kind = {pid: bytes(p.data[:4]) for pid, p in todo.items() if p.data is not None}
        tops = [pid for pid in todo if pid not in pack_ids and kind[pid] == tree.MAGIC_TOP]
        lists = [pid for pid in todo if pid not in pack_ids and kind[pid] == tree.MAGIC_LIST]
        leaves = [pid for pid in todo if pid not in pack_ids and kind[pid] not in (tree.MAGIC_TOP, tree.MAGIC_LIST)]
        stored: set[bytes] = set()
        sizes: list[int] = []

        def data(pid: bytes) -> bytes:
            d = todo[pid].data
            assert d is not None
            return d

        def ask(pool: ThreadPoolExecutor, ids: list[bytes]) -> list[bytes]:
            """Those of *ids* not known stored that the store does not have."""
            ids = [pid for pid in ids if pid not in stored]
            missing = [pid for pid, there in zip(ids, pool.map(self.has_blob, ids), strict=True) if not there]
            stored.update(set(ids) - set(missing))
            return missing

        written: list[bytes] = []  # pieces written as blobs of their own (list.append: safe from the pool's threads)
        new_packs: list[tuple[bytes, bytes]] = []  # packs written into new segments

        expected = [0]

        def advanced() -> None:
            if progress is not None:
                progress(len(sizes), expected[0])

        def put(pid: bytes) -> None:
            sizes.append(self.put_blob(pid, data(pid)))
            written.append(pid)
            advanced()

        def put_object(key: str, raw: bytes) -> None:
            self.store.put(key, raw)
            sizes.append(len(raw))
            advanced()

        # Segments go through a pool of their own: in the leaves' pool they queued behind every range's PUT and
        # local copy (a whole-tree commit's ~200 ranges), though they are the largest uploads and can start as
        # soon as their packs are compressed.
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsfs-pieces") as pool, \
                ThreadPoolExecutor(max_workers=max(2, workers // 2), thread_name_prefix="wsfs-segments") as seg_pool:
            if check:
                missing_tops = ask(pool, tops)
                for pid in tops:
                    if pid in stored:
                        top = tree.decode_top(data(pid))
                        stored.update(r.id for r in top.ranges + top.packs)
                missing_lists = ask(pool, lists)
                for pid in lists:
                    if pid in stored:
                        stored.update(r.id for r in tree.decode_listing(data(pid), tree.MAX_PIECE) if r.id not in pack_ids)
                missing_leaves = [pid for pid in ask(pool, leaves) if pid not in stored]
            else:
                missing_tops, missing_lists, missing_leaves = tops, lists, leaves
            # Leaves, new segments and the pack map all go at once: the leaves are the listings' children, the
            # segments and the map the top's; so the listings go once the leaves are stored, while segments may
            # still be on their way (the largest uploads: a whole-tree commit's 72 listings waited ~0.3 s for them).
            uploads: list[Future[None]] = [pool.submit(put, pid) for pid in missing_leaves]
            # Ranges, listings, tops (small) are kept on this host too, written beside the uploads.
            uploads += [pool.submit(_write_atomically, self._piece_path(pid), p.data, self.cache_dir)
                        for pid, p in todo.items()
                        if p.data is not None and pid not in pack_ids and len(p.data) <= tree.MAX_PIECE]
            expected[0] = len(missing_leaves) + sum(pid not in stored for pid in missing_lists + missing_tops)
            top_children: list[Future[None]] = []  # segments, the pack map, listings
            if missing_tops and packs:
                # A new tree: the packs whose place is not known go into new segments, then the map says where all
                # are.  The packs are compressed in the caller's pool (zstd lets go of the GIL), not in the upload
                # pool, where they waited behind every leaf's PUT (a whole-tree commit's ~200 ranges: ~1 s at
                # 20 ms RTT).  Each segment is uploaded as soon as it is cut (seg_pool).
                new_packs = [(pid, data(pid)) for pid in dict.fromkeys(packs) if pid not in places and pid in todo]
                futures = collections.deque(encoding(pid, d) for pid, d in new_packs)

                def packed() -> Iterator[tuple[bytes, bytes]]:  # each compressed pack let go once in its segment
                    for pid, _ in new_packs:
                        yield pid, futures.popleft().result()

                for sid, raw in self._segments(packed(), places):
                    expected[0] += 1
                    top_children.append(seg_pool.submit(put_object, segment_key(sid), raw))
                pack_map = encode_blob(tree.encode_pack_map([places.get(pid, tree.STANDALONE) for pid in packs]))
                expected[0] += 1
                top_children.append(seg_pool.submit(put_object, pack_map_key(missing_tops[0]), pack_map))
            for f in uploads:
                f.result()
            top_children += [pool.submit(put, pid) for pid in missing_lists if pid not in stored]
            for f in top_children:
                f.result()
            list(pool.map(put, [pid for pid in missing_tops if pid not in stored]))
        if places_out is not None:
            places_out.update(places)
        return len(sizes), sum(sizes), len(written) + len(new_packs)

    @staticmethod
    def _segments(encoded: Iterable[tuple[bytes, bytes]], places: dict[bytes, tree.Place]) -> Iterator[tuple[bytes, bytes]]:
        """Cut the *encoded* packs ``(id, encoded bytes)``, in order, into segments ``(id, bytes)``, each given as
        soon as it is cut; records each pack's place in *places*."""
        run: list[tuple[bytes, bytes]] = []
        used = 0
        for pid, enc in encoded:
            run.append((pid, enc))
            used += len(enc)
            if used >= SEGMENT_TARGET:
                yield Repository._segment(run, places)
                run, used = [], 0
        if run:
            yield Repository._segment(run, places)

    @staticmethod
    def _segment(run: list[tuple[bytes, bytes]], places: dict[bytes, tree.Place]) -> tuple[bytes, bytes]:
        raw = b"".join(enc for _, enc in run)
        sid = content_id(raw)
        offset = 0
        for pid, enc in run:
            places[pid] = tree.Place(sid, offset, len(enc))
            offset += len(enc)
        return sid, raw

    def version_refs(self, record: VersionRecord, *, packs: bool = True) -> tuple[list[tree.Ref], list[tree.Ref]]:
        """``(range references, pack references)`` of a format 2 version: its top and listing pieces, checked.

        With *packs* False the packs' listing is not fetched (an empty list is returned for it).
        """
        from concurrent.futures import ThreadPoolExecutor

        top = self.version_top(record)
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="wsfs-pieces") as ex:
            ranges = self.listing_refs(top.ranges, ex)
            pack_refs = self.listing_refs(top.packs, ex) if packs else iter(())
            return list(ranges), list(pack_refs)

    def version_top(self, record: VersionRecord) -> tree.Top:
        """The top piece of a format 2 version, verified."""
        return tree.decode_top(self.get_piece(parse_hexid(record.manifest), record.manifest_size, "top"))

    def listing_refs(self, listing: list[tree.Ref], ex: Executor) -> Iterator[tree.Ref]:
        """The references the listing pieces *listing* hold, in order, each piece checked against its reference.

        Every piece is asked of *ex* now (in order, so the first ones come first); the references come as
        the pieces arrive: a caller that needs only the first ones does not wait for the rest.
        """
        return _Listing(self, listing, ex, len(listing)).refs()

    def version_ranges(self, refs: Iterable[tree.Ref], workers: int = 16) -> Iterator[list[tree.Entry]]:
        """The entries of each range of *refs*, in order, fetched in parallel and checked against the references."""
        return (entries for entries, _ in self.version_range_bodies(refs, workers))

    def version_range_bodies(
        self, refs: Iterable[tree.Ref], workers: int = 16, decode_ahead: int = 8, first: int = 16, head: int = 2,
        after_first: Callable[[], None] | None = None,
    ) -> Iterator[tuple[list[tree.Entry], list[bytes]]]:
        """As :meth:`version_ranges`, with each entry's record body as stored.

        The first *head* ranges are asked for at once (the call waits for their references when *refs* is
        still receiving them), the others (*workers* in flight, in order) as soon as the caller comes back
        for its second range, having done its work on the first (*after_first* is called then); they come
        back in order.  Until then the first range has the GIL to itself: with all 32 requests out at once, the
        other responses (verified, decompressed) made a cold mount's first ``ls``, which waits for the
        first range's rows, wait 0.1 s more at 20 ms RTT (``docs/benchmarks.md``, "first range first").
        Each range is decoded by the thread that fetched it (beside the caller's own work: SQLite inserts
        of the index run without the GIL), but only once it is among the *decode_ahead* ranges after the
        last one the caller took (2 while the caller is in its *first* ranges): decoding is CPU work under
        the GIL, and 32 fetchers decoding at once made the first range wait for all the others: 0.4-0.8 s
        at 20 ms RTT (``docs/benchmarks.md``, "ordered decoding").
        """
        from concurrent.futures import ThreadPoolExecutor

        layout = self.config.layout
        turn = threading.Condition()
        taken = 0  # ranges the caller has taken
        stopped = False

        def one(k: int, ref: tree.Ref) -> tuple[list[tree.Entry], list[bytes]]:
            data = self.get_piece(ref.id, ref.size, "range")
            with turn:
                while k >= taken + (2 if taken < first else decode_ahead) and not stopped:
                    turn.wait()
                if stopped:
                    raise _Abandoned
            entries, bodies = tree.decode_range_bodies(data, layout, f"range {hexid(ref.id)}")
            if len(entries) != ref.count or not entries or entries[0].key != ref.first or entries[-1].key != ref.last:
                raise IntegrityError(f"range {hexid(ref.id)} does not match its reference")
            return entries, bodies

        head = max(1, head)
        rest = iter(refs)
        ahead = list(itertools.islice(rest, head))
        if len(ahead) < head and len(ahead) <= 1:  # (no more references: a single range at most)
            if after_first is not None:
                after_first()
            return (one(0, ref) for ref in ahead)
        ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsfs-pieces")
        futures = [ex.submit(one, k, ref) for k, ref in enumerate(ahead)]  # now, not when the caller asks
        del ahead

        def in_order() -> Iterator[tuple[list[tree.Entry], list[bytes]]]:
            nonlocal taken, stopped
            try:
                k = 0
                while True:
                    if k == 1:  # the caller is done with the first range: the rest now
                        if after_first is not None:
                            after_first()
                        futures.extend(ex.submit(one, j, ref) for j, ref in enumerate(rest, len(futures)))
                    if k == len(futures):
                        return
                    got = futures[k].result()
                    with turn:
                        taken += 1
                        turn.notify_all()
                    yield got
                    k += 1
            finally:
                with turn:  # fetchers waiting for their turn give up: nobody will take their ranges
                    stopped = True
                    turn.notify_all()
                ex.shutdown(wait=True, cancel_futures=True)

        return in_order()

    def _index_path(self, cid: bytes) -> str:
        return os.path.join(self.cache_dir, "manifests", f"{hexid(cid)}.index")

    def _build_index(self, record: VersionRecord, path: str, observer: IndexObserver | None = None) -> None:
        """Write the local index of format 2 *record* to *path* (renamed into place once complete).

        Nothing waits for more than it needs: after the top, the first listing piece of ranges and the
        first two of packs; the first two ranges as soon as the first piece is there; once the first range
        is written, the other listing pieces and the pack map, and the other ranges as soon as their
        references are known (32 in flight:
        the 20,022-file tree has 104 ranges, 4 round trips rather than 7); the entries go into the
        index range by range as they arrive, in order, taking the pack references as the packed files
        need them, and the pack map is read at the end.  *observer* sees every range's rows as written
        (``format.index.IndexObserver``: a mount serves the first requests from them).
        """
        from concurrent.futures import ThreadPoolExecutor

        top = self.version_top(record)
        files = sum(r.count for r in top.packs)  # packed files: at least as many as packs
        tmp = _temp_path(self.cache_dir, "index")
        ex = ThreadPoolExecutor(max_workers=16, thread_name_prefix="wsfs-listings")
        one = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsfs-packmap")
        try:
            try:
                # The first range holds the root's rows, which a mount's first `ls` waits for: it is asked
                # for as soon as the first listing piece of ranges gives its reference, and it is decoded
                # and written with few other requests running (each costs ~2 ms of CPU under the GIL): only
                # the first two listing pieces of packs beside it.  Everything else once it is written.
                range_listing = _Listing(self, top.ranges, ex, 1)
                pack_listing = _Listing(self, top.packs, ex, 2)
                raw_map: Future[bytes | None] | None = None

                def ask_rest() -> None:
                    nonlocal raw_map
                    range_listing.ask_rest()
                    pack_listing.ask_rest()
                    if raw_map is None and files:
                        raw_map = one.submit(self._pack_map_raw, record, files)

                def places(n: int) -> list[tree.Place]:
                    ask_rest()
                    return self._decode_pack_map(record, raw_map.result() if raw_map is not None else None, n, files)

                ranges = (entries for entries, _ in self.version_range_bodies(range_listing.refs(), workers=32,
                                                                              after_first=ask_rest))
                build_index(tmp, ranges, pack_listing.refs(), self.config.layout, {"top": record.manifest}, places,
                            observer)
            finally:
                # After a failure (or a mount that stopped the build), what was not asked for yet never is.
                ex.shutdown(wait=True, cancel_futures=True)
                one.shutdown(wait=True, cancel_futures=True)
            os.chmod(tmp, 0o600)
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def manifest_path(self, record: VersionRecord) -> str:
        """Local path of a version's manifest, fetched and verified if not cached yet (format 2: its local index,
        built from verified pieces if there is none that is ours and private, see :func:`_ours`)."""
        cid = parse_hexid(record.manifest)
        if record.format == 2:
            path = self._index_path(cid)
            if _ours(path):
                return path
            with self._manifest_lock:
                if not _ours(path):
                    private_dir(os.path.dirname(path))
                    self._build_index(record, path)
            return path
        path = self._manifest_path(cid)
        if os.path.exists(path):
            return path
        with self._manifest_lock:
            if os.path.exists(path):
                return path
            try:
                self._download_manifest(cid, record.manifest_size, path)
            except NotFound:
                raise IntegrityError(
                    f"manifest {record.manifest} of {record.workspace}@{record.version} is missing from the store"
                ) from None
            return path

    def index_path(self, record: VersionRecord) -> str:
        """Where format 2 *record*'s local index is (or will be, once built)."""
        return self._index_path(parse_hexid(record.manifest))

    def index_cached(self, record: VersionRecord) -> bool:
        """Whether format 2 *record* has a local index of ours (opening it then costs no request)."""
        return record.format == 2 and _ours(self._index_path(parse_hexid(record.manifest)))

    def open_index_observed(self, record: VersionRecord, observer: IndexObserver) -> Manifest:
        """Format 2 *record*'s local index, built (if need be) with *observer* seeing its rows as they are
        written (a mount answers its first requests from them), then opened as :meth:`open_manifest` does."""
        path = self._index_path(parse_hexid(record.manifest))
        with self._manifest_lock:
            if not _ours(path):
                private_dir(os.path.dirname(path))
                self._build_index(record, path, observer)
        return self._open_index(record, path)

    def _download_manifest(self, cid: bytes, size: int, path: str) -> None:
        """Stream manifest *cid* of *size* bytes into *path*: decoded and written as it arrives, renamed when verified.

        The manifest is on the critical path of every first mount of a
        version; streaming overlaps its decompression, hashing and writing
        with the download instead of doing them after it.  Nothing larger
        than the record's declared *size* is written (and that must fit the
        disk), and the file gets its name only once its hash and its SQLite
        structure (:func:`~wsfs.format.manifest.check_database`) passed.
        """
        if not 0 < size <= MAX_MANIFEST_SIZE:
            raise IntegrityError(f"manifest {hexid(cid)} has an invalid size {size} in its version record")
        st = os.statvfs(private_dir(os.path.dirname(path)))
        if size > st.f_bavail * st.f_frsize:
            raise WsfsError(
                f"not enough space in {os.path.dirname(path)} for manifest {hexid(cid)} ({size} bytes)"
            )
        checked = False

        def check(tmp: str) -> None:
            nonlocal checked
            checked = True
            check_database(tmp)

        for attempt in (1, 2):
            # A failed request is the store's to retry (it has); a stream that
            # breaks or fails verification part-way is started over once.  A
            # verified manifest that fails the structure check is not.
            pieces = self.store.get_stream(manifest_key(cid))
            decoder = BlobDecoder(cid, size, "manifest")
            try:
                with _atomic_file(path, self.cache_dir, check) as f, \
                        closing(_read_ahead(pieces, _MANIFEST_PIECES_AHEAD)) as ahead:
                    for piece in ahead:
                        f.write(decoder.feed(piece))
                    f.write(decoder.finish())
                return
            except (IntegrityError, StoreUnavailable) as e:
                # Not again: a verified manifest that failed the structure check,
                # or a store that stopped answering.
                if attempt == 2 or checked or isinstance(e, StoreTimeout):
                    raise

    def open_manifest(self, record: VersionRecord) -> Manifest:
        """The version's manifest, downloaded if need be, validated the first time this cache opens it.

        A manifest is immutable and its cached copy private (0600 in a 0700
        directory), so once it passed :meth:`Manifest.validate` a marker file
        (``<id>.sqlite.valid<N>``, N = the validation rules' version) lets
        later opens skip it: 30-40 ms per 20,000 files on every mount.
        Copies cached before those rules existed have no marker and are
        validated on their next open.  The marker counts only if it and the
        manifest belong to us: in a cache directory someone else controls
        (root using a user's cache), every open validates.  A format 2
        version is read through its local index (:meth:`_open_index`).
        """
        path = self.manifest_path(record)
        if record.format == 2:
            return self._open_index(record, path)
        marker = f"{path}.valid{VALIDATION_VERSION}"
        validated = _ours(marker) and _ours(path)
        try:
            m = Manifest(path, validate=not validated, max_inline=self.config.inline_threshold)
        except IntegrityError:
            for bad in (path, marker):  # a cached copy that went bad is dropped; the next open fetches again
                try:
                    os.unlink(bad)
                except FileNotFoundError:
                    pass
            raise
        if m.chunk_size != self.config.chunk_size:
            m.close()
            raise FormatError(f"manifest chunk size {m.chunk_size} differs from the repository's")
        if not validated:
            try:
                touch_private(marker)
            except OSError as e:  # only costs the next open a validation
                log.debug("cannot mark %s as validated: %s", path, e)
        return m

    def _open_index(self, record: VersionRecord, path: str) -> Manifest:
        """The local index of format 2 *record* at *path*: built by this host from verified pieces, so not validated.

        :meth:`manifest_path` rebuilds a file that is not ours and private;
        one that is but is not this version's index (renamed in a cache
        directory someone else can write, or damaged), or was built by other
        code (another ``INDEX_VERSION``), is dropped and built again, once.
        """
        for attempt in (1, 2):
            try:
                m = Manifest(path, validate=False)
            except (IntegrityError, FormatError):
                pass
            else:
                if m.index and m.meta.get("top") == record.manifest and m.meta.get("index_version") == INDEX_VERSION:
                    return m
                m.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            if attempt == 1:
                path = self.manifest_path(record)
        raise IntegrityError(f"the local index of {record.workspace}@{record.version} ({path}) is not that version's")

    # -- workspaces, versions, tags -----------------------------------------

    def workspaces(self) -> list[str]:
        """Workspace names; a folder under ``workspaces/`` that is no valid name is skipped with a warning."""
        return [w for w in self.store.list_dirs("workspaces/") if self._valid("workspace", w, check_workspace)]

    @staticmethod
    def _valid(kind: str, name: str, check: Callable[[str], object]) -> bool:
        try:
            check(name)
            return True
        except InvalidName:
            log.warning("ignoring a stray object in the store: %s %r is not a valid name", kind, name)
            return False

    def versions(self, ws: str) -> list[int]:
        """Version numbers of *ws*, ascending; keys that are no version number are skipped with a warning."""
        check_workspace(ws)
        out = []
        ahead = self._listings_ahead.pop(ws, None)
        for key in ahead.result() if ahead is not None else self.store.list(f"workspaces/{ws}/versions/"):
            name = key.rsplit("/", 1)[1]
            n = version_number(name)
            if n is None or len(name) != _VERSION_DIGITS:
                log.warning("ignoring a stray object in the store: %r is not a version record", key)
                continue
            out.append(n)
        return sorted(out)

    def latest(self, ws: str, *, offline_ok: bool = False) -> int | None:
        """The newest version of *ws* (a listing).

        With *offline_ok*, an unreachable store falls back to the newest
        version whose record is cached locally, with a warning.
        """
        try:
            vs = self.versions(ws)
        except StoreUnavailable:
            if not offline_ok:
                raise
            cached = self._cached_versions(ws)
            if not cached:
                raise
            log.warning("store unreachable: using %s@%d, the newest version known locally", ws, cached[-1])
            return cached[-1]
        return vs[-1] if vs else None

    def _record_path(self, ws: str, n: int) -> str:
        return os.path.join(_local_dir(self.cache_dir, self.store.url), "records", ws, f"{n}.json")

    def _cached_versions(self, ws: str) -> list[int]:
        try:
            names = os.listdir(os.path.dirname(self._record_path(ws, 1)))
        except FileNotFoundError:
            return []
        return sorted(v for n in names if n.endswith(".json") and (v := version_number(n[:-5])) is not None)

    def record(self, ws: str, n: int, *, stored: bool = False) -> VersionRecord:
        """A version's record; from the local copy if there is one (records are immutable), unless
        *stored*: then always the store's (fsck checks what the store holds)."""
        check_workspace(ws)
        local = self._record_path(ws, n)
        if not stored:
            try:
                with open(local, "rb") as f:
                    return VersionRecord.from_json(f.read(), workspace=ws, version=n)
            except (FileNotFoundError, IntegrityError, FormatError):
                pass
        try:
            raw = _get_small(self.store, version_key(ws, n))
        except NotFound:
            raise NotFound(f"workspace {ws!r} has no version {n}") from None
        record = VersionRecord.from_json(raw, workspace=ws, version=n)
        if not stored:
            _write_atomically(local, raw, self.cache_dir)
        return record

    def publish(self, record: VersionRecord) -> None:
        """Create a version record iff that version number is free; else raise Conflict."""
        raw = record.to_json()
        try:
            self.store.put_if_absent(version_key(record.workspace, record.version), raw)
        except AlreadyExists:
            raise Conflict(f"version {record.workspace}@{record.version} was published by another writer") from None
        try:  # as record() would keep it when read: the next commit on this host need not GET it
            _write_atomically(self._record_path(record.workspace, record.version), raw, self.cache_dir)
        except OSError as e:  # the version exists: a local copy missing costs a GET later, nothing else
            log.warning("could not keep a local copy of %s@%d: %s", record.workspace, record.version, e)

    def tags(self, ws: str) -> dict[str, int]:
        """``{tag: version}``; a tag with an invalid name or a malformed object is skipped with a warning."""
        check_workspace(ws)
        out = {}
        for key in self.store.list(f"workspaces/{ws}/tags/"):
            tag = key.rsplit("/", 1)[1]
            if not self._valid("tag", tag, check_tag):
                continue
            try:
                out[tag] = self._read_tag(ws, tag)
            except IntegrityError as e:
                log.warning("ignoring tag %s@%s: %s", ws, tag, e)
        return out

    def _read_tag(self, ws: str, tag: str) -> int:
        try:
            raw = _get_small(self.store, tag_key(ws, tag))
        except NotFound:
            raise NotFound(f"workspace {ws!r} has no version or tag {tag!r}") from None
        try:
            n = json.loads(raw)["version"]
            if type(n) is not int or n < 1:
                raise TypeError
            return n
        except (ValueError, KeyError, TypeError, RecursionError):
            raise IntegrityError(f"tag {ws}@{tag} is malformed") from None

    def set_tag(self, ws: str, tag: str, n: int) -> None:
        check_tag(tag)
        self.record(ws, n)  # the version must exist
        try:
            self.store.put_if_absent(tag_key(ws, tag), json.dumps({"version": n}).encode() + b"\n")
        except AlreadyExists:
            raise AlreadyExists(f"tag {ws}@{tag} already exists (tags are immutable)") from None

    # -- access profiles ----------------------------------------------------

    def put_profile(self, ws: str, n: int, cids: list[bytes]) -> None:
        """Record which large content a mount of ``ws@n`` read, in first-read order.

        Advisory data: the last writer wins, and a failure only costs the next
        mount its prefetch.  Stored as the concatenated 32-byte ids.
        """
        check_workspace(ws)
        self.store.put(profile_key(ws, n), b"".join(cids[:PROFILE_MAX_CHUNKS]))

    def get_profile(self, ws: str, n: int) -> list[bytes]:
        """The access profile of ``ws@n``, or of the newest earlier version that has one; [] if none."""
        check_workspace(ws)
        numbered = {version_number(k.rsplit("/", 1)[1]): k for k in self.store.list(f"workspaces/{ws}/profiles/")}
        older = [v for v in numbered if v is not None and v <= n]
        if not older:
            return []
        raw = _get_small(self.store, numbered[max(older)], PROFILE_MAX_CHUNKS * 32)
        if len(raw) % 32:
            raise IntegrityError(f"access profile {numbered[max(older)]} is malformed")
        return [raw[i : i + 32] for i in range(0, len(raw), 32)][:PROFILE_MAX_CHUNKS]

    def resolve(self, ref: Ref) -> VersionRecord:
        """The record a ``WORKSPACE[@V]`` names."""
        ws = ref.workspace
        if ref.ref is None:
            n = self.latest(ws, offline_ok=True)
            if n is None:
                raise NotFound(f"workspace {ws!r} has no versions (push one with: wsfs push DIR {ws})")
        else:
            n = version_number(ref.ref)
            if n is None:
                n = self._read_tag(ws, ref.ref)
        return self.record(ws, n)
