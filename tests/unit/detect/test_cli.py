"""`vigil rules validate|test` and `vigil eval` as a user runs them (Typer's runner, no broker)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from vigil.cli import detect, rules

ROOT = Path(__file__).resolve().parents[3]


def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(rules.app, name="rules")
    app.command("eval")(detect.eval_)
    return app


def test_validate_accepts_the_shipped_rules() -> None:
    result = CliRunner().invoke(cli(), ["rules", "validate", str(ROOT / "rules")])
    assert result.exit_code == 0, result.output
    assert "ok:" in result.output


def test_validate_reports_located_errors_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x1\n    version: one\n    type: threshold\n")
    result = CliRunner().invoke(cli(), ["rules", "validate", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{bad}:3:14: error: rule 'x1'.version must be an integer >= 1; got 'one'" in result.output


def test_rules_test_runs_every_case(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["rules", "test", str(ROOT / "rules" / "payments.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.count("PASS") == 6
    broken = tmp_path / "p.yaml"
    text = (
        (ROOT / "rules" / "payments.yaml").read_text().replace("condition: {gte: 5}", "condition: {gte: 50}")
    )
    broken.write_text(text)
    result = CliRunner().invoke(cli(), ["rules", "test", str(broken)])
    assert result.exit_code == 1
    assert "FAIL" in result.output
    assert "expected an alert card-testing on customer:c5" in result.output


def test_eval_writes_the_json_file(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    args = ["eval", "--seed", "4", "--events", "15000", "--customers", "300", "--json", str(out)]
    result = CliRunner().invoke(cli(), [*args, "--rules", str(ROOT / "rules")])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["benign_events"] > 0
    assert set(doc["scenarios"]) >= {"account_takeover", "address_poisoning"}
    # The table by rule: each rule that alerted, with what it earned (as the JSON has it).
    rows = {cells[0]: cells[1:4] for cells in _table_rows(result.output)}
    for rule, tally in doc["rules"].items():
        assert rule in rows, f"{rule} is not in the table by rule"
        assert rows[rule] == [
            str(tally["alerts"]),
            str(tally["true_positives"]),
            str(tally["false_positives"]),
        ]
    assert doc["rules"]
    # The table by scenario: every name whole in 80 columns, with its episodes and recall.
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    for name, s in doc["scenarios"].items():
        assert name in lines, f"{name} is not whole in the table by scenario"
        assert lines[name][1:2] == [str(s["episodes"])]
        assert lines[name][3:4] == [f"{s['recall']:.2f}"]


def _table_rows(output: str) -> list[list[str]]:
    """The cells of every row of the tables in ``output`` (Rich's box lines)."""
    lines = [line.strip() for line in output.splitlines()]
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in lines if line.startswith("│")]
