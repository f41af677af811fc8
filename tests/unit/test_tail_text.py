"""`vigil tail` prints a record's key and value as text: keys of canonical topics are entity
ids and raw topics hold what a source sent, so neither may drive the analyst's terminal."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import msgspec
from rich.console import Console
from tests.hostile_outputs import SEQUENCES, drainer_alert_and_hold

from vigil.cli.topics import declared_as, record_text
from vigil.events.codec import EventCodec, encode
from vigil.events.examples import example_events
from vigil.events.types import Alert, Decision, Login
from vigil.hub.topics import TOPICS


def _printed(markup: str) -> str:
    """``markup`` as the console writes it (no colours: only the text's own characters)."""
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(markup, highlight=False, soft_wrap=True)
    return out.getvalue()


def _terminal_safe(text: str) -> bool:
    return all(ch.isprintable() or ch == "\n" for ch in text)


def test_a_raw_records_key_and_bytes_print_as_text() -> None:
    key, body = record_text(b"alice\x1b[8m", (SEQUENCES + " [bold]x[/]").encode(), decoder=None)
    printed = _printed(f"key={key} {body}")
    assert _terminal_safe(printed), repr(printed)
    assert "key=alice\\x1b[8m " in printed
    assert "\\x1b]8;;https://evil.example/" in printed
    assert "[bold]x[/]" in printed  # markup as written, not applied


def test_a_decoded_records_c1_and_bidi_controls_print_as_escapes() -> None:
    # JSON escapes the C0 controls of a decoded record, not C1 CSI (U+009B, which a terminal
    # reads as ESC [) or a right-to-left override (U+202E).
    login = next(e for e in example_events(datetime.now(UTC)) if isinstance(e, Login))
    agent = "Mozilla \x9b2J\u202eexe.txt"
    hostile = msgspec.structs.replace(login, payload=msgspec.structs.replace(login.payload, user_agent=agent))
    key, body = record_text("cust\x9b31m".encode(), encode(hostile), decoder=EventCodec([Login]))
    printed = _printed(f"key={key} {body}")
    assert _terminal_safe(printed), repr(printed)
    assert "key=cust\\x9b31m " in printed
    assert '"user_agent":"Mozilla \\x9b2J\\u202eexe.txt"' in printed


def test_a_long_decoded_record_is_shown_whole() -> None:
    # (inert() bounds an error message; a record is not one.)
    login = next(e for e in example_events(datetime.now(UTC)) if isinstance(e, Login))
    long_agent = "Mozilla/5.0 " + "x" * 3000 + "\u202e"
    hostile = msgspec.structs.replace(
        login, payload=msgspec.structs.replace(login.payload, user_agent=long_agent)
    )
    _, body = record_text(b"k", encode(hostile), decoder=EventCodec([Login]))
    assert "x" * 3000 + "\\u202e" in _printed(body)


def test_a_prefixed_copy_of_a_declared_topic_is_decoded_as_it() -> None:
    # `vigil demo --keep-topics` leaves demo-<run>.alerts and the like: the README's
    # `vigil tail demo-<run>.alerts` printed their bytes cut at 2,000, one alert in six mid-JSON.
    assert declared_as("alerts") is TOPICS.get("alerts")
    assert declared_as("demo-045fac.alerts") is TOPICS.get("alerts")
    assert declared_as("demo-045fac.events.identity") is TOPICS.get("events.identity")
    assert declared_as("sim.a.b.intel.indicators") is TOPICS.get("intel.indicators")
    assert declared_as("demo-045fac.detect-route.changelog.x") is None
    assert declared_as("nothing") is None


def test_a_record_cut_for_printing_says_so() -> None:
    _, body = record_text(b"k", b"y" * 5000, decoder=None)
    printed = _printed(body)
    assert "y" * 2000 in printed
    assert "y" * 2001 not in printed
    assert "(the first 2,000 of 5,000 bytes)" in printed
    _, whole = record_text(b"k", b"y" * 2000, decoder=None)
    assert "bytes)" not in _printed(whole)


def test_a_tombstone_is_shown_as_a_deletion_not_as_a_bad_record() -> None:
    key, body = record_text(b"eth_address:0xabc@ofac", None, decoder=EventCodec([Login]))
    printed = _printed(body)
    assert "tombstone" in printed
    assert "undecodable" not in printed
    assert key == "eth_address:0xabc@ofac"


def _alert_and_decision() -> tuple[Alert, Decision]:
    """An alert and its hold, on an entity and with an explanation an attacker chose."""
    return drainer_alert_and_hold(
        datetime(2026, 11, 29, 5, 27, 3, tzinfo=UTC),
        entity_id=f"0xabc{SEQUENCES}",
        alert_id="alert-2a228e4f5b6c9d0e",
        decision_id="decision-1",
        latency_ms=412.0,
    )


def test_alerts_and_decisions_print_as_an_analyst_reads_them_unless_json_is_asked() -> None:
    # `vigil tail alerts` printed raw JSON only (an analyst's-view review): now the line
    # `vigil demo` prints, and `--json` for a script.
    alert, decision = _alert_and_decision()
    codec = EventCodec([Alert, Decision])
    _, body = record_text(b"k", encode(alert), decoder=codec, lines=True)
    printed = _printed(body)
    assert _terminal_safe(printed), repr(printed)
    assert "    high 2026-11-29 05:27:03Z drainer-approval wallet:0xabc\\x1b[2J" in printed
    assert "alert-2a228e4f5b6c, latency 412 ms" in printed
    assert "approved a drainer named \\x1b[2J" in printed
    assert "[link=https://evil.example/]x[/link]" in printed  # markup as written, not applied
    _, held = record_text(b"k", encode(decision), decoder=codec, lines=True)
    printed = _printed(held)
    assert printed.startswith("hold_withdrawal ")  # (not indented as under its alert in the demo)
    assert _terminal_safe(printed), repr(printed)
    assert "hold_withdrawal wallet:0xabc\\x1b[2J" in printed
    assert (
        "withdrawal wd-1 until released; alert-2a228e4f5b6c: Token approval to a known drainer \\x1b[2J"
    ) in printed
    assert "(drainer-approval v1, severity high)" in printed
    # As JSON, whole.
    _, raw = record_text(b"k", encode(alert), decoder=codec)
    assert _printed(raw).startswith('{"type":"alert","payload":{"rule_id":"drainer-approval"')
    assert msgspec.json.decode(_printed(raw)) == msgspec.json.decode(encode(alert))
