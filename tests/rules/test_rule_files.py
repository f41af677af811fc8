"""Every shipped rule file is valid, and every example case it carries passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.detect.cases import run_case
from vigil.detect.rules.validate import validate_paths

RULES = Path(__file__).resolve().parents[2] / "rules"
VALIDATION = validate_paths([RULES])


def test_shipped_rules_validate_without_errors_or_warnings() -> None:
    assert [str(i) for i in VALIDATION.issues] == []
    assert len(VALIDATION.rules) >= 20


def test_every_rule_file_has_cases_and_every_rule_is_exercised() -> None:
    for rf in VALIDATION.files:
        assert rf.cases, f"{rf.path} has no example cases"
    expected = {x.rule for c in VALIDATION.cases for x in c.expect}
    untested = sorted(r.id for r in VALIDATION.rules) and sorted({r.id for r in VALIDATION.rules} - expected)
    assert untested == [], f"rules with no case expecting them to fire: {untested}"


@pytest.mark.parametrize("case", VALIDATION.cases, ids=lambda c: f"{Path(c.file).name}:{c.line}")
def test_case(case) -> None:  # type: ignore[no-untyped-def]
    rules = [r for r in VALIDATION.rules if r.file == case.file]
    result = run_case(case, rules)
    assert result.ok, f"{result.where} {case.name}: " + "; ".join(result.problems)
