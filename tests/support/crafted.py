"""Crafted repository objects: what someone who can write to the bucket could put there.

Each helper builds one kind of hostile input with the real format code where
it can (so the rest of the object is well formed and only the attack
differs), and publishes it the way a writer with bucket access would: by
putting objects in the store directly, never through the local caches, so
that readers fetch, verify and validate them as they would in production.
"""

from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace

import apsw
import blake3

from wsfs.format.blobs import encode_blob
from wsfs.format.manifest import ManifestBuilder
from wsfs.repository import manifest_key, version_key
from wsfs.store import open_store


def st(mode: int, size: int = 0, uid: int = 0, gid: int = 0) -> SimpleNamespace:
    return SimpleNamespace(st_mode=mode, st_uid=uid, st_gid=gid, st_size=size, st_blocks=0, st_rdev=0,
                           st_atime_ns=1, st_mtime_ns=2_000_000_000, st_ctime_ns=3)


def small_manifest(path: str, *, first_name: bytes = b"a", chunk_size: int = 4 * 1024 * 1024) -> str:
    """root/{<first_name> (inline "hello"), d/ {b (inline "bee")}}: a well-formed manifest to damage."""
    if os.path.exists(path):
        os.unlink(path)
    b = ManifestBuilder(path, chunk_size=chunk_size)
    root = b.add_inode(st(stat.S_IFDIR | 0o755))
    a = b.add_inode(st(stat.S_IFREG | 0o644, 5))
    b.set_inline(a, b"hello")
    d = b.add_inode(st(stat.S_IFDIR | 0o755))
    f = b.add_inode(st(stat.S_IFREG | 0o644, 3))
    b.set_inline(f, b"bee")
    b.add_dentries(root, sorted([(first_name, a), (b"d", d)]))
    b.add_dentries(d, [(b"b", f)])
    b.finish({"workspace": "x"})
    return path


def execute(path: str, sql: str, *args: object) -> None:
    """Change a manifest file with plain SQL (indexes stay consistent)."""
    db = apsw.Connection(path)
    db.execute(sql, args)
    db.close()


def index_says_table_says(path: str, index_name: bytes, table_name: bytes) -> str:
    """A manifest whose ``dentries`` table names an entry *table_name* while its name index says *index_name*.

    Built as two manifests that differ only in that name (same length, so
    the same page layout), then the index's page is copied from the first
    into the second: SQLite itself never writes such a file, an attacker can.
    """
    assert len(index_name) == len(table_name)
    shown = small_manifest(path + ".index", first_name=index_name)
    small_manifest(path, first_name=table_name)
    db = apsw.Connection(path)
    (root,) = next(db.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'dentries_name'"))
    (page_size,) = next(db.execute("PRAGMA page_size"))
    db.close()
    with open(shown, "rb") as f:
        f.seek((root - 1) * page_size)
        page = f.read(page_size)
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(page)
    os.unlink(shown)
    return path


def zstd_bomb(declared: int, actual: int) -> bytes:
    """A zstd frame of *actual* zero bytes whose header declares *declared* bytes (a stored blob: codec byte first)."""
    import zstandard

    frame = bytearray(zstandard.ZstdCompressor(level=3).compress(bytes(actual)))
    fhd = frame[4]
    single = (fhd >> 5) & 1
    field = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[fhd >> 6]
    off = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
    assert field >= 4, "compress a larger input to get a wide content size field"
    frame[off : off + field] = (declared - (256 if field == 2 else 0)).to_bytes(field, "little")
    return b"\x01" + bytes(frame)


def publish_manifest(repo_url: str, workspace: str, version: int, manifest: bytes | str, *,
                     manifest_size: int | None = None, stored: bytes | None = None,
                     record: dict[str, object] | None = None) -> str:
    """Put a manifest (a file path or bytes) and a version record naming it straight into the store.

    *stored* replaces the stored encoding (for bombs); *manifest_size* and
    *record* override what the record declares.  Returns the manifest's hex id.
    """
    if isinstance(manifest, bytes):
        raw = manifest
    else:
        with open(manifest, "rb") as f:
            raw = f.read()
    cid = blake3.blake3(raw).digest()
    store = open_store(repo_url)
    store.put(manifest_key(cid), stored if stored is not None else encode_blob(raw))
    rec: dict[str, object] = {
        "workspace": workspace, "version": version, "parent": version - 1 if version > 1 else None,
        "manifest": cid.hex(), "manifest_size": len(raw) if manifest_size is None else manifest_size,
        "time": "2026-01-01T00:00:00+00:00", "author": "mallory", "message": "", "stats": {}, "format": 1,
    }
    rec.update(record or {})
    store.put(version_key(workspace, version), json.dumps(rec).encode())
    return cid.hex()
