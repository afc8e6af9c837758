import pytest

from wsfs.errors import InvalidName, UsageError
from wsfs.format.names import check_entry_name, check_tag, check_workspace, pct, pct_path, split_path
from wsfs.repository import Ref


@pytest.mark.parametrize("name", ["demo", "a", "my-ws_1.2", "_x", "A" * 128])
def test_valid_workspace_names(name):
    assert check_workspace(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-dash", "a/b", "a b", "ä", "a" * 129, "..", "x@y", "w.lock", "a\n"])
def test_invalid_workspace_names(name):
    with pytest.raises(InvalidName):
        check_workspace(name)


def test_tags_are_never_all_digits():
    assert check_tag("v1") == "v1"
    with pytest.raises(InvalidName):
        check_tag("12")


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"a\0b", b"x" * 256])
def test_invalid_entry_names(name):
    with pytest.raises(InvalidName):
        check_entry_name(name)


@pytest.mark.parametrize("name", [b"...", b"-rf", b"\xff\xfe", b"new\nline", b"x" * 255, b" "])
def test_any_bytes_are_valid_entry_names(name):
    assert check_entry_name(name) == name


def test_split_path():
    assert split_path(b"") == []
    assert split_path(b"/") == []
    assert split_path(b"a//b/./c/") == [b"a", b"b", b"c"]
    assert split_path(b"a/../b") == [b"a", b"..", b"b"]


def test_ref_parsing():
    assert Ref.parse("demo") == Ref("demo", None)
    assert Ref.parse("demo@3") == Ref("demo", "3")
    assert Ref.parse("demo@release-1") == Ref("demo", "release-1")
    for bad in ["demo@", "@3", "de mo@1", "demo@-x", "demo@1@2"]:
        with pytest.raises(UsageError):
            Ref.parse(bad)


def test_percent_encoding_is_urllibs_for_every_byte():
    """pct and pct_path give what urllib.parse.quote_from_bytes gives (the API's documented encoding)."""
    import os
    from urllib.parse import quote_from_bytes, unquote_to_bytes

    samples = [bytes([b]) for b in range(256)] + [bytes(range(256)), b"@types/node/index.d.ts", b"",
                                                 b"a b/c%d/\xff\xfe", os.urandom(300)]
    for s in samples:
        assert pct(s) == quote_from_bytes(s, safe="") and unquote_to_bytes(pct(s)) == s
        assert pct_path(s) == quote_from_bytes(s, safe="/") and unquote_to_bytes(pct_path(s)) == s
