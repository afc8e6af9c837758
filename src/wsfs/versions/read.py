"""Reading files of a version as verified bytes (``wsfs cat``, checkout)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from wsfs.errors import IntegrityError
from wsfs.format.blobs import content_id, hexid
from wsfs.format.manifest import Chunk, Inode, Manifest
from wsfs.repository import Repository


class SmallFiles:
    """The content of small files: inline (format 1) or slices of packs (format 2), verified.

    Packs are fetched whole, on a pool, with the next few (in key order, the
    order a walk of the tree mostly reads them in) fetched ahead; the last
    *keep* stay in memory.  Every file is checked against its own content id.
    """

    def __init__(self, repo: Repository, m: Manifest, *, keep: int = 16, ahead: int = 8, workers: int = 8) -> None:
        self.repo = repo
        self.m = m
        self.keep = keep
        self.ahead = ahead
        self._pool: ThreadPoolExecutor | None = None
        self.workers = workers
        self._packs: collections.OrderedDict[int, Future[bytes | memoryview]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def data(self, node: Inode) -> bytes:
        if not node.packed:
            return self.m.inline_data(node)
        assert node.pack is not None
        chunk, off = self.m.pack_ref(node)
        assert chunk.cid is not None
        fut = self._get(node.pack, chunk)
        for row in range(node.pack + 1, node.pack + 1 + self.ahead):
            if row not in self._packs:
                ref = self.m.pack_row(row)
                if ref is None:
                    break
                self._get(row, ref)
        pack = fut.result()
        out = bytes(pack[off : off + node.size])
        if len(out) != node.size or content_id(out) != node.content:
            raise IntegrityError(f"a file in pack {hexid(chunk.cid)} does not match its content id")
        return out

    def _get(self, row: int, pack: Chunk) -> Future[bytes | memoryview]:
        fut = self._packs.get(row)
        if fut is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="wsfs-packs")
            assert pack.cid is not None
            fut = self._packs[row] = self._pool.submit(self.repo.get_blob, pack.cid, pack.length, "pack",
                                                       place=pack.place)
            while len(self._packs) > self.keep + self.ahead:
                self._packs.popitem(last=False)[1].cancel()
        else:
            self._packs.move_to_end(row)
        return fut

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def iter_content(repo: Repository, m: Manifest, node: Inode, *, workers: int = 4) -> Iterator[bytes]:
    """The content of regular file *node*, in order; chunks fetched ahead on a small pool."""
    if node.inline or node.packed:
        small = SmallFiles(repo, m, ahead=0, workers=1)
        try:
            yield small.data(node)
        finally:
            small.close()
        return
    chunks = m.chunks(node.ino)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsfs-read") as pool:
        ahead: collections.deque[tuple[int, Future[bytes] | None]] = collections.deque()
        it = iter(chunks)

        def fill() -> None:
            while len(ahead) < 2 * workers:
                c = next(it, None)
                if c is None:
                    return
                ahead.append((c.length, None if c.cid is None else pool.submit(repo.get_blob, c.cid, c.length)))

        try:
            fill()
            while ahead:
                length, fut = ahead.popleft()
                data = bytes(length) if fut is None else fut.result()
                if len(data) != length:
                    raise IntegrityError(f"a chunk of inode {node.ino} has the wrong length")
                yield data
                fill()
        finally:
            for _, fut in ahead:
                if fut is not None:
                    fut.cancel()
