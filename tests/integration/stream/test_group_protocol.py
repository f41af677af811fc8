"""The consumer group protocol (KIP-848) asked of a cluster that does not offer it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.integration.stream.apps import RunningCount
from tests.integration.stream.conftest import Running, make_topics, wait_for
from tests.integration.throwaway_broker import ClassicGroupsBroker, running

from vigil.config import load_settings
from vigil.errors import PipelineError
from vigil.stream.app import Application


@pytest.fixture
def classic_broker(tmp_path: Path) -> Iterator[ClassicGroupsBroker]:
    with running(ClassicGroupsBroker(tmp_path / "broker")) as made:
        yield made


def test_the_consumer_protocol_on_a_cluster_without_it_stops_the_application_saying_so(
    classic_broker: ClassicGroupsBroker, tmp_path: Path, run_app: Callable[[Application], Running]
) -> None:
    # librdkafka's fatal "ConsumerGroupHeartbeat ... API version not supported" came as a record's
    # error and was logged as a warning: the application ran on, never assigned a partition.
    settings = load_settings(
        kafka_bootstrap=classic_broker.bootstrap, home=tmp_path / "home", kafka_group_protocol="consumer"
    )
    make_topics(settings, "protocol.in", "protocol.out", partitions=1)
    app = Application(
        settings, name="protocol", inputs=["protocol.in"], operators=[RunningCount("protocol.out")]
    )
    running = run_app(app)
    wait_for(lambda: not running.thread.is_alive(), 60, "the application to stop")
    assert not app.assigned.is_set()
    [error] = running.errors
    assert isinstance(error, PipelineError)
    text = str(error)
    assert "application 'protocol': fatal consumer error:" in text
    assert "ConsumerGroupHeartbeat" in text
    assert 'kafka_group_protocol is "consumer", which needs Kafka 4.0 or later' in text
    assert 'set it to "classic" for this cluster' in text
