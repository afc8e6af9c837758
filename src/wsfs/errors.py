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
