"""When `check_reachable` stops waiting (vigil.hub.client._hopeless): the client's errors as
librdkafka says them (its "all brokers are down" again every 50 ms while they are; nothing when
one is back), judged at a moment.  The waits themselves run against a closed port and a real
SASL broker (tests/unit/test_cli_errors.py, tests/integration/test_acls.py)."""

from __future__ import annotations

from confluent_kafka import KafkaError

from vigil.hub.client import _hopeless

DOWN = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
REFUSED = KafkaError(KafkaError._TRANSPORT, "Connection refused")
AUTH = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error")


def _down_from(start: float, end: float) -> list[tuple[float, KafkaError]]:
    """ "All brokers are down" every 50 ms from ``start`` to ``end``."""
    return [(start + i * 0.05, DOWN) for i in range(int((end - start) / 0.05) + 1)]


def test_brokers_down_since_the_grace_and_still_down_are_given_up_on() -> None:
    errors = [(0.0, REFUSED), *_down_from(0.0, 2.5)]
    assert not _hopeless(errors, 1.0, several=False)  # (a broker starting up gets 2 s)
    assert _hopeless(errors, 2.5, several=False)


def test_a_broker_up_after_a_refusal_is_waited_for() -> None:
    # Refused for 0.3 s, then taken (and slow to answer): given up at 2 s, judged by the first
    # "all brokers are down" alone (found in review).
    errors = [(0.0, REFUSED), *_down_from(0.0, 0.3)]
    assert not _hopeless(errors, 2.5, several=False)
    assert not _hopeless(errors, 9.0, several=False)


def test_an_authentication_failure_is_final_unless_another_broker_may_take_the_client() -> None:
    assert _hopeless([(0.1, AUTH)], 0.2, several=False)
    # Several brokers named: one refusing the credential is not all of them.
    assert not _hopeless([(0.1, AUTH)], 0.2, several=True)
    assert _hopeless([(0.1, AUTH), (0.4, DOWN)], 0.5, several=True)  # every broker failed since
    assert not _hopeless([(0.0, DOWN), (0.1, AUTH)], 0.5, several=True)  # (down before it: not since)
