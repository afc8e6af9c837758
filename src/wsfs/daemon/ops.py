"""The pyfuse3 ``Operations`` adapter: a protocol adapter only, and the one module that builds FUSE replies.

Each handler converts its arguments, calls one method of the mount's
:class:`~wsfs.daemon.tree.Tree` (a ``VersionView`` or a ``HistoryView``), and
converts the result (attributes to ``EntryAttributes`` with the timeouts of
the mount's :class:`~wsfs.daemon.policy.CachePolicy`, ``FileInfo``, bytes) or
the exception.  No SQL, no chunk arithmetic, no store access here.

pyfuse3's contract is that a handler may raise only ``FUSEError``: its
dispatch code catches nothing else, so any other exception ends the main loop
and leaves a dead mount.  :func:`_handler` therefore wraps every handler:
a :class:`~wsfs.errors.WsfsError` becomes its ``errno`` (logged as a warning
when that is ``EIO``, :class:`EioLog`: the application learns nothing from it), anything
unexpected is logged with a traceback and answered with ``EIO``.  It also counts
requests, errors and time per operation for ``wsfs stats``.

On a read-only mount every request that would change the tree gets
``EROFS`` (the kernel already refuses most of them on an ``ro`` mount; the
handlers are there for the rest and so that a request never falls back to
pyfuse3's ``ENOSYS`` default).  Over a :class:`~wsfs.daemon.writable.WritableTree`
(a read-write mount) they convert and call its mutations; the rules the
kernel's ``default_permissions`` leave to the file system (SUID/SGID cleared
on write, truncate and chown, ``O_TRUNC`` at open, ``direct_io`` for
``O_DIRECT`` opens) are decided here, from the request's context and the
handle's opener (``docs/daemon.md``, "Read-write mounts").

The adapter keeps the kernel's side of the state: the lookup count of every
inode it handed out (:class:`~wsfs.daemon.inodes.InodeTable`; a read-only
tree's inodes are manifest rows that live as long as the mount, so ``forget``
only counts) and the handles of open files and directories
(:class:`~wsfs.daemon.handles.HandleTable`; empty when the policy answers
OPEN and OPENDIR ``ENOSYS``, see ``policy.py``).

A tree method that needs blocking work first (a history mount opening a
version's manifest) raises :class:`~wsfs.daemon.tree.NotReady`; the wrapper
awaits the work and calls the handler again (:func:`_when_ready`).

Every wait (that work, a blob read) runs under the tree's
:class:`~wsfs.daemon.view.Deadline`: past it the operation answers
``ETIMEDOUT`` (``StoreTimeout``), and at shutdown ``ENOTCONN``.  An
operation with nothing to wait for pays nothing for it.
"""

from __future__ import annotations

import bisect
import errno
import functools
import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT, ModeT, RequestContext, XAttrNameT

from wsfs.daemon import policy as cache_policy
from wsfs.daemon.handles import HandleTable
from wsfs.daemon.inodes import InodeTable
from wsfs.daemon.policy import CachePolicy
from wsfs.daemon.tree import Attributes, FsStats, NotReady, Tree
from wsfs.daemon.writable import WritableTree
from wsfs.errors import WsfsError

log = logging.getLogger(__name__)

# wsfs' pyfuse3 patch (third_party/pyfuse3): read() and readdir() get the inode
# when the kernel sends no handle, so OPEN and OPENDIR can be answered ENOSYS.
INODE_AS_HANDLE = bool(getattr(pyfuse3, "WSFS_INODE_AS_HANDLE", False))
# st_blksize is only a hint to applications (cp, cat, stdio buffers): 128 KiB
# matches FUSE's largest read request, so one read(2) is one FUSE request.
BLKSIZE = 128 * 1024

_READDIR_BATCH = 256  # entries fetched per manifest query while filling a readdir reply
_READY_ROUNDS = 4  # times a handler may wait for its tree (NotReady) before that is an error

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_EXPECTED_ERRNOS = frozenset((errno.ENOENT, pyfuse3.ENOATTR, errno.ENOSYS))


# Upper bounds (µs) of the latency histogram buckets kept per operation (``metrics.py`` exports them).
LATENCY_BUCKETS_US = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 250_000, 1_000_000, 5_000_000)
_BUCKET_NS = tuple(b * 1000 for b in LATENCY_BUCKETS_US)


class OpStats:
    """Requests, errors, cumulative time and a latency histogram by operation (thread-safe, cheap)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.time_ns: Counter[str] = Counter()
        self.max_ns: Counter[str] = Counter()
        self.buckets: dict[str, list[int]] = {}  # op -> count per bucket of LATENCY_BUCKETS_US (not cumulative)

    def record(self, op: str, ns: int, failed: bool) -> None:
        i = bisect.bisect_left(_BUCKET_NS, ns)
        with self._lock:
            self.requests[op] += 1
            self.time_ns[op] += ns
            if ns > self.max_ns[op]:
                self.max_ns[op] = ns
            if failed:
                self.errors[op] += 1
            counts = self.buckets.get(op)
            if counts is None:
                counts = self.buckets[op] = [0] * (len(_BUCKET_NS) + 1)
            counts[i] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "errors": dict(self.errors),
                "latency_us": {
                    op: {
                        "mean": round(self.time_ns[op] / n / 1000, 1),
                        "max": round(self.max_ns[op] / 1000, 1),
                        "total_ms": round(self.time_ns[op] / 1e6, 1),
                    }
                    for op, n in self.requests.items()
                },
                # op -> requests per latency bucket (µs upper bounds in "latency_buckets_us", then +Inf)
                "latency_histogram": {op: list(c) for op, c in self.buckets.items()},
                "latency_buckets_us": list(LATENCY_BUCKETS_US),
            }


class EioLog:
    """Every EIO answer logged as a warning with what failed (the application learns nothing from the errno),
    at most ``BURST`` per ``WINDOW`` seconds: an application retrying a broken file in a loop must not fill
    the disk.  Beyond that one line per window says how many were not logged one by one."""

    BURST = 20
    WINDOW = 10.0

    def __init__(self, label: str) -> None:
        self.label = label
        self.since = -self.WINDOW
        self.logged = 0
        self.quiet = 0

    def answered(self, op: str, args: tuple[Any, ...], err: Exception) -> None:
        now = time.monotonic()
        if now - self.since >= self.WINDOW:
            if self.quiet:
                log.warning("%s: answered EIO %d more times in %.0f s (not logged one by one)",
                            self.label, self.quiet, now - self.since)
            self.since, self.logged, self.quiet = now, 0, 0
        if self.logged < self.BURST:
            self.logged += 1
            log.warning("%s: %s%r answered EIO: %s", self.label, op, args, err)
        else:
            self.quiet += 1


def _handler(fn: F) -> F:
    """Count and time a handler and make sure only ``FUSEError`` leaves it."""
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        if self.first_request is not None:
            hook, self.first_request = self.first_request, None
            hook()
        t0 = time.perf_counter_ns()
        failed = True
        try:
            result = await _when_ready(fn, self, args)
            failed = False
            return result
        except pyfuse3.FUSEError as e:
            # Expected answers (ENOENT from lookup, ENOATTR, ENOSYS for "no open
            # needed"...) are not failures.
            failed = e.errno not in _EXPECTED_ERRNOS
            raise
        except WsfsError as e:
            if e.errno == errno.EIO:
                self.eio_log.answered(op, args[:2], e)
            else:
                log.debug("%s: %s%r answered %s: %s", self.tree.label, op, args[:2],
                          errno.errorcode.get(e.errno, e.errno), e)
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            log.exception("%s: unexpected error in %s%r; answering EIO", self.tree.label, op, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            self.stats.record(op, time.perf_counter_ns() - t0, failed)

    return wrapper  # type: ignore[return-value]


async def _when_ready(fn: Callable[..., Awaitable[Any]], self: Operations, args: tuple[Any, ...]) -> Any:
    """Call a handler; if the tree first needs blocking work (``NotReady``), await it and call again.

    Handlers raise ``NotReady`` only from their first tree call, before any
    reply is built or lookup counted, so calling one again is safe.  A few rounds allow
    for a manifest that other requests pushed out of the history's LRU in the
    meantime; after that a ``NotReady`` is a bug and becomes EIO like any other.
    """
    for _ in range(_READY_ROUNDS):
        try:
            return await fn(self, *args)
        except NotReady as e:
            await self.tree.deadline.run(fn.__name__, e.wait)
    return await fn(self, *args)


def entry_attributes(node: Attributes, entry_timeout: float, attr_timeout: float) -> pyfuse3.EntryAttributes:
    """The kernel's view of *node* (its ``ino`` as given)."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = node.ino
    a.generation = 0  # inode numbers are never reused within a mount
    a.entry_timeout = entry_timeout
    a.attr_timeout = attr_timeout
    a.st_mode = node.mode
    a.st_nlink = node.nlink
    a.st_uid = node.uid
    a.st_gid = node.gid
    a.st_rdev = node.rdev
    a.st_size = node.size
    a.st_blksize = BLKSIZE
    a.st_blocks = node.blocks
    a.st_atime_ns = node.atime_ns
    a.st_mtime_ns = node.mtime_ns
    a.st_ctime_ns = node.ctime_ns
    return a


def statvfs(stats: FsStats) -> pyfuse3.StatvfsData:
    """The kernel's ``statfs`` reply for a tree's totals."""
    s = pyfuse3.StatvfsData()
    s.f_bsize = BLKSIZE
    s.f_frsize = stats.frsize
    s.f_blocks, s.f_bfree, s.f_bavail = stats.blocks, stats.bfree, stats.bavail
    s.f_files, s.f_ffree, s.f_favail = stats.files, stats.ffree, stats.favail
    s.f_namemax = stats.namemax
    return s


class Operations(pyfuse3.Operations):
    """FUSE operations over one :class:`~wsfs.daemon.tree.Tree`, with one mount's :class:`CachePolicy`."""

    # The kernel asks for "." and ".." only when exporting over NFS; the tree answers them.
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, tree: Tree, policy: CachePolicy | None = None) -> None:
        super().__init__()
        self.tree = tree
        # The tree's mutations when it has any (a read-write mount), else None: every mutation is EROFS.
        self.rw: WritableTree | None = tree if isinstance(tree, WritableTree) else None
        # By default, a read-only mount's policy for this tree and the pyfuse3 installed.
        self.policy = policy or cache_policy.choose(
            writable=False, inode_as_handle=INODE_AS_HANDLE,
            listings_change=tree.listings_change, has_xattrs=tree.has_xattrs is not False,
        )
        self.stats = OpStats()
        self.eio_log = EioLog(tree.label)
        self.inodes = InodeTable(label=tree.label)
        self.handles = HandleTable()
        self.invalidations = 0  # attribute invalidations sent to the kernel (invalidate_attributes)
        # Called once, before the first request after INIT is answered (the mount's read-ahead).
        self.first_request: Callable[[], None] | None = None

    def _entry(self, node: Attributes) -> pyfuse3.EntryAttributes:
        """*node* as the kernel's reply, with the policy's timeouts for its lifetime.

        A lookup or readdir that hands it out counts the lookup; a getattr does not.
        """
        entry_timeout, attr_timeout = self.policy.timeouts[self.tree.lifetime(node)]
        return entry_attributes(node, entry_timeout, attr_timeout)

    def statistics(self) -> dict[str, Any]:
        """The kernel's side of the state, for ``wsfs stats``: inodes it knows, handles it holds."""
        return {"policy": self.policy.mode, **self.inodes.statistics(), **self.handles.statistics(),
                "invalidations": self.invalidations}

    # -- names and attributes ----------------------------------------------

    @_handler
    async def lookup(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> pyfuse3.EntryAttributes:
        node = self.tree.lookup(parent_inode, name)
        if node is None:
            # A negative entry the kernel caches (for a day inside a version):
            # repeated probes for missing files (PATH, node_modules, .pyc) cost nothing.
            a = pyfuse3.EntryAttributes()
            a.st_ino = 0
            a.entry_timeout = self.policy.negative(self.tree.miss_lifetime(parent_inode))
            return a
        reply = self._entry(node)
        self.inodes.remember(node.ino)
        return reply

    @_handler
    async def getattr(self, inode: InodeT, ctx: RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.tree.getattr(inode))

    @_handler
    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        self.inodes.forget(inode_list)

    @_handler
    async def readlink(self, inode: InodeT, ctx: RequestContext) -> FileNameT:
        return FileNameT(self.tree.readlink(inode))

    @_handler
    async def access(self, inode: InodeT, mode: ModeT, ctx: RequestContext) -> bool:
        # Not called with default_permissions (the kernel checks); kept for mounts without it.
        if mode & os.W_OK and self.rw is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self.tree.getattr(inode)
        if ctx.uid == 0:
            return not (mode & os.X_OK) or stat.S_ISDIR(node.mode) or bool(node.mode & 0o111)
        if ctx.uid == node.uid:
            bits = (node.mode >> 6) & 7
        elif ctx.gid == node.gid or node.gid in pyfuse3.get_sup_groups(ctx.pid):
            bits = (node.mode >> 3) & 7
        else:
            bits = node.mode & 7
        return (mode & bits) == mode

    # -- directories ---------------------------------------------------------

    @_handler
    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        if self.policy.no_opendir:
            # ENOSYS: the kernel stops sending OPENDIR and RELEASEDIR for this
            # mount and opens every directory with FOPEN_KEEP_CACHE |
            # FOPEN_CACHE_DIR, so a listing read once is served from the page
            # cache afterwards (the patched pyfuse3 hands readdir the inode).
            raise pyfuse3.FUSEError(errno.ENOSYS)
        self.tree.opendir(inode)
        return FileHandleT(self.handles.open(inode, is_dir=True))

    @_handler
    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # pyfuse3 always answers with readdirplus, so each entry carries its
        # attributes and the kernel needs no lookup afterwards; it counts one
        # for every entry it accepted.  The tree's cursors are stable: next_id
        # resumes after that entry.
        ino = fh if self.policy.no_opendir else self.handles.get(fh).ino
        remember = self.inodes.remember
        after = start_id
        while True:
            batch = self.tree.readdir(ino, after, _READDIR_BATCH)
            for cursor, name, node in batch:
                if not pyfuse3.readdir_reply(token, FileNameT(name), self._entry(node), cursor):
                    return
                remember(node.ino)
            if len(batch) < _READDIR_BATCH:
                return
            after = batch[-1][0]

    @_handler
    async def releasedir(self, fh: FileHandleT) -> None:
        self.handles.release(fh)

    @_handler
    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        if self.rw is not None:
            self.rw.sync_all()  # a directory's entries are in the batch: commit it durably

    # -- files ---------------------------------------------------------------

    @_handler
    async def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> pyfuse3.FileInfo:
        if self.policy.no_open:
            # ENOSYS: the kernel stops sending OPEN and RELEASE for this mount
            # (two of the three round trips of reading a small file) and opens
            # files with FOPEN_KEEP_CACHE; read() gets the inode as handle.
            # The mount is "ro", so the VFS refuses write opens (EROFS) itself.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        rw = self.rw
        if rw is None:
            if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
                raise pyfuse3.FUSEError(errno.EROFS)
            self.tree.open(inode)
            return pyfuse3.FileInfo(fh=FileHandleT(self.handles.open(inode, flags)), keep_cache=self.policy.keep_cache)
        node = rw.open(inode)
        if flags & os.O_TRUNC and stat.S_ISREG(node.mode):
            # The kernel passes O_TRUNC to us (atomic_o_trunc) instead of a SETATTR,
            # having checked write permission (even for O_RDONLY, which Linux truncates
            # too): truncate as ftruncate would, times set even if the size was already 0.
            now = time.time_ns()
            if rw.setattr(inode, size=0, mtime_ns=now, kill_suid=ctx.uid != 0).mode != node.mode:
                self.invalidate_attributes(inode)  # SUID/SGID cleared: the kernel keeps the old mode
        return self._opened(inode, flags, ctx)

    def _opened(self, inode: int, flags: int, ctx: RequestContext) -> pyfuse3.FileInfo:
        """A new handle on *inode* of a read-write mount, counted by the layer (an unlinked file lives until release)."""
        assert self.rw is not None
        self.rw.opened(inode)
        fh = self.handles.open(inode, flags, uid=ctx.uid)
        # O_DIRECT: the application asked for no page cache, so reads and writes come here as they are.
        direct = bool(flags & getattr(os, "O_DIRECT", 0))
        return pyfuse3.FileInfo(fh=FileHandleT(fh), direct_io=direct, keep_cache=not direct and self.rw.keep_cache(inode))

    @_handler
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        ino = fh if self.policy.no_open else self.handles.get(fh).ino
        return await self.tree.read(ino, off, size)

    @_handler
    async def flush(self, fh: FileHandleT) -> None:
        if self.policy.no_flush:
            # close(2) has nothing to flush: the kernel treats ENOSYS from FLUSH
            # as success and sets no_flush for the connection, which saves one
            # round trip on every close.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if self.rw is not None:
            self.rw.flush(self.handles.get(fh).ino)

    @_handler
    async def release(self, fh: FileHandleT) -> None:
        h = self.handles.release(fh)
        if self.rw is not None:
            self.rw.release(h.ino)

    @_handler
    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        if self.rw is not None:
            # Durable: every change so far, not only this file's (docs/write-layer.md).
            self.rw.fsync(self.handles.get(fh).ino, datasync)

    @_handler
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        if self.rw is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        h = self.handles.get(fh)
        # WRITE carries no credentials: the opener's decide (a write by anyone
        # but root clears SUID, and SGID if group-executable, as on tmpfs).
        n = await self.rw.write(h.ino, off, buf, kill_suid=h.uid != 0)
        if h.uid:
            for ino in self.rw.take_mode_changes():
                self.invalidate_attributes(ino)  # the reply does not carry the mode the write changed
        return n

    @_handler
    async def create(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, flags: FlagT,
                     ctx: RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        rw = self._writable()
        node = rw.create(parent_inode, name, mode, ctx.uid, ctx.gid)
        reply = self._entry(node)
        fi = self._opened(node.ino, flags, ctx)
        self.inodes.remember(node.ino)
        return fi, reply

    # -- extended attributes and the file system -------------------------------

    @_handler
    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> bytes:
        if self.policy.no_getxattr:
            # No entry of this tree has an xattr: ENOSYS makes the kernel stop
            # asking for the rest of the mount (fc->no_getxattr).
            raise pyfuse3.FUSEError(errno.ENOSYS)
        xattrs = self.tree.xattrs(inode)  # a tree whose index is still being built waits for it (NotReady)
        if self.tree.has_xattrs is False:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # known only now: as if the policy had said so at mount
        value = xattrs.get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_handler
    async def listxattr(self, inode: InodeT, ctx: RequestContext) -> Sequence[XAttrNameT]:
        # (No ENOSYS here: the kernel would then fail listxattr with EOPNOTSUPP
        # instead of an empty list; only xattr-aware tools call it anyway.)
        return [XAttrNameT(n) for n in self.tree.xattrs(inode)]

    @_handler
    async def statfs(self, ctx: RequestContext) -> pyfuse3.StatvfsData:
        return statvfs(self.tree.statfs())

    @_handler
    async def setxattr(self, inode: InodeT, name: XAttrNameT, value: bytes, ctx: RequestContext) -> None:
        # (pyfuse3 checks XATTR_CREATE / XATTR_REPLACE with getxattr first.)
        if name.startswith(b"system.posix_acl_"):
            # Without FUSE_POSIX_ACL the kernel passes ACLs through as opaque xattrs and enforces none of
            # them: storing one would tell `setfacl` it worked.  EOPNOTSUPP, as a file system without
            # ACLs answers (`cp -a` then keeps the mode by chmod, and stores no row per file).
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        self._writable().setxattr(inode, name, value)
        self.invalidate_attributes(inode)  # ctime changed; the reply carries no attributes

    @_handler
    async def removexattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> None:
        self._writable().removexattr(inode, name)
        self.invalidate_attributes(inode)

    # -- mutations (read-write mounts) ---------------------------------------------

    def invalidate_attributes(self, inode: int) -> None:
        """Make the kernel forget *inode*'s attributes: a read-write tree changed them behind its back.

        Attributes only (no pages, no lock the kernel may hold for the
        request being answered), so it is safe from a handler; an inode the
        kernel does not know has nothing to forget.
        """
        self.invalidations += 1
        try:
            pyfuse3.invalidate_inode(InodeT(inode), attr_only=True)
        except OSError:
            pass

    def _writable(self) -> WritableTree:
        if self.rw is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self.rw

    def _new_entry(self, node: Attributes) -> pyfuse3.EntryAttributes:
        reply = self._entry(node)
        self.inodes.remember(node.ino)
        return reply

    @_handler
    async def setattr(self, inode: InodeT, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: FileHandleT | None, ctx: RequestContext) -> pyfuse3.EntryAttributes:
        rw = self._writable()
        kw: dict[str, Any] = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_size:
            kw["size"] = attr.st_size
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns  # UTIME_NOW: pyfuse3 filled in the time; UTIME_OMIT: not set
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        # The kernel (handle_killpriv) leaves SUID/SGID to us: a chown clears
        # them (for anyone, as Linux does), a truncate by anyone but root too;
        # a chmod in the same request sets the bits it names.
        chown = fields.update_uid or fields.update_gid
        kw["kill_suid"] = not fields.update_mode and (chown or (fields.update_size and ctx.uid != 0))
        return self._entry(rw.setattr(inode, **kw))

    @_handler
    async def mknod(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, rdev: int,
                    ctx: RequestContext) -> pyfuse3.EntryAttributes:
        return self._new_entry(self._writable().create(parent_inode, name, mode, ctx.uid, ctx.gid, rdev))

    @_handler
    async def mkdir(self, parent_inode: InodeT, name: FileNameT, mode: ModeT,
                    ctx: RequestContext) -> pyfuse3.EntryAttributes:
        return self._new_entry(self._writable().mkdir(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_handler
    async def symlink(self, parent_inode: InodeT, name: FileNameT, target: FileNameT,
                      ctx: RequestContext) -> pyfuse3.EntryAttributes:
        return self._new_entry(self._writable().symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @_handler
    async def link(self, inode: InodeT, new_parent_inode: InodeT, new_name: FileNameT,
                   ctx: RequestContext) -> pyfuse3.EntryAttributes:
        return self._new_entry(self._writable().link(inode, new_parent_inode, new_name))

    @_handler
    async def unlink(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        self._writable().unlink(parent_inode, name)

    @_handler
    async def rmdir(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        self._writable().rmdir(parent_inode, name)

    @_handler
    async def rename(self, parent_inode_old: InodeT, name_old: FileNameT, parent_inode_new: InodeT,
                     name_new: FileNameT, flags: FlagT, ctx: RequestContext) -> None:
        # pyfuse3's RENAME_NOREPLACE / RENAME_EXCHANGE are Linux's, as the layer's.
        self._writable().rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
