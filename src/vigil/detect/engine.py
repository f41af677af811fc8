"""From rules to operators: the same detection code in memory and on the Kafka runtime.

:class:`RuleSet` compiles validated rules into detectors and indexes them by event type,
so each event reaches only the rules that look at it.  :class:`DetectOperator` runs a
rule set over a batch: it feeds intel records to the shared index (hot reload), gives
each detector its own versioned store (``detect.<rule id>.v<version>``) and turns hits
into alerts on ``alerts`` and decisions on ``decisions``.

Partitioning (why there are two stages on Kafka)
    A rule correlates events by one key: a customer, an IP, a vendor's customers, the
    transfer graph.  The canonical topics are keyed by their own entity (customer for
    identity and payments, account for market, vendor for saas, wallet for chain), so an
    IP's failed logins or a vendor export and its customers' later logins can sit in
    different partitions, even different processes.  On Kafka detection is therefore two
    applications:

    1. ``detect-route`` (:class:`RouteOperator`, stateless) reads the canonical topics and
       writes each event to the internal topic ``detect.routed`` once per distinct key
       some rule needs it under (``customer:c1``, ``ip:203.0.113.9``, and for a vendor
       export one copy per customer it names).  Keys are hashed to partitions the same way
       in every process, so every event a rule correlates meets in one partition.  A rule
       grouping by several fields (customer and asset) is routed by the first alone, which
       co-locates its groups just as well and shares the record with the rules grouping by
       that entity; an event no rule wants (:meth:`Detector.wants`: a trade between
       accounts the wash-trading rule cannot link) is not routed at all.  Every re-keyed
       record costs an encode, a produce, a fetch and a decode, more than most rules.
    2. ``detect`` (:class:`DetectOperator` with ``routed=True``) reads ``detect.routed``;
       for a record keyed K it runs only the rules that routed that event under K, so no
       rule sees an event twice.  State moves with its partition on rebalance.

    ``DetectionService`` by default (``local_stage``) runs the rules whose events are already
    keyed by their group entity (:func:`is_local`) in stage 1, on the aligned inputs, and
    routes only the events other rules need: fewer routed records and one hop less for those
    rules' alerts.  ``local_stage=False`` runs every rule in stage 2.  Stage 1 also keeps what
    it routed to a rule that can tell, from that, which of its events repeat what it already
    has (wash trading's links, which a customer's usual logins repeat:
    :meth:`Detector.is_redundant`), and the router leaves those out.

    Rules whose state is one graph (exposure, linked accounts) route under one constant
    key: correct with any number of partitions and processes, at the cost of that rule's
    events sharing one partition.  The look-alike index is global too, but everything it
    keeps about an address is keyed by the address's head and tail, so it routes by those
    and spreads over every partition.  Intel indicators are a global table: every process
    holds the whole index (read from the compacted ``intel.indicators``), so intel rules
    need no re-keying.

    In memory (:func:`vigil.testing.run_operators`, one partition) the router is not
    needed: every key's state is in the one partition's stores.

Event-time order
    Windows and sequences assume each key's events arrive roughly in event-time order.
    The route stage fetches in small chunks so the input topics interleave finely.
    Replaying a large backlog (a Kappa replay) would still deliver a sparse topic hours of
    event time ahead of a busy one, so the route application runs with the runtime's
    event-time alignment (``max_event_time_skew_s``): records are held until the slowest
    partition with data to read has caught up, and partitions far ahead are paused.
    ``vigil eval --kafka --backlog`` measures exactly that case against the in-memory scores.
    The detect stage processes records in the order they come, its routed topic's log order (one
    partition a key), and so does the route stage when aligned: a replay or a restart makes the
    same alerts under the same ids however batches are cut.  Unaligned, the route stage sorts
    each batch by ``occurred_at``, as does ``detect_events`` in memory (``order_batches``).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from vigil.detect.alerts import make_alert, make_decision
from vigil.detect.fields import TAGS
from vigil.detect.intel import IntelIndex
from vigil.detect.kinds.base import Detector, Env, Expiry, Hit
from vigil.detect.rules.models import Rule
from vigil.detect.rules.registry import KINDS
from vigil.events.base import Event
from vigil.events.types import EVENT_TYPES, IntelIndicator
from vigil.hub.client import kafka_error
from vigil.stream.base import Context, Operator, Record, State, StoreSpec

ALERTS_TOPIC = "alerts"
DECISIONS_TOPIC = "decisions"
ROUTED_TOPIC = "detect.routed"
#: Records per partition between sweeps of expired state (see DetectOperator._maybe_sweep).
SWEEP_EVERY = 50_000
#: Keys a sweep looks at in one batch of a partition: a store of any size is swept a slice at a
#: time, so no batch waits for a whole store.
SWEEP_SLICE = 1000
#: A sweep judges staleness at the newest event time of its batch, but never more than this
#: ahead of the wall clock: one event with a wrong or forged time a year ahead would otherwise
#: make every window and chain in the slice look expired, and delete state still in use.
#: (Events are not from the future; a source's clock may run a little fast.)
SWEEP_AHEAD_S = 600.0
#: And it judges an hour behind that: state is let go to bound memory, not to decide what is
#: late, and the newest event of a batch may be another key's, minutes ahead of a key whose
#: window is still filling (a window of four denied MFA prompts was deleted by a sweep of a
#: batch holding another customer's event five minutes newer, and the fifth denial alerted on
#: nothing).  An hour: the most any rule kind waits for a late event (sequences).
SWEEP_GRACE_S = 3600.0


class _Sweep:
    """A sweep under way on one partition: the prefixes left to walk (the next one last), and
    the last key looked at under the current one."""

    __slots__ = ("after", "due")

    def __init__(self, due: list[tuple[Detector, Expiry]]) -> None:
        self.due = due
        self.after: str | None = None


class RuleSet:
    """Compiled detectors for a list of rules, sharing one intel index."""

    def __init__(self, rules: Sequence[Rule], intel: IntelIndex | None = None) -> None:
        ids = [r.id for r in rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            msg = f"duplicate rule ids {dupes}; every rule needs its own id"
            raise ValueError(msg)
        self.rules = list(rules)
        self.intel = intel if intel is not None else IntelIndex()
        env = Env(self.intel)
        self.detectors: list[Detector] = [KINDS[r.kind].detector(r, env) for r in self.rules]
        self.local = [d for d in self.detectors if is_local(d)]
        self.remote = [d for d in self.detectors if not is_local(d)]
        #: Routed detectors whose redundant events stage 1 can tell (:meth:`Detector.is_redundant`).
        self.dedup = [d for d in self.remote if d.dedup_store is not None]
        self.by_type = _by_type(self.detectors)
        self._plan = _route_plan(self.detectors)
        self._remote_plan = _route_plan(self.remote)
        self._narrowers = _narrowers(self.detectors)
        self._remote_narrowers = _narrowers(self.remote)
        #: Event classes some routed detector writes narrowed (:meth:`narrowed`).
        self.narrows = frozenset(EVENT_TYPES[t] for t in self._narrowers)

    def routes_for(self, event: Event, *, remote_only: bool) -> list[str]:
        """Keys under which ``event`` must reach the detectors of the routed stage."""
        plan = (self._remote_plan if remote_only else self._plan).get(TAGS[type(event)])
        if not plan:
            return []
        if len(plan) == 1:  # one way of routing: no keys to merge
            router, choosy = plan[0]
            if choosy and not any(det.wants(event) for det in choosy):
                return []
            return router(event)
        keys: dict[str, None] = {}
        for router, choosy in plan:
            if choosy:
                for det in choosy:
                    if det.wants(event):
                        break
                else:
                    continue
            for key in router(event):
                keys[key] = None
        return list(keys)

    def narrowed(self, event: Event, key: str, *, remote_only: bool) -> Event | None:
        """What to write under ``key``, one of ``event``'s routes, if not the whole event: the
        part its only detector under that key needs (:meth:`Detector.narrowed`)."""
        narrowers = (self._remote_narrowers if remote_only else self._narrowers).get(TAGS[type(event)])
        for prefix, det in narrowers or ():
            if key.startswith(prefix):
                return det.narrowed(event, key)
        return None

    def subset(self, which: str) -> list[Detector]:
        return {"all": self.detectors, "local": self.local, "remote": self.remote}[which]


Router = Callable[[Event], list[str]]


def _route_groups(detectors: Sequence[Detector]) -> dict[str, list[list[Detector]]]:
    """Per event type, its detectors grouped by how they route it (:meth:`Detector.route_id_for`)."""
    out: dict[str, list[list[Detector]]] = {}
    for t, dets in _by_type(detectors).items():
        groups: dict[object, list[Detector]] = {}
        for det in dets:
            groups.setdefault(det.route_id_for(t), []).append(det)
        out[t] = list(groups.values())
    return out


def _narrowers(detectors: Sequence[Detector]) -> dict[str, list[tuple[str, Detector]]]:
    """Per event type, (key prefix, detector) of the detectors that narrow what they route
    (:meth:`Detector.narrowed`) and alone route under keys with that prefix: a key routed to
    others too must carry the whole event."""
    out: dict[str, list[tuple[str, Detector]]] = {}
    for t, groups in _route_groups(detectors).items():
        prefixes = [members[0].route_prefix for members in groups]
        for slot, members in enumerate(groups):
            det = members[0]
            if (
                len(members) == 1
                and type(det).narrowed is not Detector.narrowed
                and _prefix_decides(slot, prefixes)
            ):
                out.setdefault(t, []).append((prefixes[slot], det))
    return out


def _route_plan(detectors: Sequence[Detector]) -> dict[str, list[tuple[Router, list[Detector]]]]:
    """Per event type, one entry per way of routing (:func:`_route_groups`): the ``routes`` of
    its first member, computed once per event for all, and the members that must be asked
    whether they want the event (none when one of them wants every event)."""
    plan: dict[str, list[tuple[Router, list[Detector]]]] = {}
    for t, groups in _route_groups(detectors).items():
        plan[t] = [
            (members[0].routes, [] if any(_wants_all(d) for d in members) else members) for members in groups
        ]
    return plan


def _wants_all(det: Detector) -> bool:
    return type(det).wants is Detector.wants


def _by_type(detectors: Sequence[Detector]) -> dict[str, list[Detector]]:
    out: dict[str, list[Detector]] = {}
    for det in detectors:
        for t in sorted(det.types):
            out.setdefault(t, []).append(det)
    return out


def is_local(det: Detector) -> bool:
    """Whether every event this detector reads is already keyed on its topic by the entity the
    detector groups by (a customer's logins and withdrawals): then it can run where the
    canonical topics are consumed, without re-keying."""
    # Grouping by (customer, asset) needs no more than all of a customer's events in one place.
    if not det.group_paths or not det.group_paths[0].startswith("entities."):
        return False
    kind = det.group_paths[0].removeprefix("entities.")
    return all(EVENT_TYPES[t].key_entity == kind for t in det.types)


_event_time = operator.attrgetter("event.occurred_at")

Dispatch = dict[type, tuple[list[tuple[Detector, int]], list[tuple[Router, str, bool]]]]


def _dispatch(detectors: Sequence[Detector]) -> Dispatch:
    """Per event class: its detectors in rule order, each with the index of its router among
    the class's distinct routers (see :func:`_route_plan`), and those routers with the prefix
    all their keys share (:attr:`Detector.route_prefix`) and whether that prefix alone tells
    the router's keys (:func:`_prefix_decides`)."""
    out: Dispatch = {}
    for tag, groups in _route_groups(detectors).items():
        slot_of = {id(det): slot for slot, members in enumerate(groups) for det in members}
        pairs = [(det, slot_of[id(det)]) for det in detectors if tag in det.types]
        prefixes = [members[0].route_prefix for members in groups]
        out[EVENT_TYPES[tag]] = (
            pairs,
            [
                (members[0].routes, prefixes[slot], _prefix_decides(slot, prefixes))
                for slot, members in enumerate(groups)
            ],
        )
    return out


def _prefix_decides(slot: int, prefixes: Sequence[str]) -> bool:
    """Whether a routed key of an event starting with ``prefixes[slot]`` can only have come from
    that router: its prefix is known and no other router of the event's type has one a key could
    share (``""``, unknown, shares with every key).  Then the routed stage need not compute the
    router's keys again to tell whether a record is its."""
    mine = prefixes[slot]
    return bool(mine) and not any(
        other.startswith(mine) or mine.startswith(other) for i, other in enumerate(prefixes) if i != slot
    )


def _latency_ms(record: Record[Any] | None, event: Event, wall: float) -> float | None:
    if event.ingested_at is not None:
        return max(0.0, (wall - event.ingested_at.timestamp()) * 1000)
    if record is not None and record.timestamp_ms > 0:
        return max(0.0, wall * 1000 - record.timestamp_ms)
    return None


class DetectOperator(Operator[Event]):
    """Runs a rule set over each batch (see the module docstring for ``routed``)."""

    dead_letter_errors = False

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        routed: bool = False,
        op_id: str = "detect.rules.v1",
        alerts_topic: str = ALERTS_TOPIC,
        decisions_topic: str = DECISIONS_TOPIC,
        detectors: str = "all",
        dedup: bool = False,
        order_batches: bool = True,
    ) -> None:
        self.id = op_id
        #: Whether each batch is put in event-time order first (see process).
        self.order_batches = order_batches
        self.subset = ruleset.subset(detectors)
        self._dispatch = _dispatch(self.subset)
        self.alerts_topic = alerts_topic
        self.decisions_topic = decisions_topic
        self.ruleset = ruleset
        self.routed = routed
        # Stage 1 beside a router of the remote rules only: judge here which events repeat what
        # those rules have already, so the router leaves them out (Detector.is_redundant).
        judges = [(d, d.dedup_store) for d in ruleset.dedup if d.dedup_store is not None] if dedup else []
        self._dedup: dict[type, list[tuple[Detector, StoreSpec]]] = {}
        for det, store in judges:
            for tag in sorted(det.dedup_types):
                self._dedup.setdefault(EVENT_TYPES[tag], []).append((det, store))
        self.stores = tuple(d.store for d in self.subset) + tuple(store for _, store in judges)
        self.alerts = 0
        self.decisions = 0
        self.swept = 0
        self._since_sweep: dict[int, int] = {}
        #: What a sweep walks, in rule order: each detector's expiring key prefixes.
        self._expiring = [(det, expiry) for det in self.subset for expiry in det.expiries()]
        #: Per partition, the sweep under way.
        self._sweeps: dict[int, _Sweep] = {}

    def process(self, batch: Sequence[Record[Event]], ctx: Context) -> None:
        states: dict[str, State] = {}
        dispatch = self._dispatch
        routed = self.routed
        # Windows and sequences run on event time: put a batch back in event-time order
        # (records of one key from different input topics may interleave out of order).  Not
        # where the input comes in an order of its own (the route stage's alignment, or the
        # routed topic's log, one partition a key): sorted a batch at a time, the order, and
        # with it a threshold's evidence and an alert's id, hung on where batches were cut,
        # and a restart or replay sent the same alert under another id.
        ordered = sorted(batch, key=_event_time) if self.order_batches else batch
        hits: list[Hit] = []
        dedup = self._dedup
        for rec in ordered:
            event = rec.event
            if dedup:
                judges = dedup.get(type(event))
                if judges is not None:
                    self._judge(judges, event, ctx, states)
            entry = dispatch.get(type(event))
            if entry is None:
                if isinstance(event, IntelIndicator):
                    self.ruleset.intel.apply(event)
                continue
            detectors, routers = entry
            key = rec.key.decode() if routed and rec.key is not None else None
            # On the routed stage a detector sees the record only if it routed the event under
            # this record's key (each of its keys is a record of its own): one check per router.
            wanted = (
                [
                    key.startswith(prefix) and (decides or key in router(event))
                    for router, prefix, decides in routers
                ]
                if key is not None
                else None
            )
            for det, slot in detectors:
                if wanted is not None and not wanted[slot]:
                    continue
                state = states.get(det.store_id)
                if state is None:
                    state = states[det.store_id] = ctx.state(det.store)
                det.process(event, state, hits, key)
                if hits:
                    for hit in hits:
                        self._emit(det, hit, rec, event, ctx)
                    hits = []
        self._maybe_sweep(ordered, ctx, states)

    @staticmethod
    def _judge(
        judges: list[tuple[Detector, StoreSpec]], event: Event, ctx: Context, states: dict[str, State]
    ) -> None:
        for det, store in judges:
            state = states.get(store.id)
            if state is None:
                state = states[store.id] = ctx.state(store)
            if det.is_redundant(event, state):
                det.redundant.add(id(event))

    def _maybe_sweep(self, batch: Sequence[Record[Event]], ctx: Context, states: dict[str, State]) -> None:
        """Every SWEEP_EVERY records of a partition, drop its expired windows and marks, a slice
        of SWEEP_SLICE keys per batch, store after store.  (Measured in memory on the shipped
        rules at 20,000 customers, 500-record batches: every store at once held a batch back
        42-61 ms, one store at once up to 33 ms, the wash-trading rule's 28,600 keys, and a
        store's sweep grows with it; in slices, the longest batch took 17 ms and the 99th
        percentile 9, against 48-50 and 23 with a whole key prefix per batch, at the same rate.)
        The walk may pass over keys first written while it goes on: they are fresh, and the
        next sweep looks at them."""
        if not batch:
            return
        part = ctx.partition
        sweep = self._sweeps.get(part)
        if sweep is None:
            seen = self._since_sweep.get(part, 0) + len(batch)
            if seen < SWEEP_EVERY:
                self._since_sweep[part] = seen
                return
            self._since_sweep[part] = 0
            if not self._expiring:
                return
            # Reversed: taken from the end, the prefixes go in rule order.
            sweep = self._sweeps[part] = _Sweep(self._expiring[::-1])
        det, expiry = sweep.due[-1]
        newest = max(r.event.occurred_at for r in batch).timestamp()
        now = min(newest, time.time() + SWEEP_AHEAD_S) - SWEEP_GRACE_S
        state = states.get(det.store_id) or ctx.state(det.store)
        entries = state.walk(expiry.prefix, sweep.after, SWEEP_SLICE)
        stale = expiry.stale
        for key, value in entries:
            if stale(value, now):
                state.delete(key)
                self.swept += 1
        if len(entries) >= SWEEP_SLICE:
            sweep.after = entries[-1][0]
            return
        sweep.due.pop()
        sweep.after = None
        if not sweep.due:
            del self._sweeps[part]

    def _emit(self, det: Detector, hit: Hit, rec: Record[Event], event: Event, ctx: Context) -> None:
        alert = make_alert(det.rule, hit, latency_ms=_latency_ms(rec, event, time.time()))
        ctx.emit(self.alerts_topic, alert)
        self.alerts += 1
        decision = make_decision(det.rule, alert, hit)
        if decision is not None:
            ctx.emit(self.decisions_topic, decision)
            self.decisions += 1


class RouteOperator(Operator[Event]):
    """Stage 1 on Kafka: re-key each event under every key a rule correlates it by."""

    stores = ()

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        topic: str = ROUTED_TOPIC,
        op_id: str = "detect.route.v1",
        remote_only: bool = False,
        order_batches: bool = True,
    ) -> None:
        self.id = op_id
        #: Whether each batch is routed in event-time order (see process; DetectOperator's).
        self.order_batches = order_batches
        self.ruleset = ruleset
        self.topic = topic
        self.remote_only = remote_only
        self.routed = 0
        #: Events too large to route under a key (dead-lettered; see process).
        self.refused = 0
        #: Detectors whose redundant events stage 1 marks (DetectOperator ``dedup``) for this
        #: router to leave out; the marks are for the batch at hand.
        self._dedup = ruleset.dedup

    def process(self, batch: Sequence[Record[Event]], ctx: Context) -> None:
        # One batch holds this partition's records of every input topic: write them on in
        # event-time order so the detect stage sees a customer's logins and withdrawals in
        # the order they happened (see DetectionService for the fetch sizes that keep the
        # topics interleaved finely).
        # (With the runtime's event-time alignment a batch is often a record or two: keep the
        # per-call work small.)
        routes_for, remote_only = self.ruleset.routes_for, self.remote_only
        narrows, narrowed = self.ruleset.narrows, self.ruleset.narrowed
        # Forwarded, not emitted: the event goes on as it came, in the bytes it was read as
        # (unless its detector under a key needs only part of it: see RuleSet.narrowed).
        forward, topic = ctx.forward, self.topic
        routed = 0
        try:
            for rec in sorted(batch, key=_event_time) if self.order_batches and len(batch) > 1 else batch:
                event = rec.event
                narrow = type(event) in narrows
                refused: list[str] = []
                why = ""
                for key in routes_for(event, remote_only=remote_only):
                    part = narrowed(event, key, remote_only=remote_only) if narrow else None
                    try:
                        if part is None:
                            forward(topic, rec, key)
                        else:
                            ctx.emit(topic, part, key)
                    except KafkaException as exc:
                        # An event near the record limit, routed under a key longer than its own
                        # (``customer:`` before the id), is over it: refused, it stopped the stage
                        # at that event, and at every restart.  Routed under every key it fits,
                        # dead-lettered once for the others (sent again, it would fail again: the
                        # event itself is too large).
                        err = kafka_error(exc)
                        if err is None or err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
                            raise
                        refused.append(key[:80])
                        why = err.str()
                        continue
                    routed += 1
                if refused:
                    self.refused += 1
                    keys = ", ".join(map(repr, refused[:5])) + (" ..." if len(refused) > 5 else "")
                    ctx.dead_letter(rec, f"{self.id}: cannot route the event under {keys}: {why}")
        finally:
            # The marks name event objects of this batch: once it is gone, another may take an id.
            for det in self._dedup:
                if det.redundant:
                    det.redundant.clear()
        self.routed += routed


def detect_events(
    ruleset: RuleSet, events: Iterable[Event], *, batch_size: int = 2000
) -> tuple[list[Any], list[Any]]:
    """Run a rule set over events in memory; returns (alerts, decisions) in emission order.

    Each batch is put in event-time order by the operator, so ``batch_size=1`` is how to feed
    events in the order given (arrival order)."""
    from vigil.testing import run_operators

    op = DetectOperator(ruleset)
    result = run_operators([op], events, batch_size=batch_size, checkpoints=False)
    return result.emitted(ALERTS_TOPIC), result.emitted(DECISIONS_TOPIC)
