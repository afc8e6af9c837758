"""BuildingIndex (daemon/building.py): while a format 2 index is built, what it answers is what the finished
index answers, and it answers the root's listing after the first range.

No FUSE and no store: the index is built from pieces in memory with an observer that records what the
builder hands over; the recorded batches are then fed to a BuildingIndex one by one, and after each one
every query it answers is compared with the finished index's answer.
"""

from __future__ import annotations

import random
import stat
import sys
from pathlib import Path

import pytest

from wsfs.daemon.building import BuildingIndex
from wsfs.daemon.tree import NotReady, Provisional
from wsfs.errors import IntegrityError
from wsfs.format.blobs import content_id
from wsfs.format.index import build_index
from wsfs.format.manifest import Manifest
from wsfs.format.tree import Entry, decode_listing, decode_range, decode_top, key_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "format"))
from test_tree import LAYOUT, encode  # noqa: E402

DIR, REG = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644


def _tree(rng: random.Random) -> tuple[list[Entry], dict[bytes, bytes]]:
    """Nested directories (one empty), small files, a large one, symlinks, xattrs and hard links."""
    entries = [Entry(b"", DIR, mtime_ns=1)]
    data: dict[bytes, bytes] = {}

    def file(parent: bytes, name: bytes, **kw: object) -> Entry:
        body = (b"%s/%s\n" % (parent, name)) * rng.randint(1, 300)
        data[content_id(body)] = body
        return Entry(key_of(parent, name), REG, 1000, 1000, len(body), 5, content=content_id(body), **kw)

    entries += [Entry(key_of(b"", b"a"), DIR), file(b"", b"b.txt"), Entry(key_of(b"", b"empty"), DIR),
                Entry(key_of(b"", b"lib"), DIR), Entry(key_of(b"", b"zlink"), stat.S_IFLNK | 0o777, size=3,
                                                        target=b"lib")]
    first = file(b"a", b"0-linked", linked=True)
    entries += [first, file(b"a", b"x", xattrs=((b"user.k", b"v"),))]
    for d in range(40):
        dpath = b"lib/p%03d" % d
        entries.append(Entry(key_of(b"lib", b"p%03d" % d), DIR))
        for f in range(rng.randint(0, 25)):
            entries.append(file(dpath, b"f%02d.js" % f))
        if d % 7 == 0:
            entries.append(Entry(key_of(dpath, b"sub"), DIR))
            entries.append(file(dpath + b"/sub", b"deep.js"))
    entries.append(Entry(key_of(b"lib/p039", b"zz-hardlink"), REG, link=first.key))
    entries.sort(key=lambda e: e.key)
    return entries, data


class _Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple] = []

    def rows(self, *batch: object) -> None:
        self.batches.append(batch)


def _built(tmp_path: Path) -> tuple[Manifest, list[tuple]]:
    entries, data = _tree(random.Random(5))
    store: dict[bytes, bytes] = {}
    top, _, _ = encode(entries, data, store)
    t = decode_top(store[top])
    ranges = [decode_range(store[r.id], LAYOUT) for lp in t.ranges for r in decode_listing(store[lp.id], 1 << 26)]
    packs = [r for lp in t.packs for r in decode_listing(store[lp.id], 1 << 26)]
    assert len(ranges) > 4
    rec = _Recorder()
    path = str(tmp_path / "index")
    build_index(path, ranges, packs, LAYOUT, {}, observer=rec)
    assert len(rec.batches) == len(ranges)
    return Manifest(path, validate=False), rec.batches


def _answer(fn, *args):  # noqa: ANN001, ANN202
    try:
        return fn(*args)
    except NotReady:
        return NotReady


def _check_listing(b: BuildingIndex, got: list, want: list) -> int:
    """*got* (a listing while building) is *want* (the finished index's), but for stand-ins of directories
    not complete yet: those are true except ``nlink`` (1), and their own attributes are not answered yet.
    Returns how many entries were stand-ins."""
    assert [(c, n) for c, n, _ in got] == [(c, n) for c, n, _ in want]
    stand_ins = 0
    for (_, name, node), (_, _, final) in zip(got, want, strict=True):
        if isinstance(node, Provisional):
            stand_ins += 1
            assert node.is_dir and node.nlink == 1, name
            assert node._replace(nlink=final.nlink) == final, name
            assert _answer(b.getattr, node.ino) is NotReady, name
        else:
            assert node == final, name
    return stand_ins


def test_every_answer_while_building_is_the_finished_index_answer(tmp_path: Path) -> None:
    m, batches = _built(tmp_path)
    every = list(m.walk())
    inos = {node.ino for _, node in every} | {1}
    dirs = [1] + [node.ino for _, node in every if node.is_dir]
    names = {(1, path.rpartition(b"/")[2]) for path, _ in every if b"/" not in path}
    names |= {(d, b"nope") for d in dirs} | {(2, b"0-linked"), (2, b"x")}
    b = BuildingIndex(LAYOUT.chunk_size)
    answered = []
    lib = m.resolve(b"lib").ino
    stand_ins: dict[int, int] = {}  # directory -> stand-ins in its first listing answered
    for i, batch in enumerate(batches):
        b.rows(*batch)
        b._drain()
        n = 0
        for ino in inos | {max(inos) + 1}:
            got = _answer(b.getattr, ino)
            if got is not NotReady:
                assert got == m.getattr(ino), (i, ino)
                n += 1
        for parent, name in names:
            got = _answer(b.lookup, parent, name)
            if got is not NotReady:
                assert got == m.lookup(parent, name), (i, parent, name)
        for d in dirs:
            got = _answer(b.readdir, d, 0, -1)
            if got is not NotReady:
                stand_ins.setdefault(d, _check_listing(b, got, m.readdir(d)))
                if got:
                    _check_listing(b, b.readdir(d, got[0][0], 2), m.readdir(d, got[0][0], 2))
                n += 1
        answered.append(n)
        if i == 0:
            # The root's entries are in the first range: `ls` of the root is answered.
            assert _check_listing(b, b.readdir(1, 0, -1), m.readdir(1)) >= 0
        # What needs the finished index waits for it.
        for fn, args in ((b.xattrs, (1,)), (b.pack_row, (1,)), (b.chunks, (1,))):
            with pytest.raises(NotReady):
                fn(*args)
        # A hard-linked file's nlink is known only at the end.
        assert _answer(b.getattr, m.resolve(b"a/0-linked").ino) is NotReady
    # `ls lib` was answered before its 40 package directories were all complete (stand-ins), not only
    # at the end of the build.
    assert stand_ins[lib] > 20, stand_ins
    assert answered == sorted(answered) and answered[-1] > answered[0]
    # The finished index takes over.
    b._post("done", m)
    assert b.ready and b.xattrs(m.resolve(b"a/x").ino) == {b"user.k": b"v"} and b.has_xattrs() is True
    assert b.getattr(m.resolve(b"a/0-linked").ino).nlink == 2
    m.close()


def test_a_failed_build_is_every_waiting_query_s_answer(tmp_path: Path) -> None:
    m, batches = _built(tmp_path)
    b = BuildingIndex(LAYOUT.chunk_size)
    b.rows(*batches[0])
    with pytest.raises(NotReady):
        b.getattr(max(node.ino for _, node in m.walk()))
    b._post("error", IntegrityError("range 12ab failed verification"))
    with pytest.raises(IntegrityError, match="failed verification"):
        b.getattr(1)
    m.close()


def test_the_mirror_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsfs.daemon.building as building

    m, batches = _built(tmp_path)
    monkeypatch.setattr(building, "MIRROR_MAX", len(batches[0][0]) + 1)
    b = BuildingIndex(LAYOUT.chunk_size)
    for batch in batches:
        b.rows(*batch)
    b._drain()
    assert len(b._rows) == len(batches[0][0]) and b._full
    last = max(node.ino for _, node in m.walk())
    assert _answer(b.getattr, last) is NotReady  # past the cap: the finished index answers
    b._post("done", m)
    assert b.getattr(last) == m.getattr(last)
    m.close()
