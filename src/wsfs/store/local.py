"""A store in a local directory: the embedded default repository.

Atomicity comes from the filesystem: objects are written to a temporary file
in ``<root>/.tmp``, fsynced, then renamed (``put``) or hard-linked
(``put_if_absent``, which fails with ``EEXIST`` if the key exists) into place,
and the directory is fsynced.  A crash leaves at most stray files in ``.tmp``.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Generator, Iterator
from typing import BinaryIO

from wsfs.errors import AlreadyExists, NotFound, StoreUnavailable
from wsfs.store.base import STREAM_PIECE, StoreStats, check_key


class LocalStore:
    """An :class:`~wsfs.store.base.ObjectStore` in a directory."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.url = self.root
        self.stats = StoreStats()
        self._tmp = os.path.join(self.root, ".tmp")

    def _path(self, key: str) -> str:
        return os.path.join(self.root, check_key(key))

    def check(self) -> None:
        if not os.path.isdir(self.root):
            raise NotFound(f"no repository directory at {self.root}")

    def _open(self, key: str) -> BinaryIO:
        """The object's file for reading; a failure is a counted ``get`` and the store's error.

        Whoever writes the repository is not trusted more than a bucket
        writer: an object that is a symlink, a FIFO (which would block the
        open), a device or a directory is refused, never followed or read.
        """
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            self.stats.count("get")
            raise NotFound(f"no object {key!r} in {self.url}") from None
        except OSError as e:
            self.stats.count("get")
            if e.errno == errno.ELOOP:
                raise StoreUnavailable(f"cannot read {key!r} from {self.url}: it is a symbolic link") from None
            raise StoreUnavailable(f"cannot read {key!r} from {self.url}: {e.strerror}") from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self.stats.count("get")
            raise StoreUnavailable(f"cannot read {key!r} from {self.url}: not a regular file")
        return os.fdopen(fd, "rb")

    def get(self, key: str) -> bytes:
        with self._open(key) as f:
            try:
                data = f.read()
            except OSError as e:
                self.stats.count("get")
                raise StoreUnavailable(f"cannot read {key!r} from {self.url}: {e.strerror}") from e
        self.stats.count("get", bytes_in=len(data))
        return data

    def get_stream(self, key: str, piece: int = STREAM_PIECE) -> Generator[bytes, None, None]:
        return self._pieces(key, self._open(key), piece)

    def _pieces(self, key: str, f: BinaryIO, piece: int) -> Generator[bytes, None, None]:
        n = 0
        try:
            while data := f.read(piece):
                n += len(data)
                yield data
        except OSError as e:
            raise StoreUnavailable(f"cannot read {key!r} from {self.url}: {e.strerror}") from e
        finally:
            f.close()
            self.stats.count("get", bytes_in=n)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with self._open(key) as f:
            data = os.pread(f.fileno(), length, start)
        self.stats.count("get", bytes_in=len(data))
        return data

    def _write_tmp(self, data: bytes) -> str:
        os.makedirs(self._tmp, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    @staticmethod
    def _fsync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self.stats.count("put", bytes_out=len(data))
        try:
            tmp = self._write_tmp(data)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.rename(tmp, path)
            self._fsync_dir(os.path.dirname(path))
        except OSError as e:
            raise StoreUnavailable(f"cannot write {key!r} to {self.url}: {e.strerror}") from e

    def put_if_absent(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self.stats.count("put", bytes_out=len(data))
        try:
            tmp = self._write_tmp(data)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.link(tmp, path)  # atomic create-if-absent, the file complete before it has a name
            finally:
                os.unlink(tmp)
            self._fsync_dir(os.path.dirname(path))
        except FileExistsError:
            raise AlreadyExists(f"object {key!r} already exists in {self.url}") from None
        except OSError as e:
            raise StoreUnavailable(f"cannot write {key!r} to {self.url}: {e.strerror}") from e

    def exists(self, key: str) -> bool:
        path = self._path(key)
        self.stats.count("head")
        return os.path.exists(path)

    def list(self, prefix: str) -> Iterator[str]:
        return (key for key, _ in self._listing(prefix, sizes=False))

    def list_sizes(self, prefix: str) -> Iterator[tuple[str, int]]:
        return iter(self._listing(prefix, sizes=True))

    def _listing(self, prefix: str, *, sizes: bool) -> list[tuple[str, int]]:
        self.stats.count("list")
        base = os.path.join(self.root, prefix) if prefix else self.root
        keys: list[tuple[str, int]] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d != ".tmp"]
                rel = ""
            for n in filenames:
                size = 0
                if sizes:
                    try:
                        size = os.stat(os.path.join(dirpath, n)).st_size
                    except FileNotFoundError:
                        continue  # deleted meanwhile
                keys.append((f"{rel}/{n}" if rel else n, size))
        keys.sort()
        return keys

    def list_dirs(self, prefix: str) -> list[str]:
        self.stats.count("list")
        base = os.path.join(self.root, prefix) if prefix else self.root
        try:
            with os.scandir(base) as it:
                return sorted(e.name for e in it if e.is_dir() and e.name != ".tmp")
        except FileNotFoundError:
            return []

    def delete(self, key: str) -> None:
        path = self._path(key)
        self.stats.count("delete")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise StoreUnavailable(f"cannot delete {key!r} from {self.url}: {e.strerror}") from e
