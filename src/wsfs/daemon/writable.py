"""A read-write tree: a mounted base version plus a local write layer (a :class:`~wsfs.daemon.tree.Tree` with mutations).

:class:`WritableTree` adapts a :class:`~wsfs.layer.WriteLayer` to what the
FUSE adapter (``ops.py``) needs, in plain wsfs types, and owns the one thing
the layer cannot do: getting base bytes from the store without blocking.

Base content.  The layer calls ``read_base(node, offset, length)``
synchronously, on the trio thread, when a read or a write needs bytes of the
base file (copy-up of the at most two 64 KiB blocks a write covers partly;
blocks of a changed file never written).  The store is far away, so the tree
asks the layer first which blocks those will be
(:meth:`~wsfs.layer.WriteLayer.base_blocks`), fetches them through the
version view's read path (blob cache, verified, under the operation's
deadline), keeps them in a small LRU, and only then calls the layer, with no
``await`` in between: ``read_base`` then only slices bytes already here.  A
``read_base`` call for a block that was not fetched is a bug; it fails that
operation with EIO (logged) rather than block the loop or serve unverified
bytes.  Base files never changed are read straight through
:meth:`VersionView.read` (its cache fast path and read-ahead).

Ownership rules the layer leaves to its caller: a new node's group is the
parent directory's when that has SGID (and a new directory inherits SGID),
as ext4 and tmpfs do.  Permission checks are the kernel's
(``default_permissions``); see ``docs/daemon.md``.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING, Any

from wsfs.daemon.tree import FsStats, Lifetime
from wsfs.daemon.view import _LRU, VersionView
from wsfs.errors import InvalidArgument, IsADirectory, NotADirectory, NotFound, WsfsError
from wsfs.format.manifest import Inode
from wsfs.format.names import named

if TYPE_CHECKING:
    from wsfs.layer import WriteLayer

# wsfs.layer.content.BLOCK, the write layer's copy-on-write unit (checked when a layer is opened): written
# here so that importing this module (as every mount does) does not import the write layer.
BLOCK = 64 * 1024

log = logging.getLogger(__name__)

_BASE_BLOCKS = 256  # base blocks kept in memory (16 MiB): fetched for the layer, never changing
_PREPARE_ROUNDS = 8  # times a request re-fetches blocks other requests evicted meanwhile


class BaseNotPrepared(WsfsError):
    """The layer asked for base bytes nobody fetched first (a bug in :meth:`WritableTree._prepare`): EIO."""


class WritableTree:
    """The merged tree of a read-write mount; every method runs on the trio thread (the layer's contract)."""

    listings_change = True  # the application changes them
    has_xattrs = True  # it may add some at any time

    def __init__(self, view: VersionView, layer_factory: Any, *, label: str, state_dir: str) -> None:
        """*layer_factory(read_base)* opens the layer (so the layer gets this tree's ``read_base``)."""
        self.view = view
        self.label = label
        self.deadline = view.deadline
        self.state_dir = state_dir
        self._blocks = _LRU(_BASE_BLOCKS)  # (ino, blk) -> bytes of a base block
        from wsfs.layer.content import BLOCK as LAYER_BLOCK

        assert LAYER_BLOCK == BLOCK
        self.layer: WriteLayer = layer_factory(self._read_base)

    # -- the Tree protocol -------------------------------------------------

    def lifetime(self, node: Any) -> Lifetime:
        return Lifetime.FIXED  # capped by the read-write policy; changes made here reach the kernel in replies

    def miss_lifetime(self, parent: int) -> Lifetime:
        return Lifetime.FIXED

    def getattr(self, ino: int) -> Inode:
        return self.layer.getattr(ino)

    def lookup(self, parent: int, name: bytes) -> Inode | None:
        layer = self.layer
        if name == b".":
            return layer.getattr(parent)
        if name == b"..":
            return layer.getattr(layer.parent_of(parent))
        try:
            return layer.lookup(parent, name)
        except NotFound:
            return None

    def readlink(self, ino: int) -> bytes:
        return self.layer.readlink(ino)

    def opendir(self, ino: int) -> None:
        if not self.layer.getattr(ino).is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")

    def readdir(self, ino: int, after: int, limit: int) -> list[tuple[int, bytes, Inode]]:
        return self.layer.readdir(ino, after, limit)

    def open(self, ino: int) -> Inode:
        node = self.layer.getattr(ino)
        if node.is_dir:
            raise IsADirectory(f"inode {ino} is a directory")
        return node

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return self.layer.xattrs(ino)

    def statfs(self) -> FsStats:
        """The state folder's file system: what can still be written (files count: its inodes, or a large number)."""
        st = os.fstatvfs(self.layer.state.fd)
        scale = st.f_frsize / 4096
        files = st.f_files or 1 << 32
        ffree = st.f_ffree if st.f_files else 1 << 31
        return FsStats(blocks=int(st.f_blocks * scale), bfree=int(st.f_bfree * scale), bavail=int(st.f_bavail * scale),
                       files=files, ffree=ffree, favail=ffree, frsize=4096)

    async def read(self, ino: int, off: int, size: int) -> bytes | memoryview:
        layer = self.layer
        if layer.content_unchanged(ino):
            return await self.view.read(ino, off, size)  # the base's fast path: cache, read-ahead
        await self._prepare(ino, off, size, write=False)
        return layer.read(ino, off, size)

    def keep_cache(self, ino: int) -> bool:
        """Whether pages the kernel cached at an earlier open are still right: the content is still the base's.

        (Any write leaves blocks or another size behind, so the layer knows.)
        """
        return self.layer.content_unchanged(ino)

    # -- base content for the layer -----------------------------------------

    async def _prepare(self, ino: int, off: int, size: int, *, write: bool) -> None:
        """Fetch (awaiting) the base blocks the layer will ask for; on return they are all here."""
        for _ in range(_PREPARE_ROUNDS):
            missing = [b for b in self.layer.base_blocks(ino, off, size, write=write) if (ino, b) not in self._blocks]
            if not missing:
                return
            base_size = self.view.getattr(ino).size
            for b in missing:
                start = b * BLOCK
                data = await self.view.read(ino, start, min(BLOCK, base_size - start))
                self._blocks.put((ino, b), bytes(data))
        raise BaseNotPrepared(f"base blocks of inode {ino} kept being evicted while being fetched")

    def _read_base(self, node: Inode, off: int, length: int) -> bytes:
        blk, inner = divmod(off, BLOCK)
        data = self._blocks.get_((node.ino, blk))
        if data is None or inner + length > len(data):
            log.error("%s: the layer asked for base bytes [%d, +%d) of inode %d that were not fetched first",
                      self.label, off, length, node.ino)
            raise BaseNotPrepared(f"base bytes of inode {node.ino} at {off} were not fetched first")
        return bytes(data[inner:inner + length]) if inner or length != len(data) else data

    # -- mutations ------------------------------------------------------------

    def _owner(self, parent: int, uid: int, gid: int, mode: int) -> tuple[int, int]:
        """Group and mode of a new node in *parent*: a SGID directory passes its group (and SGID to directories)."""
        p = self.layer.getattr(parent)
        if p.mode & stat.S_ISGID:
            gid = p.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return gid, mode

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> Inode:
        gid, mode = self._owner(parent, uid, gid, mode)
        return self.layer.create(parent, name, mode, uid, gid, rdev)

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        gid, mode = self._owner(parent, uid, gid, stat.S_IFDIR | (mode & 0o7777))
        return self.layer.mkdir(parent, name, mode, uid, gid)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Inode:
        gid, _ = self._owner(parent, uid, gid, stat.S_IFLNK)
        return self.layer.symlink(parent, name, target, uid, gid)

    def link(self, ino: int, newparent: int, newname: bytes) -> Inode:
        return self.layer.link(ino, newparent, newname)

    def unlink(self, parent: int, name: bytes) -> None:
        self.layer.unlink(parent, name)

    def rmdir(self, parent: int, name: bytes) -> None:
        self.layer.rmdir(parent, name)

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int) -> None:
        self.layer.rename(parent, name, newparent, newname, flags)

    def setattr(self, ino: int, **kw: Any) -> Inode:
        return self.layer.setattr(ino, **kw)

    async def write(self, ino: int, off: int, data: bytes, *, kill_suid: bool) -> int:
        if off < 0:
            raise InvalidArgument("negative offset")
        await self._prepare(ino, off, len(data), write=True)
        return self.layer.write(ino, off, data, kill_suid=kill_suid)

    def take_mode_changes(self) -> list[int]:
        """Inodes whose mode writes changed (SUID/SGID cleared) since the last call: the kernel must forget it."""
        return self.layer.take_mode_changes()

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.layer.setxattr(ino, name, value)

    def removexattr(self, ino: int, name: bytes) -> None:
        self.layer.removexattr(ino, name)

    # -- handles, durability --------------------------------------------------

    def opened(self, ino: int) -> None:
        self.layer.open(ino)

    def flush(self, ino: int) -> None:
        self.layer.flush(ino)

    def release(self, ino: int) -> None:
        self.layer.release(ino)

    def fsync(self, ino: int, datasync: bool) -> None:
        self.layer.fsync(ino, datasync)

    def sync_all(self) -> None:
        self.layer.sync_all()

    def commit_if_due(self) -> None:
        self.layer.commit_if_due()

    def close(self) -> None:
        """Commit durably and close the layer (unmount)."""
        self.layer.close()

    # -- status ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``wsfs status`` shows: the base, the last version this layer published, the pending
        changes (what the next commit would publish: A/M/D/T, sizes), the state folder."""
        layer = self.layer
        changes = []
        for p in layer.pending():
            entry: dict[str, Any] = {"kind": p.kind, **named("path", p.path)}  # as every --json names paths
            if p.kind != "D":
                entry["size"] = p.size
                a = layer.resolve(p.path)
                if a is not None:
                    entry["type"] = _type_name(a.mode)
            changes.append(entry)
        base = layer.base_id
        return {"workspace": base.workspace, "base_version": base.version,
                "published_version": layer.published()[0], "state_dir": self.state_dir, "changes": changes}

    def discard(self, paths: list[bytes] | None) -> list[tuple[int, bytes, int]]:
        """Drop pending changes (all, or at and below *paths*); ``(parent inode, name, inode)`` of every
        path that changed, for the kernel's entries and attributes to be invalidated (parent 0: the root)."""
        changed = self.layer.discard(paths)
        out = []
        for path, ino in changed:
            head, _, name = path.rstrip(b"/").rpartition(b"/")
            parent = self.layer.resolve(head) if name else None
            out.append((parent.ino if parent is not None else 0, name, ino))
        return out


def _type_name(mode: int) -> str:
    return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}.get(stat.S_IFMT(mode), "special")


def layer_disk_bytes(state_dir: str) -> int:
    """Bytes the state folder takes on disk (allocated blocks of its files); runs anywhere, reads only."""
    total = 0
    for root, _dirs, files in os.walk(state_dir):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total
