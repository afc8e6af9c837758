"""``GET /metrics`` of ``wsfs serve``: Prometheus text exposition of the server's requests, cache and store.

==============================================  =========  ==============================================
name                                            type       labels / from
==============================================  =========  ==============================================
``wsfs_http_requests_total``                    counter    route (the template, never a name), method, status
``wsfs_http_request_duration_seconds``          histogram  route: from the request to the last byte sent
``wsfs_http_response_bytes_total``              counter    route: body bytes sent
``wsfs_http_requests_in_progress``              gauge
``wsfs_cache_<counter>_total``, ``_bytes``...   as ``wsfs.metrics`` (the daemon's names): the server's blob cache
``wsfs_store_requests_total`` ...               as ``wsfs.metrics``: requests to the object store, bytes
==============================================  =========  ==============================================

One registry per application (tests run several).  Labels carry route
templates, not paths: no workspace or file name reaches a scrape.  Imports
``wsfs.metrics`` and prometheus_client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric

from wsfs.metrics import families

# Seconds: a small JSON answer takes a millisecond, a large file many seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class _Store:
    """The cache and store families of ``wsfs.metrics``, collected at each scrape."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        for fam in families(self.stats()):
            if fam.name.startswith(("wsfs_cache_", "wsfs_store_")):
                yield fam


class HttpMetrics:
    """ASGI middleware counting requests by route template, and the registry ``/metrics`` renders."""

    def __init__(self, app: Any, routes: dict[Any, str], stats: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.routes = routes  # endpoint function -> route template
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("wsfs_http_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=self.registry)
        self.duration = Histogram("wsfs_http_request_duration_seconds", "time from a request to its last byte",
                                  ["route"], buckets=BUCKETS, registry=self.registry)
        self.sent = Counter("wsfs_http_response_bytes", "response body bytes sent", ["route"], registry=self.registry)
        self.in_progress = Gauge("wsfs_http_requests_in_progress", "requests being answered", registry=self.registry)
        self.registry.register(_Store(stats))  # type: ignore[arg-type]

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status, sent = 500, 0

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        self.in_progress.inc()
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.in_progress.dec()
            route = self.routes.get(scope.get("endpoint"), "other")  # the router put the endpoint in the scope
            self.requests.labels(route, scope["method"], str(status)).inc()
            self.duration.labels(route).observe(time.perf_counter() - t0)
            self.sent.labels(route).inc(sent)

    def exposition(self) -> bytes:
        """The text exposition (blocking: the cache's statistics wait for its pending writes)."""
        return generate_latest(self.registry)
