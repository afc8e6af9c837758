"""Secrets in log lines and messages (wsfs.redact) and private local files (wsfs.localfs), as units."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wsfs import redact
from wsfs.localfs import private_dir, private_file, remove_stale, temp_name, temp_pid

TOKEN = "FwoGZXIvYXdzEXAMPLETOKEN0123456789"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HEX_SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"


@pytest.mark.parametrize("text", [
    f"headers={{'X-Amz-Security-Token': b'{TOKEN}', 'User-Agent': b'Botocore'}}",
    f"host;x-amz-date\nx-amz-security-token:{TOKEN}\n",
    f"https://b.s3.amazonaws.com/k?X-Amz-Security-Token={TOKEN}&X-Amz-Signature=abc",
    f"[default]\naws_session_token = {TOKEN}\naws_secret_access_key={SECRET_KEY}",
    f"{{'aws_session_token': '{TOKEN}'}}",
    f"Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/{TOKEN}, Signature={TOKEN}",
    f"'Authorization': b'AWS4-HMAC-SHA256 Credential=AKID/x, SignedHeaders=host, Signature={TOKEN}'",
    f"Signature:\n{HEX_SIGNATURE}",
    f"cannot reach http://wsfs:{TOKEN}@127.0.0.1:8333/bucket",
    f"endpoint_url=https://user:{TOKEN}@s3.example.com,cache_dir=/c",
])
def test_redact_masks_each_form(text: str) -> None:
    out = redact.redact(text)
    assert TOKEN not in out and HEX_SIGNATURE not in out and redact.MASK in out


def test_redact_keeps_what_is_not_secret() -> None:
    text = "GET http://127.0.0.1:8333/wsfs-test/k HTTP/1.1 200; user@example.com; s3://b/p; ws@3"
    assert redact.redact(text) == text


def test_secret_values_from_the_environment_are_masked_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    assert redact.redact(f"odd place {SECRET_KEY} and {TOKEN}") == "odd place *** and ***"


def test_the_filter_redacts_message_arguments_and_tracebacks_of_child_loggers(tmp_path: Path) -> None:
    """A handler of the root logger sees records propagated from botocore's loggers: they are redacted."""
    code = f"""
import logging, sys
from wsfs import redact
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(message)s")
redact.install()
log = logging.getLogger("botocore.endpoint")
log.debug("Sending %s", {{"X-Amz-Security-Token": b"{TOKEN}"}})
log.debug("url %s", "http://u:{TOKEN}@h/")
try:
    raise ValueError("bad endpoint http://u:{TOKEN}@h/")
except ValueError:
    log.exception("failed")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert TOKEN not in p.stderr
    assert p.stderr.count("***") == 3 and "ValueError: bad endpoint http://u:***@h/" in p.stderr


def test_private_dir_creates_and_narrows_only_what_is_ours(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        deep = private_dir(str(tmp_path / "a" / "b" / "c"))
        for p in (tmp_path / "a", tmp_path / "a" / "b", Path(deep)):
            assert p.stat().st_mode & 0o777 == 0o700
        wide = tmp_path / "wide"
        wide.mkdir(mode=0o755)
        private_dir(str(wide))
        assert wide.stat().st_mode & 0o777 == 0o700
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, 65534, 65534)
        private_dir(str(theirs))  # another user's: left alone
        assert theirs.stat().st_mode & 0o777 == 0o755
        f = tmp_path / "f"
        f.write_bytes(b"x")
        f.chmod(0o644)
        os.close(private_file(str(f)))
        assert f.stat().st_mode & 0o777 == 0o600
        os.close(private_file(str(tmp_path / "new")))
        assert (tmp_path / "new").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_remove_stale_goes_by_the_pid_in_the_name(tmp_path: Path) -> None:
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    mine = Path(temp_name(str(tmp_path), "manifest", ".sqlite"))
    assert temp_pid(mine.name) == os.getpid()
    theirs = tmp_path / f"manifest-{dead}-0a1b2c.sqlite"
    other = tmp_path / "unrelated.txt"
    for p in (mine, theirs, other):
        p.write_bytes(b"")
    logging.getLogger("wsfs.localfs").setLevel(logging.WARNING)
    assert remove_stale(str(tmp_path), temp_pid, 3600) == 1
    assert mine.exists() and not theirs.exists() and other.exists()
    assert remove_stale(str(tmp_path), temp_pid, -1) == 1  # too old, even if alive
    assert not mine.exists()
