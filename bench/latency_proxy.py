#!/usr/bin/env python3
"""A loopback TCP proxy that adds network latency (and optionally a bandwidth cap) and counts HTTP requests.

This kernel has no ``netem`` qdisc, so latency is added in user space: every
piece of data read from one side is held for ``rtt_ms / 2`` before it is
written to the other side, in each direction, so a request/response pair
gains one full RTT.  A new connection also pays one RTT before its first
byte reaches the server (the TCP handshake a real client would have waited
for; ``connect_rtt=False`` turns that off).  TLS handshakes are not modelled.

With ``bandwidth_mbit`` each direction is a shared link of that rate: data
leaves in arrival order at most that fast (a serialisation model, shared by
all connections), then travels for the one-way delay.  The proxy reads as
fast as the sender writes and buffers up to ``max_buffer`` bytes per
connection and direction, so the TCP window never limits throughput (as on a
well-tuned long fat pipe).

Counting: the client-to-server stream of every connection is parsed as
HTTP/1.1 (request line, headers, ``Content-Length`` or chunked bodies), so
``requests`` is the exact number of requests, by method; bytes are counted
on the wire in each direction.  A connection whose stream cannot be parsed is
still forwarded and counted in ``unparsed_connections``.

Side channel: a request ``GET /__proxy_stats`` (``?reset=1`` zeroes the
counters after answering) sent as the first request of a connection to the
proxy is answered by the proxy itself with the counters as JSON and is not
forwarded or counted.  ``--stats-file`` also rewrites a JSON file every
0.5 s.

It only listens on 127.0.0.1 and only forwards to loopback addresses.

From Python::

    with LatencyProxy(target_port, rtt_ms=20) as p:      # a subprocess by default
        url = f"http://127.0.0.1:{p.port}"
        ...
        print(p.stats()["requests"])
        p.reset()

As a script (runs until SIGINT/SIGTERM)::

    python bench/latency_proxy.py --target 127.0.0.1:8333 --rtt 20 [--port 0] [--bandwidth-mbit 1000]
    curl -s http://127.0.0.1:PORT/__proxy_stats
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

STATS_PATH = b"/__proxy_stats"
_HEAD_LIMIT = 256 * 1024  # request heads larger than this: give up parsing the connection
_HIGH_WATER = 32 * 1024 * 1024  # per connection and direction: pause the reader above this
_LOW_WATER = 8 * 1024 * 1024


# -- counters -------------------------------------------------------------------------


class Stats:
    """Counters shared by every connection (updated on the event-loop thread only)."""

    def __init__(self, rtt_ms: float, bandwidth_mbit: float | None) -> None:
        self.rtt_ms = rtt_ms
        self.bandwidth_mbit = bandwidth_mbit
        self.started = time.time()
        self.reset()

    def reset(self) -> None:
        self.connections = 0
        self.requests = 0
        self.by_method: collections.Counter[str] = collections.Counter()
        self.bytes_up = 0  # client -> server, on the wire (headers included)
        self.bytes_down = 0  # server -> client
        self.unparsed_connections = 0

    def snapshot(self, active: int) -> dict[str, Any]:
        return {
            "rtt_ms": self.rtt_ms,
            "bandwidth_mbit": self.bandwidth_mbit,
            "connections": self.connections,
            "active_connections": active,
            "requests": self.requests,
            "by_method": dict(self.by_method),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "unparsed_connections": self.unparsed_connections,
            "uptime_s": round(time.time() - self.started, 3),
        }


class HttpRequestCounter:
    """Incremental HTTP/1.1 request framing for one client-to-server stream.

    Counts each request once its head is complete.  Bodies are skipped by
    ``Content-Length`` or by parsing ``Transfer-Encoding: chunked``.
    """

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buf = bytearray()
        self.state = "head"  # head | body | chunk_size | chunk_data | trailer
        self.remaining = 0
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        view = memoryview(data)
        pos = 0
        n = len(view)
        while pos < n or (self.buf and self.state in ("head", "chunk_size", "trailer")):
            if self.state in ("body", "chunk_data"):
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                if self.remaining:
                    return
                self.state = "head" if self.state == "body" else "chunk_size"
                continue
            # Line-oriented states: accumulate until the delimiter.
            if pos < n:
                self.buf += view[pos:]
                pos = n
            if self.state == "head":
                while self.buf.startswith(b"\r\n"):  # tolerated between requests
                    del self.buf[:2]
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > _HEAD_LIMIT:
                        self._give_up()
                    return
                head = bytes(self.buf[:end])
                rest = bytes(self.buf[end + 4 :])
                self.buf.clear()
                if not self._on_head(head):
                    return
            elif self.state == "chunk_size":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    if len(self.buf) > 4096:
                        self._give_up()
                    return
                line = bytes(self.buf[:end]).split(b";", 1)[0].strip()
                rest = bytes(self.buf[end + 2 :])
                self.buf.clear()
                try:
                    size = int(line, 16)
                except ValueError:
                    self._give_up()
                    return
                if size == 0:
                    self.state = "trailer"
                else:
                    self.state, self.remaining = "chunk_data", size + 2  # data + CRLF
            else:  # trailer: header lines, ended by an empty line
                if self.buf.startswith(b"\r\n"):
                    rest = bytes(self.buf[2:])
                    self.buf.clear()
                    self.state = "head"
                else:
                    end = self.buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(self.buf) > _HEAD_LIMIT:
                            self._give_up()
                        return
                    rest = bytes(self.buf[end + 4 :])
                    self.buf.clear()
                    self.state = "head"
            # Continue with what followed the delimiter.
            view = memoryview(rest)
            pos, n = 0, len(view)

    def _on_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._give_up()
            return False
        method = parts[0].decode("ascii", "replace")
        self.stats.requests += 1
        self.stats.by_method[method] += 1
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    self._give_up()
                    return False
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            self.state = "chunk_size"
        elif length:
            self.state, self.remaining = "body", length
        else:
            self.state = "head"
        return True

    def _give_up(self) -> None:
        self.broken = True
        self.buf.clear()
        self.stats.unparsed_connections += 1


# -- forwarding ---------------------------------------------------------------------------


class _Link:
    """One direction of the simulated network, shared by all connections: a rate limit."""

    def __init__(self, rate_bytes_per_s: float | None) -> None:
        self.rate = rate_bytes_per_s
        self.free_at = 0.0

    def departure(self, ready: float, nbytes: int) -> float:
        if not self.rate:
            return ready
        start = max(ready, self.free_at)
        self.free_at = start + nbytes / self.rate
        return self.free_at


class _Pipe:
    """Data of one direction of one connection: held until due, then written in order."""

    def __init__(self, conn: _Connection, link: _Link, delay: float, floor: float) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.link = link
        self.delay = delay
        self.floor = floor  # nothing is sent before this loop time (the simulated handshake)
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.dst: asyncio.Transport | None = None
        self.src: asyncio.Transport | None = None
        self.src_paused = False
        self.dst_blocked = False  # dst transport asked us to pause writing
        self.closed = False
        self.eof_sent = False

    def push(self, data: bytes | None) -> None:
        """Queue *data* (None = end of stream) for delivery after the delay."""
        now = self.loop.time()
        ready = max(now, self.floor)
        when = self.link.departure(ready, len(data) if data else 0) + self.delay
        if when <= now and not self.queue and self.dst is not None:
            self._deliver(data)  # no delay due: straight through
            return
        self.queue.append((when, data))
        if data:
            self.queued += len(data)
        self._flow()
        self._arm()

    def _arm(self) -> None:
        if self.timer is None and self.queue and self.dst is not None:
            self.timer = self.loop.call_at(self.queue[0][0], self._drain)

    def set_dst(self, dst: asyncio.Transport) -> None:
        self.dst = dst
        self._arm()

    def _drain(self) -> None:
        self.timer = None
        if self.closed or self.dst is None:
            return
        now = self.loop.time() + 0.0002  # within the loop's clock resolution
        out: list[bytes] = []
        eof = False
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                eof = True
                break
            out.append(data)
            self.queued -= len(data)
        if out:
            self._deliver(b"".join(out) if len(out) > 1 else out[0])
        if eof:
            self._deliver(None)
            return
        self._flow()
        self._arm()

    def _deliver(self, data: bytes | None) -> None:
        dst = self.dst
        if dst is None or dst.is_closing():
            return
        if data is None:
            if self.eof_sent:
                return
            self.eof_sent = True
            try:
                if dst.can_write_eof():
                    dst.write_eof()
                else:
                    dst.close()
            except OSError:  # the other side is gone already (ENOTCONN): nothing left to tell it
                dst.close()
            self.conn.half_closed(self)
        else:
            dst.write(data)

    def _flow(self) -> None:
        if self.src is None:
            return
        want_pause = self.dst_blocked or self.queued > _HIGH_WATER
        if want_pause and not self.src_paused:
            self.src_paused = True
            with contextlib.suppress(RuntimeError):
                self.src.pause_reading()
        elif self.src_paused and not self.dst_blocked and self.queued < _LOW_WATER:
            self.src_paused = False
            with contextlib.suppress(RuntimeError):
                self.src.resume_reading()

    def dst_pause(self, blocked: bool) -> None:
        self.dst_blocked = blocked
        self._flow()

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.queued = 0


class _Connection:
    """A client connection and its upstream connection."""

    def __init__(self, proxy: _ProxyCore) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        now = self.loop.time()
        d = proxy.rtt / 2
        # Client -> server data is sent no earlier than one RTT after the accept (the handshake).
        self.up = _Pipe(self, proxy.up_link, d, now + (proxy.rtt if proxy.connect_rtt else 0.0))
        self.down = _Pipe(self, proxy.down_link, d, now)
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.counter = HttpRequestCounter(proxy.stats)
        self.first = bytearray()  # bytes before the first request line is known
        self.decided = False
        self.done = 0  # directions that have delivered their EOF
        self.closed = False

    # client side
    def client_made(self, transport: asyncio.Transport) -> None:
        self.client = transport
        self.up.src = transport
        self.down.dst = transport
        self.proxy.active.add(self)

    def client_data(self, data: bytes) -> None:
        if not self.decided:
            self.first += data
            if b"\r\n" not in self.first and len(self.first) < 4096:
                return
            self.decided = True
            data, self.first = bytes(self.first), bytearray()
            if data.startswith(b"GET " + STATS_PATH):
                self._answer_stats(data)
                return
            self.proxy.stats.connections += 1
            self.loop.create_task(self._connect())
        self.proxy.stats.bytes_up += len(data)
        self.counter.feed(data)
        self.up.push(data)

    def client_eof(self) -> None:
        if not self.decided:
            self.close()
            return
        self.up.push(None)

    # server side
    async def _connect(self) -> None:
        try:
            await self.loop.create_connection(lambda: _ServerSide(self), self.proxy.target_host, self.proxy.target_port)
        except OSError:
            self.close()

    def server_made(self, transport: asyncio.Transport) -> None:
        if self.closed:
            transport.close()
            return
        self.server = transport
        self.down.src = transport
        self.up.set_dst(transport)

    def server_data(self, data: bytes) -> None:
        self.proxy.stats.bytes_down += len(data)
        self.down.push(data)

    def server_eof(self) -> None:
        self.down.push(None)

    def half_closed(self, pipe: _Pipe) -> None:
        self.done += 1
        if self.done >= 2:
            self.close()

    def lost(self, side: str) -> None:
        """One socket is gone: deliver what the other direction still holds, then close."""
        if side == "server":
            self.down.push(None)
        else:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.up.close()
        self.down.close()
        for t in (self.client, self.server):
            if t is not None and not t.is_closing():
                t.close()
        self.proxy.active.discard(self)

    def _answer_stats(self, head: bytes) -> None:
        line = head.split(b"\r\n", 1)[0]
        body = json.dumps(self.proxy.stats.snapshot(len(self.proxy.active))).encode()
        if b"reset=1" in line:
            self.proxy.stats.reset()
        assert self.client is not None
        self.client.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self.client.close()
        self.proxy.active.discard(self)


class _ClientSide(asyncio.Protocol):
    def __init__(self, proxy: _ProxyCore) -> None:
        self.conn = _Connection(proxy)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.client_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.conn.client_data(data)

    def eof_received(self) -> bool:
        self.conn.client_eof()
        return True  # keep the socket open to deliver the response

    def pause_writing(self) -> None:
        self.conn.down.dst_pause(True)

    def resume_writing(self) -> None:
        self.conn.down.dst_pause(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.lost("client")


class _ServerSide(asyncio.Protocol):
    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.server_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.conn.server_data(data)

    def eof_received(self) -> bool:
        self.conn.server_eof()
        return True

    def pause_writing(self) -> None:
        self.conn.up.dst_pause(True)

    def resume_writing(self) -> None:
        self.conn.up.dst_pause(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.lost("server")


def _check_loopback(host: str) -> None:
    try:
        ip = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        raise SystemExit(f"cannot resolve target host {host!r}") from None
    if not ip.is_loopback:
        raise SystemExit(f"refusing to forward to {ip}: this proxy only targets loopback addresses")


class _ProxyCore:
    """The asyncio server; runs on one event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        target_port: int,
        rtt_ms: float,
        *,
        target_host: str = "127.0.0.1",
        bandwidth_mbit: float | None = None,
        connect_rtt: bool = True,
    ) -> None:
        _check_loopback(target_host)
        self.loop = loop
        self.target_host = target_host
        self.target_port = target_port
        self.rtt = rtt_ms / 1000.0
        self.connect_rtt = connect_rtt and rtt_ms > 0
        rate = bandwidth_mbit * 1e6 / 8 if bandwidth_mbit else None
        self.up_link = _Link(rate)
        self.down_link = _Link(rate)
        self.stats = Stats(rtt_ms, bandwidth_mbit)
        self.active: set[_Connection] = set()
        self.server: asyncio.base_events.Server | None = None

    async def start(self, port: int = 0) -> int:
        self.server = await self.loop.create_server(
            lambda: _ClientSide(self), "127.0.0.1", port, reuse_address=True, backlog=1024
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in list(self.active):
            c.close()
        if self.server is not None:
            await self.server.wait_closed()

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot(len(self.active))


# -- the Python interface ------------------------------------------------------------------


def fetch_stats(port: int, *, reset: bool = False, timeout: float = 10.0) -> dict[str, Any]:
    """The counters of the proxy listening on 127.0.0.1:*port* (through ``/__proxy_stats``)."""
    path = STATS_PATH + (b"?reset=1" if reset else b"")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected stats reply from proxy on port {port}: {raw[:200]!r}")
    return dict(json.loads(body))


class LatencyProxy:
    """A latency proxy in front of ``127.0.0.1:target_port``; a context manager.

    ``subprocess=True`` (default) runs it as ``python latency_proxy.py`` in a
    process of its own, so its CPU use does not compete for the caller's GIL
    (a benchmark that drives boto3 threads in the same process would
    otherwise measure the proxy too).  ``subprocess=False`` runs the event
    loop in a thread of this process.
    """

    def __init__(
        self,
        target_port: int,
        rtt_ms: float = 0.0,
        *,
        bandwidth_mbit: float | None = None,
        target_host: str = "127.0.0.1",
        connect_rtt: bool = True,
        port: int = 0,
        subprocess: bool = True,
    ) -> None:
        self.target_port = target_port
        self.rtt_ms = rtt_ms
        self.bandwidth_mbit = bandwidth_mbit
        self.target_host = target_host
        self.connect_rtt = connect_rtt
        self.requested_port = port
        self.use_subprocess = subprocess
        self.port = 0
        self.pid: int | None = None
        self._proc: Any = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._core: _ProxyCore | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LatencyProxy:
        if self.use_subprocess:
            self._start_process()
        else:
            self._start_thread()
        return self

    def _start_process(self) -> None:
        argv = [sys.executable, os.path.abspath(__file__), "--target", f"{self.target_host}:{self.target_port}",
                "--rtt", str(self.rtt_ms), "--port", str(self.requested_port)]
        if self.bandwidth_mbit:
            argv += ["--bandwidth-mbit", str(self.bandwidth_mbit)]
        if not self.connect_rtt:
            argv.append("--no-connect-rtt")
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.pid = self._proc.pid
        line = self._proc.stdout.readline()  # "listening on 127.0.0.1:PORT ..."
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"latency proxy did not start: {line!r}")
        self.port = int(line.split()[2].rsplit(":", 1)[1])

    def _start_thread(self) -> None:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._core = _ProxyCore(loop, self.target_port, self.rtt_ms, target_host=self.target_host,
                                        bandwidth_mbit=self.bandwidth_mbit, connect_rtt=self.connect_rtt)
                self.port = loop.run_until_complete(self._core.start(self.requested_port))
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                errors.append(e)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
                loop.run_until_complete(self._core.stop())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="latency-proxy", daemon=True)
        self._thread.start()
        started.wait()
        if errors:
            raise errors[0]

    def stats(self) -> dict[str, Any]:
        """Counters since the start or the last :meth:`reset`."""
        return fetch_stats(self.port)

    def reset(self) -> dict[str, Any]:
        """Answer the counters, then zero them."""
        return fetch_stats(self.port, reset=True)

    def stop(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if proc.poll() is None:
                proc.terminate()  # only the pid we started
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout:
                proc.stdout.close()
        if self._thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the script ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Loopback TCP proxy adding latency; counts HTTP requests.")
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to (loopback only)")
    ap.add_argument("--rtt", type=float, default=0.0, help="added round-trip time in ms (half each way; default 0)")
    ap.add_argument("--port", type=int, default=0, help="port to listen on at 127.0.0.1 (default: any free one)")
    ap.add_argument("--bandwidth-mbit", type=float, default=None, help="cap each direction at this many Mbit/s")
    ap.add_argument("--no-connect-rtt", action="store_true", help="do not charge new connections one RTT")
    ap.add_argument("--stats-file", help="rewrite this JSON file with the counters every 0.5 s")
    args = ap.parse_args(argv)
    host, _, port = args.target.rpartition(":")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        core = _ProxyCore(loop, int(port), args.rtt, target_host=host or "127.0.0.1",
                          bandwidth_mbit=args.bandwidth_mbit, connect_rtt=not args.no_connect_rtt)
        listen = await core.start(args.port)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"listening on 127.0.0.1:{listen} -> {host}:{port}, rtt {args.rtt} ms"
              + (f", {args.bandwidth_mbit} Mbit/s" if args.bandwidth_mbit else ""), flush=True)

        def write_stats() -> None:
            if args.stats_file:
                tmp = args.stats_file + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(core.snapshot(), f)
                os.replace(tmp, args.stats_file)

        while not stop.is_set():
            write_stats()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        write_stats()
        await core.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
