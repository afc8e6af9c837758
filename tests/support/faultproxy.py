"""A fault-injecting HTTP/1.1 proxy on loopback, between wsfs and an S3 server.

Every request from the client is parsed (request line, headers, body by
``Content-Length`` or chunked), then either forwarded to the server on a
fresh connection (its response parsed the same way and passed back), or
answered with a fault chosen by a rule the test sets:

- ``Fault.status(503, "SlowDown")``: an S3 error document, nothing forwarded;
- ``Fault.reset()``: forwarded, then the client's connection is reset (RST)
  after the response's headers and half its body;
- ``Fault.truncate()``: forwarded, headers with the real ``Content-Length``,
  half the body, then a clean close (FIN): a short body;
- ``Fault.stall(seconds)``: nothing is answered for that long, then the
  connection is closed;
- ``Fault.corrupt()``: forwarded, one byte of the body flipped (a body that
  looks whole and is wrong).

A rule is ``rule(method, path, query) -> Fault | None``, called for every
request under a lock; ``FaultProxy.requests`` logs ``(method, path, fault
name or "ok")``.  Headers are forwarded unchanged (``Host`` included), so
SigV4 signatures made for the proxy's address still verify at the server.
It listens on 127.0.0.1 only and forwards to a loopback port only.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int = 0
    code: str = ""
    seconds: float = 0.0

    @classmethod
    def error(cls, status: int = 503, code: str = "SlowDown") -> Fault:
        return cls("status", status=status, code=code)

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def truncate(cls) -> Fault:
        return cls("truncate")

    @classmethod
    def stall(cls, seconds: float) -> Fault:
        return cls("stall", seconds=seconds)

    @classmethod
    def corrupt(cls) -> Fault:
        return cls("corrupt")

    @property
    def name(self) -> str:
        return f"{self.status} {self.code}" if self.kind == "status" else self.kind


Rule = Callable[[str, str, str], "Fault | None"]


class _Closed(Exception):
    pass


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise _Closed
        self.buf += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        first = self.line()
        headers = []
        while True:
            line = self.line()
            if not line:
                return first, headers
            k, _, v = line.partition(b":")
            headers.append((k.strip(), v.strip()))

    def body(self, headers: list[tuple[bytes, bytes]], *, no_body: bool = False) -> bytes:
        """The body as it came on the wire (chunked bodies with their framing)."""
        h = {k.lower(): v for k, v in headers}
        if no_body:
            return b""
        if h.get(b"transfer-encoding", b"").lower() == b"chunked":
            out = b""
            while True:
                size_line = self.line()
                out += size_line + b"\r\n"
                size = int(size_line.split(b";")[0], 16)
                out += self.exact(size + 2)
                if size == 0:
                    # trailers until an empty line (the 2 bytes read were that line if no trailers)
                    return out
        n = int(h.get(b"content-length", b"0"))
        return self.exact(n)


def _head_bytes(first: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return first + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"


class FaultProxy:
    def __init__(self, upstream_url: str, rule: Rule | None = None) -> None:
        u = urlsplit(upstream_url)
        assert u.hostname in ("127.0.0.1", "localhost", "::1"), "loopback only"
        self.upstream = (u.hostname, u.port or 80)
        self.rule: Rule = rule or (lambda m, p, q: None)
        self.requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        self._conns: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True, name="faultproxy").start()

    def set_rule(self, rule: Rule | None) -> None:
        with self._lock:
            self.rule = rule or (lambda m, p, q: None)

    def faults(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return [r for r in self.requests if r[2] != "ok"]

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        r = _Reader(conn)
        try:
            while not self._stop:
                first, headers = r.head()
                if any(k.lower() == b"expect" and v.lower() == b"100-continue" for k, v in headers):
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the server gets the body at once
                    headers = [(k, v) for k, v in headers if k.lower() != b"expect"]
                body = r.body(headers)
                method, target, _ = first.decode("latin-1").split(" ", 2)
                path, _, query = target.partition("?")
                with self._lock:
                    fault = self.rule(method, path, query)
                    self.requests.append((method, path, fault.name if fault else "ok"))
                if fault is not None and fault.kind == "status":
                    doc = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
                           f"<Message>injected by the test</Message></Error>").encode()
                    conn.sendall(_head_bytes(f"HTTP/1.1 {fault.status} {fault.code}".encode(), [
                        (b"Content-Type", b"application/xml"), (b"Content-Length", str(len(doc)).encode())]) + doc)
                    continue
                if fault is not None and fault.kind == "stall":
                    time.sleep(fault.seconds)
                    return
                status_line, rheaders, rbody = self._forward(_head_bytes(first, headers) + body, method)
                head = _head_bytes(status_line, rheaders)
                if fault is None:
                    conn.sendall(head + rbody)
                elif fault.kind == "corrupt" and rbody:
                    i = len(rbody) // 2
                    conn.sendall(head + rbody[:i] + bytes([rbody[i] ^ 0x01]) + rbody[i + 1:])
                elif fault.kind == "truncate":
                    conn.sendall(head + rbody[: len(rbody) // 2])
                    conn.shutdown(socket.SHUT_WR)
                    return
                elif fault.kind == "reset":
                    conn.sendall(head + rbody[: len(rbody) // 2])
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                else:
                    conn.sendall(head + rbody)
        except (_Closed, OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _forward(self, request: bytes, method: str) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
        with socket.create_connection(self.upstream, timeout=30) as up:
            up.sendall(request)
            r = _Reader(up)
            status_line, headers = r.head()
            code = int(status_line.split()[1])
            body = r.body(headers, no_body=method == "HEAD" or code in (204, 304) or 100 <= code < 200)
            return status_line, headers, body

    def close(self) -> None:
        self._stop = True
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
