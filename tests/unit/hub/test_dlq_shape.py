"""Reasons grouped by shape: the particulars blanked, the cause kept."""

from __future__ import annotations

import pytest

from vigil.hub.dlq import reason_shape


@pytest.mark.parametrize(
    ("reason", "shape"),
    [
        (
            "coinbase/ws_message: line 3: got 'abc' - at `$.payload.amount`",
            "coinbase/ws_message: line #: got … - at `$.payload.amount`",
        ),
        (
            "Expected `str` of length >= 1 - at `$.entities.customer`",
            "Expected `str` of length >= # - at `$.entities.customer`",
        ),
        (
            "binance/ws_message: Invalid UTF-8 encoded string",
            "binance/ws_message: Invalid UTF-8 encoded string",
        ),
        ('ingest: item 12 "x" at offset 4096', "ingest: item # … at offset #"),
    ],
)
def test_reason_shape(reason: str, shape: str) -> None:
    assert reason_shape(reason) == shape


def test_two_letters_of_one_cause_share_a_shape_and_of_two_causes_do_not() -> None:
    one = reason_shape("syslog/syslog: line 7: expected a PRI, got '<999>'")
    assert one == reason_shape("syslog/syslog: line 12: expected a PRI, got 'hello'")
    assert one != reason_shape("syslog/syslog: line 7: expected a timestamp, got '<999>'")
    assert len(reason_shape("x" * 10_000)) == 200
