"""Format 2: a version as sorted metadata ranges and content packs, under a two-level listing.

A version's tree is the sorted sequence of its **entries**, one per path.  An
entry's **key** is ``parent path + NUL + name`` (the root's key is empty), so
a directory's entries are contiguous and sorted by name, a directory comes
before its entries, and the sequence can be cut into pieces that each hold a
run of keys.  Every piece is a blob (``blobs/<id>``, codec byte + payload,
id = blake3 of the plaintext) like a chunk, and is verified before use.

* **range**: a run of consecutive entries' records (metadata only);
* **pack**: the bytes of a run of consecutive small files (``0 < size <=
  inline threshold``), each distinct content once, in key order of first
  occurrence; no header: offsets follow from the records' sizes and ids;
* **listing piece**: references to consecutive ranges (or packs): id,
  plaintext size, entry (or file) count, first and last key;
* **top**: references to the listing pieces of ranges, then of packs.  The
  version record names the top (its ``manifest`` field).

Where pieces are cut depends only on the entries (content-defined, as
lakeFS's Graveler cuts ranges): a range ends after an entry once it holds at
least ``range_min`` bytes and the entry's key hashes to 0 mod ``range_r``
(or at ``range_max``); a pack ends after a file once it holds ``pack_min``
bytes and the file's *content id* hashes to 0 mod ``pack_r`` (so a renamed
subtree keeps its packs); listing pieces end after a reference whose id does.
So the same tree gives the same pieces whatever history produced it, an edit
rewrites only the pieces around it, and a second workspace with the same
tree stores nothing new.  The measurements behind the choice are in
``docs/decisions/manifest-v2.md``; the byte layout in ``docs/format.md``.

A **changeset** (one per version with a parent) lists the keys whose
records differ from the parent's, with both records.

Everything decoded here is untrusted: every length, count and value is
bounded, keys must be strictly increasing and well formed, and anything else
raises :class:`~wsfs.errors.IntegrityError`.  Structural rules that need the
whole tree (a parent is a directory, hard links name a file) are checked by
whoever assembles the entries (:mod:`wsfs.format.index`).
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import blake3

from wsfs.errors import FormatError, IntegrityError, InvalidName
from wsfs.format.blobs import content_id
from wsfs.format.manifest import MAX_XATTR_VALUE, PATH_MAX, Place, content_id_chunked
from wsfs.format.names import NAME_MAX, check_entry_name

EMPTY_ID = blake3.blake3(b"").digest()
ZERO_ID = bytes(32)  # a chunk of zeros (a hole) in a large file's chunk list

MAGIC_RANGE = b"WSR2"
MAGIC_LIST = b"WSL2"
MAGIC_TOP = b"WST2"
MAGIC_CHANGES = b"WSC2"
MAGIC_MAP = b"WSM2"

F_LINK = 1  # a further name of a file: the record is only the key of its first name
F_LINKED = 2  # this file has further names later in key order
F_XATTRS = 4
_FLAGS = F_LINK | F_LINKED | F_XATTRS

MAX_XATTRS = 1024
MAX_KEY = 1024 * 1024  # keys hold whole parent paths, which may exceed PATH_MAX (push walks by descriptors)
MAX_PIECE = 64 * 1024 * 1024  # no range, listing piece, top or changeset is larger (plaintext)
_KINDS = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK)


@dataclass(frozen=True)
class Cuts:
    """Where pieces are cut (raw plaintext bytes); repository parameters fixed at ``wsfs init``."""

    range_min: int = 16 * 1024
    range_r: int = 128
    range_max: int = 256 * 1024
    pack_min: int = 24 * 1024
    pack_r: int = 3
    pack_max: int = 4 * 1024 * 1024
    list_min: int = 8 * 1024
    list_r: int = 16
    list_max: int = 256 * 1024

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if type(value) is not int or not 1 <= value <= MAX_PIECE:
                raise FormatError(f"piece parameter {name}={value!r} is out of range")
        for kind in ("range", "pack", "list"):
            if getattr(self, f"{kind}_min") > getattr(self, f"{kind}_max"):
                raise FormatError(f"piece parameter {kind}_min exceeds {kind}_max")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Layout(NamedTuple):
    """What decoding a record needs from the repository: which files are packed, chunk count of the rest."""

    chunk_size: int
    inline_threshold: int


class Entry(NamedTuple):
    """One path of a version (a record of a range)."""

    key: bytes
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    rdev: int = 0
    target: bytes | None = None  # symlinks
    content: bytes | None = None  # regular files: blake3 of a small file / content_id_chunked of a large one
    chunks: tuple[bytes, ...] = ()  # large files: chunk ids, ZERO_ID for a hole
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    link: bytes | None = None  # a further name of a file: the key of its first name
    linked: bool = False  # this file has further names

    @property
    def path(self) -> bytes:
        return path_of(self.key)


def key_of(parent: bytes, name: bytes) -> bytes:
    """The key of entry *name* of directory *parent* (a path relative to the root, ``b""`` for the root)."""
    return parent + b"\0" + name


def path_of(key: bytes) -> bytes:
    """The path (relative to the root, ``/``-separated) of the entry with *key*."""
    parent, _, name = key.partition(b"\0")
    return parent + b"/" + name if parent else name


def packed(e: Entry, layout: Layout) -> bool:
    """Whether entry *e*'s content lives in a pack."""
    return e.link is None and stat.S_ISREG(e.mode) and 0 < e.size <= layout.inline_threshold


# -- varints ------------------------------------------------------------------


def put_uv(out: bytearray, n: int) -> None:
    """Append *n* as an unsigned LEB128 varint."""
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def put_bytes(out: bytearray, b: bytes) -> None:
    """Append *b* preceded by its length."""
    put_uv(out, len(b))
    out += b


def _cut(h: bytes, r: int) -> bool:
    return int.from_bytes(h[:8], "little") % r == 0


class _Reader:
    """A cursor over untrusted bytes: every read is bounded, any overrun is IntegrityError."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes | memoryview, what: str, magic: bytes = b"") -> None:
        self.buf = bytes(buf)
        self.what = what
        if self.buf[: len(magic)] != magic:
            raise self.bad("wrong kind of piece")
        self.pos = len(magic)

    def bad(self, why: str) -> IntegrityError:
        return IntegrityError(f"{self.what} is malformed: {why}")

    def uv(self, limit: int = (1 << 64) - 1) -> int:
        buf, pos = self.buf, self.pos
        if pos < len(buf) and buf[pos] < 0x80:  # one byte: most numbers of a record
            n = buf[pos]
            if n > limit:
                raise self.bad(f"a value ({n}) exceeds {limit}")
            self.pos = pos + 1
            return n
        n = shift = 0
        while True:
            if pos >= len(buf):
                raise self.bad("truncated")
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                raise self.bad("a number is too long")
        self.pos = pos
        if n > limit:
            raise self.bad(f"a value ({n}) exceeds {limit}")
        return n

    def raw(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise self.bad("truncated")
        b = self.buf[self.pos : end]
        self.pos = end
        return b

    def bytes_(self, limit: int) -> bytes:
        return self.raw(self.uv(limit))

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.bad("trailing bytes")


# -- records ------------------------------------------------------------------


def encode_body(e: Entry, layout: Layout) -> bytes:
    """An entry's record without its key (also the form a changeset stores)."""
    out = bytearray()
    flags = (F_LINK if e.link is not None else 0) | (F_LINKED if e.linked else 0) | (F_XATTRS if e.xattrs else 0)
    put_uv(out, flags)
    if e.link is not None:
        put_bytes(out, e.link)
        return bytes(out)
    put_uv(out, e.mode)
    put_uv(out, e.uid)
    put_uv(out, e.gid)
    put_uv(out, e.size)
    m = e.mtime_ns
    put_uv(out, (m << 1) ^ (m >> 63))  # zigzag: times before 1970 are negative
    fmt = stat.S_IFMT(e.mode)
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        put_uv(out, e.rdev)
    elif fmt == stat.S_IFLNK:
        assert e.target is not None
        put_bytes(out, e.target)
    elif fmt == stat.S_IFREG and e.size:
        if e.size <= layout.inline_threshold:
            assert e.content is not None
            out += e.content
        else:
            out += b"".join(e.chunks)
    if e.xattrs:
        put_uv(out, len(e.xattrs))
        for name, value in e.xattrs:
            put_bytes(out, name)
            put_bytes(out, value)
    return bytes(out)


def _check_key(r: _Reader, key: bytes, checked: bytes | None = None) -> bytes:
    """Check *key*'s names; returns its parent path.  The names of a parent
    equal to *checked* (the previous key's, already checked) are not checked again."""
    parent, sep, name = key.partition(b"\0")
    if not sep:
        raise r.bad("a key without a name")
    try:
        check_entry_name(name)
        if parent and parent != checked:
            for part in parent.split(b"/"):
                check_entry_name(part)
    except InvalidName:
        raise r.bad(f"invalid entry name in key {key[:200]!r}") from None
    return parent


def _decode_body(r: _Reader, key: bytes, layout: Layout) -> Entry:
    flags = r.uv(_FLAGS)
    if flags & F_LINK:
        if flags != F_LINK:
            raise r.bad(f"{key!r}: a link with other flags")
        link = r.bytes_(MAX_KEY)
        if not link < key:
            raise r.bad(f"{key!r}: a hard link must name an earlier key")
        return Entry(key, link=link)
    mode = r.uv(0o177777)
    fmt = stat.S_IFMT(mode)
    if fmt not in _KINDS:
        raise r.bad(f"{key!r}: unknown file type {fmt:o}")
    uid = r.uv(0xFFFFFFFF)
    gid = r.uv(0xFFFFFFFF)
    size = r.uv(1 << 62)
    z = r.uv()
    mtime = (z >> 1) ^ -(z & 1)
    rdev, target, content, chunks = 0, None, None, ()
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        rdev = r.uv()
    elif fmt == stat.S_IFLNK:
        target = r.bytes_(PATH_MAX - 1)
        if not target or b"\0" in target or size != len(target):
            raise r.bad(f"{key!r}: invalid symlink target")
    elif fmt == stat.S_IFREG:
        if size == 0:
            content = EMPTY_ID
        elif size <= layout.inline_threshold:
            content = r.raw(32)
        else:
            n = -(-size // layout.chunk_size)
            raw = r.raw(32 * n)
            chunks = tuple(raw[i : i + 32] for i in range(0, len(raw), 32))
            content = content_id_chunked(size, layout.chunk_size, (None if c == ZERO_ID else c for c in chunks))
    if fmt != stat.S_IFREG and (flags & F_LINKED):
        raise r.bad(f"{key!r}: only regular files have further names")
    if fmt not in (stat.S_IFREG, stat.S_IFLNK, stat.S_IFDIR) and size:
        raise r.bad(f"{key!r}: a size on a special file")
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    if flags & F_XATTRS:
        n = r.uv(MAX_XATTRS)
        if n == 0:
            raise r.bad(f"{key!r}: an empty xattr list")
        items = []
        for _ in range(n):
            name = r.bytes_(NAME_MAX)
            value = r.bytes_(MAX_XATTR_VALUE)
            if not name or b"\0" in name or (items and name <= items[-1][0]):
                raise r.bad(f"{key!r}: invalid or unsorted xattr name")
            items.append((name, value))
        xattrs = tuple(items)
    return Entry(key, mode, uid, gid, size, mtime, rdev, target, content, chunks, xattrs, None, bool(flags & F_LINKED))


def decode_body(body: bytes, key: bytes, layout: Layout, what: str = "record") -> Entry:
    """The entry that :func:`encode_body` encoded (IntegrityError if malformed)."""
    r = _Reader(body, what)
    e = _decode_body(r, key, layout)
    r.end()
    return e


# -- ranges -------------------------------------------------------------------


def shared_prefix(a: bytes, b: bytes) -> int:
    """The length of the longest common prefix of *a* and *b*.

    In C: the first differing byte is the highest set bit of the XOR of both as big-endian integers
    (a byte loop in Python was 0.18 s of a 30,000-key range encoding, this 0.05 s).
    """
    limit = min(len(a), len(b))
    x = int.from_bytes(a[:limit], "big") ^ int.from_bytes(b[:limit], "big")
    return limit - ((x.bit_length() + 7) >> 3)


def encode_range(entries: Sequence[Entry], layout: Layout, bodies: Sequence[bytes] | None = None) -> bytes:
    out = bytearray(MAGIC_RANGE)
    put_uv(out, len(entries))
    prev = b""
    for i, e in enumerate(entries):
        key = e.key
        n = shared_prefix(prev, key)
        put_uv(out, n)
        put_bytes(out, key[n:])
        out += bodies[i] if bodies is not None else encode_body(e, layout)
        prev = key
    return bytes(out)


def decode_range(data: bytes | memoryview, layout: Layout, what: str = "range") -> list[Entry]:
    """The entries of a range, keys strictly increasing and well formed."""
    return decode_range_bodies(data, layout, what)[0]


def decode_range_bodies(data: bytes | memoryview, layout: Layout, what: str = "range") -> tuple[list[Entry], list[bytes]]:
    """The entries of a range and each one's record body as stored (what a changeset compares)."""
    r = _Reader(data, what, MAGIC_RANGE)
    n = r.uv(len(r.buf))
    out: list[Entry] = []
    bodies: list[bytes] = []
    prev: bytes | None = None
    parent: bytes | None = None  # of the previous key, whose names were checked
    for _ in range(n):
        shared = r.uv(len(prev) if prev is not None else 0)
        key = (prev or b"")[:shared] + r.bytes_(MAX_KEY)
        if prev is not None and not key > prev:
            raise r.bad("keys are not strictly increasing")
        if key or prev is not None:
            parent = _check_key(r, key, parent)
        start = r.pos
        e = _decode_body(r, key, layout)
        if not key and not stat.S_ISDIR(e.mode):
            raise r.bad("the root is not a directory")
        out.append(e)
        bodies.append(r.buf[start : r.pos])
        prev = key
    r.end()
    return out, bodies


# -- listings -----------------------------------------------------------------


class Ref(NamedTuple):
    """A reference to a piece: id, plaintext size, how many entries (or files) it holds, its key bounds."""

    id: bytes
    size: int
    count: int
    first: bytes
    last: bytes


def _encode_refs(out: bytearray, refs: Sequence[Ref]) -> None:
    put_uv(out, len(refs))
    for ref in refs:
        out += ref.id
        put_uv(out, ref.size)
        put_uv(out, ref.count)
        put_bytes(out, ref.first)
        put_bytes(out, ref.last)


def _decode_refs(r: _Reader, limit: int) -> list[Ref]:
    n = r.uv(len(r.buf))
    refs: list[Ref] = []
    for _ in range(n):
        ref = Ref(r.raw(32), r.uv(limit), r.uv(1 << 40), r.bytes_(MAX_KEY), r.bytes_(MAX_KEY))
        if ref.count < 1 or ref.first > ref.last or (refs and not ref.first > refs[-1].last):
            raise r.bad("piece references are empty, out of order or overlapping")
        refs.append(ref)
    return refs


def encode_listing(refs: Sequence[Ref]) -> bytes:
    out = bytearray(MAGIC_LIST)
    _encode_refs(out, refs)
    return bytes(out)


def decode_listing(data: bytes | memoryview, limit: int, what: str = "listing piece") -> list[Ref]:
    """References of a listing piece; *limit* bounds each referenced piece's size."""
    r = _Reader(data, what, MAGIC_LIST)
    refs = _decode_refs(r, limit)
    r.end()
    return refs


class Top(NamedTuple):
    ranges: list[Ref]  # listing pieces of ranges
    packs: list[Ref]  # listing pieces of packs


def encode_top(top: Top) -> bytes:
    out = bytearray(MAGIC_TOP)
    _encode_refs(out, top.ranges)
    _encode_refs(out, top.packs)
    return bytes(out)


def decode_top(data: bytes | memoryview, what: str = "top") -> Top:
    r = _Reader(data, what, MAGIC_TOP)
    top = Top(_decode_refs(r, MAX_PIECE), _decode_refs(r, MAX_PIECE))
    r.end()
    if not top.ranges or top.ranges[0].first != b"":
        raise r.bad("the tree has no root")
    return top


# -- building a version's pieces ------------------------------------------------


class Piece(NamedTuple):
    """A piece to store: its id and plaintext (None: already stored, known from the parent)."""

    id: bytes
    data: bytes | None


def _listing(refs: list[Ref], cuts: Cuts, known: Callable[[bytes], bool], out: list[Piece]) -> list[Ref]:
    """Cut *refs* into listing pieces (appended to *out*); returns references to the pieces."""
    tops: list[Ref] = []
    run: list[Ref] = []
    raw = 0
    for i, ref in enumerate(refs):
        run.append(ref)
        raw += 46 + len(ref.first) + len(ref.last)
        last = i == len(refs) - 1
        if last or raw >= cuts.list_max or (raw >= cuts.list_min and _cut(ref.id, cuts.list_r)):
            data = encode_listing(run)
            pid = content_id(data)
            out.append(Piece(pid, None if known(pid) else data))
            tops.append(Ref(pid, len(data), sum(x.count for x in run), run[0].first, run[-1].last))
            run, raw = [], 0
    return tops


class PackPlan(NamedTuple):
    """A pack to be: the packed files it holds (key order), its distinct contents, their total size."""

    files: list[Entry]
    contents: list[tuple[bytes, int]]  # (content id, size), distinct, in order of first occurrence
    size: int

    def signature(self) -> bytes:
        """Identifies the pack's bytes without reading them: its contents' ids in order."""
        return content_id(b"".join(cid for cid, _ in self.contents))


def plan_packs(entries: Iterable[Entry], layout: Layout, cuts: Cuts) -> Iterator[PackPlan]:
    """Group the packed files of *entries* (sorted) into packs, cut by content id."""
    files: list[Entry] = []
    contents: list[tuple[bytes, int]] = []
    seen: set[bytes] = set()
    raw = 0
    for e in entries:
        if not packed(e, layout):
            continue
        assert e.content is not None
        files.append(e)
        if e.content not in seen:
            seen.add(e.content)
            contents.append((e.content, e.size))
            raw += e.size
        if raw >= cuts.pack_max or (raw >= cuts.pack_min and _cut(e.content, cuts.pack_r)):
            yield PackPlan(files, contents, raw)
            files, contents, seen, raw = [], [], set(), 0
    if files:
        yield PackPlan(files, contents, raw)


def build_version(
    entries: Sequence[Entry],
    layout: Layout,
    cuts: Cuts,
    *,
    known: Callable[[bytes], bool] = lambda cid: False,
    known_packs: dict[bytes, tuple[bytes, int]] | None = None,
    pack_bytes: Callable[[PackPlan], bytes],
    bodies: Sequence[bytes] | None = None,
    known_ranges: dict[bytes, tuple[Ref, list[bytes], list[bytes]]] | None = None,
    pack_ids: list[bytes] | None = None,
    refs_out: tuple[list[Ref], list[Ref], list[bytes]] | None = None,
    plans: Sequence[tuple[PackPlan, bytes]] | None = None,
    on_pack: Callable[[bytes, bytes], None] | None = None,
) -> tuple[bytes, bytes, list[Piece]]:
    """Encode a version: ``(top id, top plaintext, pieces)``.

    *entries* are sorted by key, root first.  *known(id)* says a piece is
    already stored (the parent references it): it is listed with no data.
    *known_packs* maps a pack's :meth:`PackPlan.signature` to ``(id, size)``
    of a stored pack, so unchanged packs are neither read nor hashed;
    *pack_bytes* returns the bytes of any other pack.  *bodies* are the
    entries' :func:`encode_body`, if the caller has them already.
    *known_ranges* maps the first key of a stored range to ``(its reference,
    its keys, its bodies)``: a range cut with the same keys and bodies is that
    range, and is neither encoded nor hashed again.  *pack_ids*, if given,
    receives the version's pack ids in order (what its pack map describes);
    *refs_out*, if given, its range and pack references and its packs'
    signatures (three lists, extended).  *plans*: the packs as
    ``plan_packs(entries, layout, cuts)`` cuts them, each with its
    signature, if the caller has them already.  *on_pack(id, bytes)* is
    called for each pack to store, as soon as it is built.
    """
    known_packs = known_packs or {}
    known_ranges = known_ranges or {}
    # Packs first: a caller compressing them as they come (on_pack) does so while the ranges are encoded.
    pack_pieces: list[Piece] = []
    pack_refs: list[Ref] = []
    signatures: list[bytes] = []
    if plans is None:
        plans = [(plan, plan.signature()) for plan in plan_packs(entries, layout, cuts)]
    for plan, sig in plans:
        signatures.append(sig)
        hit = known_packs.get(sig)
        if hit is not None and hit[1] == plan.size:
            pid, data = hit[0], None
        else:
            data = pack_bytes(plan)
            if len(data) != plan.size:
                raise IntegrityError(f"pack content is {len(data)} bytes, expected {plan.size}")
            pid = content_id(data)
            if known(pid):
                data = None
        pack_pieces.append(Piece(pid, data))
        if data is not None and on_pack is not None:
            on_pack(pid, data)
        pack_refs.append(Ref(pid, plan.size, len(plan.files), plan.files[0].key, plan.files[-1].key))
        if pack_ids is not None:
            pack_ids.append(pid)
    pieces: list[Piece] = []
    range_refs: list[Ref] = []
    run: list[Entry] = []
    run_bodies: list[bytes] = []
    raw = 0
    n = len(entries)
    for i, e in enumerate(entries):
        body = bodies[i] if bodies is not None else encode_body(e, layout)
        run.append(e)
        run_bodies.append(body)
        raw += len(body) + len(e.key) + 2
        if i == n - 1 or raw >= cuts.range_max or (
            raw >= cuts.range_min and _cut(blake3.blake3(e.key).digest(), cuts.range_r)
        ):
            same = known_ranges.get(run[0].key)
            if same is not None and same[2] == run_bodies and same[1] == [x.key for x in run]:
                pieces.append(Piece(same[0].id, None))
                range_refs.append(same[0])
            else:
                data = encode_range(run, layout, run_bodies)
                rid = content_id(data)
                pieces.append(Piece(rid, None if known(rid) else data))
                range_refs.append(Ref(rid, len(data), len(run), run[0].key, run[-1].key))
            run, run_bodies, raw = [], [], 0
    pieces.extend(pack_pieces)
    if refs_out is not None:
        refs_out[0].extend(range_refs)
        refs_out[1].extend(pack_refs)
        refs_out[2].extend(signatures)
    top = Top(_listing(range_refs, cuts, known, pieces), _listing(pack_refs, cuts, known, pieces))
    data = encode_top(top)
    return content_id(data), data, pieces


def pack_contents(
    entries: Iterable[Entry], pack_refs: Sequence[Ref], layout: Layout
) -> Iterator[tuple[Ref, list[tuple[bytes, int]]]]:
    """Each of a stored version's packs with its distinct contents ``(content id, size)`` in stored order.

    A pack holds each distinct content of its files once, in the order of
    their first file (:func:`plan_packs`): the i-th content starts where the
    ones before it end.  Stops early if the entries run out.
    """
    files = (e for e in entries if packed(e, layout))
    for ref in pack_refs:
        contents: list[tuple[bytes, int]] = []
        seen: set[bytes] = set()
        for _ in range(ref.count):
            e = next(files, None)
            if e is None:
                return
            assert e.content is not None
            if e.content not in seen:
                seen.add(e.content)
                contents.append((e.content, e.size))
        yield ref, contents


def pack_signatures(entries: Iterable[Entry], pack_refs: Sequence[Ref], layout: Layout) -> dict[bytes, tuple[bytes, int]]:
    """``{signature: (pack id, size)}`` of a stored version's packs, from its entries and pack references."""
    return {PackPlan([], contents, 0).signature(): (ref.id, ref.size)
            for ref, contents in pack_contents(entries, pack_refs, layout)}


# -- changesets -----------------------------------------------------------------


class Change(NamedTuple):
    """One key whose record differs from the parent's: ``old`` None = added, ``new`` None = removed."""

    key: bytes
    old: bytes | None  # record body
    new: bytes | None

    @property
    def op(self) -> str:
        return "A" if self.old is None else "D" if self.new is None else "M"


def changes(old: Iterable[tuple[bytes, bytes]], new: Iterable[tuple[bytes, bytes]]) -> Iterator[Change]:
    """Merge two key-sorted ``(key, body)`` streams into the keys that differ."""
    a, b = iter(old), iter(new)
    x, y = next(a, None), next(b, None)
    while x is not None or y is not None:
        if y is None or (x is not None and x[0] < y[0]):
            assert x is not None
            yield Change(x[0], x[1], None)
            x = next(a, None)
        elif x is None or y[0] < x[0]:
            yield Change(y[0], None, y[1])
            y = next(b, None)
        else:
            if x[1] != y[1]:
                yield Change(x[0], x[1], y[1])
            x, y = next(a, None), next(b, None)


def with_link_names(items: list[Change], links: Iterable[tuple[bytes, bytes | None, bytes]]) -> list[Change]:
    """*items* plus every further name of a hard-linked file whose record changed.

    *links* gives ``(key, target key, body)`` of the new version's link
    records.  A link record names its file's first key; when that key's
    record changes (content, mode...), the file changed under every name,
    though the link records are byte-for-byte the same: each is added as a
    change with equal old and new bodies, so that a reader of the changeset
    alone sees every path of the file.
    """
    changed = {c.key for c in items}
    extra = [Change(key, body, body) for key, target, body in links if target in changed and key not in changed]
    if not extra:
        return items
    return sorted(items + extra, key=lambda c: c.key)


def encode_changeset(parent_top: bytes, items: Iterable[Change]) -> bytes:
    out = bytearray(MAGIC_CHANGES)
    out += parent_top
    body = bytearray()
    n = 0
    for c in items:
        n += 1
        put_bytes(body, c.key)
        body.append((c.old is not None) | (c.new is not None) << 1)
        if c.old is not None:
            put_bytes(body, c.old)
        if c.new is not None:
            put_bytes(body, c.new)
    put_uv(out, n)
    return bytes(out + body)


def decode_changeset(data: bytes | memoryview, what: str = "changeset") -> tuple[bytes, list[Change]]:
    """``(parent's top id, changes)``; keys strictly increasing.  Bodies are decoded by the caller."""
    r = _Reader(data, what, MAGIC_CHANGES)
    parent = r.raw(32)
    n = r.uv(len(r.buf))
    out: list[Change] = []
    for _ in range(n):
        key = r.bytes_(MAX_KEY)
        if out and not key > out[-1].key:
            raise r.bad("keys are not strictly increasing")
        flags = r.uv(3)
        if not flags:
            raise r.bad("a change of nothing")
        old = r.bytes_(len(r.buf)) if flags & 1 else None
        new = r.bytes_(len(r.buf)) if flags & 2 else None
        out.append(Change(key, old, new))
    r.end()
    return parent, out


# -- where packs are stored ---------------------------------------------------------
#
# A pack is identified by its content id like any piece, but stored inside a
# *segment*: one object per push holding the encoded bytes (as a blob would be
# stored) of the packs that push added, back to back.  A version's **pack map**
# says where each of its packs is, in the order of its pack references: the
# segment and the byte range of the encoded pack in it, or "a blob of its own"
# (the layout of versions pushed before segments existed).  The map depends on
# history (where the bytes happened to be uploaded), so it is not a piece: it
# is stored under its version's top and any complete map of a top is valid.
# Nothing in it is trusted: a wrong place yields bytes that fail the pack's id.

MAX_SEGMENT = 1 << 34  # a segment is far smaller (SEGMENT_TARGET plus one pack); offsets beyond are invalid
MAX_STORED_PACK = MAX_PIECE + 1024  # an encoded pack: header plus at most its plaintext (stored raw if zstd gains nothing)


STANDALONE = Place(None, 0, 0)


def encode_pack_map(places: Sequence[Place]) -> bytes:
    """A pack map: the segments once each, then one place per pack, in the version's pack order."""
    index: dict[bytes, int] = {}
    for p in places:
        if p.segment is not None:
            index.setdefault(p.segment, len(index) + 1)
    out = bytearray(MAGIC_MAP)
    put_uv(out, len(index))
    for seg in index:
        out += seg
    put_uv(out, len(places))
    for p in places:
        if p.segment is None:
            put_uv(out, 0)
        else:
            put_uv(out, index[p.segment])
            put_uv(out, p.offset)
            put_uv(out, p.length)
    return bytes(out)


def decode_pack_map(data: bytes | memoryview, packs: int, what: str = "pack map") -> list[Place]:
    """The places of a version's *packs* packs; an IntegrityError unless the map has exactly that many."""
    r = _Reader(data, what, MAGIC_MAP)
    segments = [r.raw(32) for _ in range(r.uv(packs))]
    if r.uv(packs + 1) != packs:
        raise r.bad(f"the map does not list the version's {packs} packs")
    out: list[Place] = []
    for _ in range(packs):
        i = r.uv(len(segments))
        if i == 0:
            out.append(STANDALONE)
        else:
            offset = r.uv(MAX_SEGMENT)
            length = r.uv(MAX_STORED_PACK)
            if length == 0:
                raise r.bad("a pack of 0 stored bytes")
            out.append(Place(segments[i - 1], offset, length))
    r.end()
    return out
