"""A number in a rule must be one a float holds: an integer past a float's range (or ``.inf``,
``.nan``) is an error at its file, line and column, not an OverflowError traceback from
``vigil rules validate`` and from loading the rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import pytest

from vigil.detect.rules import registry
from vigil.detect.rules.validate import load_rules, validate_paths
from vigil.errors import RuleError

BIG = "1" + "0" * 400


def _rule(score: str = "1", where: str = "", condition: str = "3", at: str = "0") -> str:
    return f"""\
rules:
  - id: big-bound
    version: 1
    type: threshold
    typology: t
    severity: low
    score: {score}
    explanation: "{{count}}"
    group_by: customer
    timespan: 1h
    match: {{type: deposit{where}}}
    condition: {{gte: {condition}}}
cases:
  - name: c
    events: [{{type: deposit, at: {at}, customer: c1, payload: {{deposit_id: d1, asset: USD, amount: 1}}}}]
    expect: none
"""


def _errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "big.yaml"
    path.write_text(text)
    return [str(i) for i in validate_paths([tmp_path]).errors]


def test_a_score_past_a_floats_range_is_an_error_at_its_place(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    assert _errors(tmp_path, _rule(score=BIG)) == [
        f"{path}:7:12: error: rule 'big-bound'.score must be a finite number >= 0 "
        f"(within +/-1.8e308; not .inf or .nan); got {BIG[:77]}..."
    ]
    for number in ("-" + BIG, ".inf", "-.inf", ".nan"):
        errors = _errors(tmp_path, _rule(score=number))
        assert len(errors) == 1, errors
        assert errors[0].startswith(f"{path}:7:12: error: rule 'big-bound'.score must be a finite number")
    # A number out of bounds but finite is told so as before.
    assert _errors(tmp_path, _rule(score="-1")) == [
        f"{path}:7:12: error: rule 'big-bound'.score must be a number >= 0; got -1"
    ]


@pytest.mark.parametrize("number", [BIG, "-" + BIG, ".inf", ".nan"])
def test_a_condition_bound_past_a_floats_range_is_an_error_at_its_place(tmp_path: Path, number: str) -> None:
    errors = _errors(tmp_path, _rule(condition=number))
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"{tmp_path / 'big.yaml'}:12:22: error: rule 'big-bound'.condition.gte must be"
    )
    assert "finite number" in errors[0]


@pytest.mark.parametrize("op", ["gt", "gte", "lt", "lte"])
@pytest.mark.parametrize("number", [BIG, ".inf", ".nan"])
def test_a_where_bound_past_a_floats_range_is_an_error_at_its_place(
    tmp_path: Path, op: str, number: str
) -> None:
    where = f", where: {{payload.amount_usd: {{{op}: {number}}}}}"
    errors = _errors(tmp_path, _rule(where=where))
    assert len(errors) == 1, errors
    path = tmp_path / "big.yaml"
    assert errors[0].startswith(
        f"{path}:11:{59 + len(op)}: error: rule 'big-bound'.match.where.payload.amount_usd.{op}"
    )
    assert "must be a finite number" in errors[0]
    with pytest.raises(RuleError, match=r"big\.yaml:11:"):
        load_rules([tmp_path])


def test_an_equality_with_a_huge_integer_stays_valid(tmp_path: Path) -> None:
    # Compared as it is (never as a float): it just never matches a deposit's amount.
    assert _errors(tmp_path, _rule(where=f", where: {{payload.amount: {BIG}}}")) == []


@pytest.mark.parametrize("at", [BIG, ".inf", ".nan", "1000000000000"])
def test_a_case_time_past_a_floats_or_dates_range_is_an_error_at_its_place(tmp_path: Path, at: str) -> None:
    errors = _errors(tmp_path, _rule(at=at))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{tmp_path / 'big.yaml'}:15:34: error: case 'c'.events[0].at")
    assert ".at must be an offset" in errors[0]


def test_a_kind_raising_on_a_value_it_let_through_is_reported_at_the_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backstop: a kind's parser or detector raising ValueError, OverflowError or TypeError
    # on what validation passed is an error at the rule's line, not a traceback.
    def boom(*_: Any) -> Any:
        raise OverflowError("int too large to convert to float")

    spec = registry.KINDS["threshold"]
    path = tmp_path / "big.yaml"
    for broken in (
        dataclasses.replace(spec, detector=cast(Any, boom)),
        dataclasses.replace(spec, parse=boom),
    ):
        monkeypatch.setitem(registry.KINDS, "threshold", broken)
        errors = _errors(tmp_path, _rule())
        assert len(errors) == 1, errors
        assert errors[0].startswith(f"{path}:2:5: error: rule 'big-bound' cannot be ")
        assert errors[0].endswith(": int too large to convert to float")


@pytest.mark.parametrize("number", [BIG, ".inf", "-.inf", ".nan"])
def test_a_sequence_ratio_past_a_floats_range_is_an_error_at_its_place(tmp_path: Path, number: str) -> None:
    # .nan validated and made a step that never held (every comparison with NaN is false);
    # -.inf one that always did; 10**400 was caught only by the backstop, at the rule's line.
    text = f"""\
rules:
  - id: big-ratio
    version: 1
    type: sequence
    typology: t
    severity: low
    score: 1
    explanation: "x"
    group_by: customer
    within: 1h
    steps:
      - {{name: a, type: deposit}}
      - name: b
        type: withdrawal_request
        ratio_to: {{step: a, field: payload.amount, of: payload.amount, gte: {number}}}
cases: [{{name: c, events: [{{type: login, customer: c1}}], expect: none}}]
"""
    errors = _errors(tmp_path, text)
    assert len(errors) == 1, errors
    where = f"{tmp_path / 'big.yaml'}:15:77: error: rule 'big-ratio'.steps[1].ratio_to.gte"
    assert errors[0].startswith(f"{where} must be a finite number"), errors
