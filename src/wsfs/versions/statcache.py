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
from collections.abc import Iterable
from typing import NamedTuple

from wsfs.versions.sealed import seal, unseal

log = logging.getLogger(__name__)

# The file: two lists, the keys and the rows (as plain tuples), sealed (wsfs.versions.sealed), which loads
# in a few hundredths of a second for 40,000 files (a struct per row took 0.11 s, a tenth of an unchanged
# push).
MAGIC = b"WSSC2\n"
RACY_NS = 2_000_000_000  # a file changed this close to its reading is read again next time
MAX_RAW = 1 << 31  # decompressed size limit of a cache file


class Known(NamedTuple):
    """What a file held when it was last read (rows from :func:`decode` are plain tuples of these fields)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    content: bytes
    chunks: tuple[bytes, ...]  # empty for a file stored whole in a pack
    xattrs: tuple[tuple[bytes, bytes], ...]


Key = tuple[int, int]  # (st_dev, st_ino)


def encode(rows: Iterable[tuple[Key, Known]]) -> bytes:
    keys, values = [], []
    for key, k in rows:
        keys.append(tuple(key))
        values.append(tuple(k))
    return seal(MAGIC, (keys, values))


def decode(raw: bytes) -> dict[Key, Known]:
    """The rows of a cache file; ValueError if it is not one (it is then ignored)."""
    if raw.startswith(b"\x28\xb5\x2f\xfd"):
        raise ValueError("written by an older wsfs")  # (a zstd frame: format WSSC1)
    try:
        keys, values = unseal(MAGIC, raw, MAX_RAW)  # type: ignore[misc]
    except TypeError as e:  # not a pair
        raise ValueError(f"not a stat cache: {e}") from None
    width = len(Known._fields)
    if type(keys) is not list or type(values) is not list or len(keys) != len(values) \
            or not all(type(v) is tuple and len(v) == width for v in values):
        raise ValueError("not a stat cache")
    try:
        return dict(zip(keys, values, strict=True))  # (rows as plain tuples)
    except TypeError:  # an unhashable key
        raise ValueError("not a stat cache") from None
