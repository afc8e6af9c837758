"""``daemon/policy.py``: the kernel-cache policy chosen per mount mode, and the lifetimes the trees report."""

from __future__ import annotations

import stat
from typing import Any

import pytest

from wsfs.daemon import policy
from wsfs.daemon.history import HistoryView, _Placeholder
from wsfs.daemon.tree import Lifetime
from wsfs.daemon.view import VersionView
from wsfs.format.manifest import Inode

DAY = 86400.0


def _choose(**kw: Any) -> policy.CachePolicy:
    args = {"writable": False, "inode_as_handle": True, "listings_change": False, "has_xattrs": False, **kw}
    return policy.choose(**args)


def test_read_only_version_keeps_todays_policy() -> None:
    p = _choose()
    assert p.mode == "read-only" and p.keep_cache
    assert p.entry(Lifetime.FIXED) == (DAY, DAY) and p.negative(Lifetime.FIXED) == DAY
    assert (p.no_open, p.no_opendir, p.no_flush, p.no_getxattr) == (True, True, True, True)
    # A tree with xattrs keeps GETXATTR; a stock pyfuse3 keeps OPEN and OPENDIR, never FLUSH.
    assert not _choose(has_xattrs=True).no_getxattr
    stock = _choose(inode_as_handle=False)
    assert (stock.no_open, stock.no_opendir, stock.no_flush) == (False, False, True)


def test_read_only_history_lists_its_root_briefly() -> None:
    p = _choose(listings_change=True, has_xattrs=True)
    assert p.no_open and not p.no_opendir  # the root's listing changes: the kernel must not keep it
    assert p.entry(Lifetime.LISTED) == (1.0, 1.0)
    assert p.entry(Lifetime.LISTED_FIXED) == (1.0, DAY)
    assert p.entry(Lifetime.PROVISIONAL) == (1.0, 0.0)
    assert p.negative(Lifetime.LISTED) == 1.0 and p.entry(Lifetime.FIXED) == (DAY, DAY)


@pytest.mark.parametrize("inode_as_handle", [True, False])
def test_read_write_caches_as_long_as_a_version_and_asks_for_opens_and_xattrs(inode_as_handle: bool) -> None:
    p = _choose(writable=True, inode_as_handle=inode_as_handle, has_xattrs=False)
    assert p.mode == "read-write" and not p.keep_cache  # the writable tree decides per file at open
    # OPEN and GETXATTR reach the daemon; OPENDIR only with the patched pyfuse3 (readdir gets the inode);
    # FLUSH never (a write fails when it is made; RELEASE takes the file's metadata into the batch).
    assert (p.no_open, p.no_opendir, p.no_flush, p.no_getxattr) == (False, inode_as_handle, True, False)
    # The daemon is the only writer, and invalidates what it changes behind the kernel: a day, as a version.
    assert p.entry(Lifetime.FIXED) == (DAY, DAY) and p.negative(Lifetime.FIXED) == DAY


def _node(ino: int, mode: int = stat.S_IFDIR | 0o755, cls: type[Inode] = Inode) -> Inode:
    return cls(ino, mode, 0, 0, 0, 0, 0, 0, 0, 2, 0, None, None, None)


def test_trees_report_lifetimes() -> None:
    assert VersionView.lifetime(None, _node(7)) is Lifetime.FIXED  # type: ignore[arg-type]
    assert VersionView.miss_lifetime(None, 1) is Lifetime.FIXED  # type: ignore[arg-type]
    assert not VersionView.listings_change and HistoryView.listings_change
    h = HistoryView.__new__(HistoryView)  # lifetime() needs no repository
    v2 = 2 << 40
    assert h.lifetime(_node(1)) is Lifetime.LISTED  # the root
    assert h.lifetime(_node(5, stat.S_IFLNK | 0o777)) is Lifetime.LISTED  # a tag
    assert h.lifetime(_node(v2 | 1)) is Lifetime.LISTED_FIXED  # <2>, real attributes
    assert h.lifetime(_node(v2 | 1, cls=_Placeholder)) is Lifetime.PROVISIONAL  # <2>, not opened yet
    assert h.lifetime(_node(v2 | 9, stat.S_IFREG | 0o644)) is Lifetime.FIXED  # inside version 2
    assert h.miss_lifetime(1) is Lifetime.LISTED and h.miss_lifetime(v2 | 1) is Lifetime.FIXED
