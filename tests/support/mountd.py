"""A ``wsfs mountd`` of the tests' (or a benchmark side's) checkout, started and stopped by pid."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support.procs import end


@dataclass
class Mountd:
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def started_mountd(where: Path, env: dict[str, str]) -> Iterator[Mountd]:
    """``wsfs -v mountd --socket <where>/run/mountd.sock`` with *env*, once it listens; at the end SIGTERM
    (SIGKILL after 10 s) of that process only.  Its log is ``<where>/mountd.log``."""
    where.mkdir(parents=True, exist_ok=True)
    sock = where / "run" / "mountd.sock"
    log = where / "mountd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "wsfs", "-v", "mountd", "--socket", str(sock)],
                                env={**env, "WSFS_MOUNTD_SOCKET": str(sock)}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while b"listening" not in log.read_bytes():
            if proc.poll() is not None:
                raise RuntimeError(f"mountd exited {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mountd did not start within 60 s: {log.read_text()}")
            time.sleep(0.02)
        yield Mountd(proc, sock, log)
    finally:
        end(proc, 10)
