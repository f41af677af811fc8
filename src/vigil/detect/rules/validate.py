"""The validation pass: rule files in, rule models and every located problem out.

``validate_paths`` reads each file, checks every rule and example case, then checks the
set as a whole (duplicate ``id``s across files, cases naming rules that do not exist) and
returns all issues at once, each with ``file:line:column`` and the expected form.  Models
are built only from rules without errors; :func:`load_rules` raises
:class:`~vigil.errors.RuleError` listing every error when there is any.
"""

from __future__ import annotations

import re
import string
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from vigil.detect.intel import IntelIndex
from vigil.detect.kinds.base import Env, placeholder_names
from vigil.detect.rules import registry
from vigil.detect.rules.loader import LocDict, LocList, load_file, rule_files
from vigil.detect.rules.models import (
    DECISION_ACTIONS,
    SEVERITIES,
    Case,
    DecisionSpec,
    Expectation,
    Issue,
    Rule,
    RuleFile,
)
from vigil.detect.rules.parse import DURATION_FORM, Parser, parse_duration
from vigil.errors import DecodeError, RuleError
from vigil.events.base import Entities, Event
from vigil.events.codec import decode_event
from vigil.events.types import EVENT_CLASSES

#: Matched whole (fullmatch): ``$`` also matches before a final newline, and ``"fatigue\n"``
#: made a state topic name Kafka refused when the service started.
RULE_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,63}")
ATTACK_ID = re.compile(r"T\d{4}(\.\d{3})?")
COMMON_KEYS = (
    "id",
    "version",
    "title",
    "type",
    "typology",
    "attack",
    "severity",
    "score",
    "explanation",
    "decision",
    "entity",
    "description",
    "references",
)
COMMON_CONTEXT = frozenset(
    {"entity", "entity_kind", "rule", "title", "severity", "first_at", "last_at", "evidence_count"}
)
#: Case events are placed relative to this instant unless they give an absolute ``at``.
CASE_BASE = datetime(2026, 1, 1, tzinfo=UTC)
_CASE_EVENT_KEYS = frozenset({"type", "id", "at", "source", "payload", *Entities.KINDS})

#: A decision's ``ttl`` that never lapses: the hold stands until released (a sanctions hit).
UNTIL_RELEASED = "until_released"
TTL_FORM = f"{DURATION_FORM}, or {UNTIL_RELEASED!r} for a decision that stands until released"


def _field_names(types: frozenset[str] | None = None) -> frozenset[str]:
    """Field names an explanation may quote: those of events of ``types`` (None: of any)."""
    names: set[str] = set(Entities.KINDS)
    for cls in EVENT_CLASSES:
        if types is not None and str(cls.__struct_config__.tag) not in types:
            continue
        payload = typing.get_type_hints(cls).get("payload")
        if isinstance(payload, type) and issubclass(payload, msgspec.Struct):
            names |= set(payload.__struct_fields__)
            if "geo" in payload.__struct_fields__:
                # A location's parts (payload.geo.country): only of the types that have one (a
                # {country} in a withdrawal rule validated, and read "(unknown)" in every alert).
                names |= {"country", "city"}
    return frozenset(names)


FIELD_NAMES = _field_names()


@dataclass
class Validation:
    files: list[RuleFile] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def rules(self) -> list[Rule]:
        return [r for f in self.files for r in f.rules]

    @property
    def cases(self) -> list[Case]:
        return [c for f in self.files for c in f.cases]


def validate_paths(paths: list[Path]) -> Validation:
    out = Validation()
    # A path that is not there is named as such: read as a file, a missing ``rules`` directory
    # (the default, relative to wherever the command runs) was "rules:0:0: cannot read the file".
    there = [p for p in paths if p.exists()]
    for path in paths:
        if path not in there:
            out.issues.append(Issue(str(path), 0, 0, _missing(path)))
    files = rule_files(there)
    if not files and there:
        out.issues.append(
            Issue(
                ",".join(map(str, there)),
                0,
                0,
                "no rule files (*.yaml, *.yml) found in it or its subdirectories",
            )
        )
    for path in files:
        rf, issues = validate_file(path)
        out.files.append(rf)
        out.issues += issues
    _check_set(out)
    return out


def _missing(path: Path) -> str:
    if path.is_absolute():
        return "no such file or directory; expected a rule file (*.yaml) or a directory of them"
    return (
        f"no such file or directory (relative to the current directory, {Path.cwd()}); "
        "expected a rule file (*.yaml) or a directory of them"
    )


def describe(issue: Issue) -> str:
    """``file:line:column: severity: message``, or ``path: severity: message`` for a problem
    with a path as a whole (a missing directory), which has no line to point at."""
    if issue.line == 0:
        return f"{issue.file}: {issue.severity}: {issue.message}"
    return str(issue)


def load_rules(paths: list[Path]) -> list[Rule]:
    """Every rule under ``paths``; raises RuleError listing every error if any file is invalid."""
    v = validate_paths(paths)
    if v.errors:
        first = v.errors[0]
        listing = "\n".join(describe(i) for i in v.errors)
        msg = first.message if len(v.errors) == 1 else f"{len(v.errors)} error(s) in rule files:\n{listing}"
        located = first.line > 0
        raise RuleError(
            msg,
            file=first.file,
            line=first.line if located else None,
            column=first.column if located else None,
        )
    return v.rules


def validate_file(path: Path) -> tuple[RuleFile, list[Issue]]:
    name = str(path)
    p = Parser(name)
    loaded = load_file(path)
    for (line, col), message in loaded.problems:
        p.error((line, col), message)
    rf = RuleFile(name)
    doc = loaded.data
    if doc is None:
        if not loaded.problems:
            p.error((1, 1), "empty file; expected a mapping with 'rules' (and 'cases')")
        return rf, p.issues
    top = p.mapping(doc, (1, 1), "the file")
    if top is None:
        return rf, p.issues
    p.keys(top, "the file", required=("rules",), optional=("cases", "description"))
    raw_rules = top.get("rules")
    if "rules" in top and not (isinstance(raw_rules, LocList) and raw_rules):
        p.error(top.mark("rules"), "'rules' must be a non-empty list of rules")
    elif isinstance(raw_rules, LocList):
        for i, raw in enumerate(raw_rules):
            d = p.mapping(raw, raw_rules.mark(i), f"rules[{i}]")
            if d is not None:
                if isinstance(d.get("id"), str):
                    rf.declared.add(d["id"])
                rule = parse_rule(d, p, name)
                if rule is not None:
                    rf.rules.append(rule)
    raw_cases = top.get("cases", LocList())
    if not isinstance(raw_cases, LocList):
        p.error(top.mark("cases"), "'cases' must be a list of {name, events, expect}")
    else:
        for i, raw in enumerate(raw_cases):
            d = p.mapping(raw, raw_cases.mark(i), f"cases[{i}]")
            if d is not None:
                case = parse_case(d, p, name, i)
                if case is not None:
                    rf.cases.append(case)
    if isinstance(raw_rules, LocList) and raw_rules and not raw_cases:
        p.warn(
            top.loc, "no example cases; every rule file should carry events in and the alert (or none) out"
        )
    return rf, p.issues


def parse_rule(d: LocDict, p: Parser, file: str) -> Rule | None:
    before = sum(i.severity == "error" for i in p.issues)
    rid = p.string(d, "id", "rule")
    what = f"rule {rid!r}" if rid else "rule"
    if rid is None and "id" not in d:
        p.error(
            d.loc,
            "rule is missing required key 'id' (lower-case letters, digits and '-', e.g. 'ato-sequence')",
        )
    elif rid is not None and not RULE_ID.fullmatch(rid):
        p.error(
            d.mark("id"), f"{what}: id must be lower-case letters, digits and '-' (2-64 chars); got {rid!r}"
        )
    version = p.integer(d, "version", what, minimum=1)
    if "version" not in d:
        p.error(d.loc, f"{what} is missing required key 'version' (an integer >= 1, bumped on any change)")
    kind_name = p.choice(d, "type", what, registry.KINDS)
    spec = registry.KINDS.get(kind_name or "")
    allowed = set(COMMON_KEYS) | set(spec.keys if spec else ())
    if spec:
        p.keys(
            d,
            what,
            required=("id", "version", "type", "typology", "severity", "score", "explanation"),
            optional=allowed,
        )
    title = p.string(d, "title", what, default=rid or "")
    typology = p.string(d, "typology", what)
    severity = p.choice(d, "severity", what, SEVERITIES)
    score = p.number(d, "score", what, minimum=0)
    if score is not None and score > 100:
        p.error(d.mark("score"), f"{what}.score must be between 0 and 100; got {score:g}")
    attack = p.strings(d, "attack", what, allow_empty=True) or []
    for tech in attack:
        if not ATTACK_ID.fullmatch(tech):
            p.error(
                d.mark("attack"),
                f"{what}.attack: {tech!r} is not a MITRE ATT&CK technique id like 'T1078' or 'T1110.004'",
            )
    decision = None
    if "decision" in d:
        dd = p.mapping(d["decision"], d.mark("decision"), f"{what}.decision")
        if dd is not None:
            p.keys(dd, f"{what}.decision", required=("action",), optional=("ttl",))
            action = p.choice(dd, "action", f"{what}.decision", DECISION_ACTIONS)
            ttl: timedelta | None = None
            if dd.get("ttl") != UNTIL_RELEASED:
                ttl = p.duration(dd, "ttl", f"{what}.decision", default=timedelta(hours=24), form=TTL_FORM)
            if action and (ttl or dd.get("ttl") == UNTIL_RELEASED):
                decision = DecisionSpec(action, ttl)  # type: ignore[arg-type]
    # An entity kind: a misspelt one made alerts about "custmer:c1", which no decision or case
    # maps to a customer.
    entity = p.choice(d, "entity", what, Entities.KINDS) if "entity" in d else None
    try:
        params = spec.parse(d, p, what) if spec else None
    except (ValueError, OverflowError, TypeError) as exc:
        # A backstop: each kind reports what it refuses at its place; a value it let through and
        # then could not use (a number past a float's range) is reported at the rule, not raised.
        p.error(d.loc, f"{what} cannot be read: {exc}")
        params = None
    explanation = p.string(d, "explanation", what)
    #: Every explanation the rule has, by key: ``explanation``, and its kind's others.
    templates = {"explanation": explanation} if explanation is not None else {}
    if spec is not None:
        for key in spec.templates:
            other = d.get(key)
            if isinstance(other, str) and other.strip():  # (else refused by the kind's parse)
                templates[key] = other
        names = COMMON_CONTEXT | spec.context | FIELD_NAMES
        for key, text in templates.items():
            _check_template(text, d.mark(key), p, f"{what}.{key}", names)
    errors_now = sum(i.severity == "error" for i in p.issues)
    if params is None and spec is not None and errors_now == before:
        # A backstop: a kind that gave nothing says why at its place; one that did not dropped
        # the rule without a word (``validate`` said ok, and detection ran without it).
        p.error(d.loc, f"{what}: its {kind_name} settings cannot be used as given")
        return None
    if errors_now > before or params is None:
        return None
    if not (rid and version and kind_name and typology and severity and score is not None and explanation):
        return None  # every missing piece was reported above
    rule = Rule(
        id=rid,
        version=version,
        title=title or rid,
        kind=kind_name,
        typology=typology,
        severity=severity,  # type: ignore[arg-type]
        score=score,
        explanation=explanation,
        params=params,
        attack=tuple(attack),
        decision=decision,
        entity=entity,
        file=file,
        line=d.loc[0],
    )
    # A field name no event of the rule has always read "(unknown)": {amount_usd} in a login rule.
    if spec is None:
        return None
    try:
        types = spec.detector(rule, Env(IntelIndex())).types
    except (ValueError, OverflowError, TypeError) as exc:
        # As for parse above: a where bound past a float's range raised OverflowError here,
        # a traceback from `vigil rules validate` (and from loading the rules) with no file:line.
        p.error(d.loc, f"{what} cannot be built: {exc}")
        return None
    mine = _field_names(frozenset(types)) | COMMON_CONTEXT | spec.context
    # A context name the kind sets only with other settings: {speed_kmh} in an amount rule.
    # And one another of its explanations is not given: {imitates} where no counterparty is known.
    offered = spec.context_of(params) if spec.context_of is not None else spec.context
    for key, text in templates.items():
        given = offered if key == "explanation" else offered & spec.templates[key]
        setting = "with these settings" if key == "explanation" else f"in its {key}"
        for name in placeholder_names(text):
            if name in spec.context and name not in given and name not in COMMON_CONTEXT | FIELD_NAMES:
                p.error(
                    d.mark(key),
                    f"{what}.{key}: {{{name}}} is not set by a {kind_name} rule {setting} "
                    f"(it sets {', '.join(sorted(given))}): it would always read (unknown)",
                )
            if name in FIELD_NAMES and name not in mine:
                p.error(
                    d.mark(key),
                    f"{what}.{key}: {{{name}}} is a field of none of the rule's event types "
                    f"({', '.join(sorted(types))}): it would always read (unknown)",
                )
    if sum(i.severity == "error" for i in p.issues) > before:
        return None
    return rule


def _check_template(text: str, loc: tuple[int, int], p: Parser, what: str, context: frozenset[str]) -> None:
    """Refuse a template ``text`` (at ``loc``; ``what``: its rule and key, as errors name it) that
    does not format, or names anything but ``context`` and event field names."""
    allowed = context | FIELD_NAMES
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        p.error(
            loc,
            f"{what} is not a valid template ({exc}); use {{name}} placeholders, '{{{{' for a brace",
        )
        return
    for _, name, spec, conv in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            p.error(
                loc,
                f"{what}: placeholder {{{name}}} must be a plain name like {{entity}} "
                "(no attribute access, index, format spec or conversion)",
            )
        elif name not in allowed:
            p.error(
                loc,
                f"{what}: unknown placeholder {{{name}}}; expected one of the rule's "
                f"context names ({', '.join(sorted(context))}) or an event field name",
            )


# --------------------------------------------------------------------------- cases


def parse_case(d: LocDict, p: Parser, file: str, index: int) -> Case | None:
    what = f"cases[{index}]"
    p.keys(d, what, required=("name", "events", "expect"))
    name = p.string(d, "name", what, default=f"case {index + 1}") or f"case {index + 1}"
    what = f"case {name!r}"
    raw_events = d.get("events")
    events: list[Event] = []
    ok = True
    if not isinstance(raw_events, LocList) or not raw_events:
        p.error(d.mark("events"), f"{what}.events must be a non-empty list of events")
        ok = False
    else:
        stem = Path(file).stem
        for i, raw in enumerate(raw_events):
            e = p.mapping(raw, raw_events.mark(i), f"{what}.events[{i}]")
            event = (
                _case_event(e, p, f"{what}.events[{i}]", f"{stem}-{index + 1}-{i + 1}")
                if e is not None
                else None
            )
            if event is None:
                ok = False
            else:
                events.append(event)
    expects: list[Expectation] = []
    raw_expect = d.get("expect")
    if raw_expect in ("none", None) or raw_expect == []:
        pass
    elif not isinstance(raw_expect, LocList):
        p.error(d.mark("expect"), f"{what}.expect must be a list of {{rule, entity, decision}} or 'none'")
        ok = False
    else:
        for i, raw in enumerate(raw_expect):
            x = p.mapping(raw, raw_expect.mark(i), f"{what}.expect[{i}]")
            if x is None:
                ok = False
                continue
            p.keys(x, f"{what}.expect[{i}]", required=("rule",), optional=("entity", "decision"))
            rule = p.string(x, "rule", f"{what}.expect[{i}]")
            entity = p.string(x, "entity", f"{what}.expect[{i}]")
            decision = p.choice(x, "decision", f"{what}.expect[{i}]", DECISION_ACTIONS, default="") or None
            if rule:
                expects.append(Expectation(rule, entity, decision))
    if not ok:
        return None
    return Case(name, tuple(events), tuple(expects), file, d.loc[0])


def _case_time(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return CASE_BASE + timedelta(seconds=float(value))
        except (OverflowError, ValueError):
            return None  # past a float's or a datetime's range, .inf or .nan: reported by the caller
    if isinstance(value, str):
        offset = parse_duration(value.lstrip("+"))
        if offset is not None or value.strip() in ("0", "+0"):
            return CASE_BASE + (offset or timedelta(0))
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else None
    return None


def _payload_times(value: Any) -> Any:
    """Case payloads may give ``*_at`` fields as offsets ('+5m') like ``at``."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k.endswith("_at") and (t := _case_time(v)) is not None:
                out[k] = t.isoformat()
            else:
                out[k] = _payload_times(v)
        return out
    if isinstance(value, list):
        return [_payload_times(v) for v in value]
    return value


def _case_event(e: LocDict, p: Parser, what: str, default_id: str) -> Event | None:
    p.keys(e, what, required=("type",), optional=_CASE_EVENT_KEYS)
    at = _case_time(e.get("at", 0))
    if at is None:
        p.error(
            e.mark("at"),
            f"{what}.at must be an offset like '90s' or '2h' from the case start, or a UTC "
            f"timestamp like '2026-01-01T10:00:00Z'; got {e.get('at')!r}",
        )
        return None
    doc = {
        "type": e.get("type"),
        "event_id": str(e.get("id", default_id)),
        "source": str(e.get("source", "case")),
        "occurred_at": at.isoformat(),
        "entities": {k: str(e[k]) for k in Entities.KINDS if k in e},
    }
    if "payload" in e:
        doc["payload"] = _payload_times(e["payload"])
    try:
        return decode_event(msgspec.json.encode(doc))
    except DecodeError as exc:
        loc = e.mark("payload") if exc.path and exc.path.startswith("$.payload") else e.loc
        p.error(loc, f"{what} is not a valid {e.get('type')!r} event: {exc.reason}")
        return None


def _check_set(v: Validation) -> None:
    seen: dict[str, Rule] = {}
    for rule in v.rules:
        if rule.id in seen:
            first = seen[rule.id]
            v.issues.append(
                Issue(rule.file, rule.line, 1, f"duplicate rule id {rule.id!r} (also at {first.where})")
            )
        else:
            seen[rule.id] = rule
    declared = set().union(*(f.declared for f in v.files)) if v.files else set()
    for case in v.cases:
        for x in case.expect:
            if x.rule not in declared:
                v.issues.append(
                    Issue(case.file, case.line, 1, f"case {case.name!r} expects unknown rule {x.rule!r}")
                )
