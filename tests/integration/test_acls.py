"""The generated ACLs on a broker that enforces them (:mod:`tests.integration.acl_broker`).

The declared topics are created as the admin (``vigil topics apply``); then each component
connects as its own principal.  The first test runs before the ACLs are applied (tests run
in file order): it shows that the writes the others see allowed are the ACLs' doing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from tests.integration.acl_broker import ADMIN, SecuredBroker
from tests.integration.throwaway_broker import REPO
from tests.unit.detect.test_release import ALERT, decided
from typer.testing import CliRunner, Result

from vigil.cli import app
from vigil.config import Settings, load_settings
from vigil.detect.app import DetectionService
from vigil.detect.release import release_id
from vigil.detect.rules.validate import load_rules
from vigil.errors import BrokerError
from vigil.events.codec import decode_event
from vigil.events.types import Release
from vigil.hub import acls, client
from vigil.hub import admin as topic_admin
from vigil.hub.client import make_admin, make_consumer, make_producer, read_committed
from vigil.hub.dlq import summarize
from vigil.hub.raw import RawRecord
from vigil.hub.redrive import redrive
from vigil.hub.topics import TOPICS, TopicSpec
from vigil.sources.normalize import build
from vigil.sources.sink import KafkaRawSink

SOURCE = "vigil-source-coinbase"
NORMALIZE = "vigil-normalize"
DETECT = "vigil-detect"
REDRIVE = "vigil-redrive"
RELEASE = "vigil-release"
REFUSED = KafkaError.TOPIC_AUTHORIZATION_FAILED


class _Cluster:
    def __init__(self, broker: SecuredBroker) -> None:
        self.broker = broker
        self.acls_applied = False

    def settings(self, user: str) -> Settings:
        return self.broker.settings(user)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Cluster]:
    broker = SecuredBroker(tmp_path_factory.mktemp("acl-broker"))
    broker.start()
    try:
        admin = broker.settings(ADMIN)
        topic_admin.apply(make_admin(admin), TOPICS, admin)  # `vigil topics apply`, as the admin
        yield _Cluster(broker)
    finally:
        broker.stop()


def _acls_command(cluster: _Cluster, user: str, *args: str) -> Result:
    """``vigil topics acls ARGS`` run as ``user`` (its credential in VIGIL_* variables)."""
    return _vigil_as(cluster, user, "topics", "acls", *args)


def _vigil_as(cluster: _Cluster, user: str, *args: str) -> Result:
    """``vigil ARGS`` run as ``user`` (its credential in VIGIL_* variables)."""
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("VIGIL_")]:
            env.delenv(name)
        for name, value in cluster.broker.env(user).items():
            env.setenv(name, value)
        return CliRunner().invoke(app, list(args), terminal_width=200)


@pytest.fixture(scope="module")
def applied(cluster: _Cluster) -> _Cluster:
    """The generated ACLs, created as the admin with `vigil topics acls --apply`."""
    first = _acls_command(cluster, ADMIN, "--apply")
    assert first.exit_code == 0, first.output or repr(first.exception)
    assert f"{len(acls.bindings())} ACL bindings in place" in first.output
    # Applying them again changes nothing and is no error (Kafka takes existing bindings).
    again = _acls_command(cluster, ADMIN, "--apply")
    assert again.exit_code == 0, again.output or repr(again.exception)
    cluster.acls_applied = True
    return cluster


def _produce(settings: Settings, topic: str) -> int | None:
    """Produce one record; None when Kafka took it, else the error code."""
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    producer = make_producer(settings, **{"message.timeout.ms": 15_000, "on_delivery": delivered})
    try:
        producer.produce(topic, key=b"k", value=b"v")
        remaining = producer.flush(20)
    except KafkaException as exc:
        return int(exc.args[0].code())
    assert remaining == 0, f"{topic}: not delivered nor refused within 20 s"
    return errors[0].code() if errors else None


def test_without_acls_the_source_principal_cannot_write_its_own_raw_topic(cluster: _Cluster) -> None:
    assert not cluster.acls_applied, "this test must run before the ACLs are applied (file order)"
    code = _produce(cluster.settings(SOURCE), "raw.coinbase")
    # No Write on any topic: the idempotent producer's id is refused first (cluster authorization).
    assert code in (REFUSED, KafkaError.CLUSTER_AUTHORIZATION_FAILED)


def test_source_writes_its_raw_topic(applied: _Cluster) -> None:
    assert _produce(applied.settings(SOURCE), "raw.coinbase") is None


@pytest.mark.parametrize(
    "topic",
    [
        "events.payments",
        "alerts",
        "decisions",
        "raw.binance",
        "dlq.normalize",
        "vigil.cursors.binance",
    ],
)
def test_source_cannot_write_other_topics(applied: _Cluster, topic: str) -> None:
    assert _produce(applied.settings(SOURCE), topic) == REFUSED


def test_source_connector_publishes_records_with_its_cursor(applied: _Cluster) -> None:
    """The real sink, transactional, with ensure_topics of the cursor topic and reading it back."""
    sink = KafkaRawSink(applied.settings(SOURCE), source_id="coinbase", timeout_s=20)
    record = RawRecord("coinbase", "ticker", b'{"type":"ticker"}', datetime.now(UTC), key=b"BTC-USD")
    try:
        sink.publish([record], cursor={"sequence": 7})
        assert sink.last_cursor("coinbase") == {"sequence": 7}
    finally:
        sink.close()


def test_normalize_reads_raw_with_its_group(applied: _Cluster) -> None:
    assert _produce(applied.settings(SOURCE), "raw.coinbase") is None
    consumer = make_consumer(applied.settings(NORMALIZE), "normalize")
    try:
        consumer.subscribe(["raw.coinbase"])
        deadline = time.monotonic() + 30
        msg = None
        while msg is None and time.monotonic() < deadline:
            polled = consumer.poll(0.5)
            if polled is not None:
                assert polled.error() is None, polled.error()
                msg = polled
        assert msg is not None, "nothing read from raw.coinbase within 30 s"
        consumer.commit(message=msg, asynchronous=False)  # the group's offsets: Read on the group
    finally:
        consumer.close()


def test_partition_ends_are_asked_without_a_refusal(applied: _Cluster) -> None:
    # The consumer partition_offsets makes names a group it never joins; its coordinator is
    # looked up all the same.  Refused, the broker logged a denial at every call.
    assert _produce(applied.settings(SOURCE), "raw.coinbase") is None
    errors: list[str] = []
    log = logging.getLogger("test.acls.offsets")
    log.addHandler(_Collect(errors))
    log.setLevel(logging.DEBUG)
    log.propagate = False
    real = client.make_consumer

    def traced(settings: Settings, group_id: str, **overrides: Any) -> Any:
        return real(settings, group_id, **{**overrides, "debug": "cgrp", "logger": log})

    meta = make_admin(applied.settings(ADMIN)).list_topics("raw.coinbase", timeout=10)
    parts = [("raw.coinbase", p) for p in meta.topics["raw.coinbase"].partitions]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(client, "make_consumer", traced)
        ends = client.partition_offsets(applied.settings(NORMALIZE), parts, time.monotonic() + 30)
    assert sum(high for _, high in ends.values()) > 0
    assert any("coordinator" in line for line in errors), "no coordinator lookup was traced"
    assert not [line for line in errors if "AUTHORIZATION" in line]


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def test_normalize_cannot_write_decisions(applied: _Cluster) -> None:
    assert _produce(applied.settings(NORMALIZE), "decisions") == REFUSED


@pytest.fixture(scope="module")
def normalize_letters(applied: _Cluster) -> list[Message]:
    """The normalise stage run under its principal on a record it cannot parse: its letters."""
    bad = RawRecord("coinbase", "ticker", b"not json", datetime.now(UTC), key=b"bad")
    sink = KafkaRawSink(applied.settings(SOURCE), source_id="coinbase", timeout_s=20)
    try:
        sink.publish([bad])
    finally:
        sink.close()
    app = build(applied.settings(NORMALIZE), ["coinbase"], checkpoint_interval_s=0.2)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            app.run()
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    thread = threading.Thread(target=run, name="normalize-under-acls", daemon=True)
    thread.start()
    admin = applied.settings(ADMIN)
    try:
        deadline = time.monotonic() + 60
        letters: list[Message] = []
        while not letters and not failures and time.monotonic() < deadline:
            letters = [m for m in read_committed(admin, "dlq.normalize", 10) if m.key() == b"bad"]
            time.sleep(0.3)
    finally:
        app.stop()
        thread.join(30)
    if failures:
        raise failures[0]
    return letters


def test_normalize_application_runs_under_its_principal(normalize_letters: list[Message]) -> None:
    """The stage itself: it starts (ensure_topics, its late topic, group, transactional id) and
    dead-letters a record it cannot parse to dlq.normalize, exactly-once."""
    assert normalize_letters, "normalise wrote no dead letter for the unparseable record within 60 s"


def test_the_redrive_operator_sends_a_letter_back(
    applied: _Cluster, normalize_letters: list[Message]
) -> None:
    """`vigil dlq redrive` as its own principal: reads dlq.normalize, makes and writes the ledger
    (transactional, its group), reads the original record and appends it to raw.coinbase."""
    assert normalize_letters
    admin = applied.settings(ADMIN)
    # Every letter there now (the tests above wrote other unparseable records to raw.coinbase;
    # the normalise stage has stopped, so no more arrive), and the records keyed "bad".
    letters = read_committed(admin, "dlq.normalize", 10)
    bad_before = [m for m in read_committed(admin, "raw.coinbase", 10) if m.key() == b"bad"]
    out = redrive(applied.settings(REDRIVE), "dlq.normalize", idle_s=3)
    # The first redrive of this cluster's dlq.normalize: each letter sent once, none kept back.
    assert out.redriven == len(letters), out
    assert (out.sent_before, out.passed, out.refused, out.unavailable, out.undecodable) == (0, 0, [], [], [])
    assert len(out.appended) == out.redriven, out
    assert {at.partition("[")[0] for at in out.appended} == {"raw.coinbase"}, out
    # The unparseable record of this test's own stage is among them: appended again, as it was.
    bad_after = [m for m in read_committed(admin, "raw.coinbase", 10) if m.key() == b"bad"]
    assert len(bad_after) == len(bad_before) + len(normalize_letters)
    assert {m.value() for m in bad_after} == {b"not json"}
    # Again, from the start: the ledger, no longer empty, is read (its reader's group: refused,
    # "Group authorization failed"), and nothing is sent twice.
    again = redrive(applied.settings(REDRIVE), "dlq.normalize", idle_s=3, from_beginning=True)
    assert (again.redriven, again.sent_before) == (0, len(letters)), again
    # And the same operator may see what the topic holds (`vigil dlq summary`).
    found = summarize(applied.settings(REDRIVE), "dlq.normalize", idle_s=3)
    assert found.letters == len(letters)


def test_detection_starts_under_its_principal(applied: _Cluster) -> None:
    """Both stages start (detect.routed, changelogs and late topics created, groups joined,
    transactional ids initialised) and the intel feed reads its list, with the shipped rules."""
    service = DetectionService(applied.settings(DETECT), load_rules([REPO / "rules"]))
    service.start(intel_timeout_s=30)
    try:
        deadline = time.monotonic() + 60
        while not all(app.assigned.is_set() for app in (service.route_app, service.detect_app)):
            service.check()
            assert time.monotonic() < deadline, "detection's stages were not assigned within 60 s"
            time.sleep(0.2)
        assert service.route_app.stores or service.detect_app.stores  # so changelogs were made
    finally:
        service.stop()


def test_detect_writes_alerts(applied: _Cluster) -> None:
    assert _produce(applied.settings(DETECT), "alerts") is None


@pytest.mark.parametrize("topic", ["raw.coinbase", "events.payments", "vigil.cursors.coinbase"])
def test_detect_cannot_write_upstream_topics(applied: _Cluster, topic: str) -> None:
    assert _produce(applied.settings(DETECT), topic) == REFUSED


def test_an_analyst_releases_a_hold_under_the_release_principal(applied: _Cluster) -> None:
    # Detection's hold (written as detect), released with `vigil release` as the analyst.
    hold = decided("hold_withdrawal", expires=datetime.now(UTC) + timedelta(days=1))
    producer = client.EventProducer(applied.settings(DETECT))
    producer.produce(hold, topic="decisions")
    producer.flush()
    result = _vigil_as(applied, RELEASE, "release", ALERT, "--by", "alice", "--reason", "checked")
    assert result.exit_code == 0, result.output or repr(result.exception)
    assert f"released 1 decision(s) of alert {ALERT}" in result.output
    (sent,) = [decode_event(m.value() or b"") for m in read_committed(applied.settings(ADMIN), "releases")]
    assert isinstance(sent, Release)
    assert (sent.event_id, sent.payload.decision_id) == (release_id(hold), hold.event_id)


@pytest.mark.parametrize("topic", ["decisions", "alerts", "events.payments", "raw.coinbase", "detect.routed"])
def test_the_release_principal_writes_nothing_but_releases(applied: _Cluster, topic: str) -> None:
    # (A hold or block forged on an analyst's laptop: refused.)
    assert _produce(applied.settings(RELEASE), topic) == REFUSED


def test_detection_cannot_write_releases(applied: _Cluster) -> None:
    assert _produce(applied.settings(DETECT), "releases") == REFUSED


def test_only_the_admin_may_apply_acls(applied: _Cluster) -> None:
    result = _acls_command(applied, "vigil-normalize", "--apply")
    assert result.exit_code != 0
    assert isinstance(result.exception, BrokerError)
    message = str(result.exception)
    assert "\n" not in message
    assert message.startswith(
        f"creating {len(acls.bindings())} of {len(acls.bindings())} ACL binding(s) failed"
    )
    assert "CLUSTER_AUTHORIZATION_FAILED" in message


def test_the_admin_component_manages_topics_and_acls(applied: _Cluster) -> None:
    """User:vigil-admin, no super user: `vigil topics apply` (create, add partitions, set
    configs) and `vigil topics acls --apply` work with its bindings alone."""
    settings = applied.settings("vigil-admin")
    spec = TopicSpec(name="test.admin-made", key="k", value="raw", description="d", partitions=1)
    topic_admin.apply(make_admin(settings), [spec], settings)
    grown = replace(spec, partitions=2, retention=timedelta(days=2))
    changed = topic_admin.apply(make_admin(settings), [grown], settings, add_partitions=True)
    assert [d.spec.name for d in changed] == ["test.admin-made"]
    live = topic_admin.describe_live(make_admin(settings), ["test.admin-made"])["test.admin-made"]
    assert (live.partitions, live.config["retention.ms"]) == (2, str(2 * 86_400_000))
    result = _acls_command(applied, "vigil-admin", "--apply")
    assert result.exit_code == 0, result.output or repr(result.exception)


def test_a_component_sees_topics_it_cannot_read_the_settings_of_as_not_compared(applied: _Cluster) -> None:
    """`vigil topics list` with detect's credential: topics it may describe but not read the
    settings of (raw.coinbase's, say) ended the command in a traceback naming no topic."""
    settings = applied.settings(DETECT)
    live = topic_admin.describe_live(make_admin(settings))
    unreadable = sorted(name for name, topic in live.items() if not topic.readable)
    assert unreadable, "detect reads every topic's settings: nothing tested"
    assert all(not live[name].config for name in unreadable)
    diffs = {d.spec.name: d for d in topic_admin.plan(TOPICS, live, settings)}
    shown = [diffs[name] for name in unreadable if name in diffs]
    assert shown, unreadable
    for diff in shown:
        assert diff.in_sync
        assert not diff.config_changes
        assert not diff.partitions_to_add
        assert "cannot be read with this credential (DescribeConfigs refused)" in diff.describe()
    result = _vigil_as(applied, DETECT, "topics", "list", "--all")
    # (The note is in the status column: folded there at the runner's width, so not matched.)
    assert result.exit_code == 0, result.output or repr(result.exception)
    assert result.exception is None


def test_a_wrong_password_is_said_at_once_without_showing_it(cluster: _Cluster, tmp_path: Path) -> None:
    # A SASL failure was said only after the check's whole 10 s (an operator's-view review);
    # no waiting cures it, so it is said as soon as the client reports it.
    wrong = load_settings(
        kafka_bootstrap=cluster.broker.bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=SOURCE,
        kafka_sasl_password="wrong-hunter2",  # noqa: S106 - a test value
        home=tmp_path,
    )
    with pytest.raises(BrokerError) as refused:
        client.check_reachable(wrong)
    said = str(refused.value)
    assert "waiting would not help" in said  # (not "within 10s")
    assert "uthentication" in said
    assert "hunter2" not in said
