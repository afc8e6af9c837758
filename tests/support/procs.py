"""Ending a child process the tests or a benchmark started: by its pid only."""

from __future__ import annotations

import subprocess


def end(proc: subprocess.Popen, grace: float) -> int:
    """SIGTERM *proc* if it still runs, wait up to *grace* seconds, then SIGKILL it; its exit status."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
