"""A point-in-time, read-only view of a write layer that another thread can read while writes go on.

Commit reads the layer from a worker thread while the daemon's trio thread
keeps writing into it; what is written meanwhile belongs to the next commit.
:meth:`WriteLayer.snapshot` (called on the layer's thread) commits the open
batch durably and returns a :class:`Snapshot`:

* a second SQLite connection to the layer's database, inside a read
  transaction begun right after that commit: WAL snapshot isolation, so it
  sees exactly that commit whatever the layer commits later;
* a *pin* on the layer's slot pool: the commit left every slot it refers to
  "durable" (never written in place again: copy-on-write), and while the pin
  is held no slot retired later is reused, so every block the snapshot
  reads keeps its bytes until :meth:`Snapshot.close`;
* its own descriptor of the slot file and its own connection to the base's
  index, so nothing is shared with the layer's thread.

The view *is* a :class:`~wsfs.layer.layer.WriteLayer` (the same code reads
it: getattr, lookup, readdir, readlink, xattrs, read, changes,
chunk_sources, content_unchanged); every mutation fails (``query_only``).

Also here: the commit memo as the snapshot saw it (:attr:`Snapshot.memo`)
and the *intent* file, which makes the memo crash-safe: commit writes what it
is about to publish (the record and the memo rows) to ``<state>/commit-intent``
before it creates the version record, and the layer deletes it once the memo
is updated (:meth:`WriteLayer.mark_published`).  A commit that finds an intent
whose record exists in the store applies it first (see
:mod:`wsfs.versions.commit`).
"""

from __future__ import annotations

import json
import os
import stat
import struct
from typing import TYPE_CHECKING, Any, NamedTuple

import apsw

from wsfs.errors import InvalidArgument
from wsfs.format.manifest import Inode, Manifest
from wsfs.fsops import proc_path
from wsfs.layer.batch import NODE_COLS, ReadBase
from wsfs.layer.content import BLOCK
from wsfs.layer.layer import WriteLayer
from wsfs.layer.state import DB_NAME, PRIVATE_FILE

if TYPE_CHECKING:
    from wsfs.layer.content import SlotPool

INTENT = "commit-intent"
WAL_NAME = DB_NAME + "-wal"


class Memo(NamedTuple):
    """What the layer last committed at a key: the record body (None: removed), the inode and its ctime then."""

    body: bytes | None
    ino: int
    ctime_ns: int


class Publication(NamedTuple):
    """A published version and the memo rows it makes true (what :meth:`WriteLayer.mark_published` writes)."""

    version: int
    top: str
    record: bytes  # the record's JSON as created (what a retried or recovered commit compares)
    rows: dict[bytes, Memo]

    def encode(self) -> bytes:
        """Binary: a magic line, ``<II`` (header length, rows), the JSON header, then per row ``<IIqq`` (key
        length, body length or ``_NO_BODY``, inode, ctime) and the key's and body's bytes.  (JSON with hex
        was ~10% of a 40,000-entry commit.)"""
        head = json.dumps({"version": self.version, "top": self.top, "record": self.record.decode()}).encode()
        parts = [_INTENT_MAGIC, _INTENT_HEAD.pack(len(head), len(self.rows)), head]
        pack, add = _INTENT_ROW.pack, parts.append
        for k, m in self.rows.items():
            body = m.body
            add(pack(len(k), _NO_BODY if body is None else len(body), m.ino, m.ctime_ns))
            add(k)
            if body:
                add(body)
        return b"".join(parts)

    @classmethod
    def decode(cls, raw: bytes) -> Publication:
        """ValueError if *raw* is not a whole publication (also reads the JSON an earlier wsfs wrote)."""
        if not raw.startswith(_INTENT_MAGIC):
            d = json.loads(raw)
            rows = {bytes.fromhex(k): Memo(None if b is None else bytes.fromhex(b), int(i), int(c))
                    for k, b, i, c in d["rows"]}
            return cls._of(d, rows)
        pos = len(_INTENT_MAGIC)
        try:
            n_head, n_rows = _INTENT_HEAD.unpack_from(raw, pos)
            pos += _INTENT_HEAD.size
            d = json.loads(raw[pos:pos + n_head])
            pos += n_head
            rows = {}
            unpack, size = _INTENT_ROW.unpack_from, _INTENT_ROW.size
            for _ in range(n_rows):
                nk, nb, ino, ctime = unpack(raw, pos)
                pos += size
                key = raw[pos:pos + nk]
                pos += nk
                body = None
                if nb != _NO_BODY:
                    body = raw[pos:pos + nb]
                    pos += nb
                rows[key] = Memo(body, ino, ctime)
        except struct.error as e:
            raise ValueError(f"truncated commit intent: {e}") from None
        if pos != len(raw):
            raise ValueError(f"commit intent is {len(raw)} bytes, its rows end at {pos}")
        return cls._of(d, rows)

    @classmethod
    def _of(cls, head: Any, rows: dict[bytes, Memo]) -> Publication:
        if not (isinstance(head, dict) and isinstance(head.get("record"), str) and isinstance(head.get("top"), str)):
            raise ValueError("commit intent without its version, top and record")
        return cls(int(head["version"]), head["top"], head["record"].encode(), rows)


_INTENT_MAGIC = b"wsfs commit intent 2\n"
_INTENT_HEAD = struct.Struct("<II")
_INTENT_ROW = struct.Struct("<IIqq")
_NO_BODY = 0xFFFFFFFF


class _Slots:
    """The slot file, read-only, for :class:`~wsfs.layer.content.Content` reads (``fd`` is all they use)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def allocate(self) -> int:
        raise InvalidArgument("a snapshot of a write layer is read-only")


class Snapshot(WriteLayer):
    """A read-only view of a write layer as of one durable commit; see the module docstring."""

    def __init__(self, layer: WriteLayer, read_base: ReadBase | None = None, *, synced: bool = True) -> None:  # noqa: D107
        # Not WriteLayer.__init__: that would open (and lock) the state folder again.
        self.base_id = layer.base_id
        self._read_base = read_base or layer._read_base
        self.commit_interval, self.batch_ops = layer.commit_interval, layer.batch_ops
        self.state_path = layer.state.path
        self._pins = layer.pool.pins
        self.m = Manifest(layer.m.path, validate=False)
        self.state_fd = os.dup(layer.state.fd)
        self.pool: SlotPool = _Slots(os.dup(layer.pool.fd))  # type: ignore[assignment]
        self.db = apsw.Connection(os.path.join(proc_path(self.state_fd), DB_NAME))
        self.db.setbusytimeout(5000)
        self.db.execute("PRAGMA query_only=ON")
        self.db.execute("BEGIN")
        meta = dict(self.db.execute("SELECT key, value FROM meta"))  # the read transaction starts here
        self._rows: dict[int, tuple[Any, ...] | None] = {}
        self._dentries: dict[int, dict[bytes, int]] = {}
        self._block_maps: dict[int, dict[int, int]] = {}  # read ahead by prefetch(), each taken once
        self._prefetched: set[int] = set()
        self._all = False  # prefetch_all() ran
        self._init_memory(meta)
        # The last version this layer published (initially its base) and the memo, as of this snapshot.
        self.published_version: int = meta.get("published_version", self.base_id.version)
        self.published_top: str = meta.get("published_top", self.base_id.top)
        self._memo: dict[bytes, Memo] | None = None  # read at the first use (see memo)
        self.publication: Publication | None = None  # set by a commit that published (or recovered) a version
        self._synced = synced  # the commit this view shows is durable (else: sync() before publishing it)
        self._pins.add(self)

    def _begin(self) -> None:
        raise InvalidArgument("a snapshot of a write layer is read-only")

    @property
    def memo(self) -> dict[bytes, Memo]:
        """The memo as of this snapshot, read at first use by the reading thread (one read transaction: the
        same whenever it is read), not by the layer's thread, which takes snapshots (40,000 rows: ~0.1 s)."""
        if self._memo is None:
            self._memo = {
                k: Memo(b, i, c) for k, b, i, c in self.db.execute("SELECT key, body, ino, ctime_ns FROM published")}
        return self._memo

    # A snapshot never changes (one read transaction): the rows a commit reads several times per entry
    # (attributes, xattrs, content) and a directory's entries in the layer are read once.  Memory follows
    # what the commit reads, like the commit's own entries.

    def _row(self, ino: int) -> tuple[Any, ...] | None:
        try:
            return self._rows[ino]
        except KeyError:
            if self._all:
                return None  # read whole: the layer has no row of it
            r = self._rows[ino] = super()._row(ino)
            return r

    def prefetch(self, parent: int) -> None:
        """Read the rows and block maps of all the layer's entries in directory *parent* in two queries.

        For a reader that goes on to read most of them (a commit of a whole
        tree): a query per file for each was a third of its reading time, most
        of it spent taking the GIL back after each query, while the upload
        threads want it too.
        """
        if self._all or parent in self._prefetched:
            return
        self._prefetched.add(parent)
        children = "SELECT ino FROM dentries WHERE parent = ? AND ino != 0"
        self._load(f"WHERE ino IN ({children})", (parent,))

    def _load(self, where: str, args: tuple[Any, ...]) -> None:
        """Keep the rows and block maps of the inodes ``nodes``/``blocks`` *where* selects."""
        for r in self.db.execute(f"SELECT {NODE_COLS} FROM nodes {where}", args):
            self._rows.setdefault(r[0], r)
            if stat.S_ISREG(r[1]) and r[4]:
                self._block_maps.setdefault(r[0], {})
        for ino, blk, slot in self.db.execute(f"SELECT ino, blk, slot FROM blocks {where}", args):
            maps = self._block_maps.get(ino)
            if maps is not None:
                maps[blk] = slot

    def prefetch_all(self) -> None:
        """Read the rows, block maps and directory entries of the whole layer in three queries.

        For a commit that reads most of a large layer (a tree written whole):
        three queries per directory cost ~1 s for 10,000 directories.  Memory
        follows the layer's size, as the commit's own entries do.
        """
        if self._all:
            return
        self._load("", ())
        dentries: dict[int, dict[bytes, int]] = {}
        for parent, name, ino in self.db.execute("SELECT parent, name, ino FROM dentries"):
            dentries.setdefault(parent, {})[name] = ino
        for parent, names in dentries.items():
            self._dentries.setdefault(parent, names)
        self._all = True

    def prefetch_if_large(self, rows: int = 4096) -> None:
        """:meth:`prefetch_all` if the layer holds at least *rows* inodes (one count): for a reader of
        everything the layer changed (``wsfs status``), whose row-by-row reads of a 40,000-entry layer
        took ~40% of its time."""
        if not self._all and self.db.execute("SELECT count(*) FROM nodes").fetchall()[0][0] >= rows:
            self.prefetch_all()

    def read_small(self, ino: int) -> bytes | None:
        """The whole content of regular file *ino* if the layer holds it in one slot (a file of at most one
        block written here, nothing of the base in it), else None (:meth:`read` it).

        What :meth:`read` would return, without a :class:`Content` per file: a commit of a tree written
        whole reads tens of thousands of such files.
        """
        r = self._row(ino)
        if r is None or r[12] or not stat.S_ISREG(r[1]) or not 0 < r[4] <= BLOCK:
            return None  # (r[4]: size, r[12]: base size)
        blocks = self._block_maps.get(ino)
        if blocks is None or self.contents.get(ino) is not None:
            return None
        slot = blocks.get(0)
        if slot is None or len(blocks) != 1:
            return None
        self._block_maps.pop(ino, None)
        size = r[4]
        data = os.pread(self.pool.fd, size, slot * BLOCK)
        return data + bytes(size - len(data)) if len(data) < size else data

    def _block_map(self, ino: int) -> dict[int, int]:
        got = self._block_maps.pop(ino, None)
        return got if got is not None else super()._block_map(ino)

    def entries(self, ino: int) -> list[tuple[bytes, Inode]]:
        # A directory of the layer's own, read whole (prefetch_all): its entries without a query.
        if self._all and ino > self.base_max:
            self._dir(ino)
            getattr_ = self.getattr
            return [(name, getattr_(child)) for name, child in self._dentries.get(ino, {}).items() if child]
        return super().entries(ino)

    def _layer_dentry(self, parent: int, name: bytes) -> int | None:
        names = self._dentries.get(parent)
        if names is None and self._all:
            return None  # read whole: no entry of the layer in that directory
        if names is None:
            names = self._dentries[parent] = dict(
                self.db.execute("SELECT name, ino FROM dentries WHERE parent = ?", (parent,)))
        return names.get(name)

    def intent(self) -> Publication | None:
        """The publication a commit was about to make when it was interrupted, if any."""
        try:
            fd = os.open(INTENT, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.state_fd)
        except FileNotFoundError:
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                return Publication.decode(f.read())
        except (ValueError, KeyError, TypeError):
            return None  # torn: written before the record, so that record was never created from it

    def write_intent(self, pub: Publication) -> None:
        """Durably record *pub* before its record is created (replacing any earlier intent)."""
        tmp = INTENT + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE,
                     dir_fd=self.state_fd)
        try:
            data = pub.encode()
            n = 0
            while n < len(data):
                n += os.write(fd, data[n:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, INTENT, src_dir_fd=self.state_fd, dst_dir_fd=self.state_fd)
        os.fsync(self.state_fd)

    def sync(self) -> None:
        """Make the layer's commit this view shows durable, if the layer's thread did not (any thread).

        ``fsync`` of the WAL through a descriptor of our own: the layer's
        thread commits with ``synchronous=NORMAL`` (into the WAL, not
        fsynced), and while this view's read transaction is open the WAL is
        not restarted, so the frames of that commit are still in it; a
        checkpoint that copied them into the database file synced that file
        itself.  Everything the layer wrote later is made durable too, which
        does no harm.  Slot contents were synced by the commit already.
        Commit calls this before the version record is created: a version
        never holds a state a crash of the layer could lose.
        """
        if self._synced:
            return
        self._sync_wal()
        self._synced = True

    def _sync_wal(self) -> None:
        fd = os.open(WAL_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.state_fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def recorded(self) -> None:
        """After ``mark_published(snap, durable=False)`` on the layer's thread: make the memo rows durable,
        then drop the intent file (this view still open, so the WAL holds them: see :meth:`sync`)."""
        if self.publication is None:
            return
        self._sync_wal()
        try:
            os.unlink(INTENT, dir_fd=self.state_fd)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """End the read transaction and release the pin (any thread)."""
        if self._closed:
            return
        self._closed = True
        self._pins.discard(self)
        try:
            self.db.execute("ROLLBACK")
        finally:
            self.db.close()
            self.m.close()
            os.close(self.pool.fd)
            os.close(self.state_fd)
