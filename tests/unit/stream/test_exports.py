"""The runtime's public surface: fails when a name other packages build on disappears."""

from __future__ import annotations

import importlib

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
    "vigil.stream.table": ["GlobalTable"],
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
    "vigil.testing": ["run_operators", "HarnessResult", "MemoryState", "partition_for"],
}


@pytest.mark.parametrize("module", sorted(SURFACE))
def test_public_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in SURFACE[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"


def test_application_signature_keeps_the_agreed_keywords() -> None:
    import inspect

    from vigil.stream.app import Application

    params = inspect.signature(Application).parameters
    for name in (
        "name",
        "inputs",
        "operators",
        "guarantee",
        "dlq_topic",
        "decode",
        "batch_size",
        "batch_timeout_s",
        "checkpoint_interval_s",
    ):
        assert name in params, name
