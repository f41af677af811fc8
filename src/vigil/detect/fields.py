"""Field paths and conditions over canonical events, compiled once per rule.

A rule names event fields by dotted path: ``payload.amount_usd``, ``entities.ip``,
``payload.geo.country``; a bare entity kind (``customer``, ``ip``) means
``entities.<kind>``; ``type`` and ``occurred_at`` are the envelope's.  A virtual field
``elapsed:<path>`` is the seconds between that datetime field and ``occurred_at``
(``elapsed:payload.placed_at`` is an order's lifetime at its cancel), and ``<path>*<path>``
is the product of two numeric fields (``payload.price*payload.remaining_quantity``, a notional).

Paths are checked at load time against the event types a rule matches (so a typo fails
validation with its line), then compiled into plain getters: evaluation is attribute
access, never ``eval``.
"""

from __future__ import annotations

import hashlib
import math
import operator
import types as pytypes
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import msgspec

from vigil.events.addresses import canonical_address, is_bech32, is_cashaddr, is_evm
from vigil.events.base import Entities, Event
from vigil.events.types import EVENT_CLASSES, EVENT_TYPES

Getter = Callable[[Event], Any]

#: Event class -> its ``type`` tag (``Event.type`` builds the string on every call; this is
#: one dict lookup on the hot path).
TAGS: dict[type, str] = {cls: str(cls.__struct_config__.tag) for cls in EVENT_CLASSES}


def tag_of(event: Event) -> str:
    return TAGS[type(event)]


_MISSING = object()

#: Comparison operators a condition may use, with the expected operand form for messages.
OPERATORS: dict[str, str] = {
    "eq": "a scalar",
    "ne": "a scalar",
    "in": "a list of scalars",
    "not_in": "a list of scalars",
    "gt": "a number",
    "gte": "a number",
    "lt": "a number",
    "lte": "a number",
    "exists": "true or false",
    "contains": "a scalar (the list or string field must contain it)",
}


def compare(op: str, got: float, bound: float) -> bool:
    """A rule's numeric condition (``gt``, ``gte``, ``lt``, ``lte``, else equality).

    Here, in a compiled module, because detectors call it per event: from compiled code, a
    function of an interpreted module costs a Python frame on every call."""
    if op == "gt":
        return got > bound
    if op == "gte":
        return got >= bound
    if op == "lt":
        return got < bound
    if op == "lte":
        return got <= bound
    return got == bound


def normalise_path(path: str) -> str:
    if path in Entities.KINDS:
        return f"entities.{path}"
    return path


def replace_path(event: Event, path: str, value: Any) -> Event:
    """A copy of ``event`` with the value at ``path`` (through structs and mappings) replaced;
    AttributeError or KeyError when the path is not there."""
    out: Event = _replaced(event, normalise_path(path).split("."), value)
    return out


def _replaced(obj: Any, parts: list[str], value: Any) -> Any:
    head, rest = parts[0], parts[1:]
    if isinstance(obj, msgspec.Struct):
        inner = _replaced(getattr(obj, head), rest, value) if rest else value
        return msgspec.structs.replace(obj, **{head: inner})
    if isinstance(obj, dict):
        return {**obj, head: _replaced(obj[head], rest, value) if rest else value}
    msg = f"{head!r} is in neither a struct nor a mapping"
    raise TypeError(msg)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _struct_of(tp: Any) -> type | None:
    """The msgspec Struct class inside ``tp`` (unwrapping ``X | None``), if any."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    if isinstance(tp, pytypes.UnionType) or typing.get_origin(tp) is typing.Union:
        for arg in typing.get_args(tp):
            found = _struct_of(arg)
            if found is not None:
                return found
    return None


def path_exists(event_type: str, path: str) -> bool:
    """Whether ``path`` names a field of ``event_type`` (checked statically, from the contract)."""
    path = normalise_path(path)
    if path.startswith("elapsed:"):
        path = path.removeprefix("elapsed:")
    if "*" in path:
        return all(path_exists(event_type, part) for part in path.split("*"))
    if path in ("type", "event_id", "source", "occurred_at", "ingested_at"):
        return True
    cls: type | None = EVENT_TYPES.get(event_type)
    for part in path.split("."):
        if cls is None:
            return False
        hints = _hints(cls)
        if part not in hints:
            return False
        cls = _struct_of(hints[part])
    return True


def _leaves(tp: Any, leaf: Callable[[Any], set[Any] | None]) -> set[Any] | None:
    """``leaf`` of each type a value annotated ``tp`` may be (``Annotated`` unwrapped, a union's
    members, ``None`` dropped), together; None if ``leaf`` has no answer for one of them."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _leaves(typing.get_args(tp)[0], leaf)
    if isinstance(tp, pytypes.UnionType) or origin is typing.Union:
        out: set[Any] = set()
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            found = _leaves(arg, leaf)
            if found is None:
                return None
            out |= found
        return out
    return leaf(tp)


def _kinds_of(tp: Any) -> set[Any] | None:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return {type(v) for v in typing.get_args(tp)}
    if origin in (list, tuple, set, frozenset):
        return {list}
    if tp in (str, int, float, bool, datetime):
        return {tp}
    return None


def _choices_of(tp: Any) -> set[Any] | None:
    return set(typing.get_args(tp)) if typing.get_origin(tp) is typing.Literal else None


def _leaf_kinds(tp: Any) -> set[type] | None:
    """The plain types a value annotated ``tp`` may hold (``None`` dropped, a ``Literal``'s
    values' types, ``Annotated`` unwrapped, a collection as ``list``); None if not plain."""
    return _leaves(tp, _kinds_of)


def _leaf_choices(tp: Any) -> set[Any] | None:
    """The values a field annotated ``tp`` may hold when it is a ``Literal`` (``None`` dropped,
    ``Annotated`` unwrapped); None when it may hold others."""
    return _leaves(tp, _choices_of)


def _annotation(event_type: str, path: str) -> Any:
    """The contract's annotation of the field at (normalised) ``path`` on ``event_type``; None
    when there is no such field."""
    cls: type | None = EVENT_TYPES.get(event_type)
    parts = path.split(".")
    for i, part in enumerate(parts):
        if cls is None:
            return None
        hints = _hints(cls)
        if part not in hints:
            return None
        if i == len(parts) - 1:
            return hints[part]
        cls = _struct_of(hints[part])
    return None


def value_choices(event_type: str, path: str) -> frozenset[Any] | None:
    """The values the field at ``path`` may hold on ``event_type`` when the contract lists them
    (a ``Literal``: ``mfa_challenge``'s ``payload.result`` is approved, denied or timeout);
    None otherwise."""
    tp = _annotation(event_type, normalise_path(path))
    choices = None if tp is None else _leaf_choices(tp)
    return None if choices is None else frozenset(choices)


def value_kinds(event_type: str, path: str) -> frozenset[type] | None:
    """The plain types (``str``, ``int``, ``float``, ``bool``, ``datetime``, ``list`` for any
    collection) the field at ``path`` holds on ``event_type``, from the contract; None when the
    field is not there or not plain (a nested struct)."""
    path = normalise_path(path)
    if path in ("type", "event_id", "source"):
        return frozenset({str})
    if path in ("occurred_at", "ingested_at"):
        return frozenset({datetime})
    tp = _annotation(event_type, path)
    kinds = None if tp is None else _leaf_kinds(tp)
    return None if kinds is None else frozenset(kinds)


def struct_fields(event_type: str, path: str) -> tuple[str, ...] | None:
    """The names of the fields of the struct at ``path`` on ``event_type`` (``payload.geo``:
    its country, city...); None when the field there is not a struct (or not there)."""
    tp = _annotation(event_type, normalise_path(path))
    cls = None if tp is None else _struct_of(tp)
    if cls is None:
        return None
    names: tuple[str, ...] = cls.__struct_fields__  # type: ignore[attr-defined]
    return names


def compile_getter(path: str) -> Getter:
    """A function returning the value at ``path`` of an event, or ``None`` when absent."""
    path = normalise_path(path)
    if path == "type":
        return tag_of
    if path.startswith("elapsed:"):
        inner = compile_getter(path.removeprefix("elapsed:"))

        def elapsed(e: Event) -> float | None:
            then = inner(e)
            if not isinstance(then, datetime):
                return None
            return (e.occurred_at - then).total_seconds()

        return elapsed
    if "*" in path:
        factors = [compile_getter(p) for p in path.split("*")]

        def product(e: Event) -> float | None:
            out = 1.0
            for get in factors:
                value = _number(get(e))
                if value is None:
                    return None
                out *= value
            return out

        return product
    parts = tuple(path.split("."))
    if len(parts) == 2 and parts[0] == "entities" and parts[1] in Entities.KINDS:
        # Every event has every entity field (None when absent), so the C getter cannot fail.
        return operator.attrgetter(path)
    if len(parts) == 1:
        name = parts[0]
        return lambda e: getattr(e, name, None)
    if len(parts) == 2:
        a, b = parts
        return lambda e: getattr(getattr(e, a, None), b, None)

    def deep(e: Event) -> Any:
        value: Any = e
        for part in parts:
            value = getattr(value, part, None)
            if value is None:
                return None
        return value

    return deep


def _number(value: Any) -> float | None:
    # isinstance against a tuple, here and on the other per-event paths: mypyc checks a tuple's
    # types inline, where ``int | float`` is a union object built (and searched) on every call.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return to_float(value)


def to_float(value: int | float) -> float:
    """``float(value)``, an integer past float's range as an infinity of its sign.

    JSON integers have no bound, and contracts take them whole (a token's raw amount is up to
    2**256): ``float()`` of a 400-digit ``record_count`` raised OverflowError, which stopped the
    detection stage, and again on the same record after every restart."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


_EQUALITY = frozenset({"eq", "ne", "in", "not_in"})


def _is_address(value: Any) -> bool:
    # CashAddr too: a rule naming ``bitcoincash:q...`` (or upper case) compared it as written
    # with events that carry the canonical spelling, and never matched (found in review).
    return type(value) is str and (is_evm(value) or is_bech32(value) or is_cashaddr(value))


def _canonical(value: Any) -> Any:
    """A text as :func:`canonical_address` spells it; any other value as it is."""
    return canonical_address(value) if type(value) is str else value


def _canonically(get: Getter) -> Getter:
    return lambda e: _canonical(get(e))


@dataclass(frozen=True)
class Condition:
    """``<path> <op> <value>``; a missing field satisfies only ``exists: false`` and ``ne``/``not_in``."""

    path: str
    op: str
    value: Any

    def compile(self) -> Callable[[Event], bool]:
        get = compile_getter(self.path)
        op, want = self.op, self.value
        listed = op in ("in", "not_in")
        if op in _EQUALITY and any(_is_address(v) for v in (want if listed else (want,))):
            # An EVM address written in its EIP-55 checksum case (or a segwit one in upper case)
            # never equalled an event's, which sources publish as canonical_address spells it:
            # both sides are compared in that spelling.
            get = _canonically(get)
            want = tuple(_canonical(v) for v in want) if listed else _canonical(want)
        if op == "eq":
            return lambda e: get(e) == want
        if op == "ne":
            return lambda e: get(e) != want
        if op in ("in", "not_in"):
            allowed = frozenset(want)
            if op == "in":
                return lambda e: get(e) in allowed
            return lambda e: get(e) not in allowed
        if op == "exists":
            return lambda e: (get(e) is not None) is bool(want)
        if op == "contains":
            text = type(want) is str

            def contains(e: Event) -> bool:
                # Text holds only text ("x" in "abc"; 1 in "abc" raises TypeError, which would
                # stop the stage); a list may hold anything.
                got = get(e)
                if type(got) is str:
                    return text and want in got
                return isinstance(got, (list, tuple)) and want in got

            return contains
        bound = float(want)
        compare: Callable[[float, float], bool] = {
            "gt": float.__gt__,
            "gte": float.__ge__,
            "lt": float.__lt__,
            "lte": float.__le__,
        }[op]

        def numeric(e: Event) -> bool:
            got = _number(get(e))
            return got is not None and compare(got, bound)

        return numeric


@dataclass(frozen=True)
class Match:
    """Which events a rule (or a step of it) looks at: a set of types and conditions, all of which hold."""

    types: frozenset[str]
    where: tuple[Condition, ...] = ()

    def compile(self) -> Callable[[Event], bool]:
        where = self.compile_where()
        classes = frozenset(EVENT_TYPES[t] for t in self.types)
        if where is None:
            return lambda e: type(e) in classes
        return lambda e: type(e) in classes and where(e)

    def compile_where(self) -> Callable[[Event], bool] | None:
        """The conditions alone (``None`` when there are none), for a caller that already
        knows the event is of one of ``types``: it need not check the type again per event."""
        checks = [c.compile() for c in self.where]
        if not checks:
            return None
        if len(checks) == 1:
            return checks[0]
        if len(checks) == 2:  # most rules' conditions: two calls, without a generator
            first, second = checks
            return lambda e: first(e) and second(e)
        return lambda e: all(check(e) for check in checks)

    @property
    def paths(self) -> list[str]:
        return [c.path for c in self.where]


#: Strings from events kept in state (group keys, values remembered or counted distinct) are cut
#: to this many characters, the whole value's digest at the end: they are attacker-controlled,
#: and a rule's state keeps hundreds of them (1,000 failed logins with a 2 KB user name made a
#: window of 2.3 MB, past what a changelog record may hold: every checkpoint failed, and the
#: restarted stage failed again on the same input).  128: every legitimate id we know (a 66-character
#: transaction hash, an e-mail address) is kept whole.
MAX_KEPT = 128
_CUT = MAX_KEPT - 17


def bounded(text: str) -> str:
    """``text``, or its first characters and a digest of the whole when longer than
    ``MAX_KEPT`` (distinct values stay distinct).  The digest is of the lower-cased text, so
    lower-casing a cut value and cutting a lower-cased one agree (first-seen histories keep
    lower-cased values; captured ones are compared lower-cased)."""
    if len(text) <= MAX_KEPT:
        return text
    digest = hashlib.blake2b(text.lower().encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{text[:_CUT]}#{digest}"


#: State is MessagePack, whose integers are 64-bit.
_INT_LOW, _INT_HIGH = -(1 << 63), (1 << 64) - 1


def kept(value: Any) -> Any:
    """A field value as state keeps it: strings :func:`bounded`, integers past 64 bits as floats
    (MessagePack cannot hold them: every checkpoint failed), other numbers, booleans and None as
    they are, and anything else :func:`as_stored`."""
    kind = type(value)
    if kind is str:
        return bounded(value)
    if kind is int:
        return value if _INT_LOW <= value <= _INT_HIGH else to_float(value)
    if kind is float or kind is bool or value is None:
        return value
    return as_stored(value)


_to_msgpack = msgspec.msgpack.Encoder().encode
_from_msgpack = msgspec.msgpack.Decoder().decode


def as_stored(value: Any) -> Any:
    """``value`` as state gives it back once it has been stored: a struct as a dict, a tuple as a
    list, a datetime in UTC.  Rules compare and count kept values by their text, and a value
    kept as the event had it (``payload.geo``, a ``Geo``) and the same value read back from
    RocksDB (a dict; after a restart, or once the store's cache let it go) were two texts: two
    logins from one place counted as two distinct places, and ``same_as`` on it never linked.
    One that state cannot hold is kept as its text."""
    try:
        return _from_msgpack(_to_msgpack(value))
    except (TypeError, ValueError, OverflowError):  # (an integer past 64 bits inside, an object)
        return bounded(str(value))


def seen_text(value: Any) -> str:
    """A value as first-seen histories remember it: its text (of :func:`as_stored` for what is
    not a string or a number), lower-cased, :func:`bounded`."""
    kind = type(value)
    if not (kind is str or kind is int or kind is float or kind is bool):
        value = as_stored(value)
    return bounded(str(value).lower())


def key_part(value: str) -> str:
    """A value as a group key holds it: :func:`bounded`, a ``|`` in it escaped (and so every
    ``%``: escaped only beside a ``|``, ``a|b`` and a literal ``a%7Cb`` were one key)."""
    # A "|" in a value would split the key there: entity_ref takes what comes before the first.
    if "|" in value or "%" in value:
        value = value.replace("%", "%25").replace("|", "%7C")
    return bounded(value)


def key_of(getters: Sequence[tuple[str, Getter]], event: Event) -> str | None:
    """The group key ``<kind>:<value>[|<kind>:<value>]`` of an event, or ``None`` if a part is
    missing; each value as :func:`key_part` holds it."""
    if len(getters) == 1:  # the common case, on the hot path of every grouped rule
        name, get = getters[0]
        value = get(event)
        if type(value) is str:  # entity ids: built without str() or a comparison with ""
            if not value:
                return None
            if len(value) > MAX_KEPT or "|" in value or "%" in value:
                value = key_part(value)
            return f"{name}:{value}"
        return None if value is None or value == "" else f"{name}:{key_part(str(value))}"
    parts = []
    for name, get in getters:
        value = get(event)
        if value is None or value == "":
            return None
        parts.append(f"{name}:{key_part(str(value))}")
    return "|".join(parts)


def short_name(path: str) -> str:
    """The name a field goes by in evidence and explanations: its last path element."""
    path = normalise_path(path).removeprefix("elapsed:")
    return "_x_".join(p.rsplit(".", 1)[-1] for p in path.split("*"))
