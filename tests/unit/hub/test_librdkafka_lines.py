"""librdkafka's own log lines go through Vigil's log (``vigil.kafka``), not straight to stderr,
once a minute each, without the warnings that an option is not this client's kind's."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vigil.config import load_settings
from vigil.hub import client
from vigil.hub.broker import free_port_block
from vigil.hub.client import _LibrdkafkaLines, make_producer


def _line(facility: str, text: str) -> logging.LogRecord:
    return logging.LogRecord(
        "vigil.kafka",
        logging.WARNING,
        __file__,
        1,
        "%s [%s] %s",
        (facility, "rdkafka#producer-1", text),
        None,
    )


def test_a_line_repeats_once_a_minute_and_other_kinds_options_are_not_warned_of() -> None:
    lines = _LibrdkafkaLines()
    fail = "127.0.0.1:1/bootstrap: Connect to 127.0.0.1:1 failed: Connection refused (after {}ms)"
    assert lines.filter(_line("FAIL", fail.format(0)))
    assert not lines.filter(_line("FAIL", fail.format(7)))  # the same but for its numbers
    assert lines.filter(_line("FAIL", "another failure"))
    confwarn = (
        "Configuration property fetch.wait.max.ms is a consumer property and will be ignored by this "
        "producer instance"
    )
    assert not lines.filter(_line("CONFWARN", confwarn))
    assert lines.filter(_line("CONFWARN", "Configuration property enable.idempotence is deprecated"))
    lines._last = {key: when - lines.REPEAT_AFTER_S for key, when in lines._last.items()}
    assert lines.filter(_line("FAIL", fail.format(3)))  # a minute on


def test_a_brokers_line_is_not_taken_for_a_repeat_of_anothers() -> None:
    # Names and addresses that differ in digits alone (kafka-1, kafka-2) made one line of every
    # broker's failure: one broker seemed down where three were (found in review).
    lines = _LibrdkafkaLines()
    fail = "sasl_ssl://kafka-{0}:9093/{0}: Connect to ipv4#10.0.0.{0}:9093 failed: refused (after {1}ms)"
    assert [lines.filter(_line("FAIL", fail.format(n, 0))) for n in (1, 2, 3)] == [True, True, True]
    assert not lines.filter(_line("FAIL", fail.format(2, 5)))  # broker 2's again, but for its numbers
    assert lines.filter(_line("FAIL", "10.0.0.4:9092/bootstrap: Connect to ipv4#10.0.0.4:9092 failed"))
    assert lines.filter(_line("FAIL", "10.0.0.5:9092/bootstrap: Connect to ipv4#10.0.0.5:9092 failed"))


def test_a_clients_lines_reach_vigils_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The filter is the process's: a test run before this one whose client failed to connect
    # the same way (a global table's start, test_table_start.py) let its line through within
    # the minute, and this one's was held back as a repeat.
    monkeypatch.setattr(client._LIBRDKAFKA_LINES, "_last", {})
    closed = f"127.0.0.1:{free_port_block(1)}"
    settings = load_settings(
        kafka_bootstrap=closed, home=tmp_path, kafka_client_options={"fetch.wait.max.ms": 100}
    )
    producer = make_producer(settings)
    deadline = time.monotonic() + 20
    with caplog.at_level(logging.DEBUG, logger="vigil.kafka"):
        while time.monotonic() < deadline and not any("FAIL" in r.getMessage() for r in caplog.records):
            producer.poll(0.1)  # (a client's log lines reach the logger when it is polled)
    producer.flush(0)
    lines = [r.getMessage() for r in caplog.records if r.name == "vigil.kafka"]
    assert any(line.startswith("FAIL [") and "Connection refused" in line for line in lines), lines
    assert not any("CONFWARN" in line for line in lines), lines


def test_librdkafka_prints_nothing_to_stderr_itself(tmp_path: Path) -> None:
    # In a process of its own: what librdkafka writes to file descriptor 2 is what a terminal shows.
    closed = f"127.0.0.1:{free_port_block(1)}"
    code = (
        "import logging, time\n"
        "from vigil.config import load_settings\n"
        "from vigil.hub.client import make_producer\n"
        f"p = make_producer(load_settings(kafka_bootstrap={closed!r}, home={str(tmp_path)!r}))\n"
        "d = time.monotonic() + 3\n"
        "while time.monotonic() < d: p.poll(0.1)\n"
        "p.flush(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "|FAIL|" not in done.stderr, done.stderr
