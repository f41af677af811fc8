"""Quality against the simulator on a small deterministic run: the issue's targets hold."""

from __future__ import annotations

import json
from pathlib import Path

from vigil.detect.eval import HOLD_SCENARIOS, evaluate
from vigil.detect.rules.validate import load_rules
from vigil.sim import SCENARIOS

ROOT = Path(__file__).resolve().parents[3]


def test_every_scenario_meets_recall_precision_and_hold_targets() -> None:
    rules = load_rules([ROOT / "rules"])
    # A thousand customers over a simulated day, three times the default attack rate, so
    # every scenario has several episodes; the look-alikes are on.
    result = evaluate(rules, seed=3, events=100_000, customers=1000, attack_rate=3.0)
    attack_names = {n for n in SCENARIOS if not n.startswith("benign:")}
    assert attack_names <= set(result.scenarios), (
        f"scenarios without episodes: {attack_names - set(result.scenarios)}"
    )
    failures = {}
    for name, s in result.scenarios.items():
        assert s.episodes >= 1
        hold_ok = name not in HOLD_SCENARIOS or (s.hold_before_funds_leave or 0.0) >= 0.95
        if s.recall < 0.95 or s.precision < 0.90 or not hold_ok:
            failures[name] = s.as_json()
    assert failures == {}
    assert result.benign_events > 0.9 * result.events
    assert result.false_positives_per_10k < 2.0


def test_json_has_exactly_the_documented_shape() -> None:
    rules = load_rules([ROOT / "rules"])
    result = evaluate(rules, seed=5, events=20_000, customers=300)
    doc = json.loads(json.dumps(result.as_json()))
    assert set(doc) == {"scenarios", "benign_events", "false_positives_per_10k"}
    for scores in doc["scenarios"].values():
        assert set(scores) == {
            "episodes",
            "alerts",
            "recall",
            "precision",
            "ttd_p50_s",
            "ttd_p95_s",
            "hold_before_funds_leave",
        }
        assert 0.0 <= scores["recall"] <= 1.0
        assert 0.0 <= scores["precision"] <= 1.0
