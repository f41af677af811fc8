"""Deviation from an entity's own history.

::

    type: deviation
    match: {type: withdrawal_request}
    group_by: customer
    measure: amount            # amount | new_value | travel | hour | gap | passthrough
    field: payload.amount_usd
    min_history: 5             # score only once this many events are known
    min_value: 1000            # and only values at least this large (amount, passthrough)
    condition: {gte: 10}

Measures (the score the condition is applied to):

- ``amount``: the value over the largest value seen before for the group (``min_history``
  counts the events that carried a number there: three withdrawals without ``amount_usd`` and
  one of $100 are a history of one amount, not four);
- ``new_value``: 1 when the value was never seen for the group at or before the event's time
  (else 0), case-folded and remembered as ``first_seen`` remembers values (in event time, the
  last 256, a value in regular use kept);
- ``travel``: km/h needed to get from the previous event's place (``field`` is a Geo with
  lat/lon) to this one: impossible travel;
- ``hour``: the share of the group's past events in this UTC hour (low = unusual);
- ``gap``: days since the group's previous event (dormancy);
- ``passthrough``: the value over the sum of ``history.field`` of the ``history`` events in
  the last ``history.window`` (money in, then out: rapid in-out), counting distinct
  ``history.source`` values toward ``min_history``.

Peer groups.  ``peers: <path>`` keeps the history per value of that path instead of per
entity (``peers: payload.asset``: every customer withdrawing the same asset), so an entity is
judged against what its peers do, even one with no history of its own (a new account's first
withdrawal).  With peers, ``amount`` is the value over the peers' mean (their largest would
be one whale's), and ``hour`` the peers' share of events in this hour; the alert is about the
``group_by`` entity, with the peer group in ``{peers}``.  Peers work with those two measures.

History is updated after scoring, with every matching event.  ``only`` adds conditions an
event must meet to be *scored* (it still feeds the history); ``first_seen: <path>`` (with
``seen_also`` entries feeding the same history) scores only events whose value there is new
for the group, e.g. money passed on to an address the customer never used: new in event time,
seen at or before the event by nothing that has arrived (a sighting that arrives after the
event was scored cannot take back its alert).
"""

from __future__ import annotations

import math
from bisect import bisect_right, insort
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from vigil.detect.fields import (
    Condition,
    Getter,
    Match,
    bounded,
    compare,
    compile_getter,
    key_of,
    seen_text,
    short_name,
    to_float,
)
from vigil.detect.kinds.base import EvidenceMaker, Expiry, Hit, at_epoch, decimal_text, entity_ref, ts
from vigil.detect.kinds.common import (
    CompiledEntry,
    FieldEntry,
    GroupedDetector,
    first_seen_times,
    note_time,
    parse_entries,
    see,
    time_before,
)
from vigil.detect.rules.loader import LocDict
from vigil.detect.rules.parse import Parser
from vigil.events.base import Event
from vigil.stream.base import State

CONTEXT = frozenset(
    {
        "measure",
        "score",
        "baseline",
        "history_count",
        "group",
        "speed_kmh",
        "ratio",
        "peers",
        "other_country",
        "other_at",
    }
)
#: The context names each measure sets (besides measure, score and group; peers with peers):
#: a template naming another measure's always read "(unknown)" (found in review).
_MEASURE_CONTEXT = {
    "amount": frozenset({"baseline", "history_count"}),
    "new_value": frozenset({"history_count"}),
    "travel": frozenset({"speed_kmh", "baseline", "other_country", "other_at"}),
    "hour": frozenset({"history_count"}),
    "gap": frozenset({"history_count"}),
    "passthrough": frozenset({"ratio", "baseline", "history_count"}),
}


def context_of(params: DeviationParams) -> frozenset[str]:
    """The context names a rule with these settings sets (see :data:`CONTEXT`)."""
    common = {"measure", "score", "group", *(("peers",) if params.peers else ())}
    return frozenset(common) | _MEASURE_CONTEXT.get(params.measure, frozenset())


#: Measures that can read a peer group's history (see the module docstring).
PEER_MEASURES = ("amount", "hour")
MEASURES = ("amount", "new_value", "travel", "hour", "gap", "passthrough")
MAX_INFLOWS = 64
#: Logins' places kept per group for travel (the newest): a login arriving after later ones is
#: compared with its neighbours in event time, not with the newest alone.
MAX_PLACES = 8
#: A group's inflows go (the engine's sweep) once none is inside the history window even for
#: an event this late (event-time seconds): they were pruned only when the group had a new one.
INFLOWS_LATE_S = 3600.0


@dataclass(frozen=True)
class HistorySpec:
    match: Match
    field: str
    source: str | None
    window: timedelta
    #: Count only inflows from sources new to the group (money from strangers).
    new_sources_only: bool = False


@dataclass(frozen=True)
class DeviationParams:
    match: Match
    group_by: tuple[str, ...]
    measure: str
    field: str | None
    min_history: int
    condition: tuple[str, float]
    min_value: float | None = None
    history: HistorySpec | None = None
    #: Conditions an event must also meet to be scored (it still updates the history).
    only: tuple[Condition, ...] = ()
    #: Score only events whose value here is new for the group (fed also by ``seen_also``).
    first_seen: str | None = None
    seen_also: tuple[FieldEntry, ...] = ()
    #: Keep the history per value of this path (a peer group) instead of per entity.
    peers: str | None = None


def parse(d: LocDict, p: Parser, what: str) -> DeviationParams | None:
    m = p.mapping(d.get("match"), d.mark("match"), f"{what}.match")
    match = p.match(m, f"{what}.match") if m is not None else None
    types = match.types if match else None
    measure = p.choice(d, "measure", what, MEASURES)
    field_path = None
    if measure not in ("gap", "hour"):
        if "field" not in d:
            p.error(d.loc, f"{what}: measure {measure!r} needs 'field' (the path it measures)")
        else:
            numeric = measure in ("amount", "passthrough")
            field_path = p.path(d["field"], d.mark("field"), f"{what}.field", types, number=numeric)
    groups = p.strings(d, "group_by", what) or []
    if not groups:
        p.error(d.mark("group_by"), f"{what} needs 'group_by' (whose history: an entity kind or path)")
    gpaths = [p.path(g, d.mark("group_by"), f"{what}.group_by", types, every=True) for g in groups]
    min_history = p.integer(d, "min_history", what, default=1, minimum=0)
    condition = p.comparison(d, "condition", what)
    min_value = p.number(d, "min_value", what)
    history = None
    if measure == "passthrough":
        h = p.mapping(d.get("history"), d.mark("history"), f"{what}.history")
        if h is not None:
            p.keys(
                h,
                f"{what}.history",
                required=("type", "field", "window"),
                optional=("where", "source", "new_sources_only"),
            )
            hm = p.match(h, f"{what}.history")
            hf = p.path(
                h.get("field"),
                h.mark("field"),
                f"{what}.history.field",
                hm.types if hm else None,
                number=True,
            )
            hs = (
                p.path(h["source"], h.mark("source"), f"{what}.history.source", hm.types if hm else None)
                if "source" in h
                else None
            )
            hw = p.duration(h, "window", f"{what}.history")
            if hm and hf and hw:
                history = HistorySpec(hm, hf, hs, hw, p.boolean(h, "new_sources_only", f"{what}.history"))
        if history is None:
            return None
    only: list[Condition] = []
    if "only" in d:
        o = p.mapping(d["only"], d.mark("only"), f"{what}.only")
        if o is not None:
            for path, spec in o.items():
                only += p.conditions(path, spec, o.mark(path), f"{what}.only", types)
    first_seen = (
        p.path(d["first_seen"], d.mark("first_seen"), f"{what}.first_seen", types)
        if "first_seen" in d
        else None
    )
    also = parse_entries(d, "seen_also", p, what) if "seen_also" in d else []
    if also is None:
        return None
    peers = p.path(d["peers"], d.mark("peers"), f"{what}.peers", types) if "peers" in d else None
    if "peers" in d:
        if measure is not None and measure not in PEER_MEASURES:
            p.error(
                d.mark("peers"),
                f"{what}.peers works with measure {' or '.join(PEER_MEASURES)}; got {measure!r}",
            )
            return None
        if "first_seen" in d or "seen_also" in d:
            p.error(d.mark("peers"), f"{what}.peers cannot be combined with first_seen or seen_also")
            return None
        if peers is None:
            return None
    if not match or not measure or not gpaths or None in gpaths or min_history is None or not condition:
        return None
    if measure not in ("gap", "hour") and field_path is None:
        return None
    return DeviationParams(
        match,
        tuple(g for g in gpaths if g),
        measure,
        field_path,
        min_history,
        condition,
        min_value,
        history,
        tuple(only),
        first_seen,
        tuple(also),
        peers,
    )


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


class DeviationDetector(GroupedDetector):
    kind = "deviation"

    def __init__(self, rule: Any, env: Any) -> None:
        params: DeviationParams = rule.params
        # With peers the history (the state, and so the routing) is the peer group's; the
        # alert is still about the group_by entity.
        super().__init__(rule, env, (params.peers,) if params.peers else params.group_by)
        self.p = params
        self._entity = (
            tuple((short_name(g), compile_getter(g)) for g in params.group_by) if params.peers else None
        )
        self._match = params.match.compile()
        #: ``only`` as one check (``None``: no conditions), not a generator per event.
        self._only = Match(params.match.types, params.only).compile_where()
        self._first_seen = compile_getter(params.first_seen) if params.first_seen else None
        self._also = [CompiledEntry(e) for e in params.seen_also]
        self._value: Getter | None = compile_getter(params.field) if params.field else None
        self._types = (
            params.match.types
            | (params.history.match.types if params.history else frozenset())
            | frozenset().union(*(e.types for e in self._also))
        )
        hist = params.history
        self._hist_match = hist.match.compile() if hist else None
        self._hist_value = compile_getter(hist.field) if hist else None
        self._hist_source = compile_getter(hist.source) if hist and hist.source else None
        self._hist_group = self._group
        self._window = hist.window.total_seconds() if hist else 0.0
        extra = [*params.match.paths, *([params.field] if params.field else [])]
        self._evidence = EvidenceMaker([*extra, *([hist.field] if hist else [])], rule.explanation)

    @property
    def types(self) -> frozenset[str]:
        return self._types

    def expiries(self) -> tuple[Expiry, ...]:
        # The baselines (h:) and values seen (s:) are the group's profile, kept by design.
        return (Expiry("i:", self._inflows_over),) if self._hist_value is not None else ()

    def _inflows_over(self, flows: Any, now: float) -> bool:
        return all(now - f[0] > self._window + INFLOWS_LATE_S for f in flows)

    def process(self, event: Event, state: State, hits: list[Hit], route: str | None = None) -> None:
        key = self.group_key(event, route)
        if key is None:
            return
        now = ts(event)
        if self._hist_match is not None and self._hist_match(event):
            self._inflow(key, event, state, now)
        for entry in self._also:
            if entry.match(event):  # (a compiled match checks the event's type first)
                self._remember(state, key, entry.value(event), now)
        if not self._match(event):
            return
        new = True
        if self._first_seen is not None:
            value = self._first_seen(event)
            new = value is not None and not self._seen(state, key, seen_text(value), now)
            self._remember(state, key, value, now)
        skey = f"h:{key}"
        h: dict[str, Any] = state.get(skey) or {"n": 0}
        value = self._value(event) if self._value else None  # read once, for scoring and history
        scored = (
            self._score(h, value, now, state, key)
            if new and (self._only is None or self._only(event))
            else None
        )
        fired = False
        if scored is not None:
            score, context, evidence = scored
            op, bound = self.p.condition
            # Whom the alert is about: the group itself, or with peers the event's entity.
            entity = key if self._entity is None else key_of(self._entity, event)
            if entity is not None and compare(op, score, bound):
                if self._entity is not None:
                    context = {**context, "peers": key}
                fired = True
                hits.append(
                    Hit(
                        entity=entity_ref(entity),
                        evidence=[*evidence, self._evidence(event)],
                        context={
                            "measure": self.p.measure,
                            "score": f"{score:.2f}",
                            "group": entity,
                            **context,
                        },
                    )
                )
        self._update(h, event, value, now, outlier=fired)
        state.set(skey, h)

    # Values seen (``s:``) keep the earliest event time each was seen at: whether a value is new
    # is judged in event time, not by which topic came first (an address added at 30m, read after
    # a withdrawal to it at 40m, made that withdrawal "to a new address"; one added at 50m, read
    # first, made an earlier withdrawal "to a known one").

    @staticmethod
    def _seen(state: State, key: str, text: str, now: float) -> bool:
        """Whether ``text`` was seen for the group at or before event time ``now``."""
        first = first_seen_times(state.get(f"s:{key}")).get(text)
        return first is not None and first <= now

    @staticmethod
    def _remember(state: State, key: str, value: Any, now: float) -> None:
        if value is None:
            return
        seen = first_seen_times(state.get(f"s:{key}"))
        if see(seen, seen_text(value), now):
            state.set(f"s:{key}", seen)

    def _inflow(self, key: str, event: Event, state: State, now: float) -> None:
        if self._hist_value is None:
            return
        value = self._hist_value(event)
        if not isinstance(value, (int, float)):
            return
        source = self._hist_source(event) if self._hist_source else None
        spec = self.p.history
        if (
            spec is not None
            and spec.new_sources_only
            and (source is None or self._seen(state, key, seen_text(source), now))
        ):
            return
        ikey = f"i:{key}"
        flows: list[list[Any]] = state.get(ikey) or []
        evidence = self._evidence(event)
        if any(f[3][0] == evidence[0] and f[0] == now for f in flows):
            return  # a source's redelivery (same id, same time): counted twice it doubled the money in
        # Kept INFLOWS_LATE_S past the window behind the newest, as the sweep keeps them: trimmed
        # to the window behind this one, a deposit arriving after a later one dropped those a
        # withdrawal still late on its way needed.
        newest = max([now, *(f[0] for f in flows)])
        flows = [f for f in flows if newest - f[0] <= self._window + INFLOWS_LATE_S][-MAX_INFLOWS + 1 :]
        kept_source = bounded(str(source)) if source is not None else None
        if spec is not None and spec.new_sources_only and kept_source is not None:
            # A deposit from a source counted at a later time arrived late: that later one is
            # no longer the source's first, and counted too it doubled the money from strangers.
            flows = [f for f in flows if not (f[2] == kept_source and f[0] > now)]
        flows.append(
            [
                now,
                to_float(value),
                kept_source,
                evidence,
            ]
        )
        state.set(ikey, flows)

    def _score(
        self, h: dict[str, Any], value: Any, now: float, state: State, key: str
    ) -> tuple[float, dict[str, str], list[Any]] | None:
        p = self.p
        n = int(h["n"])
        measure = p.measure
        if measure == "passthrough":
            if not isinstance(value, (int, float)) or (p.min_value is not None and value < p.min_value):
                return None
            flows = [f for f in state.get(f"i:{key}") or [] if now - f[0] <= self._window and f[0] <= now]
            sources = (
                {f[2] for f in flows if f[2] is not None} if self._hist_source else set(range(len(flows)))
            )
            total = sum(f[1] for f in flows)
            if len(sources) < p.min_history or total <= 0:
                return None
            ratio = to_float(value) / total
            return (
                ratio,
                {
                    "ratio": f"{ratio:.2f}",
                    "baseline": decimal_text(total, grouped=True),
                    "history_count": str(len(flows)),
                },
                [f[3] for f in flows],
            )
        if measure == "amount":
            n = _amounts_counted(h)
        if n < p.min_history:
            return None
        if measure == "amount":
            if not isinstance(value, (int, float)) or (p.min_value is not None and value < p.min_value):
                return None
            # Against peers, their mean (their largest would be one whale's); else the own largest.
            counted = int(h.get("k", 0))
            base = (
                (float(h.get("sum", 0.0)) / counted if counted else 0.0)
                if p.peers
                else float(h.get("max", 0.0))
            )
            if base <= 0:
                return None
            return (
                to_float(value) / base,
                {"baseline": decimal_text(base, grouped=True), "history_count": str(n)},
                [],
            )
        if measure == "new_value":
            if value is None:
                return None
            first = _values_seen(h.get("seen")).get(seen_text(value))
            return (0.0 if first is not None and first <= now else 1.0), {"history_count": str(n)}, []
        if measure == "travel":
            point = _point(value)
            places = _places(h)
            if point is None or not places:
                return None
            # Against the login before it in event time, as in order; a login that arrives late
            # (another partition lagged) also against the one after it, which in event-time
            # order would have been judged against it: the faster leg.  (Compared with the
            # newest alone, London at 0 and New York at 1h, read after New York at 20h, was slow.)
            at = bisect_right(places, now, key=_place_time)
            legs: list[tuple[float, float, list[Any]]] = []
            for q in places[max(at - 1, 0) : at + 1]:  # the one before it and the one after it
                km = _km((q[0], q[1]), point)
                legs.append((km / max(abs(now - q[2]) / 3600.0, 1 / 60), km, q))
            speed, km, q = max(legs, key=_first_item)
            # The other login's place and time too: "from SG" alone left the analyst to find
            # where the account had been (found in review).
            other = _stored_country(q[3])
            # This login's country said here: from the evidence, a login located without one
            # took the other login's, and the explanation named one country twice (in review).
            country = getattr(value, "country", None)
            return (
                speed,
                {
                    "speed_kmh": f"{speed:,.0f}",
                    "baseline": f"{km:,.0f} km",
                    "other_at": at_epoch(float(q[2])).strftime("%Y-%m-%d %H:%MZ"),
                    "other_country": other if other is not None else "(unknown)",
                    "country": country if isinstance(country, str) else "(unknown)",
                },
                [q[3]] if q[3] else [],
            )
        if measure == "hour":
            hours = h.get("hours") or [0] * 24
            share = hours[int(now // 3600) % 24] / max(1, sum(hours))
            return share, {"history_count": str(n)}, []
        # The group's previous event: the latest at or before this one (an event arriving after
        # a later one, from a lagging topic, was judged against that later one: never dormant).
        last_ts = time_before(h, now)
        if last_ts is None:
            return None
        return (now - last_ts) / 86400.0, {"history_count": str(n)}, []

    def _update(
        self, h: dict[str, Any], event: Event, value: Any, now: float, *, outlier: bool = False
    ) -> None:
        """Adds the event to the group's history; an ``outlier`` (it alerted) stays out of a peer
        mean, which never decays: one whale made every later amount of its peers look small."""
        before = int(h["n"])
        h["n"] = before + 1
        measure = self.p.measure
        if measure == "amount":
            # The amounts counted (``a``) for min_history; a history kept before they were
            # counted apart starts from its count of events.
            h["a"] = int(h.get("a", before)) + (1 if isinstance(value, (int, float)) else 0)
        if measure == "amount" and isinstance(value, (int, float)):
            if self.p.peers:
                total = float(h.get("sum", 0.0)) + to_float(value)
                # (Finite: two amounts near 1.8e308 made the mean inf, and every later amount
                # scored 0 against it, for good.)
                if not outlier and math.isfinite(total):
                    h["sum"] = total
                    h["k"] = int(h.get("k", 0)) + 1
            else:
                h["max"] = max(float(h.get("max", 0.0)), to_float(value))
        elif measure == "new_value" and value is not None:
            # In event time, and a value in regular use renewed, as first_seen keeps values: kept
            # in arrival order, the next 256 values pushed out a home IP used every week.
            seen = _values_seen(h.get("seen"))
            see(seen, seen_text(value), now)
            h["seen"] = seen
        elif measure == "travel":
            point = _point(value)
            if point is not None:
                places = _places(h)
                insort(places, [point[0], point[1], now, self._evidence(event)], key=_place_time)
                h["places"] = places[-MAX_PLACES:]
                h.pop("geo", None)  # (the one place kept before several were)
        elif measure == "hour":
            hours = h.get("hours") or [0] * 24
            hours[int(now // 3600) % 24] += 1
            h["hours"] = hours
        if measure == "gap":
            note_time(h, now, INFLOWS_LATE_S)  # recent times too, an hour's worth (see _score)
        else:
            last = h.get("last")
            h["last"] = now if last is None else max(last, now)  # a late event does not move it back


def _amounts_counted(h: dict[str, Any]) -> int:
    """How many events of a group's history carried an amount (``a``; a history kept before
    those were counted apart has only its count of events)."""
    return int(h.get("a", h["n"]))


def _values_seen(stored: Any) -> dict[str, float]:
    """A group's new_value history, each value with the earliest event time it was seen at.  A
    list (kept before those times were, in arrival order and not case-folded) counts as seen
    long ago, each value lower-cased as :func:`seen_text` now keeps it."""
    if isinstance(stored, list):
        return first_seen_times([str(text).lower() for text in stored])
    return first_seen_times(stored)


def _places(h: dict[str, Any]) -> list[list[Any]]:
    """A group's login places, ``[lat, lon, time, evidence]`` in time order (one kept as ``geo``
    before several were)."""
    places = h.get("places")
    if places is not None:
        return list(places)
    return [h["geo"]] if h.get("geo") else []


def _stored_country(evidence: Any) -> str | None:
    """The country in a login's stored evidence (``[id, type, time, fields]``), if it has one."""
    fields = evidence[3] if isinstance(evidence, (list, tuple)) and len(evidence) > 3 else None
    country = fields.get("country") if isinstance(fields, dict) else None
    return country if isinstance(country, str) else None


def _place_time(place: list[Any]) -> float:
    return float(place[2])


def _first_item(leg: tuple[float, float, list[Any]]) -> float:
    return leg[0]


def _point(geo: Any) -> tuple[float, float] | None:
    lat, lon = getattr(geo, "lat", None), getattr(geo, "lon", None)
    if isinstance(lat, (int, float)) and isinstance(lon, (int, float)):
        return float(lat), float(lon)
    return None
