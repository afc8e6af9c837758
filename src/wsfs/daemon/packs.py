"""Which packs to fetch ahead of a tree walk, and in which runs: shared by the daemon and the preload helper.

Packs are in key order, and keys sort by parent path, so the directories a
walk (find, tar, du, an editor's scan) lists next mostly have the packs that
follow.  :class:`PackWindow` is a file's asynchronous read-ahead in pack
rows: past the highest pack a listed directory needs, fetch ``ahead`` more,
doubling (up to ``PACK_AHEAD_MAX``) each time the walk comes within half a
window of the frontier, and starting small again after a jump elsewhere.  So
``ls`` of one directory costs a few packs more, and a tree walk gets a
stream of packs ahead of it in long runs: :func:`runs` cuts packs (in row
order) into runs of neighbours in one segment, each read with one ranged GET
(``repository.joins_run``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from wsfs.format.manifest import Chunk
from wsfs.repository import joins_run

PACK_AHEAD_MIN = 8
PACK_AHEAD_MAX = 256


class PackWindow:
    """The read-ahead state of one walk over a version's packs (rows from 1)."""

    def __init__(self) -> None:
        self.frontier = 0  # packs up to this row are requested
        self.ahead = PACK_AHEAD_MIN

    def advance(self, row: int) -> range:
        """A listed directory needs packs up to *row*: the rows to request now (maybe none)."""
        if row + self.ahead // 2 <= self.frontier:
            return range(0)  # more than half a window ahead already
        if row <= self.frontier + self.ahead:
            self.ahead = min(PACK_AHEAD_MAX, self.ahead * 2)  # the walk catches up with the window: widen it
        else:
            self.ahead = PACK_AHEAD_MIN  # a jump elsewhere in the tree: start small again
        start = max(self.frontier, row) + 1
        self.frontier = max(self.frontier, row) + self.ahead
        return range(start, self.frontier + 1)


def runs(packs: Iterable[Chunk]) -> Iterator[list[Chunk]]:
    """*packs* (in row order) as runs of neighbours in one segment, each for one ranged GET."""
    run: list[Chunk] = []
    for pack in packs:
        if run and not joins_run(run[0].place, run[-1].place, pack.place):
            yield run
            run = []
        run.append(pack)
    if run:
        yield run
