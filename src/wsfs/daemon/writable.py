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
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from wsfs.daemon.inodes import KernelNumbers
from wsfs.daemon.tree import FsStats, Lifetime
from wsfs.daemon.view import _LRU, VersionView
from wsfs.errors import InvalidArgument, IsADirectory, NotADirectory, NotFound, Stale, WsfsError
from wsfs.format.manifest import ROOT_INO, Inode, Manifest
from wsfs.format.names import named

if TYPE_CHECKING:
    from wsfs.layer import BaseId, WriteLayer

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
        # Every method takes and gives the kernel's inode numbers; the layer and the view have their own
        # (the same until a re-base: :meth:`rebase`).
        self.numbers = KernelNumbers()
        self._in, self._out = self.numbers.inside, self.numbers.outside
        self.retired: list[VersionView] = []  # views of earlier bases (closed at the next re-base)
        self.busy = 0  # reads and writes under way (they hold the layer's numbers across awaits)
        self.mutations = 0  # calls that may have changed the tree (a re-base needs none since the snapshot)

    def _node(self, node: Inode) -> Inode:
        """*node* with the kernel's number."""
        k = self._out(node.ino)
        return node if k == node.ino else node._replace(ino=k)

    # -- the Tree protocol -------------------------------------------------

    def lifetime(self, node: Any) -> Lifetime:
        return Lifetime.FIXED  # capped by the read-write policy; changes made here reach the kernel in replies

    def miss_lifetime(self, parent: int) -> Lifetime:
        return Lifetime.FIXED

    def getattr(self, ino: int) -> Inode:
        return self._node(self.layer.getattr(self._in(ino)))

    def lookup(self, parent: int, name: bytes) -> Inode | None:
        layer = self.layer
        parent = self._in(parent)
        if name == b".":
            return self._node(layer.getattr(parent))
        if name == b"..":
            return self._node(layer.getattr(layer.parent_of(parent)))
        try:
            return self._node(layer.lookup(parent, name))
        except NotFound:
            return None

    def readlink(self, ino: int) -> bytes:
        return self.layer.readlink(self._in(ino))

    def opendir(self, ino: int) -> None:
        if not self.layer.getattr(self._in(ino)).is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")

    def readdir(self, ino: int, after: int, limit: int) -> list[tuple[int, bytes, Inode]]:
        entries = self.layer.readdir(self._in(ino), after, limit)
        if not self.numbers.inward:
            return entries
        return [(cursor, name, self._node(node)) for cursor, name, node in entries]

    def open(self, ino: int) -> Inode:
        node = self.layer.getattr(self._in(ino))
        if node.is_dir:
            raise IsADirectory(f"inode {ino} is a directory")
        return self._node(node)

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return self.layer.xattrs(self._in(ino))

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
        ino = self._in(ino)
        self.busy += 1
        try:
            if layer.content_unchanged(ino):
                return await self.view.read(ino, off, size)  # the base's fast path: cache, read-ahead
            await self._prepare(ino, off, size, write=False)
            return layer.read(ino, off, size)
        finally:
            self.busy -= 1

    def keep_cache(self, ino: int) -> bool:
        """Whether pages the kernel cached at an earlier open are still right: the content is still the base's.

        (Any write leaves blocks or another size behind, so the layer knows.  A re-base keeps them:
        what it changes under the kernel, it invalidates.)
        """
        return self.layer.content_unchanged(self._in(ino))

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
        self.mutations += 1
        parent = self._in(parent)
        gid, mode = self._owner(parent, uid, gid, mode)
        return self._node(self.layer.create(parent, name, mode, uid, gid, rdev))

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        self.mutations += 1
        parent = self._in(parent)
        gid, mode = self._owner(parent, uid, gid, stat.S_IFDIR | (mode & 0o7777))
        return self._node(self.layer.mkdir(parent, name, mode, uid, gid))

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Inode:
        self.mutations += 1
        parent = self._in(parent)
        gid, _ = self._owner(parent, uid, gid, stat.S_IFLNK)
        return self._node(self.layer.symlink(parent, name, target, uid, gid))

    def link(self, ino: int, newparent: int, newname: bytes) -> Inode:
        self.mutations += 1
        return self._node(self.layer.link(self._in(ino), self._in(newparent), newname))

    def unlink(self, parent: int, name: bytes) -> None:
        self.mutations += 1
        self.layer.unlink(self._in(parent), name)

    def rmdir(self, parent: int, name: bytes) -> None:
        self.mutations += 1
        self.layer.rmdir(self._in(parent), name)

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int) -> None:
        self.mutations += 1
        self.layer.rename(self._in(parent), name, self._in(newparent), newname, flags)

    def setattr(self, ino: int, **kw: Any) -> Inode:
        self.mutations += 1
        return self._node(self.layer.setattr(self._in(ino), **kw))

    async def write(self, ino: int, off: int, data: bytes, *, kill_suid: bool) -> int:
        self.mutations += 1
        if off < 0:
            raise InvalidArgument("negative offset")
        ino = self._in(ino)
        self.busy += 1
        try:
            await self._prepare(ino, off, len(data), write=True)
            return self.layer.write(ino, off, data, kill_suid=kill_suid)
        finally:
            self.busy -= 1

    def take_mode_changes(self) -> list[int]:
        """Inodes whose mode writes changed (SUID/SGID cleared) since the last call: the kernel must forget it."""
        return [self._out(i) for i in self.layer.take_mode_changes()]

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.mutations += 1
        self.layer.setxattr(self._in(ino), name, value)

    def removexattr(self, ino: int, name: bytes) -> None:
        self.mutations += 1
        self.layer.removexattr(self._in(ino), name)

    # -- handles, durability --------------------------------------------------

    def opened(self, ino: int) -> None:
        self.layer.open(self._in(ino))

    def flush(self, ino: int) -> None:
        self.layer.flush(self._in(ino))

    def release(self, ino: int) -> None:
        self.layer.release(self._in(ino))

    def fsync(self, ino: int, datasync: bool) -> None:
        self.layer.fsync(self._in(ino), datasync)

    def sync_all(self) -> None:
        self.layer.sync_all()

    def commit_if_due(self) -> None:
        self.layer.commit_if_due()

    def close(self) -> None:
        """Commit durably and close the layer (unmount), then the base's index and those of earlier bases."""
        try:
            self.layer.close()
        finally:
            for view in [*self.retired, self.view]:
                view.manifest.close()

    # -- re-base (docs/decisions/live-rebase.md) ------------------------------------

    def held(self, kernel: Iterable[int]) -> set[int]:
        """(trio thread) The layer's inodes behind the kernel numbers *kernel* (stale ones left out)."""
        out = set()
        for k in kernel:
            try:
                out.add(self._in(k))
            except Stale:
                pass
        return out

    def rebase(self, view: VersionView, base_id: BaseId, prepared: Prepared,
               kernel: Iterable[int]) -> list[tuple[int, bytes, int]] | None:
        """(trio thread) Go on over *view*: the version the last commit published, with nothing written
        since and no read or write under way (the caller's checks), prepared by :func:`prepare_rebase`.

        Every number in *kernel* (what the kernel holds now) keeps meaning its
        file, found by its path; a file gone, or of another type now, answers
        ESTALE until the kernel forgets it.  Returns ``(parent, name, inode)``
        (kernel numbers, 0 where the kernel has none) whose entries,
        attributes and pages the kernel must drop: where *view* differs from
        what the mount showed.  Everything else it cached stays right.  None
        (and nothing changed) if the kernel took hold of an inode the
        preparation did not see: the next commit tries again.  In one step on
        the trio thread, so no request sees half of it.
        """
        moves = {}
        for k in kernel:
            try:
                old = self._in(k)
            except Stale:
                moves[k] = 0
                continue
            new = prepared.inodes.get(old)
            if new is None:
                try:
                    gone = self.layer.getattr(old).nlink == 0
                except NotFound:
                    gone = True
                if not gone:
                    return None  # looked up after the preparation listed its directory
                new = 0  # unlinked, not forgotten yet
            moves[k] = new
        opens = {}
        for old, n in self.layer.opens.items():
            new = prepared.inodes.get(old)
            if n and not new:
                return None  # opened after the preparation listed it, or unlinked while open: not in *view*
            if n:
                opens[new] = opens.get(new, 0) + n
        numbers = KernelNumbers()
        numbers.remap(moves)
        numbers.fresh = self.numbers.fresh
        known = numbers.known
        out = []
        for parent, name, child in prepared.theirs:
            pk = known(parent)
            if pk is not None:  # (a directory the kernel never saw has nothing cached)
                out.append((pk, name, (known(child) or 0) if child else 0))
        # Until the layer's transaction nothing has changed; after it, nothing fails.
        self.layer.rebase(view.manifest, base_id, opens)
        for old_view in self.retired:  # (no request reads through those: none was under way at the last swap)
            old_view.manifest.close()
        self.retired = [self.view]
        view.nursery = self.view.nursery
        self.view = view
        self._blocks.clear()
        self.numbers = numbers
        self._in, self._out = numbers.inside, numbers.outside
        return out

    # -- status ----------------------------------------------------------------

    def status(self, layer: WriteLayer | None = None) -> dict[str, Any]:
        """What ``wsfs status`` shows: the base, the last version this layer published, the pending
        changes (what the next commit would publish: A/M/D/T, sizes), the state folder.

        *layer*: a snapshot of the layer (read in any thread), else the layer itself (on its thread)."""
        layer = layer or self.layer
        changes = []
        for p in layer.pending():
            entry: dict[str, Any] = {"kind": p.kind, **named("path", p.path)}  # as every --json names paths
            if p.kind != "D":
                entry["size"] = p.size
                entry["type"] = _type_name(p.mode)
            changes.append(entry)
        base = layer.base_id
        return {"workspace": base.workspace, "base_version": base.version,
                "published_version": layer.published()[0], "state_dir": self.state_dir, "changes": changes}

    def discard(self, paths: list[bytes] | None) -> list[tuple[int, bytes, int]]:
        """Drop pending changes (all, or at and below *paths*); ``(parent inode, name, inode)`` of every
        path that changed, for the kernel's entries and attributes to be invalidated (parent 0: the root;
        inode 0: one the kernel never got).  The kernel's numbers."""
        changed = self.layer.discard(paths)
        out = []
        for path, ino in changed:
            head, _, name = path.rstrip(b"/").rpartition(b"/")
            parent = self.layer.resolve(head) if name else None
            known = self.numbers.known  # (None: a number the kernel never got, so has nothing cached of)
            out.append((known(parent.ino) or 0 if parent is not None else 0, name, known(ino) or 0))
        return out


class Prepared(NamedTuple):
    """What :func:`prepare_rebase` found: old inode -> new (0: gone, or another type) for every entry of
    the directories walked; ``(new parent, name, new inode or 0)`` of each path other writers changed."""

    inodes: dict[int, int]
    theirs: list[tuple[int, bytes, int]]


def prepare_rebase(old: Any, new: Manifest, held: set[int], theirs: Iterable[bytes]) -> Prepared:
    """(any thread) The expensive half of :meth:`WritableTree.rebase`, over read-only views.

    *old* is the merged view the kernel saw (the commit's snapshot: the same,
    as nothing was written since), *new* the index of the version it
    published, *held* the inodes of *old* the kernel holds.  The walk goes from
    the root through the directories in *held* (the kernel holds every
    directory above an inode it holds), listing names and types of each in
    both: the work is their listings, a few queries per directory, not the tree.
    """
    inodes = {ROOT_INO: ROOT_INO}
    todo = [(ROOT_INO, ROOT_INO)]
    while todo:
        here, there = todo.pop()
        entries = new.entry_types(there)
        for name, (ino, kind) in old.entry_types(here).items():
            hit = entries.get(name)
            if hit is None or hit[1] != kind:
                inodes.setdefault(ino, 0)
                continue
            inodes[ino] = hit[0]
            if kind == stat.S_IFDIR and ino in held:
                todo.append((ino, hit[0]))
    out = []
    for path in theirs:
        head, _, name = path.rpartition(b"/")
        try:
            parent = new.resolve(head) if head else new.getattr(ROOT_INO)
        except WsfsError:
            continue  # gone too: its own path is among them
        if parent.is_dir:
            child = new.lookup(parent.ino, name)
            out.append((parent.ino, name, child.ino if child is not None else 0))
    return Prepared(inodes, out)


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
