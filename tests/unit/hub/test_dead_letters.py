"""Dead letters without a broker: reasons grouped by shape, and which topics a redrive may write."""

from __future__ import annotations

import pytest

from vigil.hub.dlq import reason_shape
from vigil.hub.redrive import INPUT_TOPIC


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
        # A header's name is the cause's, not a value: it was quoted, and blanked.
        (
            "raw.bitcoin: header `vigil.received_at` is missing; got [('vigil.kind', 'x')]",
            "raw.bitcoin: header `vigil.received_at` is missing; got [(…, …)]",
        ),
    ],
)
def test_reason_shape(reason: str, shape: str) -> None:
    assert reason_shape(reason) == shape


def test_two_letters_of_one_cause_share_a_shape_and_of_two_causes_do_not() -> None:
    one = reason_shape("syslog/syslog: line 7: expected a PRI, got '<999>'")
    assert one == reason_shape("syslog/syslog: line 12: expected a PRI, got 'hello'")
    assert one != reason_shape("syslog/syslog: line 7: expected a timestamp, got '<999>'")
    assert len(reason_shape("x" * 10_000)) == 200


@pytest.mark.parametrize(
    "topic",
    ["raw.coinbase", "raw.bitcoin", "events.identity", "events.chain", "detect.routed",
     "demo-3f2a.raw.coinbase", "test.run_1.events.payments"],
)  # fmt: skip
def test_stages_inputs_may_be_redriven_to(topic: str) -> None:
    assert INPUT_TOPIC.fullmatch(topic)


@pytest.mark.parametrize(
    "topic",
    ["vigil.cursors", "intel.indicators", "decisions", "alerts", "labels", "dlq.normalize", "events.nothing",
     "raw.COINBASE", "a b.raw.x", "a/b.raw.x", "raw.", "events.identity.x", "vigil-test-raw.coinbase",
     # Vigil's own topics that a prefix and a name make look like inputs (found in review):
     "vigil.cursors.raw.main", "test.vigil.cursors.events.payment", "fraud.raw.late", "fraud.raw.peers",
     "app.changelog.raw.coinbase", "app.repartition.events.identity", "dlq.raw.redriven"],
)  # fmt: skip
def test_other_topics_may_not(topic: str) -> None:
    # A letter's topic is data: an old record appended to vigil.cursors rewinds a connector.
    assert not INPUT_TOPIC.fullmatch(topic)
