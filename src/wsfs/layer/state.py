"""The state folder of a write layer: its database and its staged content files.

Layout (every directory ``0700``, every file ``0600``)::

    <state>/layer.db (+ -wal, -shm)   apsw, WAL: namespace, attributes, xattrs, block maps
    <state>/data/slots                 staged content of every changed file: slots of BLOCK bytes

Every path operation goes through a descriptor of the state folder opened
with ``O_NOFOLLOW | O_DIRECTORY`` (``fsops.O_DIR``): a symlink planted
at ``data`` or at a staged file's name is refused (ELOOP), never followed.
SQLite takes a path; it gets ``/proc/self/fd/<state fd>/layer.db``, which the
kernel resolves through the open descriptor, not through the folder's name.

Schema (written once here; every column explained)::

    meta(key TEXT PRIMARY KEY, value)     format, workspace, version, top, base_max_ino, next_ino, block
    nodes(ino INTEGER PRIMARY KEY,        an inode the layer changed or created: all its attributes
                                          (a base inode's row starts as a copy of the base's)
          mode, uid, gid,                 st_mode (type + permission bits), owner
          size,                           st_size (regular files: bytes; symlinks: target length)
          atime_ns, mtime_ns, ctime_ns,   times in ns
          nlink,                          links in the merged tree (0: unlinked, kept while open)
          rdev,                           devices: device number, else 0
          target BLOB,                    symlinks: target bytes
          parent INTEGER,                 directories: the directory holding them now (0 for the root)
          base_size INTEGER,              regular files: bytes [0, base_size) that no row of
                                          ``blocks`` covers are the base file's; beyond: zeros.
                                          0 for a new file; lowered by truncation, never raised
          xattrs INTEGER)                 1: ``xattrs`` holds all this inode's xattrs (else the base's)
    dentries(id INTEGER PRIMARY KEY,      readdir cursor of layer entries (rowid: stable while the
                                          entry exists)
             parent, name BLOB,           unique (parent, name)
             ino)                         the inode; 0 = whiteout: hides the base's entry of that name
    blocks(ino, blk, slot,                block blk (bytes [blk*BLOCK, (blk+1)*BLOCK)) of file ino is
           PRIMARY KEY (ino, blk))        at slot*BLOCK in data/<ino>; a block without a row is the
                                          base's (below base_size) or zeros
    xattrs(ino, name BLOB, value BLOB,    extended attributes of inodes whose nodes.xattrs = 1
           PRIMARY KEY (ino, name))
    published(key BLOB PRIMARY KEY,       the memo of commit (wsfs.versions.commit): per format 2 key
                                          the layer has published, what it published there
              body BLOB,                  the record body (NULL: the key was removed)
              ino INTEGER,                the layer's inode at that key then (0 if none), and its
              ctime_ns INTEGER)           ctime: same inode and ctime -> same content (not re-read)
    meta published_version, published_top: the version the layer last published (initially the base)

Format 1 folders (before commit existed) are upgraded in place to format 2:
the ``published`` table is added, empty (nothing was published from them).

A directory keeps its inode number when renamed and its entries are keyed by
that number, so renaming a directory changes one or two ``dentries`` rows,
whatever the subtree holds.  A directory replaced by another (rmdir, mkdir)
is a new inode: its base entries cannot show through, no "opaque" flag needed.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any

import apsw

from wsfs.errors import LayerBusy, LayerMismatch, NoSpace
from wsfs.fsops import O_DIR, proc_path
from wsfs.localfs import PRIVATE_DIR, PRIVATE_FILE, private_dir, private_umask, tighten

LAYER_FORMAT = 2  # meta "format": a folder written by another layout is refused, not guessed at
DB_NAME = "layer.db"
DATA_DIR = "data"
DATA_FILES = ("slots",)  # under DATA_DIR; a list so that a later layout can add files (one per size class...)
# Space kept for the database: staged content may not take the last
# DB_MARGIN bytes of the file system (a write that would fails with ENOSPC),
# so that the open batch can still commit, and the application delete files
# to make room.  SQLite rolls a whole batch back when its COMMIT finds the
# disk full; this margin is what keeps that from happening to content alone.
DB_MARGIN = 2 * 1024 * 1024

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE nodes (
    ino INTEGER PRIMARY KEY,
    mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    nlink INTEGER NOT NULL, rdev INTEGER NOT NULL, target BLOB,
    parent INTEGER, base_size INTEGER NOT NULL DEFAULT 0, xattrs INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE dentries (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL);
CREATE UNIQUE INDEX dentries_name ON dentries(parent, name);
CREATE TABLE blocks (ino INTEGER NOT NULL, blk INTEGER NOT NULL, slot INTEGER NOT NULL,
                     PRIMARY KEY (ino, blk)) WITHOUT ROWID;
CREATE TABLE xattrs (ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
                     PRIMARY KEY (ino, name)) WITHOUT ROWID;
"""
# The memo of commit (added by layer format 2): a format 1 folder gets it on open.
PUBLISHED_TABLE = "CREATE TABLE published (key BLOB PRIMARY KEY, body BLOB, ino INTEGER NOT NULL, ctime_ns INTEGER NOT NULL) WITHOUT ROWID"
SCHEMA += PUBLISHED_TABLE + ";\n"



class BaseId:
    """Which version a layer is over: workspace, version number, top piece id (hex)."""

    __slots__ = ("workspace", "version", "top")

    def __init__(self, workspace: str, version: int, top: str) -> None:
        self.workspace, self.version, self.top = workspace, version, top

    def __repr__(self) -> str:
        return f"{self.workspace}@{self.version}"


def no_space(e: OSError | apsw.Error) -> bool:
    """Whether *e* says the state folder's file system is full."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(e, apsw.FullError)


class StateDir:
    """The open state folder: its descriptor, ``data/``'s, and the database connection."""

    def __init__(self, path: str) -> None:
        private_dir(path)  # the folder itself is named by the caller; everything below by descriptor
        self.path = path
        self.fd = os.open(path, O_DIR)
        try:
            # One process at a time: two daemons batching into one database
            # would each commit the other's half-done batches.  Released by
            # the kernel when the process dies, so a crash leaves no stale lock.
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LayerBusy(f"state folder {path} is in use by another process") from None
            tighten(path, PRIVATE_DIR, self.fd)
            self.data_fd = self._subdir(DATA_DIR)
            self.db = self._open_db()
        except BaseException:
            os.close(self.fd)
            raise

    def _subdir(self, name: str) -> int:
        try:
            os.mkdir(name, PRIVATE_DIR, dir_fd=self.fd)
        except FileExistsError:
            pass
        fd = os.open(name, O_DIR, dir_fd=self.fd)  # ELOOP if someone planted a symlink
        tighten(os.path.join(self.path, name), PRIVATE_DIR, fd)
        return fd

    def _open_db(self) -> apsw.Connection:
        for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
            try:  # created 0600 by us, not 0644 & ~umask by SQLite; never through a symlink
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE, dir_fd=self.fd)
            except FileExistsError:
                continue
            try:
                tighten(os.path.join(self.path, name), PRIVATE_FILE, fd)
            finally:
                os.close(fd)
        with private_umask():
            db = apsw.Connection(os.path.join(proc_path(self.fd), DB_NAME), statementcachesize=256)
        db.setbusytimeout(5000)
        # WAL: readers (wsfs status from another process) see the last commit
        # while a batch is open.  synchronous=NORMAL: a commit is not fsynced;
        # durable commits (fsync, sync_all) switch to FULL for that commit.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA trusted_schema=OFF")
        return db

    def init_or_check(self, base: BaseId, base_max_ino: int, block: int) -> dict[str, Any]:
        """Create the schema for *base*, or check the folder is a layer over *base*'s workspace; the meta."""
        db = self.db
        if not db.execute("SELECT 1 FROM sqlite_schema WHERE name = 'meta'").fetchall():
            with db:
                db.execute(SCHEMA)
                db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("format", LAYER_FORMAT), ("workspace", base.workspace), ("version", base.version),
                     ("top", base.top), ("base_max_ino", base_max_ino), ("next_ino", base_max_ino + 1),
                     ("block", block)],
                )
        meta = dict(db.execute("SELECT key, value FROM meta"))
        if meta.get("format") == 1:  # before commit: add the memo, empty
            with db:
                db.execute(PUBLISHED_TABLE)
                db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (LAYER_FORMAT,))
            meta["format"] = LAYER_FORMAT
        if meta.get("format") != LAYER_FORMAT:
            raise LayerMismatch(f"{self.path} holds a write layer of format {meta.get('format')!r}; this wsfs writes {LAYER_FORMAT}")
        if meta.get("workspace") != base.workspace:
            raise LayerMismatch(f"{self.path} holds the changes of workspace {meta.get('workspace')!r}, not {base.workspace!r}")
        if (meta.get("version"), meta.get("top")) != (base.version, base.top):
            # Rebasing a layer onto another version is commit's work (issue 13); refuse until then.
            raise LayerMismatch(
                f"{self.path} holds changes over {base.workspace}@{meta.get('version')}, not @{base.version}"
            )
        return meta

    def free_bytes(self) -> int:
        """Space left for us on the state folder's file system."""
        st = os.fstatvfs(self.fd)
        return st.f_bavail * st.f_frsize

    def open_data(self, n: int, create: bool) -> int:
        """Staged content file *n* (0: ``slots``; read-write, created ``0600`` if *create*), never through a symlink."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(DATA_FILES[n], flags, PRIVATE_FILE, dir_fd=self.data_fd)
        except OSError as e:
            if no_space(e):
                raise NoSpace(f"state folder {self.path} is full") from None
            raise
        try:
            tighten(os.path.join(self.path, DATA_DIR, DATA_FILES[n]), PRIVATE_FILE, fd)
            os.fsync(self.data_fd)  # its name is durable before any commit refers to it
        except BaseException:
            os.close(fd)
            raise
        return fd

    def close(self) -> None:
        self.db.close()
        os.close(self.data_fd)
        os.close(self.fd)
