"""The explicit registry of rule kinds: a rule's ``type`` picks its parser and detector here.

Adding a kind means adding a line to :data:`KINDS`; an unknown ``type`` fails validation by
name with the list of known kinds.  Nothing is discovered by scanning modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vigil.detect.kinds import deviation, exposure, intel, linked, lookalike, propagation, sequence, threshold
from vigil.detect.kinds.base import Detector
from vigil.detect.rules.loader import LocDict
from vigil.detect.rules.parse import Parser


@dataclass(frozen=True)
class KindSpec:
    parse: Callable[[LocDict, Parser, str], Any]
    detector: type[Detector]
    #: Names this kind offers to explanation templates (besides the common ones).
    context: frozenset[str]
    #: The rule keys this kind reads (besides the common ones); any other key is an error.
    keys: tuple[str, ...]
    #: Of :attr:`context`, the names a rule with these (parsed) settings sets; None: all of them.
    context_of: Callable[[Any], frozenset[str]] | None = None
    #: Of :attr:`keys`, those that are explanations too (for a case the rule's ``explanation``
    #: does not fit), validated as it is, each with the context names it is given.
    templates: Mapping[str, frozenset[str]] = field(default_factory=dict)


KINDS: dict[str, KindSpec] = {
    "threshold": KindSpec(
        threshold.parse,
        threshold.ThresholdDetector,
        threshold.CONTEXT,
        ("match", "group_by", "timespan", "aggregate", "field", "condition", "related", "cooldown"),
    ),
    "sequence": KindSpec(
        sequence.parse,
        sequence.SequenceDetector,
        sequence.CONTEXT,
        ("group_by", "within", "steps", "absent", "repeat"),
    ),
    "propagation": KindSpec(
        propagation.parse, propagation.PropagationDetector, propagation.CONTEXT, ("mark", "trigger")
    ),
    "intel": KindSpec(
        intel.parse, intel.IntelDetector, intel.CONTEXT, ("match", "fields", "categories", "group_by")
    ),
    "exposure": KindSpec(
        exposure.parse,
        exposure.ExposureDetector,
        exposure.CONTEXT,
        # (No rule-level group_by: each check entry groups its own events.)
        ("edges", "check", "categories", "hops", "min_hops"),
    ),
    "lookalike": KindSpec(
        lookalike.parse,
        lookalike.LookalikeDetector,
        lookalike.CONTEXT,
        ("known", "check", "chars", "dust_only_explanation"),
        templates={"dust_only_explanation": lookalike.DUST_ONLY_CONTEXT},
    ),
    "deviation": KindSpec(
        deviation.parse,
        deviation.DeviationDetector,
        deviation.CONTEXT,
        context_of=deviation.context_of,
        keys=(
            "match",
            "group_by",
            "measure",
            "field",
            "min_history",
            "condition",
            "min_value",
            "history",
            "only",
            "first_seen",
            "seen_also",
            "peers",
        ),
    ),
    "linked": KindSpec(
        linked.parse,
        linked.LinkedDetector,
        linked.CONTEXT,
        ("links", "match", "parties", "timespan", "condition"),
    ),
}


def kind(name: str) -> KindSpec:
    try:
        return KINDS[name]
    except KeyError:
        msg = f"unknown rule type {name!r}; expected one of: {', '.join(KINDS)}"
        raise KeyError(msg) from None
