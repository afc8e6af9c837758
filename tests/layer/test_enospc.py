"""A full state folder: the write that does not fit fails with ENOSPC, everything before it stays.

The state folder is on a 4 MiB tmpfs mounted for the test (root only),
unmounted in ``finally``.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from wsfs.errors import NoSpace
from wsfs.format.manifest import ROOT_INO
from wsfs.layer import WriteLayer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_enospc_fails_that_write_and_keeps_earlier_ones(small_fs: Path, base) -> None:
    state = str(small_fs / "state")
    layer = WriteLayer(state, base.m, base.id, base.read_base)
    try:
        check_full(layer, state, base)
    finally:
        layer.close()


def check_full(layer: WriteLayer, state: str, base) -> None:
    written: dict[int, bytes] = {}
    failed = None
    for i in range(200):
        f = layer.create(ROOT_INO, b"f%d" % i, stat.S_IFREG | 0o644, 0, 0)
        data = os.urandom(64 * 1024 - 1)
        try:
            layer.write(f.ino, 0, data)
        except NoSpace as e:
            failed = (f.ino, e)
            break
        written[f.ino] = data
        if i % 8 == 0:
            layer.fsync(f.ino)
    assert failed is not None and failed[1].errno == errno.ENOSPC
    assert len(written) > 10
    assert layer.getattr(failed[0]).size == 0  # the failed write left nothing
    for ino, data in written.items():
        assert layer.read(ino, 0, len(data) + 1) == data
    # The batch still commits (the reserve), so deleting files makes room again.
    layer.sync_all()
    for i in range(0, len(written), 2):
        layer.unlink(ROOT_INO, b"f%d" % i)
    layer.sync_all()
    again = layer.create(ROOT_INO, b"after", stat.S_IFREG | 0o644, 0, 0)
    layer.write(again.ino, 0, b"room again")
    layer.close()
    layer = WriteLayer(state, base.m, base.id, base.read_base)
    try:
        for i, data in enumerate(written.values()):
            if i % 2:
                assert layer.read(layer.lookup(ROOT_INO, b"f%d" % i).ino, 0, len(data) + 1) == data
        assert layer.read(layer.lookup(ROOT_INO, b"after").ino, 0, 100) == b"room again"
    finally:
        layer.close()
