"""The batch machinery of a write layer: the open transaction, commits, node rows (part of WriteLayer).

:class:`Batches` opens the state folder, keeps the one open SQLite
transaction all changes go into, commits it (durably on fsync), recovers
after a crash, and reads and writes node rows (a base inode's row is a copy
of its base attributes, made on its first change).  :mod:`wsfs.layer.namespace`
and :mod:`wsfs.layer.layer` build the file system on it; the durability
rules are in ``docs/write-layer.md`` and the :mod:`wsfs.layer.layer` docstring.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

import apsw

from wsfs.errors import (
    InvalidArgument,
    NoSpace,
    NotFound,
)
from wsfs.format.manifest import Inode, Manifest
from wsfs.layer.content import BLOCK, Content, SlotPool
from wsfs.layer.state import BaseId, StateDir, no_space

log = logging.getLogger(__name__)

ReadBase = Callable[[Inode, int, int], bytes]  # (base inode, offset, length) -> exactly those bytes

ALLOC_UNIT = 4096
NODE_COLS = "ino, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, rdev, target, parent, base_size, xattrs"


def _blocks(size: int) -> int:
    return -(-size // ALLOC_UNIT) * (ALLOC_UNIT // 512)


class Batches:
    """State folder, open batch, commits and node rows of a :class:`~wsfs.layer.layer.WriteLayer`."""

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
            self._init_memory(meta)
            self._recover()
            self.pool = SlotPool(self.state, {r[0] for r in self.db.execute("SELECT slot FROM blocks")})
        except BaseException:
            self.state.close()
            raise

    def _init_memory(self, meta: dict[str, Any]) -> None:
        """What a layer keeps in memory, from its *meta* (also a Snapshot's, which opens no folder)."""
        self.base_max: int = meta["base_max_ino"]
        self._next_ino: int = meta["next_ino"]
        self._wal_fd = -1
        self.contents: dict[int, Content] = {}
        self.mode_changes: list[int] = []  # WriteLayer.take_mode_changes
        self.opens: dict[int, int] = {}
        self._tx = False
        self._tx_start = 0.0
        self._tx_ops = 0
        self._tx_contents: set[Content] = set()  # whose rows are in the open batch
        self._base_parents: dict[int, int] | None = None
        self._closed = False

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
            self._reload()

    def _reload(self) -> None:
        """Roll the open batch back (if SQLite has not) and reload memory from the last commit."""
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        self._tx = False
        self._tx_ops = 0
        self._tx_contents.clear()
        self.contents.clear()
        self._base_parents = None
        old = self.pool
        old.close()
        self.pool = SlotPool(self.state, {r[0] for r in self.db.execute("SELECT slot FROM blocks")})
        self.pool.adopt_pins(old)

    def commit_if_due(self) -> None:
        """Commit the open batch if it is older than ``commit_interval`` or holds ``batch_ops`` changes."""
        if self._tx and (self._tx_ops >= self.batch_ops or time.monotonic() - self._tx_start >= self.commit_interval):
            self._commit(durable=False)

    def _commit(self, durable: bool, keep_retired: bool = False) -> None:
        for c in list(self.contents.values()):
            if c.dirty or c.changed or c.times or c.mode is not None:
                self._persist(c)
        # Retired slots may only be reused once no commit that could survive a
        # power loss refers to them: a commit that retires some is made durable.
        # (keep_retired: not now, they stay retired until the next durable commit; a commit's snapshot.)
        durable = durable or (bool(self.pool.retired) and not keep_retired)
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
        try:
            self.sync_all()
        finally:
            self.contents.clear()
            if self._wal_fd >= 0:
                os.close(self._wal_fd)
            self.pool.close()
            self.state.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recover(self) -> None:
        """After a crash: drop inodes unlinked while open (their slots are free once no row names them)."""
        db = self.db
        # A new inode without names has no business here; a base inode's row
        # stays as a tombstone (size 0, its own empty xattrs) once purged.
        gone = [r[0] for r in db.execute(
            "SELECT ino FROM nodes WHERE nlink = 0 AND (ino > ? OR size > 0 OR xattrs = 0)", (self.base_max,))]
        if gone:
            with db:
                for ino in gone:
                    self._purge_rows(ino)

    # -- rows ----------------------------------------------------------------

    def _row(self, ino: int) -> tuple[Any, ...] | None:
        for r in self.db.execute(f"SELECT {NODE_COLS} FROM nodes WHERE ino = ?", (ino,)):
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
            f"INSERT INTO nodes ({NODE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL,?,0)",
            (ino, b.mode, b.uid, b.gid, b.size, b.atime_ns, b.mtime_ns, b.ctime_ns, b.nlink, b.rdev, b.target,
             b.size if b.is_reg else 0),
        )
        r = self._row(ino)
        assert r is not None
        return r

    def _update(self, ino: int, **cols: Any) -> None:
        """Set columns of *ino*'s row, copying the base's attributes up first if it has none."""
        self._begin()
        sql = f"UPDATE nodes SET {', '.join(f'{k} = ?' for k in cols)} WHERE ino = ?"
        self.db.execute(sql, (*cols.values(), ino))
        if not self.db.changes():  # the first change of a base inode (one statement less than asking first)
            self._ensure_row(ino)
            self.db.execute(sql, (*cols.values(), ino))

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

    def _purge_rows(self, ino: int) -> None:
        self.db.execute("DELETE FROM blocks WHERE ino = ?", (ino,))
        self.db.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))
        if ino > self.base_max:
            self.db.execute("DELETE FROM nodes WHERE ino = ?", (ino,))
        else:  # a base inode keeps a row with nlink 0, or the base's attributes would show through
            self.db.execute("UPDATE nodes SET nlink = 0, size = 0, base_size = 0, xattrs = 1 WHERE ino = ?", (ino,))
