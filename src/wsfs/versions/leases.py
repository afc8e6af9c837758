"""Leases: a mount's promise to gc that it uses a version (``leases/<workspace>/<id>``).

A mount writes one when it starts and rewrites it every :data:`RENEW` seconds
with an expiry :data:`TTL` ahead; it deletes it at unmount.  gc keeps every
version a live lease names (and what that version references), whatever the
retention rules say.  A lease of a crashed mount simply expires.  A lease is
advisory input from anyone who can write the bucket: a malformed one is
ignored with a warning, never trusted beyond "keep this version".

Format (JSON): ``{"version": N, "expires": <unix seconds>, "host": "...",
"pid": N, "mode": "ro" | "rw"}``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from wsfs.errors import IntegrityError, NotFound
from wsfs.format.names import check_workspace
from wsfs.repository import _get_small
from wsfs.store import ObjectStore

log = logging.getLogger(__name__)

PREFIX = "leases/"
TTL = 3600.0  # a lease not renewed for an hour is dead
RENEW = 600.0  # a mount renews its lease every ten minutes
MAX_LEASE = 4096  # bytes; a lease is a few dozen


def lease_key(ws: str, lease_id: str) -> str:
    check_workspace(ws)
    return f"{PREFIX}{ws}/{lease_id}"


@dataclass(frozen=True)
class Lease:
    workspace: str
    version: int
    expires: float
    key: str


def new_lease_id() -> str:
    return f"{socket.gethostname()[:64].replace('/', '_')}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def write_lease(store: ObjectStore, ws: str, version: int, lease_id: str, *, mode: str, ttl: float = TTL,
                now: float | None = None) -> str:
    """Create or renew a lease on ``ws@version``; returns its key."""
    key = lease_key(ws, lease_id)
    body = {"version": version, "expires": (now if now is not None else time.time()) + ttl,
            "host": socket.gethostname(), "pid": os.getpid(), "mode": mode}
    store.put(key, json.dumps(body).encode() + b"\n")
    return key


def live_leases(store: ObjectStore, ws: str, *, now: float | None = None) -> list[Lease]:
    """The leases on versions of *ws* that have not expired (malformed ones skipped with a warning)."""
    now = now if now is not None else time.time()
    out = []
    for key in store.list(f"{PREFIX}{ws}/"):
        try:
            raw = _get_small(store, key, MAX_LEASE)  # at most that much is read: the store is untrusted
            d = json.loads(raw)
            n, expires = d["version"], d["expires"]
            if type(n) is not int or n < 1 or not isinstance(expires, int | float):
                raise ValueError("bad fields")
        except NotFound:
            continue  # its mount ended meanwhile
        except (ValueError, KeyError, TypeError, RecursionError, IntegrityError) as e:
            log.warning("ignoring the malformed lease %s: %s", key, e)
            continue
        if expires > now:
            out.append(Lease(ws, n, float(expires), key))
    return out
