"""Look-alike addresses (address poisoning).

::

    type: lookalike
    chars: 4                     # leading and trailing characters that must match
    known:                       # addresses the exchange's customers really use
      - {type: deposit, field: payload.from_address}
      - {type: withdrawal_sent, field: payload.to_address}
    check:                       # addresses that must not imitate a known one
      - {type: chain_transfer, field: payload.from_address, group_by: counterparty,
         where: {payload.amount_usd: {lt: 1}}}          # inbound dust / zero-value
      - {type: withdrawal_request, field: payload.to_address, group_by: customer}

A checked address that shares its first and last ``chars`` characters (after ``0x``, case
folded) with a known address but differs in between imitates it: the rule fires and
remembers the imitation, so a later withdrawal to it fires even after the dust is gone.
Check entries with ``alert: false`` only remember.  With ``remember: true`` (for inbound
dust) the sender is remembered even when no original is known yet: it never becomes a
"known" address itself (so the real counterparty seen later is not mistaken for its
imitation), it is matched against originals as they become known, and sending funds to it
fires (an address whose only history is dusting customers).  Known addresses are indexed by
(head, tail), so each check is one dict lookup.  The index is shared by all customers (a
poisoner imitates the counterparties it sees on chain), but everything the rule keeps about an
address (the references with its head and tail, the dust senders waiting for one, whether it is
an imitation) is keyed by that (head, tail): on Kafka an event is routed once per distinct
(head, tail) among its addresses (``lookalike:<chars>:<head>-<tail>``) and handled there for
those addresses only, so the rule's state spreads over every partition.  Rules with the same
``chars`` and entries share those records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vigil.detect.kinds.base import Detector, EvidenceMaker, Hit, entity_ref
from vigil.detect.kinds.common import CompiledEntry, FieldEntry, parse_entries
from vigil.detect.rules.loader import LocDict
from vigil.detect.rules.parse import Parser
from vigil.events.base import Event
from vigil.events.types import EVENT_TYPES, EntityRef
from vigil.stream.base import State, StoreSpec

CONTEXT = frozenset({"address", "imitates", "chars", "group"})
#: Stands in for the original when a flagged address is a dust sender with no known original.
DUST_ONLY = ""
MAX_PER_KEY = 8


@dataclass(frozen=True)
class LookalikeParams:
    chars: int
    known: tuple[FieldEntry, ...]
    check: tuple[FieldEntry, ...]


def parse(d: LocDict, p: Parser, what: str) -> LookalikeParams | None:
    chars = p.integer(d, "chars", what, default=4, minimum=3)
    if chars is not None and chars > 10:
        p.error(d.mark("chars"), f"{what}.chars must be between 3 and 10; got {chars}")
        chars = None
    known = parse_entries(d, "known", p, what)
    check = parse_entries(d, "check", p, what, group_required=True, extra=("alert", "remember"))
    if chars is None or known is None or check is None:
        return None
    return LookalikeParams(chars, tuple(known), tuple(check))


def body(address: str) -> str:
    a = address.strip().lower()
    return a[2:] if a.startswith("0x") else a


def imitation_key(address: str, chars: int) -> str | None:
    b = body(address)
    if len(b) < 2 * chars + 4:
        return None
    return f"{b[:chars]}|{b[-chars:]}"


class LookalikeDetector(Detector):
    kind = "lookalike"

    def __init__(self, rule: Any, env: Any) -> None:
        super().__init__(rule, env)
        params: LookalikeParams = rule.params
        self.p = params
        # State moved from one key to one per (head, tail) with this layout: a new store name
        # starts it empty rather than leave it in partitions its keys no longer go to.
        self.store = StoreSpec(f"detect.{rule.id}.by-imitation", rule.version)
        self.store_id = self.store.id
        self._prefix = f"lookalike:{params.chars}:"
        self._known = [CompiledEntry(k) for k in params.known]
        self._checks = [CompiledEntry(c) for c in params.check]
        self._types = frozenset().union(*(k.types for k in self._known), *(c.types for c in self._checks))
        self._evidence = EvidenceMaker([c.field for c in params.check])
        #: Per event class, the checks and the known entries that may match it (in rule order).
        self._checks_of = {EVENT_TYPES[t]: [c for c in self._checks if t in c.types] for t in self._types}
        self._known_of = {EVENT_TYPES[t]: [k for k in self._known if t in k.types] for t in self._types}

    @property
    def types(self) -> frozenset[str]:
        return self._types

    def route_id_for(self, tag: str) -> object:
        # Rules reading the same addresses of an event type route it under the same keys (the
        # shipped poisoning rules read the same addresses of deposits, sends and transfers):
        # one router for all of them, and a key prefix that alone tells their records.  Each
        # rule's process() handles only the addresses of the record's key.
        return (
            "lookalike",
            self.p.chars,
            tuple((c.match, c.field, c.group_by) for c in self.p.check if tag in c.match.types),
            tuple((k.match, k.field) for k in self.p.known if tag in k.match.types),
        )

    @property
    def route_prefix(self) -> str:
        return self._prefix

    def _addresses(self, event: Event) -> list[tuple[CompiledEntry, str, str, str | None]]:
        """The entries ``event`` gives an address to act on, in the order :meth:`process` takes
        them (checks first), each with the address, its (head, tail) and, for a check, its group.
        An address too short for a (head, tail) can imitate nothing and be imitated by nothing:
        no entry acts on it (nor does a check without its group)."""
        out: list[tuple[CompiledEntry, str, str, str | None]] = []
        cls = type(event)
        chars = self.p.chars
        for check in self._checks_of.get(cls, ()):
            if check.match(event):
                value = check.value(event)
                group = check.group_key(event)
                if isinstance(value, str) and group is not None:
                    address = value.lower()
                    key = imitation_key(address, chars)
                    if key is not None:
                        out.append((check, address, key, group))
        for known in self._known_of.get(cls, ()):
            if known.match(event):
                value = known.value(event)
                if isinstance(value, str):
                    address = value.lower()
                    key = imitation_key(address, chars)
                    if key is not None:
                        out.append((known, address, key, None))
        return out

    def routes(self, event: Event) -> list[str]:
        # No address to act on, no route: the route stage drops the event for this rule.
        return list(dict.fromkeys(self._route_key(key) for _, _, key, _ in self._addresses(event)))

    def _route_key(self, key: str) -> str:
        # "-", not the state key's "|": a "|" in a routed key reads as a composite group's.
        return self._prefix + key.replace("|", "-")

    def process(self, event: Event, state: State, hits: list[Hit], route: str | None = None) -> None:
        # On Kafka, only the addresses with this record's (head, tail): the others are the
        # business of the records routed under theirs.
        for entry, address, key, group in self._addresses(event):
            if route is not None and self._route_key(key) != route:
                continue
            if group is not None:
                self._check(entry, event, address, key, group, state, hits)
            else:
                self._learn(address, key, state)

    def _check(
        self,
        check: CompiledEntry,
        event: Event,
        address: str,
        key: str,
        group: str,
        state: State,
        hits: list[Hit],
    ) -> None:
        flagged = state.get(f"f:{address}")
        remember = check.entry.remember
        if flagged is None or (flagged == DUST_ONLY and remember):
            known = state.get(f"k:{key}")
            others = [k for k in known or () if k != address]
            if others:
                flagged = others[0]
                state.set(f"f:{address}", flagged)
            elif remember:
                if flagged is None:
                    state.set(f"f:{address}", DUST_ONLY)
                    dusters: list[str] = state.get(f"r:{key}") or []
                    state.set(f"r:{key}", [*dusters[-MAX_PER_KEY + 1 :], address])
                return
            elif flagged is None:
                return
        if check.entry.alert:
            chars = self.p.chars
            hits.append(
                Hit(
                    entity=entity_ref(group),
                    evidence=[self._evidence(event)],
                    related=[
                        EntityRef(kind="wallet", id=address),
                        EntityRef(kind="counterparty", id=flagged),
                    ],
                    context={
                        "address": address,
                        "imitates": flagged,
                        "chars": str(chars),
                        "group": group,
                    },
                )
            )

    def _learn(self, address: str, key: str, state: State) -> None:
        # A reference already known (a customer's usual counterparty) changes nothing: asked
        # first, it spares the flag lookup, which misses for almost every address.
        current: list[str] = state.get(f"k:{key}") or []
        if address in current:
            return
        if state.get(f"f:{address}") is not None:
            return  # an imitation never becomes a reference
        state.set(f"k:{key}", [*current[-MAX_PER_KEY + 1 :], address])
        # Dust senders waiting for an original: this is the one they imitate.
        for duster in state.get(f"r:{key}") or ():
            if duster != address and state.get(f"f:{duster}") == DUST_ONLY:
                state.set(f"f:{duster}", address)
