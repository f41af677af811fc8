"""Exchange feeds: normaliser throughput per core, and the Coinbase recording end to end.

    python -m benchmarks.run feeds          (register "feeds": "benchmarks.feeds" in run.py)

1. Normalisers (Coinbase, Binance) over the recorded sessions' own messages, in one
   process: every message (most are book updates that yield nothing) and trades only.
2. The Coinbase recording (~9,950 messages, 1.4 MB) replayed as fast as possible by the
   local websocket server used in the tests, through :class:`CoinbaseSource` and the
   transactional :class:`KafkaRawSink` into a fresh topic: messages/s from the first
   frame sent to the last one committed.  Uses ``VIGIL_KAFKA_BOOTSTRAP`` or starts a broker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.integration.sources.replay_ws import FEEDS, ReplayServer, load_recording

from benchmarks.broker import bench_broker
from vigil.config import load_settings
from vigil.hub.admin import ensure_topics
from vigil.hub.client import make_admin
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TopicSpec
from vigil.sources.base import Normalizer
from vigil.sources.binance import BinanceNormalizer
from vigil.sources.coinbase import CoinbaseNormalizer, CoinbaseSource
from vigil.sources.sink import KafkaRawSink


def _rate(normalizer: Normalizer, records: list[RawRecord], minimum_s: float) -> tuple[float, int]:
    """Records per second over whole passes until ``minimum_s`` has elapsed; and events per pass."""
    events = sum(len(normalizer.normalize(r)) for r in records)
    passes, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < minimum_s or passes == 0:
        for record in records:
            normalizer.normalize(record)
        passes += 1
    return len(records) * passes / elapsed, events


def _records(source: str, name: str) -> list[RawRecord]:
    now = datetime.now(UTC)
    return [
        RawRecord(source, "ws_message", f, received_at=now) for _, f in load_recording(FEEDS / name).messages
    ]


def run(quick: bool) -> dict[str, Any]:
    seconds = 1.0 if quick else 3.0
    result: dict[str, Any] = {"cpu": os.cpu_count()}
    coinbase = _records("coinbase", "COINBASE.ws.28.0")
    binance = _records("binance", "BINANCE_FUTURES.ws.1.0")
    for label, normalizer, records in (
        ("coinbase", CoinbaseNormalizer(), coinbase),
        ("binance", BinanceNormalizer(), binance),
    ):
        trades = [r for r in records if normalizer.normalize(r)]
        all_rate, events = _rate(normalizer, records, seconds)
        trade_rate, _ = _rate(normalizer, trades * 50, seconds)
        result[label] = {
            "messages": len(records),
            "trades": events,
            "all_per_s": round(all_rate),
            "trades_per_s": round(trade_rate),
        }

    recording = load_recording(FEEDS / "COINBASE.ws.28.0")
    work = Path(tempfile.mkdtemp(prefix="vigil-bench-feeds-"))
    bootstrap, broker = bench_broker(work)
    settings = load_settings(kafka_bootstrap=bootstrap, home=work / "home")
    topic = f"bench.feeds.{uuid.uuid4().hex[:8]}"
    try:
        ensure_topics(
            settings, [TopicSpec(name=topic, key="product", value="raw", description="bench", partitions=6)]
        )
        sink = KafkaRawSink(
            settings, source_id=f"bench-feeds-{uuid.uuid4().hex[:8]}", topic_for=lambda _r: topic
        )
        products = json.loads(recording.sent[0])["product_ids"]
        with ReplayServer(recording, speed=None) as server:
            source = CoinbaseSource(products, url=server.url, channels=["level2", "ticker", "matches"])
            thread = threading.Thread(target=source.run, args=(sink,), daemon=True)
            started = time.perf_counter()
            thread.start()
            while source.stats.messages < len(recording.messages) and thread.is_alive():
                time.sleep(0.005)
            elapsed = time.perf_counter() - started
            source.stop()
            thread.join(15)
        sink.close()
        size = sum(len(f) for _, f in recording.messages)
        result["end_to_end"] = {
            "messages": source.stats.messages,
            "bytes": size,
            "seconds": round(elapsed, 3),
            "messages_per_s": round(source.stats.messages / elapsed),
            "mb_per_s": round(size / elapsed / 1e6, 2),
            "recorded_seconds": round(recording.messages[-1][0] - recording.messages[0][0], 1),
        }
    finally:
        make_admin(settings).delete_topics([topic])
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return result


def markdown(result: dict[str, Any]) -> str:
    e2e = result.get("end_to_end", {})
    lines = [
        "## Exchange feeds",
        "",
        "| normaliser | recorded messages | trades | all messages/s | trade messages/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, name in (("coinbase", "COINBASE.ws.28.0"), ("binance", "BINANCE_FUTURES.ws.1.0")):
        r = result.get(label, {})
        lines.append(
            f"| {label} ({name}) | {r.get('messages', 0):,} | {r.get('trades', 0):,} | "
            f"{r.get('all_per_s', 0):,} | {r.get('trades_per_s', 0):,} |"
        )
    lines += [
        "",
        f"- Coinbase recording end to end (local websocket replay -> CoinbaseSource -> transactional "
        f"KafkaRawSink): {e2e.get('messages', 0):,} messages ({e2e.get('bytes', 0) / 1e6:.1f} MB, "
        f"{e2e.get('recorded_seconds')} s of recorded traffic) in {e2e.get('seconds')} s = "
        f"{e2e.get('messages_per_s', 0):,} messages/s, {e2e.get('mb_per_s')} MB/s.",
        "",
        'Normalisers run in one process on one core; "all messages" is mostly book updates, which are '
        "recognised and yield nothing. The machine is shared, so absolute numbers are noisy.",
    ]
    return "\n".join(lines)
