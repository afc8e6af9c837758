"""The daemon's log: a late reply to a request the kernel dropped is not an error; every other failure is."""

from __future__ import annotations

import errno
import logging
import os

import pytest

from wsfs.daemon.mount import _LateReplyFilter


@pytest.fixture
def pyfuse3_like() -> tuple[logging.Logger, list[logging.LogRecord]]:
    logger = logging.getLogger("wsfs-test.pyfuse3-like")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    logger.addFilter(_LateReplyFilter())
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, records
    logger.removeHandler(handler)
    logger.filters.clear()


def test_a_reply_the_kernel_no_longer_wanted_is_not_logged_as_an_error(pyfuse3_like) -> None:
    logger, records = pyfuse3_like
    # pyfuse3's own words (handlers.pxi), as a mount's last RELEASEDIRs raced its unmount.
    logger.error("fuse_releasedir(): fuse_reply_* failed with %s", os.strerror(errno.ENOENT))
    assert records == []  # DEBUG, below the daemon's INFO
    logger.setLevel(logging.DEBUG)
    logger.error("fuse_read(): fuse_reply_* failed with %s", os.strerror(errno.ENOENT))
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("DEBUG", "fuse_read(): fuse_reply_* failed with No such file or directory")]


def test_other_failed_replies_and_errors_stay_errors(pyfuse3_like) -> None:
    logger, records = pyfuse3_like
    logger.error("fuse_read(): fuse_reply_* failed with %s", os.strerror(errno.EINVAL))
    logger.error("Failed to open %s", os.strerror(errno.ENOENT))  # not a reply
    assert [r.levelname for r in records] == ["ERROR", "ERROR"]
