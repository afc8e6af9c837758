"""Format 2: a version costs what changed (issue 12's goals, at test scale).

Counts come from the store's own request and byte counters (``push --json``)
and, for reads, from a Repository whose store counts what it fetched.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tarfile
from pathlib import Path

import pytest

from support.cli import Wsfs
from support.trees import assert_same_tree
from wsfs.repository import Repository

DATA = Path(__file__).resolve().parent.parent / "data"


def make_tree(root: Path, ndirs: int = 40, nfiles: int = 50, seed: int = 5) -> list[Path]:
    rng = random.Random(seed)
    files = []
    for d in range(ndirs):
        dd = root / "node_modules" / f"pkg{d:02d}" / "lib"
        dd.mkdir(parents=True)
        for f in range(nfiles):
            p = dd / f"m{f:02d}.js"
            words = " ".join(rng.choice(["const", "let", "return", "function", "x", "y", "=>", "{}"]) for _ in range(300))
            p.write_text(f"// {d}/{f}\n{words}\n")
            files.append(p)
    (root / "large.bin").write_bytes(random.Random(seed).randbytes(300_000))
    return files


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    return src, files


def uploaded(r: dict) -> tuple[int, int]:
    return r["store"]["requests"].get("put", 0), r["store"]["bytes_out"]


def test_one_file_changed_uploads_kilobytes(wsfs, tree):
    src, files = tree
    first = wsfs.push(src, "demo")
    assert first["stats"]["files"] == 2001
    files[1000].write_text("changed\n")
    r = wsfs.push(src, "demo")
    puts, out = uploaded(r)
    # a range, a pack, two listing pieces, the top, the changeset, the record
    assert puts <= 8, r["store"]
    assert out < 40_000, r["store"]
    assert uploaded(first)[1] > 20 * out  # against the whole tree's metadata and data
    assert wsfs("diff", "demo@1", "demo@2").out == b"M " + bytes(files[1000].relative_to(src)) + b"\n"


def test_spread_changes_upload_a_fraction(wsfs, tree):
    """1% of the files, spread evenly (the issue's 100 of ~10,000+, at this scale)."""
    src, files = tree
    first = wsfs.push(src, "demo")
    for p in files[::100]:
        p.write_text(p.read_text() + "// edited\n")
    r = wsfs.push(src, "demo")
    assert uploaded(r)[1] < uploaded(first)[1] // 3, (uploaded(r), uploaded(first))
    assert len(wsfs("diff", "demo@1", "demo@2").out.splitlines()) == 20


def test_nothing_changed_writes_the_record_only(wsfs, tree):
    src, _ = tree
    first = wsfs.push(src, "demo")
    r = wsfs.push(src, "demo")
    assert r["manifest"] == first["manifest"]
    assert r["store"]["requests"].get("put", 0) == 1
    assert r["store"]["requests"].get("head", 0) == 0
    assert wsfs("diff", "demo@1", "demo@2").out == b""


def test_second_workspace_with_the_same_tree_stores_nothing_new(wsfs, tree):
    src, _ = tree
    wsfs.push(src, "demo")
    cold = Wsfs(wsfs.repo, str(Path(wsfs.cache_dir).parent / "cold-cache"), wsfs.env)
    r = cold.push(src, "other")
    assert r["store"]["requests"].get("put", 0) == 1  # the record
    assert r["store"]["bytes_out"] < 2000
    # one HEAD of the top vouches for every piece below it (children are stored before parents),
    # and the large file's chunk is asked about once
    assert r["store"]["requests"].get("head", 0) <= 2, r["store"]["requests"]


def test_same_tree_same_pieces_whatever_the_history(wsfs, tree, tmp_path):
    src, files = tree
    wsfs.push(src, "a")
    files[3].unlink()
    (src / "node_modules" / "pkg07").rename(src / "node_modules" / "pkg07-renamed")
    b = wsfs.push(src, "a")
    fresh = Wsfs(str(tmp_path / "repo2"), str(tmp_path / "cache2"), wsfs.env)
    fresh("init")
    alone = fresh.push(src, "b")
    assert alone["manifest"] == b["manifest"]
    assert alone["store"]["bytes_out"] > b["store"]["bytes_out"]


def _counting_repo(w: Wsfs) -> Repository:
    env = dict(os.environ)
    os.environ.update(w.env)
    try:
        return Repository.open_url(w.repo, w.cache_dir, endpoint_url=w.env.get("AWS_ENDPOINT_URL"))
    finally:
        os.environ.clear()
        os.environ.update(env)


def _diff_from_store(wsfs: Wsfs, a: int, b: int) -> tuple[list, Repository, object, object]:
    """``diff_versions`` of demo@a and demo@b on a host without local pieces, on a store whose counters
    start at zero: ``(changes, repository, record a, record b)``."""
    from wsfs.versions.diff import diff_versions

    shutil.rmtree(os.path.join(wsfs.cache_dir, "pieces"))
    repo = _counting_repo(wsfs)
    ra, rb = repo.record("demo", a), repo.record("demo", b)
    repo.store.stats.__init__()
    return list(diff_versions(repo, ra, rb)), repo, ra, rb


def test_mounting_the_next_version_fetches_only_what_changed(wsfs, tree):
    src, files = tree
    wsfs.push(src, "demo")
    wsfs("ls", "demo@1")  # this host now has version 1's pieces
    files[500].write_text("changed\n")
    wsfs.push(src, "demo")
    shutil.rmtree(os.path.join(wsfs.cache_dir, "manifests"))  # indexes are rebuilt, pieces stay
    repo = _counting_repo(wsfs)
    repo.store.stats.__init__()
    with repo.open_manifest(repo.record("demo", 2)) as m:
        assert m.resolve(bytes(files[500].relative_to(src))).size == 8
    got = repo.store.stats.snapshot()
    # the record was cached by the push; new: the top, a listing piece, one range
    assert got["requests"].get("get", 0) <= 4, got
    assert got["bytes_in"] < 16_000, got


def test_diff_of_adjacent_versions_reads_the_changeset_only(wsfs, tree):
    src, files = tree
    wsfs.push(src, "demo")
    files[10].write_text("x\n")
    (files[11].parent / "new.js").write_text("new\n")
    files[12].unlink()
    wsfs.push(src, "demo")
    got, repo, _, _ = _diff_from_store(wsfs, 1, 2)
    rel = lambda p: bytes(p.relative_to(src))  # noqa: E731
    assert got == sorted([("M", rel(files[10])), ("A", rel(files[11].parent / "new.js")), ("D", rel(files[12]))],
                         key=lambda x: x[1].split(b"/"))
    assert repo.store.stats.snapshot()["requests"].get("get", 0) == 1  # the changeset


def test_diff_of_distant_versions_fetches_only_ranges_that_differ(wsfs, tree):
    src, files = tree
    wsfs.push(src, "demo")
    files[10].write_text("x\n")
    wsfs.push(src, "demo")
    files[20].write_text("y\n")
    wsfs.push(src, "demo")
    got, repo, a, b = _diff_from_store(wsfs, 1, 3)
    assert [s for s, _ in got] == ["M", "M"]
    gets = repo.store.stats.snapshot()["requests"].get("get", 0)
    ra, rb = repo.version_refs(a)[0], repo.version_refs(b)[0]
    unshared = len({r.id for r in ra} ^ {r.id for r in rb})
    assert 0 < unshared < len(ra) + len(rb) - 4
    from wsfs.format.tree import decode_top

    listings = sum(len(decode_top(repo.get_piece(bytes.fromhex(r.manifest), r.manifest_size)).ranges) for r in (a, b))
    # two tops, their range listings, and the ranges only one of them has: nothing else
    assert gets == 2 + listings + unshared, (gets, listings, unshared)


def test_checkout_and_mount_agree_with_the_source(wsfs, tmp_path):
    from support.trees import make_rich_tree

    src = make_rich_tree(tmp_path / "rich")
    wsfs.push(src, "demo")
    wsfs("checkout", "demo", str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")


def test_format1_repository_still_reads(tmp_path, subprocess_env):
    """A repository written by wsfs before format 2 (tests/data, made by e90c909's code)."""
    with tarfile.open(DATA / "format1-repo.tar.gz") as t:
        t.extractall(tmp_path, filter="data")
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"), subprocess_env)
    assert b"first [v1]" in w("log", "demo").out
    assert w("cat", "demo@1", "a/hello.txt").out == b"hello\n"
    assert w("cat", "demo@2", "a/hello.txt").out == b"hello\nchanged\n"
    assert w("diff", "demo@1", "demo@2").out.splitlines() == [
        b"M a/hardlink", b"M a/hello.txt", b"D d/text.txt", b"A new", b"A new/x"
    ]
    out = tmp_path / "out"
    w("checkout", "demo@v1", str(out))
    assert (out / "d" / "text.txt").read_text() == "line\n" * 3000
    assert os.readlink(out / "link") == "a/hello.txt"
    assert os.stat(out / "a" / "hello.txt").st_ino == os.stat(out / "a" / "hardlink").st_ino
    assert len((out / "a" / "b" / "c" / "big.bin").read_bytes()) == 150000
    r = w("push", str(out), "demo", check=False)
    assert r.code == 2 and "wsfs upgrade" in r.err
    # upgraded in place: old versions still read, new ones are format 2
    w("upgrade")
    (out / "a" / "hello.txt").write_text("third\n")
    third = w.push(out, "demo")
    assert third["version"] == 3
    assert json.loads((tmp_path / "repo" / "workspaces" / "demo" / "versions" / "0000000003").read_text())["format"] == 2
    assert w("cat", "demo@3", "a/hello.txt").out == b"third\n"
    assert w("cat", "demo@1", "a/hello.txt").out == b"hello\n"
    assert b"M a/hello.txt" in w("diff", "demo@1", "demo@3").out
    again = tmp_path / "again"
    w("checkout", "demo@3", str(again))
    assert_same_tree(out, again)


def test_small_files_are_read_in_runs_of_packs(wsfs, tree, tmp_path):
    """The packs a push adds lie side by side in one segment: a checkout reads them with a few ranged GETs
    (up to RUN_MAX each), not one GET per pack."""
    from wsfs.format.manifest import Manifest
    from wsfs.repository import RUN_MAX
    from wsfs.store import open_store
    from wsfs.versions.checkout import checkout

    src, _ = tree
    wsfs.push(src, "demo")
    repo = Repository.open(open_store(wsfs.repo), str(tmp_path / "cold-cache"))
    record = repo.record("demo", 1)
    with repo.open_manifest(record) as m:
        assert isinstance(m, Manifest)
        _, packs = repo.version_refs(record)
        places = repo.pack_places(record, len(packs))
        assert len(packs) >= 8 and len({p.segment for p in places}) == 1
        stored = sum(p.length for p in places)
        chunks = len(m.chunk_sizes())  # the large files' chunks: a GET each
        before = repo.store.stats.snapshot()["requests"].get("get", 0)
        checkout(repo, m, str(tmp_path / "out"))
        gets = repo.store.stats.snapshot()["requests"].get("get", 0) - before - chunks
    assert_same_tree(src, tmp_path / "out")
    # each GET reads up to RUN_MAX bytes of the segment; the read-ahead window (64 packs) cuts runs short
    assert 1 <= gets <= stored // RUN_MAX + 1 + len(packs) // 32 + 1 < len(packs) // 8, (gets, len(packs))


def test_versions_without_a_pack_map_still_read_and_push_on(wsfs, tree, tmp_path):
    """Format 2 versions pushed before segments have their packs as blobs of their own and no pack map: they
    read, and the next push keeps pointing at those packs (standalone places) and puts only new ones in a
    segment."""
    from wsfs.format.tree import STANDALONE
    from wsfs.repository import pack_map_key, segment_key
    from wsfs.store import open_store

    src, files = tree
    first = wsfs.push(src, "demo")
    # Rewrite version 1 as the older code stored it: each pack a blob of its own, no segment, no map.
    store = open_store(wsfs.repo)
    repo = Repository.open(store, str(tmp_path / "rewrite-cache"))
    record = repo.record("demo", 1)
    _, packs = repo.version_refs(record)
    places = repo.pack_places(record, len(packs))
    for ref, place in zip(packs, places, strict=True):
        repo.put_blob(ref.id, bytes(repo.get_blob(ref.id, ref.size, "pack", place=place)))
    for seg in {p.segment for p in places}:
        assert seg is not None
        store.delete(segment_key(seg))
    store.delete(pack_map_key(bytes.fromhex(first["manifest"])))
    assert repo.pack_places(record, len(packs)) == [STANDALONE] * len(packs)

    cold = Wsfs(wsfs.repo, str(tmp_path / "cold-cache"), wsfs.env)
    name = files[1000].relative_to(src)
    assert cold("cat", "demo@1", str(name)).out == files[1000].read_bytes()
    cold("checkout", "demo@1", str(tmp_path / "out1"))
    assert_same_tree(src, tmp_path / "out1")

    files[1000].write_text("changed\n")
    wsfs.push(src, "demo")
    record2 = repo.record("demo", 2)
    _, packs2 = repo.version_refs(record2)
    places2 = repo.pack_places(record2, len(packs2))
    new = [p for p in places2 if p.segment is not None]
    assert 1 <= len(new) <= 2 and len(places2) - len(new) >= len(packs) - 2  # the old packs stay where they are
    cold2 = Wsfs(wsfs.repo, str(tmp_path / "cold-cache-2"), wsfs.env)
    assert cold2("cat", "demo@2", str(name)).out == b"changed\n"
    cold2("checkout", "demo@2", str(tmp_path / "out2"))
    assert_same_tree(src, tmp_path / "out2")


def _pushed_ranges(wsfs, tree):
    """The test tree pushed as demo@1: its repository (requests counted) and the references of its ranges."""
    src, _ = tree
    wsfs.push(src, "demo")
    repo = _counting_repo(wsfs)
    ranges, _ = repo.version_refs(repo.record("demo", 1))
    assert len(ranges) >= 6, "the test tree must make several ranges"
    return repo, ranges


def test_ranges_are_decoded_in_order_a_few_at_a_time(wsfs, tree, monkeypatch):
    """A cold mount's first ``ls`` waits for the first range: fetchers must not all decode at once
    (under the GIL that made the first range wait for the others), and a reader that stops early must not
    leave fetchers waiting for a turn that never comes."""
    import threading
    import time

    from wsfs.format import tree as tree_format

    repo, ranges = _pushed_ranges(wsfs, tree)
    real = tree_format.decode_range_bodies
    lock = threading.Lock()
    busy, most, order = 0, 0, []

    def decode(data, layout, what):
        nonlocal busy, most
        with lock:
            busy += 1
            most = max(most, busy)
            order.append(what)
        time.sleep(0.01)  # long enough for every other fetcher to be ready
        try:
            return real(data, layout, what)
        finally:
            with lock:
                busy -= 1

    monkeypatch.setattr(tree_format, "decode_range_bodies", decode)
    runs = list(repo.version_range_bodies(ranges, workers=32, decode_ahead=3, first=2))
    assert [run[0].key for run, _ in runs] == [r.first for r in ranges]
    assert most <= 3, most
    # the first two ranges are decoded before any range past the window of the first ones
    first_two = {f"range {r.id.hex()}" for r in ranges[:2]}
    assert set(order[:2]) == first_two, order[:4]

    # the reader stops after the first range: the generator closes at once, nothing left running
    order.clear()
    it = repo.version_range_bodies(ranges, workers=32)
    next(it)
    t0 = time.monotonic()
    it.close()
    assert time.monotonic() - t0 < 5
    assert len(order) < len(ranges)
    assert not [t for t in threading.enumerate() if t.name.startswith("wsfs-pieces")]


def test_the_first_ranges_have_the_store_to_themselves(wsfs, tree, monkeypatch):
    """Until the caller is done with the first range (a cold mount's first ``ls`` waits for its rows), only
    the first *head* ranges are asked for; the others go out when it comes back for the second one."""
    import threading
    import time

    repo, ranges = _pushed_ranges(wsfs, tree)
    asked: list[bytes] = []
    lock = threading.Lock()
    real = repo.get_piece

    def get_piece(cid, size, what):
        if what == "range":
            with lock:
                asked.append(cid)
        return real(cid, size, what)

    monkeypatch.setattr(repo, "get_piece", get_piece)
    it = repo.version_range_bodies(ranges, workers=32, head=2)
    first, _ = next(it)
    assert first[0].key == ranges[0].first
    time.sleep(0.3)  # time for any fetcher that was started to ask
    assert sorted(asked) == sorted(r.id for r in ranges[:2])
    rest = list(it)
    assert [run[0].key for run, _ in rest] == [r.first for r in ranges[1:]]
    assert sorted(asked) == sorted(r.id for r in ranges)


def _small_cuts_version(tmp_path, subprocess_env):
    """demo@1 of a 240-file tree in a local repository whose pieces are cut small (several listing pieces of
    ranges and of packs), and a repository on it with an empty cache: ``(repo, record, source)``."""
    from wsfs.format.records import RepoConfig
    from wsfs.format.tree import Cuts
    from wsfs.store import open_store

    url = str(tmp_path / "repo")
    cuts = Cuts(range_min=2048, range_r=4, range_max=16384, list_min=128, list_r=2, list_max=1024)
    Repository.init(open_store(url), RepoConfig(cuts=cuts), str(tmp_path / "init-cache"))
    src = tmp_path / "src"
    make_tree(src, ndirs=12, nfiles=20)
    for top, dirs, files in os.walk(src, topdown=False):  # fixed times: the same cuts, hence pieces, every run
        for name in files + dirs + ([""] if top == str(src) else []):
            os.utime(os.path.join(top, name), ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    Wsfs(url, str(tmp_path / "push-cache"), subprocess_env).push(src, "demo")
    repo = Repository.open(open_store(url), str(tmp_path / "cache"))  # a host that has nothing yet
    return repo, repo.record("demo", 1), src


@pytest.mark.parametrize("bad", ["second listing piece of ranges", "third listing piece of packs"])
def test_a_bad_listing_piece_asked_after_the_first_range_fails_the_index_build(tmp_path, subprocess_env, bad):
    """The listing pieces asked for once the first range is written are checked as before: a bad one fails
    the build with an integrity error (a mount answers EIO), at once, and leaves no index behind."""
    import time

    from wsfs.errors import IntegrityError
    from wsfs.repository import blob_key

    repo, record, _ = _small_cuts_version(tmp_path, subprocess_env)
    top = repo.version_top(record)
    piece = top.ranges[1] if "ranges" in bad else top.packs[2]
    path = tmp_path / "repo" / blob_key(piece.id)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    t0 = time.monotonic()
    with pytest.raises(IntegrityError):
        repo.open_index_observed(record, None)
    assert time.monotonic() - t0 < 10
    assert not os.path.exists(repo.index_path(record))


def test_a_mounts_index_build_asks_for_the_first_range_before_the_rest(tmp_path, subprocess_env):
    """A cold mount's first ``ls`` waits for the first range's rows (``daemon/building.py``).  Each request
    costs CPU under the GIL, so until those rows are written the index build asks for no more than they
    need: the top, the first listing piece of ranges, the first two of packs, the first two ranges; the
    other listing pieces, ranges and the pack map after them.  Then the index is whole."""
    import threading

    from wsfs.repository import pack_map_key

    repo, record, src = _small_cuts_version(tmp_path, subprocess_env)
    top = repo.version_top(record)
    ranges, packs = repo.version_refs(record)
    assert len(top.ranges) >= 2 and len(top.packs) >= 3 and len(ranges) >= 4, (len(top.ranges), len(top.packs))
    shutil.rmtree(tmp_path / "cache" / "pieces")
    repo.version_top(record)  # (the daemon has the top before the build starts)

    asked: list[bytes] = []
    lock = threading.Lock()
    real_piece, real_get = repo.get_piece, repo.store.get_range

    def get_piece(cid, size, what="piece"):
        with lock:
            asked.append(cid)
        return real_piece(cid, size, what)

    def get_range(key, *args, **kwargs):
        if key == pack_map_key(bytes.fromhex(record.manifest)):
            with lock:
                asked.append(b"pack map")
        return real_get(key, *args, **kwargs)

    repo.get_piece = get_piece
    repo.store.get_range = get_range
    at_first_rows: list[set[bytes]] = []

    class Observer:
        def rows(self, inodes, dentries, xattrs, dirs, linked, last):
            if not at_first_rows:
                with lock:
                    at_first_rows.append(set(asked))

    m = repo.open_index_observed(record, Observer())
    try:
        allowed = {bytes.fromhex(record.manifest), top.ranges[0].id, top.packs[0].id, top.packs[1].id,
                   ranges[0].id, ranges[1].id}
        assert at_first_rows[0] <= allowed, [x.hex()[:8] if len(x) == 32 else x for x in at_first_rows[0] - allowed]
        assert {ranges[0].id, top.ranges[0].id} <= at_first_rows[0]
        # then everything, each once
        assert sorted(asked) == sorted([bytes.fromhex(record.manifest)] + [r.id for r in top.ranges] +
                                       [r.id for r in top.packs] + [r.id for r in ranges] + [b"pack map"])
        files = {path: node for path, node in m.walk() if node.is_reg}
        assert len(files) == 12 * 20 + 1
        one = src / "node_modules" / "pkg07" / "lib" / "m13.js"
        node = files[b"node_modules/pkg07/lib/m13.js"]
        assert node.packed and node.size == one.stat().st_size
    finally:
        m.close()
