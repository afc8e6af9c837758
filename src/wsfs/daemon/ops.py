"""The pyfuse3 ``Operations`` adapter for a read-only version: a protocol adapter only.

Each handler converts its arguments, calls one :class:`~wsfs.daemon.view.VersionView`
method, and converts the result (``EntryAttributes``, ``FileInfo``, bytes) or
the exception.  No SQL, no chunk arithmetic, no store access here.

pyfuse3's contract is that a handler may raise only ``FUSEError``: its
dispatch code catches nothing else, so any other exception ends the main loop
and leaves a dead mount.  :func:`_handler` therefore wraps every handler:
a :class:`~wsfs.errors.WsfsError` becomes its ``errno``, anything unexpected
is logged with a traceback and answered with ``EIO``.  It also counts
requests, errors and time per operation for ``wsfs stats``.

Every request that would change the tree gets ``EROFS``.  The kernel already
refuses most of them on an ``ro`` mount; the handlers are there for the rest
and so that a request never falls back to pyfuse3's ``ENOSYS`` default.

Lookup counts are not tracked: inode numbers are manifest rows that live as
long as the mount, so ``forget`` has nothing to free.

A view method that needs blocking work first (a history mount opening a
version's manifest) raises :class:`~wsfs.daemon.view.NotReady`; the wrapper
awaits the work and calls the handler again (:func:`_when_ready`).

Every wait (that work, a blob read) runs under the view's
:class:`~wsfs.daemon.view.Deadline`: past it the operation answers
``ETIMEDOUT`` (``StoreTimeout``), and at shutdown ``ENOTCONN``.  An
operation with nothing to wait for pays nothing for it.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pyfuse3
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT, ModeT, RequestContext, XAttrNameT

from wsfs.daemon.view import NotReady, VersionView
from wsfs.errors import WsfsError

if TYPE_CHECKING:
    from wsfs.daemon.history import HistoryView

log = logging.getLogger(__name__)

_READDIR_BATCH = 256  # entries fetched per manifest query while filling a readdir reply
_READY_ROUNDS = 4  # times a handler may wait for its view (NotReady) before that is an error

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_EXPECTED_ERRNOS = frozenset((errno.ENOENT, pyfuse3.ENOATTR, errno.ENOSYS))


class OpStats:
    """Requests, errors and cumulative time by operation (thread-safe, cheap)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.time_ns: Counter[str] = Counter()
        self.max_ns: Counter[str] = Counter()

    def record(self, op: str, ns: int, failed: bool) -> None:
        with self._lock:
            self.requests[op] += 1
            self.time_ns[op] += ns
            if ns > self.max_ns[op]:
                self.max_ns[op] = ns
            if failed:
                self.errors[op] += 1

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
            }


def _handler(fn: F) -> F:
    """Count and time a handler and make sure only ``FUSEError`` leaves it."""
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
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
            log.debug("%s%r: %s", op, args[:2], e)
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            log.exception("%s: unexpected error in %s%r; answering EIO", self.view.label, op, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            self.stats.record(op, time.perf_counter_ns() - t0, failed)

    return wrapper  # type: ignore[return-value]


async def _when_ready(fn: Callable[..., Awaitable[Any]], self: Operations, args: tuple[Any, ...]) -> Any:
    """Call a handler; if the view first needs blocking work (``NotReady``), await it and call again.

    Handlers raise ``NotReady`` only from their first view call, before any
    reply is built, so calling one again is safe.  A few rounds allow for a
    manifest that other requests pushed out of the view's LRU in the meantime;
    after that a ``NotReady`` is a bug and becomes EIO like any other.
    """
    for _ in range(_READY_ROUNDS):
        try:
            return await fn(self, *args)
        except NotReady as e:
            await self.view.deadline.run(fn.__name__, e.wait)
    return await fn(self, *args)


def _read_only(op: str) -> Callable[..., Awaitable[Any]]:
    async def handler(self: Operations, *args: Any) -> Any:
        self.stats.record(op, 0, True)
        raise pyfuse3.FUSEError(errno.EROFS)

    handler.__name__ = op
    handler.__doc__ = f"``{op}``: this is a read-only mount (EROFS)."
    return handler


class Operations(pyfuse3.Operations):
    """Read-only FUSE operations over one :class:`VersionView`, or a ``HistoryView`` (same interface)."""

    # The kernel asks for "." and ".." only when exporting over NFS; the view answers them.
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, view: VersionView | HistoryView, *, cache_dirs: bool = True) -> None:
        super().__init__()
        self.view = view
        self.stats = OpStats()
        # With wsfs' pyfuse3 patch, read() and readdir() get the inode when the
        # kernel sends no handle, so OPEN and OPENDIR can be answered ENOSYS
        # (see open()).  *cache_dirs* False keeps OPENDIR for a view whose
        # listings change (the history root lists new versions).
        self.no_open = bool(getattr(pyfuse3, "WSFS_INODE_AS_HANDLE", False))
        self.no_opendir = self.no_open and cache_dirs

    # -- names and attributes ----------------------------------------------

    @_handler
    async def lookup(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> pyfuse3.EntryAttributes:
        node = self.view.lookup(parent_inode, name)
        if node is None:
            # A negative entry the kernel caches (for ENTRY_TIMEOUT inside a version):
            # repeated probes for missing files (PATH, node_modules, .pyc) cost nothing.
            return self.view.negative_entry(parent_inode)
        return self.view.attributes(node)

    @_handler
    async def getattr(self, inode: InodeT, ctx: RequestContext) -> pyfuse3.EntryAttributes:
        return self.view.attributes(self.view.getattr(inode))

    @_handler
    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        return None  # nothing to free: inodes are manifest rows (see the module docstring)

    @_handler
    async def readlink(self, inode: InodeT, ctx: RequestContext) -> FileNameT:
        return FileNameT(self.view.readlink(inode))

    @_handler
    async def access(self, inode: InodeT, mode: ModeT, ctx: RequestContext) -> bool:
        # Not called with default_permissions (the kernel checks); kept for mounts without it.
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self.view.getattr(inode)
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
        if self.no_opendir:
            # ENOSYS: the kernel stops sending OPENDIR and RELEASEDIR for this
            # mount and opens every directory with FOPEN_KEEP_CACHE |
            # FOPEN_CACHE_DIR, so a listing read once is served from the page
            # cache afterwards (the patched pyfuse3 hands readdir the inode).
            raise pyfuse3.FUSEError(errno.ENOSYS)
        self.view.opendir(inode)
        return FileHandleT(inode)  # the directory's inode is its handle: no per-open state

    @_handler
    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # pyfuse3 always answers with readdirplus, so each entry carries its
        # attributes and the kernel needs no lookup afterwards.  The manifest's
        # dentry ids are stable cursors: next_id resumes after that entry.
        after = start_id
        while True:
            batch = self.view.readdir(fh, after, _READDIR_BATCH)
            for cursor, name, node in batch:
                if not pyfuse3.readdir_reply(token, FileNameT(name), self.view.attributes(node), cursor):
                    return
            if len(batch) < _READDIR_BATCH:
                return
            after = batch[-1][0]

    @_handler
    async def releasedir(self, fh: FileHandleT) -> None:
        return None

    @_handler
    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        return None

    # -- files ---------------------------------------------------------------

    @_handler
    async def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> pyfuse3.FileInfo:
        if self.no_open:
            # ENOSYS: the kernel stops sending OPEN and RELEASE for this mount
            # (two of the three round trips of reading a small file) and opens
            # files with FOPEN_KEEP_CACHE; read() gets the inode as handle.
            # The mount is "ro", so the VFS refuses write opens (EROFS) itself.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        self.view.open(inode)
        # keep_cache: the content never changes, so pages cached by an earlier
        # open stay valid and a re-read costs no request at all.
        return pyfuse3.FileInfo(fh=FileHandleT(inode), keep_cache=True)

    @_handler
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        return await self.view.read(fh, off, size)

    async def flush(self, fh: FileHandleT) -> None:
        """``close(2)``: nothing to flush.  ENOSYS makes the kernel stop sending flushes at all.

        (The kernel treats ENOSYS from FLUSH as success and sets ``no_flush``
        for the connection, which saves one round trip on every close; OPEN
        and OPENDIR use the same trick, see :meth:`open`.)
        """
        self.stats.record("flush", 0, False)
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_handler
    async def release(self, fh: FileHandleT) -> None:
        return None

    @_handler
    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        return None

    # -- extended attributes and the file system -------------------------------

    @_handler
    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> bytes:
        if not self.view.has_xattrs:
            # No entry of this tree has an xattr: ENOSYS makes the kernel stop
            # asking for the rest of the mount (fc->no_getxattr), which saves a
            # round trip per file on every `ls -l` (security.selinux, ACLs...).
            # Callers then get EOPNOTSUPP instead of ENODATA, which ls, cp,
            # tar and rsync all read as "no attribute".
            raise pyfuse3.FUSEError(errno.ENOSYS)
        value = self.view.xattrs(inode).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_handler
    async def listxattr(self, inode: InodeT, ctx: RequestContext) -> Sequence[XAttrNameT]:
        # (No ENOSYS here: the kernel would then fail listxattr with EOPNOTSUPP
        # instead of an empty list; only xattr-aware tools call it anyway.)
        return [XAttrNameT(n) for n in self.view.xattrs(inode)]

    @_handler
    async def statfs(self, ctx: RequestContext) -> pyfuse3.StatvfsData:
        return self.view.statfs()

    # -- everything that would write ---------------------------------------------

    setattr = _read_only("setattr")
    mknod = _read_only("mknod")
    mkdir = _read_only("mkdir")
    unlink = _read_only("unlink")
    rmdir = _read_only("rmdir")
    symlink = _read_only("symlink")
    rename = _read_only("rename")
    link = _read_only("link")
    create = _read_only("create")
    write = _read_only("write")
    setxattr = _read_only("setxattr")
    removexattr = _read_only("removexattr")
