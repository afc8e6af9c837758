"""The merged namespace of a write layer: entries, whiteouts, links, renames (part of WriteLayer).

Entries are keyed by (parent inode, name); a layer row shadows the base's
entry of that name, a row with inode 0 hides it (whiteout).  Directories keep
their inode when moved, so a directory rename changes one or two rows,
whatever the subtree holds.  Errors carry their errno (:mod:`wsfs.errors`).
"""

from __future__ import annotations

import stat

from wsfs.errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
)
from wsfs.format.manifest import ROOT_INO, Inode
from wsfs.format.names import NAME_MAX
from wsfs.layer.batch import NODE_COLS, Batches

RENAME_NOREPLACE = 1  # Linux's values (linux/fs.h), as FUSE passes them
RENAME_EXCHANGE = 2
TARGET_MAX = 4095
LAYER_CURSOR = 1 << 48  # readdir cursors: base dentry ids below, LAYER_CURSOR + layer dentry id above


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise InvalidArgument(f"invalid name {name!r}")


class Namespace(Batches):
    """Lookups, listings and every change of names (a layer of :class:`~wsfs.layer.layer.WriteLayer`)."""

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

    def entries(self, ino: int) -> list[tuple[bytes, Inode]]:
        """``(name, attributes)`` of directory *ino*'s entries, in no particular order (for a walk that
        sorts what it finds itself)."""
        return [(name, a) for _, name, a in self.readdir(ino)]

    def entry_types(self, ino: int) -> dict[bytes, tuple[int, int]]:
        """Directory *ino*'s entries as ``name -> (inode, file type)``, in two queries: what a walk that
        needs names and types only (a re-base) reads, without merging attributes as :meth:`readdir` does.
        (A base entry's type is the base's: a name changes type only through an entry of the layer.)"""
        out = self.m.entry_types(ino) if ino <= self.base_max else {}
        for name, child in self.db.execute("SELECT name, ino FROM dentries WHERE parent = ?", (ino,)):
            if child:
                out[name] = (child, stat.S_IFMT(self.getattr(child).mode))
            else:
                out.pop(name, None)  # a whiteout
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
            row = (ino, mode, uid, gid, size, now, now, now, 2 if is_dir else 1, rdev, target, parent if is_dir else None)
            self.db.execute(f"INSERT INTO nodes ({NODE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0,0)", row)
            self._set_dentry(parent, name, ino)
            self._touch_dir(parent, now, 1 if is_dir else 0)
            return self._attr_row(row)

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
        if a.nlink <= 1 and a.ino > self.base_max and not self.opens.get(a.ino):
            self._maybe_purge(a.ino)  # its row goes: no need to update it first
            return
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
