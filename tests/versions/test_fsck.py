"""``wsfs fsck``: a whole repository passes; each kind of damage in the store is reported by name, exit 6."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from support.cli import Wsfs
from wsfs.format import tree
from wsfs.format.blobs import hexid
from wsfs.repository import Ref, Repository, blob_key, pack_map_key, segment_key, tag_key, version_key
from wsfs.store import open_store

DATA = Path(__file__).resolve().parent.parent / "data"
CHUNK = 64 * 1024


@pytest.fixture
def repo2(tmp_path):
    """A local format 2 repository: demo@1 (small files, a 4-chunk file, a symlink, a hard link), demo@2, tag t."""
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init", "--chunk-size", str(CHUNK), "--inline-threshold", "4096")
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(40):
        (src / "d" / f"f{i:02}").write_bytes(b"small %d\n" % i * (i + 1))
    (src / "big").write_bytes(os.urandom(3 * CHUNK + 100))
    os.symlink("d/f01", src / "link")
    os.link(src / "d" / "f02", src / "hard")
    w.push(src, "demo")
    (src / "d" / "f03").write_bytes(b"changed\n")
    (src / "new").write_bytes(b"new file\n")
    w.push(src, "demo")
    w("tag", "demo@1", "t")
    repo = Repository.open(open_store(w.repo), str(tmp_path / "cache2"))
    return w, repo


def refs(repo: Repository, n: int):
    record = repo.record("demo", n)
    ranges, packs = repo.version_refs(record)
    entries = [e for run in repo.version_ranges(ranges) for e in run]
    return record, ranges, packs, entries


def path(w: Wsfs, key: str) -> Path:
    return Path(w.repo) / key


def problems(r) -> list[str]:
    return [line for line in r.text.splitlines() if line.startswith("problem: ")]


def test_a_whole_repository_passes_every_level(repo2):
    w, _ = repo2
    for extra in ((), ("--full",), ("--sample", "3"), ("demo",), ("demo@2",)):
        r = w("fsck", *extra)
        assert r.code == 0 and not problems(r), (extra, r.text, r.err)
    full = w("fsck", "--full").text
    assert "1 workspace(s), 2 version(s), 1 tag(s)" in full
    assert "verified (" in full  # bytes fetched and verified


def test_a_missing_chunk_is_named_with_a_path_that_uses_it(repo2):
    w, repo = repo2
    _, _, _, entries = refs(repo, 1)
    big = next(e for e in entries if e.path == b"big")
    path(w, blob_key(big.chunks[1])).unlink()
    r = w("fsck", check=False)
    assert r.code == 6
    (line,) = problems(r)
    assert f"chunk {hexid(big.chunks[1])} is missing" in line and "demo@1: big" in line
    assert "1 problem(s) found" in r.err


def test_a_corrupt_chunk_is_found_by_full_and_by_a_sample_of_everything(repo2):
    w, repo = repo2
    _, _, _, entries = refs(repo, 1)
    big = next(e for e in entries if e.path == b"big")
    p = path(w, blob_key(big.chunks[0]))
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    assert w("fsck").code == 0  # present: the default level does not read content
    for extra in (("--full",), ("--sample", "1000")):
        r = w("fsck", *extra, check=False)
        assert r.code == 6, extra
        assert any(hexid(big.chunks[0]) in line for line in problems(r)), r.text


def test_a_damaged_segment_is_found(repo2):
    w, repo = repo2
    record, _, packs, _ = refs(repo, 1)
    (place, *_) = repo.pack_places(record, len(packs))
    assert place.segment is not None
    seg = path(w, segment_key(place.segment))
    data = bytearray(seg.read_bytes())
    data[place.offset + place.length // 2] ^= 0x40
    seg.write_bytes(bytes(data))
    r = w("fsck", "--full", check=False)
    assert r.code == 6 and any(hexid(packs[0].id) in line for line in problems(r)), r.text
    seg.unlink()
    r = w("fsck", check=False)
    assert r.code == 6
    assert any(f"its segment {hexid(place.segment)} is missing" in line for line in problems(r)), r.text


def test_a_missing_range_is_found_though_this_host_has_a_copy(repo2):
    w, repo = repo2
    _, ranges, _, _ = refs(repo, 2)  # every piece of demo@2 is now in repo's local cache
    path(w, blob_key(ranges[0].id)).unlink()
    r = w("fsck", "demo@2", check=False)
    assert r.code == 6
    assert any(f"range {hexid(ranges[0].id)} is missing" in line for line in problems(r)), r.text


def test_a_missing_pack_map_shows_its_packs_missing(repo2):
    w, repo = repo2
    record, _, packs, _ = refs(repo, 2)
    path(w, pack_map_key(bytes.fromhex(record.manifest))).unlink()
    r = w("fsck", "demo@2", check=False)
    assert r.code == 6 and any("pack" in line and "missing" in line for line in problems(r)), r.text


def test_bad_records_and_tags_are_reported_and_the_rest_still_checked(repo2):
    w, _ = repo2
    path(w, version_key("demo", 3)).write_bytes(b"{not json")
    path(w, tag_key("demo", "dangling")).write_bytes(json.dumps({"version": 9}).encode())
    r = w("fsck", check=False)
    assert r.code == 6
    lines = problems(r)
    assert any(line.startswith("problem: demo@3: version record") for line in lines), lines
    assert any(line.startswith("problem: demo@dangling: ") and "version 9" in line for line in lines), lines
    assert "2 version(s)" in r.text  # demo@1 and demo@2 were checked


def test_a_changeset_against_the_wrong_parent_is_reported(repo2):
    w, repo = repo2
    rec1 = repo.record("demo", 1)
    rec2 = repo.record("demo", 2)
    # Republish demo@2's tree as demo@3 whose changeset claims demo@1 as parent: top differs from demo@2's.
    raw = json.loads(path(w, version_key("demo", 2)).read_bytes())
    raw["parent"], raw["version"] = 2, 3
    path(w, version_key("demo", 3)).write_bytes(json.dumps(raw).encode())
    assert rec2.changeset is not None
    parent_top, _ = tree.decode_changeset(repo.get_piece(bytes.fromhex(rec2.changeset), rec2.changeset_size))
    assert parent_top == bytes.fromhex(rec1.manifest)
    r = w("fsck", check=False)
    assert r.code == 6
    (line,) = problems(r)
    assert line.startswith("problem: demo@3: the changeset is against top") and rec1.manifest in line


def test_a_format1_repository_passes(tmp_path):
    with tarfile.open(DATA / "format1-repo.tar.gz") as t:
        t.extractall(tmp_path, filter="data")
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    r = w("fsck", "--full")
    assert r.code == 0 and "version(s)" in r.text and not problems(r)


def test_fsck_cache_alone_checks_only_the_cache(repo2):
    w, _ = repo2
    path(w, version_key("demo", 3)).write_bytes(b"{not json")  # would be a store problem
    r = w("fsck", "--cache")
    assert r.code == 0 and "cached blobs" in r.text and not problems(r)


def test_fsck_api_counts_objects_once_across_versions(repo2):
    from wsfs.versions.fsck import fsck

    _, repo = repo2
    one = fsck(repo, [Ref.parse("demo@1")])
    both = fsck(repo)
    assert both.versions == 2 and both.tags == 1 and not both.problems
    assert one.objects <= both.objects < 2 * one.objects  # demo@2 shares demo@1's chunks and most packs
