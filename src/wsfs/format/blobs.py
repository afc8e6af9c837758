"""Content ids and the encoding of blobs in the store.

A content id is the 32-byte blake3 digest of the plaintext, shown as 64 hex
digits.  In the store a blob is one codec byte followed by the payload:
``0x00`` raw, ``0x01`` a zstd frame.  Data is compressed only when that makes
it at least 1/16 smaller, so incompressible content (media, archives) costs
no CPU to read back.  :func:`decode_blob` always verifies the plaintext
against the id it was asked for.
"""

from __future__ import annotations

import threading
from typing import Any

import blake3
import zstandard

from wsfs.errors import IntegrityError

RAW = 0
ZSTD = 1
ZSTD_LEVEL = 3

_local = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def content_id(data: bytes | memoryview) -> bytes:
    """blake3 digest (32 bytes) of *data*."""
    # blake3 releases the GIL for large inputs, so callers may hash in threads.
    return blake3.blake3(data).digest()


def hexid(cid: bytes) -> str:
    """The 64-digit hex form of a content id."""
    return cid.hex()


def parse_hexid(text: str) -> bytes:
    """Inverse of :func:`hexid`, with validation."""
    try:
        cid = bytes.fromhex(text)
    except ValueError:
        raise IntegrityError(f"malformed content id {text!r}") from None
    if len(cid) != 32:
        raise IntegrityError(f"malformed content id {text!r}")
    return cid


def compress(data: bytes) -> tuple[int, bytes]:
    """``(codec, payload)``: zstd if it saves at least 1/16 of the size, else raw."""
    if len(data) >= 64:
        z = _cctx().compress(data)
        if len(z) <= len(data) - len(data) // 16:
            return ZSTD, z
    return RAW, data


def decompress(codec: int, payload: bytes | memoryview, size_hint: int = 0) -> bytes | memoryview:
    """Inverse of :func:`compress` (a raw *payload* is returned as it is, not copied)."""
    if codec == RAW:
        return payload
    if codec == ZSTD:
        try:
            return _dctx().decompress(payload, max_output_size=size_hint)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"corrupt compressed data: {e}") from None
    raise IntegrityError(f"unknown codec {codec}")


def encode_blob(data: bytes) -> bytes:
    """The store representation of *data*: codec byte + payload."""
    codec, payload = compress(data)
    return bytes((codec,)) + payload


def decode_blob(cid: bytes, stored: bytes, what: str = "blob") -> bytes | memoryview:
    """Decode a stored blob and verify it is the content *cid*; raise IntegrityError if not.

    A raw blob comes back as a view of *stored* past its codec byte: slicing
    it off would copy every byte of incompressible content once more (a 4 MiB
    memmove per chunk, a tenth of the daemon's CPU on a cold large-file read).
    """
    if not stored:
        raise IntegrityError(f"{what} {hexid(cid)} is empty or truncated in the store")
    data = decompress(stored[0], memoryview(stored)[1:])
    if content_id(data) != cid:
        raise IntegrityError(f"{what} {hexid(cid)} failed verification (content does not match its id)")
    return data


class BlobDecoder:
    """:func:`decode_blob` for a blob that arrives in pieces (``ObjectStore.get_stream``).

    ``feed`` returns the plaintext each piece adds, so the caller can write it
    out while the rest is still on the way; ``finish`` raises IntegrityError
    unless the pieces were exactly a complete encoding of the content *cid*.
    Nothing fed may be trusted before ``finish`` returns.
    """

    def __init__(self, cid: bytes, what: str = "blob") -> None:
        self.cid = cid
        self.what = what
        self.size = 0  # plaintext bytes so far
        self._codec: int | None = None
        self._dobj: Any = None  # a zstd decompression object, for ZSTD
        self._hash = blake3.blake3()

    def feed(self, piece: bytes | memoryview) -> bytes | memoryview:
        if not piece:
            return b""
        if self._codec is None:
            self._codec = piece[0]
            if self._codec == ZSTD:
                # A decompressor per stream: one instance must not serve two at once.
                self._dobj = zstandard.ZstdDecompressor().decompressobj()
            elif self._codec != RAW:
                raise IntegrityError(f"{self.what} {hexid(self.cid)}: unknown codec {self._codec}")
            piece = memoryview(piece)[1:]
        if self._dobj is not None:
            try:
                out: bytes | memoryview = self._dobj.decompress(piece)
            except zstandard.ZstdError as e:
                raise IntegrityError(f"{self.what} {hexid(self.cid)}: corrupt compressed data: {e}") from None
        else:
            out = piece
        self._hash.update(out)
        self.size += len(out)
        return out

    def finish(self) -> None:
        if self._codec is None:
            raise IntegrityError(f"{self.what} {hexid(self.cid)} is empty or truncated in the store")
        if self._dobj is not None and (not self._dobj.eof or self._dobj.unused_data):
            raise IntegrityError(f"{self.what} {hexid(self.cid)} is truncated or has trailing data")
        if self._hash.digest() != self.cid:
            raise IntegrityError(f"{self.what} {hexid(self.cid)} failed verification (content does not match its id)")
