"""The manifest: one SQLite database (apsw) describing a whole version's tree.

Schema (written once here; every column explained)::

    meta(key TEXT PRIMARY KEY, value)           format, workspace, chunk_size, stats...
    inodes(ino INTEGER PRIMARY KEY,             1 is the root directory
           mode, uid, gid,                      st_mode (type + all permission bits), owner
           size, blocks,                        st_size and st_blocks as pushed (du agrees)
           atime_ns, mtime_ns, ctime_ns,        times in nanoseconds; atime and ctime are
                                                recorded as mtime (see below)
           nlink,                               links inside the tree (dirs: 2 + subdirectories)
           rdev,                                device number of block/char devices, else 0
           target BLOB,                         symlink target bytes (never followed)
           content BLOB,                        regular files: content id (see content_id_*)
           data INTEGER)                        small files: rowid in ``data`` (inline content)
    data(id INTEGER PRIMARY KEY,                inline content, shared by identical small files
         cid BLOB UNIQUE, codec, payload)       blake3 of plaintext, 0 raw / 1 zstd, bytes
    dentries(id INTEGER PRIMARY KEY,            readdir cursor: a directory's entries are
             parent, name BLOB, ino)            contiguous and sorted by name
    chunks(ino, idx, cid BLOB, length)          large files: chunk idx covers
                                                [idx*chunk_size, ...); cid NULL = all zeros
    xattrs(ino, name BLOB, value BLOB)          extended attributes (user.* namespace)

Only mtime is kept from the source.  atime changes whenever anything reads
the tree (push itself lists directories) and ctime on any metadata change, so
recording them would make every push of an unchanged tree a different
manifest; both columns hold the mtime, which is what a mount shows.

Lookup (``dentries(parent, name)`` unique index), getattr (``inodes`` primary
key), readdir (``dentries(parent)`` index, by ``id``) and chunk lists are
point or range queries whose cost does not depend on the size of the tree.

:class:`Manifest` validates a database before anything is served from it:
names, references, the directory graph (a tree rooted at 1) and chunk
coverage.  A malformed manifest raises :class:`~wsfs.errors.IntegrityError`.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import apsw

from wsfs.errors import FormatError, IntegrityError, NotFound
from wsfs.format.blobs import compress, content_id, decompress
from wsfs.format.chunking import MAX_CHUNK_SIZE, MAX_INLINE_SIZE, MIN_CHUNK_SIZE
from wsfs.format.names import split_path

ROOT_INO = 1

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE inodes (
    ino INTEGER PRIMARY KEY,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    blocks INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    rdev INTEGER NOT NULL,
    target BLOB,
    content BLOB,
    data INTEGER
);
CREATE TABLE data (id INTEGER PRIMARY KEY, cid BLOB NOT NULL UNIQUE, codec INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE dentries (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL);
CREATE TABLE chunks (ino INTEGER NOT NULL, idx INTEGER NOT NULL, cid BLOB, length INTEGER NOT NULL,
                     PRIMARY KEY (ino, idx)) WITHOUT ROWID;
CREATE TABLE xattrs (ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
                     PRIMARY KEY (ino, name)) WITHOUT ROWID;
"""

# A local index of a format 2 version (wsfs.format.index) is a manifest plus
# where each small file's bytes are: a slice of a pack (a blob).  Built on
# this host from verified pieces, never downloaded.
INDEX_SCHEMA = """
ALTER TABLE inodes ADD COLUMN pack INTEGER;
ALTER TABLE inodes ADD COLUMN pack_offset INTEGER;
CREATE TABLE packs (id INTEGER PRIMARY KEY, cid BLOB NOT NULL, size INTEGER NOT NULL,
                    segment BLOB, seg_offset INTEGER, seg_length INTEGER);  -- segment NULL: a blob of its own
"""

# The dentry indexes: part of SCHEMA, created last by the builder (one sort of
# the finished table instead of two B-trees kept sorted row by row: building
# the index of the 20,022-file benchmark tree took 0.64 s in inserts).
DENTRY_INDEXES = """
CREATE UNIQUE INDEX dentries_name ON dentries(parent, name);
CREATE INDEX dentries_parent ON dentries(parent);
"""

_INODE_COLS = "ino, mode, uid, gid, size, blocks, atime_ns, mtime_ns, ctime_ns, nlink, rdev, target, content, data"


class Inode(NamedTuple):
    """One row of ``inodes``: everything ``stat`` shows, plus where the content is."""

    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    rdev: int
    target: bytes | None
    content: bytes | None
    data: int | None
    pack: int | None = None  # a local index of a format 2 version: row of ``packs`` holding the content
    pack_offset: int = 0  # where in that pack

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def inline(self) -> bool:
        """Whether the content is stored in the manifest (small file)."""
        return self.data is not None

    @property
    def packed(self) -> bool:
        """Whether the content is a slice of a pack (a small file of a format 2 version)."""
        return self.pack is not None


class Place(NamedTuple):
    """Where an encoded pack is stored: ``segment`` None means a blob of its own (``blobs/<pack id>``)."""

    segment: bytes | None
    offset: int
    length: int


class Chunk(NamedTuple):
    """One chunk of a large file; ``cid`` None means the chunk is all zeros.

    A pack of a format 2 index is described as a chunk too (``Chunk(0, id,
    size, place)``), with *place* saying where it is stored.
    """

    idx: int
    cid: bytes | None
    length: int
    place: Place | None = None


def content_id_chunked(size: int, chunk_size: int, cids: Iterable[bytes | None]) -> bytes:
    """The content id of a chunked file: blake3 over its size, chunk size and chunk ids.

    Computing it needs no re-read of the file; identical content under the
    same chunk size always gives the same id.
    """
    h = bytearray(b"wsfs-chunked-v1\0")
    h += struct.pack("<QQ", size, chunk_size)
    for cid in cids:
        h += cid if cid is not None else bytes(32)
    return content_id(bytes(h))


def prepare_inline(data: bytes) -> tuple[bytes, int, bytes]:
    """``(content id, codec, payload)`` of a small file: the CPU part of :meth:`ManifestBuilder.set_inline`.

    Thread-safe (blake3 and zstd release the GIL), so push runs it on its pool.
    """
    codec, payload = compress(data)
    return content_id(data), codec, payload


class ManifestBuilder:
    """Writes a new manifest database.  Single-threaded; call :meth:`finish` once at the end."""

    def __init__(self, path: str, *, chunk_size: int, index: bool = False) -> None:
        if os.path.exists(path):
            os.unlink(path)
        self.path = path
        self.chunk_size = chunk_size
        self.index = index
        self.db = apsw.Connection(path)
        # Built once, in one transaction, then hashed and uploaded: durability of
        # the temporary file is not needed (a crash restarts the push).
        self.db.execute("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA page_size=4096; "
                        "PRAGMA cache_size=-65536")  # 64 MiB: the tables of a 100k-entry tree stay in memory
        self.db.execute(SCHEMA)
        if index:
            self.db.execute(INDEX_SCHEMA)
        self.db.execute("BEGIN")
        self._next_ino = ROOT_INO
        self._data_ids: dict[bytes, int] = {}

    def add_inode(
        self,
        st: os.stat_result,
        *,
        nlink: int = 1,
        target: bytes | None = None,
        size: int | None = None,
    ) -> int:
        """Add an inode with the attributes of *st*; returns its inode number."""
        return self.add_node(
            st.st_mode, st.st_uid, st.st_gid, st.st_size if size is None else size, st.st_blocks, st.st_mtime_ns,
            nlink=nlink, rdev=st.st_rdev if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else 0,
            target=target,
        )

    def add_node(
        self, mode: int, uid: int, gid: int, size: int, blocks: int, mtime_ns: int, *,
        nlink: int = 1, rdev: int = 0, target: bytes | None = None, content: bytes | None = None,
    ) -> int:
        """Add an inode from its fields; returns its inode number."""
        ino = self._next_ino
        self._next_ino += 1
        self.db.execute(
            f"INSERT INTO inodes ({_INODE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,NULL)",
            # atime and ctime are the mtime: see the module docstring
            (ino, mode, uid, gid, size, blocks, mtime_ns, mtime_ns, mtime_ns, nlink, rdev, target, content),
        )
        return ino

    def new_ino(self) -> int:
        """(Index only) the next inode number, for a row given later to :meth:`add_rows`."""
        ino = self._next_ino
        self._next_ino += 1
        return ino

    def add_rows(
        self,
        inodes: list[tuple[Any, ...]],
        chunks: list[tuple[int, int, bytes | None, int]],
        dentries: list[tuple[int, bytes, int]],
    ) -> None:
        """(Index only) many rows at once: inodes as ``(ino, mode, uid, gid, size, blocks, mtime_ns, nlink,
        rdev, target, content, pack, pack_offset)``, chunks as ``(ino, idx, cid, length)``, dentries as
        ``(parent, name, ino)`` (each directory's names contiguous and sorted, as :meth:`add_dentries`)."""
        self.db.executemany(
            f"INSERT INTO inodes ({_INODE_COLS}, pack, pack_offset) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,NULL,?,?)",
            # atime and ctime are the mtime: see the module docstring
            [(i, m, u, g, sz, bl, mt, mt, mt, nl, rd, t, c, p, po) for i, m, u, g, sz, bl, mt, nl, rd, t, c, p, po in inodes],
        )
        self.db.executemany("INSERT INTO chunks (ino, idx, cid, length) VALUES (?,?,?,?)", chunks)
        self.db.executemany("INSERT INTO dentries (parent, name, ino) VALUES (?,?,?)", dentries)

    def set_nlinks(self, pairs: list[tuple[int, int]]) -> None:
        """``nlink`` of many inodes: ``(nlink, ino)`` pairs."""
        self.db.executemany("UPDATE inodes SET nlink=? WHERE ino=?", pairs)

    def add_packs(self, rows: list[tuple[int, bytes, int, bytes | None, int, int]]) -> None:
        """(Index only) packs as ``(row, id, size, segment, offset, length)``: rows numbered from 1 in key order."""
        self.db.executemany(
            "INSERT INTO packs (id, cid, size, segment, seg_offset, seg_length) VALUES (?,?,?,?,?,?)", rows
        )

    def set_inline(self, ino: int, data: bytes) -> bytes:
        """Store a small file's content inline (deduplicated); returns its content id."""
        cid = content_id(data)
        self.set_inline_prepared(ino, cid, lambda: compress(data))
        return cid

    def set_inline_prepared(self, ino: int, cid: bytes, encoded: Callable[[], tuple[int, bytes]]) -> None:
        """Like :meth:`set_inline` for content already hashed; *encoded* gives ``(codec, payload)``.

        Lets callers compress on worker threads (see :func:`prepare_inline`).
        """
        data_id = self._data_ids.get(cid)
        if data_id is None:
            codec, payload = encoded()
            self.db.execute("INSERT INTO data (cid, codec, payload) VALUES (?,?,?)", (cid, codec, payload))
            data_id = self._data_ids[cid] = self.db.last_insert_rowid()
        self.db.execute("UPDATE inodes SET content=?, data=? WHERE ino=?", (cid, data_id, ino))

    def set_chunks(self, ino: int, size: int, cids: list[bytes | None], cid: bytes | None = None) -> bytes:
        """Record a large file's chunk ids (None = zeros); returns its content id (*cid* if known)."""
        spans = [(ino, i, c, min(self.chunk_size, size - i * self.chunk_size)) for i, c in enumerate(cids)]
        self.db.executemany("INSERT INTO chunks (ino, idx, cid, length) VALUES (?,?,?,?)", spans)
        if cid is None:
            cid = content_id_chunked(size, self.chunk_size, cids)
        self.db.execute("UPDATE inodes SET content=? WHERE ino=?", (cid, ino))
        return cid

    def drop_inode(self, ino: int) -> None:
        """Forget an inode added but then left out of the tree (its entry was skipped)."""
        self.db.execute("DELETE FROM inodes WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM chunks WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM xattrs WHERE ino=?", (ino,))

    def set_nlink(self, ino: int, nlink: int) -> None:
        self.db.execute("UPDATE inodes SET nlink=? WHERE ino=?", (nlink, ino))

    def add_dentries(self, parent: int, entries: list[tuple[bytes, int]]) -> None:
        """Add a directory's entries; call once per directory, names sorted, so ids are contiguous."""
        self.db.executemany(
            "INSERT INTO dentries (parent, name, ino) VALUES (?,?,?)", [(parent, n, i) for n, i in entries]
        )

    def add_xattrs(self, ino: int, xattrs: dict[bytes, bytes]) -> None:
        self.db.executemany(
            "INSERT INTO xattrs (ino, name, value) VALUES (?,?,?)", [(ino, k, v) for k, v in xattrs.items()]
        )

    def finish(self, meta: dict[str, Any]) -> None:
        """Write ``meta``, commit and close.  The file is then ready to hash and upload."""
        meta = dict(meta, format=2 if self.index else 1, chunk_size=self.chunk_size)
        self.db.executemany("INSERT INTO meta (key, value) VALUES (?,?)", sorted(meta.items()))
        self.db.execute(DENTRY_INDEXES)
        self.db.execute("COMMIT")
        self.db.execute("PRAGMA optimize")
        self.db.close()

    def abort(self) -> None:
        self.db.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _expected_schema() -> list[tuple[str, str, str, str | None]]:
    """``sqlite_schema`` rows of a manifest as :data:`SCHEMA` creates it."""
    db = apsw.Connection(":memory:")
    db.execute(SCHEMA)
    db.execute(DENTRY_INDEXES)
    rows = list(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema"))
    db.close()
    return rows


_EXPECTED_SCHEMA: set[tuple[str, str, str, str | None]] = set()
# Tables ``PRAGMA optimize`` (run by the builder) may add: planner statistics only.
_STAT_TABLES = frozenset({"sqlite_stat1", "sqlite_stat4"})
MAX_XATTR_VALUE = 64 * 1024  # Linux' limit for one extended attribute value
# The version of the rules Manifest.validate applies: a cache remembers which
# manifests passed them (Repository.open_manifest); raise it when they get stricter.
VALIDATION_VERSION = 3
_LENGTH_SLACK = 64 * 1024  # above the largest inline file: xattr values, targets, a little headroom
PATH_MAX = 4096  # symlink targets are at most PATH_MAX - 1 bytes on Linux


def _open_untrusted(path: str) -> apsw.Connection:
    """A read-only connection to a database file that came from the store, hardened as SQLite advises.

    ``trusted_schema`` off (no functions with side effects from views or
    triggers), defensive mode (no schema writes), page cells checked on
    every read, no memory mapping.  SQLite is built to fail a corrupt file
    with an error, never a crash; these make that true for crafted ones.
    """
    db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    # No value read may be larger than an inline file can be (plus slack):
    # a crafted multi-gigabyte payload fails with SQLITE_TOOBIG instead of
    # being read into memory.  Manifest narrows it to the repository's threshold.
    db.limit(apsw.SQLITE_LIMIT_LENGTH, MAX_INLINE_SIZE + _LENGTH_SLACK)
    db.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
    db.config(apsw.SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0)
    db.execute("PRAGMA cell_size_check=ON; PRAGMA mmap_size=0")
    return db


# What check_database runs: every table's pages and records but the inline
# payloads', and the one secondary-index check that matters (see there).
_STRUCTURE_CHECKS = (
    "quick_check(meta)", "quick_check(inodes)", "quick_check(chunks)", "quick_check(xattrs)",
    "integrity_check(dentries)",
)


def check_database(path: str) -> None:
    """Check a manifest file from the store at the SQLite level before anything trusts its indexes.

    ``quick_check`` verifies a table's pages and records;
    ``integrity_check(dentries)`` additionally that the indexes of
    ``dentries`` (the only secondary indexes readers use: lookup by name,
    listing by parent) hold exactly the table's rows, which ``quick_check``
    does not: without it a crafted index could show validation one name and
    a reader another.  The ``data`` table (inline payloads, most of the
    file's bytes) is left to SQLite's own checks on read (``cell_size_check``)
    and to the content hash every payload is verified against: checking it
    here would cost 43 of 56 ms for an 86 MB manifest, on every first mount.
    Run once per file, when it is downloaded (13 ms for 20,000 files);
    raises IntegrityError.
    """
    try:
        db = _open_untrusted(path)
        try:
            _check_schema(db, path)
            for pragma in _STRUCTURE_CHECKS:
                problems = [r[0] for r in db.execute(f"PRAGMA {pragma}")]
                if problems != ["ok"]:
                    raise IntegrityError(
                        f"manifest {os.path.basename(path)} is corrupt ({pragma}: {'; '.join(map(str, problems[:3]))})"
                    )
        finally:
            db.close()
    except apsw.Error as e:
        raise IntegrityError(f"manifest {os.path.basename(path)} is not a readable wsfs manifest: {e}") from None


def _check_schema(db: apsw.Connection, path: str) -> None:
    """The file's tables and indexes must be exactly ours: no views, triggers or altered columns."""
    if not _EXPECTED_SCHEMA:
        _EXPECTED_SCHEMA.update(_expected_schema())
    found = set(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema"))
    extra = {r for r in found - _EXPECTED_SCHEMA if not (r[0] == "table" and r[1] in _STAT_TABLES)}
    if extra or not _EXPECTED_SCHEMA <= found:
        raise IntegrityError(f"manifest {os.path.basename(path)} does not have the wsfs manifest schema")


def decode_inline(node: Inode, cid: bytes, codec: int, payload: bytes) -> bytes:
    """A small file's content from its ``data`` row, verified against its id and size (thread-safe)."""
    try:
        data = decompress(codec, payload, node.size)
    except IntegrityError as e:
        raise IntegrityError(f"inline data of inode {node.ino} failed verification ({e})") from None
    if content_id(data) != cid or cid != node.content:
        raise IntegrityError(f"inline data of inode {node.ino} failed verification")
    return bytes(data)


class Manifest:
    """Read access to one manifest database.  Opened read-only; validated on open.

    Every value read from it is untrusted until :meth:`validate` passed (the
    daemon's helper and history mounts reopen a file this process validated
    before, with ``validate=False``).
    """

    def __init__(self, path: str, *, validate: bool = True, max_inline: int | None = None) -> None:
        self.path = path
        try:
            self.db = _open_untrusted(path)
            if validate:
                _check_schema(self.db, path)
            self.meta: dict[str, Any] = dict(self.db.execute("SELECT key, value FROM meta"))
        except apsw.Error as e:
            raise IntegrityError(f"manifest {path} is not a readable wsfs manifest: {e}") from None
        fmt = self.meta.get("format")
        if fmt not in (1, 2) or type(fmt) is not int or (fmt == 2 and validate):
            raise FormatError(f"manifest format version {fmt!r} is not supported by this wsfs (it reads version 1)")
        # A format 2 version is read through a local index that this host built
        # (wsfs.format.index): a manifest plus pack references.
        self.index = fmt == 2
        self._cols, self._icols = self._inode_columns(""), self._inode_columns("i.")
        cs = self.meta.get("chunk_size")
        if type(cs) is not int or not MIN_CHUNK_SIZE <= cs <= MAX_CHUNK_SIZE or cs & (cs - 1):
            raise IntegrityError(f"manifest {os.path.basename(path)} is malformed: invalid chunk size {cs!r}")
        self.chunk_size: int = cs
        if max_inline is not None:
            self.db.limit(apsw.SQLITE_LIMIT_LENGTH, max(0, min(max_inline, MAX_INLINE_SIZE)) + _LENGTH_SLACK)
        if validate:
            try:
                self.validate(max_inline=min(cs, MAX_INLINE_SIZE) if max_inline is None else max_inline)
            except apsw.Error as e:
                raise IntegrityError(f"manifest {os.path.basename(path)} is malformed: {e}") from None

    def _inode_columns(self, table: str) -> str:
        """What to SELECT for an :class:`Inode` from ``inodes`` (prefixed *table*): a format 1 manifest has no packs."""
        cols = [table + c for c in _INODE_COLS.split(", ")]
        cols += [table + "pack", table + "pack_offset"] if self.index else ["NULL", "0"]
        return ", ".join(cols)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, sql: str, args: tuple[Any, ...] | dict[str, Any] = ()) -> Any:
        for row in self.db.execute(sql, args):
            return row[0]
        return None

    def validate(self, *, max_inline: int) -> None:
        """Reject a manifest that is not a well-formed tree of sane records (see the module docstring).

        Every check reads the tables themselves (``NOT INDEXED`` where an
        index could answer instead), since that is what readers read, and
        every value a reader will use is bounded: names, types, sizes
        (inline content at most *max_inline* bytes, chunks exactly tiling
        their file), owners, link targets, xattrs.  The cost is a few scans
        (tens of milliseconds for 20,000 files).
        """

        def bad(what: str) -> IntegrityError:
            return IntegrityError(f"manifest {os.path.basename(self.path)} is malformed: {what}")

        def check(what: str, sql: str, args: tuple[Any, ...] | dict[str, Any] = ()) -> None:
            n = self._one(sql, args)
            if n:
                raise bad(f"{what} ({n})")

        IFMT, IFDIR, IFREG, IFLNK = 0o170000, stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
        kinds = ",".join(str(k) for k in (IFREG, IFDIR, IFLNK, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK))
        ints = " OR ".join(
            f"typeof({c}) != 'integer'"
            for c in ("mode", "uid", "gid", "size", "blocks", "atime_ns", "mtime_ns", "ctime_ns", "nlink", "rdev")
        )
        # One scan of inodes for every per-inode rule (each a separate count, for the message).
        inode_rules = [
            (
                "inodes with a field of the wrong type or out of range",
                f"{ints} OR ino < 1 OR uid NOT BETWEEN 0 AND 4294967295 OR gid NOT BETWEEN 0 AND 4294967295 "
                "OR size NOT BETWEEN 0 AND 4611686018427387904 OR blocks < 0 OR nlink NOT BETWEEN 1 AND 4294967295 "
                f"OR (mode & ~{0o177777}) != 0 OR (mode & {IFMT}) NOT IN ({kinds}) "
                f"OR (rdev != 0 AND (mode & {IFMT}) NOT IN ({stat.S_IFCHR}, {stat.S_IFBLK})) OR rdev < 0 "
                "OR (content IS NOT NULL AND (typeof(content) != 'blob' OR length(content) != 32)) "
                "OR (data IS NOT NULL AND typeof(data) != 'integer')",
            ),
            (
                "symlinks without a valid target (1 to 4095 bytes, no NUL, size = its length)",
                f"((mode & {IFMT}) = {IFLNK}) != (target IS NOT NULL) OR (target IS NOT NULL AND "
                f"(typeof(target) != 'blob' OR length(target) NOT BETWEEN 1 AND {PATH_MAX - 1} "
                "OR instr(target, X'00') > 0 OR size != length(target)))",
            ),
            (
                "regular files without a content id, or other entries with content",
                f"((mode & {IFMT}) = {IFREG}) != (content IS NOT NULL) OR ((mode & {IFMT}) != {IFREG} AND data IS NOT NULL)",
            ),
            # The data rows themselves (codec, id, exact size) are checked when
            # a file is decoded (decode_inline), and their length is capped by
            # the connection's length limit: scanning them here would read the
            # whole file (24 ms for 86 MB), on every mount.
            (f"inline files larger than {max_inline} bytes", f"data IS NOT NULL AND size > {int(max_inline)}"),
        ]
        counts = next(self.db.execute(
            "SELECT " + ", ".join(f"coalesce(sum({rule}), 0)" for _, rule in inode_rules)
            + f", coalesce(sum((mode & {IFMT}) = {IFDIR}), 0) FROM inodes"
        ))
        for (what, _), n in zip(inode_rules, counts, strict=False):
            if n:
                raise bad(f"{what} ({n})")
        ndirs = counts[-1]
        try:
            root = self.getattr(ROOT_INO)
        except NotFound:
            raise bad("no root directory") from None
        if not root.is_dir:
            raise bad("root is not a directory")
        check(
            "invalid entry names (empty, '.', '..', '/', NUL, longer than 255 bytes, not bytes) or entry ids",
            "SELECT count(*) FROM dentries NOT INDEXED WHERE typeof(name) != 'blob' OR length(name) = 0 "
            "OR length(name) > 255 OR name IN (X'2E', X'2E2E') OR instr(name, X'2F') > 0 OR instr(name, X'00') > 0 "
            "OR typeof(parent) != 'integer' OR typeof(ino) != 'integer' OR id < 1",
        )
        check(
            "directory entries that refer to a missing inode",
            "SELECT count(*) FROM dentries d NOT INDEXED LEFT JOIN inodes i ON i.ino = d.ino WHERE i.ino IS NULL",
        )
        check(
            "directory entries whose parent is missing or not a directory",
            "SELECT count(*) FROM dentries d NOT INDEXED LEFT JOIN inodes p ON p.ino = d.parent "
            f"WHERE p.ino IS NULL OR (p.mode & {IFMT}) != {IFDIR}",
        )
        # Every directory but the root is named exactly once, the root never; and
        # all are reachable from the root: together, the directories form a tree.
        check("entries naming the root directory", f"SELECT count(*) FROM dentries NOT INDEXED WHERE ino = {ROOT_INO}")
        check(
            "directories with more than one parent",
            "SELECT count(*) FROM (SELECT d.ino FROM dentries d NOT INDEXED JOIN inodes i ON i.ino = d.ino "
            f"WHERE (i.mode & {IFMT}) = {IFDIR} GROUP BY d.ino HAVING count(*) > 1)",
        )
        # UNION ALL (no de-duplication) is safe now: with one parent per
        # directory and none for the root, no cycle is reachable from the root
        # (walking back along a cycle never leaves it), so the recursion ends.
        reachable = self._one(
            "WITH RECURSIVE r(ino) AS (SELECT ? UNION ALL SELECT d.ino FROM dentries d JOIN r ON d.parent = r.ino "
            f"JOIN inodes i ON i.ino = d.ino WHERE (i.mode & {IFMT}) = {IFDIR}) SELECT count(*) FROM r",
            (ROOT_INO,),
        )
        if reachable != ndirs:
            raise bad("directories not reachable from the root (a cycle or an orphan)")
        # Large files: chunks exactly tile the size, in order (the primary key
        # makes (ino, idx) unique; idx in range and the right count make it complete).
        cs = self.chunk_size
        check(
            "chunks of the wrong length, index or type, or of no large file",
            "SELECT count(*) FROM chunks c LEFT JOIN inodes i ON i.ino = c.ino WHERE i.ino IS NULL "
            f"OR (i.mode & {IFMT}) != {IFREG} OR i.data IS NOT NULL "
            "OR typeof(c.idx) != 'integer' OR typeof(c.length) != 'integer' "
            "OR (c.cid IS NOT NULL AND (typeof(c.cid) != 'blob' OR length(c.cid) != 32)) "
            f"OR c.idx < 0 OR c.idx >= (i.size + {cs - 1}) / {cs} OR c.length != min({cs}, i.size - c.idx * {cs})",
        )
        check(
            "large files whose chunks do not cover their size",
            f"SELECT count(*) FROM inodes i WHERE (i.mode & {IFMT}) = {IFREG} AND i.data IS NULL AND "
            f"(SELECT count(*) FROM chunks c WHERE c.ino = i.ino) != (i.size + {cs - 1}) / {cs}",
        )
        check(
            "extended attributes with an invalid name or value, or of no inode",
            "SELECT count(*) FROM xattrs x LEFT JOIN inodes i ON i.ino = x.ino WHERE i.ino IS NULL "
            "OR typeof(x.name) != 'blob' OR length(x.name) NOT BETWEEN 1 AND 255 OR instr(x.name, X'00') > 0 "
            f"OR typeof(x.value) != 'blob' OR length(x.value) > {MAX_XATTR_VALUE}",
        )

    # -- point and range queries ------------------------------------------

    def getattr(self, ino: int) -> Inode:
        for row in self.db.execute(f"SELECT {self._cols} FROM inodes WHERE ino = ?", (ino,)):
            return Inode(*row)
        raise NotFound(f"no inode {ino}")

    def lookup(self, parent: int, name: bytes) -> Inode | None:
        for row in self.db.execute(
            f"SELECT {self._icols} FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE d.parent = ? AND d.name = ?",
            (parent, name),
        ):
            return Inode(*row)
        return None

    def readdir(self, ino: int, after: int = 0, limit: int = -1) -> list[tuple[int, bytes, Inode]]:
        """``(cursor, name, inode)`` of the entries of directory *ino* after cursor *after*."""
        return [
            (row[0], row[1], Inode(*row[2:]))
            for row in self.db.execute(
                f"SELECT d.id, d.name, {self._icols} FROM dentries d "
                "JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? AND d.id > ? ORDER BY d.id LIMIT ?",
                (ino, after, limit),
            )
        ]

    def entry_types(self, ino: int) -> dict[bytes, tuple[int, int]]:
        """Directory *ino*'s entries as ``name -> (inode, file type)``: one query, no attributes."""
        return {name: (child, stat.S_IFMT(mode)) for name, child, mode in self.db.execute(
            "SELECT d.name, d.ino, i.mode FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ?", (ino,))}

    def resolve(self, path: bytes, *, follow: bool = False) -> Inode:
        """The inode at *path* (``/``-separated, relative to the root).

        Symlinks in the middle of the path are followed, and the last one too
        if *follow*; only inside the version: an absolute target or one that
        climbs above the root is refused (NotFound), never resolved on the host.
        """
        shown = path.decode(errors="replace")
        todo = split_path(path)[::-1]
        stack = [self.getattr(ROOT_INO)]  # the directories walked through, for ".."
        hops = 0
        while todo:
            name = todo.pop()
            if name == b"..":
                if len(stack) == 1:
                    raise NotFound(f"{shown}: a symlink points outside the version")
                stack.pop()
                continue
            node = stack[-1]
            if not node.is_dir:
                raise NotFound(f"{shown}: not a directory")
            child = self.lookup(node.ino, name)
            if child is None:
                raise NotFound(f"no such file or directory: {shown}")
            if child.is_link and (todo or follow):
                hops += 1
                if hops > 40:
                    raise NotFound(f"{shown}: too many levels of symbolic links")
                assert child.target is not None
                if child.target.startswith(b"/"):
                    raise NotFound(f"{shown}: a symlink points outside the version (absolute target)")
                todo.extend(p for p in child.target.split(b"/")[::-1] if p not in (b"", b"."))
                continue
            stack.append(child)
        return stack[-1]

    def chunks(self, ino: int) -> list[Chunk]:
        return [Chunk(*r) for r in self.db.execute("SELECT idx, cid, length FROM chunks WHERE ino = ? ORDER BY idx", (ino,))]

    def inline_data(self, node: Inode) -> bytes:
        """The content of a small file, decompressed and verified against its content id."""
        return decode_inline(node, *self.inline_payload(node))

    def inline_payload(self, node: Inode) -> tuple[bytes, int, bytes]:
        """``(content id, codec, payload)`` of a small file, undecoded: :func:`decode_inline` does the CPU part."""
        try:
            for cid, codec, payload in self.db.execute("SELECT cid, codec, payload FROM data WHERE id = ?", (node.data,)):
                if type(cid) is not bytes or type(codec) is not int or type(payload) is not bytes:
                    break
                return cid, codec, payload
            else:
                raise IntegrityError(f"inline data of inode {node.ino} is missing")
        except apsw.Error as e:  # too big for the length limit, or a corrupt page
            raise IntegrityError(f"inline data of inode {node.ino} cannot be read: {e}") from None
        raise IntegrityError(f"inline data of inode {node.ino} is malformed")

    def pack_ref(self, node: Inode) -> tuple[Chunk, int]:
        """Where a packed file's bytes are: the pack as a blob (``Chunk(0, id, size)``) and the offset in it."""
        pack = self.pack_row(node.pack or 0)
        if pack is None:
            raise IntegrityError(f"pack of inode {node.ino} is missing from the index")
        return pack, node.pack_offset

    def pack_row(self, row: int) -> Chunk | None:
        """Pack *row* of an index as ``Chunk(0, id, size, place)``, None past the last."""
        for cid, size, seg, off, length in self.db.execute(
            "SELECT cid, size, segment, seg_offset, seg_length FROM packs WHERE id = ?", (row,)
        ):
            return Chunk(0, cid, size, Place(seg, off or 0, length or 0))
        return None

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return dict(self.db.execute("SELECT name, value FROM xattrs WHERE ino = ? ORDER BY name", (ino,)))

    def has_xattrs(self) -> bool:
        """Whether any entry has an extended attribute."""
        return self._one("SELECT EXISTS (SELECT 1 FROM xattrs)") == 1

    def chunk_sizes(self) -> dict[bytes, int]:
        """``{chunk id: length}`` of every non-zero chunk this manifest references."""
        return dict(self.db.execute("SELECT cid, length FROM chunks WHERE cid IS NOT NULL"))

    def chunk_ids(self) -> set[bytes]:
        """Every non-zero chunk id this manifest references."""
        return {r[0] for r in self.db.execute("SELECT DISTINCT cid FROM chunks WHERE cid IS NOT NULL")}

    def walk(self, ino: int = ROOT_INO, prefix: bytes = b"") -> Iterator[tuple[bytes, Inode]]:
        """``(path, inode)`` of every entry below *ino*, depth first, parents before children."""
        stack = [(ino, prefix)]
        while stack:
            dino, dpath = stack.pop()
            children = self.readdir(dino)
            for _, name, node in children:
                path = dpath + b"/" + name if dpath else name
                yield path, node
            for _, name, node in reversed(children):
                if node.is_dir:
                    stack.append((node.ino, dpath + b"/" + name if dpath else name))
