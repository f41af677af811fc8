"""Sequence rules: ordered steps by the same entity within a time span.

::

    type: sequence
    group_by: customer
    within: 2h
    steps:
      - name: new_device_login
        type: login
        first_seen: device            # the value was never seen for this group before
      - {name: mfa_reset, type: mfa_change, where: {payload.action: {in: [reset, disabled]}}}
      - {name: new_address, type: withdrawal_address_added}
      - name: withdrawal
        type: withdrawal_request
        same_as: {payload.to_address: new_address.payload.address}   # ties steps together
    absent:                           # "and no X in between": X clears any partial match
      - {type: mfa_challenge, where: {payload.result: approved}}

Step qualifiers: ``first_seen: <path>`` (value new for the group), ``after_idle: 90d`` (the
group was silent that long before this step), ``same_as`` (equal to a field captured by an
earlier step), ``ratio_to: {step: <name>, field: <path>, of: <path>, gte: 0.8}`` (this
step's field over the earlier step's field).

Matching keeps, per step, the most recent partial chain that reached it (greedy, latest
start) for each set of values later steps compare against (``same_as``, ``differs``,
``ratio_to``): an address added and then a second one are two chains, and a withdrawal to the
first still completes its own (with one chain per step, a decoy address added after the real
one hid the withdrawal to it).  At most :data:`MAX_CHAINS` such chains a step.  An event is
tried against the later steps first, so one event never advances two steps.  Seen-value
histories are updated after the event is evaluated, and remember when (in event time) each
value was first seen.

Steps are judged in event time, not arrival order: events reach detection through several
topics and partitions, so a withdrawal can arrive before the address it goes to was added.
Each group keeps its recent step events; one arriving behind the newest is put in its place
and the chains are replayed over them (chains already reported are not reported again).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NamedTuple

from vigil.detect.fields import Getter, Match, compare, compile_getter, kept, path_exists, seen_text
from vigil.detect.kinds.base import EvidenceMaker, Expiry, Hit, entity_ref, ts
from vigil.detect.kinds.common import (
    CompiledEntry,
    FieldEntry,
    GroupedDetector,
    add_time,
    earliest_times,
    first_seen_times,
    note_time,
    parse_entries,
    see,
    time_before,
)
from vigil.detect.rules.loader import LocDict, LocList
from vigil.detect.rules.parse import Parser, finite
from vigil.events.base import Event
from vigil.events.types import EVENT_TYPES
from vigil.stream.base import State

CONTEXT = frozenset({"steps", "span", "group"})
#: How far (event-time seconds) behind the group's newest step event a late event may
#: arrive and still be placed in order: events reach detection through several topics and
#: partitions, so a step can arrive after a later one.  Later than this, it is judged
#: against the chains as they stand.
MAX_LATENESS_S = 3600.0
#: Step events kept per group for such replays.  What falls out of the buffer (past the
#: lateness, or beyond this many) is folded into the chains the replay starts from (``b``), so a
#: replay after a burst of step events (32 logins after a password reset) still knows the chain
#: begun before the burst.
MAX_BUFFERED = 32
#: Partial chains kept a step, each for other values later steps compare against (the
#: addresses added after a password reset); past it the least recently advanced goes.
MAX_CHAINS = 32


@dataclass(frozen=True)
class Ratio:
    step: str
    field: str
    of: str
    op: str
    bound: float


@dataclass(frozen=True)
class Step:
    name: str
    match: Match
    first_seen: str | None = None
    after_idle: timedelta | None = None
    same_as: tuple[tuple[str, str, str], ...] = ()  # (this path, earlier step, its path)
    ratio_to: Ratio | None = None
    differs: tuple[tuple[str, str, str], ...] = ()  # like same_as, but must differ
    #: ``first_seen`` counts only after this many observations of the field (0: always):
    #: a value is "new" only against a history long enough to know what is usual.
    min_seen: int = 0
    #: Other events whose field values count as seen for ``first_seen`` (known counterparties).
    seen_also: tuple[FieldEntry, ...] = ()


@dataclass(frozen=True)
class SequenceParams:
    group_by: tuple[str, ...]
    within: timedelta
    steps: tuple[Step, ...]
    absent: tuple[Match, ...] = field(default=())
    #: After the chain completes, each further event taking its last step within ``within`` of
    #: the chain's start completes it again (each withdrawal of a drain is held, not the first).
    repeat: bool = False


def parse(d: LocDict, p: Parser, what: str) -> SequenceParams | None:
    ok = True
    group = p.strings(d, "group_by", what)
    if group is None:
        if "group_by" not in d:
            p.error(d.loc, f"{what} is missing required key 'group_by' (an entity kind or field path)")
        ok = False
    within = p.duration(d, "within", what)
    steps: list[Step] = []
    raw_steps = d.get("steps")
    if not isinstance(raw_steps, LocList) or len(raw_steps) < 2:
        p.error(d.mark("steps"), f"{what}.steps must be a list of at least two steps; got {raw_steps!r}")
        ok = False
        raw_steps = LocList()
    names: set[str] = set()
    for i, raw in enumerate(raw_steps):
        sw = f"{what}.steps[{i}]"
        s = p.mapping(raw, raw_steps.mark(i), sw)
        if s is None:
            ok = False
            continue
        step = _step(s, p, sw, i, steps, names)
        if step is None:
            ok = False
        else:
            steps.append(step)
            names.add(step.name)
    absent: list[Match] = []
    if "absent" in d:
        raw_absent = d["absent"]
        if not isinstance(raw_absent, LocList):
            p.error(d.mark("absent"), f"{what}.absent must be a list of {{type: ..., where: ...}}")
            ok = False
        else:
            for i, raw in enumerate(raw_absent):
                a = p.mapping(raw, raw_absent.mark(i), f"{what}.absent[{i}]")
                if a is not None:
                    p.keys(a, f"{what}.absent[{i}]", required=("type",), optional=("where",))
                    m = p.match(a, f"{what}.absent[{i}]")
                    if m is None:
                        ok = False
                    else:
                        absent.append(m)
    all_types = frozenset().union(*(s.match.types for s in steps)) if steps else None
    paths = [p.path(g, d.mark("group_by"), f"{what}.group_by", all_types) for g in group or []]
    for path in (x for x in paths if x):
        # Every step's events must carry the group: an event without it joins no sequence, so
        # a step of a type that lacks the field never matched, and the rule never fired.
        for i, step in enumerate(steps):
            lacking = sorted(t for t in step.match.types if not path_exists(t, path))
            if lacking:
                p.error(
                    d.mark("group_by"),
                    f"{what}.group_by: no field {path!r} on {', '.join(lacking)} (step {i + 1}, "
                    f"{step.name!r}): its events would never join a sequence; expected a field "
                    "every step's event types have",
                )
                ok = False
    repeat = p.boolean(d, "repeat", what, default=False)
    if not ok or within is None or None in paths:
        return None
    return SequenceParams(tuple(x for x in paths if x), within, tuple(steps), tuple(absent), bool(repeat))


def _step(s: LocDict, p: Parser, sw: str, i: int, earlier: list[Step], names: set[str]) -> Step | None:
    p.keys(
        s,
        sw,
        required=("type",),
        optional=(
            "name",
            "where",
            "first_seen",
            "min_seen",
            "seen_also",
            "after_idle",
            "same_as",
            "differs",
            "ratio_to",
        ),
    )
    name = p.string(s, "name", sw, default=f"step{i + 1}") or f"step{i + 1}"
    if name in names:
        p.error(s.mark("name"), f"{sw}.name {name!r} is used by an earlier step; step names must be unique")
        return None
    match = p.match(s, sw)
    if match is None:
        return None
    first_seen = (
        p.path(s["first_seen"], s.mark("first_seen"), f"{sw}.first_seen", match.types)
        if "first_seen" in s
        else None
    )
    after_idle = p.duration(s, "after_idle", sw, default=timedelta(0)) if "after_idle" in s else None
    by_name = {st.name: st for st in earlier}
    links: dict[str, list[tuple[str, str, str]]] = {"same_as": [], "differs": []}
    for key, found in links.items():
        if key not in s:
            continue
        m = p.mapping(s[key], s.mark(key), f"{sw}.{key}")
        for here, ref in (m or {}).items():
            here_path = p.path(here, m.mark(here) if m else s.loc, f"{sw}.{key}", match.types)
            target = _step_ref(p, ref, m.mark(here) if m else s.loc, f"{sw}.{key}.{here}", by_name)
            if here_path is None or target is None:
                return None
            found.append((here_path, *target))
    if "min_seen" in s and first_seen is None:
        # Ignored, the step matched a customer's first login as if seen before.
        p.error(s.mark("min_seen"), f"{sw}.min_seen needs first_seen (the history it counts)")
        return None
    min_seen = p.integer(s, "min_seen", sw, default=0, minimum=0) or 0
    also: list[FieldEntry] = []
    if "seen_also" in s:
        if first_seen is None:
            p.error(s.mark("seen_also"), f"{sw}.seen_also needs first_seen (the history it adds to)")
            return None
        parsed = parse_entries(s, "seen_also", p, sw)
        if parsed is None:
            return None
        also = parsed
    ratio = None
    if "ratio_to" in s:
        r = p.mapping(s["ratio_to"], s.mark("ratio_to"), f"{sw}.ratio_to")
        if r is None:
            return None
        rw = f"{sw}.ratio_to"
        step_name = p.string(r, "step", rw)
        if step_name not in by_name:
            p.error(
                r.mark("step"),
                f"{rw}.step must name an earlier step ({', '.join(by_name)}); got {step_name!r}",
            )
            return None
        f_here = p.path(r.get("field"), r.mark("field"), f"{rw}.field", match.types, number=True)
        f_of = p.path(r.get("of"), r.mark("of"), f"{rw}.of", by_name[step_name].match.types, number=True)
        ops = [k for k in r if k in ("gt", "gte", "lt", "lte")]
        if len(ops) != 1:
            p.error(r.loc, f"{rw} needs exactly one of gt/gte/lt/lte with a number (e.g. gte: 0.8)")
            return None
        bound = finite(r[ops[0]])
        if bound is None:
            # (.nan never compared true, so the step never held; -.inf always did.)
            p.error(
                r.mark(ops[0]),
                f"{rw}.{ops[0]} must be a finite number (within +/-1.8e308; not .inf or .nan); "
                f"got {r[ops[0]]!r:.40}",
            )
            return None
        if f_here is None or f_of is None:
            return None
        ratio = Ratio(step_name, f_here, f_of, ops[0], bound)
    return Step(
        name,
        match,
        first_seen,
        after_idle,
        tuple(links["same_as"]),
        ratio,
        tuple(links["differs"]),
        min_seen,
        tuple(also),
    )


def _step_ref(
    p: Parser, ref: Any, loc: tuple[int, int], what: str, by_name: dict[str, Step]
) -> tuple[str, str] | None:
    if not isinstance(ref, str) or "." not in ref:
        p.error(loc, f"{what} must be '<earlier step>.<field path>'; got {ref!r}")
        return None
    step_name, path = ref.split(".", 1)
    if step_name not in by_name:
        p.error(
            loc,
            f"{what}: {step_name!r} is not an earlier step; "
            f"expected one of: {', '.join(by_name) or '(none)'}",
        )
        return None
    checked = p.path(path, loc, what, by_name[step_name].match.types)
    return (step_name, checked) if checked else None


class _CompiledStep:
    def __init__(self, step: Step) -> None:
        self.step = step
        self.first_seen: Getter | None = compile_getter(step.first_seen) if step.first_seen else None
        self.idle = step.after_idle.total_seconds() if step.after_idle else None
        #: The paths this step's own link checks read from its event (kept with the event so
        #: a replay can check links without the event itself).
        self.own = [here for here, _, _ in (*step.same_as, *step.differs)]
        if step.ratio_to:
            self.own.append(step.ratio_to.field)
        if step.first_seen:
            # Kept too, to judge "first seen" again when the chain completes (see _fire).
            self.own.append(step.first_seen)


class _TypePlan(NamedTuple):
    """A sequence rule's checks for one event type (see :meth:`SequenceDetector._plan`)."""

    #: (index, step, its conditions or None, the values a match keeps) of the type's steps.
    steps: tuple[tuple[int, _CompiledStep, Callable[[Event], bool] | None, list[tuple[str, Getter]]], ...]
    absent: tuple[Callable[[Event], bool], ...]
    #: The first_seen paths to remember (empty unless a first_seen step is of the type).
    seen: tuple[tuple[str, Getter], ...]
    also: tuple[tuple[str, CompiledEntry], ...]


class SequenceDetector(GroupedDetector):
    kind = "sequence"

    def __init__(self, rule: Any, env: Any) -> None:
        params: SequenceParams = rule.params
        super().__init__(rule, env, params.group_by)
        self.p = params
        self._steps = [_CompiledStep(s) for s in params.steps]
        self._absent = [m.compile() for m in params.absent]
        self._within = params.within.total_seconds()
        self._also = [
            (s.first_seen, CompiledEntry(e)) for s in params.steps if s.first_seen for e in s.seen_also
        ]
        self._types = frozenset().union(
            *(s.match.types for s in params.steps),
            *(m.types for m in params.absent),
            *(e.types for _, e in self._also),
        )
        # Fields later steps refer to are captured with each step's evidence.
        self._captures: dict[str, list[tuple[str, Getter]]] = {s.name: [] for s in params.steps}
        for s in params.steps:
            for _, name, path in (*s.same_as, *s.differs):
                self._captures[name].append((path, compile_getter(path)))
            if s.ratio_to:
                self._captures[s.ratio_to.step].append((s.ratio_to.of, compile_getter(s.ratio_to.of)))
        # Per step, the (earlier step, path) values steps after it compare against: chains
        # reaching the step with other such values are kept apart (see _advance).
        index = {s.name: i for i, s in enumerate(params.steps)}
        self._links: list[list[tuple[str, str]]] = [[] for _ in params.steps]
        for k, s in enumerate(params.steps):
            refs = [(name, path) for _, name, path in (*s.same_as, *s.differs)]
            if s.ratio_to:
                refs.append((s.ratio_to.step, s.ratio_to.of))
            for name, path in refs:
                for i in range(index[name], k):
                    if (name, path) not in self._links[i]:
                        self._links[i].append((name, path))
        # Evidence shows what each step was judged on: its conditions, its first_seen field, and
        # the fields it was compared by (same_as, differs, ratio_to), both sides.  Without the
        # compared ones, api-key-new-ip's alert named the key's creation IP as the one it was
        # used from, and dropped the IP that made it fire.
        extra = [
            p
            for s in params.steps
            for p in (
                *s.match.paths,
                *([s.first_seen] if s.first_seen else []),
                *(path for here, _, there in (*s.same_as, *s.differs) for path in (here, there)),
                *((s.ratio_to.field, s.ratio_to.of) if s.ratio_to else ()),
            )
        ]
        self._evidence = EvidenceMaker(extra, rule.explanation)
        # Per step, the field values an event matching it keeps: what later steps compare
        # against, and what its own link checks need.
        self._values = [
            [
                (path, compile_getter(path))
                for path in dict.fromkeys([*(p for p, _ in self._captures[cs.step.name]), *cs.own])
            ]
            for cs in self._steps
        ]
        self._lateness = min(self._within, MAX_LATENESS_S)
        self._seen_paths = sorted({s.first_seen for s in params.steps if s.first_seen})
        self._seen_getters = [(p, compile_getter(p)) for p in self._seen_paths]
        self._seen_types = frozenset().union(*(s.match.types for s in params.steps if s.first_seen))
        #: Per first_seen path a min_seen step reads: how many of its earliest sighting times
        #: to keep (the largest min_seen), so "seen that often before" is judged in event time.
        self._keep_early: dict[str, int] = {}
        for s in params.steps:
            if s.first_seen and s.min_seen:
                self._keep_early[s.first_seen] = max(self._keep_early.get(s.first_seen, 0), s.min_seen)
        # The group's last event time is read only by after_idle steps.
        self._uses_last = any(cs.idle is not None for cs in self._steps)
        self._plans = {EVENT_TYPES[t]: self._plan(t) for t in self._types}

    def _plan(self, tag: str) -> _TypePlan:
        """What an event of type ``tag`` is checked against: an event reaches every rule that
        names its type, but most of a rule's steps are of other types."""
        return _TypePlan(
            tuple(
                (i, cs, cs.step.match.compile_where(), self._values[i])
                for i, cs in enumerate(self._steps)
                if tag in cs.step.match.types
            ),
            tuple(m.compile() for m in self.p.absent if tag in m.types),
            tuple(self._seen_getters) if tag in self._seen_types else (),
            tuple((path, e) for path, e in self._also if tag in e.types),
        )

    @property
    def types(self) -> frozenset[str]:
        return self._types

    def expiries(self) -> tuple[Expiry, ...]:
        # A rule with first_seen or after_idle steps keeps a profile per group (the values it
        # used, its last event time): kept by design, one per customer or vendor, and needed
        # however long the group is quiet (a dormant account's return is the signal).  Without
        # them a group's state is its recent steps and partial chains alone, of no use once
        # they are past the span and the lateness: kept otherwise for every group ever seen.
        if self._seen_paths or self._also or self._uses_last:
            return ()
        return (Expiry("s:", self._chains_over),)

    def _chains_over(self, st: Any, now: float) -> bool:
        """Whether a group's steps are all older than any chain or late event can use (its
        partial chains started no later than its newest step, and ``done`` is pruned with them)."""
        buf = st.get("buf") if isinstance(st, dict) else None
        newest = buf[-1][0] if buf else None
        return newest is None or now - newest > self._within + self._lateness

    def process(self, event: Event, state: State, hits: list[Hit], route: str | None = None) -> None:
        plan = self._plans[type(event)]
        key = self.group_key(event, route)
        if key is None:
            return
        # What needs no state is judged first: an event that can take no step, clear no chain
        # and add to no seen history changes nothing this rule reads, so it costs no state
        # round trip (only after_idle steps read the group's last event time it would move).
        steps = [(i, cs, values) for i, cs, where, values in plan.steps if where is None or where(event)]
        # (Most types have no absent or seen_also entry: no generator or list built for them.)
        absent = bool(plan.absent) and any(check(event) for check in plan.absent)
        also = [(path, e) for path, e in plan.also if e.match(event)] if plan.also else plan.also
        if not (steps or absent or also or plan.seen or self._uses_last):
            return
        skey = f"s:{key}"
        st: dict[str, Any] = state.get(skey) or {"p": [[] for _ in self._steps], "seen": {}, "last": None}
        now = ts(event)
        matched = [
            [i, {path: kept(get(event)) for path, get in values}]
            for i, cs, values in steps
            if self._qualifies(cs, event, st, now)
        ]
        evidence = self._evidence(event) if absent or matched else None
        if evidence is not None and _delivered_before(st.get("buf"), now, evidence[0]):
            # A source's redelivery (same id, same time): as a second event it could take the
            # chain's next step itself.
            absent, matched = False, []
        if evidence is not None and (absent or matched):
            entry = [now, absent, matched, evidence]
            buf: list[Any] = st.setdefault("buf", [])
            done: list[Any] = st.setdefault("done", [])
            newest = buf[-1][0] if buf else now
            if now > newest or (now == newest and not (buf and _step_before(entry, buf[-1]))):
                buf.append(entry)
                st["p"] = progress = _chains(st["p"])
                found = self._advance(progress, entry)
                if found is not None:
                    self._fire(key, found, hits, done, st)
            else:
                # Arrived late (another topic or partition lagged): put it in its event-time
                # place and replay the recent steps, so the chain is judged as it happened.  Of
                # events at the same time, one taking an earlier step goes first (an address added
                # and a withdrawal to it in the same second, read in either order, are one chain).
                at = len(buf)
                while at > 0 and (
                    buf[at - 1][0] > now or (buf[at - 1][0] == now and _step_before(entry, buf[at - 1]))
                ):
                    at -= 1
                buf.insert(at, entry)
                # From the chains as they stood before the oldest buffered event (a copy:
                # _advance replaces a chain, never changes one).
                # (_advance replaces a step's list of chains, never changes one: a shallow copy.)
                progress = list(_chains(st.get("b")) or [[] for _ in self._steps])
                for e in buf:
                    found = self._advance(progress, e)
                    if found is not None:
                        self._fire(key, found, hits, done, st)
                st["p"] = progress
            horizon = max(newest, now) - self._within - self._lateness
            start = len(buf) - MAX_BUFFERED if len(buf) > MAX_BUFFERED else 0
            while start < len(buf) and buf[start][0] < horizon:
                start += 1
            if start:
                # Falling out of the buffer: folded into the base the next replay starts from
                # (their chains were judged when they came; only what they began is kept).
                base = _chains(st.get("b")) or [[] for _ in self._steps]
                for e in buf[:start]:
                    self._advance(base, e)
                # A chain begun before the horizon less the span can only be taken on by events
                # later than the lateness allows: dropped.
                oldest = horizon - self._within
                base = [[c for c in chains if c[0] >= oldest] for chains in base]
                if any(base):
                    st["b"] = base
                else:
                    st.pop("b", None)
                buf = buf[start:]
            st["buf"] = buf
            st["done"] = [d for d in done if d[0] >= horizon]
        # Most events change nothing here (a login from a device seen before): the state is
        # then not written, so the checkpoint neither encodes it nor sends it to the changelog.
        changed = bool(absent or matched)
        seen: dict[str, Any] = st["seen"]
        counts: dict[str, int] = st.get("n", {})
        keep = self._keep_early
        early: dict[str, list[float]] = st.setdefault("e", {}) if keep else {}
        for path, get in plan.seen:
            value = get(event)
            changed = _remember(seen, path, value, now, counts, early, keep.get(path, 0)) or changed
        for path, entry_ in also:
            value = entry_.value(event)
            changed = _remember(seen, path, value, now, counts, early, keep.get(path, 0)) or changed
        if self._uses_last:
            changed = note_time(st, now, MAX_LATENESS_S) or changed
        if changed:
            state.set(skey, st)

    def _advance(self, progress: list[list[Any]], entry: list[Any]) -> list[Any] | None:
        """Apply one buffered event to the partial chains; the completed chain, if any.

        ``progress`` holds, per step, the chains that reached it (``[start, evidence,
        captured values]``); a step's list is replaced, never changed, so a shallow copy of
        ``progress`` is a snapshot.  Later steps are tried first, so one event never advances
        two steps."""
        now, absent, matched, evidence = entry
        # Applied in event-time order this is the whole of it.  A late event folded into the
        # replay base after later ones (see process) must act as it would have at its time: it
        # clears only chains begun by then (so does a completion), starts a chain only if none
        # with its values began later, neither takes on nor replaces a chain whose last step is
        # later than it, and a chain it replaces takes with it those built on that one by steps
        # later than it (in event time they would have built on it).  The base keeps one chain
        # per step and values, so a chain the late event would have made them build on instead
        # is not made: such a late event can miss an alert, not add one.
        if absent:
            progress[:] = [[c for c in chains if c[0] > now] for chains in progress]
        last_step = len(self._steps) - 1
        completed = None
        for i, values in reversed(matched):
            cs = self._steps[i]
            if i == 0:
                chain = [now, [evidence], {cs.step.name: values}]
                key = self._key(0, chain[2])
                same = self._same(progress[0], 0, key)
                if same is None or same[0] <= now:
                    self._put(progress, 0, chain, same)
                    self._drop_built_after(progress, 0, chain)
                continue
            # Every chain at the step before that this event takes on is taken on, each to a
            # chain with the values later steps compare against (a reset after two addresses
            # were added is a step of both); of those with the same values, the latest begun
            # (the greedy choice one chain a step made).
            found: dict[tuple[str, ...], tuple[tuple[float, float], list[Any]]] = {}
            for prev in progress[i - 1]:
                at = (float(prev[0]), _last_time(prev))
                if now - at[0] > self._within or at[1] > now or not self._linked(cs, values, prev[2]):
                    continue
                caps = {**prev[2], cs.step.name: values}
                key = self._key(i, caps) if i < last_step else ()
                if key not in found or found[key][0] < at:
                    found[key] = (at, [prev[0], [*prev[1], evidence], caps])
            if not found:
                continue
            if i == last_step:
                completed = found[()][1]
                # A completion uses up the chains begun by then; with ``repeat`` the chains up
                # to the last step stay, for the next event taking that step (a second withdrawal
                # to the attacker's address, or to the other address added).
                progress[:] = [
                    [c for c in chains if c[0] > now or (self.p.repeat and j == i - 1)]
                    for j, chains in enumerate(progress)
                ]
                break
            for key, (_, chain) in found.items():
                same = self._same(progress[i], i, key)
                if same is not None and _last_time(same) > now:
                    continue
                self._put(progress, i, chain, same)
                self._drop_built_after(progress, i, chain)
        # Forget chains that can no longer complete.
        progress[:] = [[c for c in chains if now - c[0] <= self._within] for chains in progress]
        return completed

    def _key(self, step: int, caps: dict[str, Any]) -> tuple[str, ...]:
        """The values of a chain at ``step`` that steps after it compare against, as compared
        (``_linked`` compares text, case-insensitively)."""
        return tuple(str(caps.get(name, {}).get(path)).lower() for name, path in self._links[step])

    def _same(self, chains: list[list[Any]], step: int, key: tuple[str, ...]) -> list[Any] | None:
        """The chain of ``chains`` (at ``step``) with these values, if any."""
        for c in chains:
            if self._key(step, c[2]) == key:
                return c
        return None

    def _put(
        self, progress: list[list[Any]], step: int, chain: list[Any], replaced: list[Any] | None
    ) -> None:
        """Put ``chain`` in step ``step``'s list, in place of ``replaced`` (same values)."""
        chains = [c for c in progress[step] if c is not replaced]
        chains.append(chain)
        if len(chains) > MAX_CHAINS:
            # The least recently advanced goes (by the time of its last step).
            chains.remove(min(chains, key=_last_time))
        progress[step] = chains

    def _drop_built_after(self, progress: list[list[Any]], step: int, chain: list[Any]) -> None:
        """``chain`` just reached step ``step`` at its last event's time (``now``), in place of
        the chain with its values if there was one: chains of later steps built on that one,
        whose next step came after ``now``, are dropped (in event time that step would have
        taken on ``chain`` instead).  In event-time order there are none."""
        now = _last_time(chain)
        key = self._key(step, chain[2])
        for j in range(step + 1, len(progress)):
            chains = progress[j]
            if any(c[1][step][2] < now < c[1][step + 1][2] for c in chains):
                progress[j] = [
                    c
                    for c in chains
                    if not (c[1][step][2] < now < c[1][step + 1][2] and self._key(step, c[2]) == key)
                ]

    def _fire(self, key: str, chain: list[Any], hits: list[Hit], done: list[Any], st: dict[str, Any]) -> None:
        evidence: list[Any] = chain[1]
        # A chain is identified by the event that completed it: a replay that completes it
        # again (perhaps from another start) found what was already reported.
        last_id = evidence[-1][0]
        # Without ``repeat``, a chain's first event begins one alert: a late event replayed can
        # complete the chain again with another last event (the withdrawal before the one
        # reported), which was the same attack.
        first_id = evidence[0][0] if not self.p.repeat else None
        if any(d[1] == last_id or (first_id is not None and d[2:] == [first_id]) for d in done):
            return
        if not self._still_qualified(chain, st):
            return
        done.append([evidence[-1][2], last_id] if first_id is None else [evidence[-1][2], last_id, first_id])
        hits.append(
            Hit(
                entity=entity_ref(key),
                evidence=evidence,
                context={
                    "steps": " -> ".join(s.step.name for s in self._steps),
                    "span": _minutes(evidence[-1][2] - chain[0]),
                    "group": key,
                },
            )
        )

    def _still_qualified(self, chain: list[Any], st: dict[str, Any]) -> bool:
        """Whether each first_seen step of a completed chain saw its value first, after
        ``min_seen`` sightings of others, and each after_idle step followed its idle time, as
        of its event time.

        A step is judged when its event is processed; a sighting at an earlier event time may
        arrive only after it (another input topic lagged: a payment from a device fetched after
        the login from it).  The seen history keeps each value's earliest event time and the
        earliest sighting times, so at completion the chain is judged again as a run in
        event-time order would have: a value seen before the step is not new, and sightings
        that arrived late count towards ``min_seen`` (which :meth:`_qualifies` leaves to
        here)."""
        seen = st["seen"]
        steps: dict[str, Any] = chain[2]
        for i, cs in enumerate(self._steps):
            at = chain[1][i][2]
            if cs.idle is not None:
                # Dormant as of its time: an earlier event of the group read after the step
                # (a withdrawal 20 minutes before the login, its topic behind) breaks the idle.
                # (None: the times before were let go, or state kept before they were; the step
                # was judged dormant on the history it had, which this cannot contradict.)
                last = time_before(st, at, strictly=True)
                if last is not None and at - last < cs.idle:
                    return False
            path = cs.step.first_seen
            if path is None:
                continue
            if cs.step.min_seen and _observed(st, path, at) < cs.step.min_seen:
                return False
            value = steps.get(cs.step.name, {}).get(path)
            if value is None:
                continue
            first = _seen_at(seen, path).get(seen_text(value))
            if first is not None and first < at:
                return False
        return True

    def _qualifies(self, cs: _CompiledStep, event: Event, st: dict[str, Any], now: float) -> bool:
        path = cs.step.first_seen
        if cs.first_seen is not None and path is not None:
            value = cs.first_seen(event)
            if value is None:
                return False
            # min_seen is judged when the chain completes (_still_qualified): sightings before
            # this event may still be on their way.
            first = _seen_at(st["seen"], path).get(seen_text(value))
            # Seen only at a later event time (that event arrived first) is still new here.
            if first is not None and first <= now:
                return False
        if cs.idle is not None:
            last = time_before(st, now)
            # No history at all is not evidence of dormancy: the account may simply be new to us.
            if last is None or now - last < cs.idle:
                return False
        return True

    def _linked(self, cs: _CompiledStep, values: dict[str, Any], caps: dict[str, dict[str, Any]]) -> bool:
        for here, name, path in cs.step.same_as:
            want = caps.get(name, {}).get(path)
            got = values.get(here)
            if want is None or got is None or str(got).lower() != str(want).lower():
                return False
        for here, name, path in cs.step.differs:
            other = caps.get(name, {}).get(path)
            got = values.get(here)
            if got is None or (other is not None and str(got).lower() == str(other).lower()):
                return False
        ratio = cs.step.ratio_to
        if ratio is not None:
            base = caps.get(ratio.step, {}).get(ratio.of)
            got = values.get(ratio.field)
            if not isinstance(base, (int, float)) or not isinstance(got, (int, float)) or base <= 0:
                return False
            if not compare(ratio.op, float(got) / float(base), ratio.bound):
                return False
        return True


def _step_before(entry: list[Any], other: list[Any]) -> bool:
    """Whether buffered ``entry`` takes an earlier step than ``other`` (both at the same time):
    event time cannot order them, the chain's order can.  Negations keep their arrival order."""
    mine, theirs = entry[2], other[2]
    # Every step it takes before every step the other takes (a withdrawal that can be a chain's
    # first step and its last is not put before the address added between them).
    return bool(mine and theirs) and max(m[0] for m in mine) < min(m[0] for m in theirs)


def _delivered_before(buf: list[Any] | None, now: float, event_id: str) -> bool:
    """Whether the buffered step events hold ``event_id`` at time ``now`` already."""
    if not buf:
        return False
    at = bisect_left(buf, now, key=_entry_time)
    while at < len(buf) and buf[at][0] == now:
        if buf[at][3][0] == event_id:
            return True
        at += 1
    return False


def _entry_time(entry: list[Any]) -> float:
    return float(entry[0])


def _remember(
    seen: dict[str, Any],
    path: str,
    value: Any,
    now: float,
    counts: dict[str, int],
    early: dict[str, list[float]],
    keep: int,
) -> bool:
    """Record ``value`` as seen at ``now`` (its earliest event time is what counts), and, for a
    path a ``min_seen`` step reads, the ``keep`` earliest event times anything was seen at.
    Whether the state changed.

    ``counts`` is read only for state kept before the sighting times were (it had a count per
    path): ``early`` holds the times from the first sighting on, so nothing counts any more."""
    if value is None:
        return False
    changed = False
    if keep:
        kept = early.get(path)
        if kept is None and not counts.get(path) and seen.get(path):
            # A rule given min_seen after its state was kept (ato-sequence's devices): the values
            # seen, each at its first time, are its sightings so far.  Without them every
            # customer looked new until a sighting after the change, and the first could be
            # the attacker's.
            kept = sorted(_seen_at(seen, path).values())[:keep]
            early[path] = kept
            changed = True
        times = early[path] = earliest_times(kept, counts.get(path, 0), keep)
        changed = add_time(times, now, keep) or kept is None or changed
    return see(_seen_at(seen, path), seen_text(value), now) or changed


def _seen_at(seen: dict[str, Any], path: str) -> dict[str, float]:
    """The values seen at ``path`` with the event time each was first seen (see
    :func:`first_seen_times`), stored back as such."""
    values = seen.get(path)
    if not isinstance(values, dict):
        values = seen[path] = first_seen_times(values)
    return values


def _minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _observed(st: dict[str, Any], path: str, at: float) -> int:
    """Sightings at ``path`` before event time ``at``, whatever arrived first (see _remember);
    state from before those times were kept has only the count."""
    times = st.get("e", {}).get(path)
    if times is not None:
        return bisect_left(times, at)
    counted = st.get("n", {}).get(path)
    if counted is not None:
        return int(counted)
    # (Kept before min_seen was asked of the path: the values seen before ``at`` are sightings.)
    return sum(1 for first in first_seen_times(st.get("seen", {}).get(path)).values() if first < at)


def _last_time(chain: list[Any]) -> float:
    return float(chain[1][-1][2])


def _chains(progress: list[Any] | None) -> list[list[Any]]:
    """Per step, its list of chains; state kept before chains were kept apart by their values
    held one chain (or None) a step."""
    if not progress:
        return []
    if all(isinstance(c, list) and (not c or isinstance(c[0], list)) for c in progress):
        return progress
    return [[] if c is None else [c] if c and not isinstance(c[0], list) else c for c in progress]
