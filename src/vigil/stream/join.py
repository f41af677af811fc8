"""Interval join of two co-partitioned keyed streams.

An application with two inputs keyed by the same entity (``events.identity`` and
``events.payments``, both keyed by customer) sees partition ``p`` of both in one place
with one state (see :mod:`vigil.stream.app`).  :class:`IntervalJoin` pairs every left
event with every right event of the same key whose event times are at most ``within``
apart, whichever arrives first, and hands each pair to ``on_match`` once per record: a record
read twice (at least once, or re-keyed twice) pairs again, and waits twice, so ``on_match``
should emit under ids made from the pair's events, which downstream deduplication then drops.

Each side has its own watermark (its latest event time minus the allowed lateness) and the
join's is the lower of the two, as in Flink: a watermark shared by both would make the side
behind late wholesale.  A side with no events yet, or more than ``max_skew`` behind the other
(its source is down, or the partition only ever has events of one side), stops holding the
join back at ``max_skew``: the waiting events of the side ahead would otherwise be kept for as
long as the other stays behind.

So the sides must not drift apart by more than ``max_skew`` on their way in, and unaligned they
do: on a catch-up (after downtime, or a new join reading from the beginning) the consumer
fetches each partition a megabyte at a time, so a sparse topic (logins) is read to its end,
days of event time, before the dense one (payments) has read an hour, and every payment behind
the logins' time less ``max_skew`` was late and paired with nothing (2 pairs of 48 in a test
of two days' backlog).  A join therefore asks its application to align its inputs in event time
(``event_time_skew_s``, its ``max_skew``; :mod:`vigil.stream.alignment`), which the application
does unless given ``max_event_time_skew_s`` of its own: records of both topics then reach the
join in event-time order, as live traffic does, when the application reads both directly.

A side re-keyed by the application itself (a ``group_by`` into its own repartition topic) is
not aligned so, and loses pairs unless the join's ``max_skew`` and ``lateness`` allow for it
(found in review, 2026-12-05; the application warns of it at its start,
:meth:`IntervalJoin.input_warnings`):
- re-keyed records come back after the records they came from (exactly-once, once the
  checkpoint that re-keyed them has committed; at-least-once, once sent), and on a catch-up a
  release hands the join the other side's whole backlog first (read directly, or fetched
  faster): re-keyed events behind it by more than ``max_skew`` are late (a 12-hour backlog,
  ``max_skew`` 1 h, the other side read directly: 60 pairs of 720, those of the last hour);
- alignment is each process's own, so with several processes the re-keyed records of each
  interleave in a repartition partition out of order by up to the processes' skew (and,
  exactly-once, a checkpoint interval): with ``lateness`` 0, some live pairs were lost (32-43
  of 2,000 with two processes, exactly-once; none with one).
So give such a join a ``max_skew`` as long as the longest catch-up it must survive, and a
``lateness`` covering the processes' skew (and, exactly-once, a checkpoint interval); the
events of one side then wait that much longer in its store.

Events wait in the store encoded (the canonical encoding; an application with event types of
its own names them, ``event_types``, so they decode again) and expire past
``within`` behind the join's watermark: when their key comes again, or, for keys that went
quiet, by a walk over the store a step at a time (:class:`~vigil.stream.windows.QuietKeys`);
events older than the watermark are late (``ctx.late``) and join nothing.  Events without
the key (by default the entity the event is keyed by: no event-id fallback) join nothing
and are not stored.

Pairs are found only within one partition, so the join key must be the key the inputs are
partitioned by: each event's join key is checked against its record's Kafka key, and an event
whose keys differ is sent to the dead-letter topic naming both (joined by IP while both topics
were keyed by customer, pairs were found only when two customers happened to share a partition,
and the rest were missed without a word; a record keyed otherwise by a producer outside Vigil is
one letter, not a stopped application).  To join by another entity, re-key each input by it
first into a topic of its own (:func:`vigil.stream.repartition.group_by` with ``topics=`` the
input and a ``name``: one re-keying of both inputs puts both sides in one topic) and pass
``key=entity_key(kind)``.  A join key finer than the partitioning key (``customer|device``)
pairs correctly too, since equal join keys share a partition: ``partitioned_by_key=False`` turns
the check off for it.  With the default key, events pair by the entity they are keyed by *and
its kind*: a vendor ``acme`` and a customer ``acme`` share a key on ``events.saas``, not an
identity.  (Its waiting events are kept under ``<side>:<kind>:<value>``; versions before
December 2026 kept them under ``<side>:<value>``, and events waiting across that upgrade pair
with nothing, and expire.)

A key's waiting events of one side are one store entry, kept as they came: an event appends
to it and expired events are cut from its front, so waiting costs the same however many of
its key already wait (a list copied at every event made one busy key quadratic: 40,000 logins
of one customer took 30 s, 0.76 ms for the last ones); pairing looks at each of the other
side's, at most ``max_waiting``.  At most ``max_waiting`` events and
``max_waiting_bytes`` bytes wait per key and side: one entry is one changelog record, and a
record the changelog cannot take failed every checkpoint, and the restarted process the same
way on the same input (a flood of failed logins on one account would have stopped the
application for good).  An event over either limit is still paired with the other side's
waiting events, then sent to the dead-letter topic with the reason instead of waiting for
later ones: the key is flooded, and the flood is kept for an analyst, not dropped.  The
events already waiting stay (dropping them would let a flood hide an earlier event).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

import msgspec

from vigil.events.base import Event
from vigil.events.codec import EventCodec, encode, inert
from vigil.events.types import EVENT_CLASSES
from vigil.stream.base import Context, Operator, Record, StoreSpec
from vigil.stream.changelog import CHANGELOG_MAX_BYTES
from vigil.stream.windows import QuietKeys, duration_ms, to_ms

log = logging.getLogger(__name__)

OnMatch = Callable[[Event, Event, Context], None]

#: Each side's watermark (left, right).
_WATERMARK_KEYS = ("\x00wmL", "\x00wmR")
#: Per key and side by default (see the module): 4 MB stays well within a changelog record
#: (``vigil.stream.changelog.CHANGELOG_MAX_BYTES``, 16 MB), and 10,000 events of a few hundred
#: bytes fit it.
MAX_WAITING = 10_000
MAX_WAITING_BYTES = 4 << 20


def _default_key(event: Event) -> str | None:
    """The entity the event is keyed by (``Event.key`` falls back to the event id: no pair);
    the join pairs by its kind too."""
    return event.entities.get(event.key_entity)


def _tag(cls: type[Event]) -> object:
    return msgspec.inspect.type_info(cls).tag  # type: ignore[attr-defined]


def _shown(text: str) -> str:
    """A key as a reason quotes it: inert, and its first 80 characters (a long one left the
    reason's own words past where reasons are cut)."""
    return inert(text[:80]) + ("..." if len(text) > 80 else "")


class IntervalJoin(Operator[Event]):
    """``on_match(left, right, ctx)`` for each same-key pair with ``|t_left - t_right| <= within``,
    times in whole milliseconds (as windows take them: two events less than a millisecond over
    ``within`` apart may pair)."""

    def __init__(
        self,
        id: str,
        store: StoreSpec,
        *,
        left: str,
        right: str,
        within: timedelta | str | int,
        on_match: OnMatch,
        key: Callable[[Event], str | None] = _default_key,
        lateness: timedelta | str | int = 0,
        max_skew: timedelta | str | int = "1h",
        quiet: QuietKeys | None = None,
        event_types: Sequence[type[Event]] = (),
        max_waiting: int = MAX_WAITING,
        max_waiting_bytes: int = MAX_WAITING_BYTES,
        partitioned_by_key: bool = True,
        aligned: bool = True,
    ) -> None:
        if left == right:
            msg = f"join {id!r}: left and right must be different topics; got {left!r} twice"
            raise ValueError(msg)
        self.id = id
        self.store = store
        self.stores = (store,)
        self.left, self.right = left, right
        self.reads = (left, right)
        self.within = duration_ms(within, f"join {id!r}: within")
        self.lateness = duration_ms(lateness, f"join {id!r}: lateness")
        self.max_skew = duration_ms(max_skew, f"join {id!r}: max_skew")
        #: Its application aligns its inputs in event time (see the module docstring); not with
        #: ``aligned=False`` (an input whose records have no ``occurred_at``, say).
        self.event_time_skew_s = self.max_skew / 1000 if aligned else None
        for what, ms in (("within", self.within), ("lateness", self.lateness), ("max_skew", self.max_skew)):
            if ms < 0:
                msg = f"join {id!r}: {what} must not be negative; got {ms} ms"
                raise ValueError(msg)
        for what, limit in (("max_waiting", max_waiting), ("max_waiting_bytes", max_waiting_bytes)):
            if limit < 1:
                msg = f"join {id!r}: {what} must be at least 1; got {limit}"
                raise ValueError(msg)
        if max_waiting_bytes > CHANGELOG_MAX_BYTES // 2:
            msg = (
                f"join {id!r}: max_waiting_bytes must be at most {CHANGELOG_MAX_BYTES // 2:,} (half a "
                f"changelog record, leaving room for the framing); got {max_waiting_bytes:,}"
            )
            raise ValueError(msg)
        self.max_waiting = max_waiting
        self.max_waiting_bytes = max_waiting_bytes
        #: Events sent to the dead-letter topic for finding their key full (this process).
        self.refused = 0
        #: Whether each event's join key is checked against its record's Kafka key (see the
        #: module); ``mispartitioned`` counts the events dead-lettered for a difference.
        self.partitioned_by_key = partitioned_by_key
        self.mispartitioned = 0
        self.on_match = on_match
        self.key = key
        # (Only the canonical types by default: a type of the application's own failed to decode
        # at its first match, which stopped the application.)
        # By tag, an application's type replacing a canonical one of the same tag (two with one
        # tag in the union were msgspec's TypeError at construction).
        by_tag = {_tag(t): t for t in (*EVENT_CLASSES, *event_types)}
        self._codec = EventCodec(by_tag.values()) if event_types else EventCodec()
        #: Deletes the waiting events of keys that went quiet (both sides: "L:" and "R:").
        self.quiet = quiet if quiet is not None else QuietKeys("L:", "R:")

    def input_warnings(self, rekeyed: frozenset[str]) -> list[str]:
        """A side the application re-keys itself: see the module docstring ("A side re-keyed
        by the application itself...")."""
        sides = [topic for topic in (self.left, self.right) if topic in rekeyed]
        if not sides:
            return []
        return [
            f"join {self.id!r}: {' and '.join(sides)} re-keyed by this application: re-keyed "
            "events come back after the records they came from (exactly-once, a checkpoint later "
            "at best), a whole release later on a catch-up, and with several processes out of "
            "order by up to their skew, so those behind the other side by more than max_skew "
            f"({self.max_skew / 1000:g} s) are late and pair with nothing, as are those out of "
            f"order by more than lateness ({self.lateness / 1000:g} s); set max_skew to cover the "
            "longest catch-up, and lateness to cover the processes' skew (and, exactly-once, a "
            "checkpoint interval)"
        ]

    def process(self, batch: Sequence[Record[Event]], ctx: Context) -> None:
        state = ctx.state(self.store)
        marks: list[int | None] = [state.get(_WATERMARK_KEYS[0]), state.get(_WATERMARK_KEYS[1])]
        wm = self._joint(marks)
        by_kind = self.key is _default_key
        checked = self.partitioned_by_key
        for rec in batch:
            if rec.topic == self.left:
                me, side, other = 0, "L:", "R:"
            elif rec.topic == self.right:
                me, side, other = 1, "R:", "L:"
            else:
                continue
            k = self.key(rec.event)
            if not k:
                continue
            if checked and rec.key != k.encode():
                self.mispartitioned += 1
                reason = self._not_partitioned_by(rec, k)
                if self.mispartitioned == 1:
                    # Said once in the log too: an input keyed by something else sends every
                    # event here, and the dead-letter topic alone is easy to miss.
                    log.warning("%s (the first; the rest go to the dead-letter topic too)", reason)
                ctx.dead_letter(rec, reason)
                continue
            if by_kind:
                k = f"{rec.event.key_entity}:{k}"
            t = to_ms(rec.event.occurred_at)
            if wm is not None and t < wm:
                ctx.late(rec)
                continue
            mark = marks[me]
            if mark is None or t - self.lateness > mark:
                marks[me] = t - self.lateness
                state.set(_WATERMARK_KEYS[me], marks[me])
                wm = self._joint(marks)
            # (Not None: this side has a watermark now.)  Entries before the horizon can no
            # longer match an accepted event (one at the watermark matches an entry exactly
            # ``within`` older: the bound is inclusive).
            horizon = (wm if wm is not None else t) - self.within
            for entry_t, raw in self._live(state, other + k, horizon)[1]:
                if abs(t - entry_t) <= self.within:
                    waiting = self._codec.decode(raw)
                    if side == "L:":
                        self.on_match(rec.event, waiting, ctx)
                    else:
                        self.on_match(waiting, rec.event, ctx)
            size, mine = self._live(state, side + k, horizon)
            if self.quiet.counted(not mine):
                self.quiet.step(state, partial(_expired, horizon=horizon))
            raw = encode(rec.event)
            if len(mine) >= self.max_waiting or size + len(raw) > self.max_waiting_bytes:
                # At a limit, expired events behind a later one (which the front cut leaves)
                # go first: counted, they refused a live event, whose pairs were then lost.
                size, mine = self._purged(state, side + k, size, mine, horizon)
                if len(mine) >= self.max_waiting or size + len(raw) > self.max_waiting_bytes:
                    self._refuse(rec, ctx, k, side, len(mine), size, len(raw))
                    continue
            mine.append([t, raw])
            state.set(side + k, [size + len(raw), mine])

    def _joint(self, marks: list[int | None]) -> int | None:
        """The join's watermark: the lower side's, but at most ``max_skew`` behind the other
        (a side with none yet counts as far behind); ``None`` before any event."""
        left, right = marks
        if left is None or right is None:
            ahead = right if left is None else left
            return None if ahead is None else ahead - self.max_skew
        return max(min(left, right), max(left, right) - self.max_skew)

    def _live(self, state: Any, skey: str, horizon: int) -> tuple[int, list[list[Any]]]:
        """A key's waiting events of one side, ``(their encoded bytes, [[time, event], ...])``,
        the expired ones at the front cut (written back if any were).

        Only the front: events wait in the order they came, which is time order but for the
        lateness the watermark allows, so an expired event behind a later one waits until that
        one expires too (it matches nothing meanwhile: an accepted event is at or after the
        watermark, more than ``within`` after it).  Checking every one was the copy per event
        that made a busy key quadratic."""
        stored = state.get(skey)
        if not stored:
            return 0, []
        size, entries = _unpacked(stored)
        cut = 0
        end = len(entries)
        while cut < end and entries[cut][0] < horizon:
            size -= len(entries[cut][1])
            cut += 1
        if cut:
            del entries[:cut]
            if entries:
                state.set(skey, [size, entries])
            else:
                state.delete(skey)
        return size, entries

    def _purged(
        self, state: Any, skey: str, size: int, entries: list[list[Any]], horizon: int
    ) -> tuple[int, list[list[Any]]]:
        """A key's waiting events of one side without any expired one, wherever it stands
        (written back if any was): the whole list's copy, made only at a limit."""
        kept = [entry for entry in entries if entry[0] >= horizon]
        if len(kept) == len(entries):
            return size, entries
        size = sum(len(entry[1]) for entry in kept)
        if kept:
            state.set(skey, [size, kept])
        else:
            state.delete(skey)
        return size, kept

    def _not_partitioned_by(self, rec: Record[Event], k: str) -> str:
        kafka_key = "none" if rec.key is None else f"'{_shown(rec.key.decode('utf-8', 'replace'))}'"
        return (
            f"join {self.id!r}: the join key '{_shown(k)}' of {rec.topic}[{rec.partition}]@{rec.offset} "
            f"is not the key it is partitioned by ({kafka_key}): events pair only within one "
            "partition, so both inputs must be keyed by the join key (re-key them with group_by; "
            "a join key finer than the partitioning key: partitioned_by_key=False)"
        )

    def _refuse(
        self, rec: Record[Event], ctx: Context, k: str, side: str, n: int, size: int, more: int
    ) -> None:
        """Dead-letter an event whose key has as many of its side waiting as it may hold."""
        self.refused += 1
        which, other = ("left", "right") if side == "L:" else ("right", "left")
        ctx.dead_letter(
            rec,
            f"join {self.id!r}: key '{_shown(k)}' already has {n:,} {which} events ({size:,} bytes) "
            f"waiting, at most {self.max_waiting:,} events and {self.max_waiting_bytes:,} bytes "
            f"with this one's {more:,}: it was paired with the waiting {other} events, and does "
            "not wait for later ones",
        )


def _unpacked(stored: Any) -> tuple[int, list[list[Any]]]:
    """``(bytes, entries)`` of a stored side: ``[bytes, [[time, event], ...]]``, or as written
    before the limits, ``[[time, event], ...]`` alone (its bytes counted once, here)."""
    if stored and type(stored[0]) is int:
        return stored[0], stored[1]
    return sum(len(entry[1]) for entry in stored), stored


def _expired(stored: Any, horizon: int) -> bool:
    """Whether a key's waiting events can match nothing more."""
    return all(entry[0] < horizon for entry in _unpacked(stored)[1])
