"""Storage efficiency, checked with the store's own request and byte counters.

Both store kinds: the counts are what a user pays for on S3.  Every object a
push creates is a blob (chunks, packs and metadata pieces, format 2) but the
version record: ``stats.blobs_uploaded`` is its PUTs minus one.
"""

import os

from support.cli import Wsfs
from wsfs.repository import Ref, Repository
from wsfs.store import open_store


def puts(r: dict) -> int:
    return r["store"]["requests"].get("put", 0)


def test_unchanged_tree_uploads_no_blob(wsfs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(9 << 20))
    (src / "small").write_bytes(b"s")
    first = wsfs.push(src, "demo")
    # 3 chunks (4 + 4 + 1 MiB), a segment holding the pack of "small", one range, the two listings, the
    # pack map, the top
    assert first["stats"]["blobs_uploaded"] == 9
    assert puts(first) == 9 + 1  # and the version record
    again = wsfs.push(src, "demo")
    assert again["version"] == 2
    assert again["stats"]["blobs_uploaded"] == 0
    assert again["stats"]["bytes_uploaded"] == 0
    # only the version record is new: the top is identical, content-addressed, and already stored
    assert puts(again) == 1
    assert again["manifest"] == first["manifest"]
    # a cold client (new cache) learns what is stored from the parent version's pieces
    cold = Wsfs(wsfs.repo, str(tmp_path / "cold"), wsfs.env)
    third = cold.push(src, "demo")
    assert third["stats"]["blobs_uploaded"] == 0
    assert puts(third) == 1


def test_repeated_content_is_stored_once(wsfs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(9 << 20)
    small = os.urandom(1000)
    for i in range(20):
        (src / f"copy{i}").write_bytes(data)
        (src / f"small{i}").write_bytes(small)
    r = wsfs.push(src, "demo")
    # 4 + 4 + 1 MiB once, one segment (one pack), one range, two listings, the pack map, the top
    assert r["stats"]["blobs_uploaded"] == 3 + 6
    # everything but the 9 MiB (the pack and the version's metadata) fits in 4 KiB
    assert r["stats"]["bytes_uploaded"] < len(data) + 4096
    # and the 20 identical small files are stored once, in one pack
    repo = Repository.open(open_store(wsfs.repo), wsfs.cache_dir)
    _, packs = repo.version_refs(repo.record("demo", 1))
    assert [(p.size, p.count) for p in packs] == [(len(small), 20)]


def test_one_small_change_in_10000_files_uploads_only_it(wsfs, tmp_path):
    src = tmp_path / "src"
    for d in range(100):
        dd = src / f"pkg{d}"
        dd.mkdir(parents=True)
        for f in range(100):
            (dd / f"f{f}.js").write_bytes(f"module.exports = {d * 100 + f};\n".encode() * 3)
    (src / "large").write_bytes(os.urandom(5 << 20))
    first = wsfs.push(src, "demo")
    assert first["stats"]["files"] == 10_001
    # what the first push uploaded besides the large file: the whole tree's metadata and small files
    tree = first["store"]["bytes_out"] - (5 << 20)
    (src / "pkg42" / "f7.js").write_bytes(b"changed\n")
    r = wsfs.push(src, "demo")
    # The file is packed: it travels in a new pack, its entry in a new range.  Nothing else is
    # uploaded but the pieces above them: no chunk, no other range or pack.
    assert r["stats"]["blobs_uploaded"] == puts(r) - 1
    assert puts(r) <= 8  # a range, a pack, two listing pieces, the top, the changeset, the record
    assert r["store"]["bytes_out"] < 64 * 1024
    assert r["store"]["bytes_out"] * 8 < tree
    assert wsfs("diff", "demo@1", "demo@2").out == b"M pkg42/f7.js\n"


def test_same_tree_gives_the_same_manifest(wsfs, tmp_path):
    """The manifest's bytes depend on the tree only, not on upload timing."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"big{i}").write_bytes(os.urandom((1 + i % 3) << 20) * 3)
        (src / f"small{i}").write_bytes(b"s" * i)
    ids = set()
    for i in range(3):
        other = Wsfs(str(tmp_path / f"repo{i}"), str(tmp_path / f"cache{i}"), wsfs.env)
        other("init")
        ids.add(other.push(src, "demo", "-j", str(2 + 3 * i))["manifest"])
    ids.add(wsfs.push(src, "demo")["manifest"])
    assert len(ids) == 1


def test_the_versions_listing_goes_out_beside_the_descriptor(wsfs, tmp_path):
    """``Repository.open(listing=ws)`` on a fresh cache: the descriptor's GET and the listing are in flight at
    once (a first mount of ``ws`` waits one round trip less), and ``resolve`` takes that listing."""
    import threading

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    wsfs.push(src, "demo")
    wsfs.push(src, "demo")
    store = open_store(wsfs.repo)
    listed = threading.Event()
    get_range, listing = store.get_range, store.list
    descriptor_reads = []

    def slow_get_range(key, start, length):
        if key == "wsfs-repo.json":
            descriptor_reads.append(listed.wait(10))  # False: fetched before the listing was asked for
        return get_range(key, start, length)

    def list_(prefix):
        listed.set()
        return listing(prefix)

    store.get_range, store.list = slow_get_range, list_
    repo = Repository.open(store, str(tmp_path / "fresh-cache"), listing="demo")
    assert descriptor_reads == [True]
    record = repo.resolve(Ref.parse("demo"))
    assert record.version == 2
    assert store.stats.requests.get("list") == 1  # taken, not listed again
    assert repo.versions("demo") == [1, 2]  # a later listing is the store's own
    assert store.stats.requests.get("list") == 2
