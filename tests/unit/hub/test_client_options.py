"""An operator's ``kafka_client_options`` win over Vigil's own tuning, whichever of librdkafka's
names they use (read from librdkafka's own account of its configuration: no broker needed)."""

from __future__ import annotations

import io
import logging
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer

from vigil.config import load_settings
from vigil.hub.client import producer_config


def _effective(conf: dict[str, object], names: tuple[str, ...]) -> dict[str, str]:
    """What librdkafka made of ``conf`` for ``names``, from its ``debug=conf`` log."""
    text = io.StringIO()
    log = logging.getLogger(f"test.librdkafka.{uuid.uuid4().hex}")
    log.setLevel(logging.DEBUG)
    log.addHandler(logging.StreamHandler(text))
    log.propagate = False
    producer = Producer({**conf, "debug": "conf", "logger": log})
    found: dict[str, str] = {}
    deadline = time.monotonic() + 10
    while len(found) < len(names) and time.monotonic() < deadline:
        producer.poll(0.1)  # (the client's log reaches the logger when it is polled)
        for line in text.getvalue().splitlines():
            name, _, value = line.rpartition("]:")[2].strip().partition(" = ")
            if name in names:
                found[name] = value
    producer.flush(0)
    return found


def test_options_given_by_an_alias_win_over_what_vigil_sets_by_the_other_name(tmp_path: Path) -> None:
    # Vigil sets linger.ms 5 and compression.type lz4; an operator's queue.buffering.max.ms 100
    # and compression.codec zstd (librdkafka's other names for them) were ignored.
    settings = load_settings(
        kafka_bootstrap="127.0.0.1:1",
        home=tmp_path,
        kafka_client_options={"queue.buffering.max.ms": 100, "compression.codec": "zstd"},
    )
    got = _effective(producer_config(settings), ("queue.buffering.max.ms", "compression.codec"))
    assert got == {"queue.buffering.max.ms": "100", "compression.codec": "zstd"}
    # Under Vigil's name too: what reads it there (the simulator's codec) found none, and `vigil
    # simulate` stopped on a KeyError (found in review).
    conf = producer_config(settings)
    assert (conf["linger.ms"], conf["compression.type"]) == (100, "zstd")
    # Vigil's own, with no option given.
    plain = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    got = _effective(producer_config(plain), ("queue.buffering.max.ms", "compression.codec"))
    assert got == {"queue.buffering.max.ms": "5", "compression.codec": "lz4"}
