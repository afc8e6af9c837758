"""Error classes shared by every layer.

Each class carries the process exit status the CLI uses for it and, for the
daemon, the errno it maps to.  The message is what the user sees on one line;
details go to the log.  Nothing here imports another wsfs module.
"""

from __future__ import annotations

import errno


class WsfsError(Exception):
    """Base of every error wsfs reports to a user."""

    exit_code = 1
    errno = errno.EIO


class UsageError(WsfsError):
    """The command line or a configuration value is wrong."""

    exit_code = 2
    errno = errno.EINVAL


class InvalidName(UsageError):
    """A workspace, tag or path name is not acceptable."""


class NotFound(WsfsError):
    """A repository, workspace, version, tag, path or object does not exist."""

    exit_code = 3
    errno = errno.ENOENT


class AlreadyExists(WsfsError):
    """A conditional create found the object already there."""

    exit_code = 4
    errno = errno.EEXIST


class Conflict(WsfsError):
    """Another writer published first; nothing was lost, the caller may retry."""

    exit_code = 5
    errno = errno.EAGAIN


class IntegrityError(WsfsError):
    """Bytes from the store do not match their content id, or a manifest is malformed."""

    exit_code = 6
    errno = errno.EIO


class FormatError(WsfsError):
    """A repository or manifest of a format version this wsfs cannot read."""

    exit_code = 7
    errno = errno.EIO


class StoreUnavailable(WsfsError):
    """The object store could not be reached or refused us after retries."""

    exit_code = 8
    errno = errno.EIO


class StoreTimeout(StoreUnavailable):
    """The object store did not answer within the time allowed (a request's budget, or a FUSE operation's deadline).

    ``ETIMEDOUT`` rather than ``EIO``: the bytes are not known to be bad, the
    store is slow or gone, and trying again later may succeed.
    """

    errno = errno.ETIMEDOUT


class AccessDenied(StoreUnavailable):
    """The object store rejected our credentials or permissions."""

    errno = errno.EACCES


class SourceError(WsfsError):
    """A file of the tree being pushed is unreadable, vanished or changed while read."""

    exit_code = 9
    errno = errno.EIO


class MountError(WsfsError):
    """The file system could not be mounted (FUSE refused, or the daemon failed to start)."""

    exit_code = 10


# -- file system errors of the write layer ------------------------------------
# A read-write tree answers POSIX calls; each refusal is a class carrying its
# errno, so the daemon maps them with no table of its own.  Exit code 1: the
# CLI never shows them but as "other error".


class FsError(WsfsError):
    """A file system call refused (the subclass's ``errno`` says why)."""


class NotEmpty(FsError):
    """rmdir, or rename over a directory, that still has entries."""

    errno = errno.ENOTEMPTY


class Exists(FsError):
    """The name is taken (create, mkdir, link, RENAME_NOREPLACE; xattr create)."""

    errno = errno.EEXIST


class IsADirectory(FsError):
    """A file operation (unlink, read, rename of a file over a directory) on a directory."""

    errno = errno.EISDIR


class NotADirectory(FsError):
    """A directory operation on something else (lookup in a file, rmdir of a file)."""

    errno = errno.ENOTDIR


class InvalidArgument(FsError):
    """A bad argument: a directory moved into itself, an invalid name or flag combination."""

    errno = errno.EINVAL


class NameTooLong(FsError):
    """A name longer than 255 bytes, or a symlink target longer than 4095."""

    errno = errno.ENAMETOOLONG


class NoSpace(FsError):
    """The local state folder of a write layer is full: that write failed, earlier ones stand."""

    errno = errno.ENOSPC


class NoAttribute(FsError):
    """No extended attribute of that name (ENODATA, which Linux also calls ENOATTR)."""

    errno = errno.ENODATA


class AttributeTooBig(FsError):
    """An extended attribute name over 255 bytes or value over 64 KiB."""

    errno = errno.E2BIG


class LayerMismatch(UsageError):
    """A write layer's state folder belongs to another workspace (or another format)."""


class LayerBusy(UsageError):
    """A write layer's state folder is open in another process (a mount of it is running)."""

    errno = errno.EBUSY


class NotPermitted(FsError):
    """An operation the file system never allows (a hard link to a directory)."""

    errno = errno.EPERM


class Stale(FsError):
    """An inode number the kernel holds that names nothing any more (its file went away in a re-base)."""

    errno = errno.ESTALE
