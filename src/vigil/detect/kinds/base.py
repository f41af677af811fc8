"""The detector interface every rule kind implements, and what a detection reports.

A :class:`Detector` is one rule compiled for evaluation.  It names the event types it
wants (the engine dispatches only those), the keys an event must be delivered under
(``routes``: how the Kafka app re-keys input so that everything a rule correlates
lands in one partition), and ``process``: look at one event with the rule's keyed
state and append a :class:`Hit` when the rule fires.  Detectors never emit directly:
the engine turns hits into alerts and decisions (:mod:`vigil.detect.alerts`), so ids,
explanations and decisions are made the same way for every kind.

State values are plain lists/dicts/numbers/strings (msgspec-encodable), timestamps are
epoch seconds, and every write is an explicit ``state.set`` (a durable store sees only
what is set).
"""

from __future__ import annotations

import math
import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from vigil.detect.fields import TAGS, Getter, compile_getter, normalise_path, path_exists, short_name
from vigil.detect.intel import IntelIndex
from vigil.detect.rules.models import Rule
from vigil.events.base import Entities, Event
from vigil.events.types import EntityRef, Evidence, Geo
from vigil.stream.base import State, StoreSpec

#: At most this many evidence items are kept per alert (first ones, and the last one).
MAX_EVIDENCE = 25
_MAX_FIELD = 200

#: The fields worth showing for each event type, besides those a rule's conditions name.
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "login": ("entities.device", "entities.ip", "payload.geo.country", "payload.method"),
    "failed_login": ("entities.ip", "payload.username", "payload.reason"),
    "password_reset": ("payload.stage", "payload.channel"),
    "mfa_change": ("payload.action", "payload.method", "payload.via_support"),
    "mfa_challenge": ("payload.result", "payload.method", "entities.ip"),
    "email_change": ("payload.new_email",),
    "api_key_created": ("payload.key_id", "payload.permissions", "entities.ip"),
    "withdrawal_address_added": ("payload.address", "payload.chain"),
    "deposit": ("payload.amount_usd", "payload.asset", "payload.from_address", "payload.tx_hash"),
    "withdrawal_request": (
        "payload.withdrawal_id",
        "payload.amount_usd",
        "payload.asset",
        "payload.to_address",
        "entities.ip",
    ),
    "withdrawal_sent": (
        "payload.withdrawal_id",
        "payload.amount_usd",
        "payload.to_address",
        "payload.tx_hash",
    ),
    "payment": ("payload.amount_usd", "payload.status", "payload.merchant", "payload.card_fingerprint"),
    "loyalty_redemption": ("payload.points", "payload.value_usd", "payload.reward"),
    "order": ("payload.symbol", "payload.side", "payload.quantity", "payload.notional_usd"),
    "order_cancel": ("payload.symbol", "payload.side", "payload.remaining_quantity"),
    "trade": ("payload.symbol", "payload.maker_account", "payload.taker_account", "payload.notional_usd"),
    "crm_login": ("payload.user", "entities.ip", "payload.geo.country"),
    "crm_record_export": ("payload.record_count", "payload.actor", "payload.object_type"),
    "crm_api_token_used": (
        "payload.token_id",
        "payload.operation",
        "payload.records_accessed",
        "entities.ip",
    ),
    "email_campaign_sent": ("payload.campaign_id", "payload.sender_domain", "payload.recipient_count"),
    "email_link_clicked": ("payload.url_domain",),
    # (The transaction and the token: an investigator looks them up, and two approvals a minute
    # apart, of USDT and of USDC, read the same without them: found in review.)
    "chain_transfer": (
        "payload.from_address",
        "payload.to_address",
        "payload.amount",
        "payload.amount_usd",
        "payload.asset",
        "payload.tx_hash",
    ),
    "token_approval": (
        "payload.owner",
        "payload.spender",
        "payload.unlimited",
        "payload.asset",
        "payload.token_contract",
        "payload.tx_hash",
    ),
    "security_event": ("payload.action", "payload.principal", "payload.resource", "entities.ip"),
}


def _field(path: str) -> tuple[str, str, Getter]:
    """An evidence field: its name, its normalised path (equal paths read equal values) and getter."""
    return short_name(path), normalise_path(path), compile_getter(path)


_key_fields: dict[str, tuple[tuple[str, str, Getter], ...]] = {
    t: tuple(_field(p) for p in paths) for t, paths in KEY_FIELDS.items()
}

#: Evidence as kept in state: [event_id, type, epoch seconds, {field: text}].
StoredEvidence = list[Any]


def as_text(value: Any) -> str:
    """A field value as evidence text: lists joined, long values cut (the value is data, never markup)."""
    # Exact type checks, most frequent first: evidence is built for every login some rules
    # keep, and a location was a third of that (an isinstance against ``list | tuple`` builds
    # the union on each call).
    if type(value) is str:  # most fields: skip the conversions below
        return value if len(value) <= _MAX_FIELD else value[: _MAX_FIELD - 1] + "…"
    if type(value) is bool:
        return "True" if value else "False"
    if isinstance(value, Geo):
        text = geo_text(value)
    elif isinstance(value, float):
        text = decimal_text(value)
    elif isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    return text if len(text) <= _MAX_FIELD else text[: _MAX_FIELD - 1] + "…"


#: Decimal places :func:`decimal_text` writes at most (past them, a number in e-notation).
_MAX_PLACES = 30


def decimal_text(value: float, grouped: bool = False) -> str:
    """A number with a fraction as an analyst reads it: from 1 up to the cent (``3000.50``,
    ``3,000.50`` if ``grouped``); below 1 to 8 significant digits, trailing zeros past the cent
    dropped (``0.00012345``, ``0.50``).  To the cent, a Bitcoin amount of 0.00012345 read
    ``0.00`` in evidence and explanations."""
    magnitude = abs(value)
    if not magnitude < 1.0 or magnitude == 0.0:  # (nan and inf too: "nan", "inf")
        return format(value, ",.2f") if grouped else "%.2f" % value  # noqa: UP031  (see geo_text)
    places = 7 - math.floor(math.log10(magnitude))
    if places > _MAX_PLACES:
        return "%.8g" % value  # noqa: UP031
    whole, _, fraction = format(value, f".{places}f").partition(".")
    return f"{whole}.{fraction.rstrip('0'):0<2}"


def span_text(span: timedelta) -> str:
    """A duration as a rule would write it: ``10m``, ``2h``, ``90s`` (in minutes, 30s read ``0m``)."""
    total = span.total_seconds()
    seconds = int(total)
    if seconds != total:
        return f"{total:g}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def geo_text(geo: Geo) -> str:
    """A location as an analyst reads it: ``Sydney, AU (-33.87, 151.21)``."""
    city, country, lat, lon = geo.city, geo.country, geo.lat, geo.lon
    if city and country and lat is not None and lon is not None:  # what logins carry
        # One %-format: mypyc turns each field of an f-string into a str.format call (2x slower).
        return "%s, %s (%.2f, %.2f)" % (city, country, lat, lon)  # noqa: UP031
    place = ", ".join(p for p in (geo.city, geo.country) if p)
    where = f"({geo.lat:.2f}, {geo.lon:.2f})" if geo.lat is not None and geo.lon is not None else ""
    return " ".join(p for p in (place, where) if p) or "unknown"


#: The last event ts() converted and its result: the engine hands one event to every rule that
#: looks at it in a row, and an aware datetime's timestamp() costs more than this check.  One
#: tuple, replaced whole, so threads running detectors side by side never see a torn pair.
_last_ts: tuple[Event | None, float] = (None, 0.0)


def ts(event: Event) -> float:
    """An event's time in epoch seconds."""
    global _last_ts
    last = _last_ts
    if last[0] is event:
        return last[1]
    value = event.occurred_at.timestamp()
    _last_ts = (event, value)
    return value


def placeholder_names(explanation: str) -> tuple[str, ...]:
    """The ``{name}`` placeholders of an explanation, in order, each once (none if it does not
    parse: the validator reports that)."""
    try:
        parsed = [name for _, name, _, _ in string.Formatter().parse(explanation) if name]
    except ValueError:
        return ()
    return tuple(dict.fromkeys(parsed))


def _placeholder_paths(tag: str, names: Sequence[str], taken: set[str]) -> list[tuple[str, str, Getter]]:
    """The fields of an event of type ``tag`` an explanation's placeholders name and evidence
    does not store yet: an entity kind's ``entities.<name>``, else ``payload.<name>``, else
    ``payload.geo.<name>`` (``{country}``), the first the type has."""
    found: list[tuple[str, str, Getter]] = []
    for name in names:
        if name in taken:
            continue
        for path in (f"entities.{name}", f"payload.{name}", f"payload.geo.{name}"):
            if (not path.startswith("entities.") or name in Entities.KINDS) and path_exists(tag, path):
                found.append(_field(path))
                break
    return found


class EvidenceMaker:
    """Builds the stored evidence of an event: its key fields, those the rule looks at, and
    those its explanation quotes."""

    def __init__(self, extra_paths: Sequence[str] = (), explanation: str = "") -> None:
        self._extra = tuple(_field(p) for p in dict.fromkeys(extra_paths))
        # An explanation's {channel} read "(unknown)" in every alert when neither a key field
        # nor the rule's conditions named it, though validation took it (found in review).
        self._names = placeholder_names(explanation)
        #: Per event class: its tag, then its key fields' getters and the rule's (built on first use).
        self._getters: dict[type, tuple[str, tuple[tuple[str, Getter], ...]]] = {}

    def _for(self, cls: type) -> tuple[str, tuple[tuple[str, Getter], ...]]:
        tag = TAGS[cls]
        # A rule's paths name fields of all its types; one this type lacks would read None (not
        # stored) at the price of an AttributeError raised and caught inside getattr, per event.
        every = tuple(f for f in (*_key_fields.get(tag, ()), *self._extra) if path_exists(tag, f[1]))
        every += tuple(_placeholder_paths(tag, self._names, {f[0] for f in every}))
        paths: dict[str, set[str]] = {}
        for name, path, _ in every:
            paths.setdefault(name, set()).add(path)
        # A field both a key field and the rule's is read once: reading it again would store the
        # same value under the same name, in its place.  (A name shared by two paths keeps every
        # read: which value is stored then depends on the order.)
        getters: list[tuple[str, Getter]] = []
        read: set[str] = set()
        for name, _, get in every:
            if len(paths[name]) == 1 and name in read:
                continue
            read.add(name)
            getters.append((name, get))
        built = self._getters[cls] = (tag, tuple(getters))
        return built

    def __call__(self, event: Event) -> StoredEvidence:
        tag, getters = self._getters.get(type(event)) or self._for(type(event))
        fields: dict[str, str] = {}
        for name, get in getters:
            value = get(event)
            if type(value) is str:  # most fields: as_text's own first case, without the call
                if value:
                    fields[name] = value if len(value) <= _MAX_FIELD else as_text(value)
            elif value is not None and value != []:
                fields[name] = as_text(value)
        return [event.event_id, tag, ts(event), fields]


def to_evidence(stored: Sequence[StoredEvidence]) -> list[Evidence]:
    items = list(stored)
    if len(items) > MAX_EVIDENCE:
        items = [*items[: MAX_EVIDENCE - 1], items[-1]]
    return [Evidence(event_id=e[0], type=e[1], occurred_at=at_epoch(e[2]), fields=dict(e[3])) for e in items]


def at_epoch(seconds: float) -> datetime:
    """The UTC time ``seconds`` after the epoch, held to what a datetime holds.  An event dated
    in the last microseconds of the year 9999 (written to events.* directly, past the
    normaliser's clock check) has a timestamp that rounds up into the year 10000: turned back
    into a datetime it raised, and the route stage stopped on it at every start (found in
    review)."""
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return datetime.max.replace(tzinfo=UTC) if seconds > 0 else datetime.min.replace(tzinfo=UTC)


def related_kind(name: str) -> str:
    """The kind a related entity named by the field ``name`` goes by: an entity's own
    (``ip``), ``account`` for a field of an account (``taker_account``) and ``address`` for
    one of an address (``from_address``): an analyst read the internal field names as kinds
    (found in review)."""
    if name.endswith("_account"):
        return "account"
    if name.endswith("_address"):
        return "address"
    return name


def entity_ref(group_key: str) -> EntityRef:
    """``customer:c1`` (or the first part of ``a:x|b:y``) as an entity reference."""
    first = group_key.split("|", 1)[0]
    kind, _, value = first.partition(":")
    if "%" in value:  # escaped by fields.key_part: every % starts %25 or %7C
        value = value.replace("%7C", "|").replace("%25", "%")
    return EntityRef(kind=kind.rsplit(".", 1)[-1], id=value)


@dataclass
class Hit:
    """A rule firing: about whom, on what evidence (in event-time order), with what context."""

    entity: EntityRef
    evidence: list[StoredEvidence]
    related: list[EntityRef] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)
    score: float | None = None
    intel_version: str | None = None
    #: The withdrawal a hold decision is about, when the evidence names one.
    withdrawal_id: str | None = None
    #: What identifies the detection, for its alert id, when not all its evidence does: evidence
    #: that depends on arrival order (which tainting transfer was known when) would give one
    #: detection another id on a replay, and downstream a second alert and hold.
    identity: list[str] | None = None
    #: A sentence the alert's explanation ends with, whatever the rule's template says: its
    #: text, with ``{}`` where the value goes, and the value (quoted as data, as the template's
    #: are).  For what every rule of a kind must say (a listed value matched in another spelling).
    note: tuple[str, str] | None = None
    #: The explanation this hit reads by, when not the rule's ``explanation``: another of the
    #: rule's templates (a kind's ``KindSpec.templates``), for a case the first does not fit.
    template: str | None = None


@dataclass(frozen=True)
class Expiry:
    """State a detector lets go: an entry whose key starts with ``prefix`` goes once
    ``stale(value, now)`` is true at event time ``now`` (epoch seconds)."""

    prefix: str
    stale: Callable[[Any, float], bool]


@dataclass
class Env:
    """What detectors share beyond keyed state: the intel index (a global table)."""

    intel: IntelIndex


# Compiled (see vigil.compiled), yet open to rule kinds written in plain Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class Detector(ABC):
    kind: ClassVar[str]
    #: The paths this detector's state is keyed by (empty: one global key, e.g. a graph).
    group_paths: tuple[str, ...] = ()

    #: Stage 1's store for :meth:`is_redundant` (``None``: this detector judges nothing there).
    dedup_store: StoreSpec | None = None
    #: The event types :meth:`is_redundant` judges.
    dedup_types: frozenset[str] = frozenset()

    def __init__(self, rule: Rule, env: Env) -> None:
        self.rule = rule
        self.env = env
        self.store = StoreSpec(f"detect.{rule.id}", rule.version)
        self.store_id = self.store.id
        #: ``id()`` of the event objects of the batch stage 1 is on that :meth:`is_redundant`
        #: judged redundant (objects, not event ids: a duplicate of an event that mattered may be
        #: judged redundant itself): :meth:`wants` says no to them, and the route stage clears
        #: the set once it has routed the batch, while the batch holds them.
        self.redundant: set[int] = set()

    @property
    @abstractmethod
    def types(self) -> frozenset[str]:
        """Event types this detector looks at."""

    @abstractmethod
    def routes(self, event: Event) -> list[str]:
        """The keys under which ``event`` must reach this detector (one partition per key)."""

    @property
    def route_id(self) -> object:
        """Detectors with equal route ids route every event under the same keys, so the engine
        computes those keys once per event for all of them; the default is unique to this one."""
        return id(self)

    def route_id_for(self, tag: str) -> object:
        """:attr:`route_id` for events of type ``tag`` alone (detectors that route some types
        the same way and others not may share the first)."""
        return self.route_id

    @property
    def route_prefix(self) -> str:
        """What every key ``routes`` returns starts with (``""``: not known), so the routed stage
        can tell a record keyed otherwise is not this detector's without computing its keys."""
        return ""

    def narrowed(self, event: Event, key: str) -> Event | None:
        """``event`` as this detector needs it under ``key``, one of its :meth:`routes`, when that
        is much smaller than the whole (None: the whole event).  The route stage writes the
        narrowed event in that key's record; only asked when no other detector routes the
        event's type under keys that share this one's :attr:`route_prefix`."""
        return None

    def wants(self, event: Event) -> bool:
        """Whether ``event`` (of ``types``) may change this detector's state or fire it.  The
        route stage does not re-key events no detector wants (a trade between unlinked
        accounts), so ``False`` must be exact: only when ``process`` would do nothing.  (Or,
        for an event stage 1 marked :attr:`redundant`, its judgement: see :meth:`is_redundant`.)"""
        return True

    def is_redundant(self, event: Event, state: State) -> bool:
        """Stage 1 on Kafka, for a rule whose state is routed elsewhere: whether ``event`` (of
        ``dedup_types``) would change nothing in that state, judged from what this partition of
        the input routed before, kept in ``state`` (the ``dedup_store``'s).  The event is then
        not routed to this rule at all: answer ``True`` only for what stage 1 believes the
        routed stage already has.  Stage 1 sees one partition and not the routed stage's state,
        so a belief can go wrong (that state lost, say), and the rule misses what it hid until
        it is routed again: a kind must route again now and then (see the linked kind)."""
        return False

    def expiries(self) -> tuple[Expiry, ...]:
        """The state this detector lets go (expired windows and marks), one :class:`Expiry` per
        key prefix.  Without it a group seen once would keep its window forever.  The engine
        walks each prefix a slice of keys per batch (see ``DetectOperator``), so a large store
        never holds a batch back; a kind that keeps nothing for a limited time has none."""
        return ()

    @abstractmethod
    def process(self, event: Event, state: State, hits: list[Hit], route: str | None = None) -> None:
        """Evaluate one event (of ``types``) against keyed state; append a hit when the rule fires.

        ``route`` is the key the event was delivered under on Kafka (``None`` in memory,
        where one call must do the work of every key)."""
