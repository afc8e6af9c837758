"""An HTTP endpoint that hangs, for tests of deadlines: a thread on 127.0.0.1, port 0.

Modes:

* ``"silent"``: accepts connections, reads the request, never answers (an
  overloaded proxy, a half-dead load balancer, a firewall that lets SYNs
  through).
* ``"stall"``: answers ``200`` with the headers of a large object and the
  first bytes of its body, then sends nothing more.
* ``"slow"``: answers ``200`` with *body*, sending it in pieces of
  ``piece`` bytes every ``interval`` seconds (a slow but live link).

Connections stay open until :meth:`close`, which the context manager calls;
every thread it started is a daemon thread and ends with its socket.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class BlackHole:
    def __init__(self, mode: str = "silent", *, body: bytes = b"", piece: int = 64 * 1024,
                 interval: float = 0.1) -> None:
        if mode not in ("silent", "stall", "slow"):
            raise ValueError(mode)
        self.mode = mode
        self.body = body
        self.piece = piece
        self.interval = interval
        self.connections = 0  # accepted so far
        self.requests = 0  # request heads received so far
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._socks: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, name="blackhole-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._socks.append(conn)
            threading.Thread(target=self._serve, args=(conn,), name="blackhole-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            with self._lock:
                self.requests += 1
            if self.mode == "silent":
                self._closed.wait()
                return
            size = len(self.body) if self.mode == "slow" else 16 * 1024 * 1024
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Length: {size}\r\nETag: \"0\"\r\n\r\n".encode()
            )
            if self.mode == "stall":
                conn.sendall(b"\0" * 1000)
                self._closed.wait()
                return
            for i in range(0, len(self.body), self.piece):
                if self._closed.wait(self.interval):
                    return
                conn.sendall(self.body[i : i + self.piece])
            self._closed.wait()
        except OSError:
            return

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


@contextmanager
def black_hole(mode: str = "silent", **kw: object) -> Iterator[BlackHole]:
    hole = BlackHole(mode, **kw)  # type: ignore[arg-type]
    try:
        yield hole
    finally:
        hole.close()


def elapsed(t0: float) -> float:
    return time.monotonic() - t0
