"""The canonical contracts: round trips, named decode errors, UTC, schema drift."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from tests.hashseed import run_with_hash_seed

from vigil.errors import DecodeError
from vigil.events import EVENT_TYPES, EventCodec, decode_event, encode, stable_id
from vigil.events.examples import example_events
from vigil.events.ids import stable_hash
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


def test_naive_datetime_is_rejected_by_the_codec_and_the_schema() -> None:
    raw = b'{"type":"login","event_id":"x","source":"backend","occurred_at":"2026-01-01T00:00:00"}'
    with pytest.raises(DecodeError, match="timezone"):
        decode_event(raw)
    # A validator checks "format" only when asked: the schema's pattern refuses it regardless.
    assert _schema_errors("login", raw)
    for zoned in (b"2026-01-01T00:00:00Z", b"2026-01-01T00:00:00.5+05:30", b"2026-01-01T00:00:00-01:00"):
        ok = raw.replace(b"2026-01-01T00:00:00", zoned)
        assert decode_event(ok).occurred_at.tzinfo is not None
        assert _schema_errors("login", ok) == []


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
    # A field before the type tag is skipped over by recursing into it: nested this deep, msgspec
    # raised RecursionError, which no caller expected of a decode.
    deep = b'{"zz":' + b"[" * 100_000 + b"]" * 100_000 + b',"type":"payment"}'
    with pytest.raises(DecodeError, match=r"^line 3: not valid JSON: nested too deeply"):
        decode_event(deep, where="line 3")


def test_codec_restricted_to_topic_types_rejects_others() -> None:
    login = next(e for e in example_events(AT) if isinstance(e, Login))
    with pytest.raises(DecodeError):
        EventCodec([Deposit]).decode(encode(login))


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_a_codec_of_one_type_requires_the_type_tag_as_the_schema_does(event_type: str) -> None:
    # Decoded into its one struct, a record without "type" was taken (events.security,
    # intel.indicators, alerts: `vigil produce`, `vigil tail`, the intel feed), which the schema
    # and the runtime's codec of every type refuse.
    doc = msgspec.json.decode(encode(next(e for e in example_events(AT) if e.type == event_type)))
    del doc["type"]
    untagged = msgspec.json.encode(doc)
    cls = EVENT_TYPES[event_type]
    for codec in (EventCodec([cls]), EventCodec([cls, Login if cls is not Login else Deposit]), EventCodec()):
        with pytest.raises(DecodeError, match="Object missing required field `type`"):
            codec.decode(untagged)
    assert _schema_errors(event_type, untagged)
    assert (
        type(EventCodec([cls]).decode(encode(next(e for e in example_events(AT) if e.type == event_type))))
        is cls
    )
    doc["type"] = "\x00no-event"  # the codec's own placeholder type names no event either
    with pytest.raises(DecodeError, match=r"\$\.type"):
        EventCodec([cls]).decode(msgspec.json.encode(doc))


def _with(event_type: str, path: str, value: Any) -> bytes:
    """The example event of ``event_type`` with the field at ``path`` (dots; ``[0]`` a list item) set."""
    doc = msgspec.json.decode(encode(next(e for e in example_events(AT) if e.type == event_type)))
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    name, _, index = last.partition("[")
    if index:
        node[name] = [value]
    else:
        node[name] = value
    return msgspec.json.encode(doc)


def _schema_errors(event_type: str, data: bytes) -> list[str]:
    schema = json.loads((REPO / "schemas" / f"event.{event_type}.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [e.message for e in validator.iter_errors(json.loads(data))]


# Values the contract refuses: each a fact that cannot be (an empty id deduplicated unrelated events
# into one, a negative amount lowered a rule's sums).  The committed JSON Schema refuses them too.
OUT_OF_BOUNDS = [
    ("payment", "payload.amount", -5000.0, r"Expected `float` >= 0.0 - at `\$\.payload\.amount`"),
    ("withdrawal_request", "payload.amount_usd", -0.01, r">= 0.0 - at `\$\.payload\.amount_usd`"),
    ("trade", "payload.quantity", -1.0, r"at `\$\.payload\.quantity`"),
    ("payment", "event_id", "", r"Expected `str` of length >= 1 - at `\$\.event_id`"),
    ("payment", "source", "", r"at `\$\.source`"),
    ("payment", "entities.customer", "", r"length >= 1 - at `\$\.entities\.customer`"),
    ("chain_transfer", "entities.wallet", "", r"at `\$\.entities\.wallet`"),
    ("payment", "payload.payment_id", "", r"at `\$\.payload\.payment_id`"),
    ("chain_transfer", "payload.value_raw", -(2**70), r"Expected `int` >= 0 - at `\$\.payload\.value_raw`"),
    ("crm_record_export", "payload.record_count", -1, r"at `\$\.payload\.record_count`"),
    (
        "email_campaign_sent",
        "payload.recipient_customer_ids[0]",
        "",
        r"at `\$\.payload\.recipient_customer_ids\[0\]`",
    ),
    ("login", "payload.geo.lat", 91.0, r"<= 90.0 - at `\$\.payload\.geo\.lat`"),
    ("login", "payload.geo.lon", -180.5, r">= -180.0 - at `\$\.payload\.geo\.lon`"),
    ("intel_indicator", "payload.confidence", 101, r"<= 100 - at `\$\.payload\.confidence`"),
    ("intel_indicator", "payload.value", "", r"at `\$\.payload\.value`"),
    ("login", "schema_version", 0, r">= 1 - at `\$\.schema_version`"),
    # What an analyst typed for a release goes to logs and audit exports as it is: no control
    # characters (a last newline too), separators or bidirectional controls, whoever wrote it.
    ("release", "payload.reason", "called\nFAKE: approved", r"matching regex .* - at `\$\.payload\.reason`"),
    ("release", "payload.reason", "called the customer\n", r"at `\$\.payload\.reason`"),
    ("release", "payload.released_by", "alice\u202eeciLA", r"at `\$\.payload\.released_by`"),
    ("release", "payload.released_by", "al\x1b[2Jice", r"at `\$\.payload\.released_by`"),
    ("release", "payload.reason", "\x85", r"at `\$\.payload\.reason`"),
    ("release", "payload.reason", "a\u2028b", r"at `\$\.payload\.reason`"),
    ("release", "payload.reason", "x\u2067y", r"at `\$\.payload\.reason`"),
    ("release", "payload.reason", "\u200f", r"at `\$\.payload\.reason`"),
    ("release", "payload.reason", "\u061c", r"at `\$\.payload\.reason`"),
    ("release", "payload.released_by", "alice\u200b", r"at `\$\.payload\.released_by`"),
    ("release", "payload.released_by", "\ufeffalice", r"at `\$\.payload\.released_by`"),
    ("release", "payload.released_by", "al\u2063ice", r"at `\$\.payload\.released_by`"),
    ("release", "payload.reason", "x" * 1001, r"length <= 1000 - at `\$\.payload\.reason`"),
]


@pytest.mark.parametrize(
    ("event_type", "path", "value", "message"),
    OUT_OF_BOUNDS,
    ids=[f"{c[0]}:{c[1]}={c[2]!r:.12}" for c in OUT_OF_BOUNDS],
)
def test_values_out_of_bounds_are_refused_by_name_by_the_codec_and_the_schema(
    event_type: str, path: str, value: Any, message: str
) -> None:
    data = _with(event_type, path, value)
    with pytest.raises(DecodeError, match=message):
        decode_event(data)
    assert _schema_errors(event_type, data), f"the JSON Schema of {event_type} took {path}={value!r}"


# The bounds themselves are in: nothing the old contract took in range is refused now.
AT_BOUNDS = [
    ("payment", "payload.amount", 0.0),
    ("deposit", "payload.amount", 0.0),
    ("trade", "payload.price", 0.0),
    ("login", "payload.geo.lat", 90.0),
    ("login", "payload.geo.lon", -180.0),
    ("chain_transfer", "payload.value_raw", 0),
    ("chain_transfer", "payload.value_raw", 2**256 - 1),
    ("login", "payload.geo.lat", -90.0),
    ("login", "payload.geo.lon", 180.0),
    ("intel_indicator", "payload.confidence", 0),
    ("payment", "entities.customer", "c"),
    ("release", "payload.reason", "Called the customer (+44 20 7946 0000): it was her; é 漢 😀"),
    ("release", "payload.released_by", "x" * 100),
]


@pytest.mark.parametrize(
    ("event_type", "path", "value"), AT_BOUNDS, ids=[f"{c[0]}:{c[1]}={c[2]!r:.12}" for c in AT_BOUNDS]
)
def test_values_at_the_bounds_are_taken_by_the_codec_and_the_schema(
    event_type: str, path: str, value: Any
) -> None:
    data = _with(event_type, path, value)
    assert msgspec.json.decode(encode(decode_event(data))) == msgspec.json.decode(data)
    assert _schema_errors(event_type, data) == []


def test_stable_id_is_deterministic_and_unambiguous() -> None:
    assert stable_id("a", "bc") == stable_id("a", "bc")
    assert stable_id("a", "bc") != stable_id("ab", "c")
    assert len(stable_id("x")) == 32


# Computed once from the blake2b implementation.  Ids are persisted and deduplicated on
# across processes and releases, so any change to these values is a breaking change.
PINNED_STABLE_IDS = [
    (("a", "bc"), "", "2e59d15427dc6a6a3c4a50be48ecb260"),
    (("ab", "c"), "", "4162491f24e2a1dbaab3ca42bdf6415b"),
    (("x",), "", "eaff949259ee4725d2eef37d575fcb37"),
    (("vigil", 42), "ev_", "ev_774542c61cec90f2dd95f9899d93cb28"),
    ((), "", "cae66941d9efbd404e4d88758ea67670"),
]


@pytest.mark.parametrize(("parts", "prefix", "expected"), PINNED_STABLE_IDS)
def test_stable_id_matches_pinned_values(parts: tuple[object, ...], prefix: str, expected: str) -> None:
    assert stable_id(*parts, prefix=prefix) == expected


def test_stable_hash_matches_pinned_values() -> None:
    assert stable_hash("acct-1") == 3311129111045321560
    assert stable_hash(b"acct-1") == 3311129111045321560


_IDS_SNIPPET = (
    "from vigil.events import stable_id\n"
    "from vigil.events.ids import stable_hash\n"
    "print(stable_id('a', 'bc'), stable_id('vigil', 42, prefix='ev_'), stable_hash('acct-1'))\n"
)


def test_stable_ids_are_the_same_in_processes_with_different_hash_seeds() -> None:
    outputs = [run_with_hash_seed(_IDS_SNIPPET, seed) for seed in ("1", "2")]
    assert outputs[0] == outputs[1]
    assert outputs[0].split() == [
        "2e59d15427dc6a6a3c4a50be48ecb260",
        "ev_774542c61cec90f2dd95f9899d93cb28",
        "3311129111045321560",
    ]


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
