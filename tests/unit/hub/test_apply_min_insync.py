"""``apply`` gives topics the ``min.insync.replicas`` their replicas call for, on a cluster of
three brokers (an admin client that keeps topics in memory: the test broker has one node)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from vigil.config import Settings
from vigil.hub.admin import apply
from vigil.hub.topics import TopicSpec

#: What a broker describes for a setting no topic set (Kafka's defaults).
BROKER_DEFAULTS = {
    "cleanup.policy": "delete",
    "retention.ms": "604800000",
    "min.insync.replicas": "1",
    "max.message.bytes": "1048588",
}

SPEC = TopicSpec(name="t", key="k", value="raw", description="d", partitions=2)


class Done:
    def result(self, timeout: float | None = None) -> None:
        return None


class Cluster:
    """Topics by name (partitions, replicas, the settings set on them); new topics without a
    replication factor get ``default_replication`` replicas, as a broker gives them."""

    def __init__(self, default_replication: int) -> None:
        self.default_replication = default_replication
        self.topics: dict[str, tuple[int, int, dict[str, str]]] = {}
        self.created_with: dict[str, dict[str, str]] = {}

    def list_topics(self, timeout: float | None = None) -> Any:
        return SimpleNamespace(
            topics={
                name: SimpleNamespace(
                    error=None,
                    partitions={p: SimpleNamespace(replicas=list(range(rf))) for p in range(parts)},
                )
                for name, (parts, rf, _) in self.topics.items()
            }
        )

    def describe_configs(self, resources: list[Any]) -> dict[Any, Any]:
        def entries(name: str) -> dict[str, Any]:
            conf = {**BROKER_DEFAULTS, **self.topics[name][2]}
            return {k: SimpleNamespace(value=v) for k, v in conf.items()}

        return {r: SimpleNamespace(result=lambda timeout=None, n=r.name: entries(n)) for r in resources}

    def create_topics(self, new: list[Any], request_timeout: float | None = None) -> dict[str, Done]:
        for t in new:
            rf = t.replication_factor if t.replication_factor > 0 else self.default_replication
            self.topics[t.topic] = (t.num_partitions, rf, dict(t.config))
            self.created_with[t.topic] = dict(t.config)
        return {t.topic: Done() for t in new}

    def incremental_alter_configs(self, resources: list[Any]) -> dict[Any, Done]:
        for r in resources:
            self.topics[r.name][2].update({e.name: e.value for e in r.incremental_configs})
        return {r: Done() for r in resources}

    def setting(self, name: str, key: str) -> str | None:
        """The value set on the topic itself (None: the broker's default applies)."""
        return self.topics[name][2].get(key)


@pytest.mark.parametrize("alter_configs", [True, False])
def test_a_topic_given_the_clusters_replication_gets_min_insync_for_the_replicas_it_got(
    alter_configs: bool,
) -> None:
    # Unset, the broker's default (1) applied: a 3-replica topic acknowledged a record held by
    # its leader alone.  Applications (alter_configs=False) set it too: they made the topic.
    cluster = Cluster(default_replication=3)
    (created,) = apply(cluster, [SPEC], Settings(), alter_configs=alter_configs)  # type: ignore[arg-type]
    assert created.missing
    assert cluster.setting("t", "min.insync.replicas") == "2"
    assert apply(cluster, [SPEC], Settings()) == []  # type: ignore[arg-type]


def test_a_topic_with_declared_replication_is_created_with_its_min_insync() -> None:
    cluster = Cluster(default_replication=1)
    apply(cluster, [SPEC], Settings(default_replication=3))  # type: ignore[arg-type]
    # Part of the creation: no moment without it.
    assert cluster.created_with["t"]["min.insync.replicas"] == "2"


def test_a_lower_min_insync_is_left_with_a_note_by_applications_and_raised_when_asked() -> None:
    cluster = Cluster(default_replication=3)
    cluster.topics["t"] = (2, 3, {"retention.ms": "604800000"})  # made before it was declared
    (left,) = apply(cluster, [SPEC], Settings(), alter_configs=False)  # type: ignore[arg-type]
    assert "settings left as they are: min.insync.replicas 1 (declared 2)" in left.describe()
    assert cluster.setting("t", "min.insync.replicas") is None
    (raised,) = apply(cluster, [SPEC], Settings())  # type: ignore[arg-type]
    assert raised.describe() == "min.insync.replicas: 1 -> 2"
    assert cluster.setting("t", "min.insync.replicas") == "2"
    assert apply(cluster, [SPEC], Settings()) == []  # type: ignore[arg-type]
