"""kill -9 of a process using a write layer, at random moments: the reopened layer is a prefix, never less than the last fsync.

Each iteration starts ``crash_child.py`` on the state folder the previous one
left (recovered, checked, and given one more write by this process; a fresh
one every ``CHAIN`` iterations), lets it run
random operations (writes across blocks, truncations, renames of files and
directories, hard links, unlinks, chmods, fsyncs, syncs; batches committed
every few milliseconds as well) for a random time, kills it with SIGKILL,
reopens the state folder in this process and compares the whole tree
(names, kinds, modes, content hashes, link targets) with the model after
each prefix of the printed operations: it must equal one of them, and the
prefix must include every operation an fsync or sync acknowledged.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crash_model import Model
from layer_support import Base, push_tree

from wsfs.layer import WriteLayer

HERE = Path(__file__).parent
ITERATIONS = 24
CHAIN = 6  # iterations on one state folder, each child starting from what the previous kill left


def small_tree(src: Path) -> None:
    (src / "a").write_bytes(b"a" * 1000)
    (src / "b").write_bytes(os.urandom(100_000))
    (src / "d").mkdir()
    (src / "d" / "c").write_bytes(b"cc")
    (src / "d" / "e").mkdir()
    (src / "l").symlink_to("a")


@pytest.fixture(scope="module")
def crash_base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    return push_tree(tmp_path_factory.mktemp("crashbase"), small_tree)


def test_kill_9_leaves_a_prefix_no_shorter_than_the_last_fsync(crash_base: Base, tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *sys.path])
    rng = random.Random(int(os.environ.get("WSFS_CRASH_SEED", time.time_ns())))
    stats = {"ops": 0, "synced": 0, "beyond_sync": 0}
    for it in range(ITERATIONS):
        seed = rng.randrange(1 << 30)
        if it % CHAIN == 0:  # a fresh state folder now and then: the tree (and the checks) stay small
            state = tmp_path / f"state{it}"
            with WriteLayer(str(state), crash_base.m, crash_base.id, crash_base.read_base) as first:
                start = Model.from_layer(first)
        interval = rng.choice(["0.005", "0.05", "10"])
        child = _spawn(crash_base, state, seed, interval, env)
        try:
            assert child.stdout is not None
            first = child.stdout.readline()
            assert first == b"R\n", (state.parent / "child.err").read_text()
            time.sleep(rng.uniform(0.02, 0.4))
            child.send_signal(signal.SIGKILL)
            # read() of the same buffered reader: readline() may hold the first operations
            out = first + child.stdout.read()
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
        assert child.returncode == -signal.SIGKILL, (state.parent / "child.err").read_text()
        ops, synced = [], -1
        for line in out.splitlines():
            if line.startswith(b"O "):
                ops.append(json.loads(line[2:]))
            elif line.startswith(b"S "):
                synced = int(line[2:])
        layer = WriteLayer(str(state), crash_base.m, crash_base.id, crash_base.read_base)
        try:
            got = Model.from_layer(layer).snapshot()
            # The tree after the first j operations, for every j that keeps all
            # fsync'ed ones (j > synced): the reopened tree must be one of them.
            model = start
            matches = []
            for j in range(len(ops) + 1):
                if j > synced and model.snapshot() == got:
                    matches.append(j)
                if j < len(ops):
                    try:
                        model.apply(ops[j], seed)
                    except KeyError:
                        raise AssertionError(f"iteration {it} (seed {seed}): cannot replay {ops[j]}") from None
            assert matches, (f"iteration {it} (seed {seed}): the reopened tree is no prefix of the {len(ops)} "
                             f"operations that keeps the fsync of operation {synced}")
            stats["ops"] += len(ops)
            stats["synced"] += synced + 1
            stats["beyond_sync"] += max(matches) - (synced + 1)
            # and the layer goes on working; the next child starts from here
            name = b"after-crash-%d" % it
            f = layer.create(1, name, 0o100644, 0, 0)
            layer.write(f.ino, 0, b"ok")
            layer.sync_all()
            start = Model.from_layer(layer)
        finally:
            layer.close()
    print(f"crash test: {ITERATIONS} kills, {stats}")
    assert stats["ops"] > 200  # the children did real work


def _spawn(base: Base, state: Path, seed: int, interval: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(state.parent / "child.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, str(HERE / "crash_child.py"), base.repo_url, base.cache_dir, base.id.workspace,
             str(state), str(seed), interval],
            stdout=subprocess.PIPE, stderr=err, env=env,
        )
