"""``sd_notify`` without libsystemd: one datagram to ``$NOTIFY_SOCKET`` (``READY=1``, ``STOPPING=1``...)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify_systemd(message: str) -> None:
    """Send *message* (``READY=1``...) to ``$NOTIFY_SOCKET`` if set; abstract sockets start with '@'.

    A failure is logged, never raised: the mount or server works without a supervisor.
    """
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as e:
        # At shutdown (STOPPING=1) the listener may be gone already: not worth a warning.
        level = logging.WARNING if message.startswith("READY") else logging.DEBUG
        log.log(level, "cannot notify %s of %s: %s", os.environ.get("NOTIFY_SOCKET"), message, e)
