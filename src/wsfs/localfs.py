"""Private local files: what wsfs keeps on a host is readable by its owner only.

The cache holds the plaintext of every file a mount or a push has seen
(content files, manifests with every small file inline, the temporary
manifest of a push), whatever the modes of those files in the version.  So
every directory wsfs creates under its cache, state and log locations is
``0700`` and every file ``0600``, whatever the umask: a second local user
cannot open any of it.  A directory that exists with a wider mode and belongs
to us is narrowed (a cache made by an older wsfs); one that belongs to
another user is left alone (root using a user's cache, say).

Leftovers of killed runs carry the pid of their creator in their name
(``<prefix>-<pid>-<random><suffix>``, or ``.<id>.<pid>.<thread>.tmp`` in the
blob cache): :func:`remove_stale` deletes those whose creator is dead, or
which are older than a bound.  Callers run it where it is cheap: on the small
``<cache>/tmp`` when a repository is opened, on a blob directory the first
time a process writes into it.  Nothing here scans a whole cache.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: str) -> str:
    """Make *path* and its missing parents ``0700``; narrow it if it exists wider and is ours.  Returns *path*."""
    try:
        os.mkdir(path, PRIVATE_DIR)
    except FileExistsError:
        tighten(path, PRIVATE_DIR)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if parent == os.path.abspath(path):
            raise
        private_dir(parent)
        try:
            os.mkdir(path, PRIVATE_DIR)
        except FileExistsError:  # created by another process meanwhile
            tighten(path, PRIVATE_DIR)
        return path
    else:
        os.chmod(path, PRIVATE_DIR)  # mkdir's mode is cut by the umask; make it exact
    return path


def tighten(path: str, mode: int, fd: int | None = None) -> None:
    """Remove the group and other bits from *path* (or open *fd*) if it is ours and has any.

    A mode that cannot be changed (a read-only file system) is logged, not
    raised: reading a cache must not fail for it.
    """
    st = os.fstat(fd) if fd is not None else os.stat(path)
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        try:
            if fd is not None:
                os.fchmod(fd, st.st_mode & mode & 0o7777)
            else:
                os.chmod(path, st.st_mode & mode & 0o7777)
        except OSError as e:
            log.warning("cannot make %s private (mode %o): %s", path, st.st_mode & 0o777, e.strerror)


def private_file(path: str, flags: int = os.O_RDWR) -> int:
    """Open *path* (created ``0600`` if missing, narrowed if ours and wider); a descriptor (close-on-exec).

    Never through a symlink (ELOOP): a link planted where a private file is
    expected (root using a user's cache) must not create or open its target.
    """
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE_FILE)
    try:
        tighten(path, PRIVATE_FILE, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def touch_private(path: str) -> None:
    """Create *path* empty and ``0600`` if missing (narrowed if ours and wider), for a library that opens it itself."""
    os.close(private_file(path, os.O_RDONLY))


@contextmanager
def private_umask() -> Iterator[None]:
    """Umask 077 for the block: for a library that creates its files itself (SQLite: 0644 & ~umask).

    The umask is per process: keep the block short (a file's creation), and
    use it where no other thread of ours creates files meanwhile.
    """
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def temp_name(directory: str, prefix: str, suffix: str = "") -> str:
    """A fresh path ``<directory>/<prefix>-<pid>-<random><suffix>`` (not created) that :func:`remove_stale` understands."""
    return os.path.join(directory, f"{prefix}-{os.getpid()}-{secrets.token_hex(6)}{suffix}")


def pid_alive(pid: int) -> bool:
    """Whether a process *pid* exists (a reused pid counts as alive: its leftovers wait for it, or for the age bound)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(directory: str, pid_of: Callable[[str], int | None], max_age: float) -> int:
    """Delete files of *directory* whose creating pid (``pid_of(name)``; None: not a temporary file) is dead
    or whose age exceeds *max_age* seconds.  Returns how many were removed; a missing directory has none."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    removed = 0
    now = time.time()
    for name in names:
        pid = pid_of(name)
        if pid is None:
            continue
        path = os.path.join(directory, name)
        try:
            if pid_alive(pid) and now - os.lstat(path).st_mtime < max_age:
                continue
            os.unlink(path)
            removed += 1
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warning("cannot remove the leftover %s: %s", path, e.strerror)
    if removed:
        log.info("removed %d leftover file(s) of killed runs from %s", removed, directory)
    return removed


_TEMP_NAME = re.compile(r"[A-Za-z_]+-(\d+)-[0-9a-f]+(\.[A-Za-z0-9.]+)?")


def temp_pid(name: str) -> int | None:
    """The pid in a :func:`temp_name` name ``<prefix>-<pid>-<random><suffix>``, or None if *name* is not one."""
    m = _TEMP_NAME.fullmatch(name)
    return int(m[1]) if m else None
