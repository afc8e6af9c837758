"""The merged view and the mutations of a write layer, as a user of the file system would check them."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from layer_support import names, resolve, tree

from wsfs.errors import LayerBusy, LayerMismatch, NotFound, WsfsError
from wsfs.format.manifest import ROOT_INO
from wsfs.layer import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE, BaseId, WriteLayer

R = ROOT_INO
REG = stat.S_IFREG | 0o644


def err(exc: pytest.ExceptionInfo[WsfsError]) -> int:
    return exc.value.errno


def test_base_shows_through(layer: WriteLayer, base) -> None:
    assert names(layer, R) == sorted([b"a.txt", b"b.txt", b"b2.txt", b"d", b"empty", b"link", b"big", b"medium"])
    a = layer.lookup(R, b"a.txt")
    assert layer.read(a.ino, 0, 100) == b"alpha\n"
    assert layer.readlink(layer.lookup(R, b"link").ino) == b"a.txt"
    assert layer.getxattr(a.ino, b"user.color") == b"red"
    assert layer.lookup(R, b"b.txt").ino == layer.lookup(R, b"b2.txt").ino
    with pytest.raises(NotFound) as e:
        layer.lookup(R, b"nope")
    assert err(e) == errno.ENOENT


def test_create_write_read_and_readdir_cursors(layer: WriteLayer) -> None:
    d = layer.lookup(R, b"d").ino
    f = layer.create(d, b"new", REG, 1000, 1000)
    assert (f.size, f.nlink, f.uid, stat.S_IMODE(f.mode)) == (0, 1, 1000, 0o644)
    assert layer.write(f.ino, 0, b"hello") == 5
    assert layer.write(f.ino, 10, b"world") == 5  # a hole in between reads as zeros
    assert layer.read(f.ino, 0, 100) == b"hello\0\0\0\0\0world"
    assert layer.getattr(f.ino).size == 15
    layer.unlink(d, b"x")
    # one entry per call: every name exactly once, the removed base entry never
    seen, cursor = [], 0
    while page := layer.readdir(d, cursor, 1):
        cursor = page[0][0]
        seen.append(page[0][1])
    assert sorted(seen) == [b"new", b"sub", b"y"]
    with pytest.raises(WsfsError) as e:
        layer.create(d, b"new", REG, 0, 0)
    assert err(e) == errno.EEXIST
    with pytest.raises(WsfsError) as e:
        layer.create(d, b"n" * 256, REG, 0, 0)
    assert err(e) == errno.ENAMETOOLONG
    with pytest.raises(WsfsError) as e:
        layer.create(layer.lookup(R, b"a.txt").ino, b"z", REG, 0, 0)
    assert err(e) == errno.ENOTDIR


def test_special_files(layer: WriteLayer) -> None:
    fifo = layer.create(R, b"fifo", stat.S_IFIFO | 0o600, 0, 0)
    dev = layer.create(R, b"null", stat.S_IFCHR | 0o666, 0, 0, rdev=os.makedev(1, 3))
    assert stat.S_ISFIFO(layer.getattr(fifo.ino).mode)
    assert layer.getattr(dev.ino).rdev == os.makedev(1, 3)
    s = layer.symlink(R, b"s", b"../elsewhere", 0, 0)
    assert (layer.readlink(s.ino), s.size) == (b"../elsewhere", 12)
    with pytest.raises(WsfsError) as e:
        layer.symlink(R, b"s2", b"x" * 4096, 0, 0)
    assert err(e) == errno.ENAMETOOLONG
    with pytest.raises(WsfsError) as e:
        layer.read(R, 0, 10)
    assert err(e) == errno.EISDIR


def test_rmdir_follows_the_merged_view(layer: WriteLayer) -> None:
    d = layer.lookup(R, b"d").ino
    for name in (b"d", b"a.txt"):
        with pytest.raises(WsfsError) as e:
            layer.rmdir(R, name)
        assert err(e) == (errno.ENOTEMPTY if name == b"d" else errno.ENOTDIR)
    sub = layer.lookup(d, b"sub").ino
    layer.unlink(sub, b"z")
    layer.rmdir(d, b"sub")
    layer.unlink(d, b"x")
    layer.create(d, b"tmp", REG, 0, 0)
    layer.unlink(d, b"y")
    with pytest.raises(WsfsError) as e:
        layer.rmdir(R, b"d")  # base entries gone, a layer entry left
    assert err(e) == errno.ENOTEMPTY
    layer.unlink(d, b"tmp")
    nlink = layer.getattr(R).nlink
    layer.rmdir(R, b"d")
    assert layer.getattr(R).nlink == nlink - 1
    assert b"d" not in names(layer, R)
    again = layer.mkdir(R, b"d", 0o755, 0, 0)  # a new directory: nothing of the old one shows through
    assert again.ino != d and names(layer, again.ino) == []
    with pytest.raises(WsfsError) as e:
        layer.unlink(R, b"d")
    assert err(e) == errno.EISDIR


def test_rename_rules(layer: WriteLayer) -> None:
    d = layer.lookup(R, b"d").ino

    def fails(code: int, *args: object) -> None:
        with pytest.raises(WsfsError) as e:
            layer.rename(*args)  # type: ignore[arg-type]
        assert err(e) == code

    fails(errno.EISDIR, R, b"a.txt", R, b"empty")
    fails(errno.ENOTDIR, R, b"empty", R, b"a.txt")
    fails(errno.ENOTEMPTY, R, b"empty", R, b"d")
    fails(errno.EEXIST, R, b"a.txt", R, b"b.txt", RENAME_NOREPLACE)
    fails(errno.EINVAL, R, b"d", layer.lookup(d, b"sub").ino, b"loop")
    fails(errno.ENOENT, R, b"a.txt", R, b"nothing", RENAME_EXCHANGE)
    fails(errno.ENOENT, R, b"nothing", R, b"x")
    # a file over a file: the replaced one is gone, its hard-link twin stays
    layer.rename(R, b"a.txt", R, b"b.txt")
    assert layer.read(layer.lookup(R, b"b.txt").ino, 0, 100) == b"alpha\n"
    assert layer.getattr(layer.lookup(R, b"b2.txt").ino).nlink == 1
    assert b"a.txt" not in names(layer, R)
    # a directory over an empty directory
    layer.rename(R, b"d", R, b"empty")
    assert layer.lookup(R, b"empty").ino == d and b"d" not in names(layer, R)
    assert layer.read(resolve(layer, b"empty/sub/z").ino, 0, 10) == b"zulu"
    # exchange a file and a directory
    layer.rename(R, b"link", R, b"empty", RENAME_EXCHANGE)
    assert layer.lookup(R, b"link").ino == d
    assert layer.readlink(layer.lookup(R, b"empty").ino) == b"a.txt"


def test_directory_rename_is_one_metadata_change(layer: WriteLayer, base) -> None:
    big = layer.lookup(R, b"big").ino
    d = layer.lookup(R, b"d").ino
    nlink_root = layer.getattr(R).nlink
    layer.rename(R, b"d", big, b"moved")
    rows = layer.db.execute("SELECT count(*) FROM dentries").fetchall()[0][0]
    assert rows == 2  # a whiteout and the new name, whatever d holds
    assert base.calls == []
    assert layer.parent_of(d) == big
    assert layer.getattr(R).nlink == nlink_root - 1 and layer.getattr(big).nlink == 3
    assert layer.read(resolve(layer, b"big/moved/sub/z").ino, 0, 10) == b"zulu"
    with pytest.raises(NotFound):
        resolve(layer, b"d/x")
    layer.rename(big, b"moved", R, b"d")  # and back: the base name again
    assert layer.read(resolve(layer, b"d/x").ino, 0, 10) == b"x" * 10


def test_hard_links_share_data(layer: WriteLayer) -> None:
    f = layer.create(R, b"f", REG, 0, 0)
    layer.write(f.ino, 0, b"one")
    layer.link(f.ino, layer.lookup(R, b"d").ino, b"f2")
    assert layer.getattr(f.ino).nlink == 2
    layer.write(resolve(layer, b"d/f2").ino, 0, b"TWO")
    assert layer.read(layer.lookup(R, b"f").ino, 0, 10) == b"TWO"
    layer.unlink(R, b"f")
    assert layer.read(resolve(layer, b"d/f2").ino, 0, 10) == b"TWO"
    assert layer.getattr(f.ino).nlink == 1
    b2 = layer.lookup(R, b"b2.txt").ino  # a base hard link: the other name sees the write
    layer.write(b2, 0, b"BRAVO")
    assert layer.read(layer.lookup(R, b"b.txt").ino, 0, 10) == b"BRAVObravo"
    with pytest.raises(WsfsError) as e:
        layer.link(R, R, b"rootlink")
    assert err(e) == errno.EPERM


def test_setattr_times_and_suid(layer: WriteLayer) -> None:
    a = layer.lookup(R, b"a.txt")
    after = layer.setattr(a.ino, mode=0o4755)
    assert after.mode == stat.S_IFREG | 0o4755 and after.ctime_ns > a.ctime_ns and after.mtime_ns == a.mtime_ns
    t = layer.setattr(a.ino, size=3)
    assert t.size == 3 and t.mtime_ns >= after.ctime_ns and layer.read(a.ino, 0, 10) == b"alp"
    t = layer.setattr(a.ino, size=6)
    assert layer.read(a.ino, 0, 10) == b"alp\0\0\0"  # the cut bytes do not come back
    layer.write(a.ino, 0, b"A", kill_suid=True)
    assert stat.S_IMODE(layer.getattr(a.ino).mode) == 0o755
    layer.setattr(a.ino, mode=0o2775)
    assert stat.S_IMODE(layer.setattr(a.ino, uid=5, gid=6, kill_suid=True).mode) == 0o775
    t = layer.setattr(a.ino, atime_ns=1, mtime_ns=2_000_000_001)
    assert (t.atime_ns, t.mtime_ns, t.uid, t.gid) == (1, 2_000_000_001, 5, 6)
    with pytest.raises(WsfsError) as e:
        layer.setattr(R, size=0)
    assert err(e) == errno.EISDIR


def test_xattrs(layer: WriteLayer) -> None:
    a = layer.lookup(R, b"a.txt").ino
    layer.setxattr(a, b"user.size", b"big")
    assert layer.xattrs(a) == {b"user.color": b"red", b"user.size": b"big"}
    for flags, name, code in ((XATTR_CREATE, b"user.color", errno.EEXIST), (XATTR_REPLACE, b"user.no", errno.ENODATA)):
        with pytest.raises(WsfsError) as e:
            layer.setxattr(a, name, b"v", flags)
        assert err(e) == code
    layer.removexattr(a, b"user.color")
    assert layer.listxattr(a) == [b"user.size"]
    with pytest.raises(WsfsError) as e:
        layer.getxattr(a, b"user.color")
    assert err(e) == errno.ENODATA
    with pytest.raises(WsfsError) as e:
        layer.setxattr(a, b"user.v", b"x" * (64 * 1024 + 1))
    assert err(e) == errno.E2BIG


def test_copy_up_reads_one_block_and_appends_read_nothing(layer: WriteLayer, base) -> None:
    huge = resolve(layer, b"big/huge")
    assert huge.size == 1 << 30
    mid = 512 << 20
    layer.write(huge.ino, mid + 100, b"w" * 4096)
    assert len(base.calls) == 1 and base.calls[0][2] <= 64 * 1024  # one block, inside one chunk
    base.calls.clear()
    layer.write(huge.ino, 1 << 30, b"tail" * 1024)  # append
    layer.setattr(huge.ino, size=(1 << 30) + 100)  # truncate (shrink, past the base)
    layer.setattr(huge.ino, size=(1 << 30) - 5)  # and into the base: still nothing read
    assert base.calls == []
    assert layer.read(huge.ino, mid + 100, 4096) == b"w" * 4096
    assert base.calls == []  # the written block is local
    original = base.read_base(base.path(b"big/huge"), 12345 + (128 << 20), 50)
    base.calls.clear()
    assert layer.read(huge.ino, 12345 + (128 << 20), 50) == original  # untouched blocks: still the base's
    assert len(base.calls) == 1
    src = layer.chunk_sources(huge.ino)
    cs = base.m.chunk_size
    assert src[mid // cs] is None and src[-1] is None  # the written chunk, and the cut last one
    assert sum(s is not None for s in src) == len(src) - 2  # every other chunk keeps its id
    assert layer.getattr(huge.ino).size == (1 << 30) - 5


def test_writes_cost_no_sql(layer: WriteLayer) -> None:
    f = layer.create(R, b"f", REG, 0, 0)
    layer.write(f.ino, 0, b"x")
    statements: list[str] = []
    layer.db.exec_trace = lambda cursor, sql, bindings: statements.append(sql) or True
    for i in range(1000):
        layer.write(f.ino, i * 100, b"y" * 100)
    assert statements == []
    layer.flush(f.ino)
    assert statements  # the batch gets the size, times and blocks once
    layer.db.exec_trace = None


def test_changes(layer: WriteLayer) -> None:
    d = layer.lookup(R, b"d").ino
    layer.create(d, b"new", REG, 0, 0)
    layer.unlink(d, b"x")
    layer.write(layer.lookup(d, b"y").ino, 0, b"Y")
    layer.setattr(layer.lookup(R, b"a.txt").ino, mode=0o600)
    layer.unlink(R, b"link")
    layer.mkdir(R, b"link", 0o755, 0, 0)  # symlink -> directory
    layer.rename(d, b"sub", R, b"sub2")
    layer.setattr(layer.lookup(R, b"medium").ino, mode=0o644)  # no actual change
    got = {(c.path, c.kind) for c in layer.changes()}
    assert got == {
        (b"a.txt", "M"), (b"link", "T"), (b"sub2", "A"), (b"sub2/z", "A"), (b"d", "M"),
        (b"d/new", "A"), (b"d/x", "D"), (b"d/y", "M"), (b"d/sub", "D"), (b"d/sub/z", "D"), (b"", "M"),
    }


def test_open_unlinked_file_lives_until_release(layer_factory, tmp_path: Path) -> None:
    layer = layer_factory()
    f = layer.create(R, b"f", REG, 0, 0)
    layer.open(f.ino)
    layer.write(f.ino, 0, b"still here")
    layer.unlink(R, b"f")
    assert layer.read(f.ino, 0, 100) == b"still here" and layer.getattr(f.ino).nlink == 0
    layer.sync_all()
    layer.close()
    again = layer_factory()  # as after a crash with the file open: it is purged
    with pytest.raises(NotFound):
        again.getattr(f.ino)
    assert os.stat(tmp_path / "state" / "data" / "slots").st_size == 0  # its slots are free, the file cut


def test_persists_and_refuses_another_workspace(layer_factory, base, tmp_path: Path) -> None:
    layer = layer_factory()
    f = layer.create(R, b"kept", REG, 0, 0)
    layer.write(f.ino, 0, b"data")
    layer.close()
    again = layer_factory()
    assert again.read(again.lookup(R, b"kept").ino, 0, 10) == b"data"
    assert again.create(R, b"next", REG, 0, 0).ino > f.ino  # inode numbers are not reused
    again.close()
    with pytest.raises(LayerMismatch):
        WriteLayer(str(tmp_path / "state"), base.m, BaseId("other", 1, base.id.top), base.read_base)
    with pytest.raises(LayerMismatch):  # another version of the workspace: rebasing is commit's work
        WriteLayer(str(tmp_path / "state"), base.m, BaseId(base.id.workspace, 2, base.id.top), base.read_base)
    open_one = layer_factory()
    with pytest.raises(LayerBusy) as e:  # one process (one open layer) at a time
        WriteLayer(str(tmp_path / "state"), base.m, base.id, base.read_base)
    assert err(e) == errno.EBUSY
    open_one.close()
    st = tmp_path / "state"
    assert stat.S_IMODE(os.stat(st).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(st / "data").st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in st.rglob("*") if p.is_file()} == {0o600}


def test_symlink_planted_in_the_state_folder_is_not_followed(layer_factory, tmp_path: Path) -> None:
    st = tmp_path / "state"
    st.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (st / "data").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError) as e:
        layer_factory()
    assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)  # O_DIRECTORY | O_NOFOLLOW on a symlink
    assert os.listdir(tmp_path / "elsewhere") == []


def test_tree_helper_sees_the_merged_view(layer: WriteLayer) -> None:
    layer.write(layer.lookup(R, b"a.txt").ino, 0, b"ALPHA")
    t = tree(layer)
    assert t[b"a.txt"][2] == b"ALPHA\n" and t[b"link"] == ("l", 0o777, b"a.txt")


def test_what_commit_can_reuse(layer: WriteLayer, base) -> None:
    medium = layer.lookup(R, b"medium").ino
    layer.setattr(medium, mode=0o600)  # attributes only: the content id is reused, no chunk read
    assert layer.content_unchanged(medium) and layer.chunk_sources(medium)[0] is not None
    layer.write(medium, 200 * 1024, b"!")
    assert not layer.content_unchanged(medium) and layer.chunk_sources(medium) == [None]
    f = layer.create(R, b"fresh", REG, 0, 0)
    layer.write(f.ino, 0, b"x" * 10)
    assert layer.chunk_sources(f.ino) == [None] and not layer.content_unchanged(f.ino)
    # a hard link added to a base file: the new name is added, the file itself unchanged
    layer.link(layer.lookup(R, b"a.txt").ino, R, b"a-again")
    kinds = {c.path: c.kind for c in layer.changes()}
    assert kinds[b"a-again"] == "A" and kinds[b"medium"] == "M" and kinds[b"fresh"] == "A"
    assert kinds[b"a.txt"] == "M"  # a further name: its record's LINKED flag changes


def test_readdir_cursor_survives_changes(layer: WriteLayer) -> None:
    d = layer.lookup(R, b"d").ino
    for i in range(5):
        layer.create(d, b"n%d" % i, REG, 0, 0)
    first = layer.readdir(d, 0, 3)  # partly base, partly layer
    victim = next(n for _, n, a in first if not a.is_dir)
    layer.unlink(d, victim)  # an entry already listed
    layer.create(d, b"late", REG, 0, 0)
    rest = layer.readdir(d, first[-1][0])
    listed = [n for _, n, _ in first] + [n for _, n, _ in rest]
    stayed = {b"x", b"y", b"sub", *(b"n%d" % i for i in range(5))} - {victim}
    assert stayed <= set(listed) and len(listed) == len(set(listed))  # nothing that stayed is skipped or repeated


def test_exchange_directories_across_parents(layer: WriteLayer) -> None:
    d, empty = layer.lookup(R, b"d").ino, layer.lookup(R, b"empty").ino
    sub = layer.lookup(d, b"sub").ino
    other = layer.mkdir(empty, b"other", 0o700, 0, 0).ino
    n_d, n_empty = layer.getattr(d).nlink, layer.getattr(empty).nlink
    layer.rename(d, b"sub", empty, b"other", RENAME_EXCHANGE)
    assert layer.lookup(empty, b"other").ino == sub and layer.lookup(d, b"sub").ino == other
    assert (layer.getattr(d).nlink, layer.getattr(empty).nlink) == (n_d, n_empty)  # a directory each way
    assert layer.parent_of(sub) == empty and layer.parent_of(other) == d
    with pytest.raises(WsfsError) as e:
        layer.rename(R, b"empty", sub, b"in-itself", RENAME_EXCHANGE)
    assert err(e) == errno.EINVAL


def test_xattrs_and_modes_persist(layer_factory) -> None:
    layer = layer_factory()
    a = layer.lookup(R, b"a.txt").ino
    layer.setxattr(a, b"user.k", b"v")
    layer.removexattr(a, b"user.color")
    layer.setattr(a, mode=0o640, uid=7)
    layer.close()
    again = layer_factory()
    assert again.xattrs(a) == {b"user.k": b"v"}
    got = again.getattr(a)
    assert (stat.S_IMODE(got.mode), got.uid, again.read(a, 0, 10)) == (0o640, 7, b"alpha\n")


def test_freed_slots_are_punched_in_runs_by_a_thread_and_not_reused_meanwhile(layer_factory, tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """rm -rf of many small files: their slots' space goes back after a commit, in one fallocate per run of
    adjacent slots (not one per slot, and not on the caller's thread), and no slot is written while punched."""
    import threading

    from wsfs.layer import content

    calls: list[tuple[int, int, str]] = []
    gate = threading.Event()
    real = content._punch

    def punch(fd: int, off: int, length: int) -> None:
        gate.wait(10)
        calls.append((off // content.BLOCK, length // content.BLOCK, threading.current_thread().name))
        real(fd, off, length)

    monkeypatch.setattr(content, "_punch", punch)
    layer = layer_factory()
    slots = tmp_path / "state" / "data" / "slots"
    for i in range(40):
        f = layer.create(R, b"f%d" % i, REG, 0, 0)
        layer.write(f.ino, 0, os.urandom(3000))
    layer.sync_all()
    used = os.stat(slots).st_blocks
    calls.clear()  # (the first commit after open punches what a crash may have left: nothing here)
    for i in range(40):
        layer.unlink(R, b"f%d" % i)
    layer.sync_all()  # retires the 40 slots, frees them, hands them to the thread
    pool = layer.pool
    assert not pool.free and len(pool._punch_batch) == 40  # out of the free list while being punched
    g = layer.create(R, b"new", REG, 0, 0)
    layer.write(g.ino, 0, b"elsewhere")  # a fresh slot, none of the 40
    assert layer.contents[g.ino].blocks[0] not in pool._punch_batch
    gate.set()
    pool._collect(wait=True)
    assert [(start, n) for start, n, _ in calls] == [(0, 16), (16, 16), (32, 8)]
    assert all(name.startswith("wsfs-punch") for _, _, name in calls)
    assert len(pool.free) == 40 and os.stat(slots).st_blocks < used
    assert layer.read(g.ino, 0, 100) == b"elsewhere"
    layer.close()
