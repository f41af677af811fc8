"""Event-time alignment across an application's processes: the others' floors and the cap they
put on a member (no broker; the broker test is tests/integration/stream/test_peers.py)."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest

from vigil.config import load_settings
from vigil.errors import ConfigError
from vigil.stream.app import Application
from vigil.stream.peers import TTL_S, PeerFloors, Word, peers_topic_spec

WALL = 1_000_000.0


def floors(skew: float = 60.0) -> PeerFloors:
    f = PeerFloors("me", skew)
    f.wall = lambda: WALL
    return f


def test_the_cap_is_the_slowest_other_members_floor_plus_the_skew() -> None:
    f = floors()
    assert f.cap(0.0) == math.inf  # alone: no limit
    f.heard("b", Word(500.0, WALL), 0.0)
    f.heard("c", Word(200.0, WALL), 0.0)
    f.heard("d", Word(None, WALL), 0.0)  # holds nothing (caught up): no limit from it
    assert f.cap(1.0) == 260.0
    assert f.slowest(1.0) == ("c", 200.0)
    f.heard("c", Word(450.0, WALL), 2.0)  # its latest word counts
    assert f.cap(2.0) == 510.0


def test_its_own_word_is_not_a_peers() -> None:
    f = floors()
    f.heard("me", Word(10.0, WALL), 0.0)  # (an earlier run's, read back from the topic)
    assert f.cap(0.0) == math.inf


def test_a_word_not_renewed_within_the_ttl_stops_counting() -> None:
    f = floors()
    f.heard("b", Word(100.0, WALL), 0.0)
    assert f.cap(TTL_S - 0.1) == 160.0
    assert f.cap(TTL_S) == math.inf  # (a member killed mid-backlog)
    assert "b" not in f.peers


def test_a_word_published_longer_ago_than_the_ttl_is_not_taken() -> None:
    f = floors()
    f.heard("b", Word(100.0, WALL - TTL_S - 1), 0.0)  # left by a process killed before this start
    assert f.cap(0.0) == math.inf


def test_a_withdrawn_word_stops_counting_at_once() -> None:
    f = floors()
    f.heard("b", Word(100.0, WALL), 0.0)
    f.heard("b", None, 1.0)  # the tombstone a member leaves when it closes
    assert f.cap(1.0) == math.inf


def test_the_slowest_member_is_never_held_by_the_others() -> None:
    # Each member's cap is the others' lowest floor plus the skew: the one with the lowest floor
    # gets a cap above its own, so members cannot all wait on each other.
    members = {"a": 100.0, "b": 400.0, "c": 1_000.0}
    caps = {}
    for me in members:
        f = PeerFloors(me, 60.0)
        f.wall = lambda: WALL
        for other, floor in members.items():
            f.heard(other, Word(floor, WALL), 0.0)
        caps[me] = f.cap(0.0)
    assert caps == {"a": 460.0, "b": 160.0, "c": 160.0}
    assert caps["a"] > members["a"]


def test_the_topic_is_compacted_with_one_partition_and_words_round_trip() -> None:
    spec = peers_topic_spec("app")
    assert (spec.name, spec.partitions, spec.cleanup) == ("app.peers", 1, "compact")
    word = Word(-1e18, WALL)
    assert msgspec.json.decode(msgspec.json.encode(word), type=Word) == word


@pytest.mark.parametrize("skew", [-1.0, math.inf, math.nan])
def test_a_bad_skew_is_refused(skew: float) -> None:
    with pytest.raises(ValueError, match="skew_s >= 0"):
        PeerFloors("me", skew)


def test_the_application_refuses_peer_alignment_without_alignment_or_with_a_bad_skew(tmp_path: Path) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    with pytest.raises(ConfigError, match="needs its inputs aligned in event time"):
        Application(settings, name="a", inputs=["t"], operators=[], peer_skew_s=60.0)
    with pytest.raises(ConfigError, match="peer_skew_s"):
        Application(
            settings, name="a", inputs=["t"], operators=[], max_event_time_skew_s=10.0, peer_skew_s=-1.0
        )
    app = Application(
        settings, name="a", inputs=["t"], operators=[], max_event_time_skew_s=10.0, peer_skew_s=60.0
    )
    assert app.peer_skew_s == 60.0
