"""A store in an S3 bucket (AWS or any S3-compatible server), through botocore (boto3's core).

This module owns everything S3-specific: parsing ``s3://bucket/prefix`` URLs,
building the client (credentials from boto3's standard chain, endpoint
from the caller or ``AWS_ENDPOINT_URL``, retries and timeouts from
``WSFS_S3_*``), mapping keys under the store prefix, translating S3 and
botocore errors into :mod:`wsfs.errors` classes, and counting HTTP requests.
It imports only :mod:`wsfs.store.base` and :mod:`wsfs.errors` from wsfs, so
the layers above never see boto3.

Conditional creation (:meth:`S3Store.put_if_absent`) relies on the server
honouring ``If-None-Match: *`` on ``PutObject``; AWS S3 does since 2024, as do
moto and SeaweedFS (the test suite keeps a canary test for it).

Time: every request has a budget, ``timeout`` (``$WSFS_OP_TIMEOUT``,
default 30 s, or ``wsfs mount -o timeout=``).  botocore's own limits are
per attempt and per socket operation, so against an endpoint that accepts
connections and never answers they multiply: 5 attempts of 60 s each was
five minutes per read.  Here a retry starts only if its worst case (connect
plus read timeout) still fits in what is left of the budget, and the
per-attempt timeouts default to fractions of it, so a request that gets no
answer fails with :class:`~wsfs.errors.StoreTimeout` (exit 8, ``ETIMEDOUT``)
within the budget: at the defaults, a silent endpoint costs two attempts of
10 s.  The read timeout bounds each socket read, not a whole body: a 4 MiB
chunk arriving slowly but steadily is never cut off.  (The budget is per
call: a listing's pages share one.)

Configuration, read when a store is created (the timeouts' defaults follow
the budget T):

``WSFS_S3_MAX_ATTEMPTS``
    HTTP attempts per request, the first one included (default 3); fewer
    when the budget runs out first.
``WSFS_S3_CONNECT_TIMEOUT`` / ``WSFS_S3_READ_TIMEOUT``
    Seconds (defaults min(5, T/6) and T/3: 5 and 10 at T = 30).  A larger
    value lets the first attempt outlast the budget.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import botocore.config
import botocore.exceptions
import botocore.handlers
import botocore.loaders
import botocore.session
import botocore.utils
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError, ClientError

from wsfs.errors import (
    AccessDenied,
    AlreadyExists,
    NotFound,
    StoreTimeout,
    StoreUnavailable,
    UsageError,
    WsfsError,
)
from wsfs.store.base import STREAM_PIECE, StoreStats, check_key, default_timeout

# botocore operation name -> the op names StoreStats uses for every store kind.
_OPS = {
    "GetObject": "get",
    "PutObject": "put",
    "HeadObject": "head",
    "HeadBucket": "head",
    "ListObjectsV2": "list",
    "DeleteObject": "delete",
}

# S3 error codes that mean "your identity may not do this" rather than "try later".
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "Forbidden",
        "403",
    }
)

log = logging.getLogger(__name__)

# Errors while *streaming a response body*.  botocore's retry loop ends when the
# response headers arrive, so a connection that drops mid-body is ours to retry.
_ENDPOINT_LOG = logging.getLogger("botocore.endpoint")

_BODY_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.FlexibleChecksumError,
)



def _read_body(raw: Any, url: str) -> bytes:
    """The whole body of a streamed urllib3 response, its errors mapped as botocore's ``send`` maps them.

    urllib3 checks the length against Content-Length (a short body is an
    error, not a shorter blob) and returns the connection to the pool.
    """
    import urllib3.exceptions

    try:
        return raw.read() or b""
    except urllib3.exceptions.ReadTimeoutError as e:
        raise botocore.exceptions.ReadTimeoutError(endpoint_url=url, error=e) from None
    except urllib3.exceptions.ProtocolError as e:  # a connection reset or a short body (IncompleteRead)
        raise botocore.exceptions.ConnectionClosedError(endpoint_url=url, error=e) from None
    except Exception as e:  # noqa: BLE001 - as botocore: anything else is an HTTP client error
        raise botocore.exceptions.HTTPClientError(error=e) from None


# botocore's timeouts: no answer (or no connection) in time, after its retries.
_TIMEOUT_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
)

_CREDENTIAL_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.UnknownCredentialError,
)

# botocore's own client-side rule for bucket names; checked early for a clear message.
_BUCKET_RE = re.compile(r"^[A-Za-z0-9.\-_]{1,255}$")


class _S3Stats(StoreStats):
    """StoreStats that can add bytes without a request: the event hook already counted the GET."""

    def add_bytes(self, *, bytes_in: int = 0, bytes_out: int = 0) -> None:
        with self._lock:
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out


def _env_number(name: str, default: float, *, integer: bool = False) -> float:
    """A positive number from the environment, or *default*; a bad value is a usage error."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a {'whole ' if integer else ''}number") from None
    if value <= 0:
        raise UsageError(f"{name}={raw!r} must be greater than 0")
    return value


def _strip_userinfo(url: str) -> str:
    """An endpoint URL fit for messages: any ``user:password@`` part removed."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _backoff(attempt: int) -> None:
    """Sleep before retry number *attempt* (1-based): full jitter, 0.1 s doubling, capped at 5 s."""
    time.sleep(random.random() * min(5.0, 0.1 * 2 ** (attempt - 1)))


class _S3Loader(botocore.loaders.Loader):
    """botocore's data loader, answering "which services exist?" for S3 alone.

    Creating a client asks twice which services have a model of some type, and
    botocore answers by listing the directory of each of its ~420 services: 20
    ms warm, 60 ms after a cold boot, on every mount and CLI command.  This
    store only ever loads S3's models, so only S3's directory is looked at.
    Anything unexpected falls back to botocore's full scan.
    """

    def list_available_services(self, type_name: str) -> list[str]:
        try:
            for base in self._potential_locations():
                top = os.path.join(base, "s3")
                if os.path.isdir(top) and any(
                    self.file_loader.exists(os.path.join(top, version, type_name)) for version in os.listdir(top)
                ):
                    return ["s3"]
        except (AttributeError, OSError):  # a botocore without these internals, or an unreadable path
            pass
        return list(super().list_available_services(type_name))


def _data_paths(data_path: str | None) -> list[str] | None:
    """``AWS_DATA_PATH`` / ``data_path`` as botocore.loaders.create_loader reads it."""
    if data_path is None:
        return None
    return [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]


_LOADERS: dict[tuple[str, ...] | None, _S3Loader] = {}


def _loader(data_path: str | None) -> _S3Loader:
    """One loader per data path in this process, shared by every store's session.

    A loader caches the models it has parsed (S3's API, endpoint rules and
    partitions: ~0.1 s of CPU per client).  Sessions are per store, so
    without sharing every store pays that again; with it, only the first
    (``wsfs mountd`` pays it once for all the mounts it starts).  The cached
    models are read-only data.
    """
    paths = _data_paths(data_path)
    key = tuple(paths) if paths is not None else None
    loader = _LOADERS.get(key)
    if loader is None:
        loader = _LOADERS.setdefault(key, _S3Loader(paths))
    return loader


def warm_up() -> None:
    """Parse S3's models now, as creating a client does; no credentials read, no request sent.

    For a process that will create stores later and is waiting meanwhile (``wsfs mountd``).
    """
    session = botocore.session.Session()
    session.register_component("data_loader", _loader(session.get_config_variable("data_path")))
    for _ in range(2):  # the second client parses what the first left for later (endpoint rules)
        session.create_client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                              aws_access_key_id="warm-up", aws_secret_access_key="warm-up")  # noqa: S106


_WARM_MAX = 16  # connections warm_connections opens at most (the pool holds 48)


class _OutOfTime(Exception):
    """Raised by the ``before-send`` hook: another attempt would not fit in the request's budget.

    Not a botocore exception, so botocore neither retries nor wraps it; the
    store method turns it into :class:`~wsfs.errors.StoreTimeout`.
    """


class _Budget(threading.local):
    """The current request's deadline in this thread (per thread: a store is shared by threads)."""

    depth = 0  # nested calls (put_if_absent reading back) share the outermost budget
    started = 0.0
    deadline = 0.0
    attempts = 0
    op = ""  # the outermost call's kind, for the retry and error counters


EXPECT_MIN = 8 * 1024 * 1024  # a PUT body at least this large waits for "100 Continue" (see S3Store)


def _expect_large_bodies(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
    """botocore's ``add_expect_header`` for bodies of at least ``EXPECT_MIN`` bytes only."""
    body = params.get("body")
    if body is None or not hasattr(body, "read"):
        return
    size = botocore.utils.determine_content_length(body)
    if size is not None and size < EXPECT_MIN:
        return
    botocore.handlers.add_expect_header(model, params, **kwargs)


class S3Store:
    """An :class:`~wsfs.store.base.ObjectStore` under ``s3://bucket/prefix``.

    Request counting is exact per HTTP request: a ``before-send`` event
    handler counts every *attempt* botocore makes, retries included (a GET
    retried twice after 503s counts three ``get``; an attempt that could not
    connect counts too), under the op names ``get``, ``put``, ``head``,
    ``list`` and ``delete``.  ``bytes_out`` adds the body size of every PUT
    attempt; ``bytes_in`` adds the bytes each successful read returned.
    Without retries the counts equal :class:`~wsfs.store.local.LocalStore`'s
    for the same calls.
    """

    def __init__(
        self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, timeout: float | None = None
    ) -> None:
        if not _BUCKET_RE.match(bucket):
            raise UsageError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.stats = _S3Stats()
        # Every S3 key is _root + store key; "" when the store is the whole bucket.
        self._root = f"{prefix}/" if prefix else ""

        self.timeout = timeout if timeout is not None else default_timeout()
        self._max_attempts = int(_env_number("WSFS_S3_MAX_ATTEMPTS", 3, integer=True))
        connect_timeout = _env_number("WSFS_S3_CONNECT_TIMEOUT", min(5.0, self.timeout / 6))
        read_timeout = _env_number("WSFS_S3_READ_TIMEOUT", self.timeout / 3)
        # The longest an attempt can wait without receiving a byte: a retry
        # starts only if this much of the budget is left (_check_budget).
        self._attempt_worst = connect_timeout + read_timeout
        self._read_timeout = read_timeout
        self._budget = _Budget()
        # boto3 would read AWS_ENDPOINT_URL[_S3] by itself, but we need to know
        # whether an endpoint is set: custom endpoints get path-style addressing
        # (most S3-compatible servers have no wildcard DNS for bucket hosts).
        endpoint = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        config = botocore.config.Config(
            # total_max_attempts counts the first attempt; botocore's "max_attempts"
            # key would mean retries and give one attempt more than asked for.
            retries={"total_max_attempts": self._max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=48,  # the blob cache: 8 large GETs + 32 small ones, plus metadata
            tcp_keepalive=True,
            s3={"addressing_style": "path"} if endpoint else None,
            # No CRC32 of every GET body (botocore's default since 1.36): what
            # wsfs reads in bulk, blobs and manifests, is content-addressed and
            # verified with blake3 above this layer, and the CRC cost about as
            # much CPU as blake3.  The small JSON objects (descriptor, version
            # records, tags) are parsed and validated, and https, where used,
            # authenticates every byte.  Uploads keep their checksums
            # (request_checksum_calculation stays "when_supported").
            response_checksum_validation="when_required",
        )
        try:
            # A session per store: a shared default session is global state, and
            # creating clients from one session in several threads is unsafe.
            # botocore rather than boto3: the same client (boto3's Session.client
            # is a thin wrapper), without importing boto3 and s3transfer, which
            # cost every mount and CLI command about 0.1 s (``-X importtime``).
            session = botocore.session.Session()
            data_path = session.get_config_variable("data_path")
            session.register_component("data_loader", _loader(data_path))
            self._client: Any = session.create_client("s3", endpoint_url=endpoint, config=config)
        except botocore.exceptions.ProfileNotFound as e:
            raise UsageError(f"AWS profile {e.kwargs.get('profile')!r} is not configured") from None
        except ValueError as e:  # botocore rejects a malformed endpoint URL with ValueError
            raise UsageError(f"invalid S3 endpoint URL {_strip_userinfo(str(endpoint))!r}: {e}") from None
        self.endpoint = _strip_userinfo(self._client.meta.endpoint_url)
        # GETs of objects skip botocore's request pipeline (parameter validation,
        # endpoint rules, event hooks, response parsing: 1.9 of 2.0 ms of CPU per
        # GET): signed with the client's credentials, sent on the client's own
        # HTTP session (same pool, timeouts, TLS and proxy settings).  Only with
        # path-style addressing (a configured endpoint), where the URL is plain;
        # anything but a 200/206/404 answer goes back to the client's path.
        http = getattr(getattr(self._client, "_endpoint", None), "http_session", None)
        self._fast_http = http if endpoint and http is not None and hasattr(http, "send") else None
        # botocore asks every PUT with a body to wait for "100 Continue" before sending it: a second
        # round trip per upload (a 50 KB PUT at 20 ms RTT took 40 ms + the server's time).  Only bodies
        # where the wait can save much (an error answered before megabytes are sent) keep it.
        self._client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        self._client.meta.events.register("before-call.s3", _expect_large_bodies, unique_id="wsfs-expect")
        # The budget first: an attempt it stops is not sent, so it is not counted.
        self._client.meta.events.register(
            "before-send.s3", self._check_budget, unique_id=f"wsfs-budget-{id(self)}"
        )
        self._client.meta.events.register(
            "before-send.s3", self._count_request, unique_id=f"wsfs-count-{id(self)}"
        )
        self._client.meta.events.register_first(
            "needs-retry.s3", self._check_retry, unique_id=f"wsfs-retry-budget-{id(self)}"
        )

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None, *, timeout: float | None = None) -> S3Store:
        """The store for ``s3://bucket`` or ``s3://bucket/some/prefix``."""
        if not url.startswith("s3://"):
            raise UsageError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix)")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise UsageError(f"no bucket in S3 URL {url!r}")
        return cls(bucket, prefix, endpoint_url=endpoint_url, timeout=timeout)

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint!r})"

    # -- plumbing -----------------------------------------------------------

    @contextmanager
    def _request(self, op: str, key: str | None) -> Iterator[None]:
        """The budget of one store call (see the module docstring); nested calls share the outer one."""
        b = self._budget
        if b.depth == 0:
            b.started = time.monotonic()
            b.deadline = b.started + self.timeout
            b.attempts = 0
            b.op = op
        b.depth += 1
        failed = False
        try:
            yield
        except _OutOfTime:
            failed = True
            raise self._timeout(op, key) from None
        except (NotFound, AlreadyExists):
            raise  # answers, not failures
        except BaseException:
            failed = True
            raise
        finally:
            b.depth -= 1
            if failed and b.depth == 0:
                self.stats.count_error(op)

    def _fits(self) -> bool:
        """Whether another attempt's worst case fits in the current budget (the first always does)."""
        b = self._budget
        return b.depth == 0 or b.attempts == 0 or time.monotonic() + self._attempt_worst <= b.deadline

    def _check_budget(self, **kwargs: Any) -> None:
        """botocore ``before-send`` hook (every attempt, retries included): stop when time is up."""
        if not self._fits():
            raise _OutOfTime()
        if self._budget.attempts and self._budget.depth:
            self.stats.count_retry(self._budget.op)
        self._budget.attempts += 1

    def _check_retry(self, response: Any = None, caught_exception: Any = None, attempts: int = 1,
                     **kwargs: Any) -> None:
        """botocore ``needs-retry`` hook, before its backoff pause: give up now rather than sleep in vain.

        A failure botocore would retry (no response, a 5xx, a 429) is given up
        on at once when the pause (at most ``2 ** attempts`` s in standard
        mode) plus another attempt's worst case would overrun the budget.
        Anything else is left to botocore (a 404 is not retried at all).
        """
        b = self._budget
        if not b.depth:
            return
        status = response[0].status_code if response is not None else None
        if caught_exception is None and not (status is not None and (status >= 500 or status == 429)):
            return
        if time.monotonic() + min(20, 2**attempts) + self._attempt_worst > b.deadline:
            raise _OutOfTime()

    def _timeout(self, op: str, key: str | None) -> StoreTimeout:
        what = f"{op} {key}" if key is not None else f"{op} bucket {self.bucket!r}"
        b = self._budget
        if not b.depth:  # a body streaming after its request returned (get_stream)
            return StoreTimeout(
                f"S3 endpoint {self.endpoint} stopped sending ({what}: nothing for {self._read_timeout:g} s)"
            )
        waited = max(1, round(time.monotonic() - b.started))
        return StoreTimeout(
            f"S3 endpoint {self.endpoint} did not answer within {waited} s "
            f"({what}, {b.attempts} attempt{'' if b.attempts == 1 else 's'})"
        )

    def _count_request(self, request: Any, event_name: str, **kwargs: Any) -> None:
        """botocore ``before-send`` hook: runs once per HTTP attempt, retries included.

        Returns None so botocore goes on to send the request.
        """
        operation = event_name.rpartition(".")[2]
        op = _OPS.get(operation, operation.lower())
        bytes_out = 0
        if op == "put":
            # The body is a stream here; the header is the size on the wire.
            bytes_out = int(request.headers.get("Content-Length") or 0)
        self.stats.count(op, bytes_out=bytes_out)

    def _key(self, key: str) -> str:
        return self._root + check_key(key)

    def _folder(self, prefix: str) -> str:
        """The S3 prefix for a store folder (``""`` or ``a/b/``; ``a/b`` is taken as ``a/b/``, like LocalStore)."""
        if not prefix:
            return self._root
        folder = prefix.rstrip("/")
        check_key(folder)
        return f"{self._root}{folder}/"

    def _error(self, e: Exception, key: str | None, *, op: str) -> WsfsError:
        """The wsfs error for a boto3 exception: one line, no credentials, names the endpoint."""
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code") or "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # HEAD responses have no body, so a missing bucket or key is a bare "404".
            if code == "NoSuchBucket" or (key is None and (code in ("404", "NotFound") or status == 404)):
                return NotFound(f"S3 bucket {self.bucket!r} does not exist at {self.endpoint}")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return NotFound(f"no object {key!r} in {self.url}")
            if code in _DENIED_CODES or status == 403:
                return AccessDenied(f"access denied to {self.url} at {self.endpoint} ({code or status})")
            return StoreUnavailable(
                f"S3 {op} {key if key is not None else self.bucket!r} failed at {self.endpoint}: "
                f"{code or 'HTTP error'} (HTTP {status})"
            )
        if isinstance(e, _CREDENTIAL_ERRORS):
            return AccessDenied(
                f"no S3 credentials found for {self.endpoint} ({type(e).__name__}; "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            )
        if isinstance(e, _TIMEOUT_ERRORS):
            return self._timeout(op, key)
        if isinstance(e, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError):
            return StoreUnavailable(
                f"S3 endpoint {self.endpoint} is unreachable ({type(e).__name__} "
                f"after {self._max_attempts} attempts)"
            )
        # Other botocore errors carry no secrets, but their text can be long: keep the type.
        return StoreUnavailable(f"S3 {op} on {self.url} at {self.endpoint} failed ({type(e).__name__})")

    @staticmethod
    def _code(e: ClientError) -> tuple[str, int | None]:
        return (
            str(e.response.get("Error", {}).get("Code") or ""),
            e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
        )

    def _read(self, key: str, byte_range: str | None) -> bytes:
        """GET an object (or a range of it), retrying failures while the body streams."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if byte_range is not None:
            kwargs["Range"] = byte_range
        attempt = 0
        with self._request("get", key):
            fast = self._fast_get(key, byte_range)
            if fast is not None:
                return fast
            while True:
                attempt += 1
                try:
                    response = self._client.get_object(**kwargs)
                except ClientError as e:
                    code, status = self._code(e)
                    if byte_range is not None and (code == "InvalidRange" or status == 416):
                        # The range starts at or past the end: like pread, return nothing.
                        return b""
                    raise self._error(e, key, op="get") from None
                except BotoCoreError as e:
                    raise self._error(e, key, op="get") from None
                body = response["Body"]
                try:
                    data = body.read()
                except _BODY_ERRORS as e:
                    body.close()
                    if attempt < self._max_attempts and self._fits():
                        _backoff(attempt)
                        continue
                    raise self._error(e, key, op="get") from None
                self.stats.add_bytes(bytes_in=len(data))
                return data

    def _fast_get(self, key: str, byte_range: str | None) -> bytes | None:
        """A GET outside botocore's pipeline (see ``_fast_http``); None: let the client do it.

        Attempts, retries (connection failures, 5xx, 429: up to
        ``WSFS_S3_MAX_ATTEMPTS``, within the budget) and errors are those of
        the client's path: a failure is mapped by :meth:`_error` from the same
        botocore exception, or from a ``ClientError`` built from the answer.
        A range past the end (416) returns None, for the client to answer.
        """
        http = self._fast_http
        creds = getattr(getattr(self._client, "_request_signer", None), "_credentials", None)
        if http is None or creds is None:
            return None
        url = f"{self._client.meta.endpoint_url.rstrip('/')}/{self.bucket}/{quote(self._key(key), safe='/~')}"
        events = self._client.meta.events
        attempt = 0
        while True:
            attempt += 1
            request = AWSRequest(method="GET", url=url, headers={"Range": byte_range} if byte_range else {})
            try:
                S3SigV4Auth(creds.get_frozen_credentials(), "s3", self._client.meta.region_name).add_auth(request)
            except Exception:  # noqa: BLE001 - no usable credentials: the client says why
                return None
            prepared = request.prepare()
            # What botocore's endpoint logs at debug level (-vv), masked as the client's lines are.
            _ENDPOINT_LOG.debug("Sending http request: %s", prepared)
            try:
                # As botocore's endpoint does: the before-send hooks (our budget
                # check and request count, a test's fault injector) may answer.
                answered = [r for _, r in events.emit("before-send.s3.GetObject", request=prepared) if r is not None]
                if answered:
                    response = answered[0]
                    status, data = response.status_code, response.content
                else:
                    # The body is read below in one call: botocore's own read (``AWSResponse.content``)
                    # goes through urllib3 in 64 KiB pieces, then joins them, ~0.8 s of CPU per GiB.
                    prepared.stream_output = True
                    response = http.send(prepared)
                    status, data = response.status_code, _read_body(response.raw, url)
            except (BotoCoreError, *_BODY_ERRORS) as e:
                if attempt < self._max_attempts:
                    self._check_retry(caught_exception=e, attempts=attempt)  # as botocore asks it: room left?
                    _backoff(attempt)
                    continue
                raise self._error(e, key, op="get") from None
            if status in (200, 206):
                self.stats.add_bytes(bytes_in=len(data))
                return data
            if status == 416:
                return None
            if (status >= 500 or status == 429) and attempt < self._max_attempts:
                self._check_retry(response=(response, None), attempts=attempt)
                _backoff(attempt)
                continue
            m = re.search(rb"<Code>([^<]{1,100})</Code>", data or b"")
            code = m.group(1).decode("ascii", "replace") if m else str(status)
            error = ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
            raise self._error(error, key, op="get")

    def warm_connections(self, n: int) -> None:
        """Open up to *n* connections to the endpoint now, in the background, idle in the client's pool.

        No request is sent: nothing is counted.  A cold mount's first requests come in a burst (listing
        pieces, the first ranges, the pack map) while the pool holds the one connection that fetched the
        record: each other request would first pay a connection setup (TCP, and TLS for https: one to
        three round trips) on the way to the first ``ls``.  Opened while the record and top are fetched,
        they are ready for the burst (``docs/benchmarks.md``, "mountd").  Best effort through urllib3's
        pool interface (``_get_conn``/``_put_conn``, as urllib3 itself uses them); not through a proxy;
        anything unexpected opens nothing.
        """
        http = getattr(getattr(self._client, "_endpoint", None), "http_session", None)
        url = self._client.meta.endpoint_url
        try:
            if http._proxy_config.proxy_url_for(url):
                return
            pool = http._get_connection_manager(url).connection_from_url(url)
            http._setup_ssl_cert(pool, url, http._verify)
        except Exception:  # noqa: BLE001 - another botocore or urllib3: no warm-up, nothing else changes
            log.debug("no connection warm-up with this botocore/urllib3", exc_info=True)
            return

        def connect(conn: Any) -> None:
            try:
                conn.connect()
            except Exception as e:  # noqa: BLE001 - a failed warm-up is the first request's to report
                log.debug("connection warm-up to %s: %s", self.endpoint, e)
                conn.close()
            finally:
                pool._put_conn(conn)

        # All taken out first (no I/O): a connection one thread opened and put back is not another's to skip.
        taken = []
        try:
            for _ in range(max(0, min(n, _WARM_MAX))):
                taken.append(pool._get_conn())
        except Exception:  # noqa: BLE001 - a closed pool: nothing to warm
            pass
        for conn in taken:
            if conn.sock is None:
                threading.Thread(target=connect, args=(conn,), name="wsfs-s3-warm", daemon=True).start()
            else:
                pool._put_conn(conn)  # open already

    # -- the ObjectStore protocol ---------------------------------------------

    def check(self) -> None:
        with self._request("head", None):
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except (ClientError, BotoCoreError) as e:
                raise self._error(e, None, op="head") from None

    def get(self, key: str) -> bytes:
        return self._read(key, None)

    def get_stream(self, key: str, piece: int = STREAM_PIECE) -> Generator[bytes, None, None]:
        # The budget covers the request; the body then streams for as long as
        # pieces keep coming (each socket read has the read timeout).
        with self._request("get", key):
            try:
                body = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            except (ClientError, BotoCoreError) as e:
                raise self._error(e, key, op="get") from None
        return self._pieces(key, body, piece)

    def _pieces(self, key: str, body: Any, piece: int) -> Generator[bytes, None, None]:
        try:
            while data := body.read(piece):  # checks the length against Content-Length at the end
                self.stats.add_bytes(bytes_in=len(data))
                yield data
        except _BODY_ERRORS as e:
            raise self._error(e, key, op="get") from None
        finally:
            body.close()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"invalid range start={start} length={length}")
        if length == 0:
            # HTTP cannot express an empty range; read one byte so a missing key
            # still raises NotFound and the request is counted like any read.
            self._read(key, f"bytes={start}-{start}")
            return b""
        return self._read(key, f"bytes={start}-{start + length - 1}")

    def put(self, key: str, data: bytes) -> None:
        s3_key = self._key(key)
        with self._request("put", key):
            try:
                self._client.put_object(Bucket=self.bucket, Key=s3_key, Body=bytes(data))
            except (ClientError, BotoCoreError) as e:
                raise self._error(e, key, op="put") from None

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create the object with ``If-None-Match: *``; ``AlreadyExists`` if the key exists.

        Two cases need care.  A ``409 ConditionalRequestConflict`` (a concurrent
        conditional write was in flight) is retried, since our write was not
        applied.  A ``412`` after botocore retried our request is ambiguous: an
        earlier attempt of ours may have landed before its response was lost.
        We then read the object back and call it ours if its bytes equal *data*.
        """
        s3_key = self._key(key)
        body = bytes(data)
        attempt = 0
        with self._request("put", key):
            while True:
                attempt += 1
                try:
                    self._client.put_object(Bucket=self.bucket, Key=s3_key, Body=body, IfNoneMatch="*")
                    return
                except ClientError as e:
                    code, status = self._code(e)
                    if code == "PreconditionFailed" or status == 412:
                        retried = e.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0
                        if retried and self._holds(key, body):
                            return
                        raise AlreadyExists(f"object {key!r} already exists in {self.url}") from None
                    if code == "ConditionalRequestConflict" and attempt < self._max_attempts and self._fits():
                        _backoff(attempt)
                        continue
                    raise self._error(e, key, op="put") from None
                except BotoCoreError as e:
                    raise self._error(e, key, op="put") from None

    def _holds(self, key: str, data: bytes) -> bool:
        """Whether *key* exists with exactly *data*."""
        try:
            return self.get(key) == data
        except NotFound:
            return False

    def exists(self, key: str) -> bool:
        """Whether the key exists.  A missing bucket also reads as False: HEAD cannot tell them apart."""
        s3_key = self._key(key)
        with self._request("head", key):
            try:
                self._client.head_object(Bucket=self.bucket, Key=s3_key)
            except ClientError as e:
                code, status = self._code(e)
                if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                    return False
                raise self._error(e, key, op="head") from None
            except BotoCoreError as e:
                raise self._error(e, key, op="head") from None
        return True

    def list(self, prefix: str) -> Iterator[str]:
        """Every key under *prefix*, relative to the store, sorted by code point.

        Sorted here rather than trusting server order: S3 sorts by UTF-8 bytes
        (the same order), but some compatible servers (SeaweedFS) list a
        folder's sub-folders before its other names, e.g. ``a/b`` before ``a-c``.
        """
        return (key for key, _ in self.list_sizes(prefix))

    def list_sizes(self, prefix: str) -> Iterator[tuple[str, int]]:
        folder = self._folder(prefix)
        keys: list[tuple[str, int]] = []
        with self._request("list", prefix or ""):
            try:
                for page in self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=folder
                ):
                    for obj in page.get("Contents", ()):
                        rel = obj["Key"][len(self._root) :]
                        # Folder marker objects ("a/") made by other tools are not keys.
                        if rel and not rel.endswith("/"):
                            keys.append((rel, int(obj.get("Size", 0))))
            except (ClientError, BotoCoreError) as e:
                raise self._error(e, prefix or "", op="list") from None
        keys.sort()
        return iter(keys)

    def list_dirs(self, prefix: str) -> list[str]:
        folder = self._folder(prefix)
        names: set[str] = set()
        with self._request("list", prefix or ""):
            try:
                for page in self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=folder, Delimiter="/"
                ):
                    for common in page.get("CommonPrefixes", ()):
                        name = common["Prefix"][len(folder) :].rstrip("/")
                        if name:
                            names.add(name)
            except (ClientError, BotoCoreError) as e:
                raise self._error(e, prefix or "", op="list") from None
        return sorted(names)

    def delete(self, key: str) -> None:
        s3_key = self._key(key)
        with self._request("delete", key):
            try:
                self._client.delete_object(Bucket=self.bucket, Key=s3_key)
            except ClientError as e:
                code, _status = self._code(e)
                if code == "NoSuchKey":  # S3 answers 204 for a missing key; some servers say 404
                    return
                raise self._error(e, key, op="delete") from None
            except BotoCoreError as e:
                raise self._error(e, key, op="delete") from None
