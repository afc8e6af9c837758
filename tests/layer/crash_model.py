"""A model of a file tree for the write layer's crash test, and the random operations run on both.

The child process (``crash_child.py``) draws operations from the model, prints
each one and then runs it on a :class:`~wsfs.layer.WriteLayer`; the test replays
the printed operations on its own model, so it knows the tree after every
prefix of them.  Each operation is one layer call, so a batch commit can only
fall between two of them.
"""

from __future__ import annotations

import hashlib
import random
import stat
from typing import Any

Snapshot = dict[bytes, tuple[str, int, bytes]]


def payload(seed: int, i: int, n: int) -> bytes:
    """The bytes written by operation *i* of run *seed* (both sides compute them)."""
    return random.Random(seed * 1_000_003 + i).randbytes(n)


class Model:
    def __init__(self, snapshot: dict[bytes, tuple[str, int, bytes | None]]) -> None:
        """From a tree of ``{path: (kind, perm, bytes or target)}`` with no hard links."""
        self.entries: dict[bytes, int] = {}
        self.inodes: dict[int, list[Any]] = {}
        for n, (path, (kind, perm, data)) in enumerate(sorted(snapshot.items()), 1):
            self.entries[path] = n
            self.inodes[n] = [kind, perm, bytearray(data) if kind == "f" else data]
        self.next = len(self.inodes) + 1
        self.open_count = 0  # handles the child holds (open/release: no change to the tree)
        self._digests: dict[int, bytes] = {}  # inode -> SHA-1 of its bytes, dropped when they change

    @classmethod
    def from_layer(cls, layer: Any) -> Model:
        """The tree a layer shows, hard links as one inode (what a later run starts from)."""
        model = cls({})
        by_ino: dict[int, int] = {}

        def walk(ino: int, prefix: bytes) -> None:
            for _, name, a in layer.readdir(ino):
                path = prefix + b"/" + name if prefix else name
                if a.ino not in by_ino:
                    by_ino[a.ino] = model.next
                    model.next += 1
                    if stat.S_ISDIR(a.mode):
                        entry = ["d", stat.S_IMODE(a.mode), None]
                    elif stat.S_ISLNK(a.mode):
                        entry = ["l", stat.S_IMODE(a.mode), layer.readlink(a.ino)]
                    else:
                        entry = ["f", stat.S_IMODE(a.mode), bytearray(layer.read(a.ino, 0, a.size))]
                    model.inodes[by_ino[a.ino]] = entry
                model.entries[path] = by_ino[a.ino]
                if stat.S_ISDIR(a.mode):
                    walk(a.ino, path)

        walk(1, b"")
        return model

    def kind(self, path: bytes) -> str:
        return self.inodes[self.entries[path]][0]

    def snapshot(self) -> Snapshot:
        out: Snapshot = {}
        for path, ino in self.entries.items():
            kind, perm, data = self.inodes[ino]
            if kind == "f":
                digest = self._digests.get(ino)
                if digest is None:
                    digest = self._digests[ino] = hashlib.sha1(data).digest()
                out[path] = (kind, perm, digest)
            else:
                out[path] = (kind, perm, data or b"")
        return out

    def _new(self, path: bytes, kind: str, perm: int, data: Any) -> None:
        self.entries[path] = self.next
        self.inodes[self.next] = [kind, perm, data]
        self.next += 1

    def apply(self, op: dict[str, Any], seed: int) -> None:
        kind, p = op["op"], op.get("path", "").encode("utf-8", "surrogateescape")
        if kind == "create":
            self._new(p, "f", op["perm"], bytearray())
        elif kind == "mkdir":
            self._new(p, "d", op["perm"], None)
        elif kind == "symlink":
            self._new(p, "l", 0o777, op["target"].encode())
        elif kind == "write":
            self._digests.pop(self.entries[p], None)
            d = self.inodes[self.entries[p]][2]
            off, data = op["off"], payload(seed, op["i"], op["len"])
            if off > len(d):
                d.extend(bytes(off - len(d)))
            d[off:off + len(data)] = data
        elif kind == "truncate":
            self._digests.pop(self.entries[p], None)
            d = self.inodes[self.entries[p]][2]
            del d[op["size"]:]
            d.extend(bytes(op["size"] - len(d)))
        elif kind == "chmod":
            self.inodes[self.entries[p]][1] = op["perm"]
        elif kind in ("unlink", "rmdir"):
            del self.entries[p]
        elif kind == "open":
            self.open_count += 1
        elif kind == "release":
            self.open_count -= 1
        elif kind == "link":
            self.entries[op["dst"].encode("utf-8", "surrogateescape")] = self.entries[p]
        elif kind == "rename":
            dst = op["dst"].encode("utf-8", "surrogateescape")
            if self.entries.get(dst) == self.entries[p]:
                return  # two names of one file: rename(2) does nothing
            self.entries.pop(dst, None)
            moved = {k: v for k, v in self.entries.items() if k == p or k.startswith(p + b"/")}
            for k in moved:
                del self.entries[k]
            for k, v in moved.items():
                self.entries[dst + k[len(p):]] = v

    # -- drawing operations ----------------------------------------------------

    def draw(self, rng: random.Random, i: int) -> dict[str, Any]:
        dirs = [b""] + [k for k in self.entries if self.kind(k) == "d"]
        files = [k for k in self.entries if self.kind(k) == "f"]
        others = [k for k in self.entries if self.kind(k) != "d"]

        def fresh(parent: bytes) -> bytes:
            while True:
                name = b"n%d" % rng.randrange(1000)
                path = parent + b"/" + name if parent else name
                if path not in self.entries:
                    return path

        def s(b: bytes) -> str:
            return b.decode("utf-8", "surrogateescape")

        roll = rng.random()
        if roll < 0.30 and files:
            p = rng.choice(files)
            size = len(self.inodes[self.entries[p]][2])
            n = rng.choice([1, 100, 4096, 70000, 200000])
            return {"op": "write", "path": s(p), "off": rng.randrange(size + 5000), "len": n, "i": i}
        if roll < 0.38 and files:
            p = rng.choice(files)
            return {"op": "truncate", "path": s(p), "size": rng.randrange(300000)}
        if roll < 0.48:
            return {"op": "create", "path": s(fresh(rng.choice(dirs))), "perm": 0o644}
        if roll < 0.53:
            return {"op": "mkdir", "path": s(fresh(rng.choice(dirs))), "perm": 0o755}
        if roll < 0.56:
            return {"op": "symlink", "path": s(fresh(rng.choice(dirs))), "target": f"t{rng.randrange(99)}"}
        if roll < 0.62 and others:
            return {"op": "unlink", "path": s(rng.choice(others))}
        if roll < 0.65:
            empty = [d for d in dirs[1:] if not any(k.startswith(d + b"/") for k in self.entries)]
            if empty:
                return {"op": "rmdir", "path": s(rng.choice(empty))}
        if roll < 0.75 and len(dirs) > 1:
            src = rng.choice(list(self.entries))
            targets = [d for d in dirs if d != src and not d.startswith(src + b"/")]
            dst = fresh(rng.choice(targets))
            if self.kind(src) != "d" and others and rng.random() < 0.3:
                dst = rng.choice(others)  # over an existing file
                if dst == src:
                    dst = fresh(b"")
            return {"op": "rename", "path": s(src), "dst": s(dst)}
        if roll < 0.80 and files:
            return {"op": "link", "path": s(rng.choice(files)), "dst": s(fresh(rng.choice(dirs)))}
        if roll < 0.85 and self.entries:
            return {"op": "chmod", "path": s(rng.choice(list(self.entries))), "perm": rng.choice([0o600, 0o755, 0o4711])}
        if roll < 0.86 and files:
            return {"op": "fsync", "path": s(rng.choice(files))}
        if roll < 0.875 and files:  # a handle kept while the file may be unlinked, written, renamed
            return {"op": "open", "path": s(rng.choice(files))}
        if roll < 0.89 and self.open_count:
            return {"op": "release"}
        if roll < 0.89:
            return {"op": "sync"}
        return {"op": "flush", "path": s(rng.choice(files))} if files else {"op": "sync"}


def run_on_layer(layer: Any, op: dict[str, Any], seed: int, resolve: Any, handles: list[int]) -> None:
    """Run *op* as one call of *layer*; *handles*: the inodes opened and not yet released, oldest first."""
    kind = op["op"]
    if kind == "sync":
        layer.sync_all()
        return
    if kind == "release":
        layer.release(handles.pop(0))
        return
    p = op["path"].encode("utf-8", "surrogateescape")
    head, _, name = p.rpartition(b"/")
    parent = resolve(layer, head).ino if head else 1
    if kind == "create":
        layer.create(parent, name, stat.S_IFREG | op["perm"], 0, 0)
    elif kind == "mkdir":
        layer.mkdir(parent, name, op["perm"], 0, 0)
    elif kind == "symlink":
        layer.symlink(parent, name, op["target"].encode(), 0, 0)
    elif kind == "write":
        layer.write(layer.lookup(parent, name).ino, op["off"], payload(seed, op["i"], op["len"]))
    elif kind == "truncate":
        layer.setattr(layer.lookup(parent, name).ino, size=op["size"])
    elif kind == "chmod":
        layer.setattr(layer.lookup(parent, name).ino, mode=op["perm"])
    elif kind == "unlink":
        layer.unlink(parent, name)
    elif kind == "rmdir":
        layer.rmdir(parent, name)
    elif kind in ("rename", "link"):
        dst = op["dst"].encode("utf-8", "surrogateescape")
        dhead, _, dname = dst.rpartition(b"/")
        dparent = resolve(layer, dhead).ino if dhead else 1
        if kind == "rename":
            layer.rename(parent, name, dparent, dname)
        else:
            layer.link(layer.lookup(parent, name).ino, dparent, dname)
    elif kind == "fsync":
        layer.fsync(layer.lookup(parent, name).ino)
    elif kind == "open":
        ino = layer.lookup(parent, name).ino
        layer.open(ino)
        handles.append(ino)
    elif kind == "flush":
        layer.flush(layer.lookup(parent, name).ino)
