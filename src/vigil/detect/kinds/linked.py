"""Linked parties: events between entities that share an identity attribute (wash trading).

::

    type: linked
    links: {type: [login], party: account, attributes: [device, ip]}   # who uses what
    match: {type: trade}
    parties: [payload.maker_account, payload.taker_account]
    timespan: 1h
    condition: {gte: 3}

Link events tie a party (an account) to attribute values (devices, IPs).  A matching event
between two different parties that share any attribute counts for that pair; the rule
fires when the pair's count in ``timespan`` meets the condition, then stays quiet for one
``timespan``.  The link graph spans all accounts, so on Kafka the rule routes under one key.

Link events and matches reach the rule through different topics and partitions, so a login
can arrive after trades that happened after it (live, one topic's fetch came back first).  A
match between parties that share nothing yet is held with both parties (the last
``MAX_HELD`` within ``timespan``); when a party gains a link, its held matches from that
link's event time on are counted with every counterparty it now shares a link with, as they
would have been had the link event arrived first.  (A held match older than the new link
stays uncounted, as in event-time order.)

Most link events repeat a link the rule already has (a customer's usual phone and home IP).
Where the link events are all keyed on their topics by one entity (a customer's logins and
withdrawals), the route stage keeps what it routed of each party's links, within the same
bounds, and leaves out a link event whose every link it routed recently
(:meth:`LinkedDetector.is_redundant`): on the simulated exchange six in seven, a fifth of all
routed records, and less load on the one partition the rule's key lands on.  A link is routed
again when it is among the older half of the party's links (the routed stage, applying the
same events in a slightly different order, may have dropped it to make room), when it is older
than every event routed for that link (a late one: the rule moves the link's first-seen time
back and counts the matches it held since), and once a day
(``RELINK_S``): whatever made the two stages' links differ (the routed stage's state lost, a
party's link events under two keys) heals within a day, and until then the rule may miss
trades over the links it lost.  A party with more than eight links routes its older ones at
every sighting: safe, and on the simulated exchange no party had that many.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from vigil.detect.fields import Match, bounded, compare, compile_getter, short_name
from vigil.detect.kinds.base import EvidenceMaker, Expiry, Hit, span_text, ts
from vigil.detect.kinds.common import SingleRouteDetector, set_or_delete
from vigil.detect.rules.loader import LocDict
from vigil.detect.rules.parse import Parser
from vigil.events.base import Event
from vigil.events.types import EVENT_TYPES, EntityRef
from vigil.stream.base import State, StoreSpec

CONTEXT = frozenset({"count", "span", "other", "shared", "group"})
MAX_LINKS = 16
#: The route stage routes a link it routed before again once this much event time has passed.
RELINK_S = 86_400.0
#: Matches between parties that share nothing yet, kept per party in case a link event that
#: happened before them arrives after them.
MAX_HELD = 16


@dataclass(frozen=True)
class LinkedParams:
    links: Match
    party: str
    attributes: tuple[str, ...]
    match: Match
    parties: tuple[str, str]
    timespan: timedelta
    condition: tuple[str, float]


def parse(d: LocDict, p: Parser, what: str) -> LinkedParams | None:
    lk = p.mapping(d.get("links"), d.mark("links"), f"{what}.links")
    links = party = None
    attrs: list[str | None] = []
    if lk is not None:
        p.keys(lk, f"{what}.links", required=("type", "party", "attributes"), optional=("where",))
        links = p.match(lk, f"{what}.links")
        types = links.types if links else None
        party = p.path(lk.get("party"), lk.mark("party"), f"{what}.links.party", types)
        attrs = [
            p.path(a, lk.mark("attributes"), f"{what}.links.attributes", types)
            for a in p.strings(lk, "attributes", f"{what}.links") or []
        ]
    m = p.mapping(d.get("match"), d.mark("match"), f"{what}.match")
    match = p.match(m, f"{what}.match") if m is not None else None
    names = p.strings(d, "parties", what) or []
    if len(names) != 2:
        p.error(
            d.mark("parties"), f"{what}.parties must name exactly two fields (the two sides); got {names}"
        )
    parties = [p.path(n, d.mark("parties"), f"{what}.parties", match.types if match else None) for n in names]
    if len(parties) == 2 and parties[0] is not None and parties[0] == parties[1]:
        # Both sides the same field: every match is a party with itself, which never counts.
        p.error(
            d.mark("parties"),
            f"{what}.parties names {parties[0]!r} twice: a match between a party and itself never "
            "counts, so the rule never fires; name the two sides (e.g. maker and taker account)",
        )
        parties = [None]
    span = p.duration(d, "timespan", what)
    condition = p.comparison(d, "condition", what)
    if (
        not links
        or not party
        or not attrs
        or None in attrs
        or not match
        or len(parties) != 2
        or None in parties
    ):
        return None
    if span is None or condition is None:
        return None
    return LinkedParams(
        links, party, tuple(a for a in attrs if a), match, (str(parties[0]), str(parties[1])), span, condition
    )


class LinkedDetector(SingleRouteDetector):
    kind = "linked"

    def __init__(self, rule: Any, env: Any) -> None:
        super().__init__(rule, env, "linked")
        params: LinkedParams = rule.params
        self.p = params
        self._links = params.links.compile()
        self._party = compile_getter(params.party)
        self._attrs = [(short_name(a), compile_getter(a)) for a in params.attributes]
        self._match = params.match.compile()
        self._a, self._b = compile_getter(params.parties[0]), compile_getter(params.parties[1])
        self._kind = short_name(params.party)
        self._span = params.timespan.total_seconds()
        self._evidence = EvidenceMaker([*params.match.paths, *params.parties], rule.explanation)
        self._types = params.links.types | params.match.types
        if len({EVENT_TYPES[t].key_entity for t in params.links.types}) == 1:
            self.dedup_store = StoreSpec(f"detect.{rule.id}.links-routed", rule.version)
            self.dedup_types = params.links.types

    @property
    def types(self) -> frozenset[str]:
        return self._types

    def expiries(self) -> tuple[Expiry, ...]:
        return (Expiry("w:", self._stale_window), Expiry("u:", self._stale_held))

    def _stale_window(self, window: Any, now: float) -> bool:
        return bool(now >= window["quiet"] and all(now - item[0] > self._span for item in window["items"]))

    def _stale_held(self, held: Any, now: float) -> bool:
        return all(now - item[0] > self._span for item in held)

    def wants(self, event: Event) -> bool:
        # What process() acts on: a link event naming its party, or a match between two parties.
        # (A compiled match checks the event's type first.)
        if self._links(event) and self._party(event):
            return id(event) not in self.redundant
        if self._match(event):
            a, b = self._a(event), self._b(event)
            return bool(a and b and a != b)
        return False

    def is_redundant(self, event: Event, state: State) -> bool:
        if not self._links(event):
            return False
        party = self._party(event)
        if not party:
            return not self._match(event)  # no link to learn
        key = f"r:{bounded(str(party))}"
        # The party's links as routed: [link, event time last routed, earliest event time
        # routed], oldest first, bounded as process() bounds the links it keeps.  (Items kept
        # before the third field have two: their last time stands in, later than or equal to
        # the earliest, so more is routed, never less.)
        routed: list[list[Any]] = state.get(key) or []
        now = ts(event)
        again = False
        for name, get in self._attrs:
            value = get(event)
            if not value:
                continue
            link = f"{name}:{bounded(str(value))}"
            at = next((i for i, item in enumerate(routed) if item[0] == link), -1)
            if at < 0:
                routed = [*routed[-MAX_LINKS + 1 :], [link, now, now]]
                again = True
            elif at < len(routed) - MAX_LINKS // 2:
                # Among the oldest: process() moves it to the newest end, and so does this list,
                # so both evict the same links (kept in place here, the two orders drifted apart
                # and a link left out here was one the rule had moved, and then evicted another).
                earliest = min(_earliest(routed[at]), now)
                routed = [*(item for item in routed if item[0] != link), [link, now, earliest]]
                again = True
            elif now < _earliest(routed[at]):
                # Older than every event routed for this link (it arrived late): the rule moves
                # the link's first-seen time back to it and counts the matches it held since.
                routed[at] = [link, routed[at][1], now]
                again = True
            elif now - routed[at][1] >= RELINK_S:
                routed[at][1] = now
                again = True
        if again:
            state.set(key, routed)
        # A link event that is also a match is routed as one.
        return not again and not self._match(event)

    def process(self, event: Event, state: State, hits: list[Hit], route: str | None = None) -> None:
        if self._links(event):
            party = self._party(event)
            if party:
                self._link(bounded(str(party)), event, state, hits)
        if not self._match(event):
            return
        a, b = self._a(event), self._b(event)
        if not a or not b or a == b:
            return
        a, b = bounded(str(a)), bounded(str(b))
        now = ts(event)
        evidence = self._evidence(event)
        links_a = state.get(f"p:{a}")
        shared = sorted(set(links_a).intersection(state.get(f"p:{b}") or ())) if links_a else []
        if shared:
            # Only links both parties had by the match's time: one learned later (its login
            # arrived first, the trades lagging on their topic) is held for, as in event-time
            # order, where the match came before the link.
            since_a: dict[str, float] = state.get(f"l:{a}") or {}
            since_b: dict[str, float] = state.get(f"l:{b}") or {}
            shared = [s for s in shared if since_a.get(s, 0.0) <= now and since_b.get(s, 0.0) <= now]
        if shared:
            self._count(state, a, b, shared, [[now, evidence]], hits)
        else:
            self._hold(state, a, b, now, evidence)

    def _link(self, party: str, event: Event, state: State, hits: list[Hit]) -> None:
        """Learn the party's links from a link event; count held matches a link makes shared."""
        mine: list[str] = state.get(f"p:{party}") or []
        # When (event time) each link was first seen, for links learned since this was kept: a
        # link event that arrives late moves its link's time earlier.
        since: dict[str, float] | None = None
        now = ts(event)
        recount = False
        for name, get in self._attrs:
            value = get(event)
            if not value:
                continue
            # Bounded: a device string is the client's to choose, and links are kept in state
            # and copied into alerts (600 KB device names made an alert too large to send,
            # which stopped the stage, again after every restart).
            link = f"{name}:{bounded(str(value))}"
            if since is None:
                since = state.get(f"l:{party}") or {}
            if link not in mine:
                mine = [*mine[-MAX_LINKS + 1 :], link]
                state.set(f"p:{party}", mine)
            else:
                if mine.index(link) < len(mine) - MAX_LINKS // 2:
                    # In use again but among the oldest: moved to the newest end, so the links
                    # evicted are those least recently used (a device kept through a new IP at
                    # every login was evicted after 16 of them).
                    mine = [*(other for other in mine if other != link), link]
                    state.set(f"p:{party}", mine)
                if since.get(link, 0.0) <= now:
                    continue
            since[link] = now
            recount = True
        if recount and since is not None:
            state.set(f"l:{party}", {k: v for k, v in since.items() if k in mine})
            self._recount(party, mine, now, state, hits)

    def _count(
        self, state: State, a: str, b: str, shared: list[str], new: list[list[Any]], hits: list[Hit]
    ) -> None:
        """Count matches ``new`` ([event time, evidence]) for the pair.  Each is judged at its
        time and, when held matches arrive late, so are the pair's later ones: the rule fires
        the first time the pair's count in ``timespan`` meets the condition, as it would have
        with everything in event-time order."""
        first, second = sorted((a, b))
        wkey = f"w:{first}|{second}"
        window: dict[str, Any] = state.get(wkey) or {"items": [], "quiet": 0.0}
        items: list[list[Any]] = window["items"]
        # A source's redelivery (the same event id, so the same time) counts once while the
        # first delivery is kept, as in a threshold window: one trade sent three times was a
        # pair's three trades.
        new = _unseen(items, new)
        if not new:
            return
        new = sorted(new, key=lambda i: float(i[0]))
        earliest = new[0][0]
        items = [*items, *new]
        if len(items) > len(new) and items[-len(new) - 1][0] > earliest:
            items.sort(key=lambda i: float(i[0]))  # held matches, older than some counted
        span = self._span
        j = next(k for k, i in enumerate(items) if i[0] >= earliest)
        while j < len(items):
            now = items[j][0]
            inside = [i for i in items[: j + 1] if now - i[0] <= span]
            if now >= window["quiet"] and compare(
                self.p.condition[0], float(len(inside)), self.p.condition[1]
            ):
                related = [EntityRef(kind=self._kind, id=second)]
                related += [EntityRef(kind=s.split(":", 1)[0], id=s.split(":", 1)[1]) for s in shared]
                hits.append(
                    Hit(
                        entity=EntityRef(kind=self._kind, id=first),
                        evidence=[i[1] for i in inside],
                        related=related,
                        context={
                            "count": str(len(inside)),
                            "span": span_text(self.p.timespan),
                            "other": second,
                            "shared": ", ".join(shared),
                            "group": first,
                        },
                    )
                )
                window["quiet"] = now + span
                items = items[j + 1 :]
                j = 0
                continue
            j += 1
        newest = items[-1][0] if items else 0.0
        window["items"] = [i for i in items if newest - i[0] <= span]
        state.set(wkey, window)

    def _hold(self, state: State, a: str, b: str, now: float, evidence: Any) -> None:
        """Keep a match between parties that share nothing (yet) with both of them: their link
        events travel other topics and partitions and may arrive after it (see the module
        docstring)."""
        span = self._span
        for party, other in ((a, b), (b, a)):
            key = f"u:{party}"
            held: list[list[Any]] | None = state.get(key)
            if held is None:
                held = []
            elif any(i[0] == now and i[1] == other and i[2][0] == evidence[0] for i in held):
                continue  # a redelivery of a match held already: counted once, if ever
            elif len(held) >= MAX_HELD or now - held[0][0] > span:
                # (Most trades only append: the list is trimmed when full or stale.)
                held = [i for i in held if now - i[0] <= span][-MAX_HELD + 1 :]
            held.append([now, other, evidence])
            state.set(key, held)

    def _recount(self, party: str, mine: list[str], since: float, state: State, hits: list[Hit]) -> None:
        """``party`` has a new link as of ``since``: count its held matches from then on with
        every counterparty it now shares a link with."""
        held: list[list[Any]] | None = state.get(f"u:{party}")
        if not held:
            return
        others = {i[1] for i in held if i[0] >= since}
        since_mine: dict[str, float] = state.get(f"l:{party}") or {}
        counted: set[tuple[float, str]] = set()  # (time, evidence id) of the matches counted
        for other in sorted(others):
            shared = sorted(set(mine).intersection(state.get(f"p:{other}") or ()))
            if not shared:
                continue
            since_other: dict[str, float] = state.get(f"l:{other}") or {}
            # A held match counts over the links both parties had by its time: the other's link
            # learned later (its login arriving first) does not reach back before it either.
            linked: dict[str, None] = {}
            items = []
            for item in held:
                if item[1] != other or item[0] < since:
                    continue
                at = [
                    s
                    for s in shared
                    if since_mine.get(s, 0.0) <= item[0] and since_other.get(s, 0.0) <= item[0]
                ]
                if at:
                    linked.update(dict.fromkeys(at))
                    items.append(item)
            if not items:
                continue
            self._count(state, party, other, sorted(linked), [[i[0], i[2]] for i in items], hits)
            done = {_held_key(i) for i in items}
            counted |= done
            theirs: list[list[Any]] = state.get(f"u:{other}") or []
            left = [i for i in theirs if not (i[1] == party and _held_key(i) in done)]
            if len(left) != len(theirs):
                set_or_delete(state, f"u:{other}", left)
        if counted:
            set_or_delete(state, f"u:{party}", [i for i in held if _held_key(i) not in counted])


def _earliest(item: list[Any]) -> float:
    """The earliest event time stage 1 routed for a link (see is_redundant)."""
    return float(item[2] if len(item) > 2 else item[1])


def _held_key(item: list[Any]) -> tuple[float, str]:
    """A held match as both parties hold it: its time and its evidence's event id."""
    return float(item[0]), str(item[2][0])


def _unseen(items: list[list[Any]], new: list[list[Any]]) -> list[list[Any]]:
    """The matches of ``new`` ([event time, evidence]) that neither ``items`` (a pair's
    counted matches, in time order) nor an earlier one of ``new`` holds: a match is its time
    and its event id."""
    out: list[list[Any]] = []
    seen: set[tuple[float, str]] = set()
    for item in new:
        now, event_id = float(item[0]), str(item[1][0])
        if (now, event_id) in seen:
            continue
        at = bisect_left(items, now, key=_item_time)
        while at < len(items) and items[at][0] == now and items[at][1][0] != event_id:
            at += 1
        if at < len(items) and items[at][0] == now:
            continue  # counted already
        seen.add((now, event_id))
        out.append(item)
    return out


def _item_time(item: list[Any]) -> float:
    return float(item[0])
