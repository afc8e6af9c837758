"""Validation of every name that comes from a user, a manifest or a request.

Workspace and tag names become store keys, so they are restricted to a safe
alphabet.  Entry names inside a tree are arbitrary bytes (Linux allows any
byte but ``/`` and NUL), limited to 255 bytes like every Linux filesystem.
"""

from __future__ import annotations

import re

from wsfs.errors import InvalidName

_REF_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_NUMBER_RE = re.compile(r"[0-9]{1,18}")
NAME_MAX = 255


def check_workspace(name: str) -> str:
    """A workspace name: 1-128 of ``[A-Za-z0-9._-]``, not starting with ``.`` or ``-``."""
    if not _REF_RE.fullmatch(name) or name.endswith(".lock"):
        raise InvalidName(
            f"invalid workspace name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter, digit or '_'"
        )
    return name


def version_number(text: str) -> int | None:
    """The version number *text* names (ASCII digits only: ``str.isdigit`` also accepts ``²`` and ``٣``), else None."""
    return int(text) if _NUMBER_RE.fullmatch(text) else None


def check_tag(name: str) -> str:
    """A tag name: like a workspace name, but never all digits (``@3`` means version 3)."""
    if not _REF_RE.fullmatch(name) or version_number(name) is not None or name.isdigit():
        raise InvalidName(
            f"invalid tag name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "not starting with '.' or '-', and not only digits"
        )
    return name


def check_entry_name(name: bytes) -> bytes:
    """A directory entry name: 1-255 bytes, no ``/`` or NUL, not ``.`` or ``..``."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name or len(name) > NAME_MAX:
        raise InvalidName(f"invalid entry name {name!r}")
    return name


def split_path(path: bytes) -> list[bytes]:
    """Split a path inside a tree (``a/b/c``, leading/trailing ``/`` allowed) into checked names.

    ``""`` and ``"/"`` are the root (an empty list).  ``.`` components are
    dropped; ``..`` is kept for the resolver, which never lets it climb above
    the root.
    """
    parts = [p for p in path.split(b"/") if p not in (b"", b".")]
    for p in parts:
        if p != b"..":
            check_entry_name(p)
    return parts


# -- names in JSON (the REST API and the CLI's --json: docs/api.md, "Names and encoding") --

# What urllib.parse.quote_from_bytes does, with its per-byte Python loop replaced by one regular expression
# (a name with one byte to escape, such as npm's "@scope", went through that loop: 15% of a 40,000-path
# ``wsfs status``).  tests/format/test_names.py checks both give the same text for every byte.
_UNSAFE = re.compile(rb"[^A-Za-z0-9_.~-]")
_UNSAFE_IN_PATH = re.compile(rb"[^A-Za-z0-9_.~/-]")


def _escape(m: re.Match[bytes]) -> bytes:
    return b"%%%02X" % m[0][0]


def pct(name: bytes) -> str:
    """*name* percent-encoded: every byte outside ``A-Za-z0-9-._~`` as ``%XX`` (``/`` too)."""
    return _UNSAFE.sub(_escape, name).decode("ascii")


def pct_path(path: bytes) -> str:
    """A ``/``-separated path percent-encoded segment by segment (the ``/`` kept), for a URL path."""
    return _UNSAFE_IN_PATH.sub(_escape, path).decode("ascii")


def text(name: bytes) -> str:
    """*name* as display text: exact for UTF-8, U+FFFD in place of each bad byte otherwise."""
    return name.decode("utf-8", errors="replace")


def named(key: str, value: bytes) -> dict[str, str]:
    """``{key: text, key_pct: exact}``: how a name goes into JSON."""
    return {key: text(value), f"{key}_pct": pct(value) if key == "name" else pct_path(value)}
