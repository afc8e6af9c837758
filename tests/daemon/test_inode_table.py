"""``daemon/inodes.py``: lookup counts and ``forget``."""

from __future__ import annotations

import logging

import pytest

from wsfs.daemon.inodes import InodeTable


def test_counts_and_forget() -> None:
    freed: list[int] = []
    t = InodeTable(freed.append)
    for ino in (5, 5, 5, 9):
        t.remember(ino)
    assert t.count(5) == 3 and t.count(9) == 1 and len(t) == 2
    t.forget([(5, 2)])
    assert t.count(5) == 1 and freed == []
    t.forget([(9, 1), (5, 1)])  # one BATCH_FORGET
    assert freed == [9, 5] and len(t) == 0 and 5 not in t
    assert t.statistics() == {"inodes": 0, "lookups": 0, "mismatches": 0}


def test_forgets_it_cannot_account_for_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    freed: list[int] = []
    t = InodeTable(freed.append, label="ws@1")
    t.remember(3)
    with caplog.at_level(logging.WARNING, logger="wsfs.daemon.inodes"):
        t.forget([(3, 2)])  # more than it was given: dropped, once
        t.forget([(4, 1)])  # never given
    assert freed == [3] and len(t) == 0
    assert t.mismatches == 2 and "forgot 2 lookups of inode 3, which had 1" in caplog.text


def test_memory_follows_what_the_kernel_knows() -> None:
    t = InodeTable()
    for ino in range(1, 100_001):
        t.remember(ino)
    assert len(t) == 100_000 and t.statistics()["lookups"] == 100_000
    t.forget((ino, 1) for ino in range(1, 100_001))
    assert len(t) == 0 and t.counts == {} and t.mismatches == 0
