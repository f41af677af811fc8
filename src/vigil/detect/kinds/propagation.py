"""Cross-entity propagation: an event about one entity marks related entities for a period.

::

    type: propagation
    mark:
      type: crm_record_export
      where: {payload.record_count: {gte: 20}, api_key: {exists: true}}
      targets: payload.customer_ids        # the list of related entity ids
      target_kind: customer
      for: 14d
    trigger:
      type: [password_reset, mfa_change, withdrawal_address_added, email_link_clicked]
      group_by: customer

``target_kind`` names the kind of the ids in ``targets``: marks and triggers meet under the
entity ``trigger.group_by`` names, so it must be that one (left out, it is).

A vendor whose API token exported customer records, or whose campaign went to a list of
customers, raises the risk of every customer it names: the next risky action of a marked
customer within the period alerts, with the marking event as first evidence and the
marking entity (the vendor) as related.  One alert per mark and customer.

On Kafka the mark is routed to each target's key (one copy per customer named, naming that
customer alone: see ``narrowed``), so the mark and the customer's own events meet in the
customer's partition.

Judged in event time, not arrival order.  Marks come from a SaaS vendor's topic, triggers from
the exchange's, and either can lag (a vendor's audit log is often minutes behind).  A mark
counts for triggers from its own time to the end of its period, not for one made before it that
arrives after it.  A trigger that finds no mark it falls in is held (the last ``MAX_HELD`` per
customer, for ``LATE_S`` of event time): a mark arriving later that it falls in alerts then.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from vigil.detect.fields import (
    Match,
    compile_getter,
    key_of,
    key_part,
    normalise_path,
    replace_path,
    seen_text,
    short_name,
)
from vigil.detect.kinds.base import Detector, EvidenceMaker, Expiry, Hit, entity_ref, ts
from vigil.detect.kinds.common import add_time, earliest_times, first_seen_times, see, set_or_delete
from vigil.detect.rules.loader import LocDict
from vigil.detect.rules.parse import Parser
from vigil.events.base import Entities, Event
from vigil.events.types import EntityRef
from vigil.stream.base import State

CONTEXT = frozenset({"marked_by", "mark_type", "group"})
#: Triggers kept per group, and for how long (event-time seconds), in case the mark they fall
#: in arrives after them.
MAX_HELD = 16
LATE_S = 3600.0
#: Marks kept per key (the latest ending), each alerting once.
MAX_MARKS = 8


@dataclass(frozen=True)
class PropagationParams:
    mark: Match
    targets: str
    target_kind: str
    period: timedelta
    source: tuple[str, ...]
    trigger: Match
    group_by: tuple[str, ...]
    #: The trigger counts only when this field's value is new for the group...
    first_seen: str | None = None
    #: ...and the field was already observed this many times (a history to differ from).
    min_seen: int = 0


def parse(d: LocDict, p: Parser, what: str) -> PropagationParams | None:
    m = p.mapping(d.get("mark"), d.mark("mark"), f"{what}.mark")
    t = p.mapping(d.get("trigger"), d.mark("trigger"), f"{what}.trigger")
    if m is None or t is None:
        return None
    p.keys(
        m, f"{what}.mark", required=("type", "targets", "for"), optional=("where", "target_kind", "source")
    )
    p.keys(t, f"{what}.trigger", required=("type", "group_by"), optional=("where", "first_seen", "min_seen"))
    mark = p.match(m, f"{what}.mark")
    trigger = p.match(t, f"{what}.trigger")
    targets = p.path(
        m.get("targets"), m.mark("targets"), f"{what}.mark.targets", mark.types if mark else None
    )
    kind = p.choice(m, "target_kind", f"{what}.mark", Entities.KINDS, default="customer")
    period = p.duration(m, "for", f"{what}.mark")
    source_names = p.strings(m, "source", f"{what}.mark") or ["vendor"]
    source = [
        p.path(s, m.mark("source"), f"{what}.mark.source", mark.types if mark else None) for s in source_names
    ]
    group = p.strings(t, "group_by", f"{what}.trigger") or []
    if len(group) > 1:
        # Marks are kept under the one entity they target: a trigger keyed by several paths
        # (a composite key) never met them, and the rule never fired.
        p.error(
            t.mark("group_by"),
            f"{what}.trigger.group_by must name one entity, the one marks target; got {len(group)} "
            f"({', '.join(group)})",
        )
        group = group[:1]
    gpaths = [
        p.path(g, t.mark("group_by"), f"{what}.trigger.group_by", trigger.types if trigger else None)
        for g in group
    ]
    grouped_by = short_name(gpaths[0]) if gpaths and gpaths[0] else None
    if "target_kind" in m and kind and grouped_by in Entities.KINDS and grouped_by != kind:
        # Marks are kept under the entity the triggers are grouped by, so the ids were taken as
        # that entity's whatever target_kind said: device ids marked the customers of that name.
        p.error(
            m.mark("target_kind"),
            f"{what}.mark.target_kind is {kind!r} but trigger.group_by is {grouped_by!r}: a mark "
            f"meets the triggers of the entity they are grouped by, so group the trigger by {kind} "
            f"if the targets are {kind} ids, or say target_kind: {grouped_by}",
        )
        kind = None
    first_seen = (
        p.path(
            t["first_seen"],
            t.mark("first_seen"),
            f"{what}.trigger.first_seen",
            trigger.types if trigger else None,
        )
        if "first_seen" in t
        else None
    )
    min_seen = p.integer(t, "min_seen", f"{what}.trigger", default=0, minimum=0) or 0
    if (
        not mark
        or not trigger
        or not targets
        or not kind
        or not period
        or None in source
        or not gpaths
        or None in gpaths
    ):
        return None
    return PropagationParams(
        mark,
        targets,
        kind,
        period,
        tuple(s for s in source if s),
        trigger,
        tuple(g for g in gpaths if g),
        first_seen,
        min_seen,
    )


class PropagationDetector(Detector):
    kind = "propagation"

    def __init__(self, rule: Any, env: Any) -> None:
        super().__init__(rule, env)
        params: PropagationParams = rule.params
        self.p = params
        self._mark = params.mark.compile()
        self._trigger = params.trigger.compile()
        self._targets = compile_getter(params.targets)
        self._source = tuple((short_name(s), compile_getter(s)) for s in params.source)
        self._group = tuple((short_name(g), compile_getter(g)) for g in params.group_by)
        self._period = params.period.total_seconds()
        self._evidence = EvidenceMaker([*params.mark.paths, *params.trigger.paths], rule.explanation)
        self._types = params.mark.types | params.trigger.types
        self._first_seen = compile_getter(params.first_seen) if params.first_seen else None
        # The trigger's group key names the same entity kind, so both meet under one key.
        self._target_name = self._group[0][0] if self._group else params.target_kind
        #: The last event :meth:`narrowed` split, and its target ids by key.
        self._split: tuple[Event, dict[str, list[Any]]] | None = None
        # A mark judged on its list of targets (``contains`` a honeytoken customer) is judged
        # again by the routed stage: it must see the whole list there.
        self._narrowable = normalise_path(params.targets) not in {
            normalise_path(p) for p in params.mark.paths
        }

    @property
    def types(self) -> frozenset[str]:
        return self._types

    def _target_keys(self, event: Event) -> list[str]:
        ids = self._targets(event)
        if isinstance(ids, str):
            ids = [ids]
        if not isinstance(ids, (list, tuple)):
            return []
        name = self._target_name
        # Built as key_of builds the trigger's key (cut, "|" escaped), or the two would not meet.
        # (Once each: an id named twice, or two cut to one key, would mark and alert twice.)
        return list(dict.fromkeys(f"{name}:{key_part(str(i))}" for i in ids if i))

    @property
    def route_prefix(self) -> str:
        # Marks go under the target kind, triggers under their group key, which names it first.
        return f"{self._target_name}:"

    def narrowed(self, event: Event, key: str) -> Event | None:
        # A mark goes to each target's key.  Whole, each copy named every target: a vendor
        # export of N customers wrote N copies of N ids (16,000 customers: 3.8 GB routed, and
        # the routed stage built all N keys for each copy).  Its copy for one customer names
        # that customer alone.  (A trigger is routed whole: its fields are what it is judged by.)
        if not self._narrowable or not self._mark(event) or self._trigger(event):
            return None
        if self._split is None or self._split[0] is not event:
            ids = self._targets(event)
            if not isinstance(ids, (list, tuple)) or len(ids) < 2:
                return None
            # The ids by key, once per event (the route stage asks for each of its keys in turn).
            by_key: dict[str, list[Any]] = {}
            name = f"{self._target_name}:"
            for i in ids:
                if i:
                    by_key.setdefault(f"{name}{key_part(str(i))}", []).append(i)
            self._split = (event, by_key)
        mine = self._split[1].get(key)
        if mine is None:
            return None
        try:
            return replace_path(event, self.p.targets, mine)
        except (AttributeError, KeyError, TypeError):
            return None  # a path through something else than structs and mappings: whole

    def routes(self, event: Event) -> list[str]:
        keys: list[str] = []
        # (A compiled match checks the event's type first.)
        if self._mark(event):
            keys += self._target_keys(event)
        # Only what process() acts on: a trigger failing its conditions (a login with a second
        # factor) neither fires nor joins the history, so it need not be re-keyed.
        if self._trigger(event):
            key = key_of(self._group, event)
            if key:
                keys.append(key)
        return keys

    def process(self, event: Event, state: State, hits: list[Hit], route: str | None = None) -> None:
        now = ts(event)
        # (A compiled match checks the event's type first.)
        if self._mark(event):
            source = [[n, str(v)] for n, g in self._source if (v := g(event)) is not None]
            stored = self._evidence(event)
            keys = self._target_keys(event)
            for key in keys if route is None else [k for k in keys if k == route]:
                self._marked(state, key, now, stored, source, hits)
        if self._trigger(event):
            group = key_of(self._group, event)
            if group is None:
                return
            key = group
            value = self._first_seen(event) if self._first_seen is not None else None
            enough = True
            if self._first_seen is not None:
                fresh, enough, earlier = self._new(state, key, value, now)
                if earlier:
                    # Its sighting is history for triggers held for want of it (it arrived late).
                    self._rejudge(state, key, now, hits)
                if not fresh:
                    return
            marks = _marks(state.get(f"m:{key}"))
            # (Marks ended more than LATE_S ago go: a trigger later than that is not late.)
            kept = [m for m in marks if now - m["until"] <= LATE_S]
            # The earliest mark it falls in that has not alerted for this customer yet.
            mark = next((m for m in kept if not m["done"] and _covers(m, now, self._period)), None)
            held = state.get(f"h:{key}") or []
            recent = [h for h in held if now - h[0] <= LATE_S]
            if mark is None or not enough:
                # No mark it falls in yet, or too little history before it yet: held, in case
                # what it needs arrives after it (its first_seen value judged again then).
                item = [now, self._evidence(event), None if value is None else seen_text(value)]
                state.set(f"h:{key}", [*recent[-MAX_HELD + 1 :], item])
                if len(kept) != len(marks):
                    set_or_delete(state, f"m:{key}", kept)
                return
            mark["done"] = True
            state.set(f"m:{key}", kept)
            if len(recent) != len(held):
                set_or_delete(state, f"h:{key}", recent)
            hits.append(self._hit(key, mark, self._evidence(event)))

    def _marked(
        self, state: State, key: str, now: float, stored: Any, source: list[list[str]], hits: list[Hit]
    ) -> None:
        """A mark for ``key`` at ``now``: kept beside the others (a vendor's second export does not
        undo its first), and alerting for the earliest trigger held that it covers."""
        marks = _marks(state.get(f"m:{key}"))
        if any(m["ev"][0] == stored[0] for m in marks):
            return  # the same mark again (read twice): it has done what it does
        mark: dict[str, Any] = {"until": now + self._period, "ev": stored, "src": source, "done": False}
        held = state.get(f"h:{key}")
        if held:
            covered = sorted(
                (h for h in held if now <= h[0] <= mark["until"] and self._still_new(state, key, h)),
                key=lambda h: (h[0], h[1][0]),
            )
            if covered:
                first = covered[0]
                mark["done"] = True
                hits.append(self._hit(key, mark, first[1]))
                set_or_delete(state, f"h:{key}", [h for h in held if h is not first])
        marks.append(mark)
        marks.sort(key=lambda m: m["until"])
        state.set(f"m:{key}", marks[-MAX_MARKS:])

    def _rejudge(self, state: State, key: str, now: float, hits: list[Hit]) -> None:
        """A sighting at ``now`` arrived after triggers held for want of history: those it now
        gives enough history fire, each with the earliest mark covering it that has not alerted."""
        held: list[Any] = state.get(f"h:{key}") or []
        later = sorted((h for h in held if h[0] > now), key=lambda h: (h[0], h[1][0]))
        if not later:
            return
        marks = _marks(state.get(f"m:{key}"))
        fired: list[Any] = []
        for h in later:
            mark = next((m for m in marks if not m["done"] and _covers(m, h[0], self._period)), None)
            if mark is not None and self._still_new(state, key, h):
                mark["done"] = True
                hits.append(self._hit(key, mark, h[1]))
                fired.append(h)
        if fired:
            state.set(f"m:{key}", marks)
            set_or_delete(state, f"h:{key}", [h for h in held if not any(h is f for f in fired)])

    def _still_new(self, state: State, key: str, held: list[Any]) -> bool:
        """Whether a held trigger's value is still new at its time, with what has arrived since
        (a sighting of it at an earlier time makes it not new; so does too short a history)."""
        if self._first_seen is None or len(held) < 3 or held[2] is None:
            return True
        got = state.get(f"s:{key}") or {"v": {}}
        first = first_seen_times(got["v"]).get(held[2])
        at = held[0]
        keep = self.p.min_seen
        early = earliest_times(got.get("e"), got.get("n", 0), keep)
        return (first is None or first >= at) and bisect_left(early, at) >= keep

    def _hit(self, key: str, mark: dict[str, Any], trigger: Any) -> Hit:
        return Hit(
            # One alert per mark and customer: a mark read again after it was let go (evicted
            # past MAX_MARKS, swept) may pair with another held trigger; the same id then
            # lets downstream drop the repeat.
            identity=[str(mark["ev"][0])],
            entity=entity_ref(key),
            evidence=[mark["ev"], trigger],
            related=[EntityRef(kind=k, id=v) for k, v in mark["src"]],
            # A mark whose event named none of its sources leaves {marked_by} out: it reads
            # (unknown) then, as anything not known does ("unknown" was quoted, like a name).
            context={
                **({"marked_by": ", ".join(f"{k} {v}" for k, v in mark["src"])} if mark["src"] else {}),
                "mark_type": str(mark["ev"][1]),
                "group": key,
            },
        )

    def expiries(self) -> tuple[Expiry, ...]:
        return (Expiry("m:", _mark_over), Expiry("h:", _held_over))

    def _new(self, state: State, key: str, value: Any, now: float) -> tuple[bool, bool, bool]:
        """Whether ``value`` is new for ``key`` at event time ``now``, whether there is enough
        history before it (``min_seen``), and whether this sighting is among the earliest kept
        (history a trigger held for want of it may have waited for); remembers it either way.
        Judged in event time, as in sequence rules: a value seen only at a later time (that event
        arrived first) is still new, and sightings at later times are no history yet."""
        if value is None:
            return False, False, False
        skey = f"s:{key}"
        got = state.get(skey) or {"v": {}}
        seen = first_seen_times(got["v"])
        keep = self.p.min_seen
        kept = got.get("e")
        # ``n`` (a count of sightings) is only in state kept before the sighting times were.
        early = earliest_times(kept, got.get("n", 0), keep)
        text = seen_text(value)
        first = seen.get(text)
        fresh = first is None or first > now
        enough = bisect_left(early, now) >= keep
        # A value seen before, with the earliest times already in, changes nothing to write.
        changed = see(seen, text, now)
        earlier = bool(keep) and add_time(early, now, keep)
        if changed or earlier or kept is None:
            state.set(skey, {"v": seen, "e": early})
        return fresh, enough, earlier


def _marks(stored: Any) -> list[dict[str, Any]]:
    """A key's marks, earliest ending first (one bare mark: as kept before several were)."""
    if stored is None:
        return []
    return [stored] if isinstance(stored, dict) else list(stored)


def _covers(mark: dict[str, Any], at: float, period: float) -> bool:
    return bool(mark["until"] - period <= at <= mark["until"])


def _mark_over(marks: Any, now: float) -> bool:
    # Kept LATE_S past its period, as long as triggers it covers are held: let go before, a
    # redelivered copy of it was a new mark for them, and alerted again.
    return all(now - m["until"] > LATE_S for m in _marks(marks))


def _held_over(held: Any, now: float) -> bool:
    return all(now - h[0] > LATE_S for h in held)
