"""What the kernel may cache, and which requests it is told not to send: one object per mount mode.

A read-only mount serves versions that never change, so the kernel may keep
entries, misses, attributes, pages and listings for as long as it likes (a
day is "forever" without overflowing anything), and requests that carry no
information for us are switched off for the whole connection by answering
them ``ENOSYS`` once:

- OPEN and OPENDIR (with wsfs' pyfuse3 patch, which hands ``read`` and
  ``readdir`` the inode instead of a handle): the kernel then opens files with
  ``FOPEN_KEEP_CACHE`` and directories with ``FOPEN_KEEP_CACHE |
  FOPEN_CACHE_DIR`` itself, and sends no RELEASE or RELEASEDIR either: two of
  the three round trips of reading a small file.  Not OPENDIR when a listing
  may change (the history root): the kernel would keep serving the old one.
- FLUSH: nothing to flush; the kernel treats ``ENOSYS`` as success and stops
  sending it, which saves a round trip on every ``close``.
- GETXATTR when no entry has an xattr: ``ls -l`` probes ``security.selinux``
  and ACLs on every file, one round trip each.  Callers then get
  ``EOPNOTSUPP`` instead of ``ENODATA``, which ls, cp, tar and rsync all read
  as "no attribute".

A read-write mount has one writer, its daemon: every change the kernel
makes goes through it, and the kernel drops what it cached of the entries
and attributes a request changes (the parent's attributes after a create or
unlink, the file's after a write or link...).  So the same long timeouts
for entries, misses and attributes are safe; what the daemon changes behind
the kernel's back it invalidates explicitly (``docs/daemon.md`` §8: SUID and
SGID cleared by a write or an ``O_TRUNC`` open, an xattr's ctime, ``wsfs
discard``).  The page cache is kept across opens only for a file whose
content is still the base's (the writable tree decides at open).  OPEN and
GETXATTR reach the daemon (a handle carries the opener's uid and the
layer's open count; xattrs can be set at any time); OPENDIR is answered
``ENOSYS`` as on a read-only mount (with the patched pyfuse3: the kernel
then keeps listings, and drops them itself when an entry changes), and
FLUSH too: a write fails or succeeds when it is made, so ``close`` has
nothing to learn from a flush, and the layer takes a file's metadata into
its batch at RELEASE.

The values below moved here unchanged from ``view.py``, ``history.py`` and
``ops.py``; ``docs/daemon.md`` §2 and §6 explain and measure them.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsfs.daemon.tree import Lifetime

# Inside a version, nothing changes: a day is "forever".
ENTRY_TIMEOUT = 86400.0
ATTR_TIMEOUT = 86400.0
# A history's root changes when versions and tags are added (history.REFRESH_INTERVAL):
# its entries, attributes and misses are kept only briefly.
ROOT_TIMEOUT = 1.0
# A read-write mount: entries, attributes and misses as long as a version's (the
# daemon is the only writer and invalidates what it changes behind the kernel).
READ_WRITE_TIMEOUT = 86400.0

# (entry timeout, attribute timeout) per Lifetime, on a read-only mount.
_READ_ONLY_TIMEOUTS = {
    Lifetime.FIXED: (ENTRY_TIMEOUT, ATTR_TIMEOUT),
    Lifetime.LISTED: (ROOT_TIMEOUT, ROOT_TIMEOUT),
    Lifetime.LISTED_FIXED: (ROOT_TIMEOUT, ATTR_TIMEOUT),  # <n> is listed, but its directory never changes
    Lifetime.PROVISIONAL: (ROOT_TIMEOUT, 0.0),  # a placeholder's attributes are not the real ones: never cached
}


@dataclass(frozen=True)
class CachePolicy:
    """The kernel-cache decisions of one mount; chosen once, at mount time, by :func:`choose`."""

    mode: str  # "read-only" or "read-write", for logs and stats
    timeouts: tuple[tuple[float, float], ...]  # (entry, attribute) timeout, indexed by Lifetime
    keep_cache: bool  # files keep their page cache across opens whatever happened (FileInfo.keep_cache)
    no_open: bool  # answer OPEN ENOSYS: read() gets the inode as handle; no RELEASE either
    no_opendir: bool  # answer OPENDIR ENOSYS: readdir() gets the inode; the kernel caches listings
    no_flush: bool  # answer FLUSH ENOSYS: the kernel stops sending it
    no_getxattr: bool  # answer GETXATTR ENOSYS: the kernel stops asking (callers see EOPNOTSUPP)

    def entry(self, lifetime: Lifetime) -> tuple[float, float]:
        """``(entry_timeout, attr_timeout)`` for an entry of this lifetime."""
        return self.timeouts[lifetime]

    def negative(self, lifetime: Lifetime) -> float:
        """How long the kernel keeps a miss in a directory whose names have this lifetime."""
        return self.timeouts[lifetime][0]


def _table(timeouts: dict[Lifetime, tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    return tuple(timeouts[lifetime] for lifetime in Lifetime)


def choose(*, writable: bool, inode_as_handle: bool, listings_change: bool, has_xattrs: bool) -> CachePolicy:
    """The policy of a mount.

    *inode_as_handle*: pyfuse3 carries wsfs' patch (``WSFS_INODE_AS_HANDLE``),
    without which ``read`` cannot do without OPEN.  *listings_change* and
    *has_xattrs* are the tree's own (``Tree.listings_change``, ``Tree.has_xattrs``).
    """
    if writable:
        capped = {k: (min(e, READ_WRITE_TIMEOUT), min(a, READ_WRITE_TIMEOUT))
                  for k, (e, a) in _READ_ONLY_TIMEOUTS.items()}
        return CachePolicy(mode="read-write", timeouts=_table(capped), keep_cache=False,
                           no_open=False, no_opendir=inode_as_handle, no_flush=True, no_getxattr=False)
    return CachePolicy(
        mode="read-only",
        timeouts=_table(_READ_ONLY_TIMEOUTS),
        keep_cache=True,  # the content never changes: pages cached by an earlier open stay valid
        no_open=inode_as_handle,
        no_opendir=inode_as_handle and not listings_change,
        no_flush=True,
        no_getxattr=not has_xattrs,
    )
