"""Exposure: 1-2 hop proximity on the transfer graph to sanctioned or scam addresses.

::

    type: exposure
    edges: {type: chain_transfer}                # transfers that make the graph
    categories: [sanctioned]                     # which listed addresses taint
    hops: 2
    min_hops: 1                                  # direct hits are the intel rule's job
    check:
      - {type: deposit, field: payload.from_address, group_by: customer}
      - {type: withdrawal_request, field: payload.to_address, group_by: customer}

Each edge A -> B propagates taint both ways: B *received from* a listed address within n
hops (funds whose origin is tainted), A *sent to* one within n hops (a destination that
feeds a listed address).  A checked address within ``min_hops``..``hops`` alerts at once.
A withdrawal destination that is clean when checked is watched for 7 days: if it later
sends to a listed address (directly or through one more hop) the customer who withdrew to
it is alerted then, with the withdrawal and the tainting transfer as evidence.

Addresses are compared as :func:`vigil.events.addresses.canonical_address` spells them (EVM
and bech32 lower-case, base58 as written: lower-casing a legacy Bitcoin address names another
one, and OFAC's Bitcoin list is mostly those).  A listing counts while it is valid at the
event's time: past its ``valid_until`` an address taints nothing new (taint it passed on
before stays).

Service hubs (senders with 100+ transfers seen, like an exchange hot wallet) neither pass
taint on nor receive sent-to taint: exposure measured through a hub says nothing about
its users (a listed hub still taints whoever pays it directly).  Sent-to taint reaches back one
level through remembered senders (16 per address).  The graph is one state, so on Kafka the
rule's events route under one key.  An alert's id is the check and its address, whichever
tainting transfer and origin were known first.

The graph lets go of addresses gone quiet: an address's transfer count goes ``GRAPH_IDLE_S``
(180 days) after its last transfer out, the senders remembered for it as long after the last
transfer it received, so with the whole chain flowing in, state follows the addresses in use,
not every address ever seen.  (Half a year: funds received are often held for weeks before
they move on, and sent-to taint reaches their senders through that memory.)  A hub's count
stays (few addresses, and each would otherwise pass taint on again for its next 100
transfers).  Taint stays: it is the history the rule is about, and only addresses within two
hops of a listed one have it.  Counts and senders kept by earlier versions, without a time,
stay until a transfer renews them.  Expiry is judged in event time, so a backfill of chain
history older than that, read beside live events, keeps little of its graph.

Judged in event time, not arrival order.  Transfers come from the chain's topic, deposits and
withdrawals from the exchange's: a deposit can arrive before the transfer that tainted its
sender, and a transfer before the one that tainted its own sender.  Taint remembers since
when (event time) it holds; a check counts only taint that held at its time (or, for a
withdrawal, sent-to taint that came within the watch).  A clean check is kept on its address
for ``LATE_S`` (a withdrawal for the 7-day watch) and alerts when taint that held at its time
arrives late; received-from taint that arrives late also passes one hop on to the
receivers its address already paid after it was tainted (16 per address, the latest edge
time each).  Only the closest taint per address and direction is kept, so a closer taint that
holds only later hides a farther one that held earlier: a check between the two arriving
late is judged against the closer one and passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vigil.detect.fields import Match, compile_getter, tag_of
from vigil.detect.kinds.base import EvidenceMaker, Expiry, Hit, StoredEvidence, entity_ref, ts
from vigil.detect.kinds.common import (
    CompiledEntry,
    FieldEntry,
    SingleRouteDetector,
    parse_entries,
    set_or_delete,
)
from vigil.detect.kinds.intel import CATEGORIES
from vigil.detect.rules.loader import LocDict
from vigil.detect.rules.parse import Parser
from vigil.events.addresses import canonical_address
from vigil.events.base import Event
from vigil.events.types import EntityRef
from vigil.stream.base import State

CONTEXT = frozenset({"address", "hops", "origin", "category", "direction", "group"})
HUB_DEGREE = 100
MAX_SENDERS = 16
MAX_WATCHERS = 32
MAX_RECEIVERS = 16
WATCH_SECONDS = 7 * 86400.0
#: An address's transfer count and remembered senders go this long (event time) after its
#: last transfer (a hub's count stays).
GRAPH_IDLE_S = 180 * 86400.0
#: A remembered sender's time is moved on when it sends again this much later: a write per
#: repeated edge would cost more than the time is worth.
_SENDER_REFRESH_S = 86400.0
#: How far (event-time seconds) a transfer may arrive behind a deposit or withdrawal it taints
#: and still be judged as if it had arrived first: the chain topic lags the exchange's own.
LATE_S = 3600.0
#: Clean checks watched on an address: withdrawals (``w:``, a week) and the rest (``l:``).
_WATCHES = ("w:", "l:")


@dataclass(frozen=True)
class ExposureParams:
    edges: Match
    categories: frozenset[str]
    hops: int
    min_hops: int
    check: tuple[FieldEntry, ...]


def parse(d: LocDict, p: Parser, what: str) -> ExposureParams | None:
    e = p.mapping(d.get("edges"), d.mark("edges"), f"{what}.edges")
    edges = p.match(e, f"{what}.edges") if e is not None else None
    if edges is not None and edges.types != frozenset({"chain_transfer"}):
        p.error(
            d.mark("edges"),
            f"{what}.edges.type must be chain_transfer (the transfer graph); got {sorted(edges.types)}",
        )
        edges = None
    cats = p.strings(d, "categories", what) or []
    bad = [c for c in cats if c not in CATEGORIES]
    if bad or not cats:
        p.error(
            d.mark("categories"),
            f"{what}.categories must list some of: {', '.join(CATEGORIES)}; got {cats or None}",
        )
    hops = p.integer(d, "hops", what, default=2, minimum=1)
    min_hops = p.integer(d, "min_hops", what, default=1, minimum=0)
    if hops is not None and hops > 2:
        p.error(d.mark("hops"), f"{what}.hops must be 1 or 2 (state grows with every hop); got {hops}")
        hops = None
    if hops is not None and min_hops is not None and min_hops > hops:
        # Taint is followed no further than ``hops``: nothing is ever that far, and the rule
        # validated and never fired.
        p.error(
            d.mark("min_hops"),
            f"{what}.min_hops ({min_hops}) is more than hops ({hops}), so no address is ever within "
            f"{min_hops}..{hops} hops and the rule never fires; make min_hops at most hops",
        )
        min_hops = None
    check = parse_entries(d, "check", p, what, group_required=True)
    if edges is None or bad or not cats or hops is None or min_hops is None or check is None:
        return None
    return ExposureParams(edges, frozenset(cats), hops, min_hops, tuple(check))


class ExposureDetector(SingleRouteDetector):
    kind = "exposure"

    def __init__(self, rule: Any, env: Any) -> None:
        super().__init__(rule, env, "graph")
        params: ExposureParams = rule.params
        self.p = params
        self._edge = params.edges.compile()
        self._from = compile_getter("payload.from_address")
        self._to = compile_getter("payload.to_address")
        self._checks = [CompiledEntry(c) for c in params.check]
        self._types = params.edges.types.union(*(c.types for c in self._checks))
        self._evidence = EvidenceMaker([c.field for c in params.check], rule.explanation)
        #: Per event type, the checks that may match it.
        self._checks_of = {t: [c for c in self._checks if t in c.types] for t in self._types}

    @property
    def types(self) -> frozenset[str]:
        return self._types

    def expiries(self) -> tuple[Expiry, ...]:
        return (
            *(Expiry(prefix, _watch_over) for prefix in _WATCHES),
            Expiry("r:", _paid_over),
            Expiry("o:", _node_over),
            Expiry("e:", _senders_over),
        )

    def _listed(self, address: str, at: datetime) -> tuple[str, str] | None:
        """The listed category of ``address`` at event time ``at`` (a listing past its
        ``valid_until`` no longer counts), if it is one this rule watches, and the address as
        the list spells it (a Bitcoin Cash address listed as CashAddr, seen in its legacy
        spelling on a chain: an origin named otherwise was not to be found in the list)."""
        entry = self.env.intel.lookup(address, at, self.p.categories)
        if entry is None:
            return None
        return str(entry.category), entry.listed_as or address

    def _taint(self, state: State, address: str, direction: str, at: datetime) -> list[Any] | None:
        """[hops, origin, category, since] for ``address`` in ``direction`` ('in' or 'out'): 0
        hops if listed; ``since``, the event time from which it holds."""
        listed = self._listed(address, at)
        if listed is not None:
            return [0, listed[1], listed[0], 0.0]
        got = state.get(f"t:{direction}:{address}")
        if got is None:
            return None
        return [*got, 0.0] if len(got) < 4 else list(got)  # a 3-item entry predates ``since``

    def wants(self, event: Event) -> bool:
        # process() acts on a checked address (a matching entry with a text value) or an edge.
        tag = tag_of(event)
        if tag == "chain_transfer" and self._edge(event):
            return True
        for check in self._checks_of.get(tag, ()):
            if check.match(event) and isinstance(check.value(event), str):
                return True
        return False

    def process(self, event: Event, state: State, hits: list[Hit], route: str | None = None) -> None:
        now = ts(event)
        tag = tag_of(event)
        for check in self._checks_of.get(tag, ()):
            if check.match(event):
                self._check(check, event, state, hits, now)
        if tag == "chain_transfer" and self._edge(event):
            self._edge_seen(event, state, hits, now)

    def _check(self, check: CompiledEntry, event: Event, state: State, hits: list[Hit], now: float) -> None:
        value = check.value(event)
        group = check.group_key(event)
        if not isinstance(value, str) or group is None:
            return
        address = canonical_address(value)
        watch = WATCH_SECONDS if tag_of(event) == "withdrawal_request" else LATE_S
        best = None
        for direction in ("in", "out"):
            taint = self._taint(state, address, direction, event.occurred_at)
            if (
                taint is not None
                and _counts(taint[3], direction, now, watch)
                and (best is None or taint[0] < best[0])
            ):
                best = [*taint[:3], direction]
        if best is not None and self.p.min_hops <= best[0] <= self.p.hops:
            hits.append(self._hit(group, [self._evidence(event)], address, best))
            return
        # Clean as it stands: watched for taint still on its way (see the module docstring).
        # Withdrawals (watched for a week) and the rest (for LATE_S) under separate keys, so a
        # stream of deposits from one address does not push a withdrawal's watch out.
        wkey = f"{'w' if watch >= WATCH_SECONDS else 'l'}:{address}"
        watchers = [w for w in state.get(wkey) or [] if now - w[2] <= _kept(w)][-MAX_WATCHERS + 1 :]
        watchers.append([group, self._evidence(event), now, watch])
        state.set(wkey, watchers)

    def _edge_seen(self, event: Event, state: State, hits: list[Hit], now: float) -> None:
        a, b = self._from(event), self._to(event)
        if not isinstance(a, str) or not isinstance(b, str):
            return
        a, b = canonical_address(a), canonical_address(b)
        when = event.occurred_at
        node = state.get(f"o:{a}")
        # (Every transfer counts: one read again after an at-least-once redelivery too, as
        # transfers of one block share their time and no transfer id is kept to tell them apart.)
        degree = _degree(node) + 1
        state.set(f"o:{a}", [degree, max(now, _last(node))])
        senders = _entries(state.get(f"e:{b}"), now)
        at = next((i for i, e in enumerate(senders) if e[0] == a), -1)
        if at < 0:
            state.set(f"e:{b}", [*senders[-MAX_SENDERS + 1 :], [a, now]])
        elif now - senders[at][1] >= _SENDER_REFRESH_S:
            senders[at] = [a, now]
            state.set(f"e:{b}", senders)
        stored = self._evidence(event)
        if degree < HUB_DEGREE:
            # The receivers A paid, with the last time: received-from taint reaching A late
            # passes on to those paid after it (see _spread).
            paid: list[list[Any]] = []
            last = now
            for r in state.get(f"r:{a}") or ():
                if r[0] == b:
                    last = max(last, r[1])
                else:
                    paid.append(r)
            state.set(f"r:{a}", [*paid[-MAX_RECEIVERS + 1 :], [b, last]])
        # Received-from taint flows forward along the edge (not out of hubs), if A held it then.
        src = self._taint(state, a, "in", when)
        if src is not None and src[0] < self.p.hops and src[3] <= now and degree < HUB_DEGREE:
            level = [src[0] + 1, src[1], src[2], now]
            if self._improve(state, b, "in", level, when):
                self._wake(state, b, level, "in", stored, hits)
                self._spread(state, b, level, stored, hits, when)
        # Sent-to taint flows backward: A fed B, which is (or feeds) a listed address; not
        # through a hub B (an exchange's hot wallet that paid a listed address says nothing of
        # everyone depositing to it), nor to a hub A.
        dst = self._taint(state, b, "out", when)
        if (
            dst is not None
            and dst[0] < self.p.hops
            and degree < HUB_DEGREE
            and (dst[0] == 0 or _degree(state.get(f"o:{b}")) < HUB_DEGREE)
        ):
            level = [dst[0] + 1, dst[1], dst[2], max(dst[3], now)]
            if self._improve(state, a, "out", level, when):
                self._wake(state, a, level, "out", stored, hits)
                if level[0] < self.p.hops:
                    for s, _ in _entries(state.get(f"e:{a}")):
                        if _degree(state.get(f"o:{s}")) >= HUB_DEGREE:
                            continue
                        up = [level[0] + 1, *level[1:]]
                        if self._improve(state, s, "out", up, when):
                            self._wake(state, s, up, "out", stored, hits)

    def _spread(
        self,
        state: State,
        address: str,
        taint: list[Any],
        edge: StoredEvidence,
        hits: list[Hit],
        at: datetime,
    ) -> None:
        """Received-from ``taint`` just reached ``address``: pass it one hop on to the receivers
        ``address`` paid since (those edges arrived first).  ``at``: the event's time."""
        if taint[0] >= self.p.hops or _degree(state.get(f"o:{address}")) >= HUB_DEGREE:
            return
        for receiver, when in state.get(f"r:{address}") or []:
            if when >= taint[3]:
                on = [taint[0] + 1, taint[1], taint[2], when]
                if self._improve(state, receiver, "in", on, at):
                    self._wake(state, receiver, on, "in", edge, hits)

    def _improve(self, state: State, address: str, direction: str, taint: list[Any], at: datetime) -> bool:
        """Keep ``taint`` for ``address`` when it is closer, or as close and holding earlier
        (a listed address holds its own, 0 hops, as of ``at``)."""
        if self._listed(address, at) is not None:
            return False
        key = f"t:{direction}:{address}"
        current = state.get(key)
        if current is not None and (current[0], current[3] if len(current) > 3 else 0.0) <= (
            taint[0],
            taint[3],
        ):
            return False
        state.set(key, taint)
        return True

    def _wake(
        self,
        state: State,
        address: str,
        taint: list[Any],
        direction: str,
        edge: StoredEvidence,
        hits: list[Hit],
    ) -> None:
        """Alert the checks watched on ``address`` that ``taint`` (just learned) applies to."""
        if not self.p.min_hops <= taint[0] <= self.p.hops:
            return
        for prefix in _WATCHES:
            key = prefix + address
            watchers = state.get(key)
            if not watchers:
                continue
            kept = []
            for w in watchers:
                if _counts(taint[3], direction, w[2], _kept(w)):
                    hits.append(self._hit(w[0], [w[1], edge], address, [*taint[:3], direction]))
                else:
                    kept.append(w)
            if len(kept) != len(watchers):
                set_or_delete(state, key, kept)

    def _hit(self, group: str, evidence: list[StoredEvidence], address: str, taint: list[Any]) -> Hit:
        hops, origin, category, direction = taint
        return Hit(
            # The checked event and its address (each alerts once): the tainting transfer is in
            # the evidence only when it arrived after the check, and which origin is the
            # closest known depends on what arrived first, so both are left out of the id.
            identity=[evidence[0][0], address],
            entity=entity_ref(group),
            evidence=evidence,
            related=[EntityRef(kind="wallet", id=address), EntityRef(kind="counterparty", id=str(origin))],
            context={
                "address": address,
                "hops": str(hops),
                "origin": str(origin),
                "category": str(category),
                "direction": "received from" if direction == "in" else "sends to",
                "group": group,
            },
            score=None,
        )


def _degree(node: Any) -> int:
    """An address's transfer count from its ``o:`` entry: [count, last transfer time], or a
    bare count as kept before addresses expired (None: no transfer seen)."""
    if node is None:
        return 0
    return int(node[0]) if isinstance(node, list) else int(node)


def _last(node: Any) -> float:
    return float(node[1]) if isinstance(node, list) else 0.0


def _entries(senders: Any, now: float = 0.0) -> list[list[Any]]:
    """Remembered senders as [address, last time], from an ``e:`` entry (a bare address, as kept
    before addresses expired, as seen ``now``: written back, it is renewed)."""
    return [[e, now] if isinstance(e, str) else list(e) for e in senders or ()]


def _node_over(node: Any, now: float) -> bool:
    # A count kept before addresses expired has no time: it stays until renewed.
    return isinstance(node, list) and node[0] < HUB_DEGREE and now - node[1] > GRAPH_IDLE_S


def _senders_over(senders: Any, now: float) -> bool:
    return all(isinstance(e, list) and now - e[1] > GRAPH_IDLE_S for e in senders)


def _watch_over(watchers: Any, now: float) -> bool:
    return all(now - w[2] > _kept(w) for w in watchers)


def _paid_over(paid: Any, now: float) -> bool:
    return all(now - r[1] > LATE_S for r in paid)


def _kept(watcher: list[Any]) -> float:
    """How long (event-time seconds) a clean check is watched: a 3-item entry predates deposits
    being watched, and was a withdrawal."""
    return float(watcher[3]) if len(watcher) > 3 else WATCH_SECONDS


def _counts(since: float, direction: str, when: float, watch: float) -> bool:
    """Whether taint holding from ``since`` applies to a check at ``when`` watched for ``watch``:
    taint that held then, or sent-to taint (funds went on to a listed address) within a
    withdrawal's watch."""
    return since <= when or (direction == "out" and watch >= WATCH_SECONDS and since - when <= watch)
