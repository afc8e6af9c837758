"""Child of the commit kill test: open a layer over version 1 and commit it.

argv: repo, cache, workspace, state folder.  Prints ``S`` when it starts
committing and ``D <version>`` when done (one unbuffered write each).
"""

import os
import sys

from conftest import Base
from wsfs.layer import WriteLayer
from wsfs.repository import Repository
from wsfs.store import open_store
from wsfs.versions.commit import commit_layer


def main() -> None:
    repo_url, cache, ws, state = sys.argv[1:5]
    repo = Repository.open(open_store(repo_url), cache)
    base = Base(repo, ws, 1, repo_url, cache)
    layer = WriteLayer(state, base.m, base.id, base.read_base)
    os.write(1, b"S\n")
    record, _ = commit_layer(repo, layer, workers=2)
    layer.close()
    os.write(1, b"D %d\n" % (record.version if record else 0))


if __name__ == "__main__":
    main()
