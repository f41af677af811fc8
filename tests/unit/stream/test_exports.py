"""The runtime's public surface: fails when a name other packages build on disappears."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

SURFACE = {
    "vigil.stream.base": ["Operator", "Context", "State", "StoreSpec", "Record", "Guarantee"],
    "vigil.stream.app": ["Application"],
    "vigil.stream.windows": [
        "Window",
        "WindowedAggregate",
        "WindowValue",
        "Aggregation",
        "Count",
        "Sum",
        "Min",
        "Max",
        "DistinctCount",
        "AGGREGATIONS",
        "duration_ms",
        "to_ms",
    ],
    "vigil.stream.vectorised": ["SlidingCountSum", "WindowColumns"],
    "vigil.stream.table": ["GlobalTable", "LookupTable", "TopicFollower"],
    "vigil.stream.join": ["IntervalJoin"],
    "vigil.stream.repartition": [
        "GroupBy",
        "group_by",
        "entity_key",
        "repartition_spec",
        "repartition_topic",
    ],
    "vigil.stream.changelog": ["changelog_topic", "changelog_spec", "restore", "RestoreTask"],
    "vigil.stream.state": ["RocksState"],
    "vigil.stream.metrics": ["AppMetrics", "PrometheusMetrics", "serve_metrics"],
    "vigil.testing": [
        "run_operators",
        "HarnessResult",
        "HarnessWarning",
        "MemoryState",
        "MemoryTable",
        "partition_for",
    ],
}


@pytest.mark.parametrize("module", sorted(SURFACE))
def test_public_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in SURFACE[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"


def test_application_takes_the_agreed_keywords(tmp_path: Path) -> None:
    # By calling it: the runtime's module may be compiled (no inspectable signature then).
    from vigil.config import load_settings
    from vigil.stream.app import Application

    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    app = Application(
        settings,
        name="a",
        inputs=["in"],
        operators=[],
        guarantee="at_least_once",
        dlq_topic="dlq.a",
        decode=None,
        batch_size=100,
        batch_timeout_s=0.01,
        checkpoint_interval_s=2.0,
    )
    assert (app.name, app.inputs, app.guarantee, app.dlq_topic) == ("a", ["in"], "at_least_once", "dlq.a")
    assert (app.batch_size, app.batch_timeout_s, app.checkpoint_interval_s) == (100, 0.01, 2.0)
