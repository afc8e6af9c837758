"""The ObjectStore contract and the request counters every store keeps."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Generator, Iterator
from typing import Protocol

from wsfs.errors import InvalidName, UsageError


class StoreStats:
    """Thread-safe counters: requests by operation, bytes up and down.

    Tests assert on these ("pushing an unchanged tree uploads no blob"), and
    ``wsfs push --json`` reports them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # calls that failed after their retries (not NotFound), by kind
        self.retries: Counter[str] = Counter()  # attempts after a call's first, by kind (S3)
        self.bytes_in = 0
        self.bytes_out = 0

    def count(self, op: str, *, bytes_in: int = 0, bytes_out: int = 0) -> None:
        """Record one request of kind *op* (``get``, ``put``, ``head``, ``list``, ...)."""
        with self._lock:
            self.requests[op] += 1
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out

    def count_error(self, op: str) -> None:
        with self._lock:
            self.errors[op] += 1

    def count_retry(self, op: str) -> None:
        with self._lock:
            self.retries[op] += 1

    def snapshot(self) -> dict[str, object]:
        """A plain-dict copy, safe to serialise."""
        with self._lock:
            return {
                "requests": dict(self.requests),
                "errors": dict(self.errors),
                "retries": dict(self.retries),
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
            }


def check_key(key: str) -> str:
    """Reject keys that could escape the store root or are ambiguous."""
    if not key or key.startswith("/") or key.endswith("/") or "\0" in key or "\\" in key:
        raise InvalidName(f"invalid store key {key!r}")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidName(f"invalid store key {key!r}")
    return key


STREAM_PIECE = 1 << 20  # default piece size of ObjectStore.get_stream

# The longest a store request may keep a caller waiting for an answer, and
# the deadline of one FUSE operation: a hung endpoint must cost a command or
# a read this long, not the product of every retry and timeout (minutes).
DEFAULT_TIMEOUT = 30.0
TIMEOUT_ENV = "WSFS_OP_TIMEOUT"


def parse_timeout(text: str, what: str = TIMEOUT_ENV) -> float:
    """Seconds, a positive number; a usage error otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what}={text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise UsageError(f"{what}={text!r} must be a positive number of seconds")
    return value


def default_timeout() -> float:
    """``$WSFS_OP_TIMEOUT`` if set, else :data:`DEFAULT_TIMEOUT` (seconds)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    return parse_timeout(raw) if raw else DEFAULT_TIMEOUT


class ObjectStore(Protocol):
    """What every store offers.  Keys are relative, ``/``-separated, validated by :func:`check_key`.

    Errors: :class:`~wsfs.errors.NotFound` for a missing key,
    :class:`~wsfs.errors.AlreadyExists` from :meth:`put_if_absent`,
    :class:`~wsfs.errors.StoreUnavailable` (or its subclass ``AccessDenied``)
    when the store cannot be used after retries.  All methods are thread-safe.
    """

    url: str
    stats: StoreStats

    def get(self, key: str) -> bytes:
        """The whole object."""
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object)."""
        ...

    def get_stream(self, key: str, piece: int = STREAM_PIECE) -> Generator[bytes, None, None]:
        """The whole object in pieces of at most *piece* bytes, as they arrive (one ``get`` request).

        ``NotFound`` comes before the first piece.  A failure part-way raises
        ``StoreUnavailable`` and is not retried here (the caller has consumed
        the pieces so far and starts over).  Close the iterator to abandon it.
        """
        ...

    def put(self, key: str, data: bytes) -> None:
        """Store (or replace) an object atomically: readers see the old or the new bytes, never a part."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create an object only if no object has that key; else raise ``AlreadyExists``.

        Of several concurrent callers for one key exactly one succeeds.
        """
        ...

    def exists(self, key: str) -> bool:
        """Whether the key exists."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (a ``/``-terminated folder or ``""``), in sorted order."""
        ...

    def list_sizes(self, prefix: str) -> Iterator[tuple[str, int]]:
        """As :meth:`list`, with each object's stored size in bytes."""
        ...

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of ``prefix`` (``/``-terminated or ``""``), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; a missing key is not an error."""
        ...

    def check(self) -> None:
        """Verify the store is reachable and usable (bucket exists, credentials work)."""
        ...
