"""Admin requests made by a client whose metadata named no controller are answered once the
cluster has one again: librdkafka sends them to the controller its last metadata named, and did
not look it up again, so each failed at its timeout however soon the broker was back.  A stage
started just after its broker resumed from a pause stopped so, 30 s later, in CI (2026-12-07)."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic
from tests.integration.kafka_read import wait_for
from tests.integration.throwaway_broker import LapsingBroker, running

from vigil.config import load_settings
from vigil.hub.admin import describe_live, ensure_topics
from vigil.hub.answers import wait_answered
from vigil.hub.topics import TopicSpec

#: Longer than a lapse (about 14 s), far shorter than "never".
_ANSWERED_S = 60.0


def clients_seeing_no_controller(broker: LapsingBroker, count: int) -> list[AdminClient]:
    """``count`` new admin clients whose first metadata named no controller (made in one of the
    broker's lapses, every one checked: a lapse that ends meanwhile is waited out)."""
    made: list[AdminClient] = []

    def seen() -> bool:
        client = AdminClient({"bootstrap.servers": broker.bootstrap})
        if client.list_topics(timeout=10).controller_id != -1:
            made.clear()  # (the lapse ended: those made in it have learnt the controller)
            return False
        made.append(client)
        return len(made) == count

    wait_for(seen, 90, f"{count} clients made while the cluster named no controller")
    return made


def test_requests_made_while_the_cluster_named_no_controller_are_answered_once_it_does(
    tmp_path: Path,
) -> None:
    with running(LapsingBroker(tmp_path / "broker")) as broker:
        settings = load_settings(kafka_bootstrap=broker.bootstrap, home=tmp_path / "home")
        spec = TopicSpec(name="lapse.a", key="k", value="raw", description="d", partitions=2)
        ensure_topics(settings, [spec])  # (in a lapse or not)
        describing, making, listing = clients_seeing_no_controller(broker, 3)

        # What a stage's start asks first: it raised "did not describe topic 'lapse.a''s
        # settings within 30s".
        live = describe_live(describing, ["lapse.a"])
        assert live["lapse.a"].partitions == 2
        assert live["lapse.a"].config["cleanup.policy"] == "delete"

        made = making.create_topics([NewTopic("lapse.b", 1, 1)])
        assert wait_answered(making, made.values(), _ANSWERED_S), "lapse.b's creation not answered"
        made["lapse.b"].result(timeout=0)  # (raises if refused)
        assert "lapse.b" in making.list_topics(timeout=10).topics

        described = listing.describe_topics(TopicCollection(["lapse.a"]))
        assert wait_answered(listing, described.values(), _ANSWERED_S), "lapse.a's description not answered"
        assert len(described["lapse.a"].result(timeout=0).partitions) == 2
