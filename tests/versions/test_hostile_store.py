"""The CLI against a hostile bucket and at its own edges: one line, the right exit code, nothing else broken.

Every attack here puts objects straight into the (local) store, the way
someone with write access to the bucket could, then runs the real ``wsfs``
command line and checks what a user would see: the exit status, one line on
stderr (no traceback, no raw escape codes), the other versions still
working, and nothing written where it should not be.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import apsw
import pytest

from support.cli import Wsfs
from support.crafted import index_says_table_says, publish_manifest, small_manifest, zstd_bomb
from wsfs.errors import IntegrityError
from wsfs.repository import Ref, Repository, tag_key, version_key
from wsfs.store import open_store

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture
def lw(tmp_path):
    """The CLI on a fresh local repository holding demo@1 (a good version)."""
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init")
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(b"good content\n")
    w.push(src, "demo")
    return w


def one_line_error(r, code):
    assert r.code == code, (r.code, r.err)
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsfs: error: "), r.err
    assert "\x1b" not in r.err
    return lines[0]


def leftovers(cache):
    out = []
    for dirpath, _, files in os.walk(cache):
        out += [os.path.join(dirpath, f) for f in files if "tmp" in f]
    return out


def test_checkout_of_a_manifest_whose_index_lies_writes_nothing_outside(lw, tmp_path):
    path = index_says_table_says(str(tmp_path / "m.sqlite"), b"aaaaaaaaaaa", b"../../pwned")
    publish_manifest(lw.repo, "demo", 2, path)
    target = tmp_path / "a" / "b" / "out"
    target.parent.mkdir(parents=True)
    before = sorted(os.listdir(tmp_path))
    one_line_error(lw("checkout", "demo@2", target, check=False), 6)
    assert sorted(os.listdir(tmp_path)) == before
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "a" / "pwned").exists()
    one_line_error(lw("ls", "demo@2", check=False), 6)
    assert not os.listdir(os.path.join(lw.cache_dir, "manifests")) or all(
        not f.startswith(".tmp") for f in os.listdir(os.path.join(lw.cache_dir, "manifests"))
    )
    assert lw("cat", "demo@1", "file").out == b"good content\n"  # the good version still works


def test_a_manifest_bomb_is_stopped_at_the_size_its_record_declares(lw, tmp_path):
    """32 KB stored that decompress to 1 GiB of zeros: nothing close to that is written or allocated."""
    good = small_manifest(str(tmp_path / "m.sqlite"))
    size = os.path.getsize(good)
    publish_manifest(lw.repo, "demo", 2, good, stored=zstd_bomb(1 << 30, 4 << 20))
    t = time.monotonic()
    line = one_line_error(lw("ls", "demo@2", check=False), 6)
    assert time.monotonic() - t < 10
    assert f"expected {size}" in line or "declares" in line
    assert leftovers(lw.cache_dir) == []


@pytest.mark.parametrize("manifest_size", [-1, 0, 1 << 60, "12"])
def test_a_record_with_an_impossible_manifest_size_is_refused(lw, tmp_path, manifest_size):
    good = small_manifest(str(tmp_path / "m.sqlite"))
    publish_manifest(lw.repo, "demo", 2, good, record={"manifest_size": manifest_size})
    one_line_error(lw("ls", "demo@2", check=False), 6)


def test_cat_of_a_file_whose_chunks_lie_prints_nothing(lw, tmp_path):
    path = small_manifest(str(tmp_path / "m.sqlite"), chunk_size=4 << 20)
    import apsw

    db = apsw.Connection(path)
    db.execute("UPDATE inodes SET data = NULL, size = 10 WHERE ino = 2")
    db.execute("INSERT INTO chunks VALUES (2, 0, NULL, 1073741824), (2, 1, NULL, -1073741814)")
    db.close()
    publish_manifest(lw.repo, "demo", 2, path)
    r = lw("cat", "demo@2", "a", check=False)
    one_line_error(r, 6)
    assert r.out == b""


@pytest.mark.parametrize(
    "record",
    [
        {"stats": "lots"},
        {"stats": {"files": "many"}},
        {"stats": {"bytes": -5}},
        {"version": "2"},
        {"parent": True},
        {"message": ["a", "list"]},
        {"author": None},
        {"manifest": "zz" * 32},
        {"parent": 7},
    ],
)
def test_a_record_with_wrong_fields_is_skipped_by_log_and_refused_by_cat(lw, tmp_path, record):
    publish_manifest(lw.repo, "demo", 2, small_manifest(str(tmp_path / "m.sqlite")), record=record)
    lw.push(tmp_path / "src", "demo")  # demo@3, after the bad one
    r = lw("log", "demo", check=False)
    assert r.code == 0 and "Traceback" not in r.err
    assert "skipping demo@2" in r.err
    versions = [line.split()[0] for line in r.text.splitlines()[1:]]
    assert versions == ["3", "1"]
    one_line_error(lw("cat", "demo@2", "a", check=False), 6)
    assert lw("cat", "demo", "file").out == b"good content\n"


def test_stray_keys_and_junk_folders_do_not_break_listings(lw, tmp_path):
    root = lw.repo
    junk = [
        f"{root}/workspaces/demo/versions/²",
        f"{root}/workspaces/demo/versions/12",
        f"{root}/workspaces/demo/versions/notes.txt",
        f"{root}/workspaces/demo/profiles/٣",
        f"{root}/workspaces/-junk/versions/0000000001",
        f"{root}/workspaces/has space/x",
    ]
    for p in junk:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(b"junk")
    os.makedirs(os.fsencode(root) + b"/workspaces/\xff\xfe", exist_ok=True)
    tags = os.fsencode(root) + b"/workspaces/demo/tags"
    os.makedirs(tags, exist_ok=True)
    with open(tags + b"/\xff\xfe", "wb") as f:
        f.write(b'{"version": 1}')
    open_store(root).put(tag_key("demo", "broken"), b"not json")
    open_store(root).put(tag_key("demo", "good"), b'{"version": 1}')

    r = lw("log", "demo")
    assert [line.split()[0] for line in r.text.splitlines()[1:]] == ["1"]
    assert "[good]" in r.text
    assert "stray object" in r.err and "broken" in r.err
    assert lw("cat", "demo", "file").out == b"good content\n"
    assert lw("cat", "demo@good", "file").out == b"good content\n"
    r = lw("workspaces")
    assert r.text.split() == ["demo", "1"]


def test_escape_codes_from_the_store_are_not_printed_raw(lw, tmp_path):
    publish_manifest(lw.repo, "demo", 2, small_manifest(str(tmp_path / "m.sqlite")),
                     record={"message": "hi\x1b[2J\x1b]0;owned\x07\nFAKE LINE", "author": "m\x9b31m"})
    r = lw("log", "demo")
    assert "\x1b" not in r.text and "\x07" not in r.text and "\x9b" not in r.text
    assert "\\x1b[2J" in r.text
    assert len(r.text.splitlines()) == 3  # header + 2 versions: no forged line
    r = lw("cat", "demo", "no\x1b[2Jsuch", check=False)
    assert "\\x1b[2J" in one_line_error(r, 3)


@pytest.mark.parametrize("ref", ["demo@²", "demo@٣", "demo@", "demo@-1", "demo@" + "9" * 30])
def test_version_references_take_ascii_digits_only(lw, ref):
    """``²`` crashed, ``٣`` (Arabic-Indic three) was read as version 3: both are invalid, exit 2."""
    one_line_error(lw("cat", ref, "file", check=False), 2)


def _config(tmp_path, content: bytes):
    cfg = tmp_path / "xdg"
    (cfg / "wsfs").mkdir(parents=True, exist_ok=True)
    (cfg / "wsfs" / "config.toml").write_bytes(content)
    return {"XDG_CONFIG_HOME": str(cfg)}


@pytest.mark.parametrize(
    "content, match",
    [
        (b'repo = "\xff\xfe"\n', "not valid TOML"),
        (b"repo = 5\n", "must be a non-empty string"),
        (b'cache_dir = ["a"]\n', "must be a non-empty string"),
        (b'rpeo = "/x"\n', "unknown setting"),
        (b"repo = \n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_one_line(lw, tmp_path, content, match):
    env = _config(tmp_path, content)
    env.pop("WSFS_REPO", None)
    r = lw.run("log", "demo", check=False, env=env)
    assert match in one_line_error(r, 2)


def test_a_file_given_as_cache_dir_is_one_line(lw, tmp_path):
    f = tmp_path / "afile"
    f.write_bytes(b"x")
    r = lw("log", "demo", "--cache-dir", f, check=False)
    assert "not a directory" in one_line_error(r, 2)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_a_full_cache_disk_is_one_line(lw, tmp_path):
    cache = tmp_path / "tiny"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(cache)], check=True)
    try:
        src = tmp_path / "many"
        src.mkdir()
        for i in range(40):
            (src / f"f{i}").write_bytes(os.urandom(100_000))
        r = lw("push", src, "demo", "--cache-dir", cache, check=False)
        line = one_line_error(r, r.code)
        assert r.code != 0 and "space" in line.lower()
        assert lw("log", "demo").text.splitlines()[1].split()[0] == "1"  # no version was created
    finally:
        subprocess.run(["umount", str(cache)], check=False)


def test_an_oversized_record_is_not_read_into_memory(lw):
    store = open_store(lw.repo)
    store.put(version_key("demo", 2), b'{"x": "' + b"a" * (3 << 20) + b'"}')
    line = one_line_error(lw("cat", "demo@2", "file", check=False), 6)
    assert "larger than" in line
    r = lw("log", "demo")
    assert [line.split()[0] for line in r.text.splitlines()[1:]] == ["1"]


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_local_store_object_that_is_not_a_file_is_refused(lw, tmp_path, kind):
    secret = tmp_path / "secret"
    secret.write_bytes(b'{"version": 1}')
    path = os.path.join(lw.repo, tag_key("demo", "t"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "symlink":
        os.symlink(secret, path)
    else:
        os.mkfifo(path)  # opening it for reading would block for ever
    r = lw("cat", "demo@t", "file", check=False, timeout=30)
    assert "not a regular file" in one_line_error(r, 8) or "symbolic link" in r.err


def _count_validations(monkeypatch):
    from wsfs.format.manifest import Manifest

    calls = []
    real = Manifest.validate

    def counting(self, **kw):
        calls.append(self.path)
        return real(self, **kw)

    monkeypatch.setattr(Manifest, "validate", counting)
    return calls


@pytest.fixture
def format1(tmp_path):
    """A format 1 repository written by wsfs before format 2 (tests/data), opened on a fresh cache: demo@1."""
    with tarfile.open(DATA / "format1-repo.tar.gz") as t:
        t.extractall(tmp_path / "f1", filter="data")
    repo = Repository.open(open_store(str(tmp_path / "f1" / "repo")), str(tmp_path / "f1" / "cache"))
    record = repo.resolve(Ref.parse("demo@1"))
    assert record.format == 1
    return repo, record


def test_a_manifest_is_validated_once_per_cache_then_marked(format1, monkeypatch):
    calls = _count_validations(monkeypatch)
    repo, record = format1
    repo.open_manifest(record).close()
    repo.open_manifest(record).close()
    path = repo.manifest_path(record)
    markers = [f for f in os.listdir(os.path.dirname(path)) if ".valid" in f]
    assert len(calls) == 1 and len(markers) == 1
    assert os.stat(os.path.join(os.path.dirname(path), markers[0])).st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="chown")
def test_a_marker_in_a_cache_someone_else_controls_does_not_skip_validation(format1, tmp_path):
    """Root using a cache another user can write: that user swaps in a crafted manifest next to root's marker."""
    repo, record = format1
    repo.open_manifest(record).close()
    path = repo.manifest_path(record)
    crafted = index_says_table_says(str(tmp_path / "m.sqlite"), b"aaaaaaaaaaa", b"../../pwned")
    os.replace(crafted, path)
    os.chown(path, 65534, 65534)  # what the other user's file would be
    with pytest.raises(IntegrityError, match="invalid entry names"):
        repo.open_manifest(record)
    assert not os.path.exists(path) and not any(".valid" in f for f in os.listdir(os.path.dirname(path)))


def test_an_index_is_built_once_per_cache_and_private(lw, monkeypatch):
    """Format 2: the index is built from verified pieces once per cache; no validation, and later opens cost nothing."""
    import wsfs.repository

    calls = _count_validations(monkeypatch)
    builds = []
    real = wsfs.repository.build_index
    monkeypatch.setattr(wsfs.repository, "build_index", lambda *a, **kw: builds.append(a[0]) or real(*a, **kw))
    repo = Repository.open(open_store(lw.repo), lw.cache_dir)
    record = repo.resolve(Ref.parse("demo"))
    assert record.format == 2
    repo.open_manifest(record).close()
    repo.store.stats.__init__()
    with repo.open_manifest(record) as m:
        assert [p for p, _ in m.walk()] == [b"file"]
    assert repo.store.stats.snapshot()["requests"] == {}
    assert len(builds) == 1 and calls == []
    path = repo.manifest_path(record)
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o600
    assert not [f for f in os.listdir(os.path.dirname(path)) if ".valid" in f]


def test_an_index_built_by_other_code_is_rebuilt(lw, monkeypatch):
    """An index whose INDEX_VERSION is not this code's (say, built before st_blocks changed) is built again."""
    import apsw

    import wsfs.repository
    from wsfs.format.index import INDEX_VERSION

    repo = Repository.open(open_store(lw.repo), lw.cache_dir)
    record = repo.resolve(Ref.parse("demo"))
    repo.open_manifest(record).close()
    path = repo.manifest_path(record)
    db = apsw.Connection(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'index_version'", (INDEX_VERSION - 1,))
    db.close()
    builds = []
    real = wsfs.repository.build_index
    monkeypatch.setattr(wsfs.repository, "build_index", lambda *a, **kw: builds.append(a[0]) or real(*a, **kw))
    with repo.open_manifest(record) as m:
        assert m.meta["index_version"] == INDEX_VERSION
        assert [p for p, _ in m.walk()] == [b"file"]
    assert len(builds) == 1


def _plant(kind: str, path: str, crafted: str, tmp_path) -> None:
    """Put *crafted* (an index claiming to be that of the version whose index is *path*) at *path*, as *kind* says."""
    os.unlink(path)
    if kind == "symlink":  # another user's link to a file of ours
        os.symlink(crafted, path)
        os.lchown(path, 65534, 65534)
        return
    os.replace(crafted, path)
    if kind == "foreign":  # the other user's file
        os.chown(path, 65534, 65534)
    elif kind == "writable":  # ours, but anyone could have written it
        os.chmod(path, 0o666)


@pytest.mark.parametrize("kind", [
    pytest.param("foreign", marks=pytest.mark.skipif(os.geteuid() != 0, reason="chown")),
    pytest.param("symlink", marks=pytest.mark.skipif(os.geteuid() != 0, reason="chown")),
    "writable",
    "renamed",
])
def test_an_index_planted_in_the_cache_is_not_trusted(lw, tmp_path, kind):
    """Format 2: a crafted index (``../../pwned``) at the index path is rebuilt from the store, not read.

    foreign / symlink / writable: root using a cache another user can write;
    renamed: the genuine index of another version, in this version's place.
    """
    (tmp_path / "src" / "more").write_bytes(b"more\n")
    lw.push(tmp_path / "src", "demo")
    repo = Repository.open(open_store(lw.repo), lw.cache_dir)
    one, two = repo.resolve(Ref.parse("demo@1")), repo.resolve(Ref.parse("demo@2"))
    repo.open_manifest(one).close()
    path = repo.manifest_path(one)
    crafted = str(tmp_path / "crafted.index")
    shutil.copyfile(repo.manifest_path(two), crafted)
    db = apsw.Connection(crafted)
    db.execute("UPDATE dentries SET name = ? WHERE name = ?", (b"../../pwned", b"more"))
    if kind != "renamed":
        db.execute("UPDATE meta SET value = ? WHERE key = 'top'", (one.manifest,))
    db.close()
    os.chmod(crafted, 0o600)
    _plant(kind, path, crafted, tmp_path)
    with repo.open_manifest(one) as m:
        assert [p for p, _ in m.walk()] == [b"file"]
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o600
    assert lw("cat", "demo@1", "file").out == b"good content\n"
    assert lw("ls", "demo@1").out.split() == [b"file"]
