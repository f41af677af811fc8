"""Batches kept to what the poll interval allows at the operators' recent cost, and the batch
settings checked when the application is built (the runtime on a broker:
tests/integration/stream/test_app.py, test_batches_too_slow_for_the_poll_interval_shrink_until_they_fit)."""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path

import pytest
from tests.unit.stream.offline import offline_app

from vigil.errors import ConfigError, PipelineError
from vigil.stream.app import _capped_counts, _releasable


def test_a_batch_too_slow_for_the_poll_interval_shrinks_the_next_at_once_and_they_grow_back_slowly(
    tmp_path: Path,
) -> None:
    app = offline_app(tmp_path)
    app._poll_interval_s = 10.0
    assert app._batch_cap == 500
    app._pace_batches(500, 12.5)  # 25 ms a record: 500 outlast the interval
    assert app._batch_cap == 100  # a quarter of it, 2.5 s
    caps = []
    for _ in range(60):
        app._pace_batches(app._batch_cap, app._batch_cap * 0.0001)  # the operator fast again
        caps.append(app._batch_cap)
    assert caps[0] < 150  # (one fast batch is no sign the next will be)
    assert caps == sorted(caps)
    assert caps[-1] == 500  # never past batch_size


def test_transactional_batches_are_kept_to_the_transaction_s_timeout_when_shorter(tmp_path: Path) -> None:
    # A transaction is open from a batch's first output to the checkpoint: 500 records at 10 ms
    # kept it open past an 8 s timeout, well inside the 300 s poll interval, and the broker
    # aborted it again and again (found in review, 2026-12-07).
    app = offline_app(tmp_path)
    app._poll_interval_s, app._txn_timeout_s = 300.0, 8.0
    app._pace_batches(500, 5.0)
    assert app._batch_cap == 200  # a quarter of the timeout, 2 s, at 10 ms a record
    fresh = offline_app(tmp_path / "other", "at_least_once")  # stateless: no transaction
    fresh._poll_interval_s = 300.0
    fresh._pace_batches(500, 5.0)
    assert fresh._batch_cap == 500


def test_an_expired_transaction_makes_batches_smaller_at_once(tmp_path: Path) -> None:
    # The batch that kept the transaction open failed part way (its next output fenced), so it
    # never measured its cost; processed again as large, it expired again, until the stage
    # stopped after four expiries.
    app = offline_app(tmp_path)
    app._poll_interval_s, app._txn_timeout_s = 300.0, 2.0
    app._handed = 500
    assert app._pace_after_expiry(12.0)  # 500 records handed over, open 12 s: >= 24 ms a record
    assert app._batch_cap == 20
    app._handed = 20
    assert app._pace_after_expiry(3.0)  # still too slow: smaller again, by at least a quarter
    assert app._batch_cap <= 5
    app._handed = 5
    assert not app._pace_after_expiry(0.001)  # an expiry that says nothing new makes nothing larger
    assert app._batch_cap <= 5


def test_an_expired_transaction_after_a_measured_batch_leaves_batches_to_its_measure(tmp_path: Path) -> None:
    # At-least-once with state, or exactly-once with outputs early in a batch alone: the batch
    # finished and measured its cost, and the expiry came at the checkpoint; counted again, its
    # cost made batches five times smaller than they need be (found in review, 2026-12-07).
    app = offline_app(tmp_path)
    app._poll_interval_s, app._txn_timeout_s = 300.0, 30.0
    app._handed = 500
    app._count_batch(500, 500, time.perf_counter() - 40.0)  # the batch ends, measured: 80 ms a record
    measured = app._batch_cap
    assert 90 <= measured <= 93  # a quarter of 30 s at 80 ms a record (and the call's own time)
    assert not app._pace_after_expiry(40.5)
    assert app._batch_cap == measured


def test_fast_operators_keep_full_batches(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    for _ in range(100):
        app._pace_batches(500, 0.002)
    assert app._batch_cap == 500


def test_a_cost_per_batch_does_not_shrink_batches_that_fit(tmp_path: Path) -> None:
    # 2 s a batch plus 1 ms a record, a 6 s interval: every batch fitted (2.5 s), but counted
    # per record the cost shrank them to one record (12 records/s instead of 200).
    app = offline_app(tmp_path)
    app._poll_interval_s = 6.0
    for _ in range(50):
        app._pace_batches(app._batch_cap, 2.0 + 0.001 * app._batch_cap)
    assert app._batch_cap == 500


def test_a_release_takes_the_earliest_records_across_partitions_up_to_the_cap() -> None:
    # Aligned, a release held many times a consume's records, and outlasted the interval again
    # and again however small the batches (found in review, 2026-12-05).
    a = deque([(1.0, "a1"), (2.0, "a2"), (5.0, "a5"), (6.0, "a6")])
    b = deque([(3.0, "b3"), (4.0, "b4"), (9.0, "b9")])
    ends = [4, 2]  # (b9 is past the limit: see _releasable)
    assert _capped_counts([a, b], ends, 3) == [2, 1]
    assert _capped_counts([a, b], ends, 5) == [3, 2]
    assert _capped_counts([a, b], ends, 100) == [4, 2]
    assert _releasable(b, 8.0, (math.inf, math.inf), (False, math.inf, -math.inf, math.inf), -math.inf) == (
        2,
        False,
    )


def test_records_with_equal_times_or_behind_one_ahead_are_split_across_releases() -> None:
    # Turned into an earlier limit, the cap let all of them go at once: 2,000 records of one
    # second, or 6,000 behind one record a minute ahead, at a cap of 37.
    ties = [deque((100.0, i) for i in range(2000)) for _ in range(4)]
    assert sum(_capped_counts(ties, [2000] * 4, 37)) == 37
    ahead = deque([(160.0, "ahead"), *((100.0 + i / 100, i) for i in range(6000))])
    assert _capped_counts([ahead], [6001], 37) == [37]


def test_a_cost_per_batch_above_half_the_interval_stops_shrinking_once_smaller_is_no_faster(
    tmp_path: Path,
) -> None:
    # 4 s a batch plus 1 ms a record, a 6 s interval: every batch fitted, but each was taken
    # as too slow, down to one record (0.25 records/s instead of 111).
    app = offline_app(tmp_path)
    app._poll_interval_s = 6.0
    for _ in range(30):
        app._pace_batches(app._batch_cap, 4.0 + 0.001 * app._batch_cap)
    assert app._batch_cap > 100


def test_a_batch_long_ago_does_not_keep_later_ones_large(tmp_path: Path) -> None:
    # One slow batch of 1,000 (4 s), then fast ones, then the operator at 100 ms a record: the
    # rule against a cost per batch kept 300-record batches of 30 s, five times the interval.
    app = offline_app(tmp_path, batch_size=1000)
    app._poll_interval_s = 6.0
    app._pace_batches(1000, 4.0)
    for _ in range(40):
        app._pace_batches(1000, 0.05)
    assert app._batch_cap == 1000
    app._pace_batches(300, 30.0)
    assert app._batch_cap == 15


def test_batches_that_outlast_the_interval_shrink_whatever_came_before(tmp_path: Path) -> None:
    # A catch-up release of 5,000 in 4 s, then 4 ms a record: releases of 1,875 took 7.5 s, past
    # the 6 s interval, and were kept that large.
    app = offline_app(tmp_path, batch_size=2000)
    app._poll_interval_s = 6.0
    app._pace_batches(5000, 4.0)
    app._pace_batches(app._batch_cap, 0.004 * app._batch_cap)
    assert app._batch_cap == 375


def test_a_cost_per_batch_over_the_interval_still_stops_the_application(tmp_path: Path) -> None:
    app = offline_app(tmp_path, batch_size=1000)
    app._poll_interval_s = 6.0
    # (Shrunk to one record, which alone outlasts the interval, three times in a row.)
    for _ in range(5):
        app._pace_batches(app._batch_cap, 7.0 + 0.001 * app._batch_cap)
    assert app._batch_cap == 1
    app._pace_batches(1, 7.001)
    with pytest.raises(PipelineError, match=r"one record took 7\.0 s"):
        app._pace_batches(1, 7.001)


def test_one_record_longer_than_the_poll_interval_three_times_stops_the_application(tmp_path: Path) -> None:
    # Processed again after each, without end.  The records before it since the last commit,
    # processed again in time between, reset a count kept "in a row", and it never stopped.
    app = offline_app(tmp_path)
    app._poll_interval_s = 10.0
    app._pace_batches(1, 11.0)
    app._pace_batches(1, 0.5)
    app._pace_batches(1, 11.0)
    app._pace_batches(1, 0.5)
    with pytest.raises(
        PipelineError, match=r"one record took 11\.0 s in the operators \('nothing'\), 3 times within 30 s"
    ):
        app._pace_batches(1, 11.0)


def test_slow_records_far_apart_do_not_stop_the_application(tmp_path: Path) -> None:
    # (A pause of the machine now and then is no record processed again without end.)
    app = offline_app(tmp_path)
    app._poll_interval_s = 10.0
    for _ in range(5):
        app._pace_batches(1, 11.0)
        app._last_overrun_at -= 31.0  # (as if three intervals went by)
    assert app._overruns == 1


def test_an_aligned_release_larger_than_batch_size_that_outlasts_the_interval_is_capped(
    tmp_path: Path,
) -> None:
    # 20 ms a record fits 500-record batches, but a release of 20,000 took 400 s against 300:
    # the cap stayed at batch_size, so the next release was as large, without end.
    app = offline_app(tmp_path)
    app._pace_batches(500, 10.0)
    assert app._cap > 500
    app._pace_batches(20_000, 400.0)
    assert 3700 <= app._cap <= 3750  # a quarter of the interval at 20 ms
    assert app._batch_cap == 500


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("batch_size", 0),
        ("batch_size", 1_000_001),  # (librdkafka's limit: the first consume raised ValueError)
        ("batch_timeout_s", 0.0),
        ("batch_timeout_s", float("inf")),  # (the idle loop spun a core)
        ("batch_timeout_s", float("nan")),
        ("checkpoint_interval_s", float("nan")),
    ],
)
def test_batch_settings_out_of_range_are_refused_naming_them(
    tmp_path: Path, setting: str, value: float
) -> None:
    with pytest.raises(
        ConfigError, match=r"batch_size 1-1,000,000, batch_timeout_s > 0 and checkpoint_interval_s"
    ):
        offline_app(tmp_path, **{setting: value})
