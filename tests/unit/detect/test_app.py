"""Detection's topology helpers: names under a prefix, topic specs from the registry."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from vigil.config import load_settings
from vigil.detect.app import (
    CANONICAL_INPUTS,
    DetectionService,
    DetectTopology,
    IntelFeed,
    delete_scoped_topics,
)
from vigil.detect.intel import IntelIndex
from vigil.errors import PipelineError
from vigil.events.types import IntelIndicator, IntelIndicatorPayload
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
        assert conf["fetch.min.bytes"] == 1  # (the runtime's default gathers 64 KB)


def test_stopping_raises_a_stage_failure_so_the_exit_code_shows_it(tmp_path: Path) -> None:
    # A stage's failure at its last checkpoint (a fenced producer, say) only reached the log:
    # `vigil detect` printed "stopped" and exited 0.  Built, not started: nothing to connect to.
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    service = DetectionService(settings, [])
    service.stop()  # nothing failed: quiet
    service.failures.append(PipelineError("detect: checkpoint failed: fenced"))
    with pytest.raises(PipelineError, match="checkpoint failed: fenced"):
        service.stop()


def test_a_plain_key_withdrawn_leaves_the_feeds_stix_listing_of_the_value(tmp_path: Path) -> None:
    # One feed lists 1.2.3.4 both as a list entry and in a STIX indicator, under two keys.  A
    # tombstone (or an unreadable record) for the plain key withdrew both listings: the STIX key's
    # record is still on the topic, and a process reading it afresh had the value listed.
    stix_id = "indicator--6f9d2f3e-0b0a-4c1e-9a55-1d2b3c4d5e6f"
    index = IntelIndex()
    for stix in (None, stix_id):
        index.apply(
            IntelIndicator(
                event_id=f"e-{stix}",
                source="t",
                occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
                payload=IntelIndicatorPayload(
                    indicator_type="ipv4",
                    value="1.2.3.4",
                    category="scam",
                    feed="acme",
                    list_version="2026-01-01T00:00:00+00:00",
                    stix_id=stix,
                ),
            )
        )
    feed = IntelFeed(load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path), "intel.indicators", index)
    feed._apply("ipv4:1.2.3.4@acme", None, "intel.indicators[0]@1")
    found = index.lookup("1.2.3.4")
    assert found is not None
    assert found.stix_id == stix_id
    feed._apply(f"ipv4:1.2.3.4@acme#{stix_id}", b"{}", "intel.indicators[0]@2")  # unreadable
    assert index.lookup("1.2.3.4") is None
    assert feed.errors == 1
