"""Every unit in systemd/ passes ``systemd-analyze verify`` (the mount unit has its own tests in test_mount_helper)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"


@pytest.mark.parametrize("name", sorted(p.name for p in UNITS.iterdir() if p.suffix in (".service", ".timer")))
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd); not installing it from a test")
    wsfs = Path("/usr/local/bin/wsfs")
    script = Path(sysconfig.get_path("scripts")) / "wsfs"
    for unit in UNITS.iterdir():
        if unit.suffix in (".service", ".timer"):
            text = unit.read_text()
            if not os.access(wsfs, os.X_OK):  # verify checks that ExecStart's program exists
                text = text.replace(str(wsfs), str(script))
            (tmp_path / unit.name).write_text(text)
    target = tmp_path / (name.replace("@.", "@demo.") if "@." in name else name)
    if target.name != name:
        shutil.copy(tmp_path / name, target)
    r = subprocess.run([exe, "verify", "--man=no", str(target)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0 and name.split(".")[0] not in r.stdout + r.stderr, r.stdout + r.stderr


def test_gc_timer_starts_the_gc_service() -> None:
    timer = (UNITS / "wsfs-gc.timer").read_text()
    service = (UNITS / "wsfs-gc.service").read_text()
    assert "OnCalendar=daily" in timer and "Persistent=true" in timer
    assert "Type=oneshot" in service and "wsfs gc -q $WSFS_GC_OPTIONS" in service
