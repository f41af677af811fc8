"""Keyed state in RocksDB, buffered in memory between checkpoints.

One :class:`RocksState` per store per partition.  Reads see pending writes at once;
writes stay in memory until :meth:`RocksState.take_pending` hands them to the
checkpoint, which sends them to the changelog topic and, once Kafka has them, calls
:meth:`RocksState.write_committed` to put them in RocksDB *together with* the changelog
offset they reach.  Writing RocksDB only after Kafka acknowledged (or the transaction
committed) is what makes the local store never ahead of the changelog: a crash
anywhere leaves RocksDB at an older, consistent point that restore catches up from.

At-least-once checkpoints do not encode every pending write at once (with tens of thousands
of keys that stalled the loop for tens of milliseconds): :meth:`RocksState.seal` only sets the
pending keys aside, :meth:`RocksState.encode_sealed` encodes them a chunk at a time between
batches, and a sealed key that is read or written before its turn is encoded first, as it was
at the seal.  So what a seal produces is the state at the seal, however long encoding takes.
(Operators change values in place between ``get`` and ``set``; a value kept across batches and
changed without a ``get`` would escape this, as it would escape the dirty tracking itself.)

Values are encoded with msgspec MessagePack.  With ``StoreSpec.value_type`` unset they
come back as msgspec builtins after a checkpoint (a Struct comes back as a dict);
declare the type to get the Struct back.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import msgspec
from rocksdict import BlockBasedOptions, Options, Rdict, WriteBatch, WriteOptions

from vigil.errors import PipelineError
from vigil.stream.base import State, StoreSpec, refuse_unencodable_key

#: Reserved key holding the next changelog offset.  It starts with 0xff, which no UTF-8 text
#: contains, so no key of an operator's (text, often an attacker's entity id) can be it: one
#: written over it made every later restore fail until the store was deleted.
OFFSET_KEY = b"\xffvigil:changelog-offset"
#: When (wall clock, epoch seconds) the changelog offset was last written: how long a store has
#: been away from its changelog (see vigil.stream.changelog.Restorer.add).
WRITTEN_AT_KEY = b"\xffvigil:changelog-written-at"
#: The changelog topic's id when the store was restored from it: a topic deleted and made
#: again has another, and the store is no prefix of it whatever its offsets.
TOPIC_ID_KEY = b"\xffvigil:changelog-topic-id"
_RESERVED = b"\xffvigil:"
#: Where stores written before kept the first two: moved to the new keys when such a store
#: is opened (see RocksState._migrate).
_LEGACY_KEYS = {OFFSET_KEY: b"\x00vigil:changelog-offset", WRITTEN_AT_KEY: b"\x00vigil:changelog-written-at"}
_DELETED = object()
_MISSING = object()
#: Decoded values kept after a checkpoint; past this the cache is dropped (RocksDB has them).
CACHE_LIMIT = 200_000

_encoder = msgspec.msgpack.Encoder()


#: Bloom filter bits per key in each table file.  Rules ask for many keys never written (first
#: sightings), and after a restart or past the cache every one of them is a RocksDB read: with
#: the filter a miss mostly skips the table files.  Measured on 1M keys in 10 flushed files: a
#: miss 1.15-1.18 µs without, 0.39-0.43 µs with; a hit the same (1.9-2.2 µs); writing and
#: flushing 1M keys the same (0.63-0.73 s).  (Kafka Streams' RocksDB stores use a 10-bit filter.)
BLOOM_BITS_PER_KEY = 10


class StoreLocked(PipelineError):
    """The store's RocksDB is open elsewhere: another process sharing this home (a member that
    lost the partition and has not closed it yet) or another store object of this process."""


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    table = BlockBasedOptions()
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)  # full filters, not block-based ones
    opts.set_block_based_table_factory(table)
    return opts


def undecodable(where: str, key: str, value_type: Any, exc: Exception) -> PipelineError:
    """The error for a stored value of ``key`` (in ``where``) that no longer decodes to the
    store's ``value_type`` (also the in-memory harness's, at a restart)."""
    msg = (
        f"{where}: the stored value of key {key!r} does not decode to "
        f"{getattr(value_type, '__name__', value_type)!r}: {exc}; a type "
        "changed without a new version: give the new fields defaults, or bump StoreSpec.version "
        "(the store then starts empty)"
    )
    return PipelineError(msg)


class RocksState(State):
    """State of one store for one partition (see the module docstring for durability)."""

    def __init__(self, path: Path, spec: StoreSpec) -> None:
        self.path = path
        self.spec = spec
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()
        self._migrate()
        value_type = getattr(spec, "value_type", Any)
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(value_type)
        self._cache: dict[str, Any] = {}
        self._dirty: set[str] = set()
        #: Sealed keys not encoded yet, and sealed keys encoded early because they were touched.
        self._sealed: set[str] = set()
        self._early: list[tuple[bytes, bytes | None]] = []
        #: Batches handed out by take_pending and not yet back through write_committed.
        self._unwritten = 0
        #: The keys of those batches, oldest first, and how many (with repeats): not in RocksDB
        #: yet, so the cache may not forget them.
        self._inflight: deque[Collection[str]] = deque()
        self._inflight_keys = 0
        self.closed = False
        #: Next changelog offset as far as this process knows (set by restore at assignment, moved
        #: on by each committed transaction that wrote the store: see Application._queue_writes).
        self.changelog_next: int | None = None
        #: Whether ``changelog_next`` is the offset of the commit marker of this process's last
        #: transaction that wrote the store (False after a restore: it is the end read then).
        self.changelog_at_marker = False
        self._generation = 0
        #: The operators' keys in RocksDB at the last pass of count_keys (None: none ended yet),
        #: the keys counted so far in this pass, and the last of them (None: a pass begins).
        self.key_count: int | None = None
        self._counted = 0
        self._count_after: bytes | None = None

    def _open(self) -> Rdict:
        try:
            db = Rdict(str(self.path), options=_options())
        except Exception as exc:  # rocksdict raises Exception itself; RocksDB's text says what
            # "While lock file: <path>/LOCK: ..." (another process), "lock hold by current
            # process ... <path>/LOCK: ..." (this one): the lock file named, not any "lock" or "block".
            if f"{self.path / 'LOCK'}:" not in str(exc):
                raise
            msg = f"store {self.path} is open elsewhere (RocksDB: {exc})"
            raise StoreLocked(msg) from exc
        # No write-ahead log: the changelog is the log.  A crash loses at most the memtable, and
        # since the changelog offset is written in the same batches, what survives is a consistent
        # older point that restore catches up from (Kafka Streams makes the same choice).
        no_wal = WriteOptions()
        no_wal.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; the stub is wrong
        db.set_write_options(no_wal)
        return db

    def _migrate(self) -> None:
        """Move a store's changelog offset and time from where earlier versions kept them."""
        batch = WriteBatch(raw_mode=True)
        moved = False
        for key, legacy in _LEGACY_KEYS.items():
            raw = self._db.get(legacy)
            if raw is None or self._db.get(key) is not None:
                continue
            try:
                float(raw.decode())
            except (UnicodeDecodeError, ValueError):
                continue  # an operator's value under that name, not the runtime's
            batch.put(key, raw)
            batch.delete(legacy)
            moved = True
        if moved:
            self._db.write(batch)
            self._db.flush()  # (no write-ahead log: durable once flushed)

    def wipe(self) -> None:
        """Delete everything, the changelog offset included: for a store that is no longer a
        prefix of its changelog (see :func:`vigil.stream.changelog.restore`), restored afresh."""
        self._db.close()
        Rdict.destroy(str(self.path), _options())
        self._db = self._open()
        self.discard_pending()
        self.key_count, self._counted, self._count_after = None, 0, None

    # ------------------------------------------------------------------ State API

    def get(self, key: str, default: Any = None) -> Any:
        if self._sealed and key in self._sealed:
            self._encode_early(key)
        # .get with a sentinel, not a subscript in try: compiled, a miss raising KeyError built a
        # traceback (about 3,700 instructions against 250 for the lookup), and rules ask for many
        # keys never written (first sightings).
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            if not key.isascii():
                refuse_unencodable_key(key)  # (what a write of it says: never stored)
            raw = self._db.get(key.encode())
            cache = self._cache
            if len(cache) >= CACHE_LIMIT and self._droppable() >= CACHE_LIMIT // 2:
                # A store mostly read (first sightings looked up, seldom written) grew the cache
                # without bound: it was cut back only when a checkpoint wrote RocksDB.  (Checked on
                # a miss, which costs a RocksDB read anyway; and only with half the limit's worth
                # to drop, or a store with that many writes pending rebuilt it at every miss.)
                self._trim()
            if raw is None:
                # Remembered as absent (a deletion RocksDB already has): rules ask for many keys
                # that were never written (first sightings, unflagged addresses), and a RocksDB
                # miss costs more than the cache entry.  RocksDB gets writes only from this cache
                # (restore fills it before the first read), so the key stays absent until set here.
                self._cache[key] = _DELETED
                return default
            value = self._decoded(key, raw)
            self._cache[key] = value
        return default if value is _DELETED else value

    def set(self, key: str, value: Any) -> None:
        if not key.isascii():
            refuse_unencodable_key(key)  # (here, not at the checkpoint: see its docstring)
        if self._sealed and key in self._sealed:
            self._encode_early(key)
        self._cache[key] = value
        self._dirty.add(key)

    def delete(self, key: str) -> None:
        if not key.isascii():
            refuse_unencodable_key(key)
        if self._sealed and key in self._sealed:
            self._encode_early(key)
        self._cache[key] = _DELETED
        self._dirty.add(key)

    def _handing_out(self, key: str) -> None:
        """Before a value is handed out by :meth:`items` or :meth:`walk`, as :meth:`get` does: a
        sealed key is encoded now, as it was at the seal, since its holder may change the value in
        place and set it (encoded later, the change went into the sealed checkpoint, with that
        checkpoint's input offsets, and was counted again by the replay after a crash)."""
        if self._sealed and key in self._sealed:
            self._encode_early(key)

    def _encode_early(self, key: str) -> None:
        self._sealed.discard(key)
        value = self._cache[key]
        self._early.append((key.encode(), None if value is _DELETED else _encoder.encode(value)))

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        # Every cached value is at least as new as RocksDB's (RocksDB only gets values from here),
        # and some are not in RocksDB yet though no longer pending (sealed or taken, on their way
        # through Kafka): the cache wins.
        pending = {k: v for k, v in self._cache.items() if k.startswith(prefix)}
        merged: dict[str, Any] = dict(self._stored(prefix, prefix))
        merged.update(pending)
        for key in sorted(merged):
            value = merged[key]
            if value is not _DELETED:
                self._handing_out(key)
                yield key, value

    def walk(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, Any]]:
        # RocksDB from ``after`` on; keys only in the cache so far (first written since the last
        # checkpoint) are left out, as State.walk allows: finding them would mean sorting the cache.
        out: list[tuple[str, Any]] = []
        for key, value in self._stored(prefix, prefix if after is None or after < prefix else after):
            if value is _DELETED or (after is not None and key <= after):
                continue
            self._handing_out(key)
            out.append((key, value))
            if len(out) >= limit:
                break
        return out

    def _stored(self, prefix: str, start: str) -> Iterator[tuple[str, Any]]:
        """RocksDB's keys under ``prefix`` from ``start`` on, in order, each with the cache's value
        if the cache has one (newer, or ``_DELETED``), else RocksDB's, decoded."""
        raw_prefix = prefix.encode()
        cache = self._cache
        for item_key, raw in self._db.items(from_key=start.encode()):
            raw_key = bytes(item_key)  # type: ignore[arg-type]  # raw mode: keys are bytes
            if not raw_key.startswith(raw_prefix):
                break
            if raw_key.startswith(_RESERVED):
                continue
            key = raw_key.decode()
            value = cache.get(key, _MISSING)
            yield key, self._decoded(key, raw) if value is _MISSING else value

    def _decoded(self, key: str, raw: bytes) -> Any:
        """The stored value of ``key``.  One that no longer decodes to the store's ``value_type``
        (a field added without a new ``StoreSpec.version``) is named with its store and key: the
        bare decode error named neither, and every restart failed the same way."""
        try:
            return self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise self._undecodable(key, exc) from exc

    def _undecodable(self, key: str, exc: Exception) -> PipelineError:
        return undecodable(f"state {self.path}", key, self.spec.value_type, exc)

    # ------------------------------------------------------------------ checkpoint side

    @property
    def pending_count(self) -> int:
        return len(self._dirty)

    def take_pending(self) -> list[tuple[bytes, bytes | None]]:
        """Encoded pending writes (``None`` = delete), clearing the dirty set."""
        out: list[tuple[bytes, bytes | None]] = []
        cache = self._cache
        taken = self._dirty
        for key in taken:
            value = cache[key]
            out.append((key.encode(), None if value is _DELETED else _encoder.encode(value)))
        self._dirty = set()
        self._took(taken)
        return out

    def seal(self) -> int:
        """Set the pending writes aside as one checkpoint's, to encode with :meth:`encode_sealed`;
        returns how many keys.  The previous seal must be fully encoded first."""
        if self._sealed or self._early:
            msg = f"state {self.path}: sealed before the previous seal was fully encoded"
            raise RuntimeError(msg)
        self._sealed, self._dirty = self._dirty, set()
        self._took(set(self._sealed))  # (a copy: encoding empties the seal)
        return len(self._sealed)

    def _took(self, keys: Collection[str]) -> None:
        self._unwritten += 1
        self._inflight.append(keys)
        self._inflight_keys += len(keys)

    def _droppable(self) -> int:
        """About how many cached values RocksDB has as they are (at least this many)."""
        return len(self._cache) - len(self._dirty) - len(self._sealed) - self._inflight_keys

    @property
    def sealed_count(self) -> int:
        """Sealed writes not handed out by :meth:`encode_sealed` yet."""
        return len(self._sealed) + len(self._early)

    def encode_sealed(self, limit: int | None = None) -> list[tuple[bytes, bytes | None]]:
        """Up to ``limit`` (None: all) of the sealed writes, encoded as they were at the seal."""
        out, self._early = self._early, []
        sealed = self._sealed
        cache = self._cache
        pop = sealed.pop
        for _ in range(len(sealed) if limit is None else min(len(sealed), max(0, limit - len(out)))):
            key = pop()
            value = cache[key]
            out.append((key.encode(), None if value is _DELETED else _encoder.encode(value)))
        return out

    def write_committed(
        self,
        writes: list[tuple[bytes, bytes | None]],
        changelog_offset: int | None,
        *,
        final: bool = True,
        written_at: float | None = None,
    ) -> None:
        """Apply writes that Kafka now has, with the changelog offset they reach, atomically.

        ``final=False``: a chunk of a larger set of writes, applied without an offset; a crash
        before the final chunk leaves RocksDB with some newer values and the older offset, from
        which restore replays whole values up to the changelog's end (last one wins).
        ``written_at``: the time recorded with the offset (epoch seconds; None: now), which
        restore keeps at the time the store's contents are as of."""
        batch = WriteBatch(raw_mode=True)
        put, delete = batch.put, batch.delete
        for key, value in writes:
            if value is None:
                delete(key)
            else:
                put(key, value)
        if changelog_offset is not None:
            batch.put(OFFSET_KEY, str(changelog_offset).encode())
            batch.put(WRITTEN_AT_KEY, repr(time.time() if written_at is None else written_at).encode())
        self._db.write(batch)
        if final:
            self._unwritten = max(0, self._unwritten - 1)
            if self._inflight:  # (none for a restore's writes)
                self._inflight_keys -= len(self._inflight.popleft())
        if len(self._cache) > CACHE_LIMIT and self._droppable() >= CACHE_LIMIT // 2:
            # Not only once RocksDB has every batch: under steady at-least-once load the next seal
            # is always on its way by then, and the cache grew by every key ever read or written.
            self._trim()
            return
        # Forget DELETED markers now that RocksDB itself has the deletion, but only once RocksDB
        # has every write taken so far.  While later checkpoints are still on their way (at-least-
        # once checkpoints can queue up behind Kafka's acknowledgements), one of them may set the
        # key again and a later one delete it again: forgetting the marker then would let a read
        # find the in-between value in RocksDB, and keep it.  A key written again since stays too
        # (the cache holds the newer value).
        if self._unwritten:
            return
        cache = self._cache
        for key, value in writes:
            if value is None:
                text = key.decode()
                if cache.get(text) is _DELETED and text not in self._dirty and text not in self._sealed:
                    del cache[text]

    def _trim(self) -> None:
        """Keep memory bounded: forget what RocksDB has.  Values not written there yet stay (the
        cache is the only place they are readable): pending, sealed, or on their way through
        Kafka."""
        keep = self._dirty | self._sealed
        keep.update(*self._inflight)
        cache = self._cache
        self._cache = {key: cache[key] for key in keep}

    def holds_data(self) -> bool:
        """Whether RocksDB holds any key of the operators' (not only the store's own records,
        whose keys start with 0xff and so sort last)."""
        for key in self._db.keys():  # noqa: SIM118  (iterating a raw-mode Rdict itself raises)
            return not bytes(key).startswith(_RESERVED)  # type: ignore[arg-type]  # raw mode: bytes
        return False

    def changelog_offset(self) -> int | None:
        """The next changelog offset RocksDB does not yet reflect (None: nothing restored yet)."""
        raw = self._db.get(OFFSET_KEY)
        return int(raw.decode()) if raw is not None else None

    def changelog_topic_id(self) -> str | None:
        """The id of the changelog topic the store was restored from (None: not recorded)."""
        raw = self._db.get(TOPIC_ID_KEY)
        return raw.decode() if raw is not None else None

    def record_topic_id(self, topic_id: str) -> None:
        """Record the id of the changelog topic the store is a prefix of."""
        self._db.put(TOPIC_ID_KEY, topic_id.encode())

    def touch(self, at: float | None = None) -> None:
        """Record that the store is current with its changelog as of ``at`` (None: now): its
        owner is the changelog's only writer, so while it owns the store nothing older than its
        own pending writes is missing from it.  (Without it, a store owned but not written for a
        day would look a day old to the next restore, and be restored afresh.)"""
        if self.closed:
            return
        self._db.put(WRITTEN_AT_KEY, repr(time.time() if at is None else at).encode())

    def changelog_written_at(self) -> float | None:
        """When the changelog offset was last written (epoch seconds; None: never, or by a
        version that did not record it)."""
        raw = self._db.get(WRITTEN_AT_KEY)
        return float(raw.decode()) if raw is not None else None

    def generation(self) -> int:
        return self._generation

    def discard_pending(self) -> None:
        """Forget uncommitted writes (after an aborted transaction)."""
        self._generation += 1
        self._cache = {}
        self._dirty = set()
        self._sealed = set()
        self._early = []
        self._unwritten = 0
        self._inflight = deque()
        self._inflight_keys = 0

    def count_keys(self, budget: int) -> int:
        """Go on counting the operators' keys in RocksDB, reading at most ``budget`` of them, from
        where the last call stopped; returns how many it read.  :attr:`key_count` is the count
        of the last pass over the whole store (None before the first ends); writes not
        checkpointed yet are not in RocksDB.  About 0.4 µs a key (why not RocksDB's estimate,
        and how the application takes turns: :mod:`vigil.stream.keycount`)."""
        it = self._db.iter()
        after = self._count_after
        if after is None:
            it.seek_to_first()
        else:
            it.seek(after)
            if it.valid() and it.key() == after:
                it.next()
        read = 0
        last = after
        while it.valid():
            key = it.key()
            if key.startswith(_RESERVED):
                break  # (the store's own records sort last: UTF-8 text has no 0xff byte)
            if read >= budget:
                self._counted += read
                self._count_after = last
                return read
            read += 1
            last = key
            it.next()
        self.key_count = self._counted + read
        self._counted = 0
        self._count_after = None
        return read

    def close(self) -> None:
        if not self.closed:
            self._db.flush()  # without a WAL, the memtable is only durable once flushed
            self._db.close()
            self.closed = True
            # Its cache goes now (up to CACHE_LIMIT values): a closed store may still be held a
            # while, by a window until it next claims a partition, say (see windows._claim).
            self.discard_pending()
