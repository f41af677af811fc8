"""Threshold / velocity rules: count, sum or distinct count over a sliding window, per group.

Sigma's correlation shape::

    type: threshold
    match: {type: mfa_challenge, where: {payload.result: denied}}
    group_by: [customer]            # any entity kind or field path; several make a composite key
    timespan: 10m                   # sliding window on event time
    aggregate: count                # count | sum | distinct
    field: payload.amount_usd       # for sum and distinct
    condition: {gte: 5}
    related: [ip]                   # optional: distinct values listed as related entities
    cooldown: 5m                    # optional: quiet time after firing (default: the timespan)

The window keeps the matching events of the last ``timespan`` per group; the rule fires
on the event that makes the condition true, then stays quiet for that group for
``cooldown`` (one ``timespan`` unless set) so one burst is one alert.  Windows are spans of
event time: an event that arrives after newer ones of its group is placed in time order and
judged in the window ending at it, then in each window ending at a newer event within a span of
it, any of which it may complete (the first that fires fires, as in event-time order).  A
firing uses up the events up to its window's end; later ones stay for the next burst.  An event
delivered twice (the same id and time) counts once while the first delivery is kept (not once a
firing has used it up).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from vigil.detect.fields import Match, bounded, compare, compile_getter, kept, short_name
from vigil.detect.kinds.base import (
    EvidenceMaker,
    Expiry,
    Hit,
    decimal_text,
    entity_ref,
    related_kind,
    span_text,
    ts,
)
from vigil.detect.kinds.common import GroupedDetector
from vigil.detect.rules.loader import LocDict
from vigil.detect.rules.parse import Parser
from vigil.events.base import Event
from vigil.events.types import EntityRef
from vigil.stream.base import State

CONTEXT = frozenset({"count", "value", "span", "group"})
#: Bound on events kept per group window (a runaway group must not exhaust memory).
MAX_WINDOW = 2000
#: How late an event may be and still count in its window (as sequences allow): the items of this
#: much event time before the window are kept too, within MAX_WINDOW (the newest first).
LATE_S = 3600.0
#: A running sum within this share of what it added and took away of the bound is checked
#: against the window's own sum.
_SUM_SLACK = 1e-9


@dataclass(frozen=True)
class ThresholdParams:
    match: Match
    group_by: tuple[str, ...]
    timespan: timedelta
    aggregate: str
    field: str | None
    condition: tuple[str, float]
    related: tuple[str, ...] = ()
    cooldown: timedelta | None = None


def parse(d: LocDict, p: Parser, what: str) -> ThresholdParams | None:
    m = p.mapping(d.get("match"), d.mark("match"), f"{what}.match") if "match" in d else None
    if "match" not in d:
        p.error(d.loc, f"{what} is missing required key 'match' ({{type: ..., where: ...}})")
    match = p.match(m, f"{what}.match") if m is not None else None
    types = match.types if match else None
    group_by = _paths(p, d, "group_by", what, types, required=True)
    timespan = p.duration(d, "timespan", what)
    aggregate = p.choice(d, "aggregate", what, ("count", "sum", "distinct"), default="count")
    field_path = None
    if aggregate == "count" and "field" in d:
        # Ignored, the rule counted events: "sum of amount_usd >= 2" fired on two $0.50 ones.
        p.error(
            d.mark("field"),
            f"{what}.field is used by aggregate 'sum' or 'distinct' only; the aggregate is 'count' "
            "(say `aggregate: sum` or `aggregate: distinct`, or leave `field` out)",
        )
    if aggregate in ("sum", "distinct"):
        if "field" not in d:
            p.error(
                d.loc, f"{what}: aggregate {aggregate!r} needs 'field' (the path to sum or count distinct)"
            )
        else:
            field_path = p.path(
                d["field"], d.mark("field"), f"{what}.field", types, number=aggregate == "sum"
            )
    condition = p.comparison(d, "condition", what)
    related = _paths(p, d, "related", what, types, required=False)
    cooldown = p.duration(d, "cooldown", what, default=timedelta(0)) if "cooldown" in d else None
    if condition is not None and aggregate in ("count", "distinct") and _never(*condition):
        # A window holding the event it is asked at counts 1 at least, in whole numbers (an
        # event without the distinct field is not counted, so it asks nothing).
        counted = "count" if aggregate == "count" else "distinct count"
        p.error(
            d.mark("condition"),
            f"{what}.condition: a {counted} is a whole number of at least 1 when it is asked, so "
            f"{condition[0]} {condition[1]:g} never holds",
        )
        return None
    if condition is not None and aggregate in ("count", "distinct") and _needs_more(*condition):
        # A window keeps MAX_WINDOW events: a count above it was accepted and never fired.
        p.error(
            d.mark("condition"),
            f"{what}.condition: a {aggregate} can reach at most {MAX_WINDOW:,} (the events a window "
            f"keeps); got {condition[0]} {condition[1]:g}",
        )
        return None
    if (
        match is None
        or not group_by
        or timespan is None
        or aggregate is None
        or condition is None
        or related is None
    ):
        return None
    return ThresholdParams(match, group_by, timespan, aggregate, field_path, condition, related, cooldown)


def _never(op: str, bound: float) -> bool:
    """Whether ``{op: bound}`` holds of no whole number from 1 up."""
    return (
        (op == "lt" and bound <= 1)
        or (op == "lte" and bound < 1)
        or (op == "eq" and (bound < 1 or not float(bound).is_integer()))
    )


def _needs_more(op: str, bound: float) -> bool:
    """Whether ``{op: bound}`` holds of no count a window can reach (at most MAX_WINDOW)."""
    return (op in ("gte", "eq") and bound > MAX_WINDOW) or (op == "gt" and bound >= MAX_WINDOW)


def _paths(
    p: Parser, d: LocDict, key: str, what: str, types: frozenset[str] | None, *, required: bool
) -> tuple[str, ...] | None:
    names = p.strings(d, key, what, required=required)
    if names is None:
        if key in d:
            return None
        if required:
            p.error(
                d.loc, f"{what} is missing required key {key!r} (an entity kind or field path, or a list)"
            )
            return None
        return ()
    out = [p.path(n, d.mark(key), f"{what}.{key}", types, every=required) for n in names]
    return None if None in out else tuple(o for o in out if o)


class ThresholdDetector(GroupedDetector):
    kind = "threshold"

    def __init__(self, rule: Any, env: Any) -> None:
        params: ThresholdParams = rule.params
        super().__init__(rule, env, params.group_by)
        self.p = params
        self._match = params.match.compile()
        self._value = compile_getter(params.field) if params.field else None
        self._related = tuple((related_kind(short_name(r)), compile_getter(r)) for r in params.related)
        self._span = params.timespan.total_seconds()
        self._cooldown = (params.cooldown or params.timespan).total_seconds()
        self._late = LATE_S
        self._evidence = EvidenceMaker(
            [*params.match.paths, *params.group_by, *([params.field] if params.field else [])],
            rule.explanation,
        )

    @property
    def types(self) -> frozenset[str]:
        return self.p.match.types

    def wants(self, event: Event) -> bool:
        return self._match(event)

    def process(self, event: Event, state: State, hits: list[Hit], route: str | None = None) -> None:
        if not self._match(event):
            return
        key = self.group_key(event, route)
        if key is None:
            return
        now = ts(event)
        skey = f"w:{key}"
        window: dict[str, Any] = state.get(skey) or {"items": [], "quiet": 0.0}
        items: list[list[Any]] = window["items"]
        value: Any = kept(self._value(event)) if self._value else 1
        if value is None:
            return
        related = [[name, bounded(str(v))] for name, get in self._related if (v := get(event)) is not None]
        evidence = self._evidence(event)
        # Items are kept in event-time order: events of a key may arrive out of order (two route
        # processes, one catching up), and a window is a span of event time, not of arrivals.
        if not items or now >= items[-1][0]:
            at = len(items)  # in order, as nearly every event is: no search
            lo = at
            while lo and items[lo - 1][0] == now:
                lo -= 1
        else:
            lo = bisect_left(items, now, key=_time)
            at = bisect_right(items, now, key=_time, lo=lo)
        # A source's redelivery (the same event id, so the same time) counts once while the
        # first delivery is kept: counted twice it made two deposits look like three.
        for i in range(lo, at):
            if items[i][2][0] == evidence[0]:
                return
        late = at < len(items)
        if value == 0 and self.p.aggregate == "sum":
            # A sum's zero adds nothing to any window, and kept it took a place under MAX_WINDOW:
            # 2,000 exports of no records pushed the large ones out before the next came.  Not
            # kept; one in order still ends a window (one a cooldown held back may fire at it).
            if late or not items:
                return
        else:
            items.insert(at, [now, value, evidence, related])
        # Kept LATE_S longer than the window, for late events.
        cutoff = items[-1][0] - self._span - self._late
        drop = 0
        while drop < len(items) and items[drop][0] < cutoff:
            drop += 1
        if drop or len(items) > MAX_WINDOW:
            gone = max(drop, len(items) - MAX_WINDOW)
            del items[:gone]
            # (This event's place moves with them: left as it was, a late event's windows were
            # looked for one item on, and the one it completed was skipped.)
            at -= gone
        # The window ending at this event; for a late one, also each window ending at a newer
        # event within a span of it (the windows it joins, any of which it may complete), in time
        # order, the first to fire firing.  Swept with running aggregates, so a late event costs a
        # pass over the items it can affect, not one per window (an attacker can send late events
        # on purpose).  Each judged unless the group is quiet at its end, and a firing quiets the
        # group from the end it fired at.
        op, bound = self.p.condition
        cooldown = self._cooldown
        fired: list[float] = window.get("fired") or (
            [window["quiet"] - cooldown] if window["quiet"] else []  # kept before "fired" was
        )
        fired_now = False
        # (A late event older than all kept went with them: it completes no window.)
        ends = ([] if at < 0 else self._ends(items, at, now)) if late else [now]
        for end, lo, hi, approx, slack in self._sweep(items, ends):
            # Quiet within a cooldown of a firing, on either side: in event-time order a window
            # that close before it would have fired instead (one burst, one alert, whichever
            # half arrives first).  A separate, earlier burst completed by a late event fires.
            if hi == lo or (fired and any(f - cooldown < end < f + cooldown for f in fired)):
                continue  # (empty: a late event older than what is kept)
            # A running sum rounds differently from the window's own: it decides only where it
            # cannot tip the comparison (within a share of everything it added and took away),
            # and a firing reports the window's own total.  A count is exact, and needs no copy
            # of the window.
            aggregate = self.p.aggregate
            exact = aggregate != "count" and (
                end == now or (aggregate == "sum" and abs(approx - bound) <= slack)
            )
            inside = items[lo:hi] if exact else None
            agg = self._aggregate(inside) if inside is not None else approx
            if compare(op, agg, bound):
                inside = inside if inside is not None else items[lo:hi]
                hits.append(self._hit(key, inside, self._aggregate(inside)))
                fired.append(end)
                fired_now = True
                # What the alert used goes; newer items stay (a late event firing cleared
                # them all, and with them most of the next burst), and so do older ones (an
                # earlier burst still short of the bound, which an event late on its way may
                # complete: cleared, it never fired).
                del items[lo:hi]
                break
        horizon = max(now, items[-1][0] if items else now) - self._span - self._late
        if fired and (fired_now or fired[0] + cooldown <= horizon):
            # After a firing, or once the oldest firing can quiet no window a late event makes.
            # (At most MAX_WINDOW, the newest: with a cooldown far shorter than the span, every
            # event firing kept a span and an hour of them, scanned at each event.)
            fired = sorted(f for f in fired if f + cooldown > horizon)[-MAX_WINDOW:]
            window["fired"] = fired
            window["quiet"] = max((f + cooldown for f in fired), default=0.0)
        window["items"] = items
        state.set(skey, window)

    def expiries(self) -> tuple[Expiry, ...]:
        return (Expiry("w:", self._stale_window),)

    def _stale_window(self, window: Any, now: float) -> bool:
        return bool(now >= window["quiet"] and all(item[0] < now - self._span for item in window["items"]))

    def _ends(self, items: list[list[Any]], at: int, now: float) -> list[float]:
        """The ends of the windows a late event at ``items[at]`` (time ``now``) is in: its own
        time, then each later time within a span of it."""
        ends = [now]
        last = now + self._span
        for item in items[at + 1 :]:
            t = float(item[0])
            if t > last:
                break
            if t != ends[-1]:
                ends.append(t)
        return ends

    def _sweep(
        self, items: list[list[Any]], ends: list[float]
    ) -> Iterator[tuple[float, int, int, float, float]]:
        """For each of ``ends`` (ascending): the window ``[end - span, end]`` as ``items[lo:hi]``
        and its aggregate, kept up to date as the window slides (a sum rounds as it goes, within
        the slack given with it).  The first end's aggregate is NaN for a sum or distinct count
        (the caller takes the window's own: an event in order, nearly every one, pays no pass
        over the items here)."""
        aggregate = self.p.aggregate
        lo = hi = 0
        total = magnitude = 0.0
        counts: dict[str, int] = {}
        for i, end in enumerate(ends):
            new_hi = bisect_right(items, end, key=_time, lo=hi)
            new_lo = bisect_left(items, end - self._span, key=_time, lo=lo)
            if aggregate == "count":
                lo, hi = new_lo, new_hi
                yield end, lo, hi, float(hi - lo), 0.0
                continue
            if i == 0:
                yield end, new_lo, new_hi, math.nan, 0.0
                lo = hi = new_lo  # the running aggregate starts from an empty window here
                continue
            # Added before removed: an item both entering and leaving nets out.
            for item in items[hi:new_hi]:
                value = item[1]
                if aggregate == "sum":
                    number = float(value) if isinstance(value, (int, float)) else 0.0
                    total += number
                    magnitude += abs(number)
                else:
                    text = str(value)
                    counts[text] = counts.get(text, 0) + 1
            for item in items[lo:new_lo]:
                value = item[1]
                if aggregate == "sum":
                    number = float(value) if isinstance(value, (int, float)) else 0.0
                    total -= number
                    magnitude += abs(number)
                else:
                    text = str(value)
                    left = counts[text] - 1
                    if left:
                        counts[text] = left
                    else:
                        del counts[text]
            lo, hi = new_lo, new_hi
            # Rounding error of the running sum is bounded by a share of all it added and took
            # away (one huge value in and out again wipes out the small ones beside it).
            yield (
                end,
                lo,
                hi,
                total if aggregate == "sum" else float(len(counts)),
                _SUM_SLACK * max(1.0, magnitude),
            )

    def _aggregate(self, items: list[list[Any]]) -> float:
        if self.p.aggregate == "count":
            return float(len(items))
        if self.p.aggregate == "sum":
            return float(sum(float(i[1]) for i in items if isinstance(i[1], (int, float))))
        return float(len({str(i[1]) for i in items}))

    def _hit(self, key: str, items: list[list[Any]], agg: float) -> Hit:
        related: dict[tuple[str, str], None] = {}
        for item in items:
            for name, value in item[3]:
                # (Items kept before related entities went by kinds hold the field's name.)
                related[(related_kind(name), value)] = None
        entity = entity_ref(key)
        # Not the alert's own entity, by the kind it goes by (a pump's organiser buying his own
        # listing was among its takers, as account:org beside the alert's maker_account:org).
        own = (related_kind(self.rule.entity or entity.kind), entity.id)
        refs = [EntityRef(kind=k, id=v) for k, v in related if (k, v) != own]
        return Hit(
            entity=entity,
            evidence=[i[2] for i in items],
            related=refs[:50],
            context={
                "count": str(len(items)),
                "value": _number_text(agg),
                "span": span_text(self.p.timespan),
                "group": key,
            },
        )


def _time(item: list[Any]) -> float:
    return float(item[0])


def _number_text(value: float) -> str:
    """A count or sum as an analyst reads it: whole numbers in full (``1,234,567``; ``:g`` gave
    ``1.23457e+06``), others as :func:`decimal_text` writes them (``3,000.50``, ``0.00037035``)."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if value.is_integer():
        return f"{int(value):,}"
    return decimal_text(value, grouped=True)
