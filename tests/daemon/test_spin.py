"""pyfuse3's spin before wait (third_party/pyfuse3/spin-before-wait.patch) is on where it pays, off on one CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pyfuse3
import pytest

PROBE = """
import os, sys, pyfuse3
from wsfs.daemon.mount import _spin_where_it_pays
cpus = sorted(os.sched_getaffinity(0))[:int(sys.argv[1])]
os.sched_setaffinity(0, cpus)
_spin_where_it_pays()
print(pyfuse3.WSFS_SPIN_NS)
"""

pytestmark = pytest.mark.skipif(getattr(pyfuse3, "WSFS_PATCH", 0) < 3, reason="pyfuse3 without the third patch")


def spin_with(cpus: int) -> int:
    p = subprocess.run([sys.executable, "-c", PROBE, str(cpus)], capture_output=True, text=True, check=True)
    return int(p.stdout)


def test_one_cpu_turns_the_spin_off() -> None:
    assert pyfuse3.WSFS_SPIN_NS > 0  # the build's default
    assert spin_with(1) == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_two_cpus_keep_the_build_default() -> None:
    assert spin_with(2) == pyfuse3.WSFS_SPIN_NS
