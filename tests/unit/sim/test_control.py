"""Control of a run: pacing by rate and speed, durations and start times, the labels file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from vigil.cli.simulate import parse_duration, parse_start
from vigil.errors import ConfigError
from vigil.events.records import EpisodeLabel
from vigil.sim import Simulation
from vigil.sim.publish import _Pacer, write_labels


class Clock:
    """A clock that moves only when slept on (plus ``tick`` per reading): the waits asked for."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 100.0
        self.tick = tick
        self.slept: list[float] = []

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_speed_paces_by_simulated_time() -> None:
    clock = Clock()
    pacer = _Pacer(rate=None, speed=200.0, clock=clock, sleep=clock.sleep)
    for n, sim_ts in enumerate(range(1_000_000, 1_000_061, 10)):
        pacer.wait(n, float(sim_ts))
    # 60 simulated seconds at 200x: each 10 s step due 0.05 s after the last; the first at once.
    assert clock.slept == pytest.approx([0.05] * 6)
    assert clock.now - 100.0 == pytest.approx(0.3)


def test_rate_caps_events_per_wall_second() -> None:
    clock = Clock(tick=0.001)  # each reading 1 ms on: a record due earlier goes at once
    pacer = _Pacer(rate=1000.0, speed=None, clock=clock, sleep=clock.sleep)
    for n in range(0, 301, 50):
        pacer.wait(n, 0.0)
    # Record n is due n / 1000 s after the first: never earlier, and no wait longer than that.
    assert all(0 < s <= 0.05 for s in clock.slept)
    assert clock.now - 100.0 == pytest.approx(0.3, abs=0.01)


def test_a_record_already_due_is_not_held() -> None:
    clock = Clock()
    pacer = _Pacer(rate=10.0, speed=None, clock=clock, sleep=clock.sleep)
    pacer.wait(0, 0.0)
    clock.now += 5.0  # the publisher was busy: records 1-50 are due by now
    for n in range(1, 51):
        pacer.wait(n, 0.0)
    assert clock.slept == []


def test_durations_and_starts_parse_or_fail_by_name() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("1.5d") == timedelta(hours=36)
    with pytest.raises(ConfigError, match="--duration must be a duration"):
        parse_duration("soon")
    # Past what a timedelta holds (an OverflowError traceback), and none at all.
    with pytest.raises(
        ConfigError, match=r"--duration must be at most 999,999,999 days; got '99999999999999d'"
    ):
        parse_duration("99999999999999d")
    with pytest.raises(ConfigError, match="--duration must be longer than 0; got '0s'"):
        parse_duration("0s")
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
