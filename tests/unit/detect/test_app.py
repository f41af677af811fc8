"""Detection's topology helpers: names under a prefix, topic specs from the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.config import load_settings
from vigil.detect.app import CANONICAL_INPUTS, DetectionService, DetectTopology, delete_scoped_topics
from vigil.errors import PipelineError
from vigil.stream.app import FETCH_DEFAULTS


def test_a_scoped_topology_names_every_topic_and_group_under_its_prefix() -> None:
    topo = DetectTopology.scoped("p.", 3)
    default = DetectTopology()
    assert topo.inputs == tuple(f"p.{t}" for t in CANONICAL_INPUTS)
    for name in ("routed", "alerts", "decisions", "intel", "dlq", "route_app", "detect_app"):
        assert getattr(topo, name) == f"p.{getattr(default, name)}"
    assert topo.routed_partitions == 3


def test_topic_specs_rename_the_registry_specs_and_keep_one_dead_letter_partition() -> None:
    topo = DetectTopology.scoped("p.", 3)
    specs = {s.name: s for s in topo.topic_specs(3)}
    assert set(specs) == {*topo.inputs, topo.alerts, topo.decisions, topo.intel, topo.dlq}
    assert {s.partitions for n, s in specs.items() if n != topo.dlq} == {3}
    assert specs[topo.dlq].partitions == 1
    assert specs[topo.dlq].value == "dead_letter"


def test_deleting_scoped_topics_refuses_an_empty_prefix_before_asking_the_broker(tmp_path: Path) -> None:
    # An empty prefix matches every topic on the cluster; no broker runs at this address.
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    with pytest.raises(ValueError, match="non-empty prefix"):
        delete_scoped_topics(settings, "")


def test_both_stages_ask_the_broker_to_gather_fetches_and_zero_turns_it_off(tmp_path: Path) -> None:
    # Built, not started: no broker is asked anything.
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    service = DetectionService(settings, [], fetch_linger_ms=7, fetch_min_bytes=12_345)
    for app in (service.route_app, service.detect_app):
        conf = app.consumer_settings()
        assert conf["fetch.wait.max.ms"] == 7
        assert conf["fetch.min.bytes"] == 12_345
    # The route stage's own fetch sizes stay beside the linger.
    assert service.route_app.consumer_settings()["max.partition.fetch.bytes"] == service.route_fetch_bytes

    off = DetectionService(settings, [], fetch_linger_ms=0)
    for app in (off.route_app, off.detect_app):
        conf = app.consumer_settings()
        assert conf["fetch.wait.max.ms"] == FETCH_DEFAULTS["fetch.wait.max.ms"]
        assert "fetch.min.bytes" not in conf


def test_stopping_raises_a_stage_failure_so_the_exit_code_shows_it(tmp_path: Path) -> None:
    # A stage's failure at its last checkpoint (a fenced producer, say) only reached the log:
    # `vigil detect` printed "stopped" and exited 0.  Built, not started: nothing to connect to.
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    service = DetectionService(settings, [])
    service.stop()  # nothing failed: quiet
    service.failures.append(PipelineError("detect: checkpoint failed: fenced"))
    with pytest.raises(PipelineError, match="checkpoint failed: fenced"):
        service.stop()
