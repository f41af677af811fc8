"""Batches kept to what the poll interval allows at the operators' recent cost, and the batch
settings checked when the application is built (the runtime on a broker:
tests/integration/stream/test_app.py, test_batches_too_slow_for_the_poll_interval_shrink_until_they_fit)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.unit.stream.offline import offline_app

from vigil.errors import ConfigError, PipelineError


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


def test_fast_operators_keep_full_batches(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    for _ in range(100):
        app._pace_batches(500, 0.002)
    assert app._batch_cap == 500


def test_one_record_longer_than_the_poll_interval_in_a_row_stops_the_application(tmp_path: Path) -> None:
    # Processed again after each, without end.  One such batch between others in time is not.
    app = offline_app(tmp_path)
    app._poll_interval_s = 10.0
    app._pace_batches(1, 11.0)
    app._pace_batches(1, 11.0)
    app._pace_batches(1, 0.5)
    app._pace_batches(1, 11.0)
    app._pace_batches(1, 11.0)
    with pytest.raises(
        PipelineError, match=r"one record took 11\.0 s in the operators \('nothing'\), 3 batches"
    ):
        app._pace_batches(1, 11.0)


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
