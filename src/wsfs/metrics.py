"""Prometheus exposition of a daemon's counters (the dict ``wsfs stats --json`` prints).

One function turns that dict into metric families, so ``wsfs stats``, the
daemon's opt-in ``-o metrics=127.0.0.1:PORT`` endpoint and anything else
report the same numbers under the same names:

==============================================  =========  ====================================
name                                            type       labels / from
==============================================  =========  ====================================
``wsfs_info``                                   gauge      workspace, version, mode (always 1)
``wsfs_uptime_seconds``                         gauge
``wsfs_fuse_requests_total``                    counter    op
``wsfs_fuse_errors_total``                      counter    op
``wsfs_fuse_request_duration_seconds``          histogram  op (buckets of ``OpStats``)
``wsfs_cache_<counter>_total``                  counter    hits, misses, fetches, evictions, ...
``wsfs_cache_bytes`` / ``_files`` / ``_max_bytes``  gauge
``wsfs_store_requests_total``                   counter    kind (get, put, head, list, ...)
``wsfs_store_errors_total`` / ``_retries_total``  counter    kind
``wsfs_store_received_bytes_total`` / ``sent``  counter
``wsfs_kernel_inodes`` / ``_handles``           gauge      what the kernel holds
``wsfs_layer_<name>``                           gauge      a read-write mount's write layer
``wsfs_commits_<name>_total``                   counter    a read-write mount's commits
==============================================  =========  ====================================

``wsfs gc --metrics-file PATH`` writes its run's figures (``wsfs_gc_*``,
gauges, :func:`gc_textfile`) for node_exporter's textfile collector.

The endpoint listens on a loopback address only: the numbers name
workspaces and reveal activity, and there is no authentication.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from wsfs.errors import UsageError

_NAME = re.compile(r"[^a-zA-Z0-9_]")
# Cache counters that only grow (the rest of the cache section are levels).
_CACHE_LEVELS = {"bytes", "files", "max_bytes"}


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _clean(name: str) -> str:
    return _NAME.sub("_", name)


def families(stats: dict[str, Any]) -> Iterator[Metric]:
    """The metric families of one daemon's stats dict (missing sections are simply left out)."""
    info = GaugeMetricFamily("wsfs_info", "what this daemon serves", labels=["workspace", "version", "mode"])
    info.add_metric([str(stats.get("workspace", "")), str(stats.get("version", "")),
                     str(stats.get("kernel", {}).get("policy", ""))], 1)
    yield info
    if _num(stats.get("uptime_s")):
        yield GaugeMetricFamily("wsfs_uptime_seconds", "seconds since the mount started", value=stats["uptime_s"])
    requests = CounterMetricFamily("wsfs_fuse_requests", "FUSE requests answered", labels=["op"])
    for op, n in sorted(stats.get("requests", {}).items()):
        requests.add_metric([op], n)
    yield requests
    errors = CounterMetricFamily("wsfs_fuse_errors", "FUSE requests answered with an error", labels=["op"])
    for op, n in sorted(stats.get("errors", {}).items()):
        errors.add_metric([op], n)
    yield errors
    bounds = stats.get("latency_buckets_us") or []
    hist = HistogramMetricFamily("wsfs_fuse_request_duration_seconds", "time to answer a FUSE request", labels=["op"])
    for op, counts in sorted(stats.get("latency_histogram", {}).items()):
        if len(counts) != len(bounds) + 1:
            continue
        cumulative, buckets = 0, []
        for bound, n in zip([*bounds, None], counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound is None else repr(bound / 1e6), cumulative))
        total_s = stats.get("latency_us", {}).get(op, {}).get("total_ms", 0) / 1000
        hist.add_metric([op], buckets, total_s)
    yield hist
    cache = stats.get("cache", {})
    for key, v in sorted(cache.items()):
        if not _num(v):
            continue
        name = f"wsfs_cache_{_clean(key)}"
        if key in _CACHE_LEVELS:
            yield GaugeMetricFamily(name, f"blob cache: {key}", value=v)
        else:
            yield CounterMetricFamily(name, f"blob cache: {key}", value=v)
    store = stats.get("store", {})
    sreq = CounterMetricFamily("wsfs_store_requests", "requests to the object store (attempts)", labels=["kind"])
    for kind, n in sorted(store.get("requests", {}).items()):
        sreq.add_metric([kind], n)
    yield sreq
    for key, help_ in (("errors", "store calls that failed after their retries (a missing key is no error)"),
                       ("retries", "store attempts after a call's first (S3)")):
        fam = CounterMetricFamily(f"wsfs_store_{key}", help_, labels=["kind"])
        for kind, n in sorted(store.get(key, {}).items()):
            fam.add_metric([kind], n)
        yield fam
    if _num(store.get("bytes_in")):
        yield CounterMetricFamily("wsfs_store_received_bytes", "bytes received from the store", value=store["bytes_in"])
    if _num(store.get("bytes_out")):
        yield CounterMetricFamily("wsfs_store_sent_bytes", "bytes sent to the store", value=store["bytes_out"])
    for key, v in sorted(stats.get("kernel", {}).items()):
        if _num(v) and key in ("inodes", "handles"):
            yield GaugeMetricFamily(f"wsfs_kernel_{key}", f"{key} the kernel holds", value=v)
    for key, v in sorted(stats.get("layer", {}).items()):
        if _num(v):
            yield GaugeMetricFamily(f"wsfs_layer_{_clean(key)}", f"write layer: {key}", value=v)
    for key, v in sorted(stats.get("commits", {}).items()):
        if _num(v):
            yield CounterMetricFamily(f"wsfs_commits_{_clean(key)}", f"commits: {key}", value=v)


class _Collector:
    """A registry's collector: *metrics()* gives the families of each scrape."""

    def __init__(self, metrics: Callable[[], Iterable[Metric]]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics()


def registry(collect: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry whose every scrape calls *collect* for a fresh stats dict (plus the process' own metrics)."""
    from prometheus_client import ProcessCollector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(lambda: families(collect())))  # type: ignore[arg-type]
    ProcessCollector(registry=reg)
    return reg


def exposition(stats: dict[str, Any]) -> bytes:
    """The Prometheus text exposition of *stats* (no process metrics: this process is not the daemon)."""
    from prometheus_client import generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(lambda: families(stats)))  # type: ignore[arg-type]
    return generate_latest(reg)


def gc_textfile(path: str, report: Any, *, seconds: float, ok: bool, dry_run: bool) -> None:
    """Write one gc run's figures to *path* atomically (Prometheus text, for a textfile collector).

    *report* is the run's :class:`~wsfs.versions.gc.GcReport` (what it did
    before failing, when *ok* is false).  Every figure is a gauge: it is the
    last run's, and a scraper sees each run once however often it scrapes.
    """
    from prometheus_client import write_to_textfile

    fams: list[Metric] = [
        GaugeMetricFamily("wsfs_gc_last_run_timestamp_seconds", "when the last gc run ended (Unix time)",
                          value=time.time()),
        GaugeMetricFamily("wsfs_gc_last_run_success", "1 if the last gc run succeeded, else 0", value=int(ok)),
        GaugeMetricFamily("wsfs_gc_last_run_dry_run", "1 if the last gc run was a dry run (nothing changed)",
                          value=int(dry_run)),
        GaugeMetricFamily("wsfs_gc_duration_seconds", "how long the last gc run took", value=seconds),
        GaugeMetricFamily("wsfs_gc_versions", "version records the last gc run saw", value=report.versions),
        GaugeMetricFamily("wsfs_gc_versions_kept", "versions it kept", value=report.kept),
        GaugeMetricFamily("wsfs_gc_versions_dropped", "version records it dropped", value=len(report.dropped)),
    ]
    for key, help_ in (("marked", "objects it marked for deletion"), ("deleted", "objects it deleted"),
                       ("unreferenced", "objects no kept version references")):
        fams.append(GaugeMetricFamily(f"wsfs_gc_{key}_objects", help_, value=getattr(report, key)))
        fams.append(GaugeMetricFamily(f"wsfs_gc_{key}_bytes", f"bytes of the {help_}",
                                      value=getattr(report, f"{key}_bytes")))
    fams.append(GaugeMetricFamily("wsfs_gc_waiting_objects", "objects marked by earlier runs, within the grace period",
                                  value=report.waiting))
    fams.append(GaugeMetricFamily("wsfs_gc_dead_segment_bytes", "dead pack bytes in segments kept for live packs",
                                  value=report.dead_segment_bytes))
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(lambda: fams))  # type: ignore[arg-type]
    write_to_textfile(path, reg)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of a metrics endpoint; HOST must be a loopback address (``127.0.0.1``, ``[::1]``)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not host:
            raise ValueError
        if not ipaddress.ip_address(host).is_loopback:
            raise UsageError(f"metrics={text}: the metrics endpoint listens on a loopback address only")
        n = int(port)
        if not 0 <= n < 65536:
            raise ValueError
    except ValueError:
        raise UsageError(f"metrics={text}: expected HOST:PORT with a loopback HOST, e.g. 127.0.0.1:9101") from None
    return host, n


def serve(listen: str, collect: Callable[[], dict[str, Any]]) -> tuple[Any, int]:
    """Start the metrics endpoint on a thread of its own; ``(server, port)`` (call ``server.shutdown()``)."""
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=registry(collect))
    return server, server.server_address[1]
