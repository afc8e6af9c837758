"""``daemon/handles.py``: per-open state behind the handles the kernel holds."""

from __future__ import annotations

import errno
import os

import pytest

from wsfs.daemon.handles import BadHandle, HandleTable


def test_open_get_release() -> None:
    t = HandleTable()
    a = t.open(7, os.O_RDONLY)
    b = t.open(7, os.O_RDONLY | os.O_NOATIME)
    d = t.open(1, is_dir=True)
    assert 0 < a < b < d  # never 0: that is "no handle" to the kernel
    assert (t.get(b).ino, t.get(b).flags, t.get(b).is_dir) == (7, os.O_RDONLY | os.O_NOATIME, False)
    assert t.get(d).is_dir and len(t) == 3
    assert t.release(a).ino == 7 and len(t) == 2
    with pytest.raises(BadHandle) as e:
        t.get(a)
    assert e.value.errno == errno.EBADF
    with pytest.raises(BadHandle):
        t.release(a)
    assert t.open(7) not in (a, b, d)  # numbers are never reused
    assert t.statistics() == {"handles": 3, "opened": 4}
