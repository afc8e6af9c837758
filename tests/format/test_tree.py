"""Format 2 pieces (wsfs.format.tree) and the local index built from them (wsfs.format.index).

Pure format tests: entries in memory, pieces in a dict, no store.
"""

from __future__ import annotations

import random
import stat

import pytest

from wsfs.errors import IntegrityError
from wsfs.format.blobs import content_id
from wsfs.format.index import build_index
from wsfs.format.manifest import Manifest
from wsfs.format.tree import (
    MAGIC_RANGE,
    ZERO_ID,
    Cuts,
    Entry,
    Layout,
    Ref,
    build_version,
    changes,
    decode_body,
    decode_changeset,
    decode_listing,
    decode_range,
    decode_top,
    encode_body,
    encode_changeset,
    encode_range,
    key_of,
    packed,
)

LAYOUT = Layout(chunk_size=64 * 1024, inline_threshold=16 * 1024)
CUTS = Cuts(range_min=2048, range_r=8, range_max=16384, pack_min=4096, pack_r=3, pack_max=65536,
            list_min=256, list_r=4, list_max=2048)
DIR, REG = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644


def make_tree(rng: random.Random, ndirs: int = 30, nfiles: int = 20) -> tuple[list[Entry], dict[bytes, bytes]]:
    """A sorted list of entries and the bytes of each small file (by content id)."""
    entries = [Entry(b"", DIR, mtime_ns=1)]
    data: dict[bytes, bytes] = {}
    for d in range(ndirs):
        dpath = f"pkg{d:03d}".encode()
        entries.append(Entry(key_of(b"", dpath), DIR, mtime_ns=2))
        for f in range(nfiles):
            body = (f"// {d}/{f}\n" * rng.randint(1, 200)).encode()
            cid = content_id(body)
            data[cid] = body
            entries.append(Entry(key_of(dpath, f"f{f:02d}.js".encode()), REG, 1000, 1000, len(body), 3, content=cid))
    big = Entry(key_of(b"", b"zz-large"), REG, size=3 * 65536 + 5, chunks=(b"\1" * 32, ZERO_ID, b"\2" * 32, b"\3" * 32))
    from wsfs.format.manifest import content_id_chunked

    entries.append(big._replace(content=content_id_chunked(big.size, 65536, [b"\1" * 32, None, b"\2" * 32, b"\3" * 32])))
    entries.append(Entry(key_of(b"", b"zz-link"), stat.S_IFLNK | 0o777, size=7, target=b"pkg000/"))
    entries.sort(key=lambda e: e.key)
    return entries, data


def encode(entries: list[Entry], data: dict[bytes, bytes], store: dict[bytes, bytes]) -> tuple[bytes, int, int]:
    """Build a version against *store* (id -> plaintext); returns (top id, new pieces, new bytes)."""
    top_id, top, pieces = build_version(
        entries, LAYOUT, CUTS, known=store.__contains__,
        pack_bytes=lambda plan: b"".join(data[c] for c, _ in plan.contents),
    )
    new = [p for p in pieces if p.data is not None and p.id not in store]
    for p in new:
        store[p.id] = p.data
    store[top_id] = top
    return top_id, len(new), sum(len(p.data) for p in new)


def read_back(top_id: bytes, store: dict[bytes, bytes]) -> tuple[list[Entry], list[Ref]]:
    top = decode_top(store[top_id])
    ranges = [r for lp in top.ranges for r in decode_listing(store[lp.id], 1 << 26)]
    packs = [r for lp in top.packs for r in decode_listing(store[lp.id], 1 << 26)]
    out = []
    for r in ranges:
        out.extend(decode_range(store[r.id], LAYOUT))
    return out, packs


def test_round_trip_and_index(tmp_path):
    entries, data = make_tree(random.Random(1))
    store: dict[bytes, bytes] = {}
    top, n, _ = encode(entries, data, store)
    got, packs = read_back(top, store)
    assert got == entries
    assert n > 10  # several ranges and packs at these cut sizes
    path = str(tmp_path / "index")
    runs = [decode_range(store[r.id], LAYOUT) for lp in decode_top(store[top]).ranges
            for r in decode_listing(store[lp.id], 1 << 26)]
    build_index(path, runs, packs, LAYOUT, {})
    m = Manifest(path, validate=False)
    node = m.resolve(b"pkg007/f03.js")
    assert node.packed
    chunk, off = m.pack_ref(node)
    assert store[chunk.cid][off : off + node.size] == data[node.content]
    assert m.resolve(b"zz-large").size == 3 * 65536 + 5 and [c.cid for c in m.chunks(m.resolve(b"zz-large").ino)][1] is None
    assert m.resolve(b"zz-link").target == b"pkg000/"
    assert [name for _, name, _ in m.readdir(1)][:2] == [b"pkg000", b"pkg001"]
    m.close()


def test_same_tree_same_pieces_whatever_the_history():
    rng = random.Random(2)
    a, data = make_tree(rng)
    b = list(a)
    i = len(b) // 2
    new = b"edited\n" * 50
    data[content_id(new)] = new
    b[i] = b[i]._replace(size=len(new), content=content_id(new))
    s1: dict[bytes, bytes] = {}
    encode(a, data, s1)
    top_b1, n1, bytes1 = encode(b, data, s1)
    s2: dict[bytes, bytes] = {}
    top_b2, _, _ = encode(b, data, s2)
    assert top_b1 == top_b2
    assert {k for k in s2} <= set(s1)  # B alone: nothing A's history does not have
    assert n1 <= 6 and bytes1 < 12_000, (n1, bytes1)  # a range, a pack, listings, the top


def test_changes_and_changeset():
    a, _ = make_tree(random.Random(3), ndirs=3, nfiles=3)
    b = [e for e in a if e.key != key_of(b"pkg001", b"f01.js")]
    b.append(Entry(key_of(b"pkg002", b"new"), REG, size=0, content=content_id(b"")))
    b.sort(key=lambda e: e.key)
    b[1] = b[1]._replace(mode=DIR | 0o7)
    body = lambda es: [(e.key, encode_body(e, LAYOUT)) for e in es]  # noqa: E731
    got = list(changes(body(a), body(b)))
    assert [(c.op, c.key) for c in got] == [
        ("M", b[1].key), ("D", key_of(b"pkg001", b"f01.js")), ("A", key_of(b"pkg002", b"new"))
    ]
    parent, items = decode_changeset(encode_changeset(b"\7" * 32, got))
    assert parent == b"\7" * 32 and items == got
    assert decode_body(items[0].new, items[0].key, LAYOUT).mode == DIR | 0o7


@pytest.mark.parametrize("case", [
    "truncated", "trailing", "unsorted", "dotdot", "slash-in-name", "empty-name", "bad-type", "link-forward",
    "target-nul", "size-on-fifo", "huge-count", "dotdot-in-next-parent", "dotdot-after-same-parent",
])
def test_hostile_ranges_are_refused(case):
    good = [Entry(key_of(b"", b"a"), DIR), Entry(key_of(b"", b"b"), REG, size=3, content=b"\5" * 32)]
    if case == "truncated":
        raw = encode_range(good, LAYOUT)[:-5]
    elif case == "trailing":
        raw = encode_range(good, LAYOUT) + b"\0"
    elif case == "unsorted":
        raw = encode_range(good[::-1], LAYOUT)
    elif case == "dotdot":
        raw = encode_range([Entry(key_of(b"", b".."), DIR)], LAYOUT)
    elif case == "slash-in-name":
        raw = encode_range([Entry(key_of(b"", b"a/b"), DIR)], LAYOUT)
    elif case == "empty-name":
        raw = encode_range([Entry(key_of(b"a", b""), DIR)], LAYOUT)
    elif case == "bad-type":
        raw = encode_range([Entry(key_of(b"", b"a"), 0o140644)], LAYOUT)  # a socket
    elif case == "link-forward":
        raw = encode_range([Entry(key_of(b"", b"a"), link=key_of(b"", b"b"))], LAYOUT)
    elif case == "target-nul":
        raw = encode_range([Entry(key_of(b"", b"a"), stat.S_IFLNK | 0o777, size=3, target=b"a\0b")], LAYOUT)
    elif case == "size-on-fifo":
        raw = encode_range([Entry(key_of(b"", b"a"), stat.S_IFIFO | 0o644, size=5)], LAYOUT)
    elif case == "dotdot-in-next-parent":  # a parent's names are checked whenever the parent changes
        raw = encode_range([Entry(key_of(b"a", b"x"), DIR), Entry(key_of(b"a/..", b"y"), DIR)], LAYOUT)
    elif case == "dotdot-after-same-parent":  # ... and a name under an unchanged parent still is
        raw = encode_range([Entry(key_of(b"a", b"x"), DIR), Entry(key_of(b"a", b"y/.."), DIR)], LAYOUT)
    else:
        raw = MAGIC_RANGE + b"\xff\xff\xff\xff\x0f"
    with pytest.raises(IntegrityError):
        decode_range(raw, LAYOUT)


@pytest.mark.parametrize("case", ["no-root", "orphan", "pack-short", "pack-extra", "link-to-nothing"])
def test_hostile_trees_are_refused_by_the_index(tmp_path, case):
    root = Entry(b"", DIR)
    f = Entry(key_of(b"", b"f"), REG, size=4, content=content_id(b"data"))
    pack = Ref(content_id(b"data"), 4, 1, f.key, f.key)
    entries, packs = [root, f], [pack]
    if case == "no-root":
        entries = [f]
    elif case == "orphan":
        entries = [root, f, Entry(key_of(b"nodir", b"x"), DIR)]
    elif case == "pack-short":
        packs = [pack._replace(size=3)]
    elif case == "pack-extra":
        packs = [pack, Ref(b"\1" * 32, 4, 1, b"\0g", b"\0g")]
    else:
        entries = [root, f, Entry(key_of(b"", b"g"), link=key_of(b"", b"e"))]
    with pytest.raises(IntegrityError):
        build_index(str(tmp_path / "i"), [entries], packs, LAYOUT, {})
    assert not (tmp_path / "i").exists()


def test_packed_files_are_the_small_nonempty_ones():
    assert packed(Entry(b"\0a", REG, size=1, content=b"x" * 32), LAYOUT)
    assert not packed(Entry(b"\0a", REG, size=0), LAYOUT)
    assert not packed(Entry(b"\0a", REG, size=LAYOUT.inline_threshold + 1), LAYOUT)
    assert not packed(Entry(b"\0a", link=b""), LAYOUT)


def test_pack_map_round_trip_and_hostile_maps() -> None:
    """A pack map lists one place per pack, in order; anything else is an IntegrityError naming the map."""
    from wsfs.format.tree import STANDALONE, Place, decode_pack_map, encode_pack_map

    s1, s2 = bytes(range(32)), bytes(range(1, 33))
    places = [Place(s1, 0, 100), Place(s1, 100, 7), STANDALONE, Place(s2, 0, 1 << 20), Place(s1, 107, 3)]
    raw = encode_pack_map(places)
    assert decode_pack_map(raw, 5) == places
    assert raw.count(s1) == 1  # each segment named once
    assert decode_pack_map(encode_pack_map([]), 0) == []
    bad = {
        "fewer packs": (raw, 6),
        "more packs": (raw, 4),
        "truncated": (raw[:-1], 5),
        "trailing": (raw + b"\0", 5),
        "wrong kind": (b"WSR2" + raw[4:], 5),
        "segment index past the list": (encode_pack_map([Place(s1, 0, 1)])[:-3] + b"\x05\x00\x01", 1),
        "zero length": (encode_pack_map([Place(s1, 0, 1)])[:-1] + b"\x00", 1),
        "huge offset": (encode_pack_map([Place(s1, 1 << 40, 1)]), 1),
    }
    for why, (data, n) in bad.items():
        with pytest.raises(IntegrityError, match="pack map"):
            decode_pack_map(data, n)
            pytest.fail(why)


def test_shared_prefix_is_the_longest_common_prefix() -> None:
    """Range encoding stores each key as (bytes shared with the previous key, the rest): the count must be
    exact for any bytes (0x00 and 0xff included), any lengths, one key a prefix of the other."""
    import random

    from wsfs.format.tree import shared_prefix

    def naive(a: bytes, b: bytes) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    rng = random.Random(7)
    alphabet = b"\x00\x01a\x7f\x80\xfe\xff"
    for _ in range(20000):
        a = bytes(rng.choice(alphabet) for _ in range(rng.randrange(9)))
        b = a[:rng.randrange(len(a) + 1)] + bytes(rng.choice(alphabet) for _ in range(rng.randrange(9)))
        for x, y in ((a, b), (b, a), (a, a)):
            assert shared_prefix(x, y) == naive(x, y), (x, y)
    long = bytes(range(256)) * 20
    assert shared_prefix(long, long[:-1] + b"\x00") == len(long) - 1
