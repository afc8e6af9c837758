"""One changed file's content: base bytes, staged blocks, copy-on-write slots.

A changed regular file is read block by block (``BLOCK`` bytes, 64 KiB): a
block with a slot is read from the staged content file ``data/slots`` at
``slot * BLOCK``; any other block is the base file's below ``base_size`` and
zeros beyond.  All files share that one staged file (:class:`SlotPool`): a
new small file costs no file creation in the state folder (600 µs on this
machine's ext4, more than everything else a create does), and a durable
commit syncs one file, not one per changed file.  So copy-up is per block, never per file: a write into a cold
1 GiB file reads the one block it touches from the base (through the
caller's ``read_base``, whose cache fetches at most that block's chunk), an
append beyond ``base_size`` or a truncation reads nothing, and the blocks a
file never had written keep coming from the base (and keep their base chunk
ids for commit).

Why slots instead of writing block *b* at offset ``b * BLOCK``: crash
consistency without a journal.  A slot that the last *committed* database
state refers to (``durable``) is never written again: a write into its
block copies the block into a fresh slot first (copy-on-write), and the old
slot is only reused once a durable commit no longer refers to it.  After a
``kill -9`` the database shows the last commit, and every slot it refers to
holds exactly the bytes it had then: a file shows the content of that
commit, never a mix of it with later, uncommitted writes.  Slots written
since the last commit are written in place (nothing durable refers to them).

Freed slots are reused (and their space punched out of the file at the next
durable commit).  Invariants: bytes of a slot inside the file's size are the block's content;
bytes of a slot beyond the size are unspecified (a reused slot, a truncated
tail) and are zeroed when the size grows over them; no block lies wholly
beyond the size.

Memory: what this object holds (the block map) is written to the
database's open batch by :meth:`rows`; the layer commits the batch.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from wsfs.errors import IntegrityError, NoSpace
from wsfs.layer.state import DB_MARGIN, StateDir, no_space

log = logging.getLogger(__name__)

BLOCK = 64 * 1024  # copy-on-write unit; small enough that an append after a commit copies little

ReadBase = Callable[[int, int], bytes]  # (offset, length) of this file's base content


class SlotPool:
    """The staged content file shared by every changed file: which slots are free, retired or in use.

    A slot is *retired* when a file stops using a slot that the last commit
    still refers to: it becomes free only after a durable commit (a
    non-durable commit may be lost with the machine, and the old rows with it).
    """

    def __init__(self, state: StateDir, used: set[int]) -> None:
        self.state = state
        self.fd = state.open_data(0, create=True)
        self.next_slot = max(used, default=-1) + 1
        self.free = sorted(set(range(self.next_slot)) - used, reverse=True)  # pop() gives the lowest
        self.retired: list[int] = []
        # Open snapshots (WriteLayer.snapshot) read slots of an older commit:
        # while any is open, slots retired by later commits are *held*, not
        # reused, so that no write lands in a slot a snapshot still reads.
        self.pins: set[object] = set()
        self.held: list[int] = []
        # Free slots whose space is not given back to the file system yet.  A thread
        # punches them (FALLOC_FL_PUNCH_HOLE) after a commit, in runs of adjacent slots,
        # taken out of ``free`` meanwhile: punching costs ~1-2 ms per freed extent on this
        # VM's ext4 (mounted with ``discard``), which on the trio thread made each
        # ``rm -rf`` of 5,000 small files wait ~8 s.  A slot reused before needs none.
        self.unpunched: set[int] = set(self.free)  # (at open: a crash may have left bytes in them)
        self._punching: Future[None] | None = None
        self._punch_batch: list[int] = []
        self._executor: ThreadPoolExecutor | None = None
        self._closing = threading.Event()  # close(): a punch under way stops after its current call
        self.unsynced = False
        # Slots past the last one the database refers to are leftovers of a
        # crash; drop them so the file does not keep their space.
        if os.fstat(self.fd).st_size > self.next_slot * BLOCK:
            os.ftruncate(self.fd, self.next_slot * BLOCK)

    def allocate(self) -> int:
        if self._punching is not None:
            self._collect()
        if self.state.free_bytes() < DB_MARGIN:  # keep room for the batch's commit (state.DB_MARGIN)
            self.punch(wait=True)  # the space of freed slots first
            if self.state.free_bytes() < DB_MARGIN:
                raise NoSpace(f"state folder {self.state.path} is full")
        if self.free:
            slot = self.free.pop()
            self.unpunched.discard(slot)
            return slot
        self.next_slot += 1
        return self.next_slot - 1

    def release(self, slot: int, durable: bool) -> None:
        """A file no longer uses *slot*; *durable*: the last commit refers to it."""
        if durable:
            self.retired.append(slot)
        else:  # reusable now; its space goes back at the next commit (punch) unless reused first
            self.free.append(slot)
            self.unpunched.add(slot)

    def pwrite(self, data: bytes | memoryview, off: int) -> None:
        try:
            n = os.pwrite(self.fd, data, off)
            while n < len(data):  # a short write: the rest, or the error that cut it
                n += os.pwrite(self.fd, memoryview(data)[n:], off + n)
        except OSError as e:
            if no_space(e):
                raise NoSpace(f"state folder {self.state.path} is full") from None
            raise
        self.unsynced = True

    def sync(self) -> None:
        """``fdatasync`` the staged file if written since the last one (before a durable commit)."""
        if self.unsynced:
            os.fdatasync(self.fd)
            self.unsynced = False

    def committed(self, durable: bool) -> None:
        """A commit went through; after a durable one, retired slots are free and freed space is punched
        (held instead while a snapshot is open: they become free at the first commit after it closed)."""
        if self.held and not self.pins:
            self._reuse(self.held)
        if durable:
            if self.pins:
                self.held.extend(self.retired)
                self.retired.clear()
            else:
                self._reuse(self.retired)
        self.punch()

    def _reuse(self, slots: list[int]) -> None:
        self.free.extend(slots)
        self.unpunched.update(slots)
        slots.clear()

    def punch(self, *, wait: bool = False) -> None:
        """Give the space of free slots back to the file system, in a thread (*wait*: here, now).

        The slots are out of ``free`` until their runs are punched: nothing is
        written into a range while it is being punched.
        """
        self._collect(wait)
        if not self.unpunched or self._punching is not None:
            return
        batch, self.unpunched = self.unpunched, set()
        self.free = [s for s in self.free if s not in batch]
        self._punch_batch = sorted(batch)
        if wait:
            _punch_runs(self.fd, self._punch_batch)
            self.free.extend(self._punch_batch)
            self._punch_batch = []
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="wsfs-punch")
        self._punching = self._executor.submit(_punch_runs, self.fd, self._punch_batch, self._closing)

    def _collect(self, wait: bool = False) -> None:
        """Slots a finished punch gave back become free (*wait*: for a punch under way)."""
        f = self._punching
        if f is None or not (wait or f.done()):
            return
        self._punching = None
        try:
            f.result()
        except OSError as e:  # best effort: the slots are free all the same
            log.warning("punching freed slots of %s failed: %s", self.state.path, e)
        self.free.extend(self._punch_batch)
        self._punch_batch = []

    def adopt_pins(self, old: SlotPool) -> None:
        """This pool replaces *old* (reloaded after a failed commit): keep *old*'s snapshots' slots unused."""
        self.pins = old.pins
        keep = set(old.held) | set(old.retired)
        self.held = [s for s in self.free if s in keep]
        self.free = [s for s in self.free if s not in keep]
        self.unpunched -= keep

    def close(self) -> None:
        if self._executor is not None:
            # A punch under way stops after its current call (a large rm -rf must not hold up the
            # unmount): what it left, the next open punches (every free slot is then "unpunched").
            self._closing.set()
            self._executor.shutdown(wait=True)
        os.close(self.fd)


_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
_libc = ctypes.CDLL(None, use_errno=True)


_PUNCH_PIECE = 16  # slots per fallocate call: the file's lock is held for one call (a write waits at most that)


def _punch(fd: int, off: int, length: int) -> None:
    """Give the space of [off, off + length) back (Python has no fallocate with flags); best effort."""
    _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, ctypes.c_long(off), ctypes.c_long(length))


def _punch_runs(fd: int, slots: list[int], stop: threading.Event | None = None) -> None:
    """Punch sorted *slots*: one call per run of adjacent slots, at most ``_PUNCH_PIECE`` slots each (until *stop*)."""
    i = 0
    while i < len(slots) and not (stop is not None and stop.is_set()):
        j = i + 1
        while j < len(slots) and slots[j] == slots[j - 1] + 1 and j - i < _PUNCH_PIECE:
            j += 1
        _punch(fd, slots[i] * BLOCK, (j - i) * BLOCK)
        i = j


class Content:
    """The content state of one regular file of the layer (loaded from, and written back to, the database)."""

    def __init__(self, pool: SlotPool, ino: int, size: int, base_size: int,
                 blocks: dict[int, int], read_base: ReadBase | None) -> None:
        self.pool = pool
        self.ino = ino
        self.size = size
        self.base_size = base_size
        self.blocks = blocks  # blk -> slot, as it is now
        self.durable: set[int] = set(blocks.values())  # slots the last commit refers to: never written
        self.read_base = read_base
        self.changed: set[int] = set()  # blocks whose row must be written
        self.dirty = False  # size, base_size, times or blocks differ from the rows
        self.times: tuple[int, int] | None = None  # (mtime, ctime) of the last write, not yet in the row
        self.mode: int | None = None  # st_mode after a write cleared SUID/SGID, not yet in the row
        self.suid_free = False  # no SUID/SGID to clear on a write (checked since the last setattr)

    # -- reading -----------------------------------------------------------

    def read(self, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        out = bytearray()
        while off < end:
            blk, inner = divmod(off, BLOCK)
            n = min(BLOCK - inner, end - off)
            out += self._block_bytes(blk, inner, n)
            off += n
        return bytes(out)

    def _block_bytes(self, blk: int, inner: int, n: int) -> bytes:
        """Bytes [inner, inner + n) of block *blk* as the file shows them now (inside its size)."""
        slot = self.blocks.get(blk)
        if slot is not None:
            data = os.pread(self.pool.fd, n, slot * BLOCK + inner)
            return data + bytes(n - len(data)) if len(data) < n else data
        start = blk * BLOCK + inner
        based = max(0, min(n, self.base_size - start))
        data = self.read_base(start, based) if based and self.read_base is not None else b""
        if len(data) != based:
            raise IntegrityError(f"base content of inode {self.ino} is short at {start}: {len(data)} of {based} bytes")
        return data + bytes(n - based) if based < n else data

    # -- writing -----------------------------------------------------------

    def write(self, off: int, data: bytes | memoryview) -> int:
        """Write *data* at *off* (content only; the caller keeps the times); how many bytes were written.

        A full state folder fails the write with NoSpace if no block of it was
        written, else it is short (as write(2) is): what was written stands.
        """
        if not data:
            return 0
        end = off + len(data)
        if off > self.size:
            self._zero_tail(off)
        view = memoryview(data)
        pos = off
        try:
            while pos < end:
                blk, inner = divmod(pos, BLOCK)
                n = min(BLOCK - inner, end - pos)
                self._write_block(blk, inner, view[pos - off:pos - off + n], max(self.size, end))
                pos += n
        except NoSpace:
            if pos == off:
                raise
            end = pos
        if end > self.size:
            self.size = end
        self.dirty = True
        return end - off

    def _zero_tail(self, upto: int) -> None:
        """The size grows to *upto*: zero what the old last block's slot holds beyond the old size."""
        inner = self.size % BLOCK
        blk = self.size // BLOCK
        if inner and blk in self.blocks:
            n = min(BLOCK - inner, upto - self.size)
            self._write_block(blk, inner, bytes(n), max(self.size, upto))

    def _write_block(self, blk: int, inner: int, data: memoryview | bytes, new_size: int) -> None:
        slot = self.blocks.get(blk)
        start = blk * BLOCK
        if slot is None or slot in self.durable:
            # A new slot: fill what the write does not cover, inside the new size,
            # with the block's current bytes (base, old slot, or zeros): one read.
            fill_end = min(BLOCK, new_size - start)
            new = self.pool.allocate()
            try:
                if inner > 0 or inner + len(data) < fill_end:
                    old_end = max(0, min(BLOCK, self.size - start))  # what the block shows now
                    old = self._block_bytes(blk, 0, old_end) if old_end else b""
                    buf = bytearray(old[:fill_end].ljust(fill_end, b"\0"))
                    buf[inner:inner + len(data)] = data
                    self.pool.pwrite(bytes(buf), new * BLOCK)
                else:
                    self.pool.pwrite(data, new * BLOCK + inner)
            except BaseException:
                self.pool.release(new, durable=False)  # nothing refers to it: the old block stands
                raise
            if slot is not None:
                self.pool.release(slot, durable=True)
            self.blocks[blk] = new
            self.changed.add(blk)
        else:
            self.pool.pwrite(data, slot * BLOCK + inner)

    def truncate(self, size: int) -> None:
        """Set the size; nothing is read (a shrink drops blocks, a growth shows zeros)."""
        if size > self.size:
            self._zero_tail(size)
        elif size < self.size:
            first_gone = -(-size // BLOCK)  # blocks starting at or beyond the new size
            for blk in [b for b in self.blocks if b >= first_gone]:
                self._unmap(blk)
            self.base_size = min(self.base_size, size)
        self.size = size
        self.dirty = True

    def _unmap(self, blk: int) -> None:
        slot = self.blocks.pop(blk)
        self.pool.release(slot, durable=slot in self.durable)
        self.changed.add(blk)

    # -- persistence -------------------------------------------------------

    def rows(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
        """Rows to write for the changed blocks: ``(ino, blk, slot)`` to upsert, ``(ino, blk)`` to delete."""
        put = [(self.ino, b, self.blocks[b]) for b in self.changed if b in self.blocks]
        drop = [(self.ino, b) for b in self.changed if b not in self.blocks]
        self.changed.clear()
        return put, drop

    def committed(self) -> None:
        """The batch holding this file's rows was committed: its slots may no longer be written in place."""
        self.durable = set(self.blocks.values())

    def drop(self) -> None:
        """The file is gone (no name, no handle): its slots go back to the pool."""
        for slot in self.blocks.values():
            self.pool.release(slot, durable=slot in self.durable)
        self.blocks.clear()
