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
ZSTD_LEVEL = 2  # as small as level 3 on packs of small files, a quarter less CPU (docs/format.md)

# The longest zstd frame header (magic, descriptor, window, dictionary id,
# content size): enough bytes to read a frame's declared content size.
_ZSTD_MAX_HEADER = 18

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


def is_hexid(text: str) -> bool:
    """Whether *text* is a content id as :func:`hexid` writes it: 64 lowercase hex digits."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


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


def decompress(codec: int, payload: bytes | memoryview, size: int) -> bytes | memoryview:
    """Inverse of :func:`compress` for content of exactly *size* bytes (a raw *payload* is returned as it is).

    *size* is what the record that references the content declares (an
    inode's size, a chunk's length); nothing larger is ever allocated.  A
    zstd frame that declares another content size is rejected before it is
    decompressed: python-zstandard would otherwise allocate whatever the
    frame declares, ignoring ``max_output_size``, so 32 KB of crafted input
    could make us allocate gigabytes.  zstd itself fails a frame whose
    content outgrows its declared size.
    """
    if size < 0:
        raise IntegrityError(f"invalid content size {size}")
    if codec == RAW:
        if len(payload) != size:
            raise IntegrityError(f"raw content has {len(payload)} bytes, expected {size}")
        return payload
    if codec == ZSTD:
        try:
            declared = zstandard.frame_content_size(payload)
            if declared not in (size, -1):
                raise IntegrityError(f"compressed content declares {declared} bytes, expected {size}")
            # One frame and nothing after it: what encode_blob writes, and what BlobDecoder accepts.
            data = _dctx().decompress(payload, max_output_size=size, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"corrupt compressed data: {e}") from None
        if len(data) != size:
            raise IntegrityError(f"compressed content has {len(data)} bytes, expected {size}")
        return data
    raise IntegrityError(f"unknown codec {codec}")


def encode_blob(data: bytes) -> bytes:
    """The store representation of *data*: codec byte + payload."""
    codec, payload = compress(data)
    return bytes((codec,)) + payload


def declared_size(stored: bytes | memoryview, limit: int) -> int:
    """The plaintext size a stored blob declares (raw: its payload's length; zstd: its frame header).

    For a caller that does not know the size from a record: IntegrityError
    if the blob declares none or more than *limit*, so that decoding it
    allocates at most *limit* bytes.
    """
    if not stored:
        raise IntegrityError("blob is empty or truncated in the store")
    if stored[0] == ZSTD:
        try:
            size = zstandard.frame_content_size(memoryview(stored)[1:])
        except zstandard.ZstdError as e:
            raise IntegrityError(f"corrupt compressed data: {e}") from None
    else:
        size = len(stored) - 1
    if not 0 <= size <= limit:
        raise IntegrityError(f"blob declares {size} bytes, more than the {limit} allowed here")
    return size


def decode_blob(cid: bytes, stored: bytes, size: int, what: str = "blob") -> bytes | memoryview:
    """Decode a stored blob of *size* plaintext bytes and verify it is the content *cid*; IntegrityError if not.

    *size* comes from the record that references the blob (a chunk's length
    in a manifest): a blob that decodes to anything else is rejected, and
    never more than *size* bytes are allocated for it (:func:`decompress`).

    A raw blob comes back as a view of *stored* past its codec byte: slicing
    it off would copy every byte of incompressible content once more (a 4 MiB
    memmove per chunk, a tenth of the daemon's CPU on a cold large-file read).
    """
    if not stored:
        raise IntegrityError(f"{what} {hexid(cid)} is empty or truncated in the store")
    try:
        data = decompress(stored[0], memoryview(stored)[1:], size)
    except IntegrityError as e:
        raise IntegrityError(f"{what} {hexid(cid)} failed verification ({e})") from None
    if content_id(data) != cid:
        raise IntegrityError(f"{what} {hexid(cid)} failed verification (content does not match its id)")
    return data


class BlobDecoder:
    """:func:`decode_blob` for a blob that arrives in pieces (``ObjectStore.get_stream``).

    ``feed`` returns the plaintext each piece adds, so the caller can write it
    out while the rest is still on the way; ``finish`` raises IntegrityError
    unless the pieces were exactly a complete encoding of the content *cid*
    of *size* bytes.  Nothing fed may be trusted before ``finish`` returns.

    The plaintext never outgrows *size*: a zstd frame must declare exactly
    that content size in its header (our writer always does, and zstd fails
    a frame whose content outgrows its declaration), and raw content is
    counted piece by piece.  So a small crafted blob cannot make the caller
    write gigabytes before the hash check fails.
    """

    def __init__(self, cid: bytes, size: int, what: str = "blob") -> None:
        self.cid = cid
        self.expected = size
        self.what = what
        self.size = 0  # plaintext bytes so far
        self._codec: int | None = None
        self._head = b""  # a zstd frame header arriving in more than one piece
        self._dobj: Any = None  # a zstd decompression object, for ZSTD
        self._hash = blake3.blake3()

    def _error(self, what: str) -> IntegrityError:
        return IntegrityError(f"{self.what} {hexid(self.cid)}: {what}")

    def feed(self, piece: bytes | memoryview) -> bytes | memoryview:
        if not piece:
            return b""
        if self._codec is None:
            self._codec = piece[0]
            if self._codec not in (RAW, ZSTD):
                raise self._error(f"unknown codec {self._codec}")
            piece = memoryview(piece)[1:]
        if self._codec == ZSTD and self._dobj is None:
            piece = self._head + bytes(piece)
            if len(piece) < _ZSTD_MAX_HEADER:
                self._head = piece  # wait for the whole header (or for finish)
                return b""
            self._head = b""
            self._start_frame(piece)
        return self._take(piece)

    def _start_frame(self, head: bytes) -> None:
        """Check the declared content size in the frame header *head*, then start decompressing."""
        try:
            declared = zstandard.frame_content_size(head)
        except zstandard.ZstdError as e:
            raise self._error(f"corrupt compressed data: {e}") from None
        if declared != self.expected:
            raise self._error(f"compressed content declares {declared} bytes, expected {self.expected}")
        # A decompressor per stream: one instance must not serve two at once.
        self._dobj = zstandard.ZstdDecompressor().decompressobj()

    def _take(self, piece: bytes | memoryview) -> bytes | memoryview:
        """Plaintext of *piece* (decompressed if need be), counted against the expected size and hashed."""
        if self._dobj is not None:
            try:
                out: bytes | memoryview = self._dobj.decompress(piece)
            except zstandard.ZstdError as e:
                raise self._error(f"corrupt compressed data: {e}") from None
        else:
            out = piece
        if self.size + len(out) > self.expected:
            raise self._error(f"content is larger than the {self.expected} bytes expected")
        self._hash.update(out)
        self.size += len(out)
        return out

    def finish(self) -> bytes | memoryview:
        """Check the whole blob; returns plaintext still held back (a frame shorter than a header), normally b""."""
        if self._codec is None:
            raise IntegrityError(f"{self.what} {hexid(self.cid)} is empty or truncated in the store")
        rest: bytes | memoryview = b""
        if self._head:  # the whole frame was shorter than the longest header
            head, self._head = self._head, b""
            self._start_frame(head)
            rest = self._take(head)
        if self._codec == ZSTD and (self._dobj is None or not self._dobj.eof or self._dobj.unused_data):
            raise IntegrityError(f"{self.what} {hexid(self.cid)} is truncated or has trailing data")
        if self.size != self.expected:
            raise self._error(f"content has {self.size} bytes, expected {self.expected}")
        if self._hash.digest() != self.cid:
            raise IntegrityError(f"{self.what} {hexid(self.cid)} failed verification (content does not match its id)")
        return rest
