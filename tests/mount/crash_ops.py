"""Random file operations through a read-write mount, for ``test_mount_crash.py``; also its child process.

The model is the write layer crash test's (``tests/layer/crash_model.py``,
loaded by path: it is not a package), with operations drawn for ordinary
syscalls instead of layer calls: writes of at most 64 KiB, split at the
first 4 KiB page boundary they cross, so that each ``pwrite(2)`` is one
WRITE request (without the writeback cache the kernel ends a request after
a partly written page that is not cached, so ``pwrite(fd, 50000 bytes, 100)``
is two requests, and a commit and a kill between them would leave half a
syscall: no prefix of the syscalls; a page-aligned write of up to 1 MiB is
one request, measured on 6.18), chmod of files and directories only (a
symlink has no mode of its own on Linux), handles held open by the child
(``open``/``close``, written and fsynced through ``hwrite``/``hfsync``, so
files are written while unlinked or renamed), ``fsync`` of a directory and
``syncfs``.

As a script (``python crash_ops.py MOUNTPOINT SEED``) it is the child: it walks
the mount into a model, prints ``R``, then draws and runs operations until it
dies, printing ``O <json>`` before each one and ``A <i>`` after an fsync of
operation *i* returned (``Y <i>`` after a syncfs), each with one unbuffered
write.  ``ENOTCONN`` (the daemon was killed) prints ``N <i>`` and exits 3;
``EIO`` prints ``E <i>`` and exits 4 (the test accepts it only from the kernel
at the kill, when the daemon's log says it answered no EIO); anything else
unexpected prints a traceback and exits 1.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import importlib.util
import json
import os
import random
import stat
import sys
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location(
    "wsfs_layer_crash_model", Path(__file__).parent.parent / "layer" / "crash_model.py")
assert _spec is not None and _spec.loader is not None
crash_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash_model)
payload = crash_model.payload

BLOCK = 64 * 1024
PAGE = 4096
SYNC_OPS = ("fsync", "hfsync", "dirsync")  # acknowledged with "A": fsync(2) of a file or a directory


def s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def e(p: str) -> bytes:
    return p.encode("utf-8", "surrogateescape")


class MountModel(crash_model.Model):  # type: ignore[misc, name-defined]
    """The layer test's model plus handles: ``handles`` holds the model inode of each open fd, oldest first."""

    def __init__(self, snapshot: dict[bytes, tuple[str, int, bytes | None]]) -> None:
        super().__init__(snapshot)
        self.handles: list[int] = []
        self.queued: list[dict[str, Any]] = []  # the rest of a write split at a page boundary: drawn next

    @classmethod
    def from_walk(cls, tree: dict[bytes, tuple[str, int, bytes | None, int]]) -> MountModel:
        """From :func:`walk`'s ``{path: (kind, perm, bytes or target, st_ino)}``, hard links as one inode."""
        model = cls({})
        by_ino: dict[int, int] = {}
        for path, (kind, perm, data, ino) in sorted(tree.items()):
            if ino not in by_ino:
                by_ino[ino] = model.next
                model.next += 1
                model.inodes[by_ino[ino]] = [kind, perm, bytearray(data or b"") if kind == "f" else data]
            model.entries[path] = by_ino[ino]
        return model

    def links(self) -> frozenset[frozenset[bytes]]:
        """The paths that are one inode, for every inode with more than one name."""
        groups: dict[int, set[bytes]] = {}
        for path, ino in self.entries.items():
            groups.setdefault(ino, set()).add(path)
        return frozenset(frozenset(g) for g in groups.values() if len(g) > 1)

    def state(self) -> tuple[Any, frozenset[frozenset[bytes]]]:
        return self.snapshot(), self.links()

    def apply(self, op: dict[str, Any], seed: int) -> None:
        kind = op["op"]
        if kind == "open":
            self.handles.append(self.entries[e(op["path"])])
        elif kind == "close":
            self.handles.pop(op["h"])
        elif kind == "hwrite":
            ino = self.handles[op["h"]]
            self._digests.pop(ino, None)
            d = self.inodes[ino][2]
            off, data = op["off"], payload(seed, op["i"], op["len"])
            if off > len(d):
                d.extend(bytes(off - len(d)))
            d[off:off + len(data)] = data
        elif kind in ("hfsync", "dirsync", "syncfs", "fsync"):
            pass
        else:
            super().apply(op, seed)

    # -- drawing operations ----------------------------------------------------------

    def _offset(self, rng: random.Random, size: int) -> int:
        if rng.random() < 0.3:  # just before a 64 KiB block boundary: the write covers two blocks
            return max(0, rng.randrange(1, size // BLOCK + 3) * BLOCK - rng.randrange(1, 3000))
        return rng.randrange(size + 5000)  # past the end too

    def draw(self, rng: random.Random, i: int) -> dict[str, Any]:
        if self.queued:
            return self.queued.pop()
        op = self._draw(rng, i)
        if op["op"] in ("write", "hwrite") and op["off"] % PAGE and op["off"] // PAGE != (op["off"] + op["len"] - 1) // PAGE:
            head = PAGE - op["off"] % PAGE
            self.queued.append({**op, "off": op["off"] + head, "len": op["len"] - head})
            op["len"] = head
        return op

    def _draw(self, rng: random.Random, i: int) -> dict[str, Any]:
        dirs = [b""] + [k for k in self.entries if self.kind(k) == "d"]
        files = [k for k in self.entries if self.kind(k) == "f"]
        others = [k for k in self.entries if self.kind(k) != "d"]

        def fresh(parent: bytes) -> bytes:
            while True:
                name = b"n%d" % rng.randrange(1000)
                path = parent + b"/" + name if parent else name
                if path not in self.entries:
                    return path

        def size(ino: int) -> int:
            return len(self.inodes[ino][2])

        lens = [1, 100, 4096, 50000, BLOCK]  # one WRITE request each (see the module docstring)
        roll = rng.random()
        if roll < 0.22 and files:
            p = rng.choice(files)
            return {"op": "write", "path": s(p), "off": self._offset(rng, size(self.entries[p])),
                    "len": rng.choice(lens), "i": i}
        if roll < 0.28 and self.handles:
            h = rng.randrange(len(self.handles))
            return {"op": "hwrite", "h": h, "off": self._offset(rng, size(self.handles[h])),
                    "len": rng.choice(lens), "i": i}
        if roll < 0.34 and files:
            return {"op": "truncate", "path": s(rng.choice(files)), "size": rng.randrange(200000)}
        if roll < 0.43:
            return {"op": "create", "path": s(fresh(rng.choice(dirs))), "perm": rng.choice([0o644, 0o600])}
        if roll < 0.48:
            return {"op": "mkdir", "path": s(fresh(rng.choice(dirs))), "perm": 0o755}
        if roll < 0.51:
            return {"op": "symlink", "path": s(fresh(rng.choice(dirs))), "target": f"t{rng.randrange(99)}"}
        if roll < 0.57 and others:
            return {"op": "unlink", "path": s(rng.choice(others))}
        if roll < 0.60:
            empty = [d for d in dirs[1:] if not any(k.startswith(d + b"/") for k in self.entries)]
            if empty:
                return {"op": "rmdir", "path": s(rng.choice(empty))}
        if roll < 0.70 and self.entries:
            src = rng.choice(list(self.entries))
            targets = [d for d in dirs if d != src and not d.startswith(src + b"/")]
            dst = fresh(rng.choice(targets))
            r = rng.random()
            if self.kind(src) != "d" and others and r < 0.3:
                dst = rng.choice(others)  # over an existing file, symlink or another name of itself
                if dst == src:
                    dst = fresh(b"")
            elif self.kind(src) == "d" and r < 0.3:  # over an empty directory that is not inside src
                empty = [d for d in dirs[1:] if d != src and not d.startswith(src + b"/")
                         and not any(k.startswith(d + b"/") for k in self.entries)]
                if empty:
                    dst = rng.choice(empty)
            return {"op": "rename", "path": s(src), "dst": s(dst)}
        if roll < 0.75 and files:
            return {"op": "link", "path": s(rng.choice(files)), "dst": s(fresh(rng.choice(dirs)))}
        if roll < 0.80:
            chmodable = [k for k in self.entries if self.kind(k) != "l"]
            if chmodable:
                return {"op": "chmod", "path": s(rng.choice(chmodable)), "perm": rng.choice([0o600, 0o755, 0o640])}
        if roll < 0.83 and files:
            return {"op": "open", "path": s(rng.choice(files))}
        if roll < 0.86 and self.handles:
            return {"op": "close", "h": rng.randrange(len(self.handles))}
        if roll < 0.875 and files:
            return {"op": "fsync", "path": s(rng.choice(files))}
        if roll < 0.89 and self.handles:
            return {"op": "hfsync", "h": rng.randrange(len(self.handles))}
        if roll < 0.90:
            return {"op": "dirsync", "path": s(rng.choice(dirs))}
        if roll < 0.91:
            return {"op": "syncfs"}
        return self._draw(rng, i)


# -- the tree as a mount shows it ----------------------------------------------------


def walk(root: str | bytes) -> tuple[dict[bytes, tuple[str, int, bytes | None, int]], list[str]]:
    """``{path: (kind, perm, bytes or target, st_ino)}`` of everything below *root*, and what looked wrong
    on the way (a kind the model has no name for, an ``st_nlink`` that is not the number of names)."""
    r = os.fsencode(root)
    out: dict[bytes, tuple[str, int, bytes | None, int]] = {}
    nlinks: dict[int, int] = {}
    problems: list[str] = []

    def rec(rel: bytes) -> None:
        for name in sorted(os.listdir(r + b"/" + rel if rel else r)):
            path = rel + b"/" + name if rel else name
            full = r + b"/" + path
            st = os.lstat(full)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                out[path] = ("d", perm, None, st.st_ino)
                rec(path)
            elif stat.S_ISLNK(st.st_mode):
                out[path] = ("l", perm, os.readlink(full), st.st_ino)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    data = f.read()
                if len(data) != st.st_size:
                    problems.append(f"{s(path)}: st_size {st.st_size}, {len(data)} bytes read")
                out[path] = ("f", perm, data, st.st_ino)
                nlinks[st.st_ino] = st.st_nlink
            else:
                problems.append(f"{s(path)}: unexpected mode {st.st_mode:o}")

    rec(b"")
    names: dict[int, int] = {}
    for _, _, _, ino in out.values():
        names[ino] = names.get(ino, 0) + 1
    problems += [f"inode {ino}: st_nlink {n}, {names[ino]} names" for ino, n in nlinks.items() if n != names[ino]]
    return out, problems


def digest_tree(tree: dict[bytes, tuple[str, int, bytes | None, int]]) -> dict[bytes, tuple[str, int, str]]:
    """For messages: ``{path: (kind, perm, sha1 or target)}``."""
    return {p: (k, m, hashlib.sha1(d or b"").hexdigest()[:12] if k == "f" else repr(d)) for p, (k, m, d, _) in
            tree.items()}


# -- the child -------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def run(root: bytes, op: dict[str, Any], seed: int, fds: list[int]) -> None:
    """Run *op* with ordinary syscalls on the mount at *root*; *fds*: the open handles, as the model's."""
    kind = op["op"]
    p = root + b"/" + e(op["path"]) if "path" in op and op["path"] else root
    if kind == "create":
        os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, op["perm"]))
    elif kind == "mkdir":
        os.mkdir(p, op["perm"])
    elif kind == "symlink":
        os.symlink(op["target"], p)
    elif kind == "write":
        fd = os.open(p, os.O_WRONLY)
        try:
            _pwrite(fd, payload(seed, op["i"], op["len"]), op["off"])
        finally:
            os.close(fd)
    elif kind == "hwrite":
        _pwrite(fds[op["h"]], payload(seed, op["i"], op["len"]), op["off"])
    elif kind == "truncate":
        os.truncate(p, op["size"])
    elif kind == "chmod":
        os.chmod(p, op["perm"])
    elif kind == "unlink":
        os.unlink(p)
    elif kind == "rmdir":
        os.rmdir(p)
    elif kind == "rename":
        os.rename(p, root + b"/" + e(op["dst"]))
    elif kind == "link":
        os.link(p, root + b"/" + e(op["dst"]))
    elif kind == "open":
        fds.append(os.open(p, os.O_RDWR))
    elif kind == "close":
        os.close(fds.pop(op["h"]))
    elif kind == "fsync":
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    elif kind == "hfsync":
        os.fsync(fds[op["h"]])
    elif kind == "dirsync":
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # FSYNCDIR
        finally:
            os.close(fd)
    elif kind == "syncfs":
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(fd) != 0:
                n = ctypes.get_errno()
                raise OSError(n, os.strerror(n))
        finally:
            os.close(fd)
    else:
        raise AssertionError(f"unknown operation {op}")


def _pwrite(fd: int, data: bytes, off: int) -> None:
    n = os.pwrite(fd, data, off)
    assert n == len(data), f"short write: {n} of {len(data)}"


def main() -> None:
    root, seed = os.fsencode(sys.argv[1]), int(sys.argv[2])
    os.umask(0)
    tree, problems = walk(root)
    assert not problems, problems
    model = MountModel.from_walk(tree)
    rng = random.Random(seed)
    fds: list[int] = []
    os.write(1, b"R\n")
    i = 0
    while True:
        op = model.draw(rng, i)
        op["i"] = i
        os.write(1, b"O " + json.dumps(op).encode() + b"\n")
        try:
            run(root, op, seed, fds)
        except OSError as err:
            if err.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                os.write(1, b"N %d\n" % i)
                sys.exit(3)
            if err.errno == errno.EIO:
                os.write(1, b"E %d\n" % i)
                sys.exit(4)
            raise
        model.apply(op, seed)
        if op["op"] in SYNC_OPS:
            os.write(1, b"A %d\n" % i)
        elif op["op"] == "syncfs":
            os.write(1, b"Y %d\n" % i)
        i += 1


if __name__ == "__main__":
    main()
