"""``wsfs mount --history``: every version as ``<mnt>/<n>``, every tag as ``<mnt>/<tag> -> <n>``.

Three versions of the rich tree (``mountkit.make_tree``) are pushed, with
changes between them (content, hard-linked content, deletions, renames,
modes, xattrs, a truncated chunked file, new directories) and a directory
that no version changes, and version 2 is tagged.  Each pushed tree is kept as its own directory, so every version of
the mount is compared with exactly what was pushed.  The last tests drive
:class:`~wsfs.daemon.history.HistoryView` in-process (no mount) for what a
mount cannot show quickly: the bounded set of open manifests and the
listing refresh.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio
import trio.testing
from mountkit import MIB, is_mounted, make_tree

from support.cli import Wsfs
from support.trees import assert_same_tree, write

WS = "hist"
TAG = "release-1"


@dataclass
class History:
    """The pushed trees (``srcs[n]`` is version n) and their repository."""

    srcs: dict[int, Path]
    repo: Path
    wsfs: Wsfs

    def records(self) -> dict[int, dict[str, Any]]:
        return {r["version"]: r for r in self.wsfs("log", "--json", WS).json()}


def _copy(src: Path, dst: Path) -> Path:
    # cp -a keeps owners, modes, mtimes, xattrs, hard links, devices and fifos.
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    base = tmp_path_factory.mktemp("history")
    w = Wsfs(str(base / "repo"), str(base / "push-cache"))
    w("init")
    s1 = make_tree(base / "v1")
    # Enough entries for several ranges: those of "bulk", which no later version changes, are shared.
    (s1 / "bulk").mkdir()
    for i in range(1500):
        write(s1 / "bulk" / f"f{i:04d}", b"bulk %d\n" % i)
    w.push(s1, WS)

    s2 = _copy(s1, base / "v2")
    (s2 / "text.txt").write_bytes(b"hello world, version two\n")  # three hard links see it
    os.unlink(s2 / "one")
    write(s2 / "added-in-2", b"new in two\n")
    with open(s2 / "big9m", "r+b") as f:  # one chunk of three changes
        f.seek(5 * MIB)
        f.write(b"changed in two")
    os.chmod(s2 / "f100k", 0o640)
    (s2 / "newdir" / "deep").mkdir(parents=True)
    write(s2 / "newdir" / "deep" / "file", b"deep\n")
    os.setxattr(s2 / "xattrs", "user.comment", b"changed")
    w.push(s2, WS)

    s3 = _copy(s2, base / "v3")
    shutil.rmtree(s3 / "a" / "b")  # dir-link now dangles
    os.rename(s3 / "f100k", s3 / "renamed100k")
    os.unlink(s3 / "rel-link")
    os.symlink("added-in-2", s3 / "rel-link")
    os.truncate(s3 / "big9m", 5 * MIB + 7)
    write(s3 / "only-in-3", b"three\n", 0o600)
    w.push(s3, WS)

    w("tag", f"{WS}@2", TAG)
    return History({1: s1, 2: s2, 3: s3}, base / "repo", w)


def _manifests(cache_dir: Path) -> set[str]:
    """The versions (their ``manifest`` field) whose manifest, or format 2 index, is in *cache_dir*."""
    d = cache_dir / "manifests"
    return {p.name.rsplit(".", 1)[0] for p in [*d.glob("*.sqlite"), *d.glob("*.index")]} if d.exists() else set()


def _cached_pieces(cache_dir: Path) -> set[str]:
    d = cache_dir / "pieces"
    return {p.name for p in d.glob("*/*")} if d.exists() else set()


def _pieces(history: History, n: int, count_cache: Path) -> set[str]:
    """The metadata pieces of format 2 version *n*: its top, listing pieces and ranges (what opening it reads)."""
    from wsfs.format.tree import decode_top
    from wsfs.repository import Repository

    r = Repository.open_url(str(history.repo), str(count_cache))
    record = r.record(WS, n)
    top = decode_top(r.get_piece(bytes.fromhex(record.manifest), record.manifest_size))
    ranges, _ = r.version_refs(record)
    return {record.manifest} | {ref.id.hex() for ref in [*top.ranges, *top.packs, *ranges]}


def test_every_version_matches_what_was_pushed(history: History, mount) -> None:
    m = mount(history.repo, WS, extra=("--history",))
    assert sorted(os.listdir(m.path)) == ["1", "2", "3", TAG]
    for n, src in history.srcs.items():
        assert_same_tree(src, m.path / str(n))
    # The changes are where they should be.
    assert (m.path / "1" / "text.txt").read_bytes() == b"hello world\n" * 1000
    assert (m.path / "2" / "a" / "another-hardlink").read_bytes() == b"hello world, version two\n"
    assert not (m.path / "2" / "one").exists() and (m.path / "1" / "one").read_bytes() == b"1"
    assert os.readlink(m.path / "3" / "rel-link") == "added-in-2"
    assert os.path.getsize(m.path / "3" / "big9m") == 5 * MIB + 7
    # The tag is a relative symlink to its version, and the path through it works.
    assert os.readlink(m.path / TAG) == "2"
    assert (m.path / TAG / "added-in-2").read_bytes() == b"new in two\n"
    assert os.path.samefile(m.path / TAG / "text.txt", m.path / "2" / "text.txt")
    # /proc/mounts, statfs and the control socket know it is a history.
    with open("/proc/self/mounts") as f:
        source, _, fstype, opts = next(line for line in f if f" {m.path} " in line).split()[:4]
    assert (source, fstype) == (f"wsfs:{WS}@*", "fuse.wsfs") and "ro" in opts.split(",")
    assert os.statvfs(m.path).f_namemax == 255
    s = m.stats()
    assert s["version"] is None and s["workspace"] == WS
    assert s["history"]["versions"] == 3 and s["history"]["tags"] == 1
    cmd = [sys.executable, "-m", "wsfs", "stats", str(m.path)]
    text = subprocess.run(cmd, env=m.env, capture_output=True, text=True)
    assert text.returncode == 0 and f"{WS} (history)" in text.stdout, text.stderr


def test_inode_numbers_are_unique_across_versions(history: History, mount) -> None:
    m = mount(history.repo, WS, extra=("-o", "history"))
    root = os.lstat(m.path)
    assert root.st_ino == 1 and os.lstat(m.path / TAG).st_ino < 1 << 40
    seen: dict[int, str] = {}
    for n in (1, 2, 3):
        top = os.lstat(m.path / str(n))
        assert top.st_ino == (n << 40) | 1
        for dirpath, dirnames, filenames in os.walk(m.path / str(n)):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                assert st.st_ino >> 40 == n, p
                if st.st_ino in seen:  # only hard links inside the same version share one
                    other = seen[st.st_ino]
                    assert st.st_nlink > 1 and other.startswith(f"{m.path}/{n}/"), (p, other)
                seen[st.st_ino] = p
    # Hard links inside a version share an inode; the same path in two versions does not.
    assert os.lstat(m.path / "2" / "text.txt").st_ino == os.lstat(m.path / "2" / "hardlink-to-text").st_ino
    assert os.lstat(m.path / "1" / "text.txt").st_ino != os.lstat(m.path / "2" / "text.txt").st_ino
    # ".." of a version is the mount's root.
    assert os.path.samestat(os.stat(m.path / "3" / ".."), root)


def test_opening_a_version_fetches_only_its_manifest(history: History, mount, tmp_path: Path) -> None:
    pieces = {n: _pieces(history, n, tmp_path / "count-cache") for n in (1, 2, 3)}
    assert pieces[1] & pieces[2] and pieces[2] - pieces[1]  # versions share pieces, and each has its own
    m = mount(history.repo, WS, extra=("--history",))  # its own, empty cache directory
    records = history.records()
    assert _manifests(m.cache_dir) == set()  # the mount listed versions and tags, nothing more
    assert sorted(os.listdir(m.path)) == ["1", "2", "3", TAG]  # a listing opens no manifest either
    assert _manifests(m.cache_dir) == set() and _cached_pieces(m.cache_dir) == set()
    gets = m.gets()
    assert sorted(os.listdir(m.path / "2")) == sorted(os.listdir(history.srcs[2]))
    assert (m.path / "2" / "added-in-2").read_bytes() == b"new in two\n"
    assert _manifests(m.cache_dir) == {records[2]["manifest"]}
    assert _cached_pieces(m.cache_dir) == pieces[2]  # its pieces, nothing of other versions
    s = m.stats()
    # version 2's record, each of its pieces once, its pack map, and the pack of the one file read (no listed
    # file is prefetched)
    assert s["store"]["requests"].get("get", 0) - gets == 1 + len(pieces[2]) + 1 + 1
    assert s["cache"]["fetches"] == 1
    assert s["history"]["open_versions"] == [2] and s["history"]["manifest_opens"] == 1
    # stat of each entry (ls -l) needs each version's real root attributes: now all are fetched,
    # the pieces they share with version 2 (or with each other) from the cache.
    gets = m.gets()
    for name in os.listdir(m.path):
        os.lstat(m.path / name)
    assert _manifests(m.cache_dir) == {r["manifest"] for r in records.values()}
    assert _cached_pieces(m.cache_dir) == pieces[1] | pieces[2] | pieces[3]
    # two records, the new pieces, two pack maps
    assert m.gets() - gets == 2 + len((pieces[1] | pieces[3]) - pieces[2]) + 2


def test_missing_versions_enoent_and_writes_erofs(history: History, mount) -> None:
    m = mount(history.repo, WS, extra=("--history",))
    for missing in ("4", "0", "02", "-1", "nope", "release-2", "3/nope", "1/added-in-2"):
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / missing)
    with pytest.raises(NotADirectoryError):
        os.stat(m.path / "1" / "one" / "x")
    p = m.path
    attempts = {
        "mkdir in root": lambda: os.mkdir(p / "4"),
        "create in root": lambda: open(p / "new-file", "w"),
        "symlink in root": lambda: os.symlink("1", p / "new-tag"),
        "unlink tag": lambda: os.unlink(p / TAG),
        "rmdir version": lambda: os.rmdir(p / "1"),
        "rename version": lambda: os.rename(p / "1", p / "5"),
        "create in version": lambda: open(p / "1" / "new-file", "w"),
        "write-open": lambda: os.open(p / "2" / "added-in-2", os.O_WRONLY),
        "unlink in version": lambda: os.unlink(p / "3" / "only-in-3"),
        "chmod": lambda: os.chmod(p / "3" / "only-in-3", 0o777),
        "truncate": lambda: os.truncate(p / "1" / "big9m", 0),
        "setxattr": lambda: os.setxattr(p / "1" / "xattrs", "user.new", b"v"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == errno.EROFS, (what, exc.value)
    assert sorted(os.listdir(p)) == ["1", "2", "3", TAG]
    assert (p / "3" / "only-in-3").read_bytes() == b"three\n"


def test_history_usage_errors(history: History, tmp_path: Path) -> None:
    w = Wsfs(str(history.repo), str(tmp_path / "cache"))
    mnt = tmp_path / "e" / "mnt"
    mnt.mkdir(parents=True)
    r = w("mount", "-f", "--history", f"{WS}@2", mnt, check=False)
    assert r.code == 2 and "--history" in r.err
    r = w("mount", "-f", "--history", "no-such-ws", mnt, check=False)
    assert r.code == 3 and "no versions" in r.err
    assert not is_mounted(mnt)


# -- HistoryView in-process (no mount) ---------------------------------------------------


async def _ask(fn: Any, *args: Any) -> Any:
    """Call a view method the way the adapter does: wait for NotReady work, then call again."""
    from wsfs.daemon.view import NotReady

    for _ in range(4):
        try:
            result = fn(*args)
            return await result if hasattr(result, "__await__") else result
        except NotReady as e:
            await e.wait()
    raise AssertionError(f"{fn.__name__}{args} is still not ready")


def _view(history: History, cache_dir: Path, **kw: Any) -> Any:
    from wsfs.cache import BlobCache
    from wsfs.daemon.history import HistoryView
    from wsfs.repository import Repository

    repo = Repository.open_url(str(history.repo), str(cache_dir))
    view = HistoryView(repo, WS, BlobCache(repo, str(cache_dir)), label=f"{WS}@*", **kw)
    view.refresh()
    return view


def test_open_manifests_are_bounded_and_reopened(history: History, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from wsfs import repository

    builds = []  # format 2: a version's local index is built from its pieces (format 1: its manifest validated)
    real_build = repository.build_index

    def counting_build(path: str, *args: Any, **kw: Any) -> None:
        builds.append(path)
        real_build(path, *args, **kw)

    monkeypatch.setattr(repository, "build_index", counting_build)
    view = _view(history, tmp_path / "cache", max_open=1)

    async def main() -> None:
        for n in (1, 2, 3, 1):
            node = await _ask(view.lookup, 1, str(n).encode())
            assert node.ino == (n << 40) | 1 and node.is_dir
            leaf = await _ask(view.lookup, node.ino, b"text.txt")
            data = await _ask(view.read, leaf.ino, 0, 100)
            assert data.startswith(b"hello world")
            assert len(view._open) == 1  # never more than max_open manifests open
        s = view.statistics()
        assert s["open_versions"] == [1] and s["manifest_opens"] == 4
        assert len(builds) == 3  # version 1 was reopened from the same file, not built again
        # A remembered version root answers lookup and getattr without opening anything.
        assert (await _ask(view.getattr, (2 << 40) | 1)).ino == (2 << 40) | 1
        assert view.statistics()["manifest_opens"] == 4
        # Inside an evicted version, the manifest is opened again on demand.
        assert (await _ask(view.lookup, (3 << 40) | 1, b"only-in-3")).size == len(b"three\n")
        assert view.statistics()["open_versions"] == [3]

    try:
        trio.run(main)
    finally:
        view.close()
        view.cache.close()


def test_evicted_version_finishes_reads_in_progress(history: History, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from wsfs.cache import BlobCache

    gate = threading.Event()
    real_read = BlobCache.read

    def held_read(self: BlobCache, *args: Any, **kw: Any) -> bytes:
        assert gate.wait(30)
        return real_read(self, *args, **kw)

    monkeypatch.setattr(BlobCache, "read", held_read)
    view = _view(history, tmp_path / "cache", max_open=1)  # a cold cache: big9m's chunk is fetched
    got: dict[str, bytes] = {}

    async def main() -> None:
        v1 = await _ask(view.lookup, 1, b"1")
        big = await _ask(view.lookup, v1.ino, b"big9m")
        first = view._open[1]

        async def reader() -> None:
            got["data"] = await _ask(view.read, big.ino, 0, 65536)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()  # the read waits for its blob
            await _ask(view.lookup, 1, b"2")  # opens version 2, which pushes version 1 out
            assert list(view._open) == [2] and view._retired == {first}
            gate.set()
        assert not view._retired and not view._reading  # closed once its read returned
        with pytest.raises(apsw.ConnectionClosedError):
            first.manifest.getattr(1)

    try:
        trio.run(main)
    finally:
        gate.set()
        view.close()
        view.cache.close()
    with open(history.srcs[1] / "big9m", "rb") as f:
        assert got["data"] == f.read(65536)


def test_new_versions_and_tags_appear_after_the_refresh_interval(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "push-cache"))
    w("init")
    for n in (1, 2):
        write(src / "n", str(n).encode())
        w.push(src, WS)
    view = _view(History({}, tmp_path / "repo", w), tmp_path / "cache", refresh_interval=3600)
    write(src / "n", b"3")
    w.push(src, WS)
    w("tag", f"{WS}@3", "three")

    async def main() -> None:
        listings = view.listings
        # Within the interval, a miss is answered from the listing: no store request.
        assert await _ask(view.lookup, 1, b"3") is None
        assert [name for _, name, _ in await _ask(view.readdir, 1, 0, 100)] == [b"1", b"2"]
        assert view.listings == listings and view.getattr(1).nlink == 2 + 2
        # After it, the next miss or listing asks the store again.
        view.refresh_interval = 0.5
        await trio.sleep(0.6)
        three = await _ask(view.lookup, 1, b"3")
        assert three is not None and three.ino == (3 << 40) | 1 and view.listings == listings + 1
        entries = await _ask(view.readdir, 1, 0, 100)
        assert [name for _, name, _ in entries] == [b"1", b"2", b"3", b"three"]
        tag = await _ask(view.lookup, 1, b"three")
        assert view.readlink(tag.ino) == b"3" and view.getattr(1).nlink == 2 + 3
        leaf = await _ask(view.lookup, three.ino, b"n")
        assert await _ask(view.read, leaf.ino, 0, 10) == b"3"
        # Cursors resume after any entry; a short limit pages through versions and tags.
        for i, (cursor, _, _) in enumerate(entries):
            assert [e[1] for e in await _ask(view.readdir, 1, cursor, 100)] == [e[1] for e in entries[i + 1:]]
        assert [e[1] for e in await _ask(view.readdir, 1, entries[1][0], 2)] == [b"3", b"three"]

    try:
        trio.run(main)
    finally:
        view.close()
        view.cache.close()


def test_stray_tags_and_records_do_not_break_a_history_mount(tmp_path: Path, mount) -> None:
    """A tag named with bytes that are not UTF-8 made ``ls`` of the history root fail with EIO."""
    src = tmp_path / "src"
    src.mkdir()
    write(src / "n", b"1")
    repo = tmp_path / "repo"
    w = Wsfs(str(repo), str(tmp_path / "push-cache"))
    w("init")
    w.push(src, WS)
    tags = os.fsencode(repo) + f"/workspaces/{WS}/tags".encode()
    os.makedirs(tags, exist_ok=True)
    for name, body in ((b"\xff\xfe", b'{"version": 1}'), (b"ok", b'{"version": 1}'), (b"bad", b"[")):
        with open(tags + b"/" + name, "wb") as f:
            f.write(body)
    with open(os.path.join(repo, "workspaces", WS, "versions", "\u00b2"), "wb") as f:
        f.write(b"junk")
    m = mount(repo, WS, extra=("--history",))
    m.expect_log("stray object|ignoring tag")
    assert sorted(os.listdir(m.path)) == ["1", "ok"]
    assert (m.path / "ok" / "n").read_bytes() == b"1"
