"""The kernel's lookup counts: which inodes the kernel still knows, and when it lets go of one.

Every reply that hands the kernel an entry (a positive ``lookup``, each entry
a readdirplus reply accepted, and later ``create``, ``mkdir``, ``mknod``,
``symlink`` and ``link``) adds one to the kernel's lookup count of that
inode; ``forget(ino, n)`` takes ``n`` away.  Only at zero may a file system
drop what it keeps for an inode: an unlinked file that is still open or
cached must keep working (pyfuse3's ``developer-notes/lookup_counts.rst``,
and its gotcha of freeing content in ``unlink`` instead of ``forget``).

A read-only tree's inodes are manifest rows that live as long as the mount,
so for it the table only counts, and logs a ``forget`` it cannot account for
(a bug in counting).  A writable tree passes *on_forgotten* and frees an
unlinked inode when it is called (and no handle holds the inode).

Memory: one dict entry per inode the kernel currently knows (about 100 bytes;
the kernel itself bounds how many it keeps), nothing per entry of the tree.
All of it runs on the trio thread, like every handler.

Counting errs on the high side only: an entry counted for a reply the kernel
never received (an interrupted request) keeps its inode known, which costs
memory, never a freed inode the kernel still uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from wsfs.errors import Stale

log = logging.getLogger(__name__)

_LOGGED_MISMATCHES = 10  # forgets we cannot account for, logged one by one; then only counted


class InodeTable:
    """Lookup counts of the inodes the kernel knows (``ino -> count``, never zero)."""

    def __init__(self, on_forgotten: Callable[[int], None] | None = None, *, label: str = "") -> None:
        self.counts: dict[int, int] = {}
        self.on_forgotten = on_forgotten  # called with an inode whose count reached zero
        self.label = label
        self.mismatches = 0  # forgets of unknown inodes, or of more lookups than were counted

    def __len__(self) -> int:
        return len(self.counts)

    def __contains__(self, ino: int) -> bool:
        return ino in self.counts

    def count(self, ino: int) -> int:
        return self.counts.get(ino, 0)

    def remember(self, ino: int) -> None:
        """The kernel was just handed an entry for *ino* (one more lookup)."""
        counts = self.counts
        counts[ino] = counts.get(ino, 0) + 1

    def forget(self, pairs: Iterable[tuple[int, int]]) -> None:
        """FORGET / BATCH_FORGET: the kernel drops *n* lookups of each ``(ino, n)``."""
        counts = self.counts
        for ino, n in pairs:
            left = counts.get(ino, 0) - n
            if left > 0:
                counts[ino] = left
                continue
            known = counts.pop(ino, None)
            if left < 0:
                self._mismatch(ino, n, known or 0)
            if known is not None and self.on_forgotten is not None:
                self.on_forgotten(ino)

    def _mismatch(self, ino: int, n: int, known: int) -> None:
        self.mismatches += 1
        if self.mismatches <= _LOGGED_MISMATCHES:
            log.warning("%s: the kernel forgot %d lookups of inode %d, which had %d (a counting bug)",
                        self.label, n, ino, known)

    def statistics(self) -> dict[str, int]:
        # Called from the control socket's worker thread: len() and sum() over
        # the dict run in C without releasing the GIL, so they see one state.
        return {"inodes": len(self.counts), "lookups": sum(self.counts.values()), "mismatches": self.mismatches}


# Kernel numbers given to inodes whose own number the kernel holds for another file: far above any
# tree's (a layer allocates upward from its base's largest), so neither ever runs into the other.
FRESH_NUMBERS = 1 << 48


class KernelNumbers:
    """The kernel's inode numbers <-> a tree's, for a tree whose numbers change under the kernel.

    A read-write mount re-based onto a new version (``docs/decisions/live-rebase.md``)
    numbers its inodes as that version's index does, while the kernel keeps the
    numbers it was given: its cached entries, attributes and pages stay valid
    exactly because a number keeps meaning the same file.  Until the first
    re-base both are the same and the maps are empty (each call is one test).
    Afterwards ``inward`` maps every number the kernel held at a re-base and
    that changed (0: the file is gone: ESTALE until the kernel forgets it), and
    ``outward`` the reverse.  A tree inode whose own number the kernel uses for
    another file gets a fresh one above :data:`FRESH_NUMBERS`.  Memory: what
    the kernel held at the re-bases, nothing per entry of the tree.
    """

    def __init__(self) -> None:
        self.inward: dict[int, int] = {}
        self.outward: dict[int, int] = {}
        self.fresh = FRESH_NUMBERS

    def inside(self, k: int) -> int:
        """The tree's number of kernel number *k* (Stale if its file is gone)."""
        if not self.inward:
            return k
        i = self.inward.get(k, k)
        if not i:
            raise Stale(f"inode {k} went away in a re-base")
        return i

    def outside(self, i: int) -> int:
        """The kernel's number for tree inode *i* (a fresh one if *i* is taken)."""
        if not self.inward:
            return i
        k = self.outward.get(i)
        if k is not None:
            return k
        if i in self.inward:
            k, self.fresh = self.fresh, self.fresh + 1
            self.inward[k] = i
            self.outward[i] = k
            return k
        return i

    def known(self, i: int) -> int | None:
        """:meth:`outside` without giving out a number: None if *i* never had one."""
        if not self.inward:
            return i
        k = self.outward.get(i)
        if k is not None:
            return k
        return None if i in self.inward else i

    def remap(self, moves: dict[int, int]) -> None:
        """After a re-base: *moves* maps every number the kernel holds to the tree's new one (0: gone)."""
        self.inward = {k: i for k, i in moves.items() if k != i}
        self.outward = {i: k for k, i in self.inward.items() if i}
