"""WriteLayer: a read-write tree made of an immutable base version and local changes.

What it owns: the merged view (getattr, lookup, readdir, readlink, xattrs,
read) and every mutation (create, mkdir, symlink, link, unlink, rmdir,
rename, setattr, write, xattrs), recorded in a state folder
(:mod:`wsfs.layer.state`).  What it is not: a FUSE adapter (no pyfuse3 type
here; errors are :mod:`wsfs.errors` classes carrying their errno), nor a
store client (base content comes from the caller's ``read_base``), nor a
permission checker (the caller passes what its rules decided, e.g.
``kill_suid``).  Imports: errors, format, localfs, versions.fsops; never the daemon.

Batching and durability (``docs/write-layer.md`` has the full guarantee):
changes go into one open SQLite transaction (a *batch*); content goes to
staged files with ``pwrite`` and the per-file metadata (size, block map,
times) stays in memory until the file is flushed or released, so a
``write(2)`` costs no SQL at all.  A batch is committed when the application
fsyncs (:meth:`fsync`, :meth:`sync_all`: content ``fdatasync``-ed first,
then the commit, then the WAL ``fsync``-ed) or when it is older than
``commit_interval`` (checked at each call and by :meth:`commit_if_due`).
After a ``kill -9`` the layer shows exactly its last commit: a prefix of the
operations, never less than the last fsync.

Not thread-safe: one caller thread (the daemon's trio thread) at a time.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import apsw

from wsfs.errors import (
    AttributeTooBig,
    Exists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
)
from wsfs.format.manifest import ROOT_INO, Chunk, Inode, Manifest
from wsfs.format.names import NAME_MAX
from wsfs.layer.changes import Change, changes
from wsfs.layer.content import BLOCK, Content, SlotPool
from wsfs.layer.state import BaseId, StateDir, no_space

log = logging.getLogger(__name__)

ReadBase = Callable[[Inode, int, int], bytes]  # (base inode, offset, length) -> exactly those bytes

RENAME_NOREPLACE = 1  # Linux's values (linux/fs.h), as FUSE passes them
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
TARGET_MAX = 4095
XATTR_VALUE_MAX = 64 * 1024  # what format 2 records can hold
LAYER_CURSOR = 1 << 48  # readdir cursors: base dentry ids below, LAYER_CURSOR + layer dentry id above
ALLOC_UNIT = 4096
_NODE_COLS = "ino, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, rdev, target, parent, base_size, xattrs"
_S_KILL = stat.S_ISUID | stat.S_ISGID


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise InvalidArgument(f"invalid name {name!r}")


def _blocks(size: int) -> int:
    return -(-size // ALLOC_UNIT) * (ALLOC_UNIT // 512)


class WriteLayer:
    """A base version (``Manifest``) plus the changes kept in *state_dir*; see the module docstring."""

    def __init__(self, state_dir: str, base: Manifest, base_id: BaseId, read_base: ReadBase, *,
                 commit_interval: float = 1.0, batch_ops: int = 20000) -> None:
        self.m = base
        self.base_id = base_id
        self._read_base = read_base
        self.commit_interval = commit_interval
        self.batch_ops = batch_ops
        self.state = StateDir(state_dir)
        try:
            self.db = self.state.db
            base_max = self.m.db.execute("SELECT coalesce(max(ino), 1) FROM inodes").fetchall()[0][0]
            meta = self.state.init_or_check(base_id, base_max, BLOCK)
            if meta.get("block") != BLOCK:
                raise InvalidArgument(f"state folder block size {meta.get('block')} is not {BLOCK}")
            self.base_max: int = meta["base_max_ino"]
            self._next_ino: int = meta["next_ino"]
            self._wal_fd = -1
            self.contents: dict[int, Content] = {}
            self.opens: dict[int, int] = {}
            self._tx = False
            self._tx_start = 0.0
            self._tx_ops = 0
            self._tx_contents: set[Content] = set()  # whose rows are in the open batch
            self._base_parents: dict[int, int] | None = None
            self._closed = False
            self._recover()
            self.pool = SlotPool(self.state, {r[0] for r in self.db.execute("SELECT slot FROM blocks")})
        except BaseException:
            self.state.close()
            raise

    # -- batches -------------------------------------------------------------

    def _begin(self) -> None:
        if not self._tx:
            self.db.execute("BEGIN IMMEDIATE")
            self._tx = True
            self._tx_start = time.monotonic()
        self._tx_ops += 1

    @contextmanager
    def _op(self) -> Iterator[None]:
        """One mutation: state-folder full maps to ENOSPC; the batch is committed when due."""
        try:
            yield
        except apsw.FullError:
            self._after_sql_failure()
            raise NoSpace(f"state folder {self.state.path} is full") from None
        except OSError as e:
            if no_space(e):
                raise NoSpace(f"state folder {self.state.path} is full") from None
            raise
        self.commit_if_due()

    def _after_sql_failure(self) -> None:
        """SQLite may roll a batch back on SQLITE_FULL: then memory is reloaded to the last commit."""
        if self._tx and not self.db.in_transaction:
            log.error("the state folder %s is full: the changes since the last commit were lost", self.state.path)
            self._tx = False
            self._tx_contents.clear()
            self.contents.clear()
            self.pool.close()
            self.pool = SlotPool(self.state, {r[0] for r in self.db.execute("SELECT slot FROM blocks")})

    def commit_if_due(self) -> None:
        """Commit the open batch if it is older than ``commit_interval`` or holds ``batch_ops`` changes."""
        if self._tx and (self._tx_ops >= self.batch_ops or time.monotonic() - self._tx_start >= self.commit_interval):
            self._commit(durable=False)

    def _commit(self, durable: bool) -> None:
        for c in list(self.contents.values()):
            if c.dirty or c.changed or c.times or c.mode is not None:
                self._persist(c)
        # Retired slots may only be reused once no commit that could survive a
        # power loss refers to them: a commit that retires some is made durable.
        durable = durable or bool(self.pool.retired)
        # Content before the rows that refer to it, for every commit (one
        # fdatasync of one file, at most once per commit_interval unless the
        # application fsyncs): so whichever commits a power loss keeps, the
        # content they refer to is on disk.
        self.pool.sync()
        if self._tx:
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'next_ino'", (self._next_ino,))
            self.db.execute("COMMIT")
            self._tx = False
            self._tx_ops = 0
        if durable:
            self._sync_wal()
        for c in self._tx_contents:
            c.committed()
        self._tx_contents.clear()
        self.pool.committed(durable)
        for ino in [i for i, c in self.contents.items() if not self.opens.get(i) and not c.dirty]:
            del self.contents[ino]

    def _sync_wal(self) -> None:
        """fsync the WAL: with ``synchronous=NORMAL`` a commit is in it but not durable until then."""
        if self._wal_fd < 0:
            self._wal_fd = os.open("layer.db-wal", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.state.fd)
        os.fsync(self._wal_fd)

    def fsync(self, ino: int, datasync: bool = False) -> None:
        """The application fsynced *ino*: after this returns, every change so far survives a crash."""
        with self._op():
            self._commit(durable=True)

    def sync_all(self) -> None:
        """Make every change so far durable (syncfs, unmount, checkpoint)."""
        with self._op():
            self._commit(durable=True)

    def close(self) -> None:
        """Commit durably and close the state folder (what unmount does)."""
        if self._closed:
            return
        self._closed = True
        self.sync_all()
        self.contents.clear()
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
        self.pool.close()
        self.state.close()

    def __enter__(self) -> WriteLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recover(self) -> None:
        """After a crash: drop inodes unlinked while open (their slots are free once no row names them)."""
        db = self.db
        gone = [r[0] for r in db.execute("SELECT ino FROM nodes WHERE nlink = 0 AND (size > 0 OR xattrs = 0)")]
        if gone:
            with db:
                for ino in gone:
                    self._purge_rows(ino)

    # -- rows ----------------------------------------------------------------

    def _row(self, ino: int) -> tuple[Any, ...] | None:
        for r in self.db.execute(f"SELECT {_NODE_COLS} FROM nodes WHERE ino = ?", (ino,)):
            return r
        return None

    def _base(self, ino: int) -> Inode | None:
        if ino > self.base_max:
            return None
        try:
            return self.m.getattr(ino)
        except NotFound:
            return None

    def _ensure_row(self, ino: int) -> tuple[Any, ...]:
        """The node row of *ino*, copied from the base first if the layer has none (copy-up of attributes)."""
        r = self._row(ino)
        if r is not None:
            return r
        b = self._base(ino)
        if b is None:
            raise NotFound(f"no inode {ino}")
        self._begin()
        self.db.execute(
            f"INSERT INTO nodes ({_NODE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL,?,0)",
            (ino, b.mode, b.uid, b.gid, b.size, b.atime_ns, b.mtime_ns, b.ctime_ns, b.nlink, b.rdev, b.target,
             b.size if b.is_reg else 0),
        )
        r = self._row(ino)
        assert r is not None
        return r

    def _update(self, ino: int, **cols: Any) -> None:
        self._ensure_row(ino)
        self._begin()
        sets = ", ".join(f"{k} = ?" for k in cols)
        self.db.execute(f"UPDATE nodes SET {sets} WHERE ino = ?", (*cols.values(), ino))

    def _attr_row(self, r: tuple[Any, ...]) -> Inode:
        ino, mode, uid, gid, size, atime, mtime, ctime, nlink, rdev, target = r[:11]
        return self._with_content(Inode(ino, mode, uid, gid, size, _blocks(size) if stat.S_ISREG(mode) else 0,
                                        atime, mtime, ctime, nlink, rdev, target, None, None))

    def _with_content(self, a: Inode) -> Inode:
        """*a* with what writes not yet in the batch changed (size, times, mode): kept in memory per file."""
        c = self.contents.get(a.ino)
        if c is None:
            return a
        mtime, ctime = c.times or (a.mtime_ns, a.ctime_ns)
        mode = a.mode if c.mode is None else c.mode
        return a._replace(size=c.size, blocks=_blocks(c.size), mtime_ns=mtime, ctime_ns=ctime, mode=mode)

    def getattr(self, ino: int) -> Inode:
        """Attributes of *ino* as the merged tree shows them (NotFound if it does not exist)."""
        r = self._row(ino)
        if r is not None:
            return self._attr_row(r)
        b = self._base(ino)
        if b is None:
            raise NotFound(f"no inode {ino}")
        return self._with_content(b)

    def _merged(self, node: Inode) -> Inode:
        r = self._row(node.ino)
        return self._with_content(node) if r is None else self._attr_row(r)

    def _now(self) -> int:
        return time.time_ns()

    def _touch_dir(self, ino: int, now: int, nlink_delta: int = 0) -> None:
        if nlink_delta:
            nlink = self.getattr(ino).nlink
            self._update(ino, mtime_ns=now, ctime_ns=now, nlink=nlink + nlink_delta)
        else:
            self._update(ino, mtime_ns=now, ctime_ns=now)

    # -- namespace -------------------------------------------------------------

    def _layer_dentry(self, parent: int, name: bytes) -> int | None:
        for (ino,) in self.db.execute("SELECT ino FROM dentries WHERE parent = ? AND name = ?", (parent, name)):
            return ino
        return None

    def _lookup_ino(self, parent: int, name: bytes) -> int:
        """The inode at (*parent*, *name*) in the merged tree; 0 if none."""
        ino = self._layer_dentry(parent, name)
        if ino is not None:
            return ino
        if parent <= self.base_max:
            b = self.m.lookup(parent, name)
            if b is not None:
                return b.ino
        return 0

    def _dir(self, ino: int) -> Inode:
        a = self.getattr(ino)
        if not a.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        if a.nlink == 0:
            raise NotFound(f"directory {ino} was removed")
        return a

    def lookup(self, parent: int, name: bytes) -> Inode:
        """The entry *name* of directory *parent* (NotFound, NotADirectory)."""
        self._dir(parent)
        if len(name) > NAME_MAX:
            raise NameTooLong(f"name of {len(name)} bytes")
        ino = self._lookup_ino(parent, name)
        if not ino:
            raise NotFound(f"no entry {name!r} in {parent}")
        return self.getattr(ino)

    def readdir(self, ino: int, after: int = 0, limit: int = -1) -> list[tuple[int, bytes, Inode]]:
        """``(cursor, name, attributes)`` of directory *ino*'s entries after *after* (0: from the start).

        Base entries first, in the base's order (cursor: the base dentry id),
        minus those the layer hides or replaces; then the layer's entries in
        creation order (cursor ``LAYER_CURSOR + id``).  A cursor stays valid
        while entries are added and removed (an entry added meanwhile may or
        may not be listed, as POSIX allows).
        """
        self._dir(ino)
        out: list[tuple[int, bytes, Inode]] = []
        want = limit if limit >= 0 else 1 << 62
        if after < LAYER_CURSOR and ino <= self.base_max:
            shadowed = {r[0] for r in self.db.execute("SELECT name FROM dentries WHERE parent = ?", (ino,))}
            while len(out) < want:
                page = self.m.readdir(ino, after, 512)
                if not page:
                    break
                for cursor, name, node in page:
                    after = cursor
                    if name not in shadowed:
                        out.append((cursor, name, self._merged(node)))
                        if len(out) >= want:
                            return out
            after = LAYER_CURSOR
        after = max(after, LAYER_CURSOR)
        for rid, name, child in self.db.execute(
            "SELECT id, name, ino FROM dentries WHERE parent = ? AND id > ? AND ino != 0 ORDER BY id LIMIT ?",
            (ino, after - LAYER_CURSOR, want - len(out)),
        ):
            out.append((LAYER_CURSOR + rid, name, self.getattr(child)))
        return out

    def readlink(self, ino: int) -> bytes:
        """The target of symlink *ino*."""
        a = self.getattr(ino)
        if not stat.S_ISLNK(a.mode) or a.target is None:
            raise InvalidArgument(f"inode {ino} is not a symlink")
        return a.target

    def _set_dentry(self, parent: int, name: bytes, ino: int) -> None:
        self._begin()
        self.db.execute(
            "INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?) "
            "ON CONFLICT (parent, name) DO UPDATE SET ino = excluded.ino",
            (parent, name, ino),
        )

    def _drop_dentry(self, parent: int, name: bytes) -> None:
        """Remove a name: a whiteout if the base has it, else the layer row goes."""
        self._begin()
        if parent <= self.base_max and self.m.lookup(parent, name) is not None:
            self._set_dentry(parent, name, 0)
        else:
            self.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (parent, name))

    def _new_ino(self) -> int:
        ino = self._next_ino
        self._next_ino += 1
        return ino

    def _make(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
              target: bytes | None = None) -> Inode:
        with self._op():
            _check_name(name)
            self._dir(parent)
            if self._lookup_ino(parent, name):
                raise Exists(f"{name!r} exists in {parent}")
            now = self._now()
            ino = self._new_ino()
            is_dir = stat.S_ISDIR(mode)
            size = len(target) if target is not None else 0
            self._begin()
            self.db.execute(
                f"INSERT INTO nodes ({_NODE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0,0)",
                (ino, mode, uid, gid, size, now, now, now, 2 if is_dir else 1, rdev, target, parent if is_dir else None),
            )
            self._set_dentry(parent, name, ino)
            self._touch_dir(parent, now, 1 if is_dir else 0)
            return self.getattr(ino)

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> Inode:
        """A new regular file, fifo, socket or device node (mode includes the type; EEXIST if taken)."""
        fmt = stat.S_IFMT(mode)
        if fmt not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            raise InvalidArgument(f"cannot create type {fmt:o} with create/mknod")
        return self._make(parent, name, mode, uid, gid, rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0)

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        """A new directory (a new inode: nothing of a base directory once at that name shows through)."""
        return self._make(parent, name, stat.S_IFDIR | (mode & 0o7777), uid, gid)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Inode:
        """A new symlink to *target* (1-4095 bytes, no NUL: what format 2 records hold)."""
        if len(target) > TARGET_MAX:
            raise NameTooLong(f"symlink target of {len(target)} bytes")
        if not target:
            raise NotFound("empty symlink target")
        if b"\0" in target:
            raise InvalidArgument("NUL in a symlink target")
        return self._make(parent, name, stat.S_IFLNK | 0o777, uid, gid, target=target)

    def link(self, ino: int, newparent: int, newname: bytes) -> Inode:
        """A further name for *ino* (not a directory: EPERM); data is shared through every name."""
        with self._op():
            _check_name(newname)
            a = self.getattr(ino)
            if a.is_dir:
                raise NotPermitted("hard link to a directory")
            self._dir(newparent)
            if self._lookup_ino(newparent, newname):
                raise Exists(f"{newname!r} exists in {newparent}")
            now = self._now()
            self._update(ino, nlink=a.nlink + 1, ctime_ns=now)
            self._set_dentry(newparent, newname, ino)
            self._touch_dir(newparent, now)
            return self.getattr(ino)

    def _entry(self, parent: int, name: bytes) -> Inode:
        """The entry *name* of directory *parent*, for a change (NotADirectory, NotFound)."""
        self._dir(parent)
        ino = self._lookup_ino(parent, name)
        if not ino:
            raise NotFound(f"no entry {name!r} in {parent}")
        return self.getattr(ino)

    def unlink(self, parent: int, name: bytes) -> None:
        """Remove a name of a non-directory; the inode goes with its last name and last handle."""
        with self._op():
            a = self._entry(parent, name)
            if a.is_dir:
                raise IsADirectory(f"{name!r} is a directory")
            now = self._now()
            self._drop_dentry(parent, name)
            self._unref(a, now)
            self._touch_dir(parent, now)

    def _unref(self, a: Inode, now: int) -> None:
        """One name of non-directory *a* is gone."""
        self._update(a.ino, nlink=a.nlink - 1, ctime_ns=now)
        if a.nlink - 1 <= 0:
            self._maybe_purge(a.ino)

    def _dir_empty(self, ino: int) -> bool:
        for _ in self.db.execute("SELECT 1 FROM dentries WHERE parent = ? AND ino != 0 LIMIT 1", (ino,)):
            return False
        if ino > self.base_max:
            return True
        base = self.m.db.execute("SELECT count(*) FROM dentries WHERE parent = ?", (ino,)).fetchall()[0][0]
        if not base:
            return True
        hidden = self.db.execute("SELECT count(*) FROM dentries WHERE parent = ? AND ino = 0", (ino,)).fetchall()[0][0]
        return bool(hidden == base)

    def rmdir(self, parent: int, name: bytes) -> None:
        """Remove an empty directory (empty in the merged view: base entries all whited out)."""
        with self._op():
            a = self._entry(parent, name)
            ino = a.ino
            if not a.is_dir:
                raise NotADirectory(f"{name!r} is not a directory")
            if not self._dir_empty(ino):
                raise NotEmpty(f"{name!r} is not empty")
            now = self._now()
            self._drop_dentry(parent, name)
            self._drop_dir(ino, now)
            self._touch_dir(parent, now, -1)

    def _drop_dir(self, ino: int, now: int) -> None:
        self.db.execute("DELETE FROM dentries WHERE parent = ?", (ino,))  # its whiteouts
        self._update(ino, nlink=0, ctime_ns=now)
        self._maybe_purge(ino)

    def _maybe_purge(self, ino: int) -> None:
        """An inode without names: gone now, or at its last release if open."""
        if self.opens.get(ino):
            return
        c = self.contents.pop(ino, None)
        if c is not None:
            c.drop()
            self._tx_contents.discard(c)
        else:  # slots of the last commit, or of this batch: reusable after a durable commit either way
            for (slot,) in self.db.execute("SELECT slot FROM blocks WHERE ino = ?", (ino,)):
                self.pool.release(slot, durable=True)
        self._purge_rows(ino)

    def _purge_rows(self, ino: int) -> None:
        self.db.execute("DELETE FROM blocks WHERE ino = ?", (ino,))
        self.db.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))
        if ino > self.base_max:
            self.db.execute("DELETE FROM nodes WHERE ino = ?", (ino,))
        else:  # a base inode keeps a row with nlink 0, or the base's attributes would show through
            self.db.execute("UPDATE nodes SET nlink = 0, size = 0, base_size = 0, xattrs = 1 WHERE ino = ?", (ino,))

    def parent_of(self, ino: int) -> int:
        """The directory holding directory *ino* now (the root's is itself)."""
        if ino == ROOT_INO:
            return ROOT_INO
        r = self._row(ino)
        if r is not None and r[11] is not None:
            return int(r[11])
        return self._base_parent_map().get(ino, ROOT_INO)

    def _base_parent_map(self) -> dict[int, int]:
        """Every base directory's base parent: one scan of the base's directory entries, on first need."""
        if self._base_parents is None:
            self._base_parents = dict(self.m.db.execute(
                "SELECT d.ino, d.parent FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE (i.mode & 61440) = 16384"
            ))
        return self._base_parents

    def _is_under(self, ino: int, top: int) -> bool:
        """Whether directory *ino* is *top* or below it."""
        seen = 0
        while True:
            if ino == top:
                return True
            if ino == ROOT_INO or seen > 1 << 16:
                return False
            ino = self.parent_of(ino)
            seen += 1

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int = 0) -> None:
        """Move an entry (files and directories, over files and empty directories; RENAME_NOREPLACE, RENAME_EXCHANGE).

        A directory keeps its inode and its entries stay keyed by it: moving
        one is a change of one or two ``dentries`` rows, O(1) whatever it holds.
        """
        with self._op():
            if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
                raise InvalidArgument(f"rename flags {flags}")
            _check_name(newname)
            sa = self._entry(parent, name)
            src = sa.ino
            self._dir(newparent)
            dst = self._lookup_ino(newparent, newname)
            if (parent, name) == (newparent, newname):
                if flags & RENAME_NOREPLACE:
                    raise Exists(f"{newname!r} exists")
                return
            if sa.is_dir and self._is_under(newparent, src):
                raise InvalidArgument("a directory cannot be moved into itself")
            now = self._now()
            if flags & RENAME_EXCHANGE:
                if not dst:
                    raise NotFound(f"no entry {newname!r} in {newparent}")
                da = self.getattr(dst)
                if da.is_dir and self._is_under(parent, dst):
                    raise InvalidArgument("a directory cannot be moved into itself")
                self._set_dentry(parent, name, dst)
                self._set_dentry(newparent, newname, src)
                if parent != newparent:
                    for a, to in ((sa, newparent), (da, parent)):
                        if a.is_dir:
                            self._update(a.ino, parent=to)
                    delta = int(sa.is_dir) - int(da.is_dir)
                    self._touch_dir(parent, now, -delta)
                    self._touch_dir(newparent, now, delta)
                else:
                    self._touch_dir(parent, now)
                self._update(src, ctime_ns=now)
                self._update(dst, ctime_ns=now)
                return
            if dst:
                if flags & RENAME_NOREPLACE:
                    raise Exists(f"{newname!r} exists")
                if dst == src:  # two names of one file: POSIX says do nothing
                    return
                da = self.getattr(dst)
                if sa.is_dir:
                    if not da.is_dir:
                        raise NotADirectory(f"{newname!r} is not a directory")
                    if not self._dir_empty(dst):
                        raise NotEmpty(f"{newname!r} is not empty")
                elif da.is_dir:
                    raise IsADirectory(f"{newname!r} is a directory")
            self._set_dentry(newparent, newname, src)
            self._drop_dentry(parent, name)
            if dst:
                if da.is_dir:
                    self._drop_dir(dst, now)
                    self._touch_dir(newparent, now, -1)
                else:
                    self._unref(da, now)
            if sa.is_dir and parent != newparent:
                self._update(src, parent=newparent, ctime_ns=now)
                self._touch_dir(parent, now, -1)
                self._touch_dir(newparent, now, 1)
            else:
                self._update(src, ctime_ns=now)
                self._touch_dir(parent, now)
                if parent != newparent:
                    self._touch_dir(newparent, now)

    # -- attributes ------------------------------------------------------------

    def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                size: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None,
                kill_suid: bool = False) -> Inode:
        """chmod (permission bits of *mode*), chown, truncate, utimens; ctime is always now.

        *kill_suid*: clear SUID, and SGID if group-executable, as the caller's
        rules decide (Linux: on chown, and on truncate/write by a non-root user).
        A size change sets mtime to now unless *mtime_ns* is given (tmpfs).
        """
        with self._op():
            a = self.getattr(ino)
            now = self._now()
            if size is not None:
                if a.is_dir:
                    raise IsADirectory(f"inode {ino} is a directory")
                if not a.is_reg:
                    raise InvalidArgument(f"inode {ino} is not a regular file")
                if size < 0:
                    raise InvalidArgument("negative size")
                c = self._content(ino)
                if size != c.size:
                    c.truncate(size)
                    c.times = (now, now)
                    self._tx_contents.add(c)
            c = self.contents.get(ino)
            if c is not None:
                self._persist(c)
            a = self.getattr(ino)
            cols: dict[str, Any] = {"ctime_ns": now}
            new_mode = a.mode
            if mode is not None:
                new_mode = stat.S_IFMT(a.mode) | (mode & 0o7777)
            if kill_suid and not a.is_dir:
                new_mode &= ~(stat.S_ISUID | (stat.S_ISGID if new_mode & stat.S_IXGRP else 0))
            if new_mode != a.mode:
                cols["mode"] = new_mode
            if uid is not None:
                cols["uid"] = uid
            if gid is not None:
                cols["gid"] = gid
            if atime_ns is not None:
                cols["atime_ns"] = atime_ns
            if mtime_ns is not None:
                cols["mtime_ns"] = mtime_ns
            self._update(ino, **cols)
            return self.getattr(ino)

    # -- content ---------------------------------------------------------------

    def _content(self, ino: int) -> Content:
        c = self.contents.get(ino)
        if c is not None:
            return c
        r = self._row(ino)
        base = self._base(ino)
        a = self._attr_row(r) if r is not None else base
        if a is None:
            raise NotFound(f"no inode {ino}")
        if a.is_dir:
            raise IsADirectory(f"inode {ino} is a directory")
        if not a.is_reg:
            raise InvalidArgument(f"inode {ino} is not a regular file")
        read_base = None
        if base is not None:
            def read_base(off: int, n: int, _b: Inode = base) -> bytes:
                return self._read_base(_b, off, n)
        if r is None:
            size, base_size, blocks = a.size, a.size, {}
        else:
            size, base_size = r[4], r[12]
            blocks = dict(self.db.execute("SELECT blk, slot FROM blocks WHERE ino = ?", (ino,)))
        c = Content(self.pool, ino, size, base_size, blocks, read_base)
        self.contents[ino] = c
        return c

    def _persist(self, c: Content) -> None:
        """Write *c*'s size, times and block map into the open batch (content was pwritten before)."""
        self._begin()
        cols: dict[str, Any] = {"size": c.size, "base_size": c.base_size}
        if c.times:
            cols["mtime_ns"], cols["ctime_ns"] = c.times
        if c.mode is not None:
            cols["mode"] = c.mode
        put, drop = c.rows()
        self._update(c.ino, **cols)
        if put:
            self.db.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?)", put)
        if drop:
            self.db.executemany("DELETE FROM blocks WHERE ino = ? AND blk = ?", drop)
        c.times = None
        c.mode = None
        c.dirty = False
        if put or drop:
            self._tx_contents.add(c)

    def read(self, ino: int, off: int, size: int) -> bytes:
        """Bytes [off, off + size) of regular file *ino*, short at its end."""
        c = self.contents.get(ino)
        if c is None:
            r = self._row(ino)
            if r is None:  # an unchanged base file: straight from the base
                a = self.getattr(ino)
                if a.is_dir:
                    raise IsADirectory(f"inode {ino} is a directory")
                if not a.is_reg:
                    raise InvalidArgument(f"inode {ino} is not a regular file")
                n = max(0, min(size, a.size - off))
                return self._read_base(a, off, n) if n else b""
            c = self._content(ino)
        return c.read(off, size)

    def write(self, ino: int, off: int, data: bytes | memoryview, *, kill_suid: bool = False) -> int:
        """Write *data* at *off* into regular file *ino*; mtime and ctime become now.  No SQL: see the module docstring."""
        with self._op():
            if off < 0:
                raise InvalidArgument("negative offset")
            c = self._content(ino)
            written = c.write(off, data)
            now = self._now()
            c.times = (now, now)
            if kill_suid:
                mode = c.mode if c.mode is not None else self.getattr(ino).mode
                cleared = mode & ~(stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0))
                if cleared != mode:
                    c.mode = cleared
            return written

    def open(self, ino: int) -> None:
        """A handle on *ino* was opened: an unlinked inode lives on until its last :meth:`release`."""
        self.opens[ino] = self.opens.get(ino, 0) + 1

    def flush(self, ino: int) -> None:
        """close(2) of a descriptor: *ino*'s metadata joins the open batch (no commit, no sync)."""
        with self._op():
            c = self.contents.get(ino)
            if c is not None and (c.dirty or c.changed or c.times):
                self._persist(c)

    def release(self, ino: int) -> None:
        """The last close of a handle: flush, and remove the inode if it has no name left."""
        with self._op():
            n = self.opens.get(ino, 0) - 1
            if n > 0:
                self.opens[ino] = n
            else:
                self.opens.pop(ino, None)
            c = self.contents.get(ino)
            if c is not None and (c.dirty or c.changed or c.times):
                self._persist(c)
            if n <= 0:
                r = self._row(ino)
                if r is not None and r[8] == 0:
                    self._begin()
                    self._maybe_purge(ino)

    # -- extended attributes -----------------------------------------------------

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        """All extended attributes of *ino*."""
        r = self._row(ino)
        if r is not None and r[13]:
            return dict(self.db.execute("SELECT name, value FROM xattrs WHERE ino = ? ORDER BY name", (ino,)))
        if r is None:
            self.getattr(ino)  # NotFound
        return self.m.xattrs(ino) if ino <= self.base_max else {}

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """One extended attribute (NoAttribute: ENODATA)."""
        try:
            return self.xattrs(ino)[name]
        except KeyError:
            raise NoAttribute(f"no attribute {name!r}") from None

    def listxattr(self, ino: int) -> list[bytes]:
        """The names of *ino*'s extended attributes, sorted."""
        return list(self.xattrs(ino))

    def _own_xattrs(self, ino: int) -> dict[bytes, bytes]:
        """Copy-up of *ino*'s xattrs into the layer (once); the current set."""
        current = self.xattrs(ino)
        r = self._ensure_row(ino)
        if not r[13]:
            self._begin()
            self.db.executemany("INSERT INTO xattrs VALUES (?, ?, ?)", [(ino, k, v) for k, v in current.items()])
            self.db.execute("UPDATE nodes SET xattrs = 1 WHERE ino = ?", (ino,))
        return current

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        """Set an extended attribute (``XATTR_CREATE``: EEXIST if set; ``XATTR_REPLACE``: ENODATA if not)."""
        with self._op():
            if not name or len(name) > NAME_MAX or b"\0" in name:
                raise AttributeTooBig(f"attribute name of {len(name)} bytes") if name else InvalidArgument("empty name")
            if len(value) > XATTR_VALUE_MAX:
                raise AttributeTooBig(f"attribute value of {len(value)} bytes")
            current = self._own_xattrs(ino)
            if flags & XATTR_CREATE and name in current:
                raise Exists(f"attribute {name!r} exists")
            if flags & XATTR_REPLACE and name not in current:
                raise NoAttribute(f"no attribute {name!r}")
            self.db.execute("INSERT OR REPLACE INTO xattrs VALUES (?, ?, ?)", (ino, name, value))
            self._update(ino, ctime_ns=self._now())

    def removexattr(self, ino: int, name: bytes) -> None:
        """Remove an extended attribute (ENODATA if not set)."""
        with self._op():
            if name not in self._own_xattrs(ino):
                raise NoAttribute(f"no attribute {name!r}")
            self.db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name))
            self._update(ino, ctime_ns=self._now())

    # -- for commit and status ---------------------------------------------------

    def changes(self) -> list[Change]:
        """What differs from the base, as paths (A/D/M/T) in format 2 key order: :mod:`wsfs.layer.changes`."""
        return changes(self)

    def chunk_sources(self, ino: int) -> list[Chunk | None]:
        """Per chunk of regular file *ino*: the base chunk if unchanged (its id is reused), else None (read it).

        A chunk is unchanged when no block inside it was written and it lies
        wholly below ``base_size`` with the base chunk's length; only the
        others need reading (through :meth:`read`) and hashing at commit.
        """
        a = self.getattr(ino)
        cs = self.m.chunk_size
        n = -(-a.size // cs)
        c = self._content(ino)
        base = self._base(ino)
        chunks = {ch.idx: ch for ch in self.m.chunks(ino)} if base is not None and not base.packed and not base.inline else {}
        written = {b * BLOCK // cs for b in c.blocks}
        out: list[Chunk | None] = []
        for i in range(n):
            ch = chunks.get(i)
            length = min(cs, a.size - i * cs)
            ok = ch is not None and i not in written and i * cs + ch.length <= c.base_size and ch.length == length
            out.append(ch if ok else None)
        return out

    def content_unchanged(self, ino: int) -> bool:
        """Whether regular file *ino* still holds exactly its base content (its content id is reused)."""
        base = self._base(ino)
        if base is None or not base.is_reg:
            return False
        c = self.contents.get(ino)
        if c is not None:
            return not c.blocks and c.size == c.base_size == base.size
        r = self._row(ino)
        if r is None:
            return True
        has_blocks = self.db.execute("SELECT 1 FROM blocks WHERE ino = ? LIMIT 1", (ino,)).fetchall()
        return not has_blocks and r[4] == r[12] == base.size

