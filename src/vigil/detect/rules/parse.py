"""Parsing helpers shared by the validation pass and each rule kind.

A :class:`Parser` walks the located YAML values of one file and records every problem as
an :class:`~vigil.detect.rules.models.Issue` with file, line and column and the expected
form, instead of stopping at the first one: ``vigil rules validate`` reports all at once.
Helpers return ``None`` after recording a problem, so callers keep going.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from vigil.detect.fields import (
    OPERATORS,
    Condition,
    Match,
    normalise_path,
    path_exists,
    struct_fields,
    value_choices,
    value_kinds,
)
from vigil.detect.rules.loader import Loc, LocDict, LocList
from vigil.detect.rules.models import Issue
from vigil.events.base import Entities
from vigil.events.types import EVENT_TYPES

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION_S = 36_500 * 86400.0
DURATION_FORM = "a duration like '30s', '10m', '2h' or '14d' (at most 36500d)"
#: Event types detection never hands a rule: its own outputs, and the indicators, which go into
#: the intel index (rules read them through ``intel`` conditions).  A rule matching one
#: validated and never fired; in memory it took indicators from the index.
NOT_MATCHABLE = {
    tag: "detection's own output"
    if cls.domain in ("alerts", "decisions")
    else ("an analyst's release" if cls.domain == "releases" else "read into the intel index")
    for tag, cls in EVENT_TYPES.items()
    if cls.domain in ("alerts", "decisions", "releases", "intel")
}
#: Event types a rule may match: the canonical catalogue without those.
MATCHABLE = frozenset(EVENT_TYPES) - set(NOT_MATCHABLE)


def parse_duration(value: Any) -> timedelta | None:
    if not isinstance(value, str):
        return None
    m = _DURATION.match(value.strip())
    if not m:
        return None
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    # A decision's expiry is its alert's time plus the TTL: past year 9999 that raised at the
    # first alert.  A century is longer than any window or hold means.
    if seconds > MAX_DURATION_S:
        return None
    return timedelta(seconds=seconds)


class Parser:
    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[Issue] = []
        #: Mappings whose keys a caller has checked (by identity, each kept alive here so its id
        #: is not reused): :meth:`match` checks the keys of any other mapping it is given.
        self._keys_checked: dict[int, LocDict] = {}

    # ------------------------------------------------------------------ reporting
    def error(self, loc: Loc, message: str) -> None:
        self.issues.append(Issue(self.file, loc[0], loc[1], message))

    def warn(self, loc: Loc, message: str) -> None:
        self.issues.append(Issue(self.file, loc[0], loc[1], message, "warning"))

    # ------------------------------------------------------------------ shapes
    def mapping(self, value: Any, loc: Loc, what: str) -> LocDict | None:
        if isinstance(value, LocDict):
            return value
        self.error(loc, f"{what} must be a mapping (key: value lines); got {_show(value)}")
        return None

    def keys(
        self, d: LocDict, what: str, *, required: Iterable[str] = (), optional: Iterable[str] = ()
    ) -> None:
        req, opt = list(required), list(optional)
        allowed = set(req) | set(opt)
        self._keys_checked[id(d)] = d
        for key in d:
            if key not in allowed:
                self.error(
                    d.key_marks.get(key, d.loc),
                    f"unknown key {key!r} in {what}{_where_hint(key, allowed)}; "
                    f"expected one of: {', '.join(sorted(allowed))}",
                )
        for key in req:
            if key not in d:
                self.error(d.loc, f"{what} is missing required key {key!r}")

    def string(self, d: LocDict, key: str, what: str, default: str | None = None) -> str | None:
        if key not in d:
            return default
        value = d[key]
        if isinstance(value, str) and value.strip():
            return value
        self.error(d.mark(key), f"{what}.{key} must be a non-empty string; got {_show(value)}")
        return default

    def integer(
        self, d: LocDict, key: str, what: str, *, default: int | None = None, minimum: int = 0
    ) -> int | None:
        if key not in d:
            return default
        value = d[key]
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        self.error(d.mark(key), f"{what}.{key} must be an integer >= {minimum}; got {_show(value)}")
        return default

    def number(
        self, d: LocDict, key: str, what: str, *, default: float | None = None, minimum: float | None = None
    ) -> float | None:
        if key not in d:
            return default
        value = d[key]
        number = finite(value)
        if number is not None and (minimum is None or number >= minimum):
            return number
        bound = f" >= {minimum:g}" if minimum is not None else ""
        self.error(d.mark(key), f"{what}.{key} must be {_number_form(value, bound)}; got {_show(value)}")
        return default

    def boolean(self, d: LocDict, key: str, what: str, default: bool = False) -> bool:
        if key not in d:
            return default
        value = d[key]
        if isinstance(value, bool):
            return value
        self.error(d.mark(key), f"{what}.{key} must be true or false; got {_show(value)}")
        return default

    def duration(
        self,
        d: LocDict,
        key: str,
        what: str,
        default: timedelta | None = None,
        form: str = DURATION_FORM,
    ) -> timedelta | None:
        if key not in d:
            if default is None:
                self.error(d.loc, f"{what} is missing required key {key!r} ({form})")
            return default
        got = parse_duration(d[key])
        if got is None or got <= timedelta(0):
            self.error(d.mark(key), f"{what}.{key} must be {form}; got {_show(d[key])}")
            return default
        return got

    def choice(
        self, d: LocDict, key: str, what: str, options: Iterable[str], default: str | None = None
    ) -> str | None:
        opts = list(options)
        if key not in d:
            if default is None:
                self.error(d.loc, f"{what} is missing required key {key!r} (one of: {', '.join(opts)})")
            return default
        value = d[key]
        if value in opts:
            return str(value)
        self.error(d.mark(key), f"{what}.{key} must be one of: {', '.join(opts)}; got {_show(value)}")
        return default

    def strings(
        self,
        d: LocDict,
        key: str,
        what: str,
        *,
        allow_single: bool = True,
        allow_empty: bool = False,
        required: bool = False,
    ) -> list[str] | None:
        """A list of strings (or, with ``allow_single``, one string standing for a list of one).
        An empty list is refused unless ``allow_empty``: given for a key whose absence means a
        default (``group_by``, ``categories``, ``type``), ``[]`` dropped the rule without a word,
        made it match nothing, or stopped detection when its rules were built."""
        if key not in d:
            return None
        value = d[key]
        if allow_single and isinstance(value, str):
            return [value]
        if isinstance(value, LocList) and not value and not allow_empty:
            hint = "" if required else "; leave the key out for its default"
            self.error(d.mark(key), f"{what}.{key} must list at least one value{hint}")
            return None
        if isinstance(value, LocList) and all(isinstance(v, str) for v in value):
            return list(value)
        self.error(d.mark(key), f"{what}.{key} must be a list of strings; got {_show(value)}")
        return None

    # ------------------------------------------------------------------ the rule language
    def event_types(self, d: LocDict, key: str, what: str) -> frozenset[str] | None:
        names = self.strings(d, key, what, required=True)
        if names is None:
            if key not in d:
                self.error(d.loc, f"{what} is missing required key {key!r} (an event type or a list of them)")
            return None
        never = [n for n in names if n in NOT_MATCHABLE]
        if never:
            listed = ", ".join(f"{n!r} ({NOT_MATCHABLE[n]})" for n in never)
            hint = "; an indicator is matched with an intel condition" if "intel_indicator" in never else ""
            self.error(d.mark(key), f"{what}.{key}: rules are never given event type(s) {listed}{hint}")
            return None
        bad = [n for n in names if n not in MATCHABLE]
        if bad:
            self.error(
                d.mark(key),
                f"{what}.{key}: unknown event type(s) {', '.join(map(repr, bad))}; "
                f"expected one of: {', '.join(sorted(MATCHABLE))}",
            )
            return None
        return frozenset(names)

    def path(
        self,
        value: Any,
        loc: Loc,
        what: str,
        types: frozenset[str] | None,
        *,
        every: bool = False,
        number: bool = False,
    ) -> str | None:
        """``value`` as a field path of (one of) ``types``; ``every``: of each of them (a group's
        path: an event type without it never gets a group, so its events never count);
        ``number``: a path whose values are numbers (a sum's, a ratio's), which a text or time
        field never gives, so a rule reading one never fired.  ``elapsed:<path>`` must name a
        time field wherever it is used."""
        if not isinstance(value, str) or not value:
            self.error(
                loc, f"{what} must be a field path like 'payload.amount_usd' or 'ip'; got {_show(value)}"
            )
            return None
        path = normalise_path(value)
        if every and types and any(path_exists(t, path) for t in types):
            missing = sorted(t for t in types if not path_exists(t, path))
            if missing:
                self.error(
                    loc,
                    f"{what}: no field {value!r} on event type(s) {', '.join(missing)} (their events "
                    "would never be grouped, so never counted); group by a path every type has, or "
                    "match those types in a rule of their own",
                )
                return None
        if types and not any(path_exists(t, path) for t in types):
            self.error(
                loc,
                f"{what}: no field {value!r} on event type(s) {', '.join(sorted(types))}; "
                f"expected a path like 'payload.<field>' or an entity kind ({', '.join(Entities.KINDS)})",
            )
            return None
        if types:
            problem = _number_problem(path, types) if number else _elapsed_problem(path, types)
            if problem is not None:
                self.error(loc, f"{what}: {problem}")
                return None
        return path

    def match(self, d: LocDict, what: str) -> Match | None:
        """``type: <type or list>`` plus optional ``where: {path: value | {op: value}}``.

        A mapping holding more than a match (a sequence step, a propagation trigger) has its
        keys checked by its caller first, with the keys it allows; any other must hold only
        ``type`` and ``where``: a condition written beside ``type`` instead of under ``where``
        was ignored, and the rule then matched every event of the type."""
        if id(d) not in self._keys_checked:
            self.keys(d, what, optional=("type", "where"))  # a missing type is reported below
        types = self.event_types(d, "type", what)
        where: list[Condition] = []
        if "where" in d:
            w = self.mapping(d["where"], d.mark("where"), f"{what}.where")
            if w is not None:
                for field_path, spec in w.items():
                    where += self.conditions(field_path, spec, w.mark(field_path), f"{what}.where", types)
        if types is None:
            return None
        return Match(types, tuple(where))

    def conditions(
        self, field_path: str, spec: Any, loc: Loc, what: str, types: frozenset[str] | None
    ) -> list[Condition]:
        path = self.path(field_path, loc, f"{what}.{field_path}", types)
        if path is None:
            return []
        if not isinstance(spec, LocDict):
            op, operand = ("in", spec) if isinstance(spec, LocList) else ("eq", spec)
            if isinstance(spec, LocList) and not _operand_ok(op, list(spec)):
                self.error(loc, f"{what}.{field_path} must be {OPERATORS[op]}; got {_show(spec)}")
                return []
            problem = _kind_problem(path, op, operand, types)
            if problem is not None:
                self.error(loc, f"{what}.{field_path}: {problem}")
                return []
            return [Condition(path, op, tuple(operand) if isinstance(operand, list) else operand)]
        out = []
        for op, operand in spec.items():
            if op not in OPERATORS:
                self.error(
                    spec.key_marks.get(op, loc),
                    f"{what}.{field_path}: unknown operator {op!r}; expected one of: {', '.join(OPERATORS)}",
                )
                continue
            if not _operand_ok(op, operand):
                form = _number_form(operand) if op in _ORDERING else OPERATORS[op]
                self.error(spec.mark(op), f"{what}.{field_path}.{op} must be {form}; got {_show(operand)}")
                continue
            problem = _kind_problem(path, op, operand, types)
            if problem is not None:
                self.error(spec.mark(op), f"{what}.{field_path}.{op}: {problem}")
                continue
            out.append(Condition(path, op, tuple(operand) if isinstance(operand, list) else operand))
        return out

    def comparison(self, d: LocDict, key: str, what: str) -> tuple[str, float] | None:
        """``{gte: 5}``-style condition on a number (exactly one operator)."""
        if key not in d:
            self.error(d.loc, f"{what} is missing required key {key!r} (e.g. {{gte: 5}})")
            return None
        c = self.mapping(d[key], d.mark(key), f"{what}.{key}")
        if c is None:
            return None
        ops = [op for op in c if op in ("gt", "gte", "lt", "lte", "eq")]
        if len(c) != 1 or len(ops) != 1:
            self.error(
                c.loc, f"{what}.{key} must have exactly one of gt, gte, lt, lte, eq; got {_show(dict(c))}"
            )
            return None
        operand = c[ops[0]]
        number = finite(operand)
        if number is None:
            self.error(
                c.mark(ops[0]), f"{what}.{key}.{ops[0]} must be {_number_form(operand)}; got {_show(operand)}"
            )
            return None
        return ops[0], number


def _where_hint(key: str, allowed: set[str]) -> str:
    """Where an unknown key naming an event field belongs, when the mapping takes ``where``."""
    if "where" in allowed and ("." in key or key in Entities.KINDS):
        return f" (a condition on a field belongs under 'where:', e.g. where: {{{key}: ...}})"
    return ""


_ORDERING = frozenset({"gt", "gte", "lt", "lte"})


def finite(value: Any) -> float | None:
    """``value`` as a float, if it is a YAML number a float holds: not true/false, not
    ``.inf`` or ``.nan``, not an integer past a float's range (400 digits raised
    OverflowError, a traceback instead of the rule's file and line)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _number_form(value: Any, bound: str = "") -> str:
    """What a number in a rule must be; for a YAML number refused, why."""
    if isinstance(value, int | float) and not isinstance(value, bool) and finite(value) is None:
        return f"a finite number{bound} (within +/-1.8e308; not .inf or .nan)"
    return f"a number{bound}"


def _operand_ok(op: str, operand: Any) -> bool:
    if op in ("in", "not_in"):
        return isinstance(operand, list) and all(not isinstance(v, dict | list) for v in operand)
    if op in _ORDERING:
        return finite(operand) is not None  # compared as a float (fields.py)
    if op == "exists":
        return isinstance(operand, bool)
    return not isinstance(operand, dict | list)


_KIND_NAMES = {
    str: "text",
    int: "a whole number",
    float: "a number",
    bool: "true/false",
    list: "a list",
    datetime: "a time",
}


def _kind_problem(path: str, op: str, operand: Any, types: frozenset[str] | None) -> str | None:
    """Why ``operand`` can never equal (or be contained in) what ``path`` holds, if so.

    YAML reads unquoted ``NO``, ``yes``, ``off`` as booleans and ``0x1f`` or ``007`` as numbers:
    ``country: [NO, RU]`` quietly never matched Norway, and ``contains: 1234`` on a text field
    raised on every event.  Judged from the contract, for the rule's event types that have the
    field.  An ordering (``gt``...) compares numbers: on text or a time it never held; equality
    with a group of fields (``payload.geo: US``) never held either."""
    if not types or op == "exists":
        return None
    if op in _ORDERING:
        return _number_problem(path, types)
    kinds = _present_kinds(path, types)
    if kinds is None:
        return None  # not a plain field everywhere: nothing to judge by
    if kinds == {_Group}:
        return _group_problem(path, types)
    if _Group in kinds or datetime in kinds or (list in kinds and op != "contains"):
        return None
    holds = _holds(kinds)
    if op == "contains":
        if list in kinds:
            return None
        if kinds != {str}:
            return f"contains applies to text and list fields; {path} holds {holds}"
    values = operand if op in ("in", "not_in") else [operand]
    for value in values:
        if value is None or _fits(value, kinds):
            continue
        got = _KIND_NAMES.get(type(value), type(value).__name__)
        hint = ""
        if str in kinds and not isinstance(value, list | dict):
            hint = " (YAML reads unquoted yes/no/on/off as true/false, digits or 0x... as numbers: quote it)"
        return f"{_show(value)} is {got}, but {path} holds {holds}, so it never matches{hint}"
    if op in ("eq", "in"):
        if op == "in" and not values:
            return "in [] never matches"
        return _choice_problem(path, values, types)
    return None


class _Group:
    """The kind of a field that is a struct: a group of fields, never one value."""


_KIND_NAMES[_Group] = "a group of fields"


def _present_kinds(path: str, types: frozenset[str]) -> set[type] | None:
    """The kinds ``path`` holds on those of ``types`` that have it (a struct as ``_Group``);
    None when one of them holds something not plain (a mapping), or none has it."""
    kinds: set[type] = set()
    for event_type in types:
        if not path_exists(event_type, path):
            continue
        found = value_kinds(event_type, path)
        if found is not None:
            kinds |= found
        elif struct_fields(event_type, path) is not None:
            kinds.add(_Group)
        else:
            return None
    return kinds or None


def _holds(kinds: set[type]) -> str:
    return " or ".join(sorted(_KIND_NAMES.get(k, k.__name__) for k in kinds))


def _number_problem(path: str, types: frozenset[str]) -> str | None:
    """Why ``path`` never gives a number (for a sum, a ratio, ``gt``...), if so: each factor
    of a product must be a number, and ``elapsed:`` must name a time (it gives seconds)."""
    if path.startswith("elapsed:"):
        return _elapsed_problem(path, types)
    for part in path.split("*"):
        kinds = _present_kinds(part, types)
        if kinds is None or kinds & {int, float}:
            continue
        if kinds == {_Group}:
            return _group_problem(part, types)
        hint = f" (the seconds since it: elapsed:{part})" if datetime in kinds else ""
        return f"{part} holds {_holds(kinds)}, not a number, so it never gives one{hint}"
    return None


def _elapsed_problem(path: str, types: frozenset[str]) -> str | None:
    """Why ``elapsed:<path>`` never gives seconds (its field is not a time), if so."""
    if not path.startswith("elapsed:"):
        return None
    inner = path.removeprefix("elapsed:")
    kinds = _present_kinds(inner, types)
    if kinds is None or datetime in kinds:
        return None
    return f"elapsed: takes a time field; {inner} holds {_holds(kinds)}, so it never gives seconds"


def _group_problem(path: str, types: frozenset[str]) -> str:
    names: set[str] = set()
    for event_type in types:
        names |= set(struct_fields(event_type, path) or ())
    listed = ", ".join(f"{path}.{n}" for n in sorted(names))
    return f"{path} is a group of fields, not one value, so it never matches; name one of them ({listed})"


def _choice_problem(path: str, values: list[Any], types: frozenset[str]) -> str | None:
    """Why ``values`` hold none of the values the contract lists for ``path`` (a field that takes
    a few, such as ``payload.result``), if one of them is not among those."""
    choices: set[Any] = set()
    for event_type in types:
        found = value_choices(event_type, path)
        if found is None:
            return None  # takes any value of its kind on one of the types
        choices |= found
    listed = ", ".join(sorted(map(str, choices)))
    for value in values:
        if value is not None and value not in choices:
            return f"{_show(value)} is none of the values {path} holds ({listed}), so it never matches"
    return None


def _fits(value: Any, kinds: set[type]) -> bool:
    """Whether ``value`` can equal a value of one of ``kinds`` (Python's equality: ``100.0 ==
    100`` and ``0 == False``, so those fit; ``"5"`` never equals 5)."""
    if isinstance(value, bool):
        return bool in kinds or int in kinds or float in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds or (bool in kinds and value in (0, 1))
    if isinstance(value, float):
        return float in kinds or (int in kinds and value.is_integer()) or (bool in kinds and value in (0, 1))
    return type(value) in kinds


#: Shows a value in a message without building its whole text (a value YAML aliases made huge).
class _Shown(reprlib.Repr):
    """``reprlib`` showing the loader's mappings and lists as the dicts and lists they are (it
    knows types by name, and gave their whole ``repr`` before cutting it)."""

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, dict) and type(x) is not dict:
            return self.repr_dict(x, level)
        if isinstance(x, list) and type(x) is not list:
            return self.repr_list(x, level)
        return super().repr1(x, level)


_SHOWN = _Shown()
_SHOWN.maxlevel, _SHOWN.maxdict, _SHOWN.maxlist = 3, 6, 6
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 40, 40, 40


def _show(value: Any) -> str:
    # (A scalar is as long as the file made it: shown as before, cut below.)
    text = _SHOWN.repr(value) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
