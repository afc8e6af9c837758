"""``wsfs commit`` / ``status`` / ``discard`` on real read-write mounts: what was written becomes a version
that mounts identically on a fresh cache; two writers; conflicts; an unreachable store."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from mountkit import Mount, Mounter

from support.cli import Wsfs
from support.faultproxy import Fault, FaultProxy
from support.s3server import delete_prefix
from support.trees import describe

CHUNK = 64 * 1024


def make_ws(tmp_path: Path, url: str | None = None, env: dict[str, str] | None = None) -> tuple[Wsfs, Path]:
    w = Wsfs(url or str(tmp_path / "repo"), str(tmp_path / "cache"), env)
    w("init", "--chunk-size", str(CHUNK), "--inline-threshold", "4096")
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "dir" / "a.txt").write_bytes(b"a\n")
    (src / "dir" / "sub" / "b.txt").write_bytes(b"b\n" * 100)
    (src / "big").write_bytes(os.urandom(3 * CHUNK + 5))
    (src / "gone").write_bytes(b"to be deleted\n")
    os.symlink("dir/a.txt", src / "link")
    w.push(src, "demo")
    return w, src


def rw(mount: Mounter, w: Wsfs, state: Path, ref: str = "demo", env: dict[str, str] | None = None) -> Mount:
    return mount(w.repo, ref, extra=("--rw", "-o", f"state_dir={state}"), env=env)


def cli(w: Wsfs, m: Mount) -> Wsfs:
    return Wsfs(w.repo, str(m.cache_dir), m.env)


def test_written_tree_becomes_a_version_that_mounts_identically(mount: Mounter, tmp_path: Path) -> None:
    w, _ = make_ws(tmp_path)
    m = rw(mount, w, tmp_path / "state")
    p = m.path
    (p / "new").mkdir()
    (p / "new" / "small").write_bytes(b"x" * 100)
    (p / "new" / "large").write_bytes(os.urandom(2 * CHUNK + 3))
    with open(p / "big", "r+b") as f:  # a write into one chunk of a base file
        f.seek(CHUNK + 10)
        f.write(b"PATCHED")
    with open(os.fsencode(p) + b"/new/\xff\xfe odd", "wb") as f:
        f.write(b"odd name")
    os.symlink("../dir/sub/b.txt", p / "new" / "rel")
    os.link(p / "new" / "small", p / "new" / "hard")
    os.setxattr(p / "new" / "small", "user.tag", b"v\x00al")
    os.chmod(p / "dir" / "a.txt", 0o600)
    os.chown(p / "dir" / "a.txt", 1234, 5678)
    os.utime(p / "new" / "large", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.unlink(p / "gone")
    os.rename(p / "dir" / "sub", p / "moved")
    status = json.loads(cli(w, m)("status", "--json", str(p)).out)
    assert {(c["kind"], c["path"]) for c in status["changes"]} >= {("A", "new"), ("D", "gone"), ("M", "big")}
    before = describe(p)
    r = cli(w, m)("commit", "-m", "first commit", str(p))
    assert "committed demo@2" in r.text, r.text
    assert json.loads(cli(w, m)("status", "--json", str(p)).out)["changes"] == []
    assert describe(p) == before  # the mount goes on, showing the same tree
    log = json.loads(w("log", "--json", "demo").out)
    assert log[0]["version"] == 2 and log[0]["message"] == "first commit"
    # A fresh cache, a read-only mount of the new version: the same tree, byte for byte.
    ro = mount(w.repo, "demo@2", cache_dir=tmp_path / "fresh-cache")
    assert describe(ro.path) == before
    # Later writes are the next commit's, and only they are uploaded.
    (p / "new" / "later").write_bytes(b"later\n")
    r = json.loads(cli(w, m)("commit", "--json", str(p)).out)
    assert r["version"] == 3 and r["ours"] >= 1 and r["bytes_uploaded"] < 64 * 1024
    assert cli(w, m)("commit", str(p)).text.startswith("nothing to commit")
    changes = w("diff", "demo@2", "demo@3").out.splitlines()
    assert b"A new/later" in changes and len(changes) <= 3  # the file and its directory's mtime


def test_two_writers_disjoint_rebase_and_overlap_conflicts(mount: Mounter, tmp_path: Path) -> None:
    w, _ = make_ws(tmp_path)
    a = rw(mount, w, tmp_path / "sa")
    b = rw(mount, w, tmp_path / "sb")
    (a.path / "from-a").write_bytes(b"a\n")
    (b.path / "from-b").write_bytes(b"b\n")
    assert "committed demo@2" in cli(w, a)("commit", str(a.path)).text
    r = cli(w, b)("commit", str(b.path)).text
    assert "committed demo@3" in r and "other writers" in r
    out = tmp_path / "co3"
    w("checkout", "demo@3", str(out))
    assert (out / "from-a").read_bytes() == b"a\n" and (out / "from-b").read_bytes() == b"b\n"
    # Both change dir/a.txt: the second commit is a conflict naming it, and nothing is published.
    (a.path / "dir" / "a.txt").write_bytes(b"A's\n")
    (b.path / "dir" / "a.txt").write_bytes(b"B's\n")
    assert "committed demo@4" in cli(w, a)("commit", str(a.path)).text
    r = cli(w, b)("commit", str(b.path), check=False)
    assert r.code == 5 and "dir/a.txt" in r.err and r.err.count("\n") == 1, r.err
    assert (b.path / "dir" / "a.txt").read_bytes() == b"B's\n"  # nothing lost
    assert json.loads(w("log", "--json", "demo").out)[0]["version"] == 4
    # --ours publishes ours over theirs.
    assert "ours replaced theirs" in cli(w, b)("commit", "--ours", str(b.path)).text
    assert w("cat", "demo@5", "dir/a.txt").out == b"B's\n"


def wait_rebased(w: Wsfs, m: Mount, n: int) -> dict:
    """``wsfs status --json`` once *m* has ended its *n*-th re-base attempt (they follow commits' answers)."""
    deadline = time.monotonic() + 30
    while True:
        st = json.loads(cli(w, m)("status", "--json", str(m.path)).out)
        if st["rebases"] >= n:
            return st
        assert time.monotonic() < deadline, f"no re-base attempt {n} within 30 s: {st}"
        time.sleep(0.05)


def test_an_idle_commit_goes_on_over_its_version_and_shows_other_writers_changes(mount: Mounter,
                                                                                tmp_path: Path) -> None:
    """After a commit with nothing written meanwhile, the mount is over the version it published (live
    re-base): other writers' changes show without a remount, files open across it keep working, what the
    kernel cached of everything else stays (same inode numbers, no READ for pages it had), and the next
    commit costs what changed after it."""
    w, _ = make_ws(tmp_path)
    a = rw(mount, w, tmp_path / "sa")
    b = rw(mount, w, tmp_path / "sb")
    pa = a.path
    ino = os.stat(pa / "dir" / "a.txt").st_ino
    big = (pa / "big").read_bytes()  # its pages are now in the kernel's cache
    dirfd = os.open(pa / "dir", os.O_RDONLY | os.O_DIRECTORY)  # the kernel holds the directory (a cwd would)
    try:
        assert sorted(os.listdir(pa)) == ["big", "dir", "gone", "link"]  # (a negative entry for "theirs" too:)
        assert not (pa / "theirs").exists()
        (b.path / "theirs").write_bytes(b"theirs\n")
        (b.path / "dir" / "sub" / "b.txt").write_bytes(b"changed by b\n")
        (b.path / "gone").unlink()
        assert "committed demo@2" in cli(w, b)("commit", str(b.path)).text
        (pa / "mine").write_bytes(b"mine\n")
        reader = open(pa / "dir" / "a.txt", "rb")  # files open across the re-base keep working
        writer = open(pa / "mine", "ab")
        try:
            r = json.loads(cli(w, a)("commit", "--json", str(pa)).out)
            st = wait_rebased(w, a, 1)
            assert (r["version"], r["rebased"], r["rebasing"]) == (3, True, True)
            assert (st["base_version"], st["changes"]) == (3, [])
            assert (pa / "theirs").read_bytes() == b"theirs\n"  # at once: the negative entry was dropped
            assert reader.read() == b"a\n"
            writer.write(b"more\n")
        finally:
            reader.close()
            writer.close()
        assert (pa / "mine").read_bytes() == b"mine\nmore\n"
        (pa / "mine2").write_bytes(b"mine too\n")
        r = json.loads(cli(w, a)("commit", "--json", str(pa)).out)
        st = wait_rebased(w, a, 2)
        assert (r["version"], r["changed"], st["base_version"], st["changes"]) == (4, 3, 4, [])  # mine, mine2, /
        assert (pa / "dir" / "sub" / "b.txt").read_bytes() == b"changed by b\n"  # pages of the old one dropped
        assert not (pa / "gone").exists()
        assert sorted(os.listdir(pa)) == ["big", "dir", "link", "mine", "mine2", "theirs"]  # listing dropped
        assert os.stat(pa / "dir" / "a.txt").st_ino == ino  # the same file keeps its number
        assert sorted(os.listdir(dirfd)) == ["a.txt", "sub"]  # a directory the kernel held works on
        reads = a.stats()["requests"].get("read", 0)
        assert (pa / "big").read_bytes() == big
        assert a.stats()["requests"].get("read", 0) == reads  # its pages stayed in the kernel's cache
        (pa / "dir" / "a.txt").write_bytes(b"after\n")
        r = json.loads(cli(w, a)("commit", "--json", str(pa)).out)
        assert (r["version"], r["changed"], r["files_read"]) == (5, 1, 1) and r["bytes_uploaded"] < 8192, r
    finally:
        os.close(dirfd)
    out = tmp_path / "co5"
    w("checkout", "demo@5", str(out))
    assert describe(out) == describe(pa)


def test_a_rebase_drops_what_the_mount_showed_of_a_path_another_writer_changed_after_our_commit(
        mount: Mounter, tmp_path: Path) -> None:
    """A path this layer committed (no re-base then: -o norebase), then changed by another writer, is the
    other writer's in our next commit, which we did not touch it for; the re-base after that commit must
    drop what the kernel cached of our old content there, not only of paths we never changed."""
    w, _ = make_ws(tmp_path)
    state = tmp_path / "sa"
    a = mount(w.repo, "demo", extra=("--rw", "-o", f"state_dir={state},norebase"))
    (a.path / "k").write_bytes(b"ours\n")
    assert json.loads(cli(w, a)("commit", "--json", str(a.path)).out)["version"] == 2
    cli(w, a)("umount", str(a.path))  # (waits for the daemon to exit; the fixture's teardown finds it gone)
    b = rw(mount, w, tmp_path / "sb", ref="demo@2")
    (b.path / "k").write_bytes(b"theirs, later\n")
    assert json.loads(cli(w, b)("commit", "--json", str(b.path)).out)["version"] == 3
    a = rw(mount, w, state)  # over demo@1 still, with its memo of demo@2
    fd = os.open(a.path / "k", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == b"ours\n"  # what this layer saw (and the kernel caches now)
        (a.path / "j").write_bytes(b"j\n")
        assert os.stat(a.path / "k").st_size == len(b"ours\n")
        r = json.loads(cli(w, a)("commit", "--json", str(a.path)).out)
        assert r["version"] == 4 and w("cat", "demo@4", "k").out == b"theirs, later\n"
        st = wait_rebased(w, a, 1)
        assert st["base_version"] == 4 and st["changes"] == []
        assert os.stat(a.path / "k").st_size == len(b"theirs, later\n")  # (attributes cached since the stat)
        assert os.fstat(fd).st_size == len(b"theirs, later\n")
        assert os.pread(fd, 100, 0) == b"theirs, later\n"
    finally:
        os.close(fd)
    assert (a.path / "k").read_bytes() == b"theirs, later\n"


def test_commit_with_nothing_to_publish_catches_up_with_the_head(mount: Mounter, tmp_path: Path) -> None:
    """``wsfs commit`` on a mount holding nothing unpublished goes on over the latest version: another
    writer's changes show, also at a path this mount committed earlier."""
    w, _ = make_ws(tmp_path)
    a = rw(mount, w, tmp_path / "sa")
    b = rw(mount, w, tmp_path / "sb")
    (a.path / "k").write_bytes(b"a's\n")
    assert json.loads(cli(w, a)("commit", "--json", str(a.path)).out)["version"] == 2
    assert wait_rebased(w, a, 1)["base_version"] == 2
    r = json.loads(cli(w, a)("commit", "--json", str(a.path)).out)
    assert (r["version"], r["rebasing"]) == (None, False)  # nothing newer: nothing to do
    assert os.stat(a.path / "k").st_size == 4 and not (a.path / "theirs").exists()
    (b.path / "theirs").write_bytes(b"b's\n")
    cli(w, b)("commit", str(b.path))  # demo@3 (b was over demo@1: rebased)
    # b's mount goes on over demo@3 after the commit's answer: written before that, k would be written over
    # demo@1's k, which demo@2 changed (a true conflict)
    assert wait_rebased(w, b, 1)["base_version"] == 3
    (b.path / "k").write_bytes(b"b changed it\n")
    cli(w, b)("commit", str(b.path))  # demo@4
    out = cli(w, a)("commit", str(a.path)).text
    assert "nothing to commit" in out and "demo@4" in out, out
    st = wait_rebased(w, a, 2)
    assert (st["rebases"], st["base_version"], st["changes"]) == (2, 4, [])
    assert (a.path / "theirs").read_bytes() == b"b's\n"
    assert os.stat(a.path / "k").st_size == len(b"b changed it\n")
    assert (a.path / "k").read_bytes() == b"b changed it\n"


def test_commit_interval_with_nothing_pending_catches_up_with_other_writers(mount: Mounter, tmp_path: Path) -> None:
    """``-o commit_interval=`` with nothing written here: the mount goes on over what another writer
    published, without any ``wsfs commit`` of ours; with ``norebase`` it stays where it was."""
    w, _ = make_ws(tmp_path)
    a = mount(w.repo, "demo", extra=("--rw", "-o", f"state_dir={tmp_path / 'sa'},commit_interval=1s"))
    still = mount(w.repo, "demo", extra=("--rw", "-o", f"state_dir={tmp_path / 'sc'},commit_interval=1s,norebase"))
    b = rw(mount, w, tmp_path / "sb")
    assert not (a.path / "theirs").exists()  # (a miss the kernel keeps: the re-base must drop it)
    (b.path / "theirs").write_bytes(b"b's\n")
    (b.path / "dir" / "a.txt").write_bytes(b"b changed it\n")
    assert json.loads(cli(w, b)("commit", "--json", str(b.path)).out)["version"] == 2
    st = wait_rebased(w, a, 1)
    assert (st["base_version"], st["changes"]) == (2, []), st
    assert (a.path / "theirs").read_bytes() == b"b's\n"
    assert (a.path / "dir" / "a.txt").read_bytes() == b"b changed it\n"
    time.sleep(2.5)  # two more intervals: nothing newer, nothing done
    st = json.loads(cli(w, a)("status", "--json", str(a.path)).out)
    assert (st["rebases"], st["base_version"]) == (1, 2), st
    st = json.loads(cli(w, still)("status", "--json", str(still.path)).out)
    assert (st["rebases"], st["base_version"]) == (0, 1), st
    assert not (still.path / "theirs").exists()
    assert [v["version"] for v in json.loads(w("log", "--json", "demo").out)] == [2, 1]  # no version of ours


def test_commit_json_names_conflicting_paths_exactly(mount: Mounter, tmp_path: Path) -> None:
    """``wsfs commit --json`` names the paths of a conflict and those ours replaced as every --json does
    (``path`` + ``path_pct``, the exact bytes), a name that is not UTF-8 included."""
    w, _ = make_ws(tmp_path)
    a = rw(mount, w, tmp_path / "sa")
    b = rw(mount, w, tmp_path / "sb")
    name = b"caf\xe9"
    for m, data in ((a, b"A"), (b, b"B")):
        with open(os.path.join(os.fsencode(m.path), b"dir", name), "wb") as f:
            f.write(data)
    assert json.loads(cli(w, a)("commit", "--json", str(a.path)).out)["version"] == 2
    r = cli(w, b)("commit", "--json", str(b.path), check=False)
    assert r.code == 5
    out = json.loads(r.out)
    assert out["paths"] == [{"path": "dir/caf\ufffd", "path_pct": "dir/caf%E9"}], out
    assert "dir/caf\\xe9" in out["error"]  # the message shows the byte
    out = json.loads(cli(w, b)("commit", "--json", "--ours", str(b.path)).out)
    assert out["version"] == 3 and [p["path_pct"] for p in out["overwritten"]] == ["dir/caf%E9"]


def test_discard_drops_pending_changes_and_the_base_shows_again(mount: Mounter, tmp_path: Path) -> None:
    w, src = make_ws(tmp_path)
    m = rw(mount, w, tmp_path / "state")
    p = m.path
    (p / "dir" / "a.txt").write_bytes(b"changed\n")
    (p / "extra").write_bytes(b"extra\n")
    assert (p / "dir" / "a.txt").read_bytes() == b"changed\n"
    r = cli(w, m)("discard", str(p), "dir/a.txt")
    assert "discarded 1" in r.text
    assert (p / "dir" / "a.txt").read_bytes() == b"a\n"  # the kernel's cached pages were dropped too
    assert (p / "extra").exists()
    cli(w, m)("discard", str(p))
    assert not (p / "extra").exists()
    assert json.loads(cli(w, m)("status", "--json", str(p)).out)["changes"] == []


def test_commit_of_a_read_only_mount_is_a_usage_error(mount: Mounter, tmp_path: Path) -> None:
    w, _ = make_ws(tmp_path)
    m = mount(w.repo, "demo")
    r = cli(w, m)("commit", str(m.path), check=False)
    assert r.code == 2 and "read-only" in r.err


@pytest.mark.s3
def test_offline_commit_keeps_everything_and_a_later_commit_succeeds(
        mount: Mounter, tmp_path: Path, s3_server, s3_client) -> None:
    prefix = f"wsfs-test/rw-offline-{uuid.uuid4().hex[:12]}"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        env = {**os.environ, **s3_server.env, "AWS_ENDPOINT_URL": proxy.url, "WSFS_OP_TIMEOUT": "5"}
        try:
            w, _ = make_ws(tmp_path, f"s3://{s3_server.bucket}/{prefix}", env)
            m = rw(mount, w, tmp_path / "state", env=env)
            m.expect_log("commit|lease|store")  # the failed commit is logged
            (m.path / "offline").write_bytes(b"written offline\n")
            proxy.set_rule(lambda meth, path, q: Fault.error(503, "SlowDown"))
            r = cli(w, m)("commit", str(m.path), check=False)
            assert r.code == 8 and r.err.count("\n") == 1, r.err
            (m.path / "offline2").write_bytes(b"still writable\n")
            assert (m.path / "offline").read_bytes() == b"written offline\n"
            proxy.set_rule(None)
            assert "committed demo@2" in cli(w, m)("commit", str(m.path)).text
            assert w("cat", "demo@2", "offline2").out == b"still writable\n"
        finally:
            delete_prefix(s3_client, s3_server.bucket, prefix + "/")
            shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def wait_for_version(w: Wsfs, n: int, seconds: float = 20) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if json.loads(w("log", "--json", "demo").out)[0]["version"] >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no demo@{n} after {seconds} s")


def test_commit_on_umount_and_on_sigterm_and_every_interval(mount: Mounter, tmp_path: Path) -> None:
    import signal

    w, _ = make_ws(tmp_path)
    m = mount(w.repo, "demo", extra=("--rw", "-o", f"state_dir={tmp_path / 's1'},commit_on_umount"))
    (m.path / "at-umount").write_bytes(b"1\n")
    m.unmount()
    assert w("cat", "demo@2", "at-umount").out == b"1\n"
    m = mount(w.repo, "demo", extra=("--rw", "-o", f"state_dir={tmp_path / 's2'},commit_on_umount"))
    (m.path / "at-sigterm").write_bytes(b"2\n")
    os.kill(m.pid, signal.SIGTERM)
    assert m.proc.wait(60) == 0
    assert w("cat", "demo@3", "at-sigterm").out == b"2\n"
    m = mount(w.repo, "demo", extra=("--rw", "-o", f"state_dir={tmp_path / 's3'},commit_interval=1s"))
    (m.path / "periodic").write_bytes(b"3\n")
    wait_for_version(w, 4)
    assert w("cat", "demo@4", "periodic").out == b"3\n"
    r = w("mount", "demo", str(tmp_path / "nowhere"), "-o", "commit_on_umount", check=False)
    assert r.code == 2 and "--rw" in r.err


def test_commit_progress_on_a_terminal_and_nothing_in_a_pipe(mount: Mounter, tmp_path: Path) -> None:
    """The daemon streams progress lines before its reply to a client that asks; ``wsfs commit`` asks
    only when stderr is a terminal (a bar there), and its output otherwise stays one line (or --json)."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios
    import threading

    from wsfs.daemon.control import query

    w, _ = make_ws(tmp_path)
    m = rw(mount, w, tmp_path / "state")
    (m.path / "many").mkdir()
    for i in range(200):
        (m.path / "many" / f"f{i:03d}").write_bytes(os.urandom(100 + i))
    seen: list[dict] = []
    r = query(str(m.path), str(m.cache_dir), "commit", timeout=120, args={"message": "progress"},
              progress=seen.append)
    assert r["ok"] and r["version"] == 2
    steps = [s["step"] for s in seen]
    assert [s for i, s in enumerate(steps) if s not in steps[:i]] == ["reading", "building", "uploading"], steps
    assert seen[-1]["step"] == "uploading" and seen[-1]["done"] == seen[-1]["total"] > 0, seen[-1]
    reading = [s for s in seen if s["step"] == "reading"]
    assert reading[-1]["done"] == reading[-1]["total"] >= 200, reading[-1]
    # The command line on a terminal: a bar on stderr, the usual line on stdout.
    (m.path / "many" / "f000").write_bytes(b"again")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a terminal has a size
    out: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            out.append(data)

    t = threading.Thread(target=drain)
    t.start()
    try:
        env = {**cli(w, m).env}
        p = subprocess.run([sys.executable, "-m", "wsfs", "commit", str(m.path)], stdout=subprocess.PIPE,
                           stderr=slave, env=env, timeout=120)
    finally:
        os.close(slave)
        t.join(10)
        os.close(master)
    assert p.returncode == 0 and p.stdout.startswith(b"committed demo@3"), p.stdout
    assert b"commit: " in b"".join(out), b"".join(out)[-500:]
    # In a pipe: no progress, and --json is one line of JSON, as before.
    (m.path / "many" / "f001").write_bytes(b"again")
    r2 = cli(w, m)("commit", "--json", str(m.path))
    assert r2.err == "" and len(r2.out.splitlines()) == 1 and json.loads(r2.out)["version"] == 4


def test_a_commit_after_rm_rf_fetches_nothing_back(mount: Mounter, tmp_path: Path) -> None:
    """``rm -rf`` of what the last commit uploaded, then a commit: no GET (``wsfs stats``); before, the
    commit read back every pack around the removed files, i.e. what the same daemon had just uploaded."""
    import subprocess

    w, _ = make_ws(tmp_path)
    m = rw(mount, w, tmp_path / "state")
    for d in range(10):
        (m.path / "tree" / f"d{d}").mkdir(parents=True)
        for i in range(60):
            (m.path / "tree" / f"d{d}" / f"f{i:02d}").write_bytes(os.urandom(200 + 20 * i))
    c = cli(w, m)
    assert json.loads(c("commit", "--json", str(m.path)).out)["version"] == 2

    def gets() -> int:
        return json.loads(c("stats", "--json", str(m.path)).out)["store"]["requests"].get("get", 0)

    (m.path / "tree" / "d3" / "f10").write_bytes(b"changed")  # its pack is cut again: the rest is local
    before = gets()
    r = json.loads(c("commit", "--json", str(m.path)).out)
    assert r["version"] == 3 and wait_rebased(w, m, 2)["base_version"] == 3  # (the idle mount went on over it)
    # The commit fetched nothing; the re-base after it read the new version's pack map (one small GET).
    assert gets() - before == 1
    subprocess.run(["rm", "-rf", str(m.path / "tree")], check=True)
    before = gets()
    r = json.loads(c("commit", "--json", str(m.path)).out)
    assert r["version"] == 4 and r["changed"] >= 611 and wait_rebased(w, m, 3)["base_version"] == 4
    assert gets() - before <= 1
    out = tmp_path / "co4"
    w("checkout", "demo@4", str(out))
    assert not (out / "tree").exists() and (out / "dir" / "a.txt").read_bytes() == b"a\n"
