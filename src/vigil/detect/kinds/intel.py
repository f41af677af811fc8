"""Intel-match rules: a field of an event is a listed indicator (sanctioned, drainer, phishing ...).

::

    type: intel
    match: {type: [withdrawal_request, withdrawal_address_added]}
    fields: [payload.to_address, payload.address]
    categories: [sanctioned]
    group_by: customer                 # who the alert is about

The lookup is one dict access per field (:class:`~vigil.detect.intel.IntelIndex`); the
index is global (every process holds the whole list), so this rule needs no re-keying.
The alert records the ``feed@list_version`` matched against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vigil.detect.fields import Match, compile_getter, key_of, path_exists, short_name
from vigil.detect.kinds.base import EvidenceMaker, Hit, entity_ref
from vigil.detect.kinds.common import GroupedDetector
from vigil.detect.rules.loader import LocDict
from vigil.detect.rules.parse import Parser
from vigil.events.base import Event
from vigil.events.types import EVENT_TYPES, EntityRef
from vigil.stream.base import State

CONTEXT = frozenset({"value", "category", "feed", "list_version", "field", "group"})
CATEGORIES = (
    "sanctioned",
    "scam",
    "drainer",
    "phishing",
    "mixer",
    "c2",
    "malware",
    "compromised_vendor",
    "other",
)


@dataclass(frozen=True)
class IntelParams:
    match: Match
    fields: tuple[str, ...]
    categories: frozenset[str]
    group_by: tuple[str, ...]


def parse(d: LocDict, p: Parser, what: str) -> IntelParams | None:
    m = p.mapping(d.get("match"), d.mark("match"), f"{what}.match")
    match = p.match(m, f"{what}.match") if m is not None else None
    types = match.types if match else None
    fields = p.strings(d, "fields", what)
    if fields is None and "fields" not in d:
        p.error(d.loc, f"{what} is missing required key 'fields' (paths whose values are looked up)")
    paths = [p.path(f, d.mark("fields"), f"{what}.fields", types) for f in fields or []]
    cats = p.strings(d, "categories", what) or []
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        p.error(
            d.mark("categories"),
            f"{what}.categories: unknown {bad}; expected some of: {', '.join(CATEGORIES)}",
        )
    if not cats and "categories" not in d:
        p.error(d.loc, f"{what} is missing required key 'categories' (e.g. [sanctioned])")
    group = p.strings(d, "group_by", what, required=True)
    if group is None:
        p.error(d.mark("group_by"), f"{what} needs 'group_by' (the entity the alert is about)")
    gpaths = [p.path(g, d.mark("group_by"), f"{what}.group_by", types, every=True) for g in group or []]
    if match is None or not paths or None in paths or bad or not cats or not gpaths or None in gpaths:
        return None
    return IntelParams(match, tuple(x for x in paths if x), frozenset(cats), tuple(x for x in gpaths if x))


class IntelDetector(GroupedDetector):
    kind = "intel"

    def __init__(self, rule: Any, env: Any) -> None:
        params: IntelParams = rule.params
        super().__init__(rule, env, params.group_by)
        self.p = params
        self._match = params.match.compile()
        fields = tuple((f, short_name(f), compile_getter(f)) for f in params.fields)
        #: Per event class, the fields it has (reading one it lacks costs a caught AttributeError).
        self._fields_of = {
            EVENT_TYPES[t]: tuple((name, get) for f, name, get in fields if path_exists(t, f))
            for t in params.match.types
        }
        self._evidence = EvidenceMaker([*params.match.paths, *params.fields], rule.explanation)

    @property
    def types(self) -> frozenset[str]:
        return self.p.match.types

    def wants(self, event: Event) -> bool:
        return self._match(event)

    def process(self, event: Event, state: State, hits: list[Hit], route: str | None = None) -> None:
        if not self._match(event):
            return
        index = self.env.intel
        for name, get in self._fields_of.get(type(event), ()):
            value = get(event)
            entry = (
                index.lookup(value, event.occurred_at, self.p.categories) if isinstance(value, str) else None
            )
            if entry is None:
                continue
            key = key_of(self._group, event)
            if key is None:
                return
            listed = entry.listed_as
            hits.append(
                Hit(
                    entity=entity_ref(key),
                    evidence=[self._evidence(event)],
                    related=[
                        EntityRef(
                            kind="address" if str(value).startswith("0x") else "indicator", id=str(value)
                        ),
                        *([EntityRef(kind="indicator", id=listed)] if listed is not None else []),
                    ],
                    context={
                        "value": str(value),
                        "category": entry.category,
                        "feed": entry.feed,
                        "list_version": entry.list_version,
                        "field": name,
                        "group": key,
                    },
                    # Matched through the value's other spelling (a Bitcoin Cash address listed
                    # as CashAddr, say): the explanation says how the list spells it.
                    note=None if listed is None else ("The list spells it {}, the same address.", listed),
                    intel_version=entry.version,
                    withdrawal_id=_withdrawal_id(event),
                )
            )
            return


def _withdrawal_id(event: Event) -> str | None:
    value = getattr(getattr(event, "payload", None), "withdrawal_id", None)
    return value if isinstance(value, str) else None
