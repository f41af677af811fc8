"""A global table's start when its broker cannot be reached (a closed port: no broker needed).

Its questions to the broker took 30 s each whatever the start's timeout, never asked ``abort``
(a process asked to stop while loading waited them out), and failed with the client's bare
``KafkaException``, naming neither the table nor its topic."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.config import Settings, load_settings
from vigil.errors import TopicError
from vigil.hub.broker import free_port_block
from vigil.stream import table as table_module
from vigil.stream.table import GlobalTable, TopicFollower


@pytest.fixture
def unreachable(tmp_path: Path) -> Settings:
    return load_settings(kafka_bootstrap=f"127.0.0.1:{free_port_block(1)}", home=tmp_path)


def test_a_start_with_its_broker_out_of_reach_fails_naming_the_table_and_topic(
    unreachable: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(table_module, "SETUP_AT_LEAST_S", 1.0)  # (5 s by default: a second will do)
    table: GlobalTable[bytes] = GlobalTable(unreachable, "intel.indicators", bytes, name="intel")
    with pytest.raises(
        TopicError, match=r"global table 'intel': cannot read the metadata of topic 'intel\.indicators'"
    ):
        table.start(timeout_s=1)
    assert not table.ready
    assert not table._reader.running  # no reader left behind


def test_a_start_with_its_broker_out_of_reach_asks_abort_and_returns_when_told(unreachable: Settings) -> None:
    asked = 0

    def abort() -> bool:
        nonlocal asked
        asked += 1
        return asked >= 2

    follower = TopicFollower(unreachable, "profiles", lambda key, value, where: None, name="profiles")
    follower.start(timeout_s=600, abort=abort)  # returns: stopping is no failure
    assert asked == 2
    assert not follower.ready
    assert not follower.running
    follower.check()
