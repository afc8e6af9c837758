"""The command line as a user meets it: help, output formats, one-line errors and exit codes."""

import json
import os
import socket
import subprocess
import sys

import pytest

from support.cli import Wsfs


@pytest.fixture
def w(tmp_path):
    w = Wsfs(str(tmp_path / "repo"), str(tmp_path / "cache"))
    w("init")
    return w


def tree(tmp_path, name="src", **files):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    for k, v in files.items():
        (d / k).write_bytes(v)
    return d


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "wsfs", "--help"], capture_output=True, text=True).stdout
    for cmd in ["init", "push", "log", "ls", "cat", "checkout", "diff", "tag", "workspaces"]:
        assert cmd in out
    out = subprocess.run([sys.executable, "-m", "wsfs", "push", "--help"], capture_output=True, text=True).stdout
    assert "--skip-unreadable" in out and "WORKSPACE" in out


def test_log_tags_workspaces_and_diff(w, tmp_path):
    src = tree(tmp_path, a=b"1", b=b"2", c=b"3")
    (src / "d").mkdir()
    w("push", "-m", "first", src, "demo")
    (src / "a").write_bytes(b"changed")
    (src / "b").unlink()
    (src / "new").write_bytes(b"n")
    (src / "c").unlink()
    (src / "c").mkdir()
    (src / "c" / "inside").write_bytes(b"i")
    os.chmod(src / "d", 0o700)
    w("push", "-m", "second", src, "demo")
    w("push", src, "other")
    log = w("log", "demo").text.splitlines()
    assert log[0].split()[:2] == ["VERSION", "PARENT"]
    assert log[1].split()[0] == "2" and log[1].endswith("second")
    assert log[2].split()[0] == "1" and "first" in log[2]
    w("tag", "demo@1", "release-1")
    assert "[release-1]" in w("log", "demo").text
    assert w("cat", "demo@release-1", "a").out == b"1"
    r = w("tag", "demo@2", "release-1", check=False)
    assert r.code == 4 and "already exists" in r.err
    assert w("workspaces").text == "demo\t2\nother\t1\n"
    assert json.loads(w("workspaces", "--json").out) == [{"workspace": "demo", "latest": 2},
                                                         {"workspace": "other", "latest": 1}]
    diff = w("diff", "demo@1", "demo@2").text.splitlines()
    assert diff == ["M a", "D b", "T c", "A c/inside", "M d", "A new"]
    assert w("diff", "demo@release-1", "demo@1").out == b""
    assert w("diff", "--exit-code", "demo@1", "demo", check=False).code == 1


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["log", "Bad Name"], 2, "invalid workspace name"),
        (["log", "nothing"], 3, "no versions"),
        (["cat", "demo@99", "a"], 3, "no version 99"),
        (["cat", "demo@nosuchtag", "a"], 3, "no version or tag"),
        (["cat", "demo", "missing"], 3, "no such file"),
        (["cat", "demo", "../etc/passwd"], 3, "outside the version"),
        (["cat", "demo", "d"], 2, "not a regular file"),
        (["tag", "demo@1", "123"], 2, "invalid tag name"),
    ],
)
def test_errors_are_one_line_with_exit_codes(w, tmp_path, args, code, message):
    src = tree(tmp_path, a=b"1")
    (src / "d").mkdir()
    w("push", src, "demo")
    r = w(*args, check=False)
    assert r.code == code, r.err
    assert r.err.count("\n") == 1 and r.err.startswith("wsfs: error: ") and message in r.err, r.err


def test_checkout_refuses_a_non_empty_directory(w, tmp_path):
    w("push", tree(tmp_path, a=b"1"), "demo")
    target = tree(tmp_path, "target", existing=b"x")
    r = w("checkout", "demo", target, check=False)
    assert r.code == 2 and "not an empty directory" in r.err
    assert os.listdir(target) == ["existing"]


def test_missing_repository(tmp_path):
    w = Wsfs(str(tmp_path / "nope"), str(tmp_path / "cache"))
    r = w("log", "demo", check=False)
    assert r.code == 3 and "no wsfs repository" in r.err and "wsfs init" in r.err


def test_init_twice_is_refused(w):
    r = w("init", check=False)
    assert r.code == 4 and "already exists" in r.err


def test_unknown_repository_format_is_refused(w, tmp_path):
    p = os.path.join(w.repo, "wsfs-repo.json")
    with open(p) as f:
        d = json.load(f)
    d["format"] = 3
    with open(p, "w") as f:
        json.dump(d, f)
    r = w("log", "demo", check=False)
    assert r.code == 7 and "format version 3" in r.err and "upgrade" in r.err


def test_default_repository_needs_no_configuration(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSFS_", "XDG_"))}
    env["HOME"] = str(tmp_path / "home")
    src = tree(tmp_path, f=b"hello")
    run = lambda *a: subprocess.run([sys.executable, "-m", "wsfs", *map(str, a)], env=env, capture_output=True)  # noqa: E731
    r = run("push", src, "demo")
    assert r.returncode == 0, r.stderr
    assert os.path.exists(tmp_path / "home/.local/share/wsfs/repo/wsfs-repo.json")
    assert run("cat", "demo", "f").stdout == b"hello"
    for private in ("home/.local/share/wsfs/repo", "home/.cache/wsfs"):  # one user's state and cache
        assert os.stat(tmp_path / private).st_mode & 0o777 == 0o700, private


def test_config_file_selects_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSFS_", "XDG_"))}
    env["HOME"] = str(tmp_path / "home")
    cfg = tmp_path / "home/.config/wsfs"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text(f'repo = "{tmp_path / "configured"}"\n')
    w = Wsfs(str(tmp_path / "configured"), str(tmp_path / "cache"))
    w("init")
    w("push", tree(tmp_path, f=b"x"), "demo")
    r = subprocess.run([sys.executable, "-m", "wsfs", "workspaces"], env=env, capture_output=True, text=True)
    assert r.stdout == "demo\t1\n"


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_endpoint_fails_fast_with_one_line(tmp_path):
    w = Wsfs("s3://bucket/prefix", str(tmp_path / "cache"))
    env = {"WSFS_S3_MAX_ATTEMPTS": "2", "WSFS_S3_CONNECT_TIMEOUT": "1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "SECRETVALUE123", "AWS_DEFAULT_REGION": "us-east-1"}
    r = w("--endpoint-url", f"http://127.0.0.1:{_free_port()}", "log", "demo", check=False, env=env, timeout=60)
    assert r.code == 8, r.err
    assert r.err.count("\n") == 1 and "unreachable" in r.err
    assert "SECRETVALUE123" not in r.err


def test_ls_writes_raw_bytes_names(w, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    open(os.fsencode(src) + b"/\xff\xfe", "wb").close()
    w("push", src, "demo")
    assert w("ls", "demo").out == b"\xff\xfe\n"
    assert w("cat", "demo", b"\xff\xfe").out == b""


def test_ls_and_diff_as_json(w, tmp_path):
    import json
    from urllib.parse import unquote_to_bytes

    src = tree(tmp_path, a=b"1")
    (src / "d").mkdir()
    open(os.fsencode(src) + b"/d/\xff x", "wb").close()
    os.symlink("a", src / "l")
    w("push", src, "demo")
    rows = json.loads(w("ls", "--json", "demo").out)
    assert [(r["name"], r["type"]) for r in rows] == [("a", "file"), ("d", "dir"), ("l", "symlink")]
    assert rows[0]["size"] == 1 and rows[0]["mode"] == (src / "a").stat().st_mode & 0o7777
    assert rows[2]["target"] == "a"
    (odd,) = json.loads(w("ls", "--json", "demo", "d").out)
    assert odd["name"] == "\ufffd x" and unquote_to_bytes(odd["name_pct"]) == b"\xff x"  # as the REST API
    assert json.loads(w("ls", "--json", "demo", "a").out)[0]["name"] == "a"
    (src / "a").write_bytes(b"2")
    (src / "new").write_bytes(b"")
    w("push", src, "demo")
    assert json.loads(w("diff", "--json", "demo@1", "demo@2").out) == [
        {"status": "M", "path": "a", "path_pct": "a"}, {"status": "A", "path": "new", "path_pct": "new"}]
    assert json.loads(w("diff", "--json", "demo@2", "demo@2").out) == []
