"""metrics.py: a daemon's stats as Prometheus text, read back with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wsfs.daemon.ops import LATENCY_BUCKETS_US, OpStats
from wsfs.errors import UsageError
from wsfs.metrics import exposition, parse_listen, serve


def sample_stats() -> dict:
    ops = OpStats()
    for ns in (10_000, 80_000, 80_000, 3_000_000):  # 10 µs, 80 µs twice, 3 ms
        ops.record("read", ns, False)
    ops.record("lookup", 400_000, True)
    return {
        "workspace": "demo", "version": 3, "uptime_s": 12.5,
        **ops.snapshot(),
        "cache": {"hits": 7, "misses": 2, "bytes": 4096, "files": 3, "max_bytes": 1 << 30, "evictions": 0},
        "store": {"requests": {"get": 5, "head": 1}, "errors": {"get": 1}, "retries": {"get": 2},
                  "bytes_in": 1234, "bytes_out": 0},
        "kernel": {"inodes": 10, "handles": 1, "policy": "read-only", "lookups": 3},
        "layer": {"dirty_files": 2, "oldest_write_age_s": 1.5},
        "commits": {"count": 1, "bytes_uploaded": 100},
    }


def parsed(text: bytes) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_exposition_parses_and_carries_every_number():
    m = parsed(exposition(sample_stats()))
    assert m["wsfs_info"] == {(("mode", "read-only"), ("version", "3"), ("workspace", "demo")): 1}
    assert m["wsfs_fuse_requests_total"] == {(("op", "lookup"),): 1, (("op", "read"),): 4}
    assert m["wsfs_fuse_errors_total"] == {(("op", "lookup"),): 1}
    buckets = m["wsfs_fuse_request_duration_seconds_bucket"]
    le = {dict(k)["le"]: v for k, v in buckets.items() if dict(k)["op"] == "read"}
    assert le["2.5e-05"] == 1 and le["0.0001"] == 3 and le["0.0025"] == 3 and le["0.005"] == 4 and le["+Inf"] == 4
    assert len(le) == len(LATENCY_BUCKETS_US) + 1
    assert m["wsfs_fuse_request_duration_seconds_count"][(("op", "read"),)] == 4
    assert m["wsfs_fuse_request_duration_seconds_sum"][(("op", "read"),)] == pytest.approx(0.00317, abs=1e-4)
    assert m["wsfs_cache_hits_total"][()] == 7 and m["wsfs_cache_bytes"][()] == 4096
    assert m["wsfs_store_requests_total"] == {(("kind", "get"),): 5, (("kind", "head"),): 1}
    assert m["wsfs_store_received_bytes_total"][()] == 1234
    assert m["wsfs_store_errors_total"] == {(("kind", "get"),): 1}
    assert m["wsfs_store_retries_total"] == {(("kind", "get"),): 2}
    assert m["wsfs_kernel_inodes"][()] == 10 and "wsfs_kernel_lookups" not in m
    assert m["wsfs_layer_dirty_files"][()] == 2 and m["wsfs_commits_count_total"][()] == 1


@pytest.mark.parametrize("bad", ["0.0.0.0:9101", "10.1.2.3:80", "example.com:80", "127.0.0.1", "127.0.0.1:x",
                                 "127.0.0.1:70000"])
def test_only_loopback_host_port_is_accepted(bad):
    with pytest.raises(UsageError):
        parse_listen(bad)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0) and parse_listen("[::1]:9") == ("::1", 9)


def test_the_endpoint_answers_a_scrape_with_fresh_numbers():
    stats = sample_stats()
    server, port = serve("127.0.0.1:0", lambda: stats)
    try:
        first = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        stats["requests"]["read"] = 99
        second = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        server.shutdown()
        server.server_close()
    assert parsed(first)["wsfs_fuse_requests_total"][(("op", "read"),)] == 4
    assert parsed(second)["wsfs_fuse_requests_total"][(("op", "read"),)] == 99
    assert "process_resident_memory_bytes" in parsed(second)


def test_the_pending_gauge_walks_after_a_commit_only_if_something_was_written_meanwhile():
    """A commit with no write while it ran leaves nothing pending: the gauge says so without walking the layer
    (that walk, on the trio thread, held a 40,200-entry mount's requests for seconds); else it walks."""
    from wsfs.daemon.mount import _PendingGauge

    g = _PendingGauge()
    g.entries, g.bytes, g.oldest_ns, g.stale, g.ages = 40_200, 10**9, 1, False, False
    g.due = float("inf")
    g.committed(mutations_before=7, started_ns=5, mutations_after=7)
    assert (g.entries, g.bytes, g.oldest_ns) == (0, 0, None) and not g.due_now()
    assert g.summary(7)["oldest_uncommitted_write_age_seconds"] == 0
    g.committed(mutations_before=7, started_ns=5, mutations_after=9)  # written during the commit
    assert g.due_now() and g.oldest_ns == 5


def test_a_pending_walk_that_a_commit_or_discard_overtook_counts_for_nothing():
    """The walk reads a snapshot in a worker thread; a commit (or discard) that ends meanwhile knows better."""
    from wsfs.daemon.mount import _PendingGauge

    g = _PendingGauge()
    begun = g.generation
    g.committed(mutations_before=3, started_ns=5, mutations_after=3)  # nothing pending now, known without a walk
    assert not g.apply((40_200, 10**9, 1), begun, 1.1)  # the walk saw the layer before that commit
    assert (g.entries, g.bytes, g.oldest_ns, g.stale) == (0, 0, None, False)
    assert g.cost == 1.1 and not g.due_now()  # its cost still spaces the next walk
    begun = g.generation
    g.invalidate(ages=True)  # a discard
    assert not g.apply((5, 50, 7), begun, 0.1) and g.due_now() and g.ages
    assert g.apply((5, 50, 7), g.generation, 0.1)
    assert (g.entries, g.bytes, g.oldest_ns, g.stale, g.ages) == (5, 50, 7, False, False)
    assert not g.due_now()
    # Written to while the walk read its snapshot: those writes are not in its figures; they count from the
    # snapshot's time, and a walk is due again once the interval has passed.
    assert g.apply((6, 60, 7), g.generation, 0.1, written_since_ns=11)
    assert g.first_new_ns == 11 and g.entries == 6 and not g.due_now()
    g.due = 0.0
    assert g.due_now() and g.summary(g.seen)["oldest_uncommitted_write_age_seconds"] > 0
