"""How often wsfs' own processes run Python's cyclic garbage collector.

CPython collects its youngest generation every 700 net allocations of
container objects, and now and then traces every tracked object.  wsfs'
processes keep many: a push the entries of its walk (namedtuples, traced for
good), the stat cache and the parent it loads; a mount daemon, while it
commits, the rows, entries and memo of tens of thousands of paths.
Measured (docs/benchmarks.md): ~10-20% of an unchanged push's walk; in a
daemon committing 40,200 entries, 0.41-0.83 s of collections (of 7.5-8.7 s),
0.14-0.17 s with :func:`relax`.  Reference cycles are still collected, after
20,000 allocations instead of 700.

For processes wsfs runs (``wsfs push``, the mount daemon), not for a library
caller's (the REST service's uploads push in a server with its own settings).
"""

from __future__ import annotations

import gc

THRESHOLD = 20_000


def relax() -> None:
    """Collect the youngest generation after :data:`THRESHOLD` allocations (the older ones follow)."""
    first, *rest = gc.get_threshold()
    gc.set_threshold(max(first, THRESHOLD), *rest)
