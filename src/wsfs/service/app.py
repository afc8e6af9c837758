"""The Starlette application of ``wsfs serve``: routes, HTTP caching and ranges, JSON errors, auth.

Handlers parse and check the request on the event loop (cheap), then run
the blocking work on the backend's pools (``Backend.meta`` for records and
manifest queries, ``Backend.blobs`` for content) with
``loop.run_in_executor``: the event loop never touches the store, a disk
cache or SQLite.  File bodies are streamed part by part (4 MiB, a few in
flight), so memory per response is bounded whatever the file's size.  The
rules are in ``docs/api.md``; ``service.openapi`` describes the same routes.
Imports ``service.*``, ``format``, ``errors``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import functools
import logging
import os
import re
import stat
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from wsfs.errors import (
    FormatError,
    IntegrityError,
    NotADirectory,
    NotFound,
    StoreTimeout,
    StoreUnavailable,
    UsageError,
    WsfsError,
)
from wsfs.format.manifest import Inode
from wsfs.format.names import check_workspace
from wsfs.format.records import VersionRecord
from wsfs.service.auth import AuthConfig, Forbidden, Grant, Unauthorized
from wsfs.service.backend import (
    MAX_PAGE,
    ArchiveStream,
    Backend,
    FileInfo,
    IsDirectory,
    IsSymlink,
    kind,
    record_json,
)
from wsfs.service.metrics import HttpMetrics
from wsfs.service.names import named, query_path, query_values, url_path_names
from wsfs.service.openapi import document
from wsfs.service.upload import version_from_tar

log = logging.getLogger(__name__)

T = TypeVar("T")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # `latest` and listings: may be stored, but asked again every time (ETag still works)
ARCHIVE_WAIT_POLLS = 100  # 5 s of waiting for an archive slot before answering 503
_FILE_PREFIX = 7  # b"", v1, workspaces, {ws}, versions, {v}, files: the segments before a file's path


MAX_UPLOADS = 2  # tar bodies received and pushed at once


class ClosingStreamingResponse(StreamingResponse):
    """A streamed response whose body is always closed when the response ends, however it ends.

    Starlette cancels a stream whose client left while it waits in ``send``;
    ``async for`` does not close the generator then, so its ``finally`` (which
    frees an archive slot, or cancels read-ahead) would wait for the garbage
    collector, minutes on a quiet server.  Here it runs at once, shielded from
    the cancellation that ended the response.
    """

    body_iterator: AsyncIterator[Any]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await asyncio.shield(self.body_iterator.aclose())


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The JSON error body every failure has: ``{"error": code, "detail": message, ...}``."""
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status, headers=headers)


def _wsfs_error(e: WsfsError) -> JSONResponse:
    if isinstance(e, IsSymlink):
        return error(409, "symlink", str(e), {"X-Wsfs-Symlink-Target": named("target", e.target)["target_pct"]},
                     **named("path", e.path), **named("target", e.target))
    if isinstance(e, IsDirectory):
        return error(409, "not_a_file", str(e) + " (list a directory with .../tree?path=, fetch it with .../archive?path=)",
                     type=e.kind)
    if isinstance(e, NotADirectory):
        return error(409, "not_a_directory", str(e))
    if isinstance(e, UsageError):  # InvalidName too
        return error(400, "bad_request", str(e))
    if isinstance(e, NotFound):
        return error(404, "not_found", str(e))
    if isinstance(e, IntegrityError):
        log.error("integrity error: %s", e)
        return error(502, "integrity_error", f"the store holds bad data; nothing of it was served: {e}")
    if isinstance(e, StoreTimeout):
        return error(504, "store_timeout", str(e))
    if isinstance(e, StoreUnavailable):
        log.error("store unavailable: %s", e)
        return error(503, "store_unavailable", str(e), {"Retry-After": "5"})
    if isinstance(e, FormatError):
        return error(500, "unsupported_format", str(e))
    log.error("request failed: %s", e)
    return error(500, "internal_error", str(e))


# -- HTTP helpers ----------------------------------------------------------------

_RANGE_RE = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")
UNSATISFIABLE = (-1, -1)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=`` range; None to ignore the header (serve 200); UNSATISFIABLE for 416.

    Ignored (RFC 9110 allows a server to): another unit, a malformed value,
    several ranges (no multipart/byteranges; the whole file is sent).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return None
    if "," in spec:
        return None
    m = _RANGE_RE.fullmatch(spec)
    if not m or (not m[1] and not m[2]):
        return None
    if not m[1]:  # suffix: the last N bytes
        n = int(m[2])
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - n), size
    first = int(m[1])
    last = int(m[2]) if m[2] else None
    if last is not None and last < first:
        return None  # invalid syntax: ignored
    if first >= size:
        return UNSATISFIABLE
    return first, (size if last is None else min(last + 1, size))


def etag_matches(header: str, etag: str) -> bool:
    """``If-None-Match``: weak comparison against any listed tag, or ``*``."""
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def if_range_ok(header: str | None, etag: str) -> bool:
    """Whether a ``Range`` applies under ``If-Range``: only a strong match of our ETag (a date never matches)."""
    return header is None or header.strip() == etag


def _int(q: dict[str, bytes], name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = q.get(name)
    if raw is None or raw == b"":
        return default
    try:
        n = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise UsageError(f"{name} must be an integer") from None
    if not lo <= n <= hi:
        raise UsageError(f"{name} must be in [{lo}, {hi}]")
    return n


def _ascii(q: dict[str, bytes], name: str) -> str | None:
    raw = q.get(name)
    if raw is None or raw == b"":
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"{name} must be ASCII") from None


def encode_cursor(name: bytes) -> str:
    """The ``next`` cursor of a tree page: base64url of the last name, unpadded (the same verbatim or urlencoded)."""
    return base64.urlsafe_b64encode(name).decode().rstrip("=")


def decode_cursor(text: str) -> bytes:
    """The name an ``after`` cursor holds; a value this API did not give is a 400."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("after: not a cursor this API gave") from None


def entry_json(name: bytes, node: Inode) -> dict[str, Any]:
    """One directory entry's attributes."""
    d: dict[str, Any] = {
        **named("name", name),
        "type": kind(node.mode),
        "mode": stat.S_IMODE(node.mode),
        "size": node.size,
        "mtime_ns": node.mtime_ns,
        "uid": node.uid,
        "gid": node.gid,
        "nlink": node.nlink,
    }
    if node.is_reg and node.content is not None:
        d["etag"] = f'"{node.content.hex()}"'
    if node.is_link:
        d.update(named("target", node.target or b""))
    if stat.S_ISCHR(node.mode) or stat.S_ISBLK(node.mode):
        d["rdev"] = node.rdev
    return d


# -- the application ------------------------------------------------------------------


def create_app(backend: Backend, auth: AuthConfig | None = None) -> HttpMetrics:
    """The ASGI application serving *backend*; with *auth*, every ``/v1`` request needs a bearer token.

    The Starlette application is wrapped by the metrics middleware (its ``.app``).
    """

    async def meta(fn: Callable[..., T], *args: Any) -> T:
        """*fn* on the backend's metadata pool."""
        return await asyncio.get_running_loop().run_in_executor(backend.meta, functools.partial(fn, *args))

    def authorize(request: Request, ws: str | None) -> Grant | None:
        """The request's grant (None without a token config); 401/403 unless it may read *ws*."""
        if auth is None:
            return None
        grant = auth.check(request.headers.get("authorization"))
        if ws is not None and not grant.allows(ws):
            raise Forbidden(f"token {grant.name!r} may not read workspace {ws!r}")
        return grant

    def workspace(request: Request) -> str:
        """The checked, authorized ``{ws}`` of the request."""
        ws = check_workspace(request.path_params["ws"])
        authorize(request, ws)
        return ws

    async def version(request: Request) -> tuple[VersionRecord, bool]:
        """``(record, immutable)`` of the request's ``{ws}`` and ``{v}``."""
        ws = workspace(request)
        return await meta(backend.resolve, ws, request.path_params["v"])

    def query(request: Request) -> dict[str, bytes]:
        """The query parameters, values as bytes (``service.names``)."""
        return query_values(request.scope.get("query_string", b""))

    async def index(request: Request) -> Response:
        return JSONResponse({"api": "/v1", "openapi": "/openapi.json", "docs": "docs/api.md"})

    async def openapi(request: Request) -> Response:
        return JSONResponse(document(), headers={"Cache-Control": REVALIDATE})

    async def list_workspaces(request: Request) -> Response:
        grant = authorize(request, None)
        names = await meta(backend.workspaces)
        if grant is not None:
            names = [w for w in names if grant.allows(w)]
        return JSONResponse({"workspaces": [{"name": w} for w in names]}, headers={"Cache-Control": REVALIDATE})

    async def list_versions(request: Request) -> Response:
        ws = workspace(request)
        q = query(request)
        before = _int(q, "after", None, 1, 10**18)
        limit = _int(q, "limit", 100, 1, MAX_PAGE)
        assert limit is not None
        records, nxt = await meta(backend.versions_page, ws, before, limit)
        return JSONResponse({"workspace": ws, "versions": [record_json(r) for r in records], "next": nxt},
                            headers={"Cache-Control": REVALIDATE})

    async def get_version(request: Request) -> Response:
        record, immutable = await version(request)
        return JSONResponse(record_json(record), headers={"Cache-Control": IMMUTABLE if immutable else REVALIDATE})

    async def tags(request: Request) -> Response:
        ws = workspace(request)
        return JSONResponse({"workspace": ws, "tags": await meta(backend.tags, ws)}, headers={"Cache-Control": REVALIDATE})

    async def tree(request: Request) -> Response:
        """``GET .../tree?path=&after=&limit=``: one page of one directory."""
        record, immutable = await version(request)
        q = query(request)
        names = query_path(q.get("path", b""))
        after = _ascii(q, "after")
        limit = _int(q, "limit", MAX_PAGE, 1, MAX_PAGE)
        assert limit is not None
        _, entries, nxt = await meta(backend.tree_page, record, names, None if after is None else decode_cursor(after), limit)
        return JSONResponse(
            {
                "workspace": record.workspace,
                "version": record.version,
                **named("path", b"/".join(names)),
                "entries": [entry_json(n, node) for n, node in entries],
                "next": None if nxt is None else encode_cursor(nxt),
            },
            headers={"Cache-Control": IMMUTABLE if immutable else REVALIDATE},
        )

    async def content(info: FileInfo, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        """Bytes ``[start, end)`` of a file, verified, parts read ahead on the blob pool.

        A part whose chunk read-ahead has already brought into the blob
        cache's memory (verified bytes) is taken from there on the event loop,
        with no thread hop; the others are read on the pool.
        """
        loop = asyncio.get_running_loop()
        parts = info.parts(start, end)
        ahead: collections.deque[asyncio.Future[bytes | memoryview]] = collections.deque()
        done = -1
        try:
            while True:
                while len(ahead) < backend.read_ahead:
                    p = next(parts, None)
                    if p is None:
                        break
                    data = backend.recall_part(info, p)
                    if data is not None:
                        f: asyncio.Future[bytes | memoryview] = loop.create_future()
                        f.set_result(data)
                        ahead.append(f)
                    else:
                        ahead.append(loop.run_in_executor(backend.blobs, backend.read_part, info, p))
                    done = backend.prefetch(info, p, done, end)
                if not ahead:
                    return
                yield await ahead.popleft()
        finally:
            for f in ahead:
                f.cancel()

    async def files(request: Request) -> Response:
        """``GET|HEAD .../files/{path}``: verified bytes, ranges, conditionals (docs/api.md, "Files")."""
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        segments = raw.split(b"/")
        if len(segments) < _FILE_PREFIX or segments[_FILE_PREFIX - 1] != b"files":
            return error(400, "bad_request", "expected /v1/workspaces/{ws}/versions/{v}/files/{path}")
        segments = segments[_FILE_PREFIX:]
        if segments and segments[-1] == b"":
            segments.pop()  # a trailing slash
        ws = workspace(request)  # authorization first: a client without a token learns nothing from a 400
        names = url_path_names(segments)
        v = request.path_params["v"]
        known = backend.known_file(ws, v, names)
        if known is not None:
            info, immutable = known, True
        else:
            info, immutable = await meta(backend.file_at, ws, v, names)
        record = info.record
        etag = f'"{info.etag}"'
        headers = {
            "ETag": etag,
            "Cache-Control": IMMUTABLE if immutable else REVALIDATE,
            "Accept-Ranges": "bytes",
            "X-Content-Type-Options": "nosniff",
            "Content-Type": "application/octet-stream",
        }
        inm = request.headers.get("if-none-match")
        if inm is not None and etag_matches(inm, etag):
            return Response(status_code=304, headers={k: headers[k] for k in ("ETag", "Cache-Control")})
        start, end, status = 0, info.size, 200
        rng = request.headers.get("range")
        if rng is not None and if_range_ok(request.headers.get("if-range"), etag):
            r = parse_range(rng, info.size)
            if r == UNSATISFIABLE:
                return error(416, "range_not_satisfiable", f"the file has {info.size} bytes",
                             {"Content-Range": f"bytes */{info.size}", **{k: headers[k] for k in ("ETag", "Accept-Ranges")}})
            if r is not None:
                start, end, status = r[0], r[1], 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        body = content(info, start, end)
        # The first part is read before the status line goes out: a file whose
        # first bytes do not verify (every small file) gets a JSON error, not a cut stream.
        try:
            first = await anext(body, None)
        except BaseException:
            await body.aclose()
            raise

        async def stream() -> AsyncIterator[bytes | memoryview]:
            try:
                if first is not None:
                    yield first
                async for piece in body:
                    yield piece
            except WsfsError as e:
                # Headers are out: all that is left is to cut the response short (the client sees fewer bytes
                # than Content-Length), never to send a byte that did not verify.
                log.error("%s@%d %s: response cut after a failure: %s", record.workspace, record.version,
                          info.path.decode(errors="replace"), e)
                raise
            finally:
                await body.aclose()

        return ClosingStreamingResponse(stream(), status_code=status, headers=headers)

    async def archive(request: Request) -> Response:
        """``GET .../archive?path=``: a subtree as a tar stream built by a thread of its own."""
        record, immutable = await version(request)
        names = query_path(query(request).get("path", b""))
        node = await meta(backend.stat_path, record, names)
        if node.is_link and names:
            raise IsSymlink(b"/".join(names), node.target or b"")
        # A slot is freed when an archive ends or its client is seen gone: wait for one a little (polling,
        # not a thread: the archives' own threads must never wait behind requests for a slot).
        for _ in range(ARCHIVE_WAIT_POLLS):
            if backend.archives.acquire(blocking=False):
                break
            await asyncio.sleep(0.05)
        else:
            return error(503, "busy", "too many archives are being built; try again shortly", {"Retry-After": "5"})
        a = ArchiveStream(backend, record, names)
        a.start()
        loop = asyncio.get_running_loop()
        try:
            first = await loop.run_in_executor(backend.waits, a.get)
        except BaseException:
            a.close()
            raise

        async def stream() -> AsyncIterator[bytes]:
            try:
                piece = first
                while piece is not None:
                    yield piece
                    piece = await loop.run_in_executor(backend.waits, a.get)
            except WsfsError as e:
                log.error("%s@%d archive: cut after a failure: %s", record.workspace, record.version, e)
                raise
            finally:
                a.close()

        name = f"{record.workspace}-{record.version}.tar"
        return ClosingStreamingResponse(stream(), media_type="application/x-tar", headers={
            "Cache-Control": IMMUTABLE if immutable else REVALIDATE,
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Content-Type-Options": "nosniff",
        })

    async def diff(request: Request) -> Response:
        """``GET .../diff?from=&to=``: changed paths from the stored changesets."""
        ws = workspace(request)
        q = query(request)
        to, immutable_b = await meta(backend.resolve, ws, _ascii(q, "to") or "latest")
        frm_ref = _ascii(q, "from")
        if frm_ref is None:
            if to.parent is None:
                raise UsageError(f"{ws}@{to.version} has no parent: give from=")
            frm_ref = str(to.parent)
        frm, immutable_a = await meta(backend.resolve, ws, frm_ref)
        changes = await meta(backend.diff, frm, to)
        return JSONResponse(
            {
                "workspace": ws,
                "from": frm.version,
                "to": to.version,
                "changes": [{"status": s, **named("path", p)} for s, p in changes],
            },
            headers={"Cache-Control": IMMUTABLE if immutable_a and immutable_b else REVALIDATE},
        )

    uploads = ThreadPoolExecutor(max_workers=MAX_UPLOADS, thread_name_prefix="wsfs-serve-upload")
    upload_slots = asyncio.Semaphore(MAX_UPLOADS)

    async def create_version(request: Request) -> Response:
        """``POST .../versions`` with a tar body (write scope): the workspace's next version (201)."""
        ws = check_workspace(request.path_params["ws"])
        if auth is None:
            raise Forbidden("creating versions needs a token with the write scope (start the server with --config)")
        grant = auth.check(request.headers.get("authorization"))
        if not grant.allows(ws, "write"):
            raise Forbidden(f"token {grant.name!r} may not write workspace {ws!r}")
        ctype = request.headers.get("content-type", "application/x-tar").split(";")[0].strip().lower()
        if ctype not in ("application/x-tar", "application/octet-stream"):
            return error(415, "unsupported_media_type", "send the tree as an uncompressed tar (application/x-tar)")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > backend.max_upload:
            return error(413, "too_large", f"the body is over the server's limit of {backend.max_upload} bytes")
        message = (_ascii(query(request), "message") or "").strip()
        loop = asyncio.get_running_loop()
        async with upload_slots:
            path = backend.repo.temp_path("upload-body", ".tar")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                size = 0
                with os.fdopen(fd, "wb") as f:
                    async for piece in request.stream():
                        size += len(piece)
                        if size > backend.max_upload:
                            return error(413, "too_large", f"the body is over the server's limit of {backend.max_upload} bytes")
                        await loop.run_in_executor(uploads, f.write, piece)
                record = await loop.run_in_executor(uploads, functools.partial(
                    version_from_tar, backend.repo, ws, path, message=message, author=f"wsfs serve ({grant.name})"))
            finally:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        return JSONResponse(record_json(record), status_code=201,
                            headers={"Location": f"/v1/workspaces/{ws}/versions/{record.version}"})

    async def on_wsfs_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, WsfsError)
        return _wsfs_error(e)

    async def on_unauthorized(request: Request, e: Exception) -> Response:
        assert isinstance(e, Unauthorized)
        challenge = 'Bearer realm="wsfs"' + (', error="invalid_token"' if e.invalid else "")
        return error(401, "unauthorized", str(e), {"WWW-Authenticate": challenge})

    async def on_forbidden(request: Request, e: Exception) -> Response:
        return error(403, "forbidden", str(e))

    async def on_http(request: Request, e: Exception) -> Response:
        assert isinstance(e, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error(e.status_code, code, str(e.detail), dict(e.headers or {}))

    async def on_internal(request: Request, e: Exception) -> Response:
        return error(500, "internal_error", f"{type(e).__name__} (see the server's log)")

    async def metrics(request: Request) -> Response:
        """``GET /metrics``: Prometheus text (with a token config, any valid token may scrape)."""
        authorize(request, None)
        body = await meta(observed.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    ws_ = "/v1/workspaces/{ws}"
    routes = [
        Route("/", index),
        Route("/openapi.json", openapi),
        Route("/metrics", metrics),
        Route("/v1/workspaces", list_workspaces),
        Route(ws_ + "/versions", list_versions, methods=["GET", "HEAD"]),
        Route(ws_ + "/versions", create_version, methods=["POST"]),
        Route(ws_ + "/versions/{v}", get_version),
        Route(ws_ + "/tags", tags),
        Route(ws_ + "/versions/{v}/tree", tree),
        Route(ws_ + "/versions/{v}/files/{path:path}", files, methods=["GET", "HEAD"]),
        Route(ws_ + "/versions/{v}/archive", archive),
        Route(ws_ + "/diff", diff),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            WsfsError: on_wsfs_error,
            Unauthorized: on_unauthorized,
            Forbidden: on_forbidden,
            HTTPException: on_http,
            Exception: on_internal,
        },
    )
    observed = HttpMetrics(app, {r.endpoint: r.path for r in routes}, lambda: {
        "cache": backend.cache.statistics(),
        "store": backend.repo.store.stats.snapshot(),
    })
    return observed
