"""WriteLayer: a read-write tree made of an immutable base version and local changes.

What it owns: the merged view (getattr, lookup, readdir, readlink, xattrs,
read) and every mutation (create, mkdir, symlink, link, unlink, rmdir,
rename, setattr, write, xattrs), recorded in a state folder
(:mod:`wsfs.layer.state`).  What it is not: a FUSE adapter (no pyfuse3 type
here; errors are :mod:`wsfs.errors` classes carrying their errno), nor a
store client (base content comes from the caller's ``read_base``), nor a
permission checker (the caller passes what its rules decided, e.g.
``kill_suid``).  Imports: errors, format, localfs, fsops; never the daemon.

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

The class is built in three steps, one module each: :class:`~wsfs.layer.batch.Batches`
(state folder, the open batch, commits, node rows), :class:`~wsfs.layer.namespace.Namespace`
(entries, whiteouts, links, renames), and :class:`WriteLayer` here (attributes,
content, xattrs, what commit and status need).
"""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING, Any

from wsfs.errors import (
    AttributeTooBig,
    Exists,
    InvalidArgument,
    IsADirectory,
    NoAttribute,
    NotFound,
)
from wsfs.format.manifest import Chunk, Inode, Manifest
from wsfs.format.names import NAME_MAX
from wsfs.layer.changes import Change, changes
from wsfs.layer.content import BLOCK, Content, SlotPool
from wsfs.layer.namespace import Namespace
from wsfs.layer.pending import Pending, discard, pending, resolve
from wsfs.layer.state import BaseId

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from wsfs.layer.batch import ReadBase
    from wsfs.layer.snapshot import Memo, Snapshot

XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_VALUE_MAX = 64 * 1024  # what format 2 records can hold


class WriteLayer(Namespace):
    """A base version (``Manifest``) plus the changes kept in *state_dir*; see the module docstring."""

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
                c.suid_free = False
                if c.dirty or c.changed or c.times or c.mode is not None:
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
            if ino <= self.base_max:  # (maybe copied up just now: the row's attributes, as getattr shows them)
                return self.getattr(ino)
            return a._replace(**cols)  # the row's columns are the attributes' names

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
            # No block lies wholly beyond the size: an empty file has none to load.
            blocks = self._block_map(ino) if size else {}
        c = Content(self.pool, ino, size, base_size, blocks, read_base)
        self.contents[ino] = c
        return c

    def _block_map(self, ino: int) -> dict[int, int]:
        """Block -> slot of the blocks of *ino* the layer holds."""
        return dict(self.db.execute("SELECT blk, slot FROM blocks WHERE ino = ?", (ino,)))

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

    def base_blocks(self, ino: int, off: int, size: int, *, write: bool = False) -> list[int]:
        """The blocks whose base bytes a :meth:`read` (or, *write*, a :meth:`write`) of [off, off + size) asks
        ``read_base`` for, each for at most ``[blk * BLOCK, (blk + 1) * BLOCK)``.

        For a caller whose base reads are slow (the daemon: the store): it
        fetches these first, then calls read or write, which then find them.
        Empty for an unchanged base file's :meth:`read` too (that reads the
        base range itself), a new file, an append beyond ``base_size``.
        """
        base = self._base(ino)
        if base is None or not base.is_reg or size <= 0:
            return []
        c = self.contents.get(ino)
        if c is not None:
            blocks, base_size, cur = set(c.blocks), c.base_size, c.size
        else:
            r = self._row(ino)
            if r is None:
                if not write:
                    return []  # read() reads an unchanged base file's range itself, in one read_base call
                cur = base_size = base.size
                blocks = set()
            else:
                cur, base_size = r[4], r[12]
                if not base_size:
                    return []
                blocks = {b for (b,) in self.db.execute(
                    "SELECT blk FROM blocks WHERE ino = ? AND blk BETWEEN ? AND ?",
                    (ino, off // BLOCK, (off + size) // BLOCK))}
        end = off + size
        if not write:
            end = min(end, cur)
            want = list(range(off // BLOCK, (end - 1) // BLOCK + 1)) if off < end else []
        else:  # only a block the write covers partly is read (Content._write_block), and only its first and last
            new_size = max(cur, end)
            want = []
            for b in sorted({off // BLOCK, (end - 1) // BLOCK}):
                start = b * BLOCK
                inner, wend = max(off, start) - start, min(end, start + BLOCK) - start
                if inner > 0 or wend < min(BLOCK, new_size - start):
                    want.append(b)
        return [b for b in want if b not in blocks and b * BLOCK < base_size and b * BLOCK < cur]

    def write(self, ino: int, off: int, data: bytes | memoryview, *, kill_suid: bool = False) -> int:
        """Write *data* at *off* into regular file *ino*; mtime and ctime become now.  No SQL: see the module docstring."""
        with self._op():
            if off < 0:
                raise InvalidArgument("negative offset")
            c = self._content(ino)
            written = c.write(off, data)
            now = self._now()
            c.times = (now, now)
            if kill_suid and not c.suid_free:
                mode = c.mode if c.mode is not None else self.getattr(ino).mode
                cleared = mode & ~(stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0))
                if cleared != mode:
                    c.mode = cleared
                    if len(self.mode_changes) < 4096:  # (bounded for callers that never take them)
                        self.mode_changes.append(ino)
                c.suid_free = True  # until the next setattr: later writes have nothing to clear
            return written

    def take_mode_changes(self) -> list[int]:
        """Inodes whose mode a :meth:`write` changed (SUID/SGID cleared) since the last call.

        For a caller that caches attributes (the kernel, through the daemon):
        the write's answer does not carry them.
        """
        out, self.mode_changes = self.mode_changes, []
        return out

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
        wholly below ``base_size`` with the base chunk's length; a chunk with
        no written block wholly at or beyond ``base_size`` is zeros (a
        ``Chunk`` whose ``cid`` is None); only the others need reading
        (through :meth:`read`) and hashing at commit.
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
            if not ok and i not in written and i * cs >= c.base_size:
                ch, ok = Chunk(i, None, length), True  # beyond the base's bytes, never written: zeros
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

    # -- commit: snapshot, memo, status, discard -----------------------------------

    def published(self) -> tuple[int, str]:
        """``(version, top)`` this layer last published (its base's until a commit): for ``wsfs status``."""
        meta = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN ('published_version', 'published_top')"))
        return meta.get("published_version", self.base_id.version), meta.get("published_top", self.base_id.top)

    def resolve(self, path: bytes, dirs: dict[bytes, Inode | None] | None = None) -> Inode | None:
        """The merged view's entry at relative *path* (``/``-separated, symlinks not followed), or None.

        *dirs*: entries at directory paths known already, used and filled (:func:`wsfs.layer.pending.resolve`).
        """
        return resolve(self, path.strip(b"/"), dirs)

    def pending(self) -> list[Pending]:
        """What the next commit would publish (A/D/M/T, sizes), cheaply: :mod:`wsfs.layer.pending`."""
        return pending(self)

    def discard(self, paths: list[bytes] | None = None) -> list[tuple[bytes, int]]:
        """Drop pending changes (all, or at and below *paths*); ``(path, inode)`` of what changed: :mod:`wsfs.layer.pending`."""
        return discard(self, paths)

    def rebase(self, base: Manifest, base_id: BaseId, opens: dict[int, int] | None = None) -> None:
        """Make *base* this layer's base, with nothing pending: the re-base after an idle commit.

        *base* must hold exactly the merged view (the version this layer's last
        commit published, with nothing written since; the caller knows, the
        layer cannot check it cheaply).  Open files keep their counts under
        their numbers in *base*, which the caller gives as *opens* (every open
        inode, with nothing unwritten in memory: InvalidArgument otherwise, or
        with a snapshot open).  In one transaction every row goes (nodes,
        entries, blocks, xattrs, the memo) and the meta names the new base; so a
        crash leaves either the old base with its memo, which publishes nothing
        new, or the new one with nothing pending.  Every slot is then free.
        Inode numbers are *base*'s afterwards: translating those the kernel
        holds is the daemon's work.
        """
        opens = {i: n for i, n in (opens or {}).items() if n}
        if sum(n for n in self.opens.values() if n) != sum(opens.values()) or any(
                c.dirty for c in self.contents.values()):
            raise InvalidArgument("files of the layer are open: it cannot be re-based without their new numbers")
        if self.pool.pins:
            raise InvalidArgument("a snapshot of the layer is open: it cannot be re-based")
        self.sync_all()
        base_max = base.db.execute("SELECT coalesce(max(ino), 1) FROM inodes").fetchall()[0][0]
        meta = {"version": base_id.version, "top": base_id.top, "base_max_ino": base_max, "next_ino": base_max + 1}
        with self.db:
            for table in ("nodes", "dentries", "blocks", "xattrs", "published"):
                self.db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            self.db.execute("DELETE FROM meta WHERE key IN ('published_version', 'published_top')")
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
        # From here on the folder is over *base*: memory follows, whatever fails after.
        wal_fd = self._wal_fd
        self.m, self.base_id = base, base_id
        self._init_memory(dict(self.db.execute("SELECT key, value FROM meta")))
        self._wal_fd = wal_fd
        self.opens = opens
        old, self.pool = self.pool, SlotPool(self.state, set())  # (cuts the staged file: no row names a slot)
        old.close()
        try:
            self._sync_wal()
        except OSError as e:  # not durable yet: a crash goes back to the old base and its memo (also right)
            log.error("state folder %s: the re-base is not durable yet (%s); the next durable commit makes it so",
                      self.state.path, e)

    def snapshot(self, read_base: ReadBase | None = None, *, durable: bool = True) -> Snapshot:
        """Commit the batch durably and return a read-only view of this moment for another thread.

        *read_base* is what the view reads base content with (default: the
        layer's own; it must be callable from the reading thread).  Close the
        snapshot when done (:mod:`wsfs.layer.snapshot`); writes go on meanwhile.
        *durable* False: the WAL is not fsynced here but by :meth:`Snapshot.sync`, in the reading thread.
        """
        from wsfs.layer.snapshot import Snapshot

        if durable:
            self.sync_all()
        else:
            with self._op():  # retired slots wait (never reused) for the layer's next durable commit
                self._commit(durable=False, keep_retired=True)
        return Snapshot(self, read_base, synced=durable)

    def mark_published(self, snap: Snapshot, *, durable: bool = True, rows_written: bool = False) -> None:
        """Record what *snap*'s commit published in the memo (durably), then drop its intent file.

        Call on the layer's thread after :func:`wsfs.versions.commit.commit`
        returned; nothing to do if it published nothing.  *durable* False: the
        WAL fsync and the intent's removal are left to :meth:`Snapshot.recorded`,
        in another thread, before the snapshot closes.  *rows_written*: the
        caller wrote the memo rows already (:meth:`write_memo`), this records
        the version.
        """
        from wsfs.layer.snapshot import INTENT

        pub = snap.publication
        if pub is None:
            return
        self._check_newer(pub.version)
        with self._op():
            self._begin()
            if not rows_written:
                self._memo_rows(pub.rows.items())
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("published_version", pub.version), ("published_top", pub.top)],
            )
            self._commit(durable=durable, keep_retired=not durable)
        if not durable:
            return
        try:
            os.unlink(INTENT, dir_fd=self.state.fd)
        except FileNotFoundError:
            pass

    def write_memo(self, snap: Snapshot, rows: Iterable[tuple[bytes, Memo]]) -> None:
        """Some of the memo rows of *snap*'s publication, into the open batch (the layer's thread).

        For a caller that spreads a large memo (40,000 rows: ~0.4 s) over
        several turns of the layer's thread, then calls
        ``mark_published(snap, rows_written=True)``.  Rows committed before
        the version is (a batch commit in between, or a crash) are true
        already: the version's record exists, and the intent file names the
        rest, which the next commit applies (:func:`wsfs.versions.commit.commit`).
        """
        if snap.publication is None:
            return
        self._check_newer(snap.publication.version)
        with self._op():
            self._begin()
            self._memo_rows(rows)

    def _check_newer(self, version: int) -> None:
        done = self.db.execute("SELECT value FROM meta WHERE key = 'published_version'").fetchall()
        if done and done[0][0] > version:
            raise InvalidArgument(f"a newer commit (version {done[0][0]}) was recorded already")

    def _memo_rows(self, rows: Iterable[tuple[bytes, Memo]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO published VALUES (?, ?, ?, ?)",
                            [(k, m.body, m.ino, m.ctime_ns) for k, m in rows])
