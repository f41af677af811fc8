"""How benchmark results become docs/benchmarks.md: re-rendering a section from saved results,
and the runtime section's table of the issue's targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from benchmarks import run, runtime

SAVED = Path(run.RESULTS) / "runtime.json"


def test_render_rewrites_only_its_section_from_the_saved_results(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(SAVED, results / "runtime.json")
    saved = json.loads(SAVED.read_text())
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# Benchmarks\n\n<!-- bench:runtime:start -->\nold figures\n<!-- bench:runtime:end -->\n\n"
        "<!-- bench:sim:start -->\nthe simulator's\n<!-- bench:sim:end -->\n"
    )

    run.render("runtime", results=results, doc=doc)

    text = doc.read_text()
    section = text.split("<!-- bench:runtime:start -->")[1].split("<!-- bench:runtime:end -->")[0]
    assert "old figures" not in section
    # The run's own command, machine and date head it, not the time of rendering.
    assert f"· {saved['_meta']['date']} ·" in section
    assert f"{saved['_meta']['cpu']}" in section
    assert "| target (at-least-once, one core) | record by record | vectorised window |" in section
    assert f"{saved['runs']['floor']['eps']:,}" in section
    # Round by round in the order each round ran them, though saved results come back sorted.
    assert "back to back): vectorised " in section
    assert "<!-- bench:sim:start -->\nthe simulator's\n<!-- bench:sim:end -->" in text


def test_render_without_saved_results_says_which_file_and_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(
        SystemExit, match=r"no saved results for 'runtime' at .*runtime\.json.*benchmarks\.run runtime"
    ):
        run.render("runtime", results=tmp_path, doc=tmp_path / "benchmarks.md")
    assert not (tmp_path / "benchmarks.md").exists()


def _result(**changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "_meta": {"nproc": 2},
        "floor_eps": 500_000,
        "quix_alo_eps": 10_000,
        "vigil_alo_eps": 120_000,
        "vigil_batch_alo_eps": 300_000,
        "floor_ratio_per_round": {"record_by_record": [0.25, 0.23], "vectorised": [0.61, 0.55]},
        "latency": {
            "80": {"p99_ms": 40.5, "machine_cores_needed": 1.2},
            "batch_80": {"p99_ms": 1234.5, "machine_cores_needed": 2.3},
        },
    }
    result.update(changes)
    return result


def _rows(result: dict[str, Any]) -> dict[str, list[str]]:
    """The targets table: target -> [record by record, vectorised]."""
    lines = runtime._targets(result)
    assert lines[0] == "| target (at-least-once, one core) | record by record | vectorised window |"
    return {cells[0]: cells[1:] for cells in (line.strip("| ").split(" | ") for line in lines[2:])}


def test_the_targets_table_judges_each_target_by_its_figure() -> None:
    rows = _rows(_result())
    assert rows[">= 100,000 events/s per core"] == ["120,000 events/s: met", "300,000 events/s: met"]
    assert rows[">= 3x quix-streams on the same rule"] == ["12.00x: met", "30.00x: met"]
    assert rows[">= 0.5x the floor (bare consume + decode)"] == [
        "0.24x (round by round 0.25x, 0.23x): **not met**",
        "0.60x (round by round 0.61x, 0.55x): met",
    ]
    p99 = rows["p99 <= 50 ms at 80% of its own maximum rate"]
    assert p99[0] == "40.5 ms; engine, broker, load generator and reader needed 1.2 of 2 cores: met"
    assert p99[1].startswith("1,234.5 ms;")
    assert p99[1].endswith("**not met**")


def test_the_targets_table_says_what_was_not_measured() -> None:
    rows = _rows(_result(vigil_alo_eps=None, latency={"80": {"error": "engine did not start"}}))
    assert rows[">= 100,000 events/s per core"] == ["not measured", "300,000 events/s: met"]
    assert rows[">= 3x quix-streams on the same rule"][0] == "not measured"
    assert rows[">= 0.5x the floor (bare consume + decode)"][0] == "not measured"
    assert rows["p99 <= 50 ms at 80% of its own maximum rate"] == ["not measured", "not measured"]


def test_the_latency_target_names_the_brokers_own_hop_at_the_same_rate() -> None:
    latency = {
        "80": {"p99_ms": 612.0, "machine_cores_needed": 1.9, "rate": 90_000},
        "batch_80": {"p99_ms": 900.0, "machine_cores_needed": 2.1, "rate": 200_000},
    }
    rows = _rows(_result(latency=latency, hop={"p99_ms": 321.5, "rate": 90_000}))
    p99 = rows["p99 <= 50 ms at 80% of its own maximum rate"]
    assert p99[0] == (
        "612.0 ms; engine, broker, load generator and reader needed 1.9 of 2 cores; "
        "the broker's own hop at that rate: p99 321.5 ms (an alert takes two): **not met**"
    )
    # The hop ran at the record-by-record rate only: it says nothing of the vectorised point's.
    assert "hop" not in p99[1]
    # Nor of a record-by-record point sent at another rate.
    other = _rows(_result(latency=latency, hop={"p99_ms": 321.5, "rate": 50_000}))
    assert "hop" not in other["p99 <= 50 ms at 80% of its own maximum rate"][0]
