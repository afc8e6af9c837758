"""Waiting for a foreground ``wsfs mount -f`` to send ``READY=1`` (systemd's notify protocol), for the mount
fixtures and the benchmarks alike."""

from __future__ import annotations

import socket
import subprocess
import time


def wait_for_ready(notify: socket.socket, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Wait up to *timeout* seconds for ``READY=1`` on *notify* (a bound datagram socket); None once it
    came, else why not: the daemon's exit (``"exited with N"``) or ``"timeout"``."""
    deadline = time.monotonic() + timeout
    notify.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            msg = notify.recv(4096)
        except TimeoutError:
            msg = b""
        if b"READY=1" in msg.split(b"\n"):
            return None
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
    return "timeout"
