"""Application defaults that follow from the guarantee (no broker: nothing here connects)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from vigil.config import load_settings
from vigil.errors import ConfigError
from vigil.stream.app import (
    _SPREAD,
    _TIMEOUT,
    AT_LEAST_ONCE_CHECKPOINT_S,
    EXACTLY_ONCE_CHECKPOINT_S,
    MAX_AT_LEAST_ONCE_STATE_CHECKPOINT_S,
    Application,
    ack_wait_s,
    state_transaction_timeout_s,
)
from vigil.stream.base import Context, Guarantee, Operator, Record, StoreSpec
from vigil.stream.join import IntervalJoin


@pytest.mark.parametrize(
    ("guarantee", "expected"),
    [("exactly_once", EXACTLY_ONCE_CHECKPOINT_S), ("at_least_once", AT_LEAST_ONCE_CHECKPOINT_S)],
)
def test_checkpoint_interval_defaults_by_guarantee(
    tmp_path: Path, guarantee: Guarantee, expected: float
) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    app = Application(settings, name="a", inputs=["in"], operators=[], guarantee=guarantee)
    assert app.checkpoint_interval_s == expected
    # Exactly-once outputs wait for the checkpoint; at-least-once ones do not, so it may be long.
    assert EXACTLY_ONCE_CHECKPOINT_S < 1 <= AT_LEAST_ONCE_CHECKPOINT_S
    explicit = Application(
        settings, name="b", inputs=["in"], operators=[], guarantee=guarantee, checkpoint_interval_s=0.7
    )
    assert explicit.checkpoint_interval_s == 0.7


def test_a_non_positive_checkpoint_interval_fails_by_name(tmp_path: Path) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    with pytest.raises(ConfigError, match="checkpoint_interval_s > 0"):
        Application(settings, name="a", inputs=["in"], operators=[], checkpoint_interval_s=0)


@pytest.mark.parametrize("young", [0, -5])
def test_a_non_positive_gc_young_fails_by_name(tmp_path: Path, young: int) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    with pytest.raises(
        ConfigError, match=f"gc_young must be a positive number of objects or None; got {young}"
    ):
        Application(settings, name="a", inputs=["in"], operators=[], gc_young=young)


@pytest.mark.parametrize(
    ("which", "option", "why"),
    [
        ("consumer", "isolation.level", "read committed records only"),
        ("consumer", "enable.auto.commit", "commit offsets with their outputs"),
        ("consumer", "group.id", "names its own consumer group"),
        ("producer", "partitioner", "co-partitioned"),
        ("producer", "topic.partitioner", "co-partitioned"),
        ("producer", "Enable.Idempotence", "idempotent"),
        ("producer", "error_cb", "failed client"),
        ("producer", "queuing.strategy", "order they were produced"),
        ("producer", "default.topic.config", "checked by name"),
        ("consumer", "bootstrap.servers", "from kafka_bootstrap"),
        ("producer", "sasl.password", "from kafka_sasl_password"),
        ("producer", "test.mock.num.brokers", "mock cluster"),
    ],
)
def test_overrides_may_not_undo_a_guarantee(tmp_path: Path, which: str, option: str, why: str) -> None:
    # kafka_client_options refused these; an application's own overrides took them: a
    # consumer reading uncommitted records, a producer partitioning another way than the rest.
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    with pytest.raises(ConfigError, match=f"{which}_overrides may not set '{option}': .*{why}"):
        Application(settings, name="a", inputs=["in"], operators=[], **{f"{which}_overrides": {option: "x"}})


def test_overrides_may_tune_and_bound_their_own_transactions(tmp_path: Path) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    app = Application(
        settings,
        name="a",
        inputs=["in"],
        operators=[],
        consumer_overrides={"fetch.wait.max.ms": 5, "session.timeout.ms": 6000},
        producer_overrides={"transaction.timeout.ms": 60_000, "linger.ms": 1},
    )
    assert app.consumer_settings()["fetch.wait.max.ms"] == 5


class _Stateful(Operator[Any]):
    id = "stateful"
    stores = (StoreSpec("counts", 1),)

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        pass


def test_an_at_least_once_interval_with_state_fits_kafkas_transaction_limit(tmp_path: Path) -> None:
    # With state, each checkpoint commits a transaction, which Kafka aborts past 15 minutes: a
    # longer interval failed every checkpoint, and every restart.  Without state there is none.
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    longest = MAX_AT_LEAST_ONCE_STATE_CHECKPOINT_S
    alo: dict[str, Any] = {"guarantee": "at_least_once", "inputs": ["in"]}
    Application(settings, name="a", operators=[_Stateful()], checkpoint_interval_s=longest, **alo)
    Application(settings, name="b", operators=[], checkpoint_interval_s=10 * longest, **alo)
    with pytest.raises(ConfigError, match="at-least-once checkpoint_interval_s is at most 1000 s with state"):
        Application(settings, name="c", operators=[_Stateful()], checkpoint_interval_s=longest + 1, **alo)


@pytest.mark.parametrize("interval", [10.0, 30.0, 48.0, 60.0, 300.0, 900.0, 1000.0])
def test_a_long_checkpoints_state_transaction_outlasts_it(interval: float) -> None:
    # Open while the seal's writes are encoded (spread over half an interval), then up to the
    # acknowledgement wait, a flush of up to 30 s and a commit of up to 30 s.  (Below 10 s the
    # timeout is three acknowledgement waits, at least 30 s: it holds the encoding and the wait,
    # and a flush that takes most of its 30 s on top may outlast it, as before.)
    longest_open = _SPREAD * interval + ack_wait_s(interval) + 2 * _TIMEOUT
    assert longest_open < state_transaction_timeout_s(interval) <= 900.0
    assert _SPREAD * 5.0 + ack_wait_s(5.0) < state_transaction_timeout_s(5.0)


def _join(left: str, right: str) -> IntervalJoin:
    return IntervalJoin(
        "pairs", StoreSpec("pairs", 1), left=left, right=right, within="1m", on_match=lambda *_: None
    )


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        # Empty: the consumer's group id was "", and the process aborted inside the client.
        ({"name": ""}, r"application name '': expected letters, digits"),
        ({"name": "rv app"}, r"application name 'rv app': expected letters, digits"),
        ({"name": "a" * 250}, r"dlq_topic would be 'dlq\.a+', which Kafka refuses as a topic name"),
        ({"operators": [_Stateful()], "name": "a" * 230}, r"store 'counts\.v1''s changelog would be"),
        # Read back, undecodable again, and dead-lettered again without end.
        ({"dlq_topic": "in"}, r"dlq_topic 'in' is one of its inputs"),
        ({"late_topic": "in"}, r"late_topic 'in' is one of its inputs"),
        ({"dlq_topic": "x", "late_topic": "x"}, r"dlq_topic and late_topic are both 'x'"),
        ({"inputs": "events.payments"}, r"inputs must be a list of topic names; got the string"),
        # A join side the application does not read was never read: it paired nothing, silently.
        (
            {"operators": [_join("in", "withdrawals")]},
            r"operator 'pairs' reads 'withdrawals', which is not among its inputs \['in'\]",
        ),
        ({"alignment_max_buffered": 0}, r"alignment_max_buffered must be at least 1; got 0"),
        ({"alignment_idle_s": float("inf")}, r"alignment_idle_s must be > 0 seconds \(finite\); got inf"),
        # Kafka aborted every checkpoint's transaction: everything processed twice, a warning each.
        (
            {"checkpoint_interval_s": 20, "producer_overrides": {"transaction.timeout.ms": 5000}},
            r"transaction\.timeout\.ms \(5000 ms\) must be at least twice checkpoint_interval_s \(20 s\)",
        ),
    ],
)
def test_names_and_settings_kafka_or_the_loop_would_refuse_later_are_refused_when_made(
    tmp_path: Path, options: dict[str, Any], refusal: str
) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    given: dict[str, Any] = {"name": "a", "inputs": ["in"], "operators": [], **options}
    with pytest.raises(ConfigError, match=refusal):
        Application(settings, **given)


def test_a_join_of_two_inputs_is_made() -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1")
    app = Application(
        settings, name="a", inputs=["in", "withdrawals"], operators=[_join("in", "withdrawals")]
    )
    assert [op.id for op in app.operators] == ["pairs"]


def test_a_transaction_timeout_override_is_checked_only_where_a_transaction_is() -> None:
    # At-least-once without state has no transaction: its override is the client's business.
    settings = load_settings(kafka_bootstrap="127.0.0.1:1")
    Application(
        settings,
        name="a",
        inputs=["in"],
        operators=[],
        guarantee="at_least_once",
        producer_overrides={"transaction.timeout.ms": 5000},
    )


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_member_with_no_assignment_for_a_minute_is_said_once_under_the_classic_protocol(
    tmp_path: Path, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    # (On a broker, frozen past the member's session: tests/integration/stream/test_outage.py.)
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path, kafka_group_protocol=protocol)
    app = Application(settings, name="a", inputs=["in"], operators=[])
    with caplog.at_level("INFO", logger="vigil.stream.app"):
        app._joining()  # (subscribed, or its partitions lost)
        began = app._joining_since
        if protocol == "consumer":
            # Under KIP-848 a member given nothing hears nothing: no wait is timed.
            assert began is None
            return
        assert began is not None
        app._joining_too_long(began + 59)
        app._joining_too_long(began + 61)
        app._joining_too_long(began + 120)
        app._joined()  # (any assignment, even an empty one: back in its group)
        app._joining_too_long(began + 180)
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said[0][0] == "WARNING"
    assert said[0][1].startswith(
        "application a: not in its group for 61 s (no assignment since it subscribed"
    )
    assert "max.poll.interval.ms (this one's 300 s)" in said[0][1]
    assert said[1][0] == "INFO"
    assert said[1][1].startswith("application a: in its group again, after ")
    assert len(said) == 2
    assert app._joining_since is None


def test_a_member_that_left_its_group_for_a_long_batch_is_timed_from_then(tmp_path: Path) -> None:
    # A member with no partitions that overran max.poll.interval.ms left its group with only
    # this error (no partitions to lose: no on_lost), and was never timed (found in review).
    app = Application(
        load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path), name="a", inputs=["in"], operators=[]
    )
    assert app._joining_since is None
    app._consumer_error(KafkaError(KafkaError._MAX_POLL_EXCEEDED))
    assert app._joining_since is not None
