"""Crafted manifests and blobs: each test performs one attack of someone who can write to the bucket.

Everything read from the store is untrusted input: a manifest must be
rejected before anything is served from it, and no decoding may allocate
or write more than the record that references the bytes declares.
"""

import os
import subprocess
import sys
import time

import pytest

from support.crafted import execute, index_says_table_says, small_manifest, zstd_bomb
from wsfs.errors import IntegrityError
from wsfs.format import blobs
from wsfs.format.manifest import ROOT_INO, Manifest, check_database


def test_index_and_table_disagreeing_on_a_name_is_rejected(tmp_path):
    """The reported attack: the name index says 'aaaaaaaaaaa', the table '../../pwned'."""
    path = index_says_table_says(str(tmp_path / "m.sqlite"), b"aaaaaaaaaaa", b"../../pwned")
    # The file really is split-minded: a lookup through the index finds the entry...
    with Manifest(path, validate=False) as m:
        assert m.lookup(ROOT_INO, b"aaaaaaaaaaa") is not None
        # ...and a listing (which reads the table) shows the other name.
        assert b"../../pwned" in [n for _, n, _ in m.readdir(ROOT_INO)]
    with pytest.raises(IntegrityError, match="integrity_check"):
        check_database(path)
    with pytest.raises(IntegrityError, match="invalid entry names"):
        Manifest(path)


def test_index_and_table_disagreeing_on_harmless_names_is_still_rejected_on_download(tmp_path):
    path = index_says_table_says(str(tmp_path / "m.sqlite"), b"bbbbbbbbbbb", b"ccccccccccc")
    with pytest.raises(IntegrityError, match="corrupt"):
        check_database(path)


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE VIEW v AS SELECT 1",
        "CREATE TRIGGER t AFTER INSERT ON meta BEGIN DELETE FROM inodes; END",
        "CREATE INDEX extra ON inodes(size)",
        "CREATE TABLE junk (x)",
        "DROP INDEX dentries_parent",
    ],
)
def test_a_schema_that_is_not_ours_is_rejected(tmp_path, sql):
    path = small_manifest(str(tmp_path / "m.sqlite"))
    execute(path, sql)
    with pytest.raises(IntegrityError, match="schema"):
        Manifest(path)
    with pytest.raises(IntegrityError, match="schema"):
        check_database(path)


@pytest.mark.parametrize(
    "sql, match",
    [
        # wrong types: SQLite stores whatever it is given
        ("UPDATE inodes SET mode = 'x' WHERE ino = 2", "wrong type"),
        ("UPDATE inodes SET size = 5.5 WHERE ino = 2", "wrong type"),
        ("UPDATE inodes SET uid = -1 WHERE ino = 2", "out of range"),
        ("UPDATE inodes SET gid = 4294967296 WHERE ino = 2", "out of range"),
        ("UPDATE inodes SET nlink = 0 WHERE ino = 2", "out of range"),
        ("UPDATE inodes SET size = -5 WHERE ino = 2", "out of range"),
        ("UPDATE inodes SET mode = 49152 WHERE ino = 2", "out of range"),  # a socket
        ("UPDATE inodes SET rdev = 5 WHERE ino = 2", "out of range"),
        ("UPDATE inodes SET content = X'00' WHERE ino = 2", "wrong type"),
        ("UPDATE dentries SET parent = 'a' WHERE ino = 2", "invalid entry names"),
        ("UPDATE dentries SET id = -5 WHERE ino = 2", "entry ids"),  # a readdir cursor the kernel cannot take
        ("UPDATE meta SET value = 12345 WHERE key = 'chunk_size'", "chunk size"),
        ("UPDATE meta SET value = 'big' WHERE key = 'chunk_size'", "chunk size"),
        # inline content larger than any inline file may be, or not the file's
        ("UPDATE inodes SET size = 536870912 WHERE ino = 2", "inline files larger"),
        # symlinks and xattrs
        ("UPDATE inodes SET mode = 41471, target = X'610062', size = 3, content = NULL, data = NULL WHERE ino = 2",
         "symlinks without a valid target"),
        ("UPDATE inodes SET mode = 41471, target = zeroblob(5000), size = 5000, content = NULL, data = NULL "
         "WHERE ino = 2", "symlinks without a valid target"),
        ("UPDATE inodes SET target = X'61' WHERE ino = 2", "symlinks without a valid target"),
        ("INSERT INTO xattrs VALUES (2, X'7573657200', X'00')", "extended attributes"),
        ("INSERT INTO xattrs VALUES (2, X'75736572', zeroblob(70000))", "extended attributes"),
        ("INSERT INTO xattrs VALUES (99, X'75736572', X'00')", "extended attributes"),
        # a directory with content, a file without
        ("UPDATE inodes SET content = zeroblob(32) WHERE ino = 1", "other entries with content"),
    ],
)
def test_records_of_the_wrong_type_or_range_are_rejected(tmp_path, sql, match):
    path = small_manifest(str(tmp_path / "m.sqlite"))
    execute(path, sql)
    with pytest.raises(IntegrityError, match=match):
        Manifest(path)


def _chunked(tmp_path, lengths, size):
    path = small_manifest(str(tmp_path / "m.sqlite"), chunk_size=65536)
    execute(path, "UPDATE inodes SET data = NULL, size = ? WHERE ino = 2", size)
    for i, n in enumerate(lengths):
        execute(path, "INSERT INTO chunks (ino, idx, cid, length) VALUES (2, ?, NULL, ?)", i, n)
    return path


@pytest.mark.parametrize(
    "lengths, size",
    [
        ([1 << 30, -(1 << 30) + 10], 10),  # sums to the size; one "hole" of 1 GiB
        ([65536, 65536], 10),  # more chunks than the size needs
        ([65536 * 2], 131072),  # a chunk longer than the chunk size
        ([5, 5], 10),  # short chunks
        ([65536], 65537),  # too few
    ],
)
def test_chunk_lists_that_lie_about_sizes_are_rejected(tmp_path, lengths, size):
    path = _chunked(tmp_path, lengths, size)
    with pytest.raises(IntegrityError, match="chunk"):
        Manifest(path)


def test_a_valid_chunk_list_passes(tmp_path):
    path = _chunked(tmp_path, [65536, 65536, 7], 65536 * 2 + 7)
    with Manifest(path) as m:
        assert [c.length for c in m.chunks(2)] == [65536, 65536, 7]


def test_inline_content_over_the_repository_threshold_is_rejected(tmp_path):
    path = small_manifest(str(tmp_path / "m.sqlite"))
    Manifest(path, max_inline=5).close()
    with pytest.raises(IntegrityError, match="inline files larger"):
        Manifest(path, max_inline=4)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE data SET codec = 7",
        "UPDATE inodes SET content = zeroblob(32) WHERE ino = 2",
        "UPDATE data SET payload = 'hello'",
        "UPDATE data SET cid = 'x' WHERE id = (SELECT data FROM inodes WHERE ino = 2)",
        "DELETE FROM data",
        "UPDATE data SET payload = zeroblob(300000)",  # over the length limit: never read into memory
    ],
)
def test_inline_data_that_is_not_the_files_fails_when_read(tmp_path, sql):
    """Data rows are checked when decoded (scanning them on open would read the whole file)."""
    path = small_manifest(str(tmp_path / "m.sqlite"))
    execute(path, sql)
    with Manifest(path, max_inline=128 * 1024) as m:
        with pytest.raises(IntegrityError, match="inline data of inode 2"):
            m.inline_data(m.getattr(2))


_BOMB_CHILD = r"""
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from wsfs.errors import IntegrityError
from wsfs.format.manifest import ROOT_INO, Manifest
m = Manifest(sys.argv[1])
node = m.lookup(ROOT_INO, b"a")
t = time.monotonic()
try:
    m.inline_data(node)
except IntegrityError as e:
    print("rejected", round(time.monotonic() - t, 3), e)
"""


def test_a_decompression_bomb_in_inline_data_allocates_nothing(tmp_path):
    """A 5-byte file whose zstd frame declares 2 GiB: python-zstandard would allocate what it declares."""
    path = small_manifest(str(tmp_path / "m.sqlite"))
    bomb = zstd_bomb(2 << 30, 1 << 20)[1:]
    execute(path, "UPDATE data SET codec = 1, payload = ? WHERE id = (SELECT data FROM inodes WHERE ino = 2)", bomb)
    # Under a 1 GiB address-space limit, allocating 2 GiB would fail with MemoryError, not IntegrityError.
    p = subprocess.run([sys.executable, "-c", _BOMB_CHILD, path], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("rejected") and "declares" in p.stdout


@pytest.mark.parametrize("declared", [2 << 30, 10])
def test_a_blob_is_decoded_only_to_the_size_its_record_declares(declared):
    stored = zstd_bomb(declared, 1 << 20)
    t = time.monotonic()
    with pytest.raises(IntegrityError, match="failed verification"):
        blobs.decode_blob(blobs.content_id(bytes(1 << 20)), stored, 1 << 20)
    assert time.monotonic() - t < 1


def test_a_raw_blob_longer_than_its_chunk_is_rejected():
    data = os.urandom(1000)
    with pytest.raises(IntegrityError, match="expected 999"):
        blobs.decode_blob(blobs.content_id(data), blobs.encode_blob(data), 999)


def test_blob_of_unknown_size_is_bounded_by_the_limit():
    assert blobs.declared_size(blobs.encode_blob(b"abc" * 1000), 4096) == 3000
    with pytest.raises(IntegrityError, match="more than"):
        blobs.declared_size(zstd_bomb(2 << 30, 1 << 20), 4 << 20)
    with pytest.raises(IntegrityError, match="more than"):
        blobs.declared_size(b"\x00" + bytes(5000), 4096)


@pytest.mark.parametrize("declared", [2 << 30, (1 << 20) - 1])
def test_a_streamed_blob_stops_at_its_declared_size(declared):
    """The manifest download: a small stored frame must not make us write gigabytes before the hash fails."""
    stored = zstd_bomb(declared, 1 << 20)
    dec = blobs.BlobDecoder(blobs.content_id(bytes(1 << 20)), 1 << 20, "manifest")
    written = 0
    with pytest.raises(IntegrityError):
        for i in range(0, len(stored), 4096):
            written += len(dec.feed(stored[i : i + 4096]))
        dec.finish()
    assert written <= 1 << 20
