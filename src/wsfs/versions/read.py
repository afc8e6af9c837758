"""Reading one file of a version as a stream of verified bytes (``wsfs cat``)."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from wsfs.errors import IntegrityError
from wsfs.format.manifest import Inode, Manifest
from wsfs.repository import Repository


def iter_content(repo: Repository, m: Manifest, node: Inode, *, workers: int = 4) -> Iterator[bytes]:
    """The content of regular file *node*, in order; chunks fetched ahead on a small pool."""
    if node.inline:
        yield m.inline_data(node)
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
