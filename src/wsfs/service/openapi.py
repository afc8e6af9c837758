"""The OpenAPI 3.1 document of ``wsfs serve`` (``GET /openapi.json``), written by hand.

Hand-written rather than generated (``docs/decisions/rest-stack.md``): the
file endpoint's path is bytes split and decoded by our own rules, its
responses are streams with ranges, and errors share one schema; a
generator would describe none of that better than these lines.  A test
checks that every route of the application is described here.
"""

from __future__ import annotations

from typing import Any

from wsfs import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_WS = {"name": "ws", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"},
       "description": "workspace name"}
_V = {"name": "v", "in": "path", "required": True, "schema": {"type": "string"},
      "description": "a version number, a tag, or `latest` (never cached as immutable)"}
_PATH_Q = {"name": "path", "in": "query", "required": False, "schema": {"type": "string", "default": ""},
           "description": "a directory (or entry) of the version: `/`-separated, percent-decoded to bytes, `+` is a space"}
_LIMIT = {"name": "limit", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 1, "maximum": 1000}, "description": "page size"}

_COMMON_ERRORS = {
    "400": _err("bad request: an invalid name, path, parameter"),
    "401": _err("no or unknown bearer token (only with a token config); `WWW-Authenticate: Bearer`"),
    "403": _err("the token may not read this workspace"),
    "404": _err("no such workspace, version, tag or path"),
    "502": _err("the store holds data that does not verify (nothing of it is served)"),
    "503": _err("the store cannot be reached"),
}


def _op(summary: str, ok: dict[str, Any], params: list[dict[str, Any]], **more: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "parameters": params, "responses": {"200": ok, **more, **_COMMON_ERRORS}}


_ENTRY = {
    "type": "object",
    "required": ["name", "name_pct", "type", "mode", "size", "mtime_ns"],
    "properties": {
        "name": {"type": "string", "description": "the name as text (U+FFFD for bytes that are not UTF-8)"},
        "name_pct": {"type": "string", "description": "the exact name bytes, percent-encoded"},
        "type": {"enum": ["file", "directory", "symlink", "fifo", "char-device", "block-device", "socket"]},
        "mode": {"type": "integer", "description": "permission bits with setuid/setgid/sticky (S_IMODE)"},
        "size": {"type": "integer"},
        "mtime_ns": {"type": "integer"},
        "uid": {"type": "integer"},
        "gid": {"type": "integer"},
        "nlink": {"type": "integer"},
        "etag": {"type": "string", "description": "files: the strong ETag of .../files/{path} (the content id)"},
        "target": {"type": "string", "description": "symlinks: the target as text"},
        "target_pct": {"type": "string", "description": "symlinks: the exact target bytes, percent-encoded"},
        "rdev": {"type": "integer"},
    },
}

_RECORD = {
    "type": "object",
    "required": ["workspace", "version", "manifest", "time"],
    "properties": {
        "workspace": {"type": "string"},
        "version": {"type": "integer"},
        "parent": {"type": ["integer", "null"]},
        "manifest": {"type": "string"},
        "manifest_size": {"type": "integer"},
        "time": {"type": "string"},
        "author": {"type": "string"},
        "message": {"type": "string"},
        "stats": {"type": "object", "additionalProperties": {"type": "integer"}},
        "format": {"type": "integer"},
        "changeset": {"type": ["string", "null"]},
        "changeset_size": {"type": "integer"},
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict: callers may change it)."""
    file_headers = {
        "ETag": {"schema": {"type": "string"}, "description": "strong: the content id"},
        "Cache-Control": {"schema": {"type": "string"},
                          "description": "`public, max-age=31536000, immutable` for numbers and tags, `no-cache` for latest"},
        "Accept-Ranges": {"schema": {"type": "string"}},
        "Content-Length": {"schema": {"type": "integer"}},
    }
    octets = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    file_op = {
        "parameters": [
            {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "one `bytes=` range (several: the whole file, 200)"},
            {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": "If-Range", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "an ETag; a date never matches (the whole file is sent)"},
        ],
        "responses": {
            "200": {"description": "the whole file, verified", "headers": file_headers, "content": octets},
            "206": {"description": "the requested range", "headers": {**file_headers, "Content-Range": {"schema": {"type": "string"}}},
                    "content": octets},
            "304": {"description": "If-None-Match matched"},
            "409": _err("a directory or other non-file (`not_a_file`), or a symlink (`symlink`, with `target`/`target_pct`, "
                        "also in `X-Wsfs-Symlink-Target`): never followed"),
            "416": _err("range not satisfiable; `Content-Range: bytes */SIZE`"),
            **_COMMON_ERRORS,
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wsfs serve",
            "version": __version__,
            "description": "Read-only access to the versions of a wsfs repository. See docs/api.md for the encoding "
            "of names (bytes, percent-encoded), caching, ranges and errors.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "only when the server has a token config"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "detail"],
                          "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}},
                "Record": _RECORD,
                "Entry": _ENTRY,
            },
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/v1/workspaces": {"get": _op("list workspaces (those the token may read)", _json(
                {"type": "object", "properties": {"workspaces": {"type": "array", "items": {
                    "type": "object", "properties": {"name": {"type": "string"}}}}}}, "workspaces"), [])},
            "/v1/workspaces/{ws}/versions": {"get": _op("list versions, newest first, paged", _json(
                {"type": "object", "properties": {"workspace": {"type": "string"},
                                                  "versions": {"type": "array", "items": _ref("Record")},
                                                  "next": {"type": ["integer", "null"],
                                                           "description": "pass as `after` for the next page"}}},
                "a page of version records"),
                [_WS, {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
                       "description": "only versions numbered below this"}, _LIMIT]),
                "post": {
                    "summary": "create the next version from a tar body (a token with the write scope)",
                    "parameters": [_WS, {"name": "message", "in": "query", "required": False,
                                         "schema": {"type": "string"}, "description": "the version's message (ASCII)"}],
                    "requestBody": {"required": True, "content": {"application/x-tar": {
                        "schema": {"type": "string", "format": "binary"}}}},
                    "responses": {
                        "201": {"description": "the new version's record (Location: its URL)",
                                "content": {"application/json": {"schema": _ref("Record")}}},
                        "403": _err("no token with the write scope for this workspace (or no token config)"),
                        "413": _err("the body is over the server's --max-upload"),
                        "415": _err("not application/x-tar"),
                        **_COMMON_ERRORS,
                    },
                }},
            "/v1/workspaces/{ws}/versions/{v}": {"get": _op("one version's record", _json(_ref("Record"), "the record"), [_WS, _V])},
            "/v1/workspaces/{ws}/tags": {"get": _op("tags and the versions they name", _json(
                {"type": "object", "properties": {"workspace": {"type": "string"},
                                                  "tags": {"type": "object", "additionalProperties": {"type": "integer"}}}},
                "tags"), [_WS])},
            "/v1/workspaces/{ws}/versions/{v}/tree": {"get": _op("one directory's entries, in name (byte) order, paged", _json(
                {"type": "object", "properties": {
                    "workspace": {"type": "string"}, "version": {"type": "integer"}, "path": {"type": "string"},
                    "path_pct": {"type": "string"}, "entries": {"type": "array", "items": _ref("Entry")},
                    "next": {"type": ["string", "null"], "description": "opaque cursor: pass as `after`"}}},
                "a page of entries"),
                [_WS, _V, _PATH_Q, {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}}, _LIMIT],
                **{"409": _err("the path is not a directory, or is a symlink")})},
            "/v1/workspaces/{ws}/versions/{v}/files/{path}": {
                "parameters": [_WS, _V, {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
                                         "description": "`/`-separated; each segment percent-decoded to bytes; "
                                         "`.`, `..`, empty, `%2F` and `%00` are refused (400)"}],
                "get": {"summary": "a file's bytes, streamed and verified", **file_op},
                "head": {"summary": "a file's headers", **file_op},
            },
            "/v1/workspaces/{ws}/versions/{v}/archive": {"get": {
                "summary": "a subtree as a tar stream (PAX; members named from the version's root)",
                "parameters": [_WS, _V, _PATH_Q],
                "responses": {"200": {"description": "tar", "content": {"application/x-tar": {
                    "schema": {"type": "string", "format": "binary"}}}},
                              "409": _err("the path is a symlink"), **_COMMON_ERRORS}}},
            "/metrics": {"get": {
                "summary": "Prometheus text exposition: requests by route template, the blob cache, the store",
                "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                              "401": _err("no or unknown token (only with a token config)")}}},
            "/v1/workspaces/{ws}/diff": {"get": _op("paths changed between two versions", _json(
                {"type": "object", "properties": {
                    "workspace": {"type": "string"}, "from": {"type": "integer"}, "to": {"type": "integer"},
                    "changes": {"type": "array", "items": {"type": "object", "properties": {
                        "status": {"enum": ["A", "D", "M", "T"]}, "path": {"type": "string"},
                        "path_pct": {"type": "string"}}}}}}, "changes in path order"),
                [_WS, {"name": "from", "in": "query", "required": False, "schema": {"type": "string"},
                       "description": "number, tag or latest (default: the parent of `to`)"},
                 {"name": "to", "in": "query", "required": False, "schema": {"type": "string"},
                  "description": "number, tag or latest (default latest)"}])},
        },
    }
