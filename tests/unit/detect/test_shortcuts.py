"""Invariants the detectors' per-event shortcuts rely on, checked on simulated traffic."""

from __future__ import annotations

from pathlib import Path

from vigil.detect.engine import RuleSet
from vigil.detect.fields import key_of
from vigil.detect.kinds.common import GroupedDetector
from vigil.detect.rules.validate import load_rules
from vigil.events.types import EVENT_TYPES
from vigil.sim import SimConfig, Simulation

ROOT = Path(__file__).resolve().parents[3]
RULES = load_rules([ROOT / "rules"])


def test_every_key_a_detector_routes_under_starts_with_its_route_prefix() -> None:
    # The routed stage skips a detector for a record whose key lacks its prefix.
    ruleset = RuleSet(RULES)
    events = list(Simulation(SimConfig(seed=3, customers=300, events=15_000, attack_rate=2.0)).canonical())
    routed = 0
    for det in ruleset.detectors:
        prefix = det.route_prefix
        classes = tuple(EVENT_TYPES[t] for t in det.types)
        for event in events:
            if isinstance(event, classes):
                for key in det.routes(event):
                    assert key.startswith(prefix), (det.rule.id, key, prefix)
                    routed += 1
    assert routed > 10_000
    assert any(d.kind == "propagation" and d.route_prefix for d in ruleset.detectors)


def test_a_single_entity_groups_route_is_its_group_key() -> None:
    # What lets group_key() take the routed record's key instead of building it again.
    ruleset = RuleSet(RULES)
    events = list(Simulation(SimConfig(seed=5, customers=100, events=3_000)).canonical())
    checked = 0
    for det in ruleset.detectors:
        if not isinstance(det, GroupedDetector):
            continue
        classes = tuple(EVENT_TYPES[t] for t in det.types)
        for event in events:
            if not isinstance(event, classes):
                continue
            key = key_of(det._group, event)
            assert det.group_key(event, None) == key
            for route in det.routes(event):
                if det._route_is_key:
                    assert det.group_key(event, route) == key == route
                else:  # a composite group is routed by its first part: built from the event
                    assert det.group_key(event, route) == key
                checked += 1
    assert checked > 1000
