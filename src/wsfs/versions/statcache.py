"""The push's stat cache: what a regular file held the last time it was read, keyed by its inode.

An unchanged push must not read the tree's bytes again (issue 12: an
unchanged 30,000-file tree in about a second).  As git's index does, a file
whose ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` is what it was
when its content id was computed is taken to hold the same bytes; its
content id, chunk ids and ``user.*`` xattrs are reused without opening it.

Why that is safe:

* every write to a file's data, every ``truncate``, ``chmod``, ``chown``,
  xattr change and rename updates its ``st_ctime``, and no system call sets
  ``st_ctime`` to a chosen value (``utimensat`` sets atime/mtime only; the
  kernel then sets ctime to *now*);
* "racily clean" files (git's term) are never remembered: a file whose
  ctime is within ``RACY_NS`` of the moment its bytes were read could be
  written again within the same timestamp tick without its ctime changing,
  so it is read again by the next push;
* what is remembered only saves reading: small files whose pack must be
  rebuilt are read from the source again and checked against the remembered
  id (a mismatch is "changed while being read"), and chunk ids are reused
  only if the parent version references them (so they are stored).

``wsfs push --rehash`` ignores the cache.  One file per (repository, pushed
root directory) in the repository's local directory of the cache; private,
written atomically, rewritten by each push with the files of that push.  A
file that cannot be decoded is ignored (everything is read, as with
``--rehash``) and replaced.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from typing import NamedTuple

import zstandard

log = logging.getLogger(__name__)

MAGIC = b"WSSC1\n"
RACY_NS = 2_000_000_000  # a file changed this close to its reading is read again next time
# dev, ino, size, mtime_ns, ctime_ns, content id, number of chunks, number of xattrs
_HEAD = struct.Struct("<QQQqq32sII")
_LEN = struct.Struct("<I")
MAX_RAW = 1 << 31  # decompressed size limit of a cache file


class Known(NamedTuple):
    """What a file held when it was last read."""

    size: int
    mtime_ns: int
    ctime_ns: int
    content: bytes
    chunks: tuple[bytes, ...]  # empty for a file stored whole in a pack
    xattrs: tuple[tuple[bytes, bytes], ...]


Key = tuple[int, int]  # (st_dev, st_ino)


def encode(rows: Iterable[tuple[Key, Known]]) -> bytes:
    out = bytearray(MAGIC)
    for (dev, ino), k in rows:
        out += _HEAD.pack(dev, ino, k.size, k.mtime_ns, k.ctime_ns, k.content, len(k.chunks), len(k.xattrs))
        for c in k.chunks:
            out += c
        for name, value in k.xattrs:
            out += _LEN.pack(len(name)) + name + _LEN.pack(len(value)) + value
    return zstandard.ZstdCompressor(level=1).compress(bytes(out))


def decode(raw: bytes) -> dict[Key, Known]:
    """The rows of a cache file; ValueError if it is not one (it is then ignored)."""
    try:
        buf = zstandard.ZstdDecompressor().decompress(raw, max_output_size=MAX_RAW)
    except zstandard.ZstdError as e:
        raise ValueError(f"not zstd: {e}") from None
    if not buf.startswith(MAGIC):
        raise ValueError("bad magic")
    out: dict[Key, Known] = {}
    pos, end = len(MAGIC), len(buf)
    try:
        while pos < end:
            dev, ino, size, mtime, ctime, content, nchunks, nx = _HEAD.unpack_from(buf, pos)
            pos += _HEAD.size
            if pos + 32 * nchunks > end:
                raise ValueError("truncated")
            chunks = tuple(buf[pos + 32 * i : pos + 32 * (i + 1)] for i in range(nchunks))
            pos += 32 * nchunks
            xattrs = []
            for _ in range(nx):
                (n,) = _LEN.unpack_from(buf, pos)
                name = buf[pos + 4 : pos + 4 + n]
                pos += 4 + n
                (n,) = _LEN.unpack_from(buf, pos)
                value = buf[pos + 4 : pos + 4 + n]
                pos += 4 + n
                if pos > end:
                    raise ValueError("truncated")
                xattrs.append((name, value))
            out[(dev, ino)] = Known(size, mtime, ctime, content, chunks, tuple(xattrs))
    except struct.error:
        raise ValueError("truncated") from None
    return out
