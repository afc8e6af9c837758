"""Names are bytes: how they are written in URLs and in JSON.

Linux names are any bytes but ``/`` and NUL, so neither URLs nor JSON can
assume UTF-8.  The rules (``docs/api.md``, "Names and encoding"):

* In a URL path (``.../files/<path>``) the path is split on ``/`` first, then
  each segment is percent-decoded to *bytes* (RFC 3986; ``+`` is a plus).
  A segment that decodes to nothing, ``.``, ``..``, or holds ``/`` (``%2F``)
  or NUL is refused (400): nothing is normalized, nothing climbs.
* In a query value (``?path=``) the value is percent-decoded to bytes with
  ``+`` meaning a space (``application/x-www-form-urlencoded``, what
  ``urlencode`` and browsers send); ``/`` separates names.
* In JSON, every name, path and symlink target comes twice: ``name`` is text
  (exact if the bytes are UTF-8, else with U+FFFD in place of bad bytes, for
  display) and ``name_pct`` is the exact bytes percent-encoded (ASCII; every
  byte but ``A-Za-z0-9-._~`` escaped), ready to put in a URL.

The JSON half (``named``, ``pct``) lives in ``format.names``: the CLI's
``--json`` output writes names the same way.  Imports ``format.names`` and
``errors`` only.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from wsfs.errors import InvalidName
from wsfs.format.names import check_entry_name, named, pct, pct_path, text

__all__ = ["named", "pct", "pct_path", "query_path", "query_values", "text", "url_path_names"]


def url_path_names(segments: list[bytes]) -> list[bytes]:
    """The raw (still percent-encoded) segments of a URL path, decoded to checked entry names."""
    out = []
    for seg in segments:
        name = unquote_to_bytes(seg)
        if name in (b".", b".."):
            raise InvalidName(f"path segment {seg.decode('ascii', 'replace')!r}: '.' and '..' are not allowed")
        try:
            out.append(check_entry_name(name))
        except InvalidName:
            raise InvalidName(
                f"path segment {seg.decode('ascii', 'replace')!r} is not a valid name "
                "(empty, or holding '/' or NUL once decoded, or longer than 255 bytes)"
            ) from None
    return out


def query_values(raw_query: bytes) -> dict[str, bytes]:
    """The query string's parameters, each value percent-decoded to bytes (``+`` is a space); the last one wins.

    Parameter names are ASCII; a name that is not is refused.
    """
    out: dict[str, bytes] = {}
    for part in raw_query.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        try:
            k = unquote_to_bytes(key.replace(b"+", b" ")).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidName("query parameter names are ASCII") from None
        out[k] = unquote_to_bytes(value.replace(b"+", b" "))
    return out


def query_path(value: bytes) -> list[bytes]:
    """A ``?path=`` value (bytes, already decoded) as checked names; ``""`` and ``/`` are the root."""
    parts = [p for p in value.split(b"/") if p]
    out = []
    for p in parts:
        if p in (b".", b".."):
            raise InvalidName("path: '.' and '..' are not allowed")
        try:
            out.append(check_entry_name(p))
        except InvalidName:
            raise InvalidName(f"path: {text(p)!r} is not a valid name (NUL, or longer than 255 bytes)") from None
    return out
