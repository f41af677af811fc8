"""Admin requests made by a client whose metadata named no controller are answered once the
cluster has one again: librdkafka sends them to the controller its last metadata named, and did
not look it up again, so each failed at its timeout however soon the broker was back.  A stage
started just after its broker resumed from a pause stopped so, 30 s later, in CI (2026-12-07)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from confluent_kafka import TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic
from tests.integration.kafka_read import wait_for
from tests.integration.throwaway_broker import LapsingBroker, running

from vigil.config import load_settings
from vigil.hub.admin import apply, describe_live
from vigil.hub.answers import wait_answered
from vigil.hub.topics import TopicSpec
from vigil.stream import changelog


def clients_seeing_no_controller(broker: LapsingBroker, count: int) -> list[AdminClient]:
    """``count`` new admin clients whose metadata named no controller, made in one of the
    broker's lapses.  The first made in a lapse is left out: made as it began, its first
    metadata named the broker and its next none, and such a client can be left knowing no
    broker at all (answering "transport failure"; found in review: 5 failures in 18 runs)."""
    made: list[AdminClient] = []

    def seen() -> bool:
        client = AdminClient({"bootstrap.servers": broker.bootstrap})
        if client.list_topics(timeout=10).controller_id != -1:
            # (The lapse is over: a request those make now looks the controller up itself.)
            made.clear()
            return False
        made.append(client)
        return len(made) == count + 1

    wait_for(seen, 90, f"{count} clients made while the cluster named no controller")
    return made[1:]


def test_requests_made_while_the_cluster_named_no_controller_are_answered_once_it_does(
    tmp_path: Path,
) -> None:
    with running(LapsingBroker(tmp_path / "broker")) as broker:
        settings = load_settings(kafka_bootstrap=broker.bootstrap, home=tmp_path / "home")
        # (Its tombstones kept 2 h, not Kafka's day: a restore's horizon read, not defaulted.)
        first = AdminClient({"bootstrap.servers": broker.bootstrap})
        making_a = first.create_topics([NewTopic("lapse.a", 2, 1, config={"delete.retention.ms": "7200000"})])
        assert wait_answered(first, making_a.values(), 60)  # (in a lapse or not)
        making_a["lapse.a"].result(timeout=0)
        describing, making, naming, keeping = clients_seeing_no_controller(broker, 4)

        # Asked at once, in the lapse, each on a client of its own: what every stage's start
        # asks first (it raised "did not describe topic 'lapse.a''s settings within 30s",
        # however soon the broker was unfenced), a topic made as a stage makes its own, and
        # what a restore asks of its changelog topics (before, each left out at its deadline
        # with a warning, unanswered).
        made = TopicSpec(name="lapse.b", key="k", value="raw", description="d", partitions=1)
        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(4) as pool:
            live = pool.submit(describe_live, describing, ["lapse.a"])
            applied = pool.submit(apply, making, [made], settings)
            ids = pool.submit(changelog._topic_ids, naming, ["lapse.a"], deadline)
            horizons = pool.submit(changelog._horizons, keeping, ["lapse.a"], deadline)
        assert live.result().get("lapse.a") is not None
        assert live.result()["lapse.a"].partitions == 2
        assert live.result()["lapse.a"].config["delete.retention.ms"] == "7200000"
        assert [d.spec.name for d in applied.result()] == ["lapse.b"]
        assert "lapse.b" in making.list_topics(timeout=10).topics
        described = describing.describe_topics(TopicCollection(["lapse.a"]))
        assert wait_answered(describing, described.values(), 10)
        assert ids.result() == {"lapse.a": str(described["lapse.a"].result(timeout=0).topic_id)}
        assert horizons.result() == {"lapse.a": changelog._horizon(7200)}
    # Its log says what its controller did (what a failure's leftovers are read for): Kafka's
    # own loggers are at WARN in Vigil's configuration, and a test's broker wrote no log at all.
    said = broker.log.read_text()
    assert "Fencing broker 1 " in said
    assert "to unfence has been granted" in said
