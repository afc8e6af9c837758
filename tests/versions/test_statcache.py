"""The push's stat cache (wsfs.versions.statcache): an unchanged file is not read again, a changed one always is.

What a user checks: ``push --json``'s ``unread_files`` (files whose content
the cache vouched for), the versions' content (checkout equals the source),
``wsfs diff``.  Files must be older than the racy window (2 s) to be
remembered, hence one sleep per test.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from support.cli import Wsfs
from support.trees import assert_same_tree
from wsfs.versions import statcache


def _tree(root: Path) -> Path:
    for d in range(6):
        dd = root / f"pkg{d}"
        dd.mkdir(parents=True)
        for f in range(30):
            (dd / f"m{f}.js").write_bytes(f"module {d}/{f}\n".encode() * (1 + f))
    (root / "big.bin").write_bytes(os.urandom(300_000))  # chunked (above the inline threshold)
    os.link(root / "pkg0" / "m1.js", root / "pkg1" / "hard.js")
    os.setxattr(root / "pkg2" / "m3.js", "user.tag", b"x")
    (root / "empty").write_bytes(b"")
    os.symlink("pkg0/m0.js", root / "link")
    time.sleep(statcache.RACY_NS / 1e9 + 0.2)  # older than the racy window: remembered
    return root


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return _tree(tmp_path / "src")


def _checkout_equals(wsfs: Wsfs, ref: str, src: Path, out: Path) -> None:
    wsfs("checkout", ref, str(out))
    assert_same_tree(src, out)


def test_unchanged_push_reads_no_file(wsfs, src, tmp_path):
    first = wsfs.push(src, "demo")
    files = first["stats"]["files"]
    assert first["stats"]["unread_files"] == 0  # nothing known yet
    again = wsfs.push(src, "demo")
    assert again["stats"]["unread_files"] == files
    assert again["store"]["requests"].get("put", 0) == 1  # the record only
    assert again["manifest"] == first["manifest"]
    _checkout_equals(wsfs, "demo@2", src, tmp_path / "out")


def test_a_changed_file_is_read_even_with_the_same_size_and_mtime(wsfs, src, tmp_path):
    wsfs.push(src, "demo")
    p = src / "pkg3" / "m4.js"
    st = p.stat()
    p.write_bytes(b"X" * st.st_size)  # same size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only ctime tells
    os.chmod(src / "pkg4" / "m5.js", 0o600)  # attributes only
    r = wsfs.push(src, "demo")
    assert r["stats"]["unread_files"] == r["stats"]["files"] - 2
    assert wsfs("diff", "demo@1", "demo@2").out == b"M pkg3/m4.js\nM pkg4/m5.js\n"
    _checkout_equals(wsfs, "demo@2", src, tmp_path / "out")


def test_a_rebuilt_pack_reads_its_unread_files_again(wsfs, src, tmp_path):
    """One small file changed: its pack is rebuilt from files the walk did not read (read now, verified)."""
    wsfs.push(src, "demo")
    (src / "pkg1" / "m7.js").write_bytes(b"changed\n")
    (src / "pkg5" / "new.js").write_bytes(b"new file\n")
    r = wsfs.push(src, "demo")
    assert r["stats"]["unread_files"] == r["stats"]["files"] - 2
    assert r["store"]["requests"].get("put", 0) <= 10
    _checkout_equals(wsfs, "demo@2", src, tmp_path / "out")
    # and a cold host (no cache at all) produces the very same version from the tree
    cold = Wsfs(wsfs.repo, str(tmp_path / "cold"), wsfs.env)
    assert cold.push(src, "demo")["manifest"] == r["manifest"]


def test_rehash_reads_every_file(wsfs, src):
    wsfs.push(src, "demo")
    r = wsfs.push(src, "demo", "--rehash")
    assert r["stats"]["unread_files"] == 0
    assert r["store"]["requests"].get("put", 0) == 1


def test_large_files_are_read_unless_the_parent_references_their_chunks(wsfs, src, tmp_path):
    """Chunk ids from the cache are only trusted if the parent version references them (so they are stored)."""
    r1 = wsfs.push(src, "demo")
    r2 = wsfs.push(src, "other")  # no parent: the large file is read (and its chunk found stored)
    assert r2["stats"]["unread_files"] == r1["stats"]["files"] - 1
    assert r2["store"]["requests"].get("put", 0) == 1  # the same tree: every piece is stored already
    _checkout_equals(wsfs, "other@1", src, tmp_path / "out")


def test_a_damaged_cache_is_ignored_with_a_warning(wsfs, src, tmp_path):
    first = wsfs.push(src, "demo")
    [path] = list(Path(wsfs.cache_dir).glob("repos/*/statcache-*"))
    assert path.stat().st_mode & 0o077 == 0  # private
    path.write_bytes(path.read_bytes()[:-20] + os.urandom(20))
    r = wsfs.run("push", "--json", src, "demo")
    assert "ignoring the stat cache" in r.err
    assert r.json()["stats"]["unread_files"] == 0 and r.json()["manifest"] == first["manifest"]
    # rewritten: the next push trusts it again
    assert wsfs.push(src, "demo")["stats"]["unread_files"] == first["stats"]["files"]


def test_a_recently_changed_file_is_not_remembered(wsfs, src):
    """Racy clean (git's term): a file changed within the racy window of the push is read again next time."""
    p = src / "pkg0" / "m2.js"
    p.write_bytes(b"just now\n")
    wsfs.push(src, "demo")
    r = wsfs.push(src, "demo")
    assert r["stats"]["unread_files"] == r["stats"]["files"] - 1


def test_decode_refuses_truncated_damaged_and_foreign_files():
    k = statcache.Known(5, 1, 2, b"c" * 32, (b"a" * 32,), ((b"user.x", b"v"),))
    raw = statcache.encode([((1, 2), k)])
    assert statcache.decode(raw) == {(1, 2): k}
    mid = len(raw) // 2
    for bad in (b"junk", b"WSXX" + raw[4:], raw[:-3], raw[:mid] + bytes([raw[mid] ^ 1]) + raw[mid + 1:],
                statcache.MAGIC + bytes(32) + raw[len(statcache.MAGIC) + 32:]):
        with pytest.raises(ValueError):
            statcache.decode(bad)
