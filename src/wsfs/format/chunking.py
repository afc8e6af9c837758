"""Splitting large files into chunks.

Fixed-size chunks (default 4 MiB, a repository parameter).  Chunk *i* of a
file covers ``[i*size, (i+1)*size)``, so a read at any offset maps to its
chunk by a division: no search, no chunk-boundary table needed to serve a
random read.  The choice against content-defined chunking is measured in
``docs/decisions/chunking.md``.

An all-zero chunk has no blob: it is recorded with a NULL id and costs
nothing to store, fetch or hash; checkout writes it as a hole.  Holes of a
sparse source file are found with ``SEEK_DATA``/``SEEK_HOLE`` and never read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
# The largest inline threshold a repository may have: no manifest's inline
# file is larger, whatever it says (the repository's own threshold is the real cap).
MAX_INLINE_SIZE = 16 * 1024 * 1024

_ZEROS: dict[int, bytes] = {}


def is_zero(data: bytes) -> bool:
    """True if *data* is all zero bytes (a memcmp, not a Python loop)."""
    z = _ZEROS.get(len(data))
    if z is None:
        z = _ZEROS[len(data)] = bytes(len(data))
    return data == z


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the regions of *fd* that hold data (the rest are holes).

    Falls back to one range covering the whole file where the filesystem
    does not support ``SEEK_DATA``.
    """
    ranges: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == 6:  # ENXIO: no data after pos
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if start >= size:
                break
            ranges.append((start, end))
            pos = end
    except OSError:
        return [(0, size)]
    return ranges


def chunk_spans(size: int, chunk_size: int) -> Iterator[tuple[int, int, int]]:
    """``(index, offset, length)`` of every chunk of a file of *size* bytes."""
    for idx, off in enumerate(range(0, size, chunk_size)):
        yield idx, off, min(chunk_size, size - off)


def overlaps(ranges: list[tuple[int, int]], off: int, length: int) -> bool:
    """Whether ``[off, off+length)`` intersects any of the sorted data *ranges*."""
    end = off + length
    return any(s < end and off < e for s, e in ranges)
