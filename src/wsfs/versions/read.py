"""Reading files of a version as verified bytes (``wsfs cat``, checkout)."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from wsfs.errors import IntegrityError, WsfsError
from wsfs.format.blobs import content_id, hexid
from wsfs.format.manifest import Chunk, Inode, Manifest
from wsfs.repository import Repository, joins_run


class SmallFiles:
    """The content of small files: inline (format 1) or slices of packs (format 2), verified.

    Packs are fetched on a pool, with the next few (in key order, the order a
    walk of the tree mostly reads them in) fetched ahead; neighbours in one
    segment come with one ranged GET (``Repository.get_pack_run``).  The last
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

    def data(self, node: Inode) -> bytes:
        if not node.packed:
            return self.m.inline_data(node)
        assert node.pack is not None
        chunk, off = self.m.pack_ref(node)
        fut = self._packs.get(node.pack)
        if fut is None:
            self._fetch_from(node.pack, chunk)
            fut = self._packs[node.pack]
        else:
            self._packs.move_to_end(node.pack)
        # Less than half the read-ahead window on its way: fetch the next window (long runs, few GETs).
        row = node.pack + 1
        while row in self._packs and row <= node.pack + self.ahead:
            row += 1
        if self.ahead and row <= node.pack + self.ahead // 2 + 1:
            nxt = self.m.pack_row(row)
            if nxt is not None:
                self._fetch_from(row, nxt)
        pack = fut.result()
        out = bytes(pack[off : off + node.size])
        if len(out) != node.size or content_id(out) != node.content:
            raise IntegrityError(f"a file in pack {hexid(chunk.cid)} does not match its content id")
        return out

    def _fetch_from(self, row: int, first: Chunk) -> None:
        """Start fetching pack *row* and up to ``ahead`` following ones, as runs of neighbours (one GET each)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="wsfs-packs")
        run: list[tuple[int, Chunk]] = []
        r, pack = row, first
        while True:
            if run and not joins_run(run[0][1].place, run[-1][1].place, pack.place):
                self._submit(run)
                run = []
            run.append((r, pack))
            r += 1
            if r > row + self.ahead or r in self._packs:
                break
            nxt = self.m.pack_row(r)
            if nxt is None:
                break
            pack = nxt
        self._submit(run)
        while len(self._packs) > self.keep + self.ahead:
            self._packs.popitem(last=False)[1].cancel()

    def _submit(self, run: list[tuple[int, Chunk]]) -> None:
        futures: list[Future[bytes | memoryview]] = []
        for r, _ in run:
            fut: Future[bytes | memoryview] = Future()
            fut.set_running_or_notify_cancel()
            self._packs[r] = fut
            futures.append(fut)
        assert self._pool is not None
        self._pool.submit(self._fetch_run, [p for _, p in run], futures)

    def _fetch_run(self, packs: list[Chunk], futures: list[Future[bytes | memoryview]]) -> None:
        try:
            if len(packs) == 1:
                p = packs[0]
                assert p.cid is not None
                results: list[bytes | memoryview | WsfsError] = [
                    self.repo.get_blob(p.cid, p.length, "pack", place=p.place)
                ]
            else:
                results = self.repo.get_pack_run([(p.cid, p.length, p.place) for p in packs])  # type: ignore[misc]
        except BaseException as e:  # noqa: BLE001 - each waiting reader gets the error
            for fut in futures:
                fut.set_exception(e)
            return
        for fut, res in zip(futures, results, strict=True):
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)

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


class BaseReader:
    """A write layer's ``read_base`` backed by the repository, for use with no daemon (``wsfs commit``
    of an unmounted layer, ``wsfs status``): verified bytes of a range of a file of version *m*.

    Thread-safe (a commit reads through it from its own thread); chunks are
    fetched whole and the last few kept, since a layer asks block by block.
    """

    def __init__(self, repo: Repository, m: Manifest, keep: int = 4) -> None:
        import threading

        self.repo, self.m, self.keep = repo, m, keep
        self._small = SmallFiles(repo, m, ahead=0, workers=1)
        self._lock = threading.Lock()
        self._chunks: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()

    def _chunk(self, c: Chunk) -> bytes:
        if c.cid is None:
            return bytes(c.length)
        with self._lock:
            hit = self._chunks.get(c.cid)
            if hit is not None:
                self._chunks.move_to_end(c.cid)
                return hit
        data = bytes(self.repo.get_blob(c.cid, c.length))
        with self._lock:
            self._chunks[c.cid] = data
            while len(self._chunks) > self.keep:
                self._chunks.popitem(last=False)
        return data

    def __call__(self, node: Inode, off: int, length: int) -> bytes:
        end = min(off + length, node.size)
        if off >= end:
            return b""
        if node.inline or node.packed:
            with self._lock:
                return self._small.data(node)[off:end]
        cs = self.m.chunk_size
        chunks = {c.idx: c for c in self.m.chunks(node.ino)}
        out = bytearray()
        pos = off
        while pos < end:
            c = chunks[pos // cs]
            inner = pos - c.idx * cs
            piece = self._chunk(c)[inner:inner + end - pos]
            if not piece:
                raise IntegrityError(f"a chunk of inode {node.ino} is shorter than its file")
            out += piece
            pos += len(piece)
        return bytes(out)

    def close(self) -> None:
        self._small.close()
