"""What several kinds share: how their state is routed, and the parsing of lists of
``{type, where, field, group_by}`` entries.

- :class:`GroupedDetector`: state keyed by the rule's ``group_by`` entity (threshold,
  deviation, sequence, intel).
- :class:`SingleRouteDetector`: one state for the whole rule, under one key (exposure,
  linked).  (Look-alike addresses route their own way: by each address's head and tail.)
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass
from typing import Any

from vigil.detect.fields import Getter, Match, compile_getter, key_of, short_name
from vigil.detect.kinds.base import Detector
from vigil.detect.rules.loader import LocDict, LocList
from vigil.detect.rules.parse import Parser
from vigil.events.base import Event
from vigil.stream.base import State


class GroupedDetector(Detector):
    """A detector whose state is keyed by the rule's ``group_by`` entity.

    An event reaches it under its group key, and not at all when a group path is missing
    from it; ``group_paths`` tells the engine whether the input is keyed that way already."""

    def __init__(self, rule: Any, env: Any, group_by: tuple[str, ...]) -> None:
        super().__init__(rule, env)
        self.group_paths = group_by
        self._group = tuple((short_name(g), compile_getter(g)) for g in group_by)
        #: Whether an event's one route (see ``routes``) is its group key itself.
        self._route_is_key = len(group_by) == 1 and type(self).routes is GroupedDetector.routes

    def group_key(self, event: Event, route: str | None) -> str | None:
        """The group key of ``event`` (``None`` if a part is missing).  On the routed stage a
        single-entity group's record key is that already (the engine passes a record only to
        the detectors whose router gave its key), so it is not built again."""
        if route is not None and self._route_is_key:
            return route
        return key_of(self._group, event)

    def routes(self, event: Event) -> list[str]:
        key = key_of(self._group, event)
        if not key:
            return []
        # A composite group (customer and asset) is routed by its first part alone: that puts
        # all of its events in one partition too, and under the same key as the rules grouping
        # by that entity alone, so the event is re-keyed once for all of them, not once each.
        return [key.split("|", 1)[0]] if len(self._group) > 1 else [key]

    @property
    def route_id(self) -> object:
        if type(self).routes is not GroupedDetector.routes:
            return id(self)  # a kind that routes its own way
        return ("group", self.group_paths)

    @property
    def route_prefix(self) -> str:
        if type(self).routes is not GroupedDetector.routes:
            return ""
        return f"{self._group[0][0]}:"


class SingleRouteDetector(Detector):
    """A detector with one state for the whole rule (a graph or table across all entities):
    every event reaches it under the one key ``{route}:{rule id}``, so one partition holds it all."""

    def __init__(self, rule: Any, env: Any, route: str) -> None:
        super().__init__(rule, env)
        self._route = [f"{route}:{rule.id}"]

    def routes(self, event: Event) -> list[str]:
        return self._route

    @property
    def route_id(self) -> object:
        if type(self).routes is not SingleRouteDetector.routes:
            return id(self)
        return ("single", self._route[0])

    @property
    def route_prefix(self) -> str:
        return self._route[0] if type(self).routes is SingleRouteDetector.routes else ""


def set_or_delete(state: State, key: str, items: list[Any]) -> None:
    """Store what is left of a list kept under ``key``; no entry at all once it is empty."""
    if items:
        state.set(key, items)
    else:
        state.delete(key)


@dataclass(frozen=True)
class FieldEntry:
    """Events of ``match`` contribute the value at ``field`` (grouped by ``group_by`` when given)."""

    match: Match
    field: str
    group_by: tuple[str, ...] = ()
    alert: bool = True
    remember: bool = False


#: Why an entry of these lists takes no ``group_by`` of its own (see :func:`parse_entries`).
_UNGROUPED = {
    "seen_also": "its value joins the history of the group the rule's own group_by gives the event",
    "known": "a known address is known to every group",
}


def parse_entries(
    d: LocDict,
    key: str,
    p: Parser,
    what: str,
    *,
    group_required: bool = False,
    extra: tuple[str, ...] = (),
) -> list[FieldEntry] | None:
    """The entries under ``key``.  Each takes ``group_by`` only if its kind groups by it
    (``group_required``): elsewhere it changed nothing (a ``seen_also`` entry grouped by wallet
    still fed the customer's history), and is warned of by name."""
    raw = d.get(key)
    if not isinstance(raw, LocList) or not raw:
        p.error(d.mark(key), f"{what}.{key} must be a non-empty list of {{type, where, field}}; got {raw!r}")
        return None
    out: list[FieldEntry] = []
    ok = True
    for i, item in enumerate(raw):
        ew = f"{what}.{key}[{i}]"
        e = p.mapping(item, raw.mark(i), ew)
        if e is None:
            ok = False
            continue
        # (group_by stays a known key where refused: the refusal below says why, not "unknown".)
        p.keys(
            e,
            ew,
            required=("type", "field", *(("group_by",) if group_required else ())),
            optional=("where", "group_by", *extra),
        )
        ungrouped = "group_by" in e and not group_required
        if ungrouped:
            # A warning, not an error: earlier versions documented it, and it never did anything.
            why = _UNGROUPED.get(key, "the entries here are not grouped")
            p.warn(e.key_marks.get("group_by", e.loc), f"{ew}.group_by is ignored here ({why}); leave it out")
        m = p.match(e, ew)
        f = (
            p.path(e.get("field"), e.mark("field"), f"{ew}.field", m.types if m else None)
            if "field" in e
            else None
        )
        groups = [] if ungrouped else p.strings(e, "group_by", ew) or []
        gp = [p.path(g, e.mark("group_by"), f"{ew}.group_by", m.types if m else None) for g in groups]
        alert = p.boolean(e, "alert", ew, default=True) if "alert" in extra else True
        remember = p.boolean(e, "remember", ew, default=False) if "remember" in extra else False
        if m is None or f is None or None in gp:
            ok = False
            continue
        out.append(FieldEntry(m, f, tuple(g for g in gp if g), alert, remember))
    return out if ok else None


class CompiledEntry:
    def __init__(self, entry: FieldEntry) -> None:
        self.entry = entry
        self.types = entry.match.types
        self.match = entry.match.compile()
        self.value: Getter = compile_getter(entry.field)
        self.group = tuple((short_name(g), compile_getter(g)) for g in entry.group_by)

    def group_key(self, event: Event) -> str | None:
        return key_of(self.group, event) if self.group else None


# ---------------------------------------------------------------------------- seen histories

#: Values a history remembers for ``first_seen`` (past this the least recently seen of the older
#: half is dropped; see :func:`see`).
MAX_SEEN = 256
#: From this many values on, a value seen again among the older half moves to the newest end.
_RENEW_FROM = MAX_SEEN * 3 // 4


def first_seen_times(stored: Any) -> dict[str, float]:
    """A history's values, each with the earliest event time it was seen at.  A list (state
    kept before those times were) counts as seen long ago."""
    return stored if isinstance(stored, dict) else dict.fromkeys(stored or (), 0.0)


def see(values: dict[str, float], text: str, now: float) -> bool:
    """Remember ``text`` as seen at event time ``now``: its earliest time is what counts, so a
    sighting that arrives after a later one still moves it back.  Whether ``values`` changed
    (most sightings repeat a value seen before, and need no state write).

    Past MAX_SEEN values the oldest in the history's order goes.  A value seen again while the
    history is nearly full and it is among the older half moves to the newest end, so what goes
    is one not seen for long: a customer's home IP, used every week, outlived by the 256 mobile
    IPs of a year was forgotten, and the next login from home was "from a new IP".  (Only then:
    most sightings still write nothing.)"""
    first = values.get(text)
    if first is None:
        values[text] = now
        if len(values) > MAX_SEEN:
            del values[next(iter(values))]
        return True
    if now < first:
        first = values[text] = now
        changed = True
    else:
        changed = False
    if len(values) >= _RENEW_FROM and _in_older_half(values, text):
        del values[text]
        values[text] = first
        return True
    return changed


def _in_older_half(values: dict[str, float], text: str) -> bool:
    half = len(values) // 2
    return any(other == text for other in itertools.islice(values, half))


def earliest_times(kept: list[float] | None, counted: int, keep: int) -> list[float]:
    """The ``keep`` earliest event times anything was seen at, for "seen that often before"
    (``min_seen``) judged in event time.  State kept before those times were has only a count:
    those sightings count as long ago."""
    return kept if kept is not None else [0.0] * min(keep, counted)


def add_time(times: list[float], now: float, keep: int) -> bool:
    """Add a sighting at ``now`` to ``times`` (sorted), keeping the ``keep`` earliest; whether
    ``times`` changed (not once ``keep`` earlier sightings are in it).  A time already in is
    added again: sources with second precision (CloudTrail, syslog) give distinct sightings one
    time, so a time says nothing of a redelivery."""
    if len(times) >= keep and (keep == 0 or now >= times[keep - 1]):
        return False
    insort(times, now)
    del times[keep:]
    return True


#: How many of a group's recent event times ``note_time`` keeps.
MAX_RECENT_TIMES = 32


def note_time(st: dict[str, Any], now: float, lateness_s: float) -> bool:
    """Remember event time ``now`` in a group's record ``st`` for "how long since its previous
    event" (after_idle steps, the gap measure): its times within ``lateness_s`` of its newest (at
    most MAX_RECENT_TIMES) and the newest before them, sorted in ``st["t"]``; ``st["last"]`` the
    newest.  Whether anything changed."""
    last = st.get("last")
    times: list[float] = st.get("t") or ([last] if last is not None else [])
    at = bisect_left(times, now)
    if at < len(times) and times[at] == now:
        return False
    times.insert(at, now)
    cut = times[-1] - lateness_s
    first = max(bisect_left(times, cut) - 1, len(times) - MAX_RECENT_TIMES, 0)
    st["t"] = times[first:]
    st["last"] = times[-1]
    return True


def time_before(st: dict[str, Any], now: float, strictly: bool = False) -> float | None:
    """The group's latest event time at or before ``now`` (not the newest: an event arriving after
    a later one, from a lagging topic, was judged against that later one, so never dormant);
    ``strictly``: before ``now`` (an event's own time is noted, its previous one is asked for)."""
    times: list[float] | None = st.get("t")
    if times is None:  # kept before recent times were: only the newest
        last: float | None = st.get("last")
        return None if strictly and last is not None and last >= now else last
    at = bisect_left(times, now) if strictly else bisect_right(times, now)
    return times[at - 1] if at else None
