"""Back-end ingest API: what each service's key may send (``backend_scopes``, the ``source`` it may
claim) and what the unauthenticated health answer tells, over real HTTP against the real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from pydantic import SecretStr

from vigil.config import Settings
from vigil.errors import BrokerError, ConfigError
from vigil.events.base import Event
from vigil.events.codec import encode
from vigil.events.examples import example_events
from vigil.events.records import DeadLetter
from vigil.hub.broker import free_port_block
from vigil.hub.raw import RawRecord
from vigil.sources.backend import INGEST_DOMAINS, BackendIngestSource, hash_key
from vigil.sources.sink import MemorySink

KEYS = {  # test values, not secrets
    "loyalty-service": "test-key-loyalty-5d2e",
    "chain-indexer": "test-key-indexer-81aa",
    "crm-sync": "test-key-crm-0c4f",
}
SCOPES = {"chain-indexer": ["chain"], "crm-sync": ["crm_record_export", "login"]}
NDJSON = "application/x-ndjson"


def example(type_name: str, source: str) -> Event:
    (event,) = [e for e in example_events(datetime(2026, 11, 29, 9, tzinfo=UTC)) if e.type == type_name]
    return msgspec.structs.replace(event, source=source)


class Server:
    """The ingest source serving on a free port, publishing into ``sink``."""

    def __init__(self, source: BackendIngestSource, sink: Any) -> None:
        self.source, self.sink = source, sink
        self.thread = threading.Thread(target=source.run, args=(sink,))
        self.thread.start()
        assert source.ready.wait(15)
        self.url = f"http://127.0.0.1:{source.port}/v1"

    def post(self, service: str, events: Sequence[Event | bytes]) -> httpx.Response:
        body = b"\n".join(e if isinstance(e, bytes) else encode(e) for e in events) + b"\n"
        headers = {"Authorization": f"Bearer {KEYS[service]}", "Content-Type": NDJSON}
        return httpx.post(f"{self.url}/events", content=body, headers=headers, timeout=30)

    def close(self) -> None:
        self.source.stop()
        self.thread.join(15)
        assert not self.thread.is_alive()


def serve(sink: Any, **options: Any) -> Server:
    keys = {service: hash_key(key) for service, key in KEYS.items()}
    return Server(BackendIngestSource(keys=keys, port=0, **options), sink)


@pytest.fixture
def server() -> Iterator[Server]:
    """No scopes configured: every service has the default."""
    running = serve(MemorySink(), ack_timeout=5)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def scoped() -> Iterator[Server]:
    running = serve(MemorySink(), scopes=SCOPES, ack_timeout=5)
    try:
        yield running
    finally:
        running.close()


def canonical(server: Server) -> list[bytes]:
    return [r.value for r in server.sink.records if r.kind == "canonical"]


def dead_letters(server: Server) -> list[DeadLetter]:
    return [
        msgspec.json.decode(r.value, type=DeadLetter) for r in server.sink.records if r.kind == "rejected"
    ]


# ---------------------------------------------------------------------- scopes


def test_an_event_outside_the_scope_is_refused_and_dead_lettered_and_the_rest_go_through(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    # The reviewer's case: a loyalty service's key sent on-chain transfers as if it saw the chain.
    login, transfer, redemption = (
        example("login", "loyalty-service"),
        example("chain_transfer", "loyalty-service"),
        example("loyalty_redemption", "loyalty-service"),
    )
    resp = server.post("loyalty-service", [login, transfer, redemption])
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    reason = (
        "type 'chain_transfer' (chain) is outside the scope of service 'loyalty-service': "
        "identity, payments, market (the default scope)"
    )
    assert (doc["accepted"], doc["rejected"], doc["errors"]) == (2, 1, [{"line": 2, "error": reason}])
    assert canonical(server) == [encode(login), encode(redemption)]
    (letter,) = dead_letters(server)
    assert (letter.stage, letter.reason, letter.raw) == ("ingest", f"line 2: {reason}", encode(transfer))
    assert [r.key for r in server.sink.records if r.kind == "rejected"] == [b"loyalty-service"]
    # Refused events from a valid key are a sign of a misconfigured or a compromised service.
    assert any(
        "'loyalty-service' may not send 1 of the events it sent (dead-lettered): chain_transfer from "
        "source 'loyalty-service'" in r.getMessage()
        for r in caplog.records
    )


def test_a_domain_in_a_scope_admits_each_of_its_types_and_replaces_the_default(scoped: Server) -> None:
    transfer, approval = (
        example("chain_transfer", "chain-indexer"),
        example("token_approval", "chain-indexer"),
    )
    resp = scoped.post("chain-indexer", [transfer, approval, example("deposit", "chain-indexer")])
    assert resp.status_code == 200, resp.text
    assert canonical(scoped) == [encode(transfer), encode(approval)]
    # Its entry is all it may send: not the default's payments too.
    assert resp.json()["errors"] == [
        {
            "line": 3,
            "error": "type 'deposit' (payments) is outside the scope of service 'chain-indexer': chain "
            "(its scope in backend_scopes)",
        }
    ]


def test_a_type_in_a_scope_admits_that_type_only(scoped: Server) -> None:
    export, login = example("crm_record_export", "crm-sync"), example("login", "crm-sync")
    resp = scoped.post("crm-sync", [export, example("crm_login", "crm-sync"), login])
    assert resp.status_code == 200, resp.text
    assert canonical(scoped) == [encode(export), encode(login)]
    assert [e["line"] for e in resp.json()["errors"]] == [2]


def test_without_an_entry_a_service_sends_identity_payments_and_market_only(server: Server) -> None:
    ingestible = [
        msgspec.structs.replace(e, source="loyalty-service")
        for e in example_events(datetime(2026, 11, 29, 9, tzinfo=UTC))
        if type(e).domain in INGEST_DOMAINS
    ]
    resp = server.post("loyalty-service", ingestible)
    assert resp.status_code == 200, resp.text
    taken = [encode(e) for e in ingestible if type(e).domain in ("identity", "payments", "market")]
    assert len(taken) == 17
    assert canonical(server) == taken
    refused = {json.loads(letter.raw)["type"] for letter in dead_letters(server)}
    assert refused == {e.type for e in ingestible if type(e).domain in ("chain", "saas", "security")}
    assert refused >= {"chain_transfer", "security_event", "crm_record_export", "token_approval"}


# ---------------------------------------------------------------------- the source an event claims


@pytest.mark.parametrize("source", ["cloudtrail", "ethereum", "hubspot", "coinbase", "taxii", " Ethereum"])
def test_an_event_claiming_a_connectors_source_is_refused(server: Server, source: str) -> None:
    # Read downstream as "seen by that connector": CloudTrail activity, an on-chain transfer.
    resp = server.post("loyalty-service", [example("login", source), example("logout", "loyalty-service")])
    assert resp.status_code == 200, resp.text
    reason = f"source {source!r} is a connector's: its events come from that connector, not the ingest API"
    assert resp.json()["errors"] == [{"line": 1, "error": reason}]
    assert dead_letters(server)[0].reason == f"line 1: {reason}"
    assert len(canonical(server)) == 1


@pytest.mark.parametrize("ip", ["unknown", "-", "10.0.0.1:443", "x" * 5000])
def test_a_client_ip_that_is_no_address_is_refused_naming_it(server: Server, ip: str) -> None:
    # As an IP entity, "unknown" joined every login that had none: per-IP rules (credential
    # stuffing) counted strangers together.
    login = example("login", "loyalty-service")
    bad = msgspec.structs.replace(login, entities=msgspec.structs.replace(login.entities, ip=ip))
    resp = server.post("loyalty-service", [bad, example("logout", "loyalty-service")])
    assert resp.status_code == 200, resp.text
    reason = f"entities.ip {ip[:64]!r} is not an IP address (leave it out when there is none)"
    assert resp.json()["errors"] == [{"line": 1, "error": reason}]
    assert dead_letters(server)[0].reason == f"line 1: {reason}"
    assert len(canonical(server)) == 1


def test_a_scope_does_not_allow_claiming_the_connectors_source(scoped: Server) -> None:
    resp = scoped.post("chain-indexer", [example("chain_transfer", "ethereum")])
    assert resp.status_code == 422, resp.text
    assert "source 'ethereum' is a connector's" in resp.json()["errors"][0]["error"]
    assert canonical(scoped) == []


def test_the_services_own_names_and_backend_are_accepted_as_sources(server: Server) -> None:
    sent = [
        example("login", "backend"),
        example("logout", "loyalty-service"),
        example("order", "matching-engine"),
    ]
    resp = server.post("loyalty-service", sent)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["accepted"], resp.json()["errors"]) == (3, [])


# ---------------------------------------------------------------------- the setting, checked at start


def settings(scopes: dict[str, Any]) -> Settings:
    keys = json.dumps({"loyalty-service": hash_key(KEYS["loyalty-service"])})
    return Settings(backend_keys=SecretStr(keys), backend_scopes=scopes)


def test_scopes_are_read_from_the_settings() -> None:
    source = BackendIngestSource.from_settings(settings({"loyalty-service": ["payments", "login"]}), port="0")
    assert source.scopes.of("loyalty-service") == ("payments", "login")


@pytest.mark.parametrize(
    ("scopes", "says"),
    [
        (
            {"loyalty-service": ["payments", "chian"]},
            r"^backend_scopes: service 'loyalty-service': 'chian' is no event type or domain; "
            r"expected domains \(chain, identity, market, payments, saas, security\) or event types "
            r"\(api_key_created, ",
        ),
        (
            {"ledger": ["chain"]},
            r"^backend_scopes: service 'ledger' has no API key \(services with keys: loyalty-service\)$",
        ),
        (
            {"loyalty-service": ["alerts", "decision"]},
            r"'alerts' is Vigil's own output or list, never taken from the ingest API; .*'decision' is",
        ),
        ({"loyalty-service": []}, r"service 'loyalty-service' has an empty scope"),
    ],
)
def test_a_bad_scope_is_refused_at_start_naming_it(scopes: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        BackendIngestSource.from_settings(settings(scopes), port="0")


def test_the_command_refuses_a_bad_scope_before_serving(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env = clean | {
        "VIGIL_HOME": str(tmp_path),
        # A closed port: had the source been built, the broker check would fail differently.
        "VIGIL_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port_block(1)}",
        "VIGIL_BACKEND_KEYS": json.dumps({"wallet": hash_key("k")}),
        "VIGIL_BACKEND_SCOPES": json.dumps({"wallet": ["identity"], "ledgr": ["payments"]}),
    }
    out = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "source", "backend", "-o", "port=0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 1
    said = out.stderr + out.stdout
    assert "backend_scopes: service 'ledgr' has no API key (services with keys: wallet)" in said
    assert "did not answer" not in said
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------------- health


class UnreachableBroker:
    """A sink whose broker refuses everything, with the kind of text a real failure carries,
    until it is ``down`` no more."""

    down = True

    def publish(self, records: Sequence[RawRecord], cursor: dict[str, Any] | None = None) -> None:
        if self.down:
            raise BrokerError("SASL authentication failed for user vigil-prod at kafka-3.internal:9093")

    def last_cursor(self, source_id: str) -> dict[str, Any] | None:
        return None


def test_health_says_only_whether_the_instance_takes_events(server: Server) -> None:
    resp = httpx.get(f"{server.url}/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "broker_reachable": True, "buffer_full": False}


def test_health_shows_no_broker_error_nor_failed_logins(caplog: pytest.LogCaptureFixture) -> None:
    broker = UnreachableBroker()
    running = serve(broker, max_buffered_records=1, ack_timeout=0.2)
    try:
        assert running.post("loyalty-service", [example("login", "backend")]).status_code == 202
        httpx.post(f"{running.url}/events", content=b"{}", headers={"Authorization": "Bearer guess"})
        deadline = time.monotonic() + 30
        while running.source.buffer is None or running.source.buffer.last_error is None:
            assert time.monotonic() < deadline, "the publisher never failed"
            time.sleep(0.05)
        resp = httpx.get(f"{running.url}/health")  # no key: load balancers have none
    finally:
        broker.down = False  # so that the buffer drains and its publisher ends with the server
        running.close()
    assert resp.status_code == 200
    assert resp.json() == {"status": "degraded", "broker_reachable": False, "buffer_full": True}
    assert "SASL" not in resp.text
    assert "kafka-3" not in resp.text
    # The details are where operators look: the log.
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "kafka-3.internal:9093" in logged
    assert "with an unknown API key" in logged
