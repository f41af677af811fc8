"""``apply`` waits for altered topic settings to show (an admin client that answers from a script)."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from vigil.hub.admin import _wait_configured


def answered(value: Any = None, error: KafkaError | None = None) -> Future[Any]:
    """An answered request, as confluent-kafka's admin client gives it (a ``Future``)."""
    future: Future[Any] = Future()
    if error is not None:
        future.set_exception(KafkaException(error))
    else:
        future.set_result(value)
    return future


class Scripted:
    """Describes topic ``t`` with the next of ``answers`` (the last one repeats); ``None``: gone."""

    def __init__(self, *answers: dict[str, str] | KafkaError | None) -> None:
        self.answers = list(answers)
        self.asked = 0

    def _now(self) -> dict[str, str] | KafkaError | None:
        return self.answers[min(self.asked, len(self.answers) - 1)]

    def list_topics(self, timeout: float | None = None) -> Any:
        part = SimpleNamespace(replicas=[1])
        topics = {} if self._now() is None else {"t": SimpleNamespace(error=None, partitions={0: part})}
        return SimpleNamespace(topics=topics)

    def describe_configs(self, resources: list[Any]) -> dict[Any, Future[Any]]:
        now = self._now()
        self.asked += 1
        if isinstance(now, KafkaError):
            return {r: answered(error=now) for r in resources}
        entries = {k: SimpleNamespace(value=v, source=1) for k, v in (now or {}).items()}
        return {r: answered(entries) for r in resources}


def test_waits_until_the_new_value_shows() -> None:
    admin = Scripted(
        {"max.message.bytes": "1048588"}, {"max.message.bytes": "1048588"}, {"max.message.bytes": "67108864"}
    )
    _wait_configured(admin, {"t": {"max.message.bytes": "67108864"}})  # type: ignore[arg-type]
    assert admin.asked == 3


def test_a_value_spelled_the_brokers_way_counts_as_shown() -> None:
    admin = Scripted({"cleanup.policy": "compact,delete"})
    _wait_configured(admin, {"t": {"cleanup.policy": "compact, delete"}})  # type: ignore[arg-type]
    assert admin.asked == 1


@pytest.mark.parametrize(
    "answers",
    [
        ({"retention.ms": "1"}, None),  # gone from the metadata
        # deleted between the metadata and the describe (it fails), then gone
        ({"retention.ms": "1"}, KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART), None),
    ],
)
def test_a_topic_deleted_meanwhile_is_not_waited_for(answers: tuple[Any, ...]) -> None:
    admin = Scripted(*answers)
    _wait_configured(admin, {"t": {"retention.ms": "2"}}, timeout=20)  # type: ignore[arg-type]
    assert admin.asked == len(answers) - 1  # the metadata without it: not described again


def test_a_value_never_shown_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    admin = Scripted({"retention.ms": "1"})
    with caplog.at_level(logging.WARNING, logger="vigil.hub.admin"):
        _wait_configured(admin, {"t": {"retention.ms": "2"}}, timeout=0.2)  # type: ignore[arg-type]
    assert admin.asked > 1
    assert "not shown as set after 0.2s: t retention.ms" in caplog.text


def test_a_describe_that_fails_is_asked_again() -> None:
    # Any failure (a busy broker) ended the wait at once, before the raised limit showed.
    admin = Scripted(
        KafkaError(KafkaError._TRANSPORT), {"max.message.bytes": "1048588"}, {"max.message.bytes": "67108864"}
    )
    _wait_configured(admin, {"t": {"max.message.bytes": "67108864"}})  # type: ignore[arg-type]
    assert admin.asked == 3


class Silent(Scripted):
    """Lists topic ``t``, then never answers the describe (a broker stopped mid-command)."""

    def describe_configs(self, resources: list[Any]) -> dict[Any, Any]:
        from concurrent.futures import Future

        return {r: Future() for r in resources}


def test_a_broker_silent_mid_command_is_a_broker_error_naming_the_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # future.result(timeout) raises TimeoutError, which only KafkaException was caught for:
    # `vigil topics list` ended in a bare traceback.
    from vigil.errors import BrokerError
    from vigil.hub import admin

    monkeypatch.setattr(admin, "_TIMEOUT", 0.05)
    with pytest.raises(BrokerError, match="did not describe topic 't'"):
        admin.describe_live(Silent({}), ["t"])  # type: ignore[arg-type]
    errors: list[str] = []
    assert not admin._collect(errors, "creating t", Silent({}).describe_configs(["r"])["r"])
    assert errors == ["creating t: no answer from the cluster within 0.05s"]


class Lagging:
    """Lists topic ``t`` (three replicas) but for the second answer: a broker whose metadata lags."""

    def __init__(self) -> None:
        self.listed = 0

    def list_topics(self, timeout: float | None = None) -> Any:
        self.listed += 1
        part = SimpleNamespace(replicas=[1, 2, 3])
        topics = {} if self.listed == 2 else {"t": SimpleNamespace(error=None, partitions={0: part})}
        return SimpleNamespace(topics=topics)

    def describe_configs(self, resources: list[Any]) -> dict[Any, Future[Any]]:
        return {r: answered({}) for r in resources}


def test_a_created_topic_a_lagging_broker_does_not_list_still_gets_its_min_insync() -> None:
    # Left out of the answer, the topic was left without min.insync.replicas, silently.
    from vigil.hub.admin import TopicDiff, _insync_for_replicas
    from vigil.hub.topics import TopicSpec

    spec = TopicSpec("t", "k", "raw", "test")
    errors: list[str] = []
    admin = Lagging()
    got = _insync_for_replicas(
        admin, {"t": TopicDiff(spec=spec, live=None, partitions=1, replication=-1)}, errors
    )  # type: ignore[arg-type]
    assert got == {"t": {"min.insync.replicas": "2"}}
    assert errors == []
    assert admin.listed == 3


class Vanishing(Lagging):
    """Lists topic ``t`` once (created, visible), then never again: a broker lagging past the
    deadline, or the topic deleted meanwhile."""

    def list_topics(self, timeout: float | None = None) -> Any:
        self.listed += 1
        part = SimpleNamespace(replicas=[1, 2, 3])
        topics = {"t": SimpleNamespace(error=None, partitions={0: part})} if self.listed == 1 else {}
        return SimpleNamespace(topics=topics)


def test_a_created_topic_never_described_by_the_deadline_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only logged, `topics apply` reported success while the topic kept the broker's default
    # min.insync.replicas (Kafka's is 1).
    from vigil.hub import admin
    from vigil.hub.admin import TopicDiff, _insync_for_replicas
    from vigil.hub.topics import TopicSpec

    monkeypatch.setattr(admin, "_TIMEOUT", 0.2)
    spec = TopicSpec("t", "k", "raw", "test")
    errors: list[str] = []
    got = _insync_for_replicas(
        Vanishing(),  # type: ignore[arg-type]
        {"t": TopicDiff(spec=spec, live=None, partitions=1, replication=-1)},
        errors,
    )
    assert got == {}
    assert len(errors) == 1
    assert errors[0].startswith("set min.insync.replicas of t: created, but not described")
    assert "within 0.2s" in errors[0]


def test_a_topic_listed_but_not_yet_known_to_the_describing_broker_is_not_live_yet() -> None:
    # On a cluster of several brokers, one listed a topic just made and another, asked for its
    # settings, did not know it yet: `topics apply` ended in a bare KafkaException.
    from vigil.hub.admin import describe_live

    assert describe_live(Scripted(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)), ["t"]) == {}  # type: ignore[arg-type]
    assert set(describe_live(Scripted({"retention.ms": "1"}), ["t"])) == {"t"}  # type: ignore[arg-type]
    # A credential that may see the topic but not its settings: live, and not readable (it
    # ended `vigil topics list` as a component in a traceback); other errors are raised.
    (refused,) = describe_live(Scripted(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), ["t"]).values()  # type: ignore[arg-type]
    assert (refused.readable, refused.config) == (False, {})
    with pytest.raises(KafkaException):
        describe_live(Scripted(KafkaError(KafkaError.CLUSTER_AUTHORIZATION_FAILED)), ["t"])  # type: ignore[arg-type]
