"""Every EIO the daemon answers is logged, but an application retrying a broken file cannot flood the log."""

from __future__ import annotations

import logging
import time

import pytest

from wsfs.daemon.ops import EioLog
from wsfs.errors import IntegrityError


def test_a_burst_is_logged_one_by_one_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    eio = EioLog("ws@1")
    eio.WINDOW = 0.2
    with caplog.at_level(logging.WARNING, logger="wsfs.daemon.ops"):
        for i in range(eio.BURST + 5):
            eio.answered("read", (7, i * 4096), IntegrityError(f"blob {i} is corrupt"))
        time.sleep(0.25)
        eio.answered("read", (7, 0), IntegrityError("blob again"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == eio.BURST + 2, lines
    assert lines[0] == "ws@1: read(7, 0) answered EIO: blob 0 is corrupt"
    assert lines[eio.BURST - 1].endswith(f"blob {eio.BURST - 1} is corrupt")
    assert lines[eio.BURST].startswith("ws@1: answered EIO 5 more times in ")  # the next window says so
    assert lines[-1] == "ws@1: read(7, 0) answered EIO: blob again"
