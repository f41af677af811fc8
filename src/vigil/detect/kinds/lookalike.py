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
(head, tail), so each check is one dict lookup.  The index is shared by all customers
(a poisoner imitates the counterparties it sees on chain), so on Kafka the rule's events
route under one key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vigil.detect.kinds.base import EvidenceMaker, Hit, entity_ref
from vigil.detect.kinds.common import CompiledEntry, FieldEntry, SingleRouteDetector, parse_entries
from vigil.detect.rules.loader import LocDict
from vigil.detect.rules.parse import Parser
from vigil.events.base import Event
from vigil.events.types import EVENT_TYPES, EntityRef
from vigil.stream.base import State

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


class LookalikeDetector(SingleRouteDetector):
    kind = "lookalike"

    def __init__(self, rule: Any, env: Any) -> None:
        super().__init__(rule, env, "lookalike")
        params: LookalikeParams = rule.params
        self.p = params
        self._known = [CompiledEntry(k) for k in params.known]
        self._checks = [CompiledEntry(c) for c in params.check]
        self._types = frozenset().union(*(k.types for k in self._known), *(c.types for c in self._checks))
        self._evidence = EvidenceMaker([c.field for c in params.check])
        #: Per event class, the checks and the known entries that may match it (in rule order).
        self._checks_of = {EVENT_TYPES[t]: [c for c in self._checks if t in c.types] for t in self._types}
        self._known_of = {EVENT_TYPES[t]: [k for k in self._known if t in k.types] for t in self._types}
        self._entries_of = {cls: [*checks, *self._known_of[cls]] for cls, checks in self._checks_of.items()}

    @property
    def types(self) -> frozenset[str]:
        return self._types

    def wants(self, event: Event) -> bool:
        # process() reads and writes only for an entry matching the event with an address value.
        for entry in self._entries_of.get(type(event), ()):
            if entry.match(event) and isinstance(entry.value(event), str):
                return True
        return False

    def process(self, event: Event, state: State, hits: list[Hit], route: str | None = None) -> None:
        chars = self.p.chars
        for check in self._checks_of.get(type(event), ()):
            if not check.match(event):
                continue
            value = check.value(event)
            group = check.group_key(event)
            if not isinstance(value, str) or group is None:
                continue
            address = value.lower()
            flagged = state.get(f"f:{address}")
            remember = check.entry.remember
            if flagged is None or (flagged == DUST_ONLY and remember):
                key = imitation_key(address, chars)
                known = state.get(f"k:{key}") if key else None
                others = [k for k in known or () if k != address]
                if others:
                    flagged = others[0]
                    state.set(f"f:{address}", flagged)
                elif remember and key is not None:
                    if flagged is None:
                        state.set(f"f:{address}", DUST_ONLY)
                        dusters: list[str] = state.get(f"r:{key}") or []
                        state.set(f"r:{key}", [*dusters[-MAX_PER_KEY + 1 :], address])
                    continue
                elif flagged is None:
                    continue
            if check.entry.alert:
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
        for known_entry in self._known_of.get(type(event), ()):
            if not known_entry.match(event):
                continue
            value = known_entry.value(event)
            if not isinstance(value, str):
                continue
            address = value.lower()
            key = imitation_key(address, chars)
            if key is None:
                continue
            # A reference already known (a customer's usual counterparty) changes nothing: asked
            # first, it spares the flag lookup, which misses for almost every address.
            current: list[str] = state.get(f"k:{key}") or []
            if address in current:
                continue
            if state.get(f"f:{address}") is not None:
                continue  # an imitation never becomes a reference
            state.set(f"k:{key}", [*current[-MAX_PER_KEY + 1 :], address])
            # Dust senders waiting for an original: this is the one they imitate.
            for duster in state.get(f"r:{key}") or ():
                if duster != address and state.get(f"f:{duster}") == DUST_ONLY:
                    state.set(f"f:{duster}", address)
