"""OFAC digital-currency address lists -> sanctioned indicators, on the real SDN lists."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vigil.config import shared_data_dir
from vigil.errors import ContractError
from vigil.events.codec import decode_event, encode
from vigil.events.types import IntelIndicator
from vigil.hub.raw import RawRecord
from vigil.sources.intel import ofac
from vigil.sources.intel.lists import content_version
from vigil.sources.intel.normalize import IntelNormalizer

OFAC = shared_data_dir() / "intel" / "ofac"


def list_record(path: Path, data: bytes | None = None) -> RawRecord:
    data = path.read_bytes() if data is None else data
    meta = {"list": f"ofac.{ofac.asset_of(path.name)}", "format": ofac.FORMAT, "feed": ofac.FEED}
    meta["version"] = content_version(data)
    return RawRecord("intel", "address_list", data, datetime(2026, 11, 29, tzinfo=UTC), b"x", meta)


def indicators(record: RawRecord) -> list[IntelIndicator]:
    events = IntelNormalizer().normalize(record)
    assert all(isinstance(e, IntelIndicator) for e in events)
    return events  # type: ignore[return-value]


def test_every_listed_address_becomes_one_sanctioned_indicator() -> None:
    for path in sorted(OFAC.glob("*.txt")):
        lines = {line.strip() for line in path.read_text().splitlines() if line.strip()}
        events = indicators(list_record(path))
        assert len(events) == len(lines), path.name
        assert {e.payload.category for e in events} == {"sanctioned"}
        assert {e.payload.list_version for e in events} == {content_version(path.read_bytes())}
        assert decode_event(encode(events[0])) == events[0]


def test_eth_addresses_are_lower_cased_and_typed() -> None:
    path = OFAC / "sanctioned_addresses_ETH.txt"
    first = path.read_text().split()[0]
    events = indicators(list_record(path))
    keys = {e.key() for e in events}
    assert f"eth_address:{first.lower()}@{events[0].payload.feed}" in keys
    assert all(e.payload.value == e.payload.value.lower() for e in events)
    assert all(e.entities.wallet == e.payload.value for e in events)


def test_bitcoin_addresses_keep_their_case() -> None:
    path = OFAC / "sanctioned_addresses_XBT.txt"
    values = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    events = indicators(list_record(path))
    assert {e.payload.value for e in events} == set(values)
    kinds = {e.payload.value: e.payload.indicator_type for e in events}
    # Bitcoin shapes are typed btc_address; the upstream XBT list also holds a TRON "T..."
    # address, which must not be mistyped as bitcoin.
    assert all(kinds[v] == "btc_address" for v in values if v.startswith(("1", "3", "bc1")))
    assert Counter(kinds.values())["btc_address"] >= len(values) - 1


def test_asset_of_reads_the_upstream_file_name() -> None:
    assert ofac.asset_of("lists/sanctioned_addresses_USDT.txt") == "USDT"
    assert ofac.asset_of("other.txt") is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"0x01e2919679362dFBC9ee1644Ba9C6da6D6245BB1\n<html>oops</html>\n", r":2: expected one address"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_a_broken_list_raises_with_line_number(data: bytes, reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        IntelNormalizer().normalize(list_record(OFAC / "sanctioned_addresses_ETH.txt", data))


def test_missing_meta_is_a_contract_error() -> None:
    rec = RawRecord("intel", "address_list", b"", datetime.now(UTC), None, {"list": "x"})
    with pytest.raises(ContractError, match=r"meta\.format missing"):
        IntelNormalizer().normalize(rec)


def test_lists_are_fetched_over_http_and_a_failing_url_is_reported(tmp_path: Path) -> None:
    """A real HTTP server on a free loopback port serving the list, like the upstream raw URL."""
    import functools
    import shutil
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from vigil.sources.intel.lists import IntelListSource, ListSpec
    from vigil.sources.sink import MemorySink

    shutil.copy(OFAC / "sanctioned_addresses_ETH.txt", tmp_path / "sanctioned_addresses_ETH.txt")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # the test output stays clean
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        source = IntelListSource(
            [
                ListSpec("ofac.ETH", f"{base}/sanctioned_addresses_ETH.txt", ofac.FORMAT, ofac.FEED),
                ListSpec("ofac.XMR", f"{base}/missing.txt", ofac.FORMAT, ofac.FEED),
            ]
        )
        sink = MemorySink()
        assert source.poll_once(sink, {}) == 1
    finally:
        server.shutdown()
        server.server_close()
    (rec,) = sink.records
    assert rec.value == (OFAC / "sanctioned_addresses_ETH.txt").read_bytes()
    assert "404" in source.errors["ofac.XMR"]
