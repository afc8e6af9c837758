"""The repository descriptor (``wsfs-repo.json``) and version records (JSON).

A version exists iff its record exists.  The record names the manifest by
content id, so everything a version references is verifiable from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from wsfs.errors import FormatError, IntegrityError
from wsfs.format import FORMAT_VERSION, READ_FORMATS
from wsfs.format.blobs import is_hexid
from wsfs.format.chunking import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_INLINE_SIZE, MIN_CHUNK_SIZE
from wsfs.format.tree import Cuts, Layout

REPO_KEY = "wsfs-repo.json"
DEFAULT_INLINE_THRESHOLD = 128 * 1024


@dataclass(frozen=True)
class RepoConfig:
    """Repository-wide parameters, fixed at ``wsfs init``."""

    format: int = FORMAT_VERSION
    hash: str = "blake3"
    compression: str = "zstd"
    chunking: str = "fixed"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    inline_threshold: int = DEFAULT_INLINE_THRESHOLD
    cuts: Cuts = field(default_factory=Cuts)  # format 2: where pieces are cut

    @property
    def layout(self) -> Layout:
        return Layout(self.chunk_size, self.inline_threshold)

    def __post_init__(self) -> None:
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE or self.chunk_size & (self.chunk_size - 1):
            raise FormatError(f"chunk size {self.chunk_size} must be a power of two in [64 KiB, 64 MiB]")
        if not 0 <= self.inline_threshold <= min(self.chunk_size, MAX_INLINE_SIZE):
            raise FormatError(f"inline threshold {self.inline_threshold} must be in [0, chunk size]")

    def to_json(self) -> bytes:
        d = {"kind": "wsfs-repository", **asdict(self)}
        if self.format == 1:
            del d["cuts"]
        return json.dumps(d, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> RepoConfig:
        try:
            d = json.loads(raw)
        except ValueError:
            raise FormatError("wsfs-repo.json is not valid JSON") from None
        if not isinstance(d, dict) or d.get("kind") != "wsfs-repository":
            raise FormatError("wsfs-repo.json does not describe a wsfs repository")
        fmt = d.get("format")
        if fmt not in READ_FORMATS or type(fmt) is not int:
            raise FormatError(
                f"repository format version {fmt!r} is not supported by this wsfs "
                f"(it reads versions {', '.join(map(str, READ_FORMATS))}); upgrade wsfs"
            )
        if (d.get("hash"), d.get("compression"), d.get("chunking")) != ("blake3", "zstd", "fixed"):
            raise FormatError("repository uses a hash, compression or chunking this wsfs does not know")
        try:
            cs, it = d["chunk_size"], d["inline_threshold"]
            if type(cs) is not int or type(it) is not int:
                raise TypeError
            cuts = Cuts(**d["cuts"]) if fmt == 2 else Cuts()
            return cls(format=fmt, chunk_size=cs, inline_threshold=it, cuts=cuts)
        except (KeyError, TypeError, ValueError):
            raise FormatError("wsfs-repo.json is missing or has malformed chunk_size, inline_threshold or cuts") from None


@dataclass(frozen=True)
class VersionRecord:
    """One published version."""

    workspace: str
    version: int
    parent: int | None
    manifest: str  # hex content id of the manifest's SQLite bytes
    manifest_size: int
    time: str  # ISO 8601, UTC
    author: str
    message: str
    stats: dict[str, int] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    # Format 2: ``manifest`` is the version's top piece (wsfs.format.tree); the
    # changeset against the parent is a blob too (absent for a first version).
    changeset: str | None = None
    changeset_size: int = 0

    def to_json(self) -> bytes:
        d = asdict(self)
        if self.format == 1:
            del d["changeset"], d["changeset_size"]
        return json.dumps(d, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, *, workspace: str, version: int) -> VersionRecord:
        """Parse and check a record read from ``workspaces/<workspace>/versions/<version>``.

        A record is untrusted input: every field must have its type and a
        sane value, or the whole record is IntegrityError (FormatError for a
        format this wsfs does not read), never an exception elsewhere later.
        """
        where = f"version record {workspace}@{version}"
        try:
            d = json.loads(raw)
        except (ValueError, RecursionError):
            raise IntegrityError(f"{where} is not valid JSON") from None
        if not isinstance(d, dict):
            raise IntegrityError(f"{where} is not a JSON object")
        fmt = d.get("format", 1)
        if fmt not in READ_FORMATS or type(fmt) is not int:
            raise FormatError(
                f"version {workspace}@{version} has format {fmt!r}; this wsfs reads "
                f"{', '.join(map(str, READ_FORMATS))}"
            )
        expected: dict[str, tuple[type, ...]] = {
            "workspace": (str,), "version": (int,), "parent": (int, type(None)), "manifest": (str,),
            "manifest_size": (int,), "time": (str,), "author": (str,), "message": (str,), "stats": (dict,),
            "format": (int,),
        }
        if fmt == 2:
            expected.update(changeset=(str, type(None)), changeset_size=(int,))
        for key, value in d.items():
            types = expected.get(key)
            if types is None:
                raise IntegrityError(f"{where} has an unknown field {key!r}")
            if type(value) not in types:  # type(): True is not a version number
                raise IntegrityError(f"{where}: field {key!r} has the wrong type")
        missing = set(expected) - set(d) - {"stats", "format", "changeset", "changeset_size"}
        if missing:
            raise IntegrityError(f"{where} lacks {', '.join(sorted(missing))}")
        stats = d.get("stats", {})
        if not all(isinstance(k, str) and type(v) is int and 0 <= v < 1 << 63 for k, v in stats.items()):
            raise IntegrityError(f"{where}: field 'stats' has the wrong type")
        rec = cls(**dict(d, format=fmt))
        if rec.workspace != workspace or rec.version != version:
            raise IntegrityError(f"{where} names {rec.workspace}@{rec.version}")
        if rec.parent is not None and not 0 < rec.parent < version:
            raise IntegrityError(f"{where} names an impossible parent {rec.parent}")
        if not is_hexid(rec.manifest):
            raise IntegrityError(f"{where} has a malformed manifest id")
        if rec.manifest_size < 0 or rec.changeset_size < 0:
            raise IntegrityError(f"{where} has a negative manifest or changeset size")
        if rec.changeset is not None and not is_hexid(rec.changeset):
            raise IntegrityError(f"{where} has a malformed changeset id")
        return rec
