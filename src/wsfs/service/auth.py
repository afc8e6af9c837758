"""Bearer tokens of ``wsfs serve``: a TOML config naming each token's hash, scopes and workspaces.

Config (``wsfs serve --config FILE``)::

    [[token]]
    name = "ci"                        # shown in logs instead of the token
    sha256 = "<64 hex digits>"         # sha256 of the token; `wsfs serve --new-token` makes both
    scopes = ["read"]                  # "read": every GET; "write": POST of a new version
    workspaces = ["demo", "team-*"]    # fnmatch patterns; ["*"] for all

Tokens are random (``secrets.token_urlsafe(32)``: 256 bits), so a plain
sha256 of them cannot be reversed by guessing, and checking one costs a
microsecond, not the tens of milliseconds of a password hash (which a
token never needs: nobody chooses it).  The config holds no secret; the
file may still be kept private.  A token is never logged: only its
``name`` is.  Imports ``errors`` only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
import tomllib
from dataclasses import dataclass

from wsfs.errors import UsageError

SCOPES = ("read", "write")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def token_hash(token: str) -> str:
    """The hex sha256 of *token*, as the config stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh token and its hash."""
    token = "wsfs_" + secrets.token_urlsafe(32)
    return token, token_hash(token)


@dataclass(frozen=True)
class Grant:
    """What one token may do."""

    name: str
    digest: bytes
    scopes: frozenset[str]
    workspaces: tuple[str, ...]

    def allows(self, workspace: str | None, scope: str = "read") -> bool:
        """Whether this token has *scope* on *workspace* (None: on some workspace, e.g. to list them)."""
        if scope not in self.scopes:
            return False
        if workspace is None:
            return True
        return any(fnmatch.fnmatchcase(workspace, p) for p in self.workspaces)


class Unauthorized(Exception):
    """No token, or one the config does not know (401)."""

    def __init__(self, detail: str, *, invalid: bool) -> None:
        super().__init__(detail)
        self.invalid = invalid


class Forbidden(Exception):
    """A known token without the scope or workspace asked for (403)."""


@dataclass(frozen=True)
class AuthConfig:
    """The tokens of a config file; an empty config would lock every client out, so it is refused."""

    grants: tuple[Grant, ...]

    @classmethod
    def load(cls, path: str) -> AuthConfig:
        """The config in TOML file *path*; UsageError (exit 2) naming what is wrong."""
        try:
            with open(path, "rb") as f:
                cfg = tomllib.load(f)
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{path} is not valid TOML: {e}") from None
        return cls.parse(cfg, path)

    @classmethod
    def parse(cls, cfg: dict, where: str = "config") -> AuthConfig:
        """The config from parsed TOML *cfg*, every key and value checked."""
        unknown = set(cfg) - {"token"}
        if unknown:
            raise UsageError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))} (known: [[token]])")
        tokens = cfg.get("token", [])
        if not isinstance(tokens, list) or not tokens:
            raise UsageError(f"{where}: no [[token]] table: add one (wsfs serve --new-token makes a token and its hash)")
        grants = []
        names = set()
        for i, t in enumerate(tokens):
            at = f"{where}: token #{i + 1}"
            if not isinstance(t, dict):
                raise UsageError(f"{at} is not a table")
            extra = set(t) - {"name", "sha256", "scopes", "workspaces"}
            if extra:
                raise UsageError(f"{at}: unknown key(s) {', '.join(sorted(extra))}")
            name, digest, scopes, wss = t.get("name"), t.get("sha256"), t.get("scopes", ["read"]), t.get("workspaces")
            if not isinstance(name, str) or not name or name in names:
                raise UsageError(f"{at}: name must be a unique non-empty string")
            names.add(name)
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise UsageError(f"{at} ({name}): sha256 must be 64 lowercase hex digits (the token's hash, not the token)")
            if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
                raise UsageError(f"{at} ({name}): scopes must be a list of {', '.join(SCOPES)}")
            if not isinstance(wss, list) or not wss or not all(isinstance(w, str) and w for w in wss):
                raise UsageError(f"{at} ({name}): workspaces must be a non-empty list of patterns, e.g. [\"*\"]")
            grants.append(Grant(name, bytes.fromhex(digest), frozenset(scopes), tuple(wss)))
        return cls(tuple(grants))

    def check(self, authorization: str | None) -> Grant:
        """The grant of the bearer token in an ``Authorization`` header value; Unauthorized if none matches."""
        if not authorization:
            raise Unauthorized("this server needs a bearer token (Authorization: Bearer <token>)", invalid=False)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use the Bearer scheme: Authorization: Bearer <token>", invalid=False)
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for g in self.grants:  # every grant compared, in constant time each
            if hmac.compare_digest(g.digest, digest):
                found = g
        if found is None:
            raise Unauthorized("the token is not valid", invalid=True)
        return found
