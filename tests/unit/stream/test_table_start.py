"""A global table's start when its broker cannot be reached (a closed port: no broker needed).

Its questions to the broker took 30 s each whatever the start's timeout, never asked ``abort``
(a process asked to stop while loading waited them out), and failed with the client's bare
``KafkaException``, naming neither the table nor its topic."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from vigil.config import Settings, load_settings
from vigil.errors import PipelineError, TopicError
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


def test_a_start_stopped_from_another_thread_while_it_asks_the_broker_says_so(unreachable: Settings) -> None:
    # Stopped before its reader was made, the start went on asking for the whole of its timeout
    # and then blamed the metadata (found in review).
    follower = TopicFollower(unreachable, "profiles", lambda key, value, where: None, name="profiles")
    asking = threading.Event()

    def abort() -> bool:
        asking.set()  # (asked between its questions to the broker)
        return False

    def stop() -> None:
        asking.wait(30)
        follower.stop()

    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    with pytest.raises(PipelineError, match=r"profiles was stopped before it caught up with 'profiles'"):
        follower.start(timeout_s=30, abort=abort)
    stopper.join(30)
    assert not follower.ready
    assert not follower.running


def test_a_follower_of_a_missing_topic_stopped_while_it_starts_is_not_ready(
    unreachable: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its topic not there (allowed: an empty list, looked for later), it said ready after the
    # stop, and running with no reader: the list went stale and nothing said so (found in review).
    follower = TopicFollower(
        unreachable, "intel", lambda key, value, where: None, name="intel", missing_ok=True
    )
    stopped = threading.Event()

    def metadata(consumer: object, deadline: float, abort: object) -> None:
        follower.stop()  # (from another thread, as the broker answered)
        stopped.set()
        return None  # the broker does not list the topic

    monkeypatch.setattr(follower, "_metadata", metadata)
    with pytest.raises(PipelineError, match=r"intel was stopped before it caught up with 'intel'"):
        follower.start(timeout_s=30)
    assert stopped.is_set()
    assert not follower.ready
    assert not follower.running


def test_a_table_started_again_once_its_reader_ended_on_a_stop_is_read_afresh(
    unreachable: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop that timed out, the reader ending afterwards: the table said it was still running,
    # so a start kept what it had read and read the topic again on top of it (found in review).
    table: GlobalTable[bytes] = GlobalTable(unreachable, "profiles", bytes, name="profiles")
    table._data = {"deleted since": b"stale"}
    reader = table._reader
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    reader._thread = ended
    reader._stop.set()
    assert not reader.running
    monkeypatch.setattr(reader, "start", lambda timeout_s, abort: None)  # (its reading: not the point)
    table.start()
    assert table._data == {}


def test_a_reader_that_cannot_be_started_leaves_the_follower_not_ready(
    unreachable: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Said caught up before its reader was started, a follower whose reader could not be (no
    # thread to be had) was left ready with no reader (found in review).
    class NoThread(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    follower = TopicFollower(
        unreachable, "intel", lambda key, value, where: None, name="intel", missing_ok=True
    )
    monkeypatch.setattr(follower, "_metadata", lambda consumer, deadline, abort: None)  # not there yet
    monkeypatch.setattr(table_module.threading, "Thread", NoThread)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        follower.start(timeout_s=30)
    assert not follower.ready
    assert not follower.running
