"""Child of the crash test: random operations on a write layer until SIGKILL.

argv: repo, cache, workspace, state folder, seed, commit interval.  Prints
``R`` when ready, ``O <json>`` before each operation and ``S <i>`` after an
fsync or sync of operation *i* returned, each with one unbuffered write.
"""

import json
import os
import random
import sys

from crash_model import Model, run_on_layer
from layer_support import resolve

from wsfs.layer import BaseId, WriteLayer
from wsfs.repository import Repository
from wsfs.store import open_store


def main() -> None:
    repo_url, cache, ws, state, seed, interval = sys.argv[1:7]
    repo = Repository.open(open_store(repo_url), cache)
    record = repo.record(ws, 1)
    m = repo.open_manifest(record)
    seed_n = int(seed)

    def read_base(node, off, n):  # the crash base holds small packed files only
        pack, at = m.pack_ref(node)
        return bytes(repo.get_blob(pack.cid, pack.length, place=pack.place)[at + off:at + off + n])

    layer = WriteLayer(state, m, BaseId(ws, 1, record.manifest), read_base, commit_interval=float(interval))
    model = Model.from_layer(layer)
    rng = random.Random(seed_n)
    os.write(1, b"R\n")
    i = 0
    handles: list[int] = []
    while True:
        op = model.draw(rng, i)
        op["i"] = i
        os.write(1, b"O " + json.dumps(op).encode() + b"\n")
        run_on_layer(layer, op, seed_n, resolve, handles)
        model.apply(op, seed_n)
        if op["op"] in ("fsync", "sync"):
            os.write(1, b"S %d\n" % i)
        i += 1


if __name__ == "__main__":
    main()
