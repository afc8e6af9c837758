"""Where things are: the repository URL, the endpoint and the local cache directory.

Resolution order for the repository: ``--repo``, ``$WSFS_REPO``, ``repo`` in
``$XDG_CONFIG_HOME/wsfs/config.toml`` (default ``~/.config/wsfs/config.toml``),
then the embedded default, a local repository in
``$XDG_DATA_HOME/wsfs/repo`` (default ``~/.local/share/wsfs/repo``), so that
nothing needs configuring on a fresh machine.  The endpoint comes from
``--endpoint-url``, ``endpoint_url`` in the config file, or boto3's own
``$AWS_ENDPOINT_URL``.  Credentials are never read here: boto3's standard
chain owns them.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from wsfs.errors import UsageError


def _xdg(var: str, fallback: str) -> str:
    return os.environ.get(var) or os.path.join(os.path.expanduser("~"), fallback)


def config_path() -> str:
    return os.path.join(_xdg("XDG_CONFIG_HOME", ".config"), "wsfs", "config.toml")


def default_repo() -> str:
    return os.path.join(_xdg("XDG_DATA_HOME", ".local/share"), "wsfs", "repo")


def default_cache_dir() -> str:
    return os.environ.get("WSFS_CACHE_DIR") or os.path.join(_xdg("XDG_CACHE_HOME", ".cache"), "wsfs")


def default_state_dir() -> str:
    """``$XDG_STATE_HOME/wsfs`` (default ``~/.local/state/wsfs``): reserved for wsfs' state; never pushed."""
    return os.path.join(_xdg("XDG_STATE_HOME", ".local/state"), "wsfs")


class Settings(NamedTuple):  # (a NamedTuple: dataclasses costs every command 8 ms of imports, inspect and ast)
    repo: str
    endpoint_url: str | None
    cache_dir: str
    is_default_repo: bool


_KEYS = ("repo", "endpoint_url", "cache_dir")


def _read_config_file() -> dict[str, str]:
    """The config file's settings: each a non-empty string, or a usage error naming the file."""
    path = config_path()
    try:
        with open(path, "rb") as f:
            import tomllib  # only when there is a file (~4 ms of imports otherwise paid by every command)

            try:
                cfg = tomllib.load(f)
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise UsageError(f"{path} is not valid TOML: {e}") from None
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    out = {}
    for key, value in cfg.items():
        if key not in _KEYS:
            raise UsageError(f"{path}: unknown setting {key!r} (known: {', '.join(_KEYS)})")
        if not isinstance(value, str) or not value:
            raise UsageError(f"{path}: {key} must be a non-empty string, got {value!r}")
        out[key] = value
    return out


def resolve(repo: str | None, endpoint_url: str | None, cache_dir: str | None) -> Settings:
    """Combine command-line values, environment and config file into Settings."""
    cfg = _read_config_file()
    is_default = False
    if not repo:
        repo = os.environ.get("WSFS_REPO") or None
    if not repo:
        repo = cfg.get("repo")
    if not repo:
        repo, is_default = default_repo(), True
    if not endpoint_url:
        endpoint_url = cfg.get("endpoint_url")
    cache_dir = cache_dir or cfg.get("cache_dir") or default_cache_dir()
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise UsageError(f"cache directory {cache_dir} exists and is not a directory")
    return Settings(repo, endpoint_url or None, cache_dir, is_default)
