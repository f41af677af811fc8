"""A vectorised operator (SlidingCountSum) on the real broker: its per-batch state survives a
restart on another machine (restored from the changelog), exactly once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.integration.stream.conftest import Running, home_at, make_topics, produce, wait_for
from tests.integration.stream.test_app import output_ids
from tests.unit.stream.test_vectorised import PER_BATCH, PerBatch, PerEvent, shuffled_payments

from vigil.config import Settings
from vigil.stream.app import Application
from vigil.testing import run_operators

Start = Callable[[Application], Running]


def batch_app(settings: Settings, name: str, src: str, out: str) -> Application:
    return Application(
        settings,
        name=name,
        inputs=[src],
        operators=[PerBatch(out)],
        guarantee="exactly_once",
        checkpoint_interval_s=0.1,
        batch_size=64,
        instance_id="t1",
    )


def test_batch_window_state_is_restored_from_the_changelog_exactly_once(
    settings: Settings, tmp_path: Path, names: Callable[[str], str], run_app: Start
) -> None:
    src, out, name = names("in"), names("out"), names("app")
    make_topics(settings, src, out)
    stream = shuffled_payments(2500, 8)
    first, second = stream[:1500], stream[1500:]
    late_first = len(run_operators([PerEvent()], first, partitions=3).late)

    produce(settings, src, first)
    running = run_app(batch_app(settings, name, src, out))
    wait_for(lambda: running.app.metrics.processed >= 1500, 60, "1500 records processed")
    running.stop()
    assert not running.errors
    assert running.app.metrics.late == late_first > 0
    assert (settings.home / "state" / name / PER_BATCH.id).is_dir()

    # Another machine: nothing on disk, the windows' chunks come back from the changelog.
    fresh = home_at(settings, tmp_path / "fresh")
    produce(settings, src, second)
    moved = run_app(batch_app(fresh, name, src, out))
    wait_for(lambda: moved.app.metrics.processed >= 1000, 60, "1000 more records processed")
    moved.stop()
    assert not moved.errors
    assert moved.app.metrics.restored_records > 0

    # Every accepted event answered once, with the count and total the record-by-record window
    # gives over the whole stream (ids carry both).
    want = [e.event_id for e in run_operators([PerEvent()], stream, partitions=3).emitted("per-event")]
    got = output_ids(settings, out)
    assert len(got) == len(set(got))
    assert sorted(got) == sorted(want)
