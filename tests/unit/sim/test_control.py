"""Control of a run: pacing by rate and speed, durations and start times, the labels file."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from vigil.cli.simulate import parse_duration, parse_start
from vigil.errors import ConfigError
from vigil.events.records import EpisodeLabel
from vigil.sim import Simulation
from vigil.sim.publish import _Pacer, write_labels


def test_speed_paces_by_simulated_time() -> None:
    started = time.monotonic()  # before the pacer, which starts its clock when made
    pacer = _Pacer(rate=None, speed=200.0)
    for n, sim_ts in enumerate(range(1_000_000, 1_000_061, 10), 1):
        pacer.wait(n, float(sim_ts))
    # 60 simulated seconds at 200x take at least 0.3 wall seconds.
    assert time.monotonic() - started >= 0.3 - 0.01


def test_rate_caps_events_per_wall_second() -> None:
    started = time.monotonic()
    pacer = _Pacer(rate=1000.0, speed=None)
    for n in range(0, 301, 50):
        pacer.wait(n, 0.0)
    assert time.monotonic() - started >= 0.3 - 0.01


def test_durations_and_starts_parse_or_fail_by_name() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("1.5d") == timedelta(hours=36)
    with pytest.raises(ConfigError, match="--duration must be a duration"):
        parse_duration("soon")
    assert parse_start("2026-11-03T00:00:00+00:00", paced=False) == datetime(2026, 11, 3, tzinfo=UTC)
    assert parse_start(None, paced=False) is None
    live = parse_start(None, paced=True)
    assert live is not None
    assert abs(live - datetime.now(UTC)) < timedelta(minutes=1)
    with pytest.raises(ConfigError, match="time zone"):
        parse_start("2026-11-03T00:00:00", paced=False)


def test_labels_file_round_trips(sim: Simulation, tmp_path: Path) -> None:
    path = tmp_path / "out" / "labels.jsonl"
    n = write_labels(path, sim.labels + sim.lookalikes)
    back = [msgspec.json.decode(line, type=EpisodeLabel) for line in path.read_bytes().splitlines()]
    assert n == len(back) == len(sim.labels) + len(sim.lookalikes)
    assert back == sim.labels + sim.lookalikes
