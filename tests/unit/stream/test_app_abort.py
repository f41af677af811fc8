"""Aborting a transaction: retriable failures are tried again; another failure stops the
application naming the abort (the runtime against a real broker: tests/integration/stream/)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from tests.unit.stream.offline import offline_app

from vigil.errors import PipelineError
from vigil.stream.app import _ABORT_ATTEMPTS, Application, _boot_clock


class Aborting:
    """A transactional producer whose abort_transaction fails with ``failures`` in turn, then
    succeeds."""

    def __init__(self, failures: list[KafkaError]) -> None:
        self.failures = list(failures)
        self.calls = 0

    def abort_transaction(self, timeout: float) -> None:
        self.calls += 1
        if self.failures:
            raise KafkaException(self.failures.pop(0))

    def poll(self, timeout: float) -> int:
        return 0


def app_in_transaction(tmp_path: Path, producer: Aborting) -> Application:
    app = offline_app(tmp_path)
    app._producer = producer  # type: ignore[assignment]
    app._in_txn = True
    app._txn_began = _boot_clock()
    return app


TIMED_OUT = KafkaError(KafkaError._TIMED_OUT, "abort timed out", retriable=True)
NOT_VALID = KafkaError(KafkaError._STATE, "Operation not valid in state Ready")


def test_a_retriable_abort_failure_is_tried_again(tmp_path: Path) -> None:
    producer = Aborting([TIMED_OUT, TIMED_OUT])
    app = app_in_transaction(tmp_path, producer)
    app._abort_txn()
    assert producer.calls == 3
    assert (app._in_txn, app._txn_began) == (False, None)


@pytest.mark.parametrize("failures", [[NOT_VALID], [TIMED_OUT] * _ABORT_ATTEMPTS])
def test_a_failed_abort_stops_the_application_naming_it(tmp_path: Path, failures: list[KafkaError]) -> None:
    # Before, the failure was logged and the next begin_transaction failed inside whichever
    # operator sent the next output, which the error then blamed.
    producer = Aborting(failures)
    app = app_in_transaction(tmp_path, producer)
    with pytest.raises(PipelineError, match=r"^application 'a': aborting the transaction failed: ") as raised:
        app._abort_txn()
    assert failures[-1].str() in str(raised.value)
    assert producer.calls == len(failures)
    assert not app._in_txn


def test_on_the_way_out_a_failed_abort_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # After another error (or closing) that error is the one to report.
    app = app_in_transaction(tmp_path, Aborting([NOT_VALID]))
    with caplog.at_level(logging.WARNING, logger="vigil.stream.app"):
        app._fail()
    assert not app._in_txn
    assert any(
        "abort_transaction" in r.getMessage() and "not valid" in r.getMessage() for r in caplog.records
    )
