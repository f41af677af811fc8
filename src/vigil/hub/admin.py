"""Apply the declared topics to a cluster and compare declared with live.

``apply`` is idempotent: it creates missing topics, raises partition counts that are
below the declaration only when asked (``add_partitions``, never for a compacted topic unless
its declaration allows it: a key's records would be left behind in its old partition; otherwise
a note says why not, as for a count above it, which Kafka cannot lower) and sets configs that
differ (``min.insync.replicas`` only when lower than declared for the replicas the topic
has).  A second run finds nothing to do and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from vigil.config import Settings
from vigil.errors import BrokerError, TopicError
from vigil.hub.answers import wait_answered
from vigil.hub.client import partition_offsets
from vigil.hub.topics import MIN_INSYNC, TOPICS, TopicSpec

log = logging.getLogger(__name__)

_TIMEOUT = 30.0
_K = TypeVar("_K")


@dataclass(frozen=True)
class LiveTopic:
    name: str
    partitions: int
    replication: int
    config: dict[str, str]
    #: The settings made on the topic itself (not the broker's or Kafka's defaults).
    set_on_topic: frozenset[str] = frozenset()
    #: False when the credential may see the topic but not its settings (no DescribeConfigs):
    #: ``config`` is empty then, and nothing is compared.
    readable: bool = True


@dataclass
class TopicDiff:
    """What differs between a declaration and the live topic (empty: in sync)."""

    spec: TopicSpec
    live: LiveTopic | None
    partitions: int
    replication: int
    config_changes: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: The notes about settings left as they are that lose data the declaration keeps (another
    #: cleanup policy, a shorter retention): a stage starting on such a topic says so loudly.
    alarms: list[str] = field(default_factory=list)

    @property
    def missing(self) -> bool:
        return self.live is None

    @property
    def partitions_to_add(self) -> int:
        return 0 if self.live is None else max(0, self.partitions - self.live.partitions)

    @property
    def in_sync(self) -> bool:
        return not self.missing and not self.partitions_to_add and not self.config_changes

    def describe(self) -> str:
        if self.missing:
            rf = self.replication if self.replication > 0 else "of the cluster's default"
            return f"create ({self.partitions} partition{'s' if self.partitions != 1 else ''}, rf {rf})"
        parts = []
        if self.partitions_to_add:
            parts.append(f"partitions {self.live.partitions if self.live else 0} -> {self.partitions}")
        parts += [f"{k}: {old} -> {new}" for k, (old, new) in sorted(self.config_changes.items())]
        parts += self.notes
        return "; ".join(parts) or "in sync"


#: A setting made on the topic itself (``ConfigEntry.source``).
_ON_TOPIC = ConfigSource.DYNAMIC_TOPIC_CONFIG.value


def describe_live(admin: AdminClient, names: Iterable[str] | None = None) -> dict[str, LiveTopic]:
    """Live topics (excluding Kafka's internal ones) with partitions, replication and configs;
    BrokerError when the cluster does not answer (it was a KafkaException traceback)."""
    try:
        meta = admin.list_topics(timeout=_TIMEOUT)
    except KafkaException as exc:
        msg = f"the Kafka cluster did not answer a metadata request ({exc.args[0]}); is the broker running?"
        raise BrokerError(msg) from None
    wanted = set(names) if names is not None else None
    topics = {
        name: t
        for name, t in meta.topics.items()
        if not name.startswith("__") and (wanted is None or name in wanted) and t.error is None
    }
    if not topics:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in topics]
    configs: dict[str, dict[str, str]] = {}
    own: dict[str, frozenset[str]] = {}
    unreadable: set[str] = set()
    futures = admin.describe_configs(resources)
    wait_answered(admin, futures.values(), _TIMEOUT)
    for resource, future in futures.items():
        try:
            entries = future.result(timeout=0)  # (done, or not answered in time)
        except KafkaException as exc:
            from vigil.hub.client import kafka_error

            err = kafka_error(exc)
            if err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                # A component's credential sees topics it may not describe the settings of
                # (`vigil topics list` as detect): a traceback naming no topic, before.
                unreadable.add(resource.name)
                continue
            if err is None or err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
            # Listed by the broker that gave the metadata, not yet known to the one describing
            # it (a topic just made, on a cluster of several): not live yet, as if unlisted.
            del topics[resource.name]
            continue
        except TimeoutError:
            # (Only KafkaException was caught above it: a broker stopping mid-command gave a
            # bare traceback.)
            msg = (
                f"the Kafka cluster did not describe topic {resource.name!r}'s settings within {_TIMEOUT:g}s"
            )
            raise BrokerError(msg) from None
        configs[resource.name] = {k: v.value for k, v in entries.items() if v.value is not None}
        own[resource.name] = frozenset(
            k for k, v in entries.items() if getattr(v.source, "value", v.source) == _ON_TOPIC
        )
    return {
        name: LiveTopic(
            name=name,
            partitions=len(t.partitions),
            replication=len(next(iter(t.partitions.values())).replicas) if t.partitions else 0,
            config=configs.get(name, {}),
            set_on_topic=own.get(name, frozenset()),
            readable=name not in unreadable,
        )
        for name, t in topics.items()
    }


def plan(
    specs: Iterable[TopicSpec],
    live: dict[str, LiveTopic],
    settings: Settings,
    *,
    add_partitions: bool = False,
) -> list[TopicDiff]:
    """What to change for ``specs`` to hold.  A live topic is given more partitions only when
    ``add_partitions`` says so (a changelog always follows its application's inputs), and never
    a compacted one: a key's new records would go to another partition than its earlier ones
    and the state kept for it."""
    diffs = []
    for spec in specs:
        partitions = spec.partitions or settings.default_partitions
        # -1: the cluster's default.replication.factor (CreateTopics takes it so since Kafka 2.4).
        replication = spec.replication or settings.default_replication or -1
        current = live.get(spec.name)
        diff = TopicDiff(spec=spec, live=current, partitions=partitions, replication=replication)
        if current is not None and not current.readable:
            diff.partitions = current.partitions  # (nothing is changed on what cannot be read)
            diff.notes.append(
                "its settings cannot be read with this credential (DescribeConfigs refused): not "
                "compared; the admin component's credential reads them"
            )
        elif current is not None:
            # min.insync.replicas for the replicas the topic has, not those declared: a live
            # topic's replication is not changed here, and 2 on a topic left with 1 replica
            # would refuse every write to it.
            for key, value in spec.config(current.replication or None).items():
                was = current.config.get(key)
                if was != value and not _stricter_kept(key, was, value):
                    diff.config_changes[key] = (was, value)
            if current.partitions > partitions:
                diff.notes.append(
                    f"has {current.partitions} partitions, declared {partitions} (cannot shrink)"
                )
            elif current.partitions < partitions and not spec.grow_compacted:
                # Declared or live: a topic declared compacted but made by hand with "delete"
                # was grown (its keys moved) in the same run that made it compacted.
                compacted = "compact" in current.config.get("cleanup.policy", "") or "compact" in spec.cleanup
                if compacted or not add_partitions:
                    why = (
                        "its keys would move to other partitions and leave their older records "
                        "behind; to repartition it, recreate it and publish it again"
                        if compacted
                        else "its keys would move to other partitions, away from the state the stages "
                        "reading it keep for them; to grow it, stop those stages and run `vigil topics "
                        "apply --add-partitions`: windows and sequences of the keys that move start afresh"
                    )
                    note = f"has {current.partitions} partitions, declared {partitions} (not grown: {why})"
                    diff.partitions = current.partitions
                    diff.notes.append(note)
                    log.warning("topic %s %s", spec.name, note)
            if replication > 0 and current.replication != replication:
                diff.notes.append(f"replication {current.replication}, declared {replication} (not changed)")
        diffs.append(diff)
    return diffs


def apply(
    admin: AdminClient,
    specs: Iterable[TopicSpec],
    settings: Settings,
    *,
    add_partitions: bool = False,
    alter_configs: bool = True,
    keep_lowered_insync: bool = False,
) -> list[TopicDiff]:
    """Make the cluster match the declarations; returns the diffs that were acted upon, and
    those with notes (what was left as it is, and why).  ``add_partitions``: see :func:`plan`.

    ``alter_configs=False``: create what is missing, and leave the settings of live topics as
    they are, with a note (an operator's longer retention on a production cluster is theirs;
    set back to the declaration, Kafka would delete the older data).  ``keep_lowered_insync``:
    see :func:`keep_lowered_insync_replicas`."""
    specs = list(specs)
    diffs = plan(
        specs, describe_live(admin, [s.name for s in specs]), settings, add_partitions=add_partitions
    )
    if not alter_configs:
        for d in diffs:
            if d.config_changes and not d.missing:
                # A larger record limit deletes nothing and is what the declaration needs (a
                # Bitcoin block, a changelog value): set anyway.  The rest are left alone, a
                # lower min.insync.replicas too: raised, it refuses writes at once to partitions
                # whose replicas are out of sync, a change for an operator to make when ready.
                kept = {k: v for k, v in d.config_changes.items() if _raises_limit(k, v[0], v[1])}
                left = {k: v for k, v in d.config_changes.items() if k not in kept}
                if left:
                    changes = ", ".join(f"{k} {was} (declared {new})" for k, (was, new) in left.items())
                    # (`vigil topics apply` knows the declared topics alone: an application's own
                    # dead-letter topic is not one, found in review.)
                    how = (
                        "`vigil topics apply` sets them"
                        if d.spec.name in TOPICS
                        else f"set them on the topic (kafka-configs.sh --alter --entity-type topics "
                        f"--entity-name {d.spec.name} --add-config ...)"
                    )
                    note = f"settings left as they are: {changes}; {how}"
                    d.notes.append(note)
                    if any(_loses_data(k, was, new) for k, (was, new) in left.items()):
                        d.alarms.append(note)
                d.config_changes = kept
    elif keep_lowered_insync:
        keep_lowered_insync_replicas(diffs)
    create = [
        NewTopic(
            d.spec.name,
            num_partitions=d.partitions,
            replication_factor=d.replication,
            config=d.spec.config(d.replication if d.replication > 0 else None),
        )
        for d in diffs
        if d.missing
    ]
    grow = [NewPartitions(d.spec.name, d.partitions) for d in diffs if d.partitions_to_add]
    #: The new values of live topics' changed settings, by topic.
    changed = {
        d.spec.name: {k: new for k, (_, new) in d.config_changes.items()}
        for d in diffs
        if d.config_changes and not d.missing
    }
    alter = _set_configs(changed)
    errors: list[str] = []
    created: set[str] = set()
    if create:
        for name, fut in _answers(admin, admin.create_topics(create, request_timeout=_TIMEOUT)):
            if _collect(errors, f"create {name}", fut, ignore="TOPIC_ALREADY_EXISTS"):
                created.add(name)
    if grow:
        for name, fut in _answers(admin, admin.create_partitions(grow, request_timeout=_TIMEOUT)):
            _collect(errors, f"add partitions to {name}", fut)
    if alter:
        for res, fut in _answers(admin, admin.incremental_alter_configs(alter)):
            _collect(errors, f"alter configs of {res.name}", fut)
    # Created with the cluster's replication factor: how many replicas that is shows only now.
    # Set even with alter_configs=False (these topics were made by this call), and before any
    # error is raised, or a topic made here would keep the broker's default (Kafka's is 1)
    # until someone ran `vigil topics apply`.
    chosen = [d for d in diffs if d.missing and d.replication <= 0 and d.spec.name in created]
    if chosen:
        insync = _insync_for_replicas(admin, {d.spec.name: d for d in chosen}, errors)
        if insync:
            for res, fut in _answers(admin, admin.incremental_alter_configs(_set_configs(insync))):
                _collect(errors, f"set {MIN_INSYNC} of {res.name}", fut)
            changed |= insync
    if errors:
        raise TopicError("applying topics failed:\n  " + "\n  ".join(errors))
    if create or grow:
        made = {d.spec.name: d.partitions for d in diffs if d.missing or d.partitions_to_add}
        _wait_visible(admin, made)
        _wait_led(settings, made)
    if changed:
        _wait_configured(admin, changed)
    return [d for d in diffs if not d.in_sync or d.notes]


def _set_configs(values: dict[str, dict[str, str]]) -> list[ConfigResource]:
    """Incremental SETs of ``values`` (by topic): the topics' other settings stay as they are."""
    return [
        ConfigResource(
            ResourceType.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in conf.items()
            ],
        )
        for name, conf in values.items()
    ]


def _insync_for_replicas(
    admin: AdminClient, created: dict[str, TopicDiff], errors: list[str]
) -> dict[str, dict[str, str]]:
    """``min.insync.replicas`` of just-created topics, from the replicas the cluster gave each
    (by topic).  Failing to find out, or a topic still not described at the deadline (gone
    meanwhile, or a broker's metadata lagging that long), is added to ``errors``."""
    deadline = time.monotonic() + _TIMEOUT
    try:
        _wait_visible(admin, {name: d.partitions for name, d in created.items()})
        while True:
            live = describe_live(admin, list(created))
            # A broker whose metadata lags may answer without a topic another just listed, or
            # list it and not describe it (describe_live leaves it out): it was left without its
            # setting, silently.  (One deleted meanwhile stays missing: an error.)
            missing = sorted(n for n in created if n not in live or live[n].replication < 1)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # metadata poll interval; the loop checks the state
    except (TopicError, BrokerError, KafkaException) as exc:
        errors.append(f"find the replicas of {', '.join(sorted(created))} to set their {MIN_INSYNC}: {exc}")
        return {}
    if missing:
        # An error, not a warning: the topic keeps the broker's default (Kafka's is 1), and
        # `topics apply` said it succeeded while an acks=all write could be lost with a leader.
        errors.append(
            f"set {MIN_INSYNC} of {', '.join(missing)}: created, but not described with its replicas "
            f"within {_TIMEOUT:g}s (expected every created topic listed with at least one replica); "
            "run `vigil topics apply` again to set it"
        )
    return {
        name: {MIN_INSYNC: d.spec.config(live[name].replication)[MIN_INSYNC]}
        for name, d in created.items()
        if name in live and live[name].replication > 0
    }


def _loses_data(key: str, was: str | None, declared: str) -> bool:
    """Whether a live setting deletes records the declaration keeps: another cleanup policy (a
    compacted intel topic set to ``delete`` expires the sanctions lists), a retention by time or
    size shorter than declared (-1: for good)."""
    if key == "cleanup.policy":
        return was != declared
    if key not in ("retention.ms", "retention.bytes") or was is None:
        return False
    try:
        live, wanted = int(was), int(declared)
    except ValueError:
        return True
    return live >= 0 and (wanted < 0 or live < wanted)


def _stricter_kept(key: str, was: str | None, new: str) -> bool:
    """Whether a live ``min.insync.replicas`` above the declared one stays: an operator asked for
    more copies of each acknowledged record, and setting it back would acknowledge writes with
    fewer than they chose.  (Lower is the gap it closes: a record acknowledged by the leader
    alone, lost with it.)"""
    if key != MIN_INSYNC or was is None:
        return False
    try:
        return int(was) > int(new)
    except ValueError:
        return False


def keep_lowered_insync_replicas(diffs: Iterable[TopicDiff]) -> None:
    """Leave a live ``min.insync.replicas`` that someone set on the topic below the declared one
    (a note instead of the change).  An operator lowers it to keep a topic writable through a
    broker outage; an application's start raising it again refused every write to a partition
    short of replicas, and every checkpoint with it.  Only a value set on the topic: one from the
    broker's defaults (a topic an older Vigil made, a setting that failed after creation) is
    raised, or nothing would ever raise it (no ``vigil topics apply`` covers changelogs)."""
    for d in diffs:
        was, declared = d.config_changes.get(MIN_INSYNC, (None, None))
        if declared is None or was is None or d.live is None or MIN_INSYNC not in d.live.set_on_topic:
            continue
        try:
            lowered = int(was) < int(declared)
        except ValueError:
            continue
        if lowered:
            del d.config_changes[MIN_INSYNC]
            d.notes.append(
                f"{MIN_INSYNC} {was}, set on the topic, left as it is (declared {declared}): raised, "
                "writes to partitions short of replicas would be refused; to have it set, delete the "
                f"topic's own setting (kafka-configs --alter --delete-config {MIN_INSYNC})"
            )


def _raises_limit(key: str, was: str | None, new: str) -> bool:
    if key != "max.message.bytes":
        return False
    try:
        return was is None or int(new) > int(was)
    except ValueError:
        return False


def _wait_visible(admin: AdminClient, expected: dict[str, int], timeout: float = _TIMEOUT) -> None:
    """Return once metadata shows every topic with its partitions: creation is asynchronous in
    Kafka, and a producer or a second ``apply`` right after would otherwise see a stale cluster."""
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=_TIMEOUT).topics
        pending = [
            n
            for n, parts in expected.items()
            if n not in topics or topics[n].error is not None or len(topics[n].partitions) < parts
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            msg = f"topics not visible in metadata after {timeout:g}s: {', '.join(sorted(pending))}"
            raise TopicError(msg)
        time.sleep(0.05)  # metadata poll interval, not a synchronisation guess: the loop checks the state


def _wait_led(settings: Settings, expected: dict[str, int], timeout: float = _TIMEOUT) -> None:
    """Return once the leader of every partition of ``expected`` answers for it.

    Metadata names a new partition's leader before that broker has taken the partition on: for
    100-200 ms after creation here it refuses requests for it with NOT_LEADER_OR_FOLLOWER.
    librdkafka retries refused writes, but its idempotent producer, with batches of one new
    partition refused several times, lost acknowledged records: in the simulator's integration
    test, 1-4 records of 3,066 in 6 of 93 runs on a freshly started broker, two runs at a time
    (none in 80 on one running for an hour).  Every partition was read to its high watermark, so
    the records never reached the log; librdkafka 2.12's debug log showed the refusals and no
    error (reported upstream as https://github.com/confluentinc/confluent-kafka-go/issues/921,
    open: a new producer writing while a leader is elected).  With this wait, none in 80 on a
    fresh broker.  An offsets request is refused in that window just as a write is (both need
    the leader to lead the partition), so writers start once each leader answers one."""
    began = time.monotonic()
    try:
        partition_offsets(
            settings,
            [(name, p) for name, count in expected.items() for p in range(count)],
            began + timeout,
            new=True,
        )
    except BrokerError as exc:
        waited = time.monotonic() - began
        msg = f"new partitions not served by their leaders (asked {waited:.1f}s of {timeout:g}): {exc}"
        raise TopicError(msg) from exc


def _wait_configured(
    admin: AdminClient, expected: dict[str, dict[str, str]], timeout: float = _TIMEOUT
) -> None:
    """Return once the cluster describes every altered setting with its new value: the
    controller accepts a change before brokers apply it, and a writer started right after a
    raised record limit (a Bitcoin block) would otherwise be refused by the old one.  (The broker
    that answers is the one known to have it; the others follow within moments.)  A topic gone
    meanwhile is not waited for; a describe that fails is asked again; a value still not shown
    at the deadline is logged, not raised: the change was accepted, and a broker may spell a
    value its own way."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            live = describe_live(admin, list(expected))
        except BrokerError as exc:
            pending = [f"describing failed: {exc}"]
        except KafkaException as exc:
            # A topic deleted between the metadata and the describe, or the broker busy: asked
            # again (a deleted topic then leaves the metadata, and is not waited for).
            pending = [f"describing failed: {exc.args[0]}"]
        else:
            pending = sorted(
                f"{name} {key}"
                for name, wanted in expected.items()
                if name in live
                for key, value in wanted.items()
                if _spelled(live[name].config.get(key)) != _spelled(value)
            )
        if not pending:
            return
        if time.monotonic() > deadline:
            log.warning("topic settings not shown as set after %gs: %s", timeout, ", ".join(pending))
            return
        time.sleep(0.05)  # poll interval; the loop checks the state


def _spelled(value: str | None) -> str | None:
    """A setting's value as compared: list items without blanks (``compact, delete``)."""
    return None if value is None else ",".join(part.strip() for part in value.split(","))


def _answers(admin: AdminClient, futures: dict[_K, Future[Any]]) -> list[tuple[_K, Future[Any]]]:
    """``futures`` (of a request made with ``admin``) once answered, or :data:`_TIMEOUT` has
    passed (:func:`~vigil.hub.answers.wait_answered`: the controller looked up meanwhile)."""
    wait_answered(admin, futures.values(), _TIMEOUT)
    return list(futures.items())


def _collect(errors: list[str], what: str, future: Future[Any], ignore: str | None = None) -> bool:
    """Whether ``future`` (answered: :func:`_answers`) succeeded; a failure other than
    ``ignore`` is added to ``errors``."""
    try:
        future.result(timeout=0)
    except KafkaException as exc:
        err = exc.args[0]
        if ignore and getattr(err, "name", lambda: "")() == ignore:
            return False
        errors.append(f"{what}: {err}")
        return False
    except TimeoutError:
        errors.append(f"{what}: no answer from the cluster within {_TIMEOUT:g}s")
        return False
    return True


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec], *, owned: bool = False) -> None:
    """Create what is missing (used by applications and tests before they produce).  Live
    topics' settings are left as they are, a difference logged, but for a larger record limit
    (this runs at every connector and application start, on whatever cluster is configured:
    ``vigil topics apply`` changes the rest).  ``owned``: topics only this application uses
    (its changelogs and repartition topics), whose settings it keeps as declared, but for a
    ``min.insync.replicas`` lowered on the topic (:func:`keep_lowered_insync_replicas`)."""
    from vigil.hub.client import drop_frame_locals, make_admin

    admin = make_admin(settings)
    try:
        diffs = apply(admin, specs, settings, alter_configs=owned, keep_lowered_insync=owned)
    except BaseException as exc:
        # Not kept alive by the error (a connector retrying keeps its last failure).
        del admin
        drop_frame_locals(exc)
        raise
    for diff in diffs:
        for note in diff.notes:
            # At WARNING what loses data (the CLI shows warnings only): a stage starting on
            # intel.indicators set to delete after a minute said nothing.
            level = logging.WARNING if note in diff.alarms else logging.INFO
            log.log(level, "topic %s: %s", diff.spec.name, note)
