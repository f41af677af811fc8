"""A back-end event reaches its canonical topic in one spelling, by the normalise stage or by
`vigil produce`: times in UTC (a payload's too), the IP and addresses canonical."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from vigil.cli.topics import _as_normalised
from vigil.errors import ContractError
from vigil.events.base import Entities, Event
from vigil.events.codec import encode
from vigil.events.types import (
    FailedLogin,
    FailedLoginPayload,
    IntelIndicator,
    IntelIndicatorPayload,
    OrderCancel,
    OrderCancelPayload,
)
from vigil.hub.raw import RawRecord
from vigil.sources.backend import BackendNormalizer

RECEIVED = datetime(2026, 11, 29, 9, tzinfo=UTC)
PLUS_5 = timezone(timedelta(hours=5))


def normalised(event: Event) -> Event:
    (out,) = BackendNormalizer().normalize(RawRecord("backend", "canonical", encode(event), RECEIVED))
    return out


def failed_login(ip: str, at: datetime) -> FailedLogin:
    return FailedLogin(
        event_id=f"f-{ip}",
        source="auth",
        occurred_at=at,
        entities=Entities(ip=ip),
        payload=FailedLoginPayload(username="alice"),
    )


def cancel(placed_at: datetime) -> OrderCancel:
    return OrderCancel(
        event_id="c1",
        source="exchange",
        occurred_at=RECEIVED - timedelta(minutes=1),
        entities=Entities(account="a1", customer="c1"),
        payload=OrderCancelPayload(order_id="o1", symbol="BTC-USD", side="buy", placed_at=placed_at),
    )


@pytest.mark.parametrize(
    "event",
    [
        failed_login("2001:DB8:0::7", RECEIVED.astimezone(PLUS_5)),
        failed_login("::ffff:198.51.100.20", RECEIVED),
        cancel(datetime(2026, 11, 29, 13, tzinfo=PLUS_5)),
    ],
)
def test_produce_writes_what_the_normalise_stage_would(event: Event) -> None:
    # `vigil produce` canonicalised the addresses alone: "2001:DB8::7" beside "2001:db8::7" were
    # two IPs to credential stuffing, and a key made from "::ffff:198.51.100.20" and used from
    # "198.51.100.20" a new IP (a hold on a legitimate bot's withdrawal).
    produced = _as_normalised(event, RECEIVED, where="line 1")
    assert encode(produced) == encode(normalised(event))
    assert b"+05:00" not in encode(produced)


def test_a_payload_time_is_taken_in_utc() -> None:
    (event,) = [normalised(cancel(datetime(2026, 11, 29, 13, tzinfo=PLUS_5)))]
    assert isinstance(event, OrderCancel)
    placed = event.payload.placed_at
    assert placed is not None
    assert (placed, placed.utcoffset()) == (datetime(2026, 11, 29, 8, tzinfo=UTC), timedelta(0))


def test_a_payload_time_before_year_one_in_utc_is_refused_naming_it() -> None:
    early = cancel(datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))))
    says = r"\$\.payload\.placed_at '0001-01-01T00:30:00\+01:00' is outside the years 1-9999 in UTC"
    with pytest.raises(ContractError, match=f"raw.backend: {says}"):
        normalised(early)
    with pytest.raises(ContractError, match=f"line 1: {says}"):
        _as_normalised(early, RECEIVED, where="line 1")


def test_produce_refuses_an_ip_that_is_none_as_the_normaliser_does() -> None:
    unknown = failed_login("unknown", RECEIVED)
    with pytest.raises(ContractError, match=r"line 7: entities\.ip 'unknown' is not an IP address"):
        _as_normalised(unknown, RECEIVED, where="line 7")
    with pytest.raises(ContractError, match=r"raw\.backend: entities\.ip 'unknown' is not an IP address"):
        normalised(unknown)


def test_an_event_already_canonical_is_passed_on_as_it_is() -> None:
    event = msgspec.structs.replace(failed_login("198.51.100.20", RECEIVED), ingested_at=RECEIVED)
    assert normalised(event) is not None
    assert _as_normalised(event, RECEIVED, where="line 1") == event


def test_produce_leaves_an_intel_networks_ip_as_the_intel_normaliser_writes_it() -> None:
    # The intel normaliser writes a STIX network into entities.ip: checked as a back-end event's
    # IP, `vigil produce` of a `vigil tail` dump of intel.indicators was refused.
    network = IntelIndicator(
        event_id="i1",
        source="stix",
        occurred_at=RECEIVED,
        entities=Entities(ip="203.0.113.0/24"),
        payload=IntelIndicatorPayload(
            indicator_type="ipv4", value="203.0.113.0/24", category="c2", feed="stix:f", list_version="v1"
        ),
    )
    assert _as_normalised(network, RECEIVED, where="line 1").entities.ip == "203.0.113.0/24"
