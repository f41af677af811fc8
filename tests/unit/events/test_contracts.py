"""The canonical contracts: round trips, named decode errors, UTC, schema drift."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from vigil.errors import DecodeError
from vigil.events import EVENT_TYPES, EventCodec, decode_event, encode, stable_id
from vigil.events.examples import example_events
from vigil.events.schema import drift, generate
from vigil.events.types import Deposit, Login

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[3]


def test_every_type_has_an_example() -> None:
    assert {e.type for e in example_events(AT)} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", example_events(AT), ids=lambda e: e.type)
def test_round_trip(event: object) -> None:
    assert decode_event(encode(event)) == event  # type: ignore[arg-type]


def test_type_tag_is_on_the_wire() -> None:
    login = next(e for e in example_events(AT) if isinstance(e, Login))
    assert msgspec.json.decode(encode(login))["type"] == "login"


def test_wrong_field_type_names_field_expected_and_received() -> None:
    raw = (
        b'{"type":"deposit","event_id":"x","source":"backend","occurred_at":"2026-01-01T00:00:00Z",'
        b'"payload":{"deposit_id":"d","asset":"BTC","amount":"lots"}}'
    )
    with pytest.raises(DecodeError, match=r"Expected `float`, got `str` - at `\$\.payload\.amount`") as info:
        EventCodec([Deposit]).decode(raw, where="in.jsonl:3")
    assert info.value.path == "$.payload.amount"
    assert str(info.value).startswith("in.jsonl:3: ")


def test_missing_required_field_is_named() -> None:
    raw = (
        b'{"type":"deposit","event_id":"x","source":"backend",'
        b'"occurred_at":"2026-01-01T00:00:00Z","payload":{}}'
    )
    with pytest.raises(DecodeError, match="missing required field `deposit_id`"):
        decode_event(raw)


def test_naive_datetime_is_rejected() -> None:
    raw = b'{"type":"login","event_id":"x","source":"backend","occurred_at":"2026-01-01T00:00:00"}'
    with pytest.raises(DecodeError, match="timezone"):
        decode_event(raw)


def test_unknown_type_is_rejected_by_name() -> None:
    with pytest.raises(DecodeError, match="Invalid value 'teleport'"):
        decode_event(b'{"type":"teleport","event_id":"x","source":"s","occurred_at":"2026-01-01T00:00:00Z"}')


def test_attacker_strings_in_errors_are_inert() -> None:
    # An unknown type tag or field name was quoted as given: a newline forged a log line, an
    # ESC sequence drove the terminal that printed the error.
    for data in (b'{"type": "x\\nERROR forged line"}', b'{"type": "x\\u001b]0;pwned\\u0007"}'):
        with pytest.raises(DecodeError) as info:
            decode_event(data)
        text = str(info.value)
        assert text.isprintable(), text
    with pytest.raises(DecodeError, match=r"x\\nERROR forged line"):
        decode_event(b'{"type": "x\\nERROR forged line"}')


def test_errors_quote_a_bounded_part_of_the_input() -> None:
    # msgspec quotes the offending value whole: a 450 KB type tag made a 450 KB error, and its
    # dead letter (with the raw bytes beside it) too large to send, which stalled ingest.
    with pytest.raises(DecodeError) as info:
        decode_event(b'{"type": "' + b"A" * 450_000 + b'"}')
    text = str(info.value)
    assert len(text) < 1_000
    assert "450,0" in text  # says how long the whole was
    # The field path at its end is kept (callers read it, and it says which field was bad).
    raw = b'{"type":"login","event_id":"l","source":"s","occurred_at":"2026-01-01T00:00:00Z",'
    raw += b'"payload":{"method":"' + b"x" * 600 + b'"}}'
    with pytest.raises(DecodeError) as info:
        decode_event(raw)
    assert info.value.path == "$.payload.method"
    assert len(str(info.value)) < 1_000


def test_unknown_field_is_rejected() -> None:
    raw = b'{"type":"logout","event_id":"x","source":"s","occurred_at":"2026-01-01T00:00:00Z","extra":1}'
    with pytest.raises(DecodeError, match="unknown field `extra`"):
        decode_event(raw)


def test_not_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        decode_event(b"{nope", where="line 7")


def test_codec_restricted_to_topic_types_rejects_others() -> None:
    login = next(e for e in example_events(AT) if isinstance(e, Login))
    with pytest.raises(DecodeError):
        EventCodec([Deposit]).decode(encode(login))


def test_stable_id_is_deterministic_and_unambiguous() -> None:
    assert stable_id("a", "bc") == stable_id("a", "bc")
    assert stable_id("a", "bc") != stable_id("ab", "c")
    assert len(stable_id("x")) == 32


def test_committed_schemas_match_the_models() -> None:
    assert drift(REPO / "schemas") == [], "run `vigil schemas export` and commit the result"


def test_schema_describes_payload_fields() -> None:
    text = generate()["event.withdrawal_request.schema.json"]
    schema = msgspec.json.decode(text)
    assert schema["$schema"].endswith("2020-12/schema")
    assert "WithdrawalRequestPayload" in schema["$defs"]
    assert "to_address" in schema["$defs"]["WithdrawalRequestPayload"]["properties"]


def test_a_codec_for_no_types_is_an_error_not_every_type() -> None:
    with pytest.raises(ValueError, match="an empty list of event types"):
        EventCodec([])
    with pytest.raises(ValueError, match="an empty list of event types"):
        EventCodec(t for t in [])
