"""Manifest builder/reader round trip and the validation that guards the daemon and checkout."""

import stat
from types import SimpleNamespace

import apsw
import pytest

from wsfs.errors import FormatError, IntegrityError, NotFound
from wsfs.format.manifest import ROOT_INO, Manifest, ManifestBuilder


def st(mode, size=0):
    return SimpleNamespace(st_mode=mode, st_uid=0, st_gid=0, st_size=size, st_blocks=0, st_rdev=0,
                           st_atime_ns=1, st_mtime_ns=2, st_ctime_ns=3)


@pytest.fixture
def small(tmp_path):
    """root/{a (inline "hello"), d/ {b (chunked 10 bytes)}, l -> a}"""
    path = str(tmp_path / "m.sqlite")
    b = ManifestBuilder(path, chunk_size=65536)
    root = b.add_inode(st(stat.S_IFDIR | 0o755))
    a = b.add_inode(st(stat.S_IFREG | 0o644, 5))
    b.set_inline(a, b"hello")
    d = b.add_inode(st(stat.S_IFDIR | 0o700))
    f = b.add_inode(st(stat.S_IFREG | 0o600, 10))
    b.set_chunks(f, 10, [None])
    link = b.add_inode(st(stat.S_IFLNK | 0o777, 1), target=b"a", size=1)
    b.add_dentries(root, [(b"a", a), (b"d", d), (b"l", link)])
    b.add_dentries(d, [(b"b", f)])
    b.add_xattrs(a, {b"user.x": b"1"})
    b.finish({"workspace": "t"})
    return path


def test_round_trip(small):
    with Manifest(small) as m:
        assert m.getattr(ROOT_INO).is_dir
        a = m.lookup(ROOT_INO, b"a")
        assert a is not None and m.inline_data(a) == b"hello"
        assert m.xattrs(a.ino) == {b"user.x": b"1"}
        assert [name for _, name, _ in m.readdir(ROOT_INO)] == [b"a", b"d", b"l"]
        first = m.readdir(ROOT_INO, 0, 1)
        assert [n for _, n, _ in m.readdir(ROOT_INO, first[0][0])] == [b"d", b"l"]
        f = m.resolve(b"d/b")
        assert [tuple(c)[:3] for c in m.chunks(f.ino)] == [(0, None, 10)]
        assert m.resolve(b"l", follow=True).ino == a.ino
        assert m.resolve(b"l").is_link
        assert m.lookup(ROOT_INO, b"missing") is None
        with pytest.raises(NotFound):
            m.resolve(b"a/x")
        assert [p for p, _ in m.walk()] == [b"a", b"d", b"l", b"d/b"]


def corrupt(path, sql, *args):
    db = apsw.Connection(path)
    db.execute(sql, args)
    db.close()


@pytest.mark.parametrize(
    "sql, args, match",
    [
        ("UPDATE dentries SET name = ? WHERE name = X'61'", (b"",), "invalid entry names"),
        ("UPDATE dentries SET name = ? WHERE name = X'61'", (b"..",), "invalid entry names"),
        ("UPDATE dentries SET name = ? WHERE name = X'61'", (b"x/y",), "invalid entry names"),
        ("UPDATE dentries SET name = ? WHERE name = X'61'", (b"x\0y",), "invalid entry names"),
        ("UPDATE dentries SET name = ? WHERE name = X'61'", ("text-not-bytes",), "invalid entry names"),
        ("UPDATE dentries SET ino = 999 WHERE name = X'61'", (), "missing inode"),
        ("UPDATE dentries SET parent = 2 WHERE name = X'62'", (), "parent is missing or not a directory"),
        ("INSERT INTO dentries (parent, name, ino) VALUES (3, X'6c6f6f70', 3)", (), "directory|parent|cycle"),
        ("INSERT INTO dentries (parent, name, ino) VALUES (3, X'726f6f74', 1)", (), "naming the root directory"),
        ("UPDATE dentries SET parent = 3 WHERE name = X'64'", (), "not reachable|cycle"),
        ("DELETE FROM inodes WHERE ino = 1", (), "no root"),
        ("UPDATE chunks SET length = 9", (), "wrong length"),
        ("UPDATE inodes SET target = NULL WHERE ino = 5", (), "symlinks without a valid target"),
    ],
)
def test_malformed_manifests_are_rejected(small, sql, args, match):
    corrupt(small, sql, *args)
    with pytest.raises(IntegrityError, match=match):
        Manifest(small)


def test_unknown_format_version_is_refused(small):
    corrupt(small, "UPDATE meta SET value = 99 WHERE key = 'format'")
    with pytest.raises(FormatError, match="format version 99"):
        Manifest(small)


def test_garbage_file_is_not_a_manifest(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(IntegrityError):
        Manifest(str(p))


def test_inline_data_is_verified(small):
    corrupt(small, "UPDATE data SET payload = X'68656c6c70'")  # "hellp", raw codec
    with Manifest(small) as m:
        a = m.lookup(ROOT_INO, b"a")
        with pytest.raises(IntegrityError):
            m.inline_data(a)


def test_symlinks_cannot_climb_out(small):
    corrupt(small, "UPDATE inodes SET target = X'2e2e2f2e2e2f6574632f706173737764', size = 16 WHERE ino = 5")  # ../../etc/passwd
    with Manifest(small) as m, pytest.raises(NotFound, match="outside"):
        m.resolve(b"l", follow=True)
