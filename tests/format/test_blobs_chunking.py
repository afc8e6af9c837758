import os

import pytest

from wsfs.errors import IntegrityError
from wsfs.format import blobs
from wsfs.format.chunking import chunk_spans, data_ranges, is_zero, overlaps


def test_compressible_data_is_compressed_and_round_trips():
    data = b"abc" * 10000
    enc = blobs.encode_blob(data)
    assert enc[0] == blobs.ZSTD and len(enc) < len(data) // 10
    assert blobs.decode_blob(blobs.content_id(data), enc, len(data)) == data


def test_incompressible_data_is_stored_raw():
    data = os.urandom(100_000)
    enc = blobs.encode_blob(data)
    assert enc[0] == blobs.RAW and enc[1:] == data
    assert blobs.decode_blob(blobs.content_id(data), enc, len(data)) == data


def _damaged(enc: bytes, damage: str) -> bytes:
    """*enc* with one kind of damage a store or a network could do to it."""
    out = bytearray(enc)
    if damage == "flip":
        out[len(out) // 2] ^= 0x40
    elif damage == "truncate":
        del out[-10:]
    elif damage == "trailing":
        out += b"\0"
    elif damage == "empty":
        out = bytearray()
    elif damage == "codec":
        out[0] = 9
    return bytes(out)


@pytest.mark.parametrize("damage", ["flip", "truncate", "trailing", "empty", "codec"])
def test_decode_detects_damage(damage):
    data = b"hello " * 1000  # compressed: a raw blob's length is checked anyway
    with pytest.raises(IntegrityError):
        blobs.decode_blob(blobs.content_id(data), _damaged(blobs.encode_blob(data), damage), len(data))


def _stream_decode(cid: bytes, enc: bytes, piece: int, size: int) -> bytes:
    dec = blobs.BlobDecoder(cid, size, "manifest")
    out = b"".join(bytes(dec.feed(enc[i : i + piece])) for i in range(0, len(enc), piece))
    out += dec.finish()
    assert dec.size == len(out)
    return out


@pytest.mark.parametrize("kind", ["zstd", "raw"])
@pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 20])
def test_blob_decoder_in_pieces_equals_decode_blob(kind, piece):
    data = (b"abc" * 200_000) if kind == "zstd" else os.urandom(300_000)
    enc = blobs.encode_blob(data)
    assert enc[0] == (blobs.ZSTD if kind == "zstd" else blobs.RAW)
    if piece == 1:  # one byte at a time: a shorter blob keeps the test fast
        data = data[:5000] if kind == "raw" else b"abc" * 2000
        enc = blobs.encode_blob(data)
    assert _stream_decode(blobs.content_id(data), enc, piece, len(data)) == data


@pytest.mark.parametrize("damage", ["flip", "truncate", "trailing", "empty", "codec", "wrong id"])
@pytest.mark.parametrize("kind", ["zstd", "raw"])
def test_blob_decoder_detects_damage(damage, kind):
    data = (b"hello " * 50_000) if kind == "zstd" else os.urandom(300_000)
    cid = blobs.content_id(b"something else" if damage == "wrong id" else data)
    with pytest.raises(IntegrityError):
        _stream_decode(cid, _damaged(blobs.encode_blob(data), damage), 65536, len(data))


def test_wrong_id_is_detected():
    with pytest.raises(IntegrityError, match="failed verification"):
        blobs.decode_blob(blobs.content_id(b"a"), blobs.encode_blob(b"b"), 1)


def test_chunk_spans():
    assert list(chunk_spans(0, 4)) == []
    assert list(chunk_spans(4, 4)) == [(0, 0, 4)]
    assert list(chunk_spans(9, 4)) == [(0, 0, 4), (1, 4, 4), (2, 8, 1)]


def test_is_zero():
    assert is_zero(bytes(1000))
    assert not is_zero(bytes(999) + b"\1")


def test_data_ranges_of_a_sparse_file(tmp_path):
    p = tmp_path / "sparse"
    with open(p, "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"x" * 10)
    fd = os.open(p, os.O_RDONLY)
    try:
        ranges = data_ranges(fd, 64 << 20)
    finally:
        os.close(fd)
    assert len(ranges) == 1
    start, end = ranges[0]
    assert start <= 32 << 20 < (32 << 20) + 10 <= end
    assert not overlaps(ranges, 0, 4 << 20)
    assert overlaps(ranges, 32 << 20, 4 << 20)
