"""Exactly-once: when an expired transaction's fenced producer is renewed, and when it is not
(the runtime against a real broker: tests/integration/stream/test_app.py, test_a_stall_past_...)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from vigil.config import load_settings
from vigil.errors import PipelineError
from vigil.stream.app import Application, _boot_clock
from vigil.stream.base import Context, Operator, Record


class Nothing(Operator[Any]):
    id = "nothing"

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        pass


class Made:
    """A producer the application made again (never used here)."""

    def purge(self, **kw: object) -> None:
        pass


def expired_app(tmp_path: Path, **kw: Any) -> tuple[Application, list[Made]]:
    """An exactly-once application whose open transaction began 100 s ago, past its 30 s timeout."""
    app = Application(
        load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path),
        name="a",
        inputs=["in"],
        operators=[Nothing()],
        guarantee="exactly_once",
        **kw,
    )
    made: list[Made] = []
    app._new_producer = lambda: made.append(Made()) or made[-1]  # type: ignore[assignment,func-returns-value]
    app._txn_timeout_s = 30.0
    app._txn_began = _boot_clock() - 100
    app._in_txn = True
    return app, made


FENCED = KafkaException(KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True))


def test_an_expired_transaction_renews_its_producer_and_starts_over(tmp_path: Path) -> None:
    app, made = expired_app(tmp_path)
    assert app._renewed_after_timeout(FENCED)
    assert len(made) == 1
    assert app._producer is made[0]
    assert (app._in_txn, app._txn_began, app._lost) == (False, None, True)


def test_renewing_again_and_again_without_a_commit_stops_the_application(tmp_path: Path) -> None:
    # The same work past the timeout each time (a batch slower than transaction.timeout.ms):
    # renewed for ever, nothing would ever be committed, and the loop would look alive.
    app, made = expired_app(tmp_path)
    for _ in range(3):
        app._txn_began = _boot_clock() - 100
        assert app._renewed_after_timeout(FENCED)
    app._txn_began = _boot_clock() - 100
    with pytest.raises(PipelineError, match="expired 4 times in a row without a checkpoint between"):
        app._renewed_after_timeout(FENCED)
    assert len(made) == 3


@pytest.mark.parametrize("case", ["young", "given id", "not fatal", "failed", "stopping"])
def test_what_is_not_an_expired_transaction_is_not_renewed(tmp_path: Path, case: str) -> None:
    # A producer fenced sooner than its timeout is another process's doing; a given instance_id
    # may be a newer twin's, which a stalled process must not fence; an application already
    # failing or stopping says its error and renews nothing.
    app, made = expired_app(tmp_path, **({"instance_id": "t1"} if case == "given id" else {}))
    exc = FENCED
    if case == "young":
        app._txn_began = _boot_clock() - 1
    elif case == "not fatal":
        exc = KafkaException(KafkaError(KafkaError._FENCED, "fenced"))
    elif case == "failed":
        app._failed = True
    elif case == "stopping":
        app.stop()
    assert not app._renewed_after_timeout(exc)
    assert made == []
