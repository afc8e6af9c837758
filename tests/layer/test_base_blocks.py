"""``WriteLayer.base_blocks`` names exactly the blocks whose base bytes a read or write will ask ``read_base`` for.

The daemon relies on it: it fetches those blocks from the store (awaiting,
off the layer) before calling the layer, whose ``read_base`` must then not
wait.  Checked against the ``read_base`` calls the layer really makes.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from wsfs.layer import WriteLayer
from wsfs.layer.content import BLOCK


def _asked(base, before: int) -> set[int]:  # type: ignore[no-untyped-def]
    out = set()
    for _, off, n in base.calls[before:]:
        assert off // BLOCK == (off + n - 1) // BLOCK, "a read_base call spans blocks"
        out.add(off // BLOCK)
    return out


def test_base_blocks_predicts_read_base(layer_factory: Callable[..., WriteLayer], base) -> None:  # type: ignore[no-untyped-def]
    lay = layer_factory()
    ino = base.path(b"medium").ino  # 300 KiB: five blocks, the last one partial
    size = base.path(b"medium").size
    rnd = random.Random(7)
    assert lay.base_blocks(ino, 0, 4096) == []  # an unchanged file's read reads its base range itself
    for _ in range(200):
        off = rnd.randrange(0, size + 2 * BLOCK)
        n = rnd.choice([1, 100, 4096, BLOCK, BLOCK + 1, 3 * BLOCK])
        if rnd.random() < 0.5:
            want = set(lay.base_blocks(ino, off, n, write=True))
            before = len(base.calls)
            lay.write(ino, off, b"w" * n)
        elif rnd.random() < 0.1:
            lay.setattr(ino, size=rnd.randrange(0, size + BLOCK))
            continue
        else:
            want = set(lay.base_blocks(ino, off, n))
            before = len(base.calls)
            lay.read(ino, off, n)
        assert _asked(base, before) == want, (off, n)
        if rnd.random() < 0.2:
            lay.sync_all()  # committed slots: the next write copies from the slot, not the base


def test_base_blocks_of_an_aligned_overwrite_and_an_append_are_empty(layer_factory: Callable[..., WriteLayer], base) -> None:  # type: ignore[no-untyped-def]
    lay = layer_factory()
    ino = base.path(b"medium").ino
    size = base.path(b"medium").size
    assert lay.base_blocks(ino, BLOCK, 2 * BLOCK, write=True) == []
    assert lay.base_blocks(ino, size, 10, write=True) == [size // BLOCK]  # the base's part of the last block
    assert lay.base_blocks(ino, -(-size // BLOCK) * BLOCK, 10, write=True) == []
    assert lay.base_blocks(ino, 10, 10, write=True) == [0]
