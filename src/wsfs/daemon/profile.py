"""Access profiles: remember which large content a mount read, prefetch it next time.

A container or a build that mounts a workspace tends to read the same large
files every time (the runtime, the model, the toolchain).  The daemon records
the chunk ids it served, in first-read order, and stores them beside the
version (``workspaces/<ws>/profiles/<n>``) when it unmounts.  The next mount of
the workspace loads the profile of its version, or of the newest earlier
version that has one, keeps the ids this version still references, and
prepares them in the background with a small, separate concurrency limit, so
foreground reads are never queued behind the prefetch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import trio

from wsfs.errors import WsfsError
from wsfs.format.blobs import hexid
from wsfs.repository import PROFILE_MAX_CHUNKS, Repository

log = logging.getLogger(__name__)


class AccessRecorder:
    """The ordered set of chunk ids a mount has read (bounded)."""

    def __init__(self) -> None:
        self._seen: dict[bytes, None] = {}
        self.dirty = False

    def record(self, cid: bytes) -> None:
        if cid not in self._seen and len(self._seen) < PROFILE_MAX_CHUNKS:
            self._seen[cid] = None
            self.dirty = True

    def __len__(self) -> int:
        return len(self._seen)

    def ids(self) -> list[bytes]:
        return list(self._seen)


def save_profile(repo: Repository, ws: str, n: int, recorder: AccessRecorder) -> None:
    """Store what was read (nothing if nothing new); failures are logged, never raised."""
    if not recorder.dirty:
        return
    try:
        previous = repo.get_profile(ws, n)
        ids = recorder.ids()
        seen = set(ids)
        # keep what earlier mounts read too: a profile is the union, in first-read order
        ids.extend(c for c in previous if c not in seen)
        repo.put_profile(ws, n, ids)
        recorder.dirty = False
        log.info("stored the access profile of %s@%d (%d chunks)", ws, n, len(ids))
    except WsfsError as e:
        log.warning("could not store the access profile of %s@%d: %s", ws, n, e)


SAVE_BUDGET = 0.5  # seconds an unmount waits for the profile to be stored (a healthy store needs ~0.1)


def save_profile_briefly(repo: Repository, ws: str, n: int, recorder: AccessRecorder,
                         budget: float = SAVE_BUDGET) -> bool:
    """:func:`save_profile` in a daemon thread, waited for at most *budget* seconds; whether it finished.

    An unmount must not wait for a store that does not answer: a profile is
    advisory and losing one costs the next mount its prefetch, nothing else.
    The thread, if still running, dies with the process.
    """
    if not recorder.dirty:
        return True
    t = threading.Thread(target=save_profile, args=(repo, ws, n, recorder), name="wsfs-profile-save", daemon=True)
    t.start()
    t.join(budget)
    if t.is_alive():
        log.warning("access profile of %s@%d not stored: the store did not answer within %g s", ws, n, budget)
        return False
    return True


async def prefetch_profile(
    repo: Repository,
    ws: str,
    n: int,
    referenced: Callable[[], dict[bytes, int]],
    prepare: Callable[[bytes, int], None],
    limiter: trio.CapacityLimiter,
    loaded: Callable[[], None] = lambda: None,
) -> int:
    """Prepare (fetch + verify) the chunks of the workspace's profile that this version references.

    *referenced* gives ``{chunk id: length}`` of the mounted version;
    *prepare* is the cache's read-ahead entry point.  Runs in worker threads
    under *limiter*; returns the number of chunks it prepared.  *loaded* is
    called once the profile was read (or could not be).
    """
    try:
        # abandon_on_cancel: an unmount must not wait for a store that does not answer.
        profile = await trio.to_thread.run_sync(lambda: repo.get_profile(ws, n), limiter=limiter,
                                                abandon_on_cancel=True)
    except (WsfsError, OSError) as e:
        loaded()
        log.warning("could not load the access profile of %s: %s", ws, e)
        return 0
    loaded()  # (not when cancelled: a load still unanswered at unmount says the store is not answering)
    if not profile:
        return 0
    sizes = referenced()
    todo = [c for c in profile if c in sizes]
    log.info("prefetching %d chunks of the access profile of %s", len(todo), ws)
    done = 0
    queue = iter(todo)

    async def worker() -> None:
        nonlocal done
        for cid in queue:  # the workers share one iterator: each id is taken once
            try:
                await trio.to_thread.run_sync(prepare, cid, sizes[cid], limiter=limiter, abandon_on_cancel=True)
                done += 1
            except Exception as e:  # noqa: BLE001 - never the mount's end; the read that needs it reports it
                log.debug("prefetch of %s failed: %r", hexid(cid), e)

    async with trio.open_nursery() as nursery:
        for _ in range(int(limiter.total_tokens)):
            nursery.start_soon(worker)
    return done
