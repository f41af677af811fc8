"""The committed JSON Schema files and the decoder take the same documents.

Producers of other teams check their records against ``schemas/`` before sending; Vigil decodes
them with :func:`vigil.events.decode_event`.  Where the two disagreed, a record the schema took was
dead-lettered at the edge ("hello Z" as a time), or one the decoder took could stop a stage later
(a severity of 2**70, which MessagePack state cannot hold).  Each table below is a value put into
one field of an example event, written as raw JSON (``1.0`` and ``10**400`` cannot be spelled
otherwise), with what both sides must say of it.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from vigil.errors import DecodeError
from vigil.events import EVENT_TYPES, decode_event, encode
from vigil.events.examples import example_events
from vigil.events.records import DeadLetter
from vigil.sim import SimConfig, Simulation

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
_HOLE = "\x00value\x00"

TAKEN, REFUSED = True, False


@cache
def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return schema


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_schema(name))


def _schema_takes(name: str, data: bytes) -> bool:
    # Python's own int limit (4300 digits) is lifted while reading: a validator in another
    # language reads such a number, and the question is what the schema says of it.
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        document = json.loads(data)
    finally:
        sys.set_int_max_str_digits(limit)
    return _validator(name).is_valid(document)


def _decoder_takes(data: bytes) -> bool:
    try:
        decode_event(data)
    except DecodeError:
        return False
    return True


def _with(event_type: str, path: str, raw: str) -> bytes:
    """The example event of ``event_type`` with the field at ``path`` (dots) set to the JSON text ``raw``."""
    doc = msgspec.json.decode(encode(next(e for e in example_events(AT) if e.type == event_type)))
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = _HOLE
    return msgspec.json.encode(doc).replace(msgspec.json.encode(_HOLE), raw.encode())


def _disagreements(table: list[tuple[str, str, str, bool]]) -> list[str]:
    out = []
    for event_type, path, raw, expected in table:
        data = _with(event_type, path, raw)
        decoder, schema = _decoder_takes(data), _schema_takes(f"event.{event_type}", data)
        if (decoder, schema) != (expected, expected):
            out.append(f"{event_type} {path}={raw[:60]}: decoder takes {decoder}, schema takes {schema}")
    return out


def _time(value: str, expected: bool) -> tuple[str, str, str, bool]:
    return ("login", "occurred_at", json.dumps(value), expected)


DATE_TIMES = [
    _time("2026-01-01T00:00:00Z", TAKEN),
    _time("2026-01-01T00:00:00+01:00", TAKEN),
    # msgspec reads "+0100" as "+01:00", a space or "t" as "T", "z" as "Z": the schema follows it.
    _time("2026-01-01T00:00:00+0100", TAKEN),
    _time("2026-01-01T00:00:00.5-0530", TAKEN),
    _time("2026-01-01t00:00:00z", TAKEN),
    _time("2026-01-01 00:00:00Z", TAKEN),
    _time("2026-01-01T00:00:00.123456789123Z", TAKEN),
    _time("2024-02-29T00:00:00Z", TAKEN),
    _time("2000-02-29T00:00:00Z", TAKEN),
    _time("0001-01-01T00:00:00Z", TAKEN),
    _time("9999-12-31T23:59:59-23:59", TAKEN),
    _time("hello Z", REFUSED),
    _time("x2026-01-01T00:00:00Z", REFUSED),
    _time("2026-01-01T00:00:00Z\n", REFUSED),
    _time("2026-01-01T00:00:00", REFUSED),
    _time("2026-01-01T00:00Z", REFUSED),
    _time("2026-01-01T00:00:00+99:99", REFUSED),
    _time("2026-01-01T00:00:00+24:00", REFUSED),
    _time("2026-01-01T00:00:00+01", REFUSED),
    _time("2026-02-30T00:00:00Z", REFUSED),
    _time("2026-02-29T00:00:00Z", REFUSED),
    _time("1900-02-29T00:00:00Z", REFUSED),
    _time("2026-04-31T00:00:00Z", REFUSED),
    _time("2026-13-01T00:00:00Z", REFUSED),
    _time("0000-01-01T00:00:00Z", REFUSED),
    _time("2026-01-01T24:00:00Z", REFUSED),
    _time("2026-01-01T00:60:00Z", REFUSED),
    _time("2026-01-01T23:59:60Z", REFUSED),
    _time("2026-01-01T00:00:00,5Z", REFUSED),
    _time("2026-01-01_00:00:00Z", REFUSED),
    _time("\u0662\u0660\u0662\u0666-01-01T00:00:00Z", REFUSED),  # Arabic-Indic digits: Python's \d takes them
]


def test_date_times_are_taken_and_refused_alike() -> None:
    assert _disagreements(DATE_TIMES) == []


def test_the_date_time_pattern_knows_the_calendar_as_the_decoder_does() -> None:
    # Every day of years that are leap years or not by each of the rules (4, 100, 400).
    pattern = re.compile(_schema("event.login")["$defs"]["Login"]["properties"]["occurred_at"]["pattern"])
    differ = []
    for year in (4, 100, 400, 1900, 2000, 2024, 2026, 9999):
        for month in range(14):
            for day in range(33):
                text = f"{year:04d}-{month:02d}-{day:02d}T00:00:00Z"
                if _decoder_takes(_with("login", "occurred_at", json.dumps(text))) != bool(
                    pattern.search(text)
                ):
                    differ.append(text)
    assert differ == []


INTEGERS = [
    ("security_event", "payload.severity", str(2**70), REFUSED),
    ("security_event", "payload.severity", str(2**63), REFUSED),
    ("security_event", "payload.severity", str(2**63 - 1), TAKEN),
    ("security_event", "payload.severity", str(-(2**63)), TAKEN),
    ("security_event", "payload.severity", str(-(2**63) - 1), REFUSED),
    ("login", "schema_version", str(2**70), REFUSED),
    ("login", "schema_version", str(2**63 - 1), TAKEN),
    ("alert", "payload.rule_version", str(2**63), REFUSED),
    ("chain_transfer", "payload.block_number", str(2**63), REFUSED),
    ("chain_transfer", "payload.log_index", str(2**64), REFUSED),
    ("crm_record_export", "payload.record_count", str(2**63 - 1), TAKEN),
    ("loyalty_redemption", "payload.points", str(2**63), REFUSED),
    # On-chain integers are EVM uint256s, kept whole (detection keeps one past 64 bits as a float).
    ("chain_transfer", "payload.value_raw", str(2**256 - 1), TAKEN),
    ("token_approval", "payload.amount_raw", str(2**256 - 1), TAKEN),
    ("token_approval", "payload.token_id", str(2**256 - 1), TAKEN),
]


def test_integers_are_64_bit_in_both_but_on_chain_ones() -> None:
    assert _disagreements(INTEGERS) == []


NUMBERS = [
    ("deposit", "payload.amount", "1" + "0" * 400, REFUSED),
    ("deposit", "payload.amount", "1e400", REFUSED),
    ("alert", "payload.score", "-1e400", REFUSED),
    ("alert", "payload.score", "1e400", REFUSED),
    ("alert", "payload.detection_latency_ms", "1" + "0" * 309, REFUSED),
    ("alert", "payload.score", "1.7976931348623157e308", TAKEN),
    ("alert", "payload.score", "-1.7976931348623157e308", TAKEN),
    ("deposit", "payload.amount", "1e-400", TAKEN),  # underflows to 0.0 on both sides
]


def test_numbers_past_a_double_are_refused_by_both() -> None:
    assert _disagreements(NUMBERS) == []


TEXT = [
    ("login", "event_id", '"\\ud800"', REFUSED),
    ("login", "entities.customer", '"\\udc00"', REFUSED),
    ("login", "payload.user_agent", '"a\\ud800b"', REFUSED),
    ("security_event", "payload.attributes.host", '"\\udfff"', REFUSED),
    ("login", "payload.user_agent", '"\\ud83d\\ude00 \\u00e9"', TAKEN),  # a pair is one character
    ("login", "payload.user_agent", '"\\u0000\\n"', TAKEN),
    # Blank ids are taken by both: refusing them made decoding three times slower (vigil.events.base.Id).
    ("login", "event_id", '" "', TAKEN),
    ("login", "entities.customer", '"\\t"', TAKEN),
    ("login", "event_id", '""', REFUSED),
    # A release's typed text has a pattern of its own, which keeps refusing lone surrogates.
    ("release", "payload.reason", '"a\\ud800b"', REFUSED),
    ("release", "payload.released_by", '"\\udc00"', REFUSED),
    ("release", "payload.reason", '"\\ud83d\\ude00 \\u00e9 \\u200d"', TAKEN),
]


def test_text_is_well_formed_unicode_in_both() -> None:
    assert _disagreements(TEXT) == []


def test_a_lone_surrogate_in_a_map_key_is_refused_by_both() -> None:
    data = _with("security_event", "payload.attributes", '{"\\ud800": "x"}')
    assert (_decoder_takes(data), _schema_takes("event.security_event", data)) == (False, False)


# What JSON Schema cannot say: each file's description says it, and the decoder refuses it.
DECODER_ONLY = [
    ("chain_transfer", "payload.block_number", "1.0", "1.0"),
    ("intel_indicator", "payload.confidence", "100.0", "1.0"),
    ("crm_record_export", "payload.record_count", "1e2", "1e2"),
    ("chain_transfer", "payload.value_raw", "1" + "0" * 4300, "4300 digits"),
    ("login", "occurred_at", '"9999-12-31T23:59:59.9999999Z"', "9999-12-31T23:59:59.999999"),
]


@pytest.mark.parametrize(
    ("event_type", "path", "raw", "said"), DECODER_ONLY, ids=[c[2][:24] for c in DECODER_ONLY]
)
def test_what_the_schema_cannot_refuse_its_description_says(
    event_type: str, path: str, raw: str, said: str
) -> None:
    data = _with(event_type, path, raw)
    assert not _decoder_takes(data)
    assert _schema_takes(f"event.{event_type}", data)  # if this fails, move the case to a table above
    assert said in _schema(f"event.{event_type}").get("description", "")


def _dead_letter(raw: str) -> bytes:
    return (
        b'{"stage":"s","reason":"r","topic":"t","partition":0,"offset":0,'
        b'"failed_at":"2026-01-01T00:00:00Z","raw":' + raw.encode() + b"}"
    )


def test_bytes_are_padded_base64_in_both() -> None:
    differ = []
    for raw, expected in [('""', TAKEN), ('"QUJD"', TAKEN), ('"QQ=="', TAKEN), ('"QQ"', REFUSED)]:
        data = _dead_letter(raw)
        try:
            msgspec.json.decode(data, type=DeadLetter)
            decoder = True
        except msgspec.ValidationError:
            decoder = False
        schema = _schema_takes("record.dead_letter", data)
        if (decoder, schema) != (expected, expected):
            differ.append(f"raw={raw}: decoder takes {decoder}, schema takes {schema}")
    for raw in ('"QUJD\\n"', '"QUJD="', '"QUI-"'):
        data = _dead_letter(raw)
        if _schema_takes("record.dead_letter", data):
            differ.append(f"raw={raw}: schema takes it")
    assert differ == []


_UTC_TIME = re.compile(rb'"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9:.]+)Z"')
#: The same instants as msgspec writes them ("...T...Z"), spelled as the decoder also reads them.
SPELLINGS = [rb'"\1T\2Z"', rb'"\1t\2z"', rb'"\1 \2+00:00"', rb'"\1T\2-0000"', rb'"\1T\2+0000"']


@cache
def _valid_events() -> list[bytes]:
    events = [*example_events(AT), *Simulation(SimConfig(seed=1, customers=200, events=3000)).canonical()]
    per_type: dict[str, int] = {}
    sample = []
    for event in events:
        per_type[event.type] = per_type.get(event.type, 0) + 1
        if per_type[event.type] <= 10:
            sample.append(encode(event))
    return sample


def test_valid_events_in_every_spelling_of_their_times_are_taken_by_both() -> None:
    events = _valid_events()
    assert {json.loads(e)["type"] for e in events} == set(EVENT_TYPES)
    refused = []
    for data in events:
        name = f"event.{json.loads(data)['type']}"
        for spelling in SPELLINGS:
            respelled = _UTC_TIME.sub(spelling, data)
            decoder, schema = _decoder_takes(respelled), _schema_takes(name, respelled)
            if not (decoder and schema):
                refused.append(f"{respelled[:120]!r}: decoder takes {decoder}, schema takes {schema}")
    assert refused == []
