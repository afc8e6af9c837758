"""Running the real ``wsfs`` command line in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class Result:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.out)


class Wsfs:
    """``wsfs ...`` against one repository and cache, with a given environment."""

    def __init__(self, repo: str, cache_dir: str, env: dict[str, str] | None = None) -> None:
        self.repo = repo
        self.cache_dir = cache_dir
        self.env = dict(env if env is not None else os.environ)
        self.env["WSFS_REPO"] = repo
        self.env["WSFS_CACHE_DIR"] = cache_dir

    def run(self, *args: str | bytes | os.PathLike[str], check: bool = True, timeout: float = 300,
            env: dict[str, str] | None = None, **kw: Any) -> Result:
        cmd = [sys.executable, "-m", "wsfs", *[os.fsencode(a) if isinstance(a, os.PathLike) else a for a in args]]
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, env={**self.env, **(env or {})}, **kw)
        r = Result(p.returncode, p.stdout, p.stderr.decode(errors="replace"))
        if check and r.code != 0:
            raise AssertionError(f"wsfs {args} exited {r.code}: {r.err}")
        return r

    def __call__(self, *args: str | bytes | os.PathLike[str], **kw: Any) -> Result:
        return self.run(*args, **kw)

    def push(self, src: os.PathLike[str] | str, ws: str, *extra: str) -> dict[str, Any]:
        return self.run("push", "--json", *extra, src, ws).json()
