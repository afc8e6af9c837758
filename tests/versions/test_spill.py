"""push's _Spill: small files' bytes held in a private file until packs are cut, read back by content id."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

from wsfs.format.blobs import content_id
from wsfs.versions.push import _Spill


def test_spilled_bytes_read_back_exactly_from_the_file_and_from_the_buffer(tmp_path: Path) -> None:
    rng = random.Random(7)
    spill = _Spill(str(tmp_path / "spill"))
    try:
        items = [os.urandom(rng.randrange(0, 40_000)) for _ in range(120)]  # ~2.4 MB: flushed twice, a tail held
        for data in items:
            spill.add(content_id(data), data)
            spill.add(content_id(data), data)  # once per content
        assert spill.written > 0 and spill.buf  # some on disk, some still buffered
        assert os.path.getsize(tmp_path / "spill") == spill.written
        assert spill.end == sum(len(d) for d in {content_id(d): d for d in items}.values())
        # Readers in other threads (the packing pool) while the reader adds more.
        more = [os.urandom(30_000) for _ in range(40)]
        errors: list[BaseException] = []

        def read_all() -> None:
            try:
                for data in items:
                    assert spill.read(content_id(data)) == data
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        readers = [threading.Thread(target=read_all) for _ in range(3)]
        for t in readers:
            t.start()
        for data in more:
            spill.add(content_id(data), data)
        for t in readers:
            t.join()
        assert not errors
        for data in items + more:
            assert spill.has(content_id(data)) and spill.read(content_id(data)) == data
        assert spill.read(content_id(b"never added")) is None
    finally:
        spill.close()
    assert not (tmp_path / "spill").exists()


def test_read_many_gives_what_read_gives_for_runs_gaps_and_the_buffer(tmp_path: Path) -> None:
    """read_many reads runs of adjacent files with one pread: the same bytes as read() for every order
    (in spill order, shuffled, with unknown ids, repeats and files still in the buffer)."""
    rng = random.Random(11)
    spill = _Spill(str(tmp_path / "spill"))
    try:
        items = [os.urandom(rng.randrange(0, 60_000)) for _ in range(150)]  # ~4.5 MB: flushed, a tail held
        for data in items:
            spill.add(content_id(data), data)
        assert spill.written > 0 and spill.buf
        cids = [content_id(d) for d in items]
        orders = [cids, list(reversed(cids)), rng.sample(cids, len(cids)),
                  cids[:50] + [bytes(32)] + cids[50:] + cids[10:20], []]
        for order in orders:
            assert spill.read_many(order) == [spill.read(c) for c in order]
        spill._RUN = 100_000  # runs cut by size too
        assert spill.read_many(cids) == items
    finally:
        spill.close()
