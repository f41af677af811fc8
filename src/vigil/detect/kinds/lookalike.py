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

A checked address that shares its first and last ``chars`` characters with a known address
but differs in between imitates it: the rule fires and remembers the imitation, so a later
withdrawal to it fires even after the dust is gone.  The head is counted after what every
address of its kind starts with (:func:`body`: ``0x``, a segwit address's ``bc1q``, a
base58check address's version character), case-folded; alerts and what the rule keeps spell an
address as :func:`canonical_address` does (base58 is case-sensitive).  An address that is a
known address itself imitates only one known before it: the first known is the original, but
a poisoner's address that became known (funded) after it still imitates it.  Check entries with
``alert: false`` only remember.  With ``remember: true`` (for inbound dust) the sender is
remembered even when no original is known yet, unless it is known itself (a counterparty's
test transfer): it never becomes a "known" address itself (so the real counterparty seen later
is not mistaken for its imitation) until it sends what that check does not take for dust (seen
by a ``known`` entry reading the same field of the same events), it is matched against
originals as they become known, and sending funds to it fires (an address whose only history
is dusting customers).  Known addresses are indexed by
(head, tail), so each check is one dict lookup.  The index is shared by all customers (a
poisoner imitates the counterparties it sees on chain), but everything the rule keeps about an
address (the references with its head and tail, the dust senders waiting for one, whether it is
an imitation) is keyed by that (head, tail): on Kafka an event is routed once per distinct
(head, tail) among its addresses (``lookalike:<chars>:<head>-<tail>``) and handled there for
those addresses only, so the rule's state spreads over every partition.  Rules with the same
``chars`` and entries share those records.

Judged in event time, not arrival order.  The dust and the transfers that make an address
known come from the chain's topic, a customer's withdrawals from the exchange's, and either
can arrive first.  Known addresses remember since when (event time) they are known.  A
check that alerts but finds nothing (a dust sender with no original known yet included) is
held for ``LATE_S`` (the last ``MAX_HELD`` per (head, tail)); when its address is found to
be an imitation as of a time at or before the check (its dust, or the original it imitates,
arrived late, or an original's time moved earlier), the held check alerts then.  An address that
became known only through sends after its own dust (the sends arrived first) is no
reference once the dust arrives.  A flag keeps no time of when it began to hold: a check
made before its address was found an imitation, arriving after, alerts (in event-time order
it would have passed), so disorder can add such an alert but not lose one.  So can a dust
sender's send of more than dust that arrives before its dust (or its being known before the
dust, arriving after it): the dust flags it all the same.

What the rule knows is let go once unused for ``IDLE_S`` (180 days of event time): a reference
not seen again, a flag on an address that has not sent dust or been checked again, a dust
sender still waiting for its original.  With the whole chain flowing in, every address that
sends a transfer becomes known and every sender of dust is flagged: kept forever, the store
would hold every address ever seen.  A sighting renews what it touches at most once a day, so
the renewals cost a write per address a day, not per event.  Entries kept by earlier versions
have no time: they stay (their loss could miss an alert), until an event renews them.
Earlier versions keyed segwit and base58 addresses with their prefix (and CashAddr ones with
token support, ``z``/``r``, taken for CashAddr only since: their key held ``bitcoincash:``):
what they kept under those keys is no longer read (and goes once idle), and a flag they kept on
an address for an original with another key now, or for dust sent by a known address, is
dropped when the address is checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vigil.detect.kinds.base import Detector, EvidenceMaker, Expiry, Hit, entity_ref, placeholder_names, ts
from vigil.detect.kinds.common import CompiledEntry, FieldEntry, parse_entries, set_or_delete
from vigil.detect.rules.loader import LocDict
from vigil.detect.rules.parse import Parser
from vigil.events.addresses import canonical_address, is_cashaddr
from vigil.events.base import Event
from vigil.events.types import EVENT_TYPES, EntityRef
from vigil.stream.base import State, StoreSpec

CONTEXT = frozenset({"address", "imitates", "chars", "group"})
#: What an alert on a dust sender no known address resembles sets: no ``imitates``.
DUST_ONLY_CONTEXT = CONTEXT - {"imitates"}
#: Stands in for the original when a flagged address is a dust sender with no known original.
DUST_ONLY = ""
MAX_PER_KEY = 8
#: Clean checks kept per (head, tail), and for how long (event-time seconds), in case what
#: makes their address an imitation arrives after them (see the module docstring).
MAX_HELD = 16
LATE_S = 3600.0
#: References, flags and waiting dust senders go this long (event time) after their last use.
IDLE_S = 180 * 86400.0
#: A sighting renews an entry's time when it is older than this.
_RENEW_S = 86400.0


@dataclass(frozen=True)
class LookalikeParams:
    chars: int
    known: tuple[FieldEntry, ...]
    check: tuple[FieldEntry, ...]
    #: The explanation of an alert on a dust sender no known counterparty resembles (None: the
    #: rule's ``explanation``, ``{imitates}`` reading "(unknown)").
    dust_only_explanation: str | None = None


def parse(d: LocDict, p: Parser, what: str) -> LookalikeParams | None:
    chars = p.integer(d, "chars", what, default=4, minimum=3)
    if chars is not None and chars > 10:
        p.error(d.mark("chars"), f"{what}.chars must be between 3 and 10; got {chars}")
        chars = None
    known = parse_entries(d, "known", p, what)
    check = parse_entries(d, "check", p, what, group_required=True, extra=("alert", "remember"))
    # (Its placeholders are checked with the explanation's, by the rules' validation.)
    dust_only = p.string(d, "dust_only_explanation", what)
    if chars is None or known is None or check is None:
        return None
    names_original = "imitates" in placeholder_names(str(d.get("explanation", "")))
    if any(c.remember for c in check) and "dust_only_explanation" not in d and names_original:
        # (Not an error: the alert is right, its sentence reads "(unknown)" where the original goes.)
        p.warn(
            d.mark("explanation"),
            f"{what}: with a `remember` check, an alert on a dust sender no known address resembles "
            "reads {imitates} as (unknown): say what it is in a dust_only_explanation",
        )
    return LookalikeParams(chars, tuple(known), tuple(check), dust_only)


#: A segwit (bech32) address as the key folds it: human-readable part, separator, data.  Its
#: case is all one (mixed is invalid), which tells it from a base58 address that happens to fit.
_BECH32 = re.compile(r"[a-z]+1[02-9ac-hj-np-z]{6,}")
#: A base58check address (version byte, 20-byte hash, checksum: legacy Bitcoin, Tron) of 25 to 35
#: characters, case-folded, so the lower-cased ones earlier versions kept get the same key.
#: Solana's keys (32 bytes, 43 or 44 characters) have no version character.
_BASE58_CHECK = re.compile(r"[1-9a-z]{25,35}")


def body(address: str) -> str:
    """``address`` case-folded, without what every address of its kind starts with: ``0x``
    (EVM), the network, separator and witness version of a segwit address (``bc1q``, ``bc1p``,
    ``tb1q``, ``bcrt1q``), the version character of a base58check one (``1``/``3`` Bitcoin,
    ``T`` Tron), the prefix and type character of a CashAddr one (``bitcoincash:q``, ``z`` with
    token support).  Counted in the head, that prefix made any two segwit addresses with the
    same last characters look-alikes: 9% of withdrawals to fresh ones, with 100,000 known."""
    a = address.strip()
    folded = a.lower()
    if folded.startswith("0x"):
        return folded[2:]
    if is_cashaddr(a):
        return canonical_address(a)[1:]
    if (a == folded or a == a.upper()) and _BECH32.fullmatch(folded):
        return folded[folded.rindex("1") + 2 :]
    if _BASE58_CHECK.fullmatch(folded):
        return folded[1:]
    return folded


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
        explanations = f"{rule.explanation} {params.dust_only_explanation or ''}"
        self._evidence = EvidenceMaker([c.field for c in params.check], explanations)
        #: Per event class, the checks and the known entries that may match it (in rule order).
        self._checks_of = {EVENT_TYPES[t]: [c for c in self._checks if t in c.types] for t in self._types}
        self._known_of = {EVENT_TYPES[t]: [k for k in self._known if t in k.types] for t in self._types}
        #: Known entries that read what a ``remember`` check reads (the sender of a chain transfer)
        #: past that check's ``where``: a dust sender seen there has sent more than dust.
        self._sends = frozenset(
            k
            for k in self._known
            if any(
                c.entry.remember and c.entry.field == k.entry.field and c.types & k.types
                for c in self._checks
            )
        )

    @property
    def types(self) -> frozenset[str]:
        return self._types

    def expiries(self) -> tuple[Expiry, ...]:
        return (
            Expiry("h:", _held_over),
            Expiry("k:", _refs_over),
            Expiry("f:", _flag_over),
            Expiry("r:", _dusters_over),
        )

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
        them (checks first), each with the address (as :func:`canonical_address` spells it), its
        (head, tail) and, for a check, its group.  An address too short for a (head, tail) can
        imitate nothing and be imitated by nothing: no entry acts on it (nor does a check
        without its group)."""
        out: list[tuple[CompiledEntry, str, str, str | None]] = []
        cls = type(event)
        chars = self.p.chars
        for check in self._checks_of.get(cls, ()):
            if check.match(event):
                value = check.value(event)
                group = check.group_key(event)
                if isinstance(value, str) and group is not None:
                    address = canonical_address(value)  # (" 0xab..cd" is no look-alike of "0xab..cd")
                    key = imitation_key(address, chars)
                    if key is not None:
                        out.append((check, address, key, group))
        for known in self._known_of.get(cls, ()):
            if known.match(event):
                value = known.value(event)
                if isinstance(value, str):
                    address = canonical_address(value)  # (" 0xab..cd" is no look-alike of "0xab..cd")
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
        # An address a remember check took from this event sent dust in it: the same event read
        # by a known entry (one without a where of its own) is no send of more than dust.
        dusted: set[str] = set()
        for entry, address, key, group in self._addresses(event):
            if route is not None and self._route_key(key) != route:
                continue
            if group is not None:
                if entry.entry.remember:
                    dusted.add(address)
                self._check(entry, event, address, key, group, state, hits)
            else:
                sends = entry in self._sends and address not in dusted
                self._learn(address, key, state, ts(event), hits, sends=sends)

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
        now = ts(event)
        me = address.lower()  # what state is keyed and compared by (base58 keeps its case elsewhere)
        entry = state.get(f"f:{me}")
        flagged = _flag_of(entry)
        if flagged and imitation_key(flagged, self.p.chars) != key:
            # Kept by earlier versions, which took a segwit address's "bc1q" (a base58 one's
            # version character) for its head: it imitates nothing by that.
            state.delete(f"f:{me}")
            entry = flagged = None
        used = max(now, _used_at(entry))
        if entry is not None and (not isinstance(entry, list) or now - entry[1] >= _RENEW_S):
            state.set(f"f:{me}", [flagged, used])  # checked again: still in use
            if flagged == DUST_ONLY:  # and still waiting for its original
                _renew_duster(state, key, address, used)
        remember = check.entry.remember
        if flagged is None or flagged == DUST_ONLY:
            known = _known(state, key)
            # Since when the address is a reference itself, if it was one by this check's time.
            mine = next((float(k[1]) for k in known if k[0].lower() == me and k[1] <= now), None)
            if flagged == DUST_ONLY and mine is not None:
                # Kept by earlier versions, which took a known address's own small transfer for
                # dusting: it is a reference.
                state.delete(f"f:{me}")
                _drop_duster(state, key, me)
                flagged = None
            if flagged is None or remember:
                # References known by this check's time (one known later was learned from an
                # event that arrived first) and, for a reference, known before it: the one known
                # first is the original, not an imitation of one seen after it.
                others = [
                    k[0]
                    for k in known
                    if k[0].lower() != me and k[1] <= now and (mine is None or k[1] < mine)
                ]
                if others:
                    was = flagged
                    flagged = str(others[0])
                    state.set(f"f:{me}", [flagged, used])
                    if was is None:
                        self._flagged(address, key, flagged, now, known, state, hits)
                elif remember:
                    # A reference's own small transfer (a test transfer, or a zero-value
                    # transferFrom naming it) is no dusting.
                    if flagged is None and mine is None:
                        state.set(f"f:{me}", [DUST_ONLY, now])
                        dusters: list[Any] = state.get(f"r:{key}") or []
                        state.set(f"r:{key}", [*dusters[-MAX_PER_KEY + 1 :], [address, now]])
                        self._flagged(address, key, DUST_ONLY, now, known, state, hits)
                    if check.entry.alert:  # the original it imitates may yet arrive
                        self._hold(address, key, group, event, now, state)
                    return
                else:
                    if check.entry.alert:
                        self._hold(address, key, group, event, now, state)
                    return
        if check.entry.alert:
            hits.append(self._hit(group, [self._evidence(event)], address, flagged))

    def _hold(self, address: str, key: str, group: str, event: Event, now: float, state: State) -> None:
        """Keep a check that found nothing, in case what it should have found arrives late."""
        held = [h for h in state.get(f"h:{key}") or () if now - h[3] <= LATE_S]
        state.set(f"h:{key}", [*held[-MAX_HELD + 1 :], [address, group, self._evidence(event), now]])

    def _hit(self, group: str, evidence: list[Any], address: str, flagged: str) -> Hit:
        # A dust sender with no original known names no counterparty: an empty one linked every
        # such alert to every other (found in review).
        # Nor sets {imitates}: the rule's explanation read `imitates the known counterparty ""`
        # without a dust_only_explanation; "(unknown)" now, as anything not known reads.
        dust_only = flagged == DUST_ONLY
        context = {"address": address, "chars": str(self.p.chars), "group": group}
        return Hit(
            entity=entity_ref(group),
            evidence=evidence,
            related=[EntityRef(kind="wallet", id=address)]
            + ([] if dust_only else [EntityRef(kind="counterparty", id=flagged)]),
            context=context if dust_only else {**context, "imitates": flagged},
            template=self.p.dust_only_explanation if dust_only else None,
        )

    def _flagged(
        self,
        address: str,
        key: str,
        imitates: str,
        since: float,
        known: list[list[Any]],
        state: State,
        hits: list[Hit],
    ) -> None:
        """``address`` was just found to imitate ``imitates`` as of ``since``: alert the held
        checks on it from then on, and unlearn it if it became a reference only later."""
        me = address.lower()
        if any(k[0].lower() == me and k[1] >= since for k in known):
            state.set(f"k:{key}", [k for k in known if k[0].lower() != me])
        held = state.get(f"h:{key}")
        if not held:
            return
        late = [h for h in held if h[0].lower() == me and h[3] >= since]
        if not late:
            return
        for h in late:
            hits.append(self._hit(h[1], [h[2]], address, imitates))
        set_or_delete(state, f"h:{key}", [h for h in held if not (h[0].lower() == me and h[3] >= since)])

    def _learn(
        self, address: str, key: str, state: State, now: float, hits: list[Hit], *, sends: bool
    ) -> None:
        """``address`` is seen in use at ``now``; ``sends``: sending what the dust checks do not
        take for dust."""
        # A reference already known (a customer's usual counterparty) changes nothing but its
        # last-seen time, once a day: asked first, it spares the flag lookup, which misses for
        # almost every address.
        me = address.lower()
        current: list[Any] = state.get(f"k:{key}") or []
        for i, known in enumerate(current):
            if type(known) is not list:
                if known.lower() == me:  # known since before references kept a time: renewed
                    current[i] = [address, 0.0, now]
                    state.set(f"k:{key}", current)
                    return
            elif known[0].lower() == me:
                earlier = known[1] > now  # learned first from a later event that arrived first
                seen = max(now, known[1])
                if earlier:
                    known[1] = now
                # Seen again: still in use.
                if len(known) < 3:
                    known.append(seen)
                elif now - known[2] >= _RENEW_S:
                    known[2] = now
                elif not earlier:
                    return
                state.set(f"k:{key}", current)
                if earlier:
                    self._late_checks(address, key, now, state, hits)
                return
        flag = state.get(f"f:{me}")
        if flag is not None:
            if not (sends and _flag_of(flag) == DUST_ONLY):
                return  # an imitation never becomes a reference
            # A dust sender that now sends more than dust (a counterparty whose test transfer
            # came first) has not only sent dust: it is a reference like any other.
            state.delete(f"f:{me}")
            _drop_duster(state, key, me)
        state.set(f"k:{key}", [*current[-MAX_PER_KEY + 1 :], [address, now, now]])
        # Dust senders waiting for an original: this is the one they imitate.
        for waiting in state.get(f"r:{key}") or ():
            duster = _duster(waiting).lower()
            flag = state.get(f"f:{duster}")
            if duster != me and _flag_of(flag) == DUST_ONLY:
                state.set(f"f:{duster}", [address, max(now, _used_at(flag))])
        self._late_checks(address, key, now, state, hits)

    def _late_checks(self, address: str, key: str, since: float, state: State, hits: list[Hit]) -> None:
        """``address`` is known as of ``since``, and that arrived late: the held checks made
        since on other addresses with its head and tail find an imitation of it (as of the
        first of them), whatever has flagged their address in between, unless their address
        was a reference already when ``address`` became one."""
        me = address.lower()
        firsts: dict[str, float] = {}
        spelled: dict[str, str] = {}
        for h in state.get(f"h:{key}") or ():
            other = str(h[0]).lower()
            if other != me and h[3] >= since:
                firsts[other] = min(firsts.get(other, h[3]), h[3])
                spelled.setdefault(other, str(h[0]))
        for imitation, first in firsts.items():
            known = _known(state, key)
            if any(k[0].lower() == imitation and k[1] <= since for k in known):
                continue  # the original, not an imitation of one known after it
            flag = state.get(f"f:{imitation}")
            if _flag_of(flag) in (None, DUST_ONLY):
                state.set(f"f:{imitation}", [address, max(first, _used_at(flag))])
            self._flagged(spelled[imitation], key, address, first, known, state, hits)


def _known(state: State, key: str) -> list[list[Any]]:
    """The references known for ``key``, each [address, since] or [address, since, last seen]
    (a bare address predates ``since``: known from the start)."""
    return [k if isinstance(k, list) else [k, 0.0] for k in state.get(f"k:{key}") or ()]


def _flag_of(entry: Any) -> str | None:
    """What a flagged address imitates (``DUST_ONLY``: nothing known yet), from its ``f:``
    entry: [flag, last used], or the bare flag kept by earlier versions."""
    if entry is None:
        return None
    return str(entry[0]) if isinstance(entry, list) else str(entry)


def _used_at(entry: Any) -> float:
    """When a flag was last used (0: never, or kept without a time)."""
    return float(entry[1]) if isinstance(entry, list) else 0.0


def _duster(entry: Any) -> str:
    """The address of an ``r:`` entry: [address, last used], or the bare address of earlier versions."""
    return str(entry if isinstance(entry, str) else entry[0])


def _renew_duster(state: State, key: str, address: str, at: float) -> None:
    """A dust sender still waiting for its original, seen again: its place in ``r:`` renewed."""
    me = address.lower()
    dusters: list[Any] = state.get(f"r:{key}") or []
    renewed = [[address, at] if _duster(d).lower() == me else d for d in dusters]
    if renewed != dusters:
        state.set(f"r:{key}", renewed)


def _drop_duster(state: State, key: str, me: str) -> None:
    """``me`` (case-folded) is no dust sender after all: no longer waiting for an original."""
    dusters: list[Any] = state.get(f"r:{key}") or []
    left = [d for d in dusters if _duster(d).lower() != me]
    if len(left) != len(dusters):
        set_or_delete(state, f"r:{key}", left)


def _refs_over(refs: Any, now: float) -> bool:
    # Entries without a last-seen time (kept by earlier versions) hold the key.
    return all(isinstance(k, list) and len(k) > 2 and now - k[2] > IDLE_S for k in refs)


def _flag_over(entry: Any, now: float) -> bool:
    return isinstance(entry, list) and now - entry[1] > IDLE_S


def _dusters_over(dusters: Any, now: float) -> bool:
    return all(isinstance(d, list) and now - d[1] > IDLE_S for d in dusters)


def _held_over(held: Any, now: float) -> bool:
    return all(now - h[3] > LATE_S for h in held)
