"""S3Store beyond the shared contract: URLs, endpoints, settings, retries and how they are counted, errors.

Why s3 only: these are properties of talking HTTP to an S3 endpoint; a local
directory has no endpoint, credentials or retries.  Tests that need the
session's S3 server carry the ``s3`` marker (through the ``S3`` decorator,
which also pins ``store_kind`` so ``repo_url``/``store`` give an s3 location).
"""

from __future__ import annotations

import errno
import os
import time
import uuid

import botocore.exceptions
import pytest

from support.blackhole import black_hole
from support.s3faults import FaultInjector
from support.s3server import S3Server, free_port
from wsfs.errors import (
    AccessDenied,
    AlreadyExists,
    InvalidName,
    NotFound,
    StoreTimeout,
    StoreUnavailable,
    UsageError,
)
from wsfs.store import open_store
from wsfs.store.s3 import S3Store

S3 = pytest.mark.parametrize("store_kind", [pytest.param("s3", marks=pytest.mark.s3)])


# -- URLs and settings (no server) ----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "normal"),
    [
        ("s3://bkt", "bkt", "", "s3://bkt"),
        ("s3://bkt/", "bkt", "", "s3://bkt"),
        ("s3://bkt/a", "bkt", "a", "s3://bkt/a"),
        ("s3://bkt/a/b/", "bkt", "a/b", "s3://bkt/a/b"),
    ],
)
def test_from_url(url: str, bucket: str, prefix: str, normal: str) -> None:
    store = S3Store.from_url(url, endpoint_url="http://127.0.0.1:9")
    assert (store.bucket, store.prefix, store.url) == (bucket, prefix, normal)


@pytest.mark.parametrize(
    "url", ["s3://", "s3:///x", "s3://bkt/a//b", "s3://bkt/../x", "s3://b k/x", "gs://bkt/x"]
)
def test_from_url_rejects(url: str) -> None:
    with pytest.raises(UsageError):  # InvalidName is a UsageError
        S3Store.from_url(url, endpoint_url="http://127.0.0.1:9")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSFS_S3_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("WSFS_S3_CONNECT_TIMEOUT", "3")
    monkeypatch.setenv("WSFS_S3_READ_TIMEOUT", "9.5")
    config = S3Store.from_url("s3://bkt/p", endpoint_url="http://127.0.0.1:9")._client.meta.config
    assert config.retries == {"total_max_attempts": 7, "mode": "standard"}
    assert (config.connect_timeout, config.read_timeout) == (3.0, 9.5)
    from wsfs.cache import DEFAULT_FETCH_WORKERS, SMALL_FETCH_WORKERS

    # every GET the blob cache may have in flight gets a pooled connection (none discarded and reopened)
    assert config.max_pool_connections >= DEFAULT_FETCH_WORKERS + SMALL_FETCH_WORKERS
    assert config.s3 == {"addressing_style": "path"}


def test_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WSFS_S3_MAX_ATTEMPTS", "WSFS_S3_CONNECT_TIMEOUT", "WSFS_S3_READ_TIMEOUT", "WSFS_OP_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    store = S3Store.from_url("s3://bkt", endpoint_url="http://127.0.0.1:9")
    config = store._client.meta.config
    assert store.timeout == 30.0
    assert config.retries == {"total_max_attempts": 3, "mode": "standard"}
    # Two silent attempts (15 s each at worst) fit in the 30 s budget.
    assert (config.connect_timeout, config.read_timeout) == (5.0, 10.0)
    # The per-attempt timeouts follow the budget, from the environment or the caller.
    monkeypatch.setenv("WSFS_OP_TIMEOUT", "6")
    config = S3Store.from_url("s3://bkt", endpoint_url="http://127.0.0.1:9")._client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (1.0, 2.0)
    config = S3Store.from_url("s3://bkt", endpoint_url="http://127.0.0.1:9", timeout=3)._client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (0.5, 1.0)


@pytest.mark.parametrize("value", ["soon", "0", "-3", "inf"])
def test_bad_timeout_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("WSFS_OP_TIMEOUT", value)
    with pytest.raises(UsageError, match="WSFS_OP_TIMEOUT"):
        S3Store.from_url("s3://bkt", endpoint_url="http://127.0.0.1:9")


@pytest.mark.parametrize("value", ["zero", "0", "-1", "2.5"])
def test_bad_settings_are_usage_errors(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("WSFS_S3_MAX_ATTEMPTS", value)
    with pytest.raises(UsageError, match="WSFS_S3_MAX_ATTEMPTS"):
        S3Store.from_url("s3://bkt", endpoint_url="http://127.0.0.1:9")


def test_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
    store = S3Store.from_url("s3://bkt")
    assert store.endpoint == "http://127.0.0.1:1234"
    assert store._client.meta.config.s3 == {"addressing_style": "path"}


def test_client_looks_up_s3_models_only(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # The client's loader answers "which services have a model?" with S3 alone
    # (no scan of every service directory), and still honours AWS_DATA_PATH.
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    store = S3Store("bucket", endpoint_url="http://127.0.0.1:9")
    loader = store._client._loader
    assert loader.list_available_services("service-2") == ["s3"]
    assert loader.list_available_services("endpoint-rule-set-1") == ["s3"]
    assert loader.search_paths[0] == str(tmp_path)
    assert store._client.meta.service_model.service_name == "s3"


def test_endpoint_credentials_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    store = S3Store.from_url("s3://bkt", endpoint_url="http://user:hunter2@127.0.0.1:1234")
    assert "hunter2" not in store.endpoint and "hunter2" not in repr(store)


def test_unreachable_endpoint_is_store_unavailable_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSFS_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("WSFS_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("WSFS_S3_READ_TIMEOUT", "2")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = S3Store.from_url("s3://bkt/repo", endpoint_url=endpoint)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.get("k")
    assert time.monotonic() - started < 5
    assert type(info.value) is StoreUnavailable  # not AccessDenied
    message = str(info.value)
    assert endpoint in message and "unreachable" in message and "\n" not in message
    # Both attempts were made and counted, though neither reached a server.
    assert store.stats.requests == {"get": 2}
    monkeypatch.setenv("WSFS_S3_MAX_ATTEMPTS", "1")  # no backoff sleeps for the rest
    store = S3Store.from_url("s3://bkt/repo", endpoint_url=endpoint)
    for call in (
        store.check,
        lambda: store.put("k", b"x"),
        lambda: list(store.list("")),
        lambda: store.exists("k"),
    ):
        with pytest.raises(StoreUnavailable, match="unreachable"):
            call()
    assert store.stats.requests == {"head": 2, "put": 1, "list": 1}


# -- an endpoint that does not answer (support/blackhole.py) -----------------------------------


@pytest.mark.parametrize("timeout", [2.0, 30.0], ids=["2s", "30s"])
@pytest.mark.parametrize("mode", ["silent", "stall"])
def test_unanswered_request_fails_within_its_budget(monkeypatch: pytest.MonkeyPatch, mode: str,
                                                    timeout: float) -> None:
    """Before budgets: 5 attempts x 60 s.  Now every call ends within the budget, with StoreTimeout."""
    if timeout > 2 and mode == "stall":
        pytest.skip("one long case is enough")
    for name in ("WSFS_S3_MAX_ATTEMPTS", "WSFS_S3_CONNECT_TIMEOUT", "WSFS_S3_READ_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    with black_hole(mode) as hole:
        store = S3Store.from_url("s3://bkt/repo", endpoint_url=hole.url, timeout=timeout)
        started = time.monotonic()
        with pytest.raises(StoreTimeout) as info:
            store.get("k")
        took = time.monotonic() - started
    assert took <= timeout + 0.5, took
    assert info.value.errno == errno.ETIMEDOUT and info.value.exit_code == 8
    message = str(info.value)
    assert message.startswith(f"S3 endpoint {hole.url} did not answer within ") and "\n" not in message
    # Every attempt made was counted and reached the server; none was cut short by the budget.
    assert store.stats.requests["get"] == hole.requests >= 1


def test_every_call_has_a_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WSFS_S3_READ_TIMEOUT", raising=False)
    with black_hole("silent") as hole:
        store = S3Store.from_url("s3://bkt/repo", endpoint_url=hole.url, timeout=1)
        for call in (
            store.check,
            lambda: store.put("k", b"x"),
            lambda: store.put_if_absent("k", b"x"),
            lambda: list(store.list("")),
            lambda: store.list_dirs(""),
            lambda: store.exists("k"),
            lambda: store.delete("k"),
            lambda: store.get_range("k", 0, 10),
            lambda: store.get_stream("k"),
        ):
            started = time.monotonic()
            with pytest.raises(StoreTimeout, match="did not answer within"):
                call()
            assert time.monotonic() - started <= 1.5


def test_a_stream_that_stops_fails_after_the_read_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WSFS_S3_READ_TIMEOUT", raising=False)
    with black_hole("stall") as hole:
        store = S3Store.from_url("s3://bkt/repo", endpoint_url=hole.url, timeout=3)  # read timeout 1 s
        pieces = store.get_stream("k")
        started = time.monotonic()
        with pytest.raises(StoreTimeout, match="stopped sending"):
            for _ in pieces:
                pass
        assert time.monotonic() - started < 2


def test_a_slow_body_is_not_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The read timeout bounds each socket read, not the object: a slow but steady body is read whole."""
    monkeypatch.delenv("WSFS_S3_READ_TIMEOUT", raising=False)
    body = os.urandom(1 << 20)
    with black_hole("slow", body=body, piece=128 * 1024, interval=0.3) as hole:
        store = S3Store.from_url("s3://bkt/repo", endpoint_url=hole.url, timeout=1.5)  # read timeout 0.5 s
        started = time.monotonic()
        assert store.get("k") == body
        assert time.monotonic() - started > 1.5  # longer than the whole budget
    assert store.stats.requests == {"get": 1}


# -- against the session's server --------------------------------------------------------


@pytest.mark.s3
def test_canary_server_honours_if_none_match(s3_server: S3Server, s3_client: object) -> None:
    """If the server ignored If-None-Match, every "exactly one writer wins" test would pass for the wrong reason."""
    key = f"wsfs-test/canary-{uuid.uuid4().hex}"
    client = s3_client
    try:
        client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"first", IfNoneMatch="*")  # type: ignore[attr-defined]
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"second", IfNoneMatch="*")  # type: ignore[attr-defined]
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        assert info.value.response["Error"]["Code"] == "PreconditionFailed"
        body = client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
        assert body == b"first"
    finally:
        client.delete_object(Bucket=s3_server.bucket, Key=key)  # type: ignore[attr-defined]


@S3
def test_keys_live_under_the_prefix(
    store: S3Store, repo_url: str, s3_server: S3Server, s3_client: object
) -> None:
    prefix = repo_url.removeprefix(f"s3://{s3_server.bucket}/")
    store.put("k/v", b"1")
    listed = s3_client.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)  # type: ignore[attr-defined]
    assert [o["Key"] for o in listed["Contents"]] == [f"{prefix}/k/v"]
    # A store on the whole bucket (empty prefix) sees the same object by its full key.
    whole = open_store(f"s3://{s3_server.bucket}")
    assert whole.get(f"{prefix}/k/v") == b"1"
    assert f"{prefix}/k/v" in list(whole.list(prefix + "/"))


@S3
def test_endpoint_argument_beats_environment(
    repo_url: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    store = open_store(repo_url, endpoint_url=s3_server.endpoint_url)
    store.put("k", b"x")
    assert store.get("k") == b"x"


@S3
def test_store_fixture_uses_environment_endpoint(store: S3Store, s3_server: S3Server) -> None:
    assert store.endpoint == s3_server.endpoint_url


@S3
def test_retried_requests_are_counted_per_attempt(store: S3Store) -> None:
    with FaultInjector(store._client, "PutObject", [(503, "SlowDown")]) as put_faults:
        store.put("k", b"abcde")
    with FaultInjector(store._client, "GetObject", [(500, "InternalError")]) as get_faults:
        assert store.get("k") == b"abcde"
    assert (put_faults.injected, get_faults.injected) == (1, 1)
    # Every HTTP attempt counts; bytes_out counts the body of each PUT attempt.
    assert store.stats.snapshot() == {
        "requests": {"put": 2, "get": 2},
        "errors": {},  # both succeeded in the end
        "retries": {"put": 1, "get": 1},
        "bytes_in": 5,
        "bytes_out": 10,
    }


@S3
def test_a_small_put_sends_its_body_at_once_and_a_large_one_waits_for_100_continue(store: S3Store) -> None:
    """botocore makes every PUT wait for "100 Continue" (a second round trip); wsfs only the large ones."""
    from wsfs.store.s3 import EXPECT_MIN

    seen: list[object] = []
    store._client.meta.events.register("before-send.s3.PutObject",
                                       lambda request, **kw: seen.append(request.headers.get("Expect")))
    big = os.urandom(EXPECT_MIN)
    store.put("small", b"x" * 100_000)
    store.put_if_absent("record", b"{}")
    store.put("large", big)
    assert [None if v is None else bytes(v, "ascii") if isinstance(v, str) else v for v in seen] == [
        None, None, b"100-continue"]
    assert store.get("small") == b"x" * 100_000 and store.get("large") == big


@S3
def test_conditional_put_conflict_409_is_retried(store: S3Store) -> None:
    with FaultInjector(store._client, "PutObject", [(409, "ConditionalRequestConflict")]) as faults:
        store.put_if_absent("c", b"mine")
    assert faults.injected == 1
    assert store.get("c") == b"mine"
    assert store.stats.requests["put"] == 2


@S3
def test_conditional_put_conflict_gives_up(repo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSFS_S3_MAX_ATTEMPTS", "2")
    store = open_store(repo_url)
    assert isinstance(store, S3Store)
    conflicts = [(409, "ConditionalRequestConflict")] * 2
    with (
        FaultInjector(store._client, "PutObject", conflicts),
        pytest.raises(StoreUnavailable, match="ConditionalRequestConflict"),
    ):
        store.put_if_absent("c", b"mine")
    assert store.stats.requests == {"put": 2}
    assert not store.exists("c")


@S3
def test_412_after_a_retry_is_ours_if_the_bytes_are(store: S3Store) -> None:
    # As if our first attempt landed and only its response was lost: the object
    # exists with our bytes, botocore retries, and the retry gets 412.
    store.put("mine", b"payload")
    with FaultInjector(store._client, "PutObject", [(500, "InternalError")]):
        store.put_if_absent("mine", b"payload")
    assert store.stats.requests["put"] == 3 and store.stats.requests["get"] == 1
    # Someone else's bytes: a real conflict.
    store.put("theirs", b"other payload")
    with FaultInjector(store._client, "PutObject", [(500, "InternalError")]), pytest.raises(AlreadyExists):
        store.put_if_absent("theirs", b"payload")
    assert store.get("theirs") == b"other payload"


@S3
def test_wrong_credentials_are_access_denied(
    s3_server: S3Server, repo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not s3_server.enforces_auth:
        pytest.skip(f"the {s3_server.kind} server accepts any credentials")
    open_store(repo_url).put("k", b"x")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    for key_id, secret in [(None, "wrong-secret-1234"), ("WSFSUNKNOWNKEYID", "wrong-secret-1234")]:
        if key_id is not None:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        denied = open_store(repo_url)
        for call in (
            denied.check,
            lambda s=denied: s.get("k"),
            lambda s=denied: s.put("k2", b"x"),
            lambda s=denied: list(s.list("")),
        ):
            with pytest.raises(AccessDenied) as info:
                call()
            message = str(info.value)
            assert secret not in message and "\n" not in message
            assert s3_server.endpoint_url in message


@S3
def test_no_credentials_is_access_denied(
    s3_server: S3Server, repo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if s3_server.kind == "real":
        pytest.skip("real-S3 mode keeps the ambient credential sources (profiles, instance roles)")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = open_store(repo_url)
    with pytest.raises(AccessDenied, match="no S3 credentials found"):
        store.get("k")


@pytest.mark.s3
def test_missing_bucket_is_not_found(s3_server: S3Server) -> None:
    bucket = f"wsfs-missing-{uuid.uuid4().hex[:12]}"
    store = open_store(f"s3://{bucket}/repo")
    calls = [
        store.check,
        lambda: store.get("k"),
        lambda: store.get_range("k", 0, 1),
        lambda: store.put("k", b"x"),
        lambda: store.put_if_absent("k", b"x"),
        lambda: list(store.list("")),
        lambda: store.list_dirs(""),
    ]
    for call in calls:
        with pytest.raises(NotFound, match=f"bucket '{bucket}' does not exist"):
            call()
    assert not store.exists("k")  # HEAD cannot tell a missing bucket from a missing key
    # The failed PUT must not have created the bucket (SeaweedFS would, by default).
    with pytest.raises(NotFound):
        store.check()


@S3
def test_invalid_prefix_for_list(store: S3Store) -> None:
    with pytest.raises(InvalidName):
        store.list("../")
    with pytest.raises(InvalidName):
        store.list_dirs("a//b/")


@S3
def test_blobs_are_verified_without_botocore_checksums(store: S3Store, tmp_path) -> None:
    """GET bodies are not CRC-checked by botocore; blake3 still refuses a wrong blob before it is cached."""
    from wsfs.cache import BlobCache
    from wsfs.errors import IntegrityError
    from wsfs.format.blobs import content_id
    from wsfs.format.records import RepoConfig
    from wsfs.repository import Repository, blob_key

    assert store._client.meta.config.response_checksum_validation == "when_required"
    repo = Repository.init(store, RepoConfig(), str(tmp_path / "cache"))
    data = os.urandom(300_000)  # incompressible: stored raw, so only blake3 can notice the flipped bit
    cid = content_id(data)
    repo.put_blob(cid, data)
    good = store.get(blob_key(cid))
    store.put(blob_key(cid), good[:-1] + bytes([good[-1] ^ 1]))  # one bit flipped, as S3 stores it
    cache = BlobCache(repo, str(tmp_path / "cache"))
    with pytest.raises(IntegrityError):
        cache.read(cid, 0, 10, size=len(data))
    assert not cache.contains(cid) and cache.statistics()["fetches"] == 0
    cache.close()


@S3
def test_gets_skip_the_botocore_pipeline(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Object GETs go out signed on the client's HTTP session, not through get_object (1.9 of 2.0 ms of CPU),
    still counted once, and a missing key is NotFound after one request."""
    store.put("k", b"abcde")

    def refuse(**kwargs: object) -> None:
        raise AssertionError("get_object called")

    monkeypatch.setattr(store._client, "get_object", refuse)
    store.stats.__init__()
    assert store.get("k") == b"abcde"
    assert store.get_range("k", 1, 3) == b"bcd"
    with pytest.raises(NotFound):
        store.get("missing")
    assert store.stats.requests == {"get": 3}


@S3
def test_a_short_or_reset_body_is_retried_and_a_lasting_one_fails(s3_server: S3Server, store: S3Store,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean GET path reads the body in one call: a body cut short (FIN) or reset (RST) mid-way is
    an error of that attempt, retried, and never returned as shorter bytes."""
    from support.faultproxy import Fault, FaultProxy

    body = os.urandom(3 << 20)
    store.put("big", body)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        monkeypatch.setenv("WSFS_S3_MAX_ATTEMPTS", "3")
        via = open_store(f"s3://{s3_server.bucket}/{store.prefix}", endpoint_url=proxy.url)
        assert isinstance(via, S3Store)
        for fault in (Fault.truncate(), Fault.reset()):
            n = 0

            def first(method: str, path: str, query: str, fault: Fault = fault) -> Fault | None:
                nonlocal n
                n += 1
                return fault if n == 1 else None

            proxy.set_rule(first)
            assert via.get("big") == body
            assert n == 2
        proxy.set_rule(lambda m, p, q: Fault.truncate())
        with pytest.raises(StoreUnavailable):
            via.get("big")


# -- connections opened ahead (warm_connections) --------------------------------------------


class _CountingHttp:
    """A loopback HTTP endpoint answering every request 404 (keep-alive): counts connections and requests."""

    def __init__(self) -> None:
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        data = b""
        with conn:
            while True:
                try:
                    piece = conn.recv(65536)
                except OSError:
                    return
                if not piece:
                    return
                data += piece
                while b"\r\n\r\n" in data:
                    _, data = data.split(b"\r\n\r\n", 1)
                    with self.lock:
                        self.requests += 1
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.listener.close()


def test_warm_connections_are_opened_without_a_request_then_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    server = _CountingHttp()
    try:
        store = S3Store("bkt", endpoint_url=f"http://127.0.0.1:{server.port}")
        store.warm_connections(4)
        deadline = time.monotonic() + 10
        while server.connections < 4:
            assert time.monotonic() < deadline, f"{server.connections} connections opened"
            time.sleep(0.01)
        time.sleep(0.2)
        assert server.connections == 4 and server.requests == 0  # opened, nothing sent
        assert store.stats.requests == {}
        for k in range(6):  # one after the other: each takes a warm connection and gives it back
            assert not store.exists(f"k{k}")
        with pytest.raises(NotFound):
            store.get("k")
        assert server.requests == 7
        assert server.connections == 4  # no connection was opened for them
        store.warm_connections(4)  # the pool holds 4 open ones already: nothing more
        time.sleep(0.3)
        assert server.connections == 4
    finally:
        server.close()
