"""The declared topic registry."""

from __future__ import annotations

import re

import pytest

from vigil.errors import TopicError
from vigil.events import EVENT_TYPES
from vigil.hub.topics import TOPICS, TopicRegistry, TopicSpec

NAMING = re.compile(
    r"^(raw\.[a-z0-9]+|events\.[a-z]+|intel\.indicators|alerts|decisions|releases|labels|dlq\.[a-z]+)$"
)


def test_names_follow_the_convention() -> None:
    bad = [t.name for t in TOPICS if not NAMING.match(t.name)]
    assert bad == []


def test_every_event_type_has_exactly_one_topic() -> None:
    for cls in EVENT_TYPES.values():
        carriers = [t.name for t in TOPICS if cls in t.event_types]
        assert len(carriers) == 1, (cls.__name__, carriers)


def test_decisions_and_releases_are_kept_forever() -> None:
    # A `ttl: until_released` hold stands until released: at a year's retention it was gone
    # from the topic, the hold not, and `vigil release` could not find it.
    for name in ("decisions", "releases"):
        assert TOPICS.get(name).config()["retention.ms"] == "-1"


def test_intel_is_compacted_and_kept_forever() -> None:
    spec = TOPICS.get("intel.indicators")
    assert spec.config()["cleanup.policy"] == "compact"
    assert spec.config()["retention.ms"] == "-1"


def test_unknown_topic_names_the_declared_ones() -> None:
    with pytest.raises(TopicError, match=r"'nope' is not declared; declared topics: .*alerts"):
        TOPICS.get("nope")


def test_duplicate_declaration_fails() -> None:
    spec = TopicSpec(name="alerts", key="k", value="raw", description="d")
    with pytest.raises(TopicError, match="declared twice"):
        TopicRegistry((spec, spec))


def test_a_live_topic_is_given_more_partitions_only_when_asked_and_a_compacted_one_never() -> None:
    from vigil.config import Settings
    from vigil.hub.admin import LiveTopic, plan
    from vigil.stream.changelog import changelog_spec

    settings = Settings()
    intel = TOPICS.get("intel.indicators")
    changelog = changelog_spec("app", "store.v1", 6)

    def live(spec: TopicSpec, policy: str) -> LiveTopic:
        return LiveTopic(spec.name, 3, 1, {**spec.config(1), "cleanup.policy": policy})

    grown6 = TopicSpec(intel.name, intel.key, intel.value, intel.description, partitions=6, retention=None)
    compacted6 = TopicSpec(
        intel.name, intel.key, intel.value, intel.description, partitions=6, retention=None, cleanup="compact"
    )
    (kept,) = plan([compacted6], {intel.name: live(compacted6, "compact")}, settings)
    # A key's new records would hash elsewhere and leave its older ones (a deletion's value) behind.
    assert (kept.partitions, kept.partitions_to_add) == (3, 0)
    assert "not grown" in kept.describe()
    (follows,) = plan([changelog], {changelog.name: live(changelog, "compact")}, settings)
    assert follows.partitions_to_add == 3  # a changelog follows its application's inputs
    # Nor one declared compacted and made with "delete" (by hand): once compacted, a key's
    # records left in its old partition would stay there for good, beside its newer ones.
    (becoming,) = plan([compacted6], {intel.name: live(grown6, "delete")}, settings, add_partitions=True)
    assert becoming.partitions_to_add == 0
    assert "recreate it" in becoming.describe()
    # Not asked, no live topic grows: keys would move away from the state stages keep for them.
    (kept_keyed,) = plan([grown6], {intel.name: live(grown6, "delete")}, settings)
    assert (kept_keyed.partitions_to_add, kept_keyed.in_sync) == (0, True)
    assert "--add-partitions" in kept_keyed.describe()
    assert (
        plan([grown6], {intel.name: live(grown6, "delete")}, settings, add_partitions=True)[
            0
        ].partitions_to_add
        == 3
    )


def test_replication_is_the_clusters_unless_set() -> None:
    # A fixed 1 overrode a production cluster's default.replication.factor of 3.
    from vigil.config import Settings
    from vigil.hub.admin import LiveTopic, plan

    spec = TOPICS.get("alerts")
    (new,) = plan([spec], {}, Settings())
    assert new.replication == -1
    assert "rf of the cluster's default" in new.describe()
    (live,) = plan([spec], {spec.name: LiveTopic(spec.name, 6, 3, spec.config(3))}, Settings())
    assert live.in_sync
    assert not live.notes
    (pinned,) = plan(
        [spec], {spec.name: LiveTopic(spec.name, 6, 3, spec.config(3))}, Settings(default_replication=2)
    )
    assert pinned.notes == ["replication 3, declared 2 (not changed)"]


@pytest.mark.parametrize(("replication", "insync"), [(1, "1"), (2, "1"), (3, "2"), (5, "2")])
def test_min_insync_replicas_follows_the_replicas(replication: int, insync: str) -> None:
    # acks=all with Kafka's default of 1 acknowledged a record held by the leader alone once
    # the others fell behind, and losing that leader lost it.  rf 2 keeps 1: 2 would stop
    # every write while either broker is down (see min_insync_replicas).
    spec = TopicSpec(name="alerts", key="k", value="raw", description="d")
    assert spec.config(replication)["min.insync.replicas"] == insync


def test_min_insync_replicas_is_left_out_while_the_replicas_are_unknown() -> None:
    spec = TopicSpec(name="alerts", key="k", value="raw", description="d")
    assert "min.insync.replicas" not in spec.config(None)
    with pytest.raises(TopicError, match=r"topic 'alerts': replicas must be at least 1 .*; got 0"):
        spec.config(0)


def test_plan_raises_a_lower_min_insync_replicas_for_the_replicas_the_topic_has() -> None:
    from vigil.config import Settings
    from vigil.hub.admin import LiveTopic, plan

    spec = TOPICS.get("alerts")
    # Declared 1 replica, but the live topic has 3: its min.insync.replicas follows the 3.
    settings = Settings(default_replication=1)
    live = LiveTopic(spec.name, 6, 3, {**spec.config(), "min.insync.replicas": "1"})
    (diff,) = plan([spec], {spec.name: live}, settings)
    assert diff.config_changes == {"min.insync.replicas": ("1", "2")}
    assert "min.insync.replicas: 1 -> 2" in diff.describe()
    # Declared 3 replicas, but the live topic was left with 1: 2 would refuse every write.
    single = LiveTopic(spec.name, 6, 1, {**spec.config(), "min.insync.replicas": "1"})
    (kept,) = plan([spec], {spec.name: single}, Settings(default_replication=3))
    assert (kept.in_sync, kept.notes) == (True, ["replication 1, declared 3 (not changed)"])


def test_an_applications_own_topic_keeps_a_min_insync_replicas_lowered_on_it() -> None:
    # Lowered on the topic through a broker outage: raised again at the application's start,
    # every write to a partition short of replicas was refused, and every checkpoint with it.
    # From the broker's defaults (never set, or set by nobody since), it is raised.
    from vigil.config import Settings
    from vigil.hub.admin import LiveTopic, keep_lowered_insync_replicas, plan
    from vigil.stream.changelog import changelog_spec

    spec = changelog_spec("app", "counts.v1", 6)
    config = {**spec.config(3), "min.insync.replicas": "1", "cleanup.policy": "delete"}
    lowered = LiveTopic(spec.name, 6, 3, config, frozenset({"min.insync.replicas", "cleanup.policy"}))
    defaulted = LiveTopic(spec.name, 6, 3, config, frozenset({"cleanup.policy"}))
    for live, kept in ((lowered, True), (defaulted, False)):
        diffs = plan([spec], {spec.name: live}, Settings(default_replication=3))
        assert diffs[0].config_changes == {
            "min.insync.replicas": ("1", "2"),
            "cleanup.policy": ("delete", "compact"),
        }
        keep_lowered_insync_replicas(diffs)
        assert ("min.insync.replicas" not in diffs[0].config_changes) is kept
        assert diffs[0].config_changes["cleanup.policy"] == ("delete", "compact")
        notes = [n for n in diffs[0].notes if n.startswith("min.insync.replicas 1, set on the topic")]
        assert len(notes) == (1 if kept else 0)
        assert all("kafka-configs --alter --delete-config min.insync.replicas" in n for n in notes)


def test_plan_keeps_a_higher_min_insync_replicas() -> None:
    # An operator's stricter setting: lowered, writes would be acknowledged with fewer copies.
    from vigil.config import Settings
    from vigil.hub.admin import LiveTopic, plan

    spec = TOPICS.get("alerts")
    lower = LiveTopic(spec.name, 6, 5, {**spec.config(), "min.insync.replicas": "1"})
    higher = LiveTopic(spec.name, 6, 5, {**spec.config(), "min.insync.replicas": "3"})
    (raised,) = plan([spec], {spec.name: lower}, Settings())
    (kept,) = plan([spec], {spec.name: higher}, Settings())
    assert raised.config_changes == {"min.insync.replicas": ("1", "2")}
    assert kept.in_sync


def test_retention_is_by_time_only_on_every_declared_topic() -> None:
    # A size limit (the topic's, or the cluster's log.retention.bytes) deleted alerts declared
    # for a year, and `vigil topics list` compared nothing it did not declare.
    for spec in TOPICS:
        assert spec.config()["retention.bytes"] == "-1", spec.name


@pytest.mark.parametrize(
    ("key", "live", "declared", "loses"),
    [
        ("cleanup.policy", "delete", "compact", True),
        ("cleanup.policy", "compact", "compact", False),
        ("retention.ms", "60000", "-1", True),
        ("retention.ms", "60000", "259200000", True),
        ("retention.ms", "-1", "259200000", False),
        ("retention.ms", "604800000", "259200000", False),
        ("retention.bytes", "1024", "-1", True),
        ("max.message.bytes", "1048588", "67108864", False),
    ],
)
def test_settings_that_delete_what_the_declaration_keeps_are_told_apart(
    key: str, live: str, declared: str, loses: bool
) -> None:
    from vigil.hub.admin import _loses_data

    assert _loses_data(key, live, declared) is loses
