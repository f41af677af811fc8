"""Interval join of two co-partitioned keyed streams.

An application with two inputs keyed by the same entity (``events.identity`` and
``events.payments``, both keyed by customer) sees partition ``p`` of both in one place
with one state (see :mod:`vigil.stream.app`).  :class:`IntervalJoin` pairs every left
event with every right event of the same key whose event times are at most ``within``
apart, whichever arrives first, and hands each pair to ``on_match`` once.

Events wait in the store as their encoded bytes (exactly what arrived) and expire past
``within`` plus the allowed lateness behind the partition's watermark: when their key comes
again, or, for keys that went quiet, by a walk over the store a step at a time
(:class:`~vigil.stream.windows.QuietKeys`); events older than the watermark are late
(``ctx.late``) and join nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

from vigil.events.base import Event
from vigil.events.codec import EventCodec, encode
from vigil.stream.base import Context, Operator, Record, StoreSpec
from vigil.stream.windows import QuietKeys, duration_ms, to_ms

OnMatch = Callable[[Event, Event, Context], None]

_WATERMARK_KEY = "\x00wm"


def _default_key(event: Event) -> str | None:
    return event.key()


class IntervalJoin(Operator[Event]):
    """``on_match(left, right, ctx)`` for each same-key pair with ``|t_left - t_right| <= within``."""

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
        quiet: QuietKeys | None = None,
    ) -> None:
        if left == right:
            msg = f"join {id!r}: left and right must be different topics; got {left!r} twice"
            raise ValueError(msg)
        self.id = id
        self.store = store
        self.stores = (store,)
        self.left, self.right = left, right
        self.within = duration_ms(within)
        self.lateness = duration_ms(lateness)
        self.on_match = on_match
        self.key = key
        self._codec = EventCodec()
        #: Deletes the waiting events of keys that went quiet (both sides: "L:" and "R:").
        self.quiet = quiet if quiet is not None else QuietKeys("L:", "R:")

    def process(self, batch: Sequence[Record[Event]], ctx: Context) -> None:
        state = ctx.state(self.store)
        for rec in batch:
            if rec.topic == self.left:
                side, other = "L:", "R:"
            elif rec.topic == self.right:
                side, other = "R:", "L:"
            else:
                continue
            k = self.key(rec.event)
            if k is None:
                continue
            t = to_ms(rec.event.occurred_at)
            wm: int | None = state.get(_WATERMARK_KEY)
            if wm is not None and t < wm:
                ctx.late(rec)
                continue
            if wm is None or t - self.lateness > wm:
                wm = t - self.lateness
                state.set(_WATERMARK_KEY, wm)
            # Entries before the horizon can no longer match an accepted event (one at the
            # watermark matches an entry exactly ``within`` older: the bound is inclusive).
            horizon = wm - self.within
            for entry_t, raw in self._live(state, other + k, horizon):
                if abs(t - entry_t) <= self.within:
                    waiting = self._codec.decode(raw)
                    if side == "L:":
                        self.on_match(rec.event, waiting, ctx)
                    else:
                        self.on_match(waiting, rec.event, ctx)
            mine = self._live(state, side + k, horizon)
            if self.quiet.counted(not mine):
                self.quiet.step(state, partial(_expired, horizon=horizon))
            mine.append([t, encode(rec.event)])
            state.set(side + k, mine)

    def _live(self, state: Any, skey: str, horizon: int) -> list[list[Any]]:
        entries: list[list[Any]] = state.get(skey) or []
        kept = [e for e in entries if e[0] >= horizon]
        if len(kept) != len(entries):
            if kept:
                state.set(skey, kept)
            else:
                state.delete(skey)
        return kept


def _expired(stored: Any, horizon: int) -> bool:
    """Whether a key's waiting events can match nothing more."""
    return all(entry[0] < horizon for entry in stored)
