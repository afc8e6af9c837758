"""Local state that wsfs writes for itself and reads back: the push's stat cache, the parent a push keeps.

A sealed value is ``magic``, the blake3 of the payload, then the payload (a
``marshal`` of plain tuples, lists, bytes and ints) compressed with zstd.
Private state of the user, written by wsfs, never read from a store: the
hash catches a torn or damaged file, and the caller checks the value's shape
before trusting it.  Anything wrong is a ``ValueError`` (the caller then does
without the file).
"""

from __future__ import annotations

import marshal

import zstandard

from wsfs.format.blobs import content_id


def seal(magic: bytes, value: object) -> bytes:
    payload = marshal.dumps(value, 4)
    return magic + content_id(payload) + zstandard.ZstdCompressor(level=1).compress(payload)


def unseal(magic: bytes, raw: bytes, limit: int) -> object:
    """The value sealed in *raw* (at most *limit* bytes of payload); ValueError if it is not whole."""
    head = len(magic) + 32
    if len(raw) < head or not raw.startswith(magic):
        raise ValueError("bad magic")
    try:
        payload = zstandard.ZstdDecompressor().decompress(raw[head:], max_output_size=limit)
    except zstandard.ZstdError as e:
        raise ValueError(f"not zstd: {e}") from None
    if content_id(payload) != raw[len(magic):head]:
        raise ValueError("damaged (hash mismatch)")
    try:
        return marshal.loads(payload)
    except (EOFError, TypeError, ValueError) as e:
        raise ValueError(f"not marshal data: {e}") from None
