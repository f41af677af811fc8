"""The runtime benchmark's measuring parts that need no broker: the alerts expected of an engine
that stopped part way, the latency runs' warm-up skip and pacing, the state's size, the restore
run's values, the output check and the latency points' sustainability."""

from __future__ import annotations

import json
import zlib
from array import array
from pathlib import Path

import msgspec
import pytest
from benchmarks import runtime

from vigil.stream.state import RocksState
from vigil.stream.windows import to_ms


def _partition(i: int) -> int:
    """The partition event ``i`` goes to (librdkafka's default partitioner: CRC-32 of the key)."""
    return zlib.crc32(str(runtime.make_event(i).entities.account).encode()) % runtime.PARTITIONS


def test_the_alerts_expected_of_an_engine_are_those_on_the_events_it_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Few accounts, a payment a minute each: windows fill within a few thousand events.
    monkeypatch.setattr(runtime, "ACCOUNTS", 200)
    monkeypatch.setattr(runtime, "STEP_MS", 60_000 / 200)
    n = 4_000
    alerting = runtime.reference_alert_indices(range(n))
    by_partition: dict[int, list[int]] = {}
    for i in range(n):
        by_partition.setdefault(_partition(i), []).append(i)
    # Read as quix-streams reads: each partition from its start, some much further than others.
    share = {0: 0.2, 1: 0.3, 2: 0.6, 3: 0.6}
    consumed = [i for p, events in by_partition.items() for i in events[: int(len(events) * share[p])]]

    expected = runtime.expected_on(consumed, alerting)

    assert expected == runtime.reference_alert_indices(sorted(consumed))
    assert expected
    # Not the alerts on as many events from the first (what the harness took before).
    assert len(expected) != len(runtime.reference_alert_indices(range(len(consumed))))


def test_a_latency_run_leaves_out_the_records_of_events_sent_in_its_first_second() -> None:
    sent = array("d", [100.0 + i / 1000 for i in range(8_000)])  # 1,000 a second for 8 s
    # Alerts ramp up as windows fill: 10 on events sent 0.5-1 s in, 700 on those sent after.
    alerting = [*range(500, 1_000, 50), *range(1_000, 8_000, 10)]
    arrived = [(i, sent[i] + 0.02) for i in alerting]

    kept = runtime.sent_after(arrived, sent, len(sent), 1.0)

    # All of those sent from the first second on (a share of the records read took 88: the
    # 10 early ones and 78 sent after the first second).
    assert len(kept) == 700
    assert kept == pytest.approx([20.0] * 700)


def test_a_latency_run_skips_nothing_of_what_was_never_sent() -> None:
    assert runtime.sent_after([(0, 1.0)], array("d", [0.0, 0.0]), 2, 1.0) == []
    # Records naming events outside the run's are not its own.
    sent = array("d", [10.0, 11.5])
    assert runtime.sent_after([(1, 11.6), (5, 11.7), (-1, 11.8)], sent, 2, 1.0) == pytest.approx([100.0])


def test_the_load_generator_stamps_a_record_after_waiting_for_room_to_send_it() -> None:
    now = [0.0]

    def advance(seconds: float) -> None:
        now[0] += seconds

    full = {3}

    def send(i: int) -> None:
        if i in full:
            full.discard(i)
            raise BufferError("queue full")

    sent = array("d", bytes(8 * 10))
    # A rate high enough for one burst to send all ten.
    runtime._send_paced(send, 10, 1e6, sent, advance, lambda: now[0], advance)

    assert list(sent[:3]) == pytest.approx([0.001] * 3)
    # The 4th waited 10 ms for room: it (and the rest of the burst) went then.
    assert list(sent[3:]) == pytest.approx([0.011] * 7)


def test_the_state_size_counts_rocksdbs_table_files_alone(tmp_path: Path) -> None:
    store = tmp_path / "app" / "velocity.v1" / "0"
    store.mkdir(parents=True)
    for name, size in (
        ("000008.sst", 1_000),
        ("000004.log", 0),
        ("LOG", 30_000),
        ("LOG.old.1765000000", 20_000),
        ("OPTIONS-000007", 7_578),
        ("MANIFEST-000005", 257),
        ("CURRENT", 16),
        ("rocksdict-config.json", 40),
    ):
        (store / name).write_bytes(b"x" * size)
    (store.parent / "1").mkdir()
    (store.parent / "1" / "000009.sst").write_bytes(b"x" * 500)

    assert runtime.state_data_bytes(tmp_path) == 1_500


def test_the_restore_runs_values_are_what_the_velocity_store_writes(tmp_path: Path) -> None:
    value = runtime.velocity_value(7)
    times, amounts = msgspec.msgpack.decode(value)
    assert len(times) == len(amounts) == 6
    # The same entries through the rule's own window and store, as a checkpoint encodes them.
    state = RocksState(tmp_path / "store", runtime.VELOCITY)
    try:
        for t, amount in zip(times, amounts, strict=True):
            runtime.AGG.update(state, "acct-0000007", t, amount)
        state.seal()
        written = dict(state.encode_sealed())
    finally:
        state.close()
    # The restore run's key for it: ``w:acct-{k:07d}``.
    assert written[b"w:acct-0000007"] == value
    # ~111 bytes, as an account's value is on the throughput input once windows fill.
    assert len(value) == 111
    assert len({runtime.velocity_value(k) for k in range(100)}) == 100


def test_an_alert_of_quix_streams_names_the_event_its_window_ends_at() -> None:
    for i in (0, 1, 4, 5, 11, 12_345, 999_999):
        at = to_ms(runtime.make_event(i).occurred_at)
        assert runtime.event_at(at) == i
        window = {"start": at - 300_000, "end": at, "n": 10, "total": 1_234.0}
        assert runtime.quix_alert_index(json.dumps(window).encode()) == i
    # Events are 1.2 ms apart: some milliseconds have none.
    assert runtime.event_at(to_ms(runtime.T0) + 5) == -1


def test_the_output_check_compares_distinct_alerts_with_those_expected() -> None:
    assert runtime.output_check([1, 1, 2, 3], {1, 2, 3}) == {
        "records": 4,
        "distinct": 3,
        "expected": 3,
        "missing": 0,
        "unexpected": 0,
        "ok": True,
    }
    check = runtime.output_check([1, 2, 5, -1], {1, 2, 3})
    assert (check["missing"], check["unexpected"], check["ok"]) == (1, 2, False)


def test_a_latency_point_is_not_sustainable_when_its_engine_needs_more_than_a_core() -> None:
    # Run 10's 80% point: 6.91 µs of CPU an event at 152,110 a second, halves 189.7 and 648.8 ms.
    point = {"engine_us_per_event": 6.91, "achieved": 152_110, "p50_ms_halves": [189.7, 648.8]}
    reasons = runtime.unsustainable(point)
    assert len(reasons) == 2
    assert "1.05 of a core" in reasons[0]
    assert "from 189.7 ms in the first half of the run to 648.8" in reasons[1]
    # A backlog shows in the halves alone too, whatever the CPU figure says.
    assert len(runtime.unsustainable({"p50_ms_halves": [40.0, 90.0]})) == 1


def test_a_latency_point_behind_from_its_start_is_not_sustainable() -> None:
    # Run 15's vectorised 80% point: 0.96 of a core, its median 635.8 ms in the first half and
    # 917.0 in the second (under 1.5x: grown, but from a backlog it already had).
    point = {"engine_us_per_event": 2.76, "achieved": 346_864, "p50_ms_halves": [635.8, 917.0]}
    (reason,) = runtime.unsustainable(point)
    assert "635.8 ms in the first half of the run already" in reason
    # Run 14's record-by-record 80% point: its halves say it (57.3 then 115.4 ms), once.
    assert len(runtime.unsustainable({"p50_ms_halves": [57.3, 115.4]})) == 1


def test_a_latency_point_that_kept_up_is_not_flagged() -> None:
    # Run 10's 50% point: 0.73 of a core, halves 19.4 and 20.8 ms.
    point = {"engine_us_per_event": 7.69, "achieved": 95_066, "p50_ms_halves": [19.4, 20.8]}
    assert runtime.unsustainable(point) == []
    # Jitter on a small median is not a backlog.
    assert runtime.unsustainable({"p50_ms_halves": [5.0, 9.0]}) == []
