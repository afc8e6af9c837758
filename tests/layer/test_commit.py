"""Commit: a write layer's changes published as new versions (wsfs.versions.commit)."""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from commit_support import describe_layer, describe_version, layer_walk
from layer_support import Base, push_tree, resolve

from support.cli import Wsfs
from wsfs.errors import InvalidArgument, NotFound, StoreUnavailable, UsageError
from wsfs.format.manifest import ROOT_INO
from wsfs.format.tree import ZERO_ID
from wsfs.layer import WriteLayer
from wsfs.repository import Repository
from wsfs.store import open_store
from wsfs.versions.commit import CommitConflict, commit, commit_layer
from wsfs.versions.diff import record_changes
from wsfs.versions.read import RangeReader


def small_tree(src: Path) -> None:
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "b.txt").write_bytes(b"bravo" * 1000)
    (src / "d").mkdir()
    (src / "d" / "x").write_bytes(b"x" * 10)
    (src / "d" / "sub").mkdir()
    (src / "d" / "sub" / "z").write_bytes(b"zulu")
    (src / "link").symlink_to("a.txt")
    os.link(src / "b.txt", src / "b2.txt")
    os.setxattr(src / "a.txt", "user.color", b"red")
    (src / "big.bin").write_bytes(os.urandom(300 * 1024) + bytes(5 << 20))


def open_layer(base: Base, state: Path) -> WriteLayer:
    return WriteLayer(str(state), base.m, base.id, base.read_base)


@pytest.fixture
def setup(tmp_path: Path):
    base = push_tree(tmp_path, small_tree)
    lay = open_layer(base, tmp_path / "state")
    yield base, lay
    lay.close()
    base.m.close()


def check_version(base: Base, lay: WriteLayer, n: int) -> None:
    assert describe_version(base.repo, base.id.workspace, n) == describe_layer(lay)


def test_commit_of_every_kind_of_change(setup) -> None:
    base, lay = setup
    root = ROOT_INO
    f = lay.create(root, b"new.txt", stat.S_IFREG | 0o640, 1000, 1000)
    lay.write(f.ino, 0, b"hello")
    lay.release(f.ino)
    a = resolve(lay, b"a.txt")
    lay.write(a.ino, 0, b"ALPHA")
    lay.setattr(a.ino, mode=0o600)
    lay.unlink(root, b"link")
    lay.symlink(root, b"link2", b"d/x", 0, 0)
    d = resolve(lay, b"d")
    lay.rename(root, b"d", root, b"e")
    lay.link(resolve(lay, b"e/x").ino, root, b"x-again")
    lay.setxattr(resolve(lay, b"e/sub/z").ino, b"user.k", b"v")
    big = resolve(lay, b"big.bin")
    lay.write(big.ino, 5 << 20, b"tail")  # into the second chunk: the first keeps its id
    lay.setattr(resolve(lay, b"b.txt").ino, size=10)
    assert d.ino == resolve(lay, b"e").ino
    sparse = lay.create(root, b"sparse", stat.S_IFREG | 0o644, 0, 0)
    lay.setattr(sparse.ino, size=13 << 20)  # holes: chunks of zeros, not stored
    lay.write(sparse.ino, 9 << 20, b"island")
    lay.release(sparse.ino)
    lay.create(root, b"empty", stat.S_IFREG | 0o644, 0, 0)
    record, stats = commit_layer(base.repo, lay, message="one")
    assert record is not None and record.version == 2 and stats.version == 2
    check_version(base, lay, 2)
    entries = {e.key: e for run in base.repo.version_ranges(base.repo.version_refs(record)[0]) for e in run}
    assert [c == ZERO_ID for c in entries[b"\0sparse"].chunks] == [True, True, False, True]
    assert entries[b"\0big.bin"].chunks[0] == next(c.cid for c in base.m.chunks(big.ino) if c.idx == 0)
    # nothing changed since: nothing to commit
    record, stats = commit_layer(base.repo, lay)
    assert record is None and stats.ours == 0


def write_file(lay: WriteLayer, path: bytes, data: bytes) -> int:
    parent, _, name = path.rpartition(b"/")
    pino = resolve(lay, parent).ino if parent else ROOT_INO
    try:
        ino = lay.lookup(pino, name).ino
        lay.setattr(ino, size=0)
    except NotFound:
        ino = lay.create(pino, name, stat.S_IFREG | 0o644, 0, 0).ino
    lay.write(ino, 0, data)
    lay.flush(ino)
    return ino


def changeset_paths(base: Base, n: int) -> list[tuple[str, bytes]]:
    repo = base.repo
    return [(c.op, c.key) for c in record_changes(repo, repo.record("w", n - 1), repo.record("w", n))]


def test_second_commit_publishes_only_what_changed_since_the_first(setup) -> None:
    base, lay = setup
    write_file(lay, b"a.txt", b"one")
    write_file(lay, b"d/new", b"new")
    assert commit_layer(base.repo, lay)[0].version == 2
    write_file(lay, b"d/x", b"changed x")
    record, stats = commit_layer(base.repo, lay)
    assert record.version == 3 and record.parent == 2
    keys = {k for _, k in changeset_paths(base, 3)}
    assert keys == {b"d\0x"}, keys  # not a.txt or d/new again
    check_version(base, lay, 3)
    # a change back to the base's content is a change too (against what was published)
    lay.unlink(resolve(lay, b"d").ino, b"new")
    record, _ = commit_layer(base.repo, lay)
    assert (record.version, {k for _, k in changeset_paths(base, 4)}) == (4, {b"d\0new", b"\0d"})
    check_version(base, lay, 4)


def test_writes_after_the_snapshot_go_into_the_next_commit(setup) -> None:
    base, lay = setup
    ino = write_file(lay, b"a.txt", b"before")
    big = resolve(lay, b"big.bin").ino
    lay.write(big, 0, b"B" * 70000)  # a block of a committed slot: rewritten copy-on-write below
    snap = lay.snapshot()
    before = describe_layer(lay)
    lay.write(ino, 0, b"AFTER!")  # in place? no: the snapshot committed these slots
    lay.write(big, 10, b"C" * 100)
    lay.unlink(ROOT_INO, b"b2.txt")
    f = lay.create(ROOT_INO, b"late", stat.S_IFREG | 0o644, 0, 0)
    lay.write(f.ino, 0, os.urandom(200_000))
    lay.sync_all()  # retires slots: they must not be reused while the snapshot reads them
    g = lay.create(ROOT_INO, b"later", stat.S_IFREG | 0o644, 0, 0)
    lay.write(g.ino, 0, b"Z" * 300_000)  # would land in freed slots
    lay.sync_all()
    try:
        record, _ = commit(base.repo, snap)
        lay.mark_published(snap)
    finally:
        snap.close()
    assert describe_version(base.repo, "w", record.version) == before
    record, _ = commit_layer(base.repo, lay)
    check_version(base, lay, record.version)


def other_writer(base: Base, tmp_path: Path, edit) -> int:
    other = open_layer(base, tmp_path / "other-state")
    try:
        edit(other)
        record, _ = commit_layer(base.repo, other)
        return record.version
    finally:
        other.close()


def test_disjoint_changes_of_another_writer_are_kept(setup, tmp_path: Path) -> None:
    base, lay = setup
    write_file(lay, b"d/mine", b"mine")
    write_file(lay, b"a.txt", b"mine too")
    v = other_writer(base, tmp_path, lambda o: (write_file(o, b"d/theirs", b"theirs"), write_file(o, b"b.txt", b"b")))
    assert v == 2
    record, stats = commit_layer(base.repo, lay)
    assert record.version == 3 and stats.rebased
    tree = describe_version(base.repo, "w", 3)
    mine = describe_layer(lay)
    assert tree[b"d/mine"] == mine[b"d/mine"] and tree[b"a.txt"] == mine[b"a.txt"]
    assert tree[b"d/theirs"][5][0] == 6 and tree[b"b.txt"][5][0] == 1
    assert set(tree) == set(mine) | {b"d/theirs"}


def test_overlapping_changes_conflict_and_ours_wins_on_request(setup, tmp_path: Path) -> None:
    base, lay = setup
    write_file(lay, b"a.txt", b"mine")
    write_file(lay, b"d/sub/new", b"below d")
    other_writer(base, tmp_path, lambda o: write_file(o, b"a.txt", b"theirs"))
    other_writer(base, tmp_path / "2", lambda o: (o.unlink(resolve(o, b"d/sub").ino, b"z"), o.rmdir(resolve(o, b"d").ino, b"sub")))
    before = describe_layer(lay)
    with pytest.raises(CommitConflict) as e:
        commit_layer(base.repo, lay)
    assert e.value.exit_code == 5
    assert b"a.txt" in e.value.paths and b"d/sub" in e.value.paths and b"d/sub/new" in e.value.paths
    assert base.repo.latest("w") == 3  # nothing published
    assert describe_layer(lay) == before  # nothing lost
    record, stats = commit_layer(base.repo, lay, ours=True)
    assert record.version == 4 and b"a.txt" in stats.overwritten
    tree = describe_version(base.repo, "w", 4)
    assert tree[b"a.txt"] == before[b"a.txt"] and tree[b"d/sub/new"] == before[b"d/sub/new"]
    assert b"d/sub/z" not in tree  # theirs where we did not overlap


class LostAnswers:
    """A store whose conditional creates succeed but answer as if the connection dropped (*lose* times)."""

    def __init__(self, inner, lose: int = 1) -> None:
        self.inner, self.lose = inner, lose

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.inner.put_if_absent(key, data)
        if self.lose:
            self.lose -= 1
            raise StoreUnavailable("connection reset by peer (after the write)")


class Unreachable:
    """A store that cannot be reached at all."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        def fail(*a, **kw):
            raise StoreUnavailable("store unreachable: connection refused")
        return fail


def test_a_lost_answer_to_the_create_is_recognised(setup) -> None:
    base, lay = setup
    write_file(lay, b"a.txt", b"lost answer")
    repo = Repository(LostAnswers(base.repo.store), base.repo.config, base.cache_dir)
    record, _ = commit_layer(repo, lay)
    assert record.version == 2 and base.repo.versions("w") == [1, 2]
    assert commit_layer(base.repo, lay)[0] is None  # the memo knows it was published


def test_unreachable_store_keeps_everything_and_a_later_commit_succeeds(setup) -> None:
    base, lay = setup
    write_file(lay, b"a.txt", b"offline")
    before = describe_layer(lay)
    offline = Repository(Unreachable(base.repo.store), base.repo.config, base.cache_dir)
    with pytest.raises(StoreUnavailable) as e:
        commit_layer(offline, lay)
    assert e.value.exit_code == 8
    assert describe_layer(lay) == before and base.repo.versions("w") == [1]
    record, _ = commit_layer(base.repo, lay)
    assert record.version == 2
    check_version(base, lay, 2)


def test_unreachable_after_the_create_is_recovered_from_the_intent(setup) -> None:
    base, lay = setup
    write_file(lay, b"a.txt", b"published, answer lost for good")
    repo = Repository(LostAnswers(base.repo.store, lose=1), base.repo.config, base.cache_dir)

    class Blind(Repository):
        def record(self, ws, n):  # the read-back of the new record fails too: the commit cannot tell
            if n >= 2:
                raise StoreUnavailable("unreachable")
            return super().record(ws, n)

    blind = Blind(repo.store, repo.config, base.cache_dir)
    with pytest.raises(StoreUnavailable):
        commit_layer(blind, lay)
    assert base.repo.versions("w") == [1, 2]  # it was created
    write_file(lay, b"b.txt", b"more")
    record, stats = commit_layer(base.repo, lay)
    assert stats.recovered == 2 and record.version == 3 and record.parent == 2
    assert {k for _, k in changeset_paths(base, 3)} == {b"\0b.txt", b"\0b2.txt"}
    check_version(base, lay, 3)


class SlowBlobs:
    """A store whose blob PUTs take 50 ms (a round trip), counting how many run at once."""

    def __init__(self, inner, fail_after: int | None = None) -> None:
        import threading

        self.inner, self.fail_after = inner, fail_after
        self.lock = threading.Lock()
        self.running = self.most = self.puts = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes) -> None:
        if not key.startswith("blobs/"):
            return self.inner.put(key, data)
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.puts += 1
            fail = self.fail_after is not None and self.puts > self.fail_after
        try:
            time.sleep(0.05)
            if fail:
                raise StoreUnavailable("connection reset by peer")
            return self.inner.put(key, data)
        finally:
            with self.lock:
                self.running -= 1


def test_one_chunk_files_are_uploaded_side_by_side_and_a_failed_one_fails_the_commit(setup) -> None:
    """A commit of many new files of one chunk each does not wait for each file's upload in turn (at 20 ms
    RTT 270 such files took 12 s); a chunk that cannot be stored fails the commit, nothing published."""
    base, lay = setup
    for i in range(24):
        write_file(lay, b"one%02d.bin" % i, os.urandom(200 * 1024))  # above the inline threshold: a chunk each
    slow = SlowBlobs(base.repo.store, fail_after=20)
    with pytest.raises(StoreUnavailable):
        commit_layer(Repository(slow, base.repo.config, base.cache_dir), lay)
    assert base.repo.versions("w") == [1]
    assert slow.most > 1, "the chunks of different files were stored one at a time"
    slow = SlowBlobs(base.repo.store)
    t0 = time.monotonic()
    record, _ = commit_layer(Repository(slow, base.repo.config, base.cache_dir), lay)
    assert record.version == 2 and slow.most > 1
    assert time.monotonic() - t0 < 24 * 0.05, "the uploads did not overlap"
    check_version(base, lay, 2)


def test_a_commit_puts_small_new_chunks_without_asking_the_store_first(setup) -> None:
    """A HEAD before each PUT costs a round trip; for a chunk under 1 MiB sending it is as cheap."""
    base, lay = setup
    for i in range(6):
        write_file(lay, b"one%02d.bin" % i, os.urandom(200 * 1024))
    write_file(lay, b"two.bin", os.urandom(2 << 20))  # one chunk of 2 MiB: asked about first
    st = base.repo.store.stats
    heads0, puts0 = st.requests.get("head", 0), st.requests.get("put", 0)
    record, stats = commit_layer(base.repo, lay)
    assert record.version == 2 and stats.chunks_uploaded == 7
    assert st.requests.get("head", 0) - heads0 == 1
    assert st.requests.get("put", 0) - puts0 == stats.objects_uploaded + 1  # and the record
    check_version(base, lay, 2)


def test_a_store_that_refuses_chunks_fails_the_commit_without_trying_every_chunk(setup) -> None:
    """Chunks handed to the uploader give up once one failed: a stalling store fails a commit after one
    request's budget, not one per chunk."""
    base, lay = setup
    for i in range(40):
        write_file(lay, b"one%02d.bin" % i, os.urandom(200 * 1024))
    slow = SlowBlobs(base.repo.store, fail_after=0)  # every blob PUT fails, after 50 ms
    with pytest.raises(StoreUnavailable):
        commit_layer(Repository(slow, base.repo.config, base.cache_dir), lay)
    assert base.repo.versions("w") == [1]
    assert slow.puts <= 16, f"{slow.puts} of 40 chunks were still tried after the first failure"
    record, _ = commit_layer(base.repo, lay)
    assert record.version == 2
    check_version(base, lay, 2)


def materialize(lay: WriteLayer, dest: Path) -> None:
    """Write the layer's merged view to *dest* as files (owners, modes, mtimes, xattrs, hard links)."""
    d = os.fsencode(dest)
    seen: dict[int, bytes] = {}
    dirs: list[tuple[bytes, object]] = []
    for path, a in layer_walk(lay):
        p = os.path.join(d, path) if path else d
        fmt = stat.S_IFMT(a.mode)
        if fmt == stat.S_IFDIR:
            if path:
                os.mkdir(p)
            dirs.append((p, a))
        elif fmt == stat.S_IFLNK:
            os.symlink(lay.readlink(a.ino), p)
        elif fmt == stat.S_IFREG:
            if a.ino in seen:
                os.link(seen[a.ino], p)
                continue
            seen[a.ino] = p
            with open(p, "wb") as f:
                f.write(lay.read(a.ino, 0, a.size))
        else:
            os.mknod(p, a.mode, a.rdev)
        for k, v in lay.xattrs(a.ino).items():
            os.setxattr(p, k, v, follow_symlinks=False)
        os.chown(p, a.uid, a.gid, follow_symlinks=False)
        if fmt != stat.S_IFLNK:
            os.chmod(p, stat.S_IMODE(a.mode))
        os.utime(p, ns=(a.mtime_ns, a.mtime_ns), follow_symlinks=False)
    for p, a in reversed(dirs):
        for k, v in lay.xattrs(a.ino).items():
            os.setxattr(p, k, v)
        os.chown(p, a.uid, a.gid)
        os.chmod(p, stat.S_IMODE(a.mode))
        os.utime(p, ns=(a.mtime_ns, a.mtime_ns))


def test_same_tree_same_pieces_as_push(setup, tmp_path: Path) -> None:
    """Determinism: the version a commit publishes has the top a push of the same tree has.

    No directory is created in the layer (a new directory's size is 0 in the
    layer, a file system's own on disk: the one thing a push of a copy cannot
    reproduce); renames, links, xattrs, symlinks, chmod, growth small -> chunked
    and back are all in.
    """
    base, lay = setup
    uid, gid = os.getuid(), os.getgid()
    write_file(lay, b"a.txt", os.urandom(200_000))  # small (packed) -> chunked
    big = resolve(lay, b"big.bin").ino
    lay.setattr(big, size=1000)  # chunked -> small
    lay.rename(ROOT_INO, b"d", ROOT_INO, b"renamed")
    lay.link(resolve(lay, b"renamed/x").ino, resolve(lay, b"renamed/sub").ino, b"x2")
    lay.symlink(ROOT_INO, b"s", b"renamed/x2", uid, gid)
    lay.setxattr(resolve(lay, b"renamed/sub/z").ino, b"user.tag", b"1")
    lay.setattr(resolve(lay, b"b.txt").ino, mode=0o751)
    f = lay.create(ROOT_INO, b"empty", stat.S_IFREG | 0o644, uid, gid)
    lay.create(ROOT_INO, b"fifo", stat.S_IFIFO | 0o600, uid, gid)
    lay.release(f.ino)
    record, _ = commit_layer(base.repo, lay)
    copy = tmp_path / "copy"
    copy.mkdir()
    materialize(lay, copy)
    w = Wsfs(str(tmp_path / "repo2"), str(tmp_path / "cache2"))
    w("init")
    w.push(copy, "w")
    repo2 = Repository.open(open_store(w.repo), w.cache_dir)
    assert repo2.record("w", 1).manifest == record.manifest


def many_files(src: Path) -> None:
    for d in range(40):
        dd = src / f"dir{d:02d}"
        dd.mkdir()
        for f in range(75):
            (dd / f"file{f:03d}.txt").write_bytes(f"{d}/{f} ".encode() * (20 + f))


def test_cost_follows_the_change(tmp_path: Path) -> None:
    """One small file modified in a 3,000-file tree: a few PUTs and little data, as push (issue 12's goals)."""
    base = push_tree(tmp_path, many_files)
    lay = open_layer(base, tmp_path / "state")
    try:
        write_file(lay, b"dir17/file042.txt", b"changed")
        st = base.repo.store.stats
        puts0, out0 = st.requests["put"], st.bytes_out
        record, stats = commit_layer(base.repo, lay)
        puts, sent = st.requests["put"] - puts0, st.bytes_out - out0
        assert record.version == 2 and stats.changed == 1 and stats.files_read == 1
        assert puts <= 10, puts
        assert sent < 300_000, sent
        assert stats.objects_uploaded == puts - 1  # all but the record
        # 100 files spread over the tree
        for i in range(100):
            write_file(lay, b"dir%02d/file%03d.txt" % (i % 40, (i * 7) % 75), b"again %d" % i)
        puts0, out0 = st.requests["put"], st.bytes_out
        record, stats = commit_layer(base.repo, lay)
        assert stats.changed == 100 and stats.files_read == 100
        assert st.bytes_out - out0 < 2_000_000, st.bytes_out - out0
        check_version(base, lay, 3)
    finally:
        lay.close()
        base.m.close()


def test_a_commit_does_not_read_back_what_the_commit_before_uploaded(tmp_path: Path) -> None:
    """With the daemon's blob cache, a commit that re-cuts packs the previous commit uploaded (a file
    changed in one, then all of them removed) makes no GET: they were kept on this host, and a
    removal needs none of the removed files' packs."""
    from wsfs.cache import BlobCache

    base = push_tree(tmp_path, many_files)
    cache = BlobCache(base.repo, str(tmp_path / "blobs"))
    reader = RangeReader(base.repo, base.m.path, cache)
    lay = WriteLayer(str(tmp_path / "state"), base.m, base.id, reader.read)
    st = base.repo.store.stats
    try:
        new = lay.mkdir(ROOT_INO, b"new", 0o755, 0, 0).ino
        for i in range(600):
            write_file(lay, b"new/f%03d" % i, os.urandom(50 + 3 * i))
        record, stats = commit_layer(base.repo, lay, cache=cache)
        assert record.version == 2 and stats.changed == 602  # the files, new/ and the root
        packs = len(base.repo.version_refs(record)[1]) - len(base.repo.version_refs(base.repo.record("w", 1))[1])
        assert packs >= 10, packs  # the new files fill several packs

        def gets_of_commit(version: int) -> int:
            gets = st.requests["get"]
            record, _ = commit_layer(base.repo, lay, cache=cache)
            gets = st.requests["get"] - gets
            assert record.version == version
            check_version(base, lay, version)
            return gets

        write_file(lay, b"new/f300", b"changed")  # its pack is cut again: the other files' bytes are local
        assert gets_of_commit(3) == 0
        for i in range(600):
            lay.unlink(new, b"f%03d" % i)
        lay.rmdir(ROOT_INO, b"new")
        assert gets_of_commit(4) == 0
        # Without a cache only the packs around the removed range are read, not those of the removed files.
        write_file(lay, b"dir00/file000.txt", b"edited")
        lay.mkdir(ROOT_INO, b"new", 0o755, 0, 0)
        for i in range(600):
            write_file(lay, b"new/f%03d" % i, os.urandom(50 + 3 * i))
        assert commit_layer(base.repo, lay)[0].version == 5
        new = resolve(lay, b"new").ino
        for i in range(600):
            lay.unlink(new, b"f%03d" % i)
        lay.rmdir(ROOT_INO, b"new")
        gets = st.requests["get"]
        assert commit_layer(base.repo, lay)[0].version == 6
        gets = st.requests["get"] - gets
        assert gets <= 3, gets
        check_version(base, lay, 6)
    finally:
        lay.close()
        cache.close()
        base.m.close()


def test_the_version_a_commit_remembers_is_the_one_it_published(tmp_path: Path) -> None:
    """The next commit of the same process builds on the tree it stored, kept in memory rather than
    decoded again: that is exactly what Parent.load gives from the store."""
    from wsfs.versions import commit as commit_mod
    from wsfs.versions.publish import Parent

    base = push_tree(tmp_path, many_files)
    lay = open_layer(base, tmp_path / "state")
    try:
        write_file(lay, b"dir03/file001.txt", b"changed")
        lay.mkdir(ROOT_INO, b"new", 0o755, 0, 0)
        for i in range(300):
            write_file(lay, b"new/f%03d" % i, os.urandom(40 + 5 * i))
        write_file(lay, b"new/large", os.urandom(3 << 20))
        record, _ = commit_layer(base.repo, lay)
        remembered = commit_mod._head(base.repo, "w", record.version)
        assert commit_mod._last is not None and remembered is commit_mod._last[1]
        loaded = Parent.load(base.repo, "w", record.version)
        for f in ("top", "chunks", "packs", "places", "bodies", "ranges", "records", "pack_refs"):
            assert getattr(remembered, f) == getattr(loaded, f), f
        assert remembered.pieces >= loaded.pieces
        write_file(lay, b"new/f100", b"again")
        assert commit_layer(base.repo, lay)[0].version == record.version + 1
        check_version(base, lay, record.version + 1)
    finally:
        lay.close()
        base.m.close()


def test_the_layer_thread_does_not_fsync_for_a_commit(setup, monkeypatch) -> None:
    """As the daemon commits: the snapshot and the memo are committed on the layer's (trio) thread without
    an fsync; the commit's thread makes them durable, the snapshot before the record is created, the
    memo before the intent file goes."""
    import threading

    base, lay = setup
    write_file(lay, b"d/new", b"new")
    lay.sync_all()
    write_file(lay, b"d/new", b"newer")  # retires the slot the last commit used
    assert lay.pool.retired
    calls: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append((threading.current_thread().name, os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1]))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    layer_thread = threading.current_thread().name
    snap = lay.snapshot(durable=False)
    assert calls == [] and lay.pool.retired  # still retired (never reused) until a durable commit
    out: list = []

    def run() -> None:
        out.append(commit(base.repo, snap))
        assert base.repo.versions("w") == [1, 2]

    t = threading.Thread(target=run, name="committer")
    t.start()
    t.join()
    assert out and out[0][0].version == 2
    assert ("committer", "layer.db-wal") in calls and calls.index(("committer", "layer.db-wal")) < calls.index(
        ("committer", "commit-intent.tmp")), calls
    del calls[:]
    lay.mark_published(snap, durable=False)
    assert calls == [] and (Path(lay.state.path) / "commit-intent").exists()
    t = threading.Thread(target=snap.recorded, name="committer")
    t.start()
    t.join()
    assert calls == [("committer", "layer.db-wal")] and not (Path(lay.state.path) / "commit-intent").exists()
    assert all(name != layer_thread for name, _ in calls)
    snap.close()
    assert lay.pending() == []
    check_version(base, lay, 2)


def test_a_memo_written_in_parts_and_cut_short_is_completed_from_the_intent(setup, tmp_path: Path) -> None:
    """The daemon writes a large memo in parts (each a short turn of its trio thread); a batch commit may
    make some parts durable before the version is recorded in the layer.  Cut short there (a crash), the
    next commit applies the intent's rows and publishes only what is new."""
    base, lay = setup
    for i in range(12):
        write_file(lay, b"d/f%d" % i, b"content %d" % i)
    snap = lay.snapshot(durable=False)
    record, _ = commit(base.repo, snap)
    assert record.version == 2
    rows = sorted(snap.publication.rows.items())
    assert len(rows) > 4
    lay.write_memo(snap, rows[:4])
    lay.sync_all()  # a batch commit in between: those rows are durable, the version is not recorded
    snap.close()
    assert (Path(lay.state.path) / "commit-intent").exists()
    assert lay.published()[0] == 1
    lay.close()  # the daemon died here
    lay = open_layer(base, tmp_path / "state")
    try:
        write_file(lay, b"after.txt", b"written after the crash")
        record, stats = commit_layer(base.repo, lay)
        assert stats.recovered == 2 and record.version == 3 and record.parent == 2
        assert [p for _, p in changeset_paths(base, 3)] == [b"", b"\0after.txt"]  # the root's mtime, the file
        assert lay.pending() == [] and lay.published()[0] == 3
        check_version(base, lay, 3)
    finally:
        lay.close()


@pytest.mark.parametrize("form", ["binary", "json", "torn"])
def test_the_intent_is_read_back_in_both_encodings_and_a_torn_one_is_none(setup, form: str) -> None:
    """The intent file names the memo rows of a version about to be created: written in binary, read also in
    the JSON an earlier wsfs wrote (a state folder left by it); cut short anywhere, it is no intent."""
    import json

    from wsfs.layer.snapshot import Memo, Publication

    base, lay = setup
    write_file(lay, b"d/f", b"content")
    write_file(lay, b"d/g", b"")
    snap = lay.snapshot(durable=False)
    try:
        commit(base.repo, snap)
        assert snap.publication is not None and len(snap.publication.rows) >= 3
        pub = snap.publication._replace(rows={**snap.publication.rows, b"\0gone": Memo(None, 0, 0)})  # a removal
        raw = pub.encode()
        if form == "json":
            raw = json.dumps({"version": pub.version, "top": pub.top, "record": pub.record.decode(), "rows": [
                [k.hex(), None if m.body is None else m.body.hex(), m.ino, m.ctime_ns] for k, m in pub.rows.items()]
            }).encode()
        path = Path(lay.state.path) / "commit-intent"
        cuts = [len(raw) - 1, len(raw) // 2, 25, 3] if form == "torn" else [len(raw)]
        for cut in cuts:
            path.write_bytes(raw[:cut])
            got = snap.intent()
            assert got == (None if form == "torn" else pub), cut
        if form == "torn":  # whole, but not what a commit writes: no intent either, and no exception
            path.write_bytes(b'{"version": 2, "top": "00", "record": 5, "rows": []}')
            assert snap.intent() is None
        assert Publication.decode(pub.encode()) == pub
    finally:
        snap.close()


def fill(lay: WriteLayer, bigs: int, big_size: int, smalls: int) -> None:
    """*bigs* random files of *big_size* bytes at the top and *smalls* small ones in ``many/``."""
    for i in range(bigs):
        write_file(lay, b"big%d" % i, os.urandom(big_size))
    lay.mkdir(ROOT_INO, b"many", 0o755, 0, 0)
    for i in range(smalls):
        write_file(lay, b"many/f%d" % i, os.urandom(100 + i))


def test_pieces_are_stored_children_before_parents(setup) -> None:
    """A stored piece vouches for what it lists (a push finds a stored top and asks about nothing below it;
    a killed commit must leave no parent without its children): each listing is PUT only once every range
    is stored, the top only once the segments, the pack map and the listings are, whatever overlaps."""
    import threading

    from wsfs.format import tree

    base, lay = setup
    fill(lay, 2, 5 << 20, 2500)
    repo = base.repo
    lock, clock, log = threading.Lock(), [0], []

    def tick() -> int:
        with lock:
            clock[0] += 1
            return clock[0]

    def recorded(kind_of, fn):
        def call(key, data):
            start = tick()
            if kind_of(key, data) in ("range", "segments"):
                time.sleep(0.02)  # a store's round trip: a parent started too early would not wait for it
            out = fn(key, data)
            log.append((kind_of(key, data), start, tick()))
            return out
        return call

    kinds = {tree.MAGIC_RANGE: "range", tree.MAGIC_LIST: "list", tree.MAGIC_TOP: "top", tree.MAGIC_CHANGES: "changes"}
    repo.put_blob = recorded(lambda cid, data: kinds.get(bytes(data[:4]), "chunk"), repo.put_blob)
    repo.store.put = recorded(lambda key, data: key.split("/")[0], repo.store.put)  # segments, pack maps, blobs
    record, _ = commit_layer(repo, lay)
    assert record.version == 2
    by_kind: dict[str, list[tuple[int, int]]] = {}
    for kind, start, end in log:
        by_kind.setdefault(kind, []).append((start, end))
    assert {"range", "list", "top", "segments", "packmaps"} <= by_kind.keys(), sorted(by_kind)
    ranges_done = max(end for _, end in by_kind["range"] + by_kind.get("changes", []))
    assert all(start > ranges_done for start, _ in by_kind["list"]), "a listing was stored before its ranges"
    below_top = max(end for k in ("list", "segments", "packmaps") for _, end in by_kind[k])
    assert all(start > below_top for start, _ in by_kind["top"]), "the top was stored before its children"
    check_version(base, lay, 2)


def child_env() -> dict[str, str]:
    """The environment of a child script of this directory (wsfs, tests/ and tests/layer importable)."""
    here = Path(__file__).parent
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parents[1] / "src"), str(here.parent), str(here)]))


def test_kill_9_during_commits_then_commit_again(tmp_path: Path) -> None:
    """Commits killed at random moments publish a whole version or none; the layer then commits once."""
    base = push_tree(tmp_path, small_tree)
    state = tmp_path / "state"
    lay = open_layer(base, state)
    fill(lay, 8, 6 << 20, 400)
    expected = describe_layer(lay)
    lay.close()
    here, env = Path(__file__).parent, child_env()
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    outcomes = []
    for delay in (0.01, 0.03, 0.06, 0.1, 0.15, 0.25, 0.4, 0.6):
        child = subprocess.Popen([sys.executable, str(here / "commit_child.py"), base.repo_url, base.cache_dir, "w",
                                  str(state)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        assert child.stdout is not None
        assert child.stdout.readline() == b"S\n"
        time.sleep(delay * rng.uniform(0.5, 1.5))
        child.kill()
        outcomes.append(child.communicate()[0].strip() or b"killed")
        assert base.repo.versions("w") in ([1], [1, 2])
    lay = open_layer(base, state)
    try:
        record, _ = commit_layer(base.repo, lay)
        print("commit kill test:", outcomes)
        assert base.repo.versions("w") == [1, 2], outcomes
        assert describe_layer(lay) == expected
        check_version(base, lay, 2)
        assert commit_layer(base.repo, lay)[0] is None
    finally:
        lay.close()
        base.m.close()


def test_kill_9_during_a_rebase_leaves_one_state_or_the_other(tmp_path: Path) -> None:
    """A re-base killed at any moment leaves the layer over the old base with its memo or over the new one
    with nothing pending: the same tree either way, and nothing left to publish."""
    base = push_tree(tmp_path, small_tree)
    template = tmp_path / "template"
    lay = open_layer(base, template)
    fill(lay, 4, 3 << 20, 300)
    assert commit_layer(base.repo, lay)[0].version == 2
    expected = describe_layer(lay)
    lay.close()
    head = Base(base.repo, "w", 2, base.repo_url, base.cache_dir)
    here, env = Path(__file__).parent, child_env()
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    where = []
    try:
        for i in range(10):
            state = tmp_path / f"state{i}"
            shutil.copytree(template, state)
            child = subprocess.Popen([sys.executable, str(here / "rebase_child.py"), base.repo_url, base.cache_dir,
                                      "w", str(state)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            assert child.stdout is not None
            assert child.stdout.readline() == b"R\n"
            time.sleep(rng.uniform(0, 0.03))
            child.kill()
            child.communicate()
            try:
                lay = open_layer(base, state)
                where.append(1)
            except UsageError:  # over w@2 now
                lay = WriteLayer(str(state), head.m, head.id, head.read_base)
                where.append(2)
                assert lay.changes() == [] and lay.published()[0] == 2
            try:
                assert describe_layer(lay) == expected
                assert lay.pending() == []
                assert commit_layer(base.repo, lay)[0] is None
            finally:
                lay.close()
        print("re-base kill test: over", where)
        assert base.repo.versions("w") == [1, 2]
    finally:
        head.m.close()
        base.m.close()


def test_pending_is_the_delta_since_the_last_commit(setup) -> None:
    base, lay = setup
    assert lay.pending() == []
    write_file(lay, b"a.txt", b"12345")
    write_file(lay, b"d/new", b"new")
    lay.unlink(ROOT_INO, b"link")
    got = {(p.path, p.kind, p.size) for p in lay.pending()}
    assert got == {(b"a.txt", "M", 5), (b"d/new", "A", 3), (b"link", "D", 0), (b"d", "M", 4096)} | (
        {(b"", "M", lay.getattr(ROOT_INO).size)})
    _assert_pending_ctimes(lay)
    assert lay.published() == (1, base.id.top)
    record, _ = commit_layer(base.repo, lay)
    assert lay.pending() == [] and lay.published() == (2, record.manifest)
    write_file(lay, b"d/new", b"newer")
    lay.symlink(ROOT_INO, b"link", b"b.txt", 0, 0)
    got = {(p.path, p.kind) for p in lay.pending()}
    assert got == {(b"d/new", "M"), (b"link", "A"), (b"", "M")}
    _assert_pending_ctimes(lay)
    lay.unlink(ROOT_INO, b"a.txt")  # committed above: a deletion found through the memo
    assert {(p.path, p.kind) for p in lay.pending()} == {(b"d/new", "M"), (b"link", "A"), (b"", "M"), (b"a.txt", "D")}
    _assert_pending_ctimes(lay)
    commit_layer(base.repo, lay)
    assert lay.pending() == []


def _assert_pending_ctimes(lay) -> None:
    """Each pending path carries its entry's ctime, a deletion its directory's (the age gauge reads them)."""
    for p in lay.pending():
        at = lay.resolve(p.path if p.kind != "D" else p.path.rpartition(b"/")[0])
        assert at is not None and p.ctime_ns == at.ctime_ns > 0, p


def test_discard_goes_back_to_the_base(setup) -> None:
    base, lay = setup
    before = describe_layer(lay)
    write_file(lay, b"a.txt", b"changed")
    write_file(lay, b"d/new", b"new")
    lay.mkdir(resolve(lay, b"d").ino, b"nd", 0o755, 0, 0)
    write_file(lay, b"d/nd/deep", b"deep")
    lay.unlink(resolve(lay, b"d/sub").ino, b"z")
    lay.setxattr(resolve(lay, b"big.bin").ino, b"user.x", b"1")
    lay.write(resolve(lay, b"big.bin").ino, 10, b"zz")
    affected = lay.discard([b"d", b"a.txt"])
    assert {p for p, _ in affected} >= {b"a.txt", b"d/new", b"d/nd", b"d/nd/deep", b"d/sub/z"}
    assert {p.path for p in lay.pending()} == {b"big.bin"}
    lay.discard()
    assert lay.pending() == [] and describe_layer(lay) == before
    # after a commit, a path changed again cannot go back to the base (no re-base yet): refused, nothing changed
    write_file(lay, b"a.txt", b"committed")
    commit_layer(base.repo, lay)
    write_file(lay, b"a.txt", b"again")
    write_file(lay, b"fresh", b"fresh")
    now = describe_layer(lay)
    with pytest.raises(UsageError):
        lay.discard([b"a.txt"])
    assert describe_layer(lay) == now
    lay.discard([b"fresh"])
    assert {p.path for p in lay.pending()} == {b"a.txt", b""}


@pytest.mark.parametrize("store_kind", ["s3"], indirect=True)
def test_two_writers_over_s3(repo_url, subprocess_env, store, tmp_path: Path) -> None:
    """Two layers over one version commit to S3 over HTTP: disjoint changes both land; an overlap conflicts."""
    src = tmp_path / "src"
    src.mkdir()
    small_tree(src)
    w = Wsfs(repo_url, str(tmp_path / "cache"), subprocess_env)
    w("init")
    w.push(src, "w")
    repo = Repository.open(store, str(tmp_path / "cache"))
    base = Base(repo, "w", 1, repo_url, str(tmp_path / "cache"))
    one, two = open_layer(base, tmp_path / "one"), open_layer(base, tmp_path / "two")
    try:
        write_file(one, b"d/one", os.urandom(5 << 20))  # chunked
        write_file(two, b"two", b"two")
        write_file(two, b"a.txt", b"two's")
        assert commit_layer(repo, one)[0].version == 2
        record, stats = commit_layer(repo, two)
        assert record.version == 3 and stats.rebased
        tree = describe_version(repo, "w", 3)
        assert tree[b"d/one"] == describe_layer(one)[b"d/one"] and tree[b"two"] == describe_layer(two)[b"two"]
        write_file(one, b"a.txt", b"one's")
        with pytest.raises(CommitConflict) as e:
            commit_layer(repo, one)
        assert e.value.paths == [b"a.txt"] and repo.latest("w") == 3
    finally:
        one.close()
        two.close()
        base.m.close()


def test_a_format_1_state_folder_gets_the_memo(setup, tmp_path: Path) -> None:
    base, lay = setup
    write_file(lay, b"a.txt", b"before the upgrade")
    lay.close()
    import apsw

    db = apsw.Connection(str(tmp_path / "state" / "layer.db"))
    db.execute("DROP TABLE published; UPDATE meta SET value = 1 WHERE key = 'format'")
    db.close()
    lay2 = open_layer(base, tmp_path / "state")
    try:
        assert [p.path for p in lay2.pending()] == [b"a.txt"]
        assert commit_layer(base.repo, lay2)[0].version == 2
        check_version(base, lay2, 2)
    finally:
        lay2.close()


class Racing:
    """A store where another writer publishes just before our first conditional create."""

    def __init__(self, inner, race) -> None:
        self.inner, self.race = inner, race

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def put_if_absent(self, key: str, data: bytes) -> None:
        if self.race is not None:
            race, self.race = self.race, None
            race()
        self.inner.put_if_absent(key, data)


def test_a_version_published_during_the_commit_is_rebased_onto(setup, tmp_path: Path) -> None:
    base, lay = setup
    write_file(lay, b"d/mine", b"mine")
    repo = Repository(Racing(base.repo.store, lambda: other_writer(base, tmp_path, lambda o: write_file(o, b"theirs", b"t"))),
                      base.repo.config, base.cache_dir)
    record, stats = commit_layer(repo, lay)
    assert record.version == 3 and record.parent == 2 and stats.rebased
    tree = describe_version(base.repo, "w", 3)
    assert b"theirs" in tree and tree[b"d/mine"] == describe_layer(lay)[b"d/mine"]


def test_range_reader_reads_what_the_version_holds(setup, tmp_path) -> None:
    """The thread-safe read_base (wsfs.versions.read.RangeReader) gives a layer the base's bytes."""
    from wsfs.cache import BlobCache

    base, _ = setup
    cache = BlobCache(base.repo, str(tmp_path / "rcache"))
    reader = RangeReader(base.repo, base.m.path, cache)
    try:
        for path in (b"a.txt", b"b.txt", b"big.bin", b"d/sub/z"):
            node = base.path(path)
            for off, n in ((0, node.size), (3, 70_000), (node.size - 2, 10), (4 << 20, 100)):
                assert reader.read(node, off, n) == base.read_base(node, off, n), (path, off, n)
    finally:
        cache.close()


def test_a_change_this_layer_never_saw_is_a_conflict_not_overwritten(setup, tmp_path: Path) -> None:
    """The layer does not show other writers' changes (no re-base), so what it saw at a path is what it
    committed there (or the base's).  Another writer changes a path after our commit of it; our next
    commit rebases over that without touching the path; then we write the path again, over what we saw:
    publishing it would silently drop their change (it did, before), so it is a conflict."""
    from layer_support import Base

    base, lay = setup
    write_file(lay, b"a.txt", b"A1")
    assert commit_layer(base.repo, lay)[0].version == 2
    over_ours = Base(base.repo, "w", 2, base.repo_url, base.cache_dir)  # a writer that saw our A1
    try:
        assert other_writer(over_ours, tmp_path, lambda o: write_file(o, b"a.txt", b"B")) == 3
    finally:
        over_ours.m.close()
    write_file(lay, b"d/x", b"another path")
    record, stats = commit_layer(base.repo, lay)
    assert record.version == 4 and stats.rebased
    assert describe_version(base.repo, "w", 4)[b"a.txt"] != describe_version(base.repo, "w", 2)[b"a.txt"]  # B
    write_file(lay, b"a.txt", b"A2, written over A1")  # the layer still shows A1
    with pytest.raises(CommitConflict) as e:
        commit_layer(base.repo, lay)
    assert e.value.paths == [b"a.txt"] and base.repo.latest("w") == 4
    record, stats = commit_layer(base.repo, lay, ours=True)  # on request, ours
    assert record.version == 5 and stats.overwritten == [b"a.txt"]
    check_version(base, lay, 5)


def test_the_version_this_layer_last_published_is_gone(setup, tmp_path: Path) -> None:
    """gc dropped the version the layer last published (its lease expired while it was not mounted): the
    next commit compares the head with what the layer saw, path by path, instead of failing."""
    from wsfs.repository import version_key

    base, lay = setup
    write_file(lay, b"a.txt", b"A1")
    assert commit_layer(base.repo, lay)[0].version == 2
    assert other_writer(base, tmp_path, lambda o: write_file(o, b"d/theirs", b"T")) == 3
    base.repo.store.delete(version_key("w", 2))  # the layer's version dropped (gc keeps the latest, 3)
    Path(base.repo._record_path("w", 2)).unlink(missing_ok=True)
    assert other_writer(base, tmp_path / "2", lambda o: write_file(o, b"d/x", b"X")) == 4
    write_file(lay, b"d/mine", b"mine")
    record, _ = commit_layer(base.repo, lay)
    tree = describe_version(base.repo, "w", 5)
    assert {b"d/mine", b"d/x"} <= set(tree) and tree[b"a.txt"] == describe_layer(lay)[b"a.txt"]
    write_file(lay, b"d/x", b"ours over X, which this layer never saw")
    with pytest.raises(CommitConflict) as e:
        commit_layer(base.repo, lay)
    assert e.value.paths == [b"d/x"]


def test_rebase_onto_the_version_a_commit_published(setup, tmp_path: Path) -> None:
    """After an idle commit the layer re-bases onto the version it published: nothing pending, the
    other writer's changes in view, the next commit costs only what changed after it, and a reopened
    state folder is over the new base."""
    base, first = setup
    first.close()
    bases = [base]
    lay = WriteLayer(str(tmp_path / "state"), base.m, base.id, lambda n, o, s: bases[-1].read_base(n, o, s))
    try:
        write_file(lay, b"d/mine", b"mine")
        lay.unlink(ROOT_INO, b"b2.txt")
        other_writer(base, tmp_path, lambda o: write_file(o, b"d/theirs", b"theirs"))
        record, stats = commit_layer(base.repo, lay)
        assert (record.version, stats.rebased) == (3, True)
        head = Base(base.repo, "w", 3, base.repo_url, base.cache_dir)
        f = resolve(lay, b"a.txt").ino
        lay.open(f)
        with pytest.raises(InvalidArgument):  # an open file needs its number in the new base
            lay.rebase(head.m, head.id)
        bases.append(head)
        lay.rebase(head.m, head.id, {head.m.resolve(b"a.txt").ino: 1})
        lay.release(head.m.resolve(b"a.txt").ino)  # the open file is known by its new number
        assert not any(lay.opens.values())
        assert lay.base_id.version == 3 and lay.published() == (3, record.manifest)
        assert lay.pending() == [] and lay.changes() == []
        assert describe_layer(lay) == describe_version(base.repo, "w", 3)  # theirs shows, ours is still there
        assert lay.read(resolve(lay, b"d/theirs").ino, 0, 100) == b"theirs"
        assert lay.state.db.execute("SELECT count(*) FROM blocks").fetchall()[0][0] == 0
        assert os.path.getsize(tmp_path / "state" / "data" / "slots") == 0  # every slot freed
        write_file(lay, b"a.txt", b"after the re-base")
        record, _ = commit_layer(base.repo, lay)
        assert record.version == 4 and {k for _, k in changeset_paths(base, 4)} == {b"\0a.txt"}
        check_version(base, lay, 4)
    finally:
        lay.close()
    with pytest.raises(UsageError, match="over w@3"):  # the folder is over 3 now (and holds the commit of 4)
        WriteLayer(str(tmp_path / "state"), base.m, base.id, base.read_base).close()
    again = WriteLayer(str(tmp_path / "state"), head.m, head.id, head.read_base)
    try:
        assert again.published()[0] == 4 and describe_layer(again) == describe_version(base.repo, "w", 4)
    finally:
        again.close()
        head.m.close()


def test_a_snapshot_read_whole_matches_its_reads(setup) -> None:
    """Snapshot.read_small and prefetch_all (a commit's fast paths) show what read and getattr show, and
    give way wherever the layer does not hold the whole file in one slot."""
    base, lay = setup
    uid, gid = os.getuid(), os.getgid()
    small = write_file(lay, b"new.txt", b"n" * 3000)
    grown = lay.create(ROOT_INO, b"grown", stat.S_IFREG | 0o644, uid, gid).ino
    lay.write(grown, 0, b"head")
    lay.setattr(grown, size=40_000)  # a tail of zeros beyond what the slot holds
    holes = lay.create(ROOT_INO, b"holes", stat.S_IFREG | 0o644, uid, gid).ino
    lay.setattr(holes, size=5000)  # no slot at all
    a = resolve(lay, b"a.txt").ino
    lay.write(a, 0, b"A")  # a base file written in place: its other bytes are the base's
    two = write_file(lay, b"two.bin", os.urandom(100_000))  # two blocks
    for ino in (grown, holes):
        lay.release(ino)
    d = lay.mkdir(ROOT_INO, b"newdir", 0o755, uid, gid).ino
    for n in (b"x", b"y", b"z"):
        write_file(lay, b"newdir/" + n, n)
    lay.unlink(d, b"y")
    snap = lay.snapshot()
    try:
        snap.prefetch_all()
        # a new directory listed from what was read whole, the base's root as before: as the layer lists them
        for ino in (d, ROOT_INO):
            assert sorted(snap.entries(ino)) == sorted((n, at) for _, n, at in lay.readdir(ino))
        assert [n for n, _ in sorted(snap.entries(d))] == [b"x", b"z"]
        assert snap.changes() == lay.changes()
        got = {ino: snap.read_small(ino) for ino in (small, grown, holes, a, two)}
        assert got[small] == b"n" * 3000
        assert got[grown] == b"head" + bytes(40_000 - 4)
        assert got[holes] is None and got[a] is None and got[two] is None
        for ino in (small, grown, holes, a, two):
            assert snap.read(ino, 0, 1 << 20) == lay.read(ino, 0, 1 << 20)
            assert snap.getattr(ino) == lay.getattr(ino)
        assert snap.lookup(ROOT_INO, b"new.txt").ino == small
        with pytest.raises(NotFound):
            snap.lookup(ROOT_INO, b"nothing")
    finally:
        snap.close()
