"""Child of the re-base kill test: open a layer over version 1 (its memo says 2 was published) and re-base it
onto version 2.

argv: repo, cache, workspace, state folder.  Prints ``R`` when the re-base starts and ``D`` when it is done
(one unbuffered write each).
"""

import os
import sys

from wsfs.cache import BlobCache
from wsfs.layer import BaseId, WriteLayer
from wsfs.repository import Repository
from wsfs.store import open_store
from wsfs.versions.read import RangeReader


def main() -> None:
    repo_url, cache, ws, state = sys.argv[1:5]
    repo = Repository.open(open_store(repo_url), cache)
    old, new = repo.record(ws, 1), repo.record(ws, 2)
    m1, m2 = repo.open_manifest(old), repo.open_manifest(new)
    reader = RangeReader(repo, m1.path, BlobCache(repo, cache))
    layer = WriteLayer(state, m1, BaseId(ws, 1, old.manifest), reader.read)
    os.write(1, b"R\n")
    layer.rebase(m2, BaseId(ws, 2, new.manifest))
    os.write(1, b"D\n")
    layer.close()


if __name__ == "__main__":
    main()
