"""Child of the commit kill test: open a layer over version 1 and commit it.

argv: repo, cache, workspace, state folder.  Prints ``S`` when it starts
committing and ``D <version>`` when done (one unbuffered write each).
"""

import os
import sys

from wsfs.cache import BlobCache
from wsfs.layer import BaseId, WriteLayer
from wsfs.repository import Repository
from wsfs.store import open_store
from wsfs.versions.commit import commit_layer
from wsfs.versions.read import RangeReader


def main() -> None:
    repo_url, cache, ws, state = sys.argv[1:5]
    repo = Repository.open(open_store(repo_url), cache)
    record = repo.record(ws, 1)
    m = repo.open_manifest(record)
    reader = RangeReader(repo, m.path, BlobCache(repo, cache))  # as a daemonless wsfs commit
    layer = WriteLayer(state, m, BaseId(ws, 1, record.manifest), reader.read)
    os.write(1, b"S\n")
    record, _ = commit_layer(repo, layer, workers=2)
    layer.close()
    os.write(1, b"D %d\n" % (record.version if record else 0))


if __name__ == "__main__":
    main()
