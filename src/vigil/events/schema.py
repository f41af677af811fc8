"""JSON Schema files generated from the models: the contract checked at the edge.

``vigil schemas export DIR`` writes one file per event type plus the records; a test
regenerates them and fails when the committed files drift from the models.

The schema and the decoder are meant to take the same documents.  Field constraints come from
the models (msgspec ``Meta``); what the JSON decoder does for every value of a kind, whatever the
model says, is added here: numbers are finite doubles, text is well-formed Unicode.  What JSON
Schema cannot say is written in each file's description (see ``DECODER_ONLY``); there the
decoder is the authority.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from vigil.events.records import DeadLetter, EpisodeLabel
from vigil.events.types import EVENT_TYPES

SCHEMA_BASE_URI = "https://vigil.dev/schemas/"


#: What the decoder refuses and these files cannot: JSON Schema counts 1.0 an integer (it is the
#: same number), and the rest would take patterns or bounds that no reader could check by eye.
#: (Integral floats stay refused rather than taken: taking them means a lax decoder, which also
#: reads "1" as 1, for producers that can write an integer anyway.)
DECODER_ONLY = (
    "Vigil's decoder is the authority; beyond this schema it refuses an integer written with a "
    "fraction or an exponent (1.0, 1e2: write 1, 100), an integer of more than 4300 digits, a "
    "date-time whose fraction rounds up past 9999-12-31T23:59:59.999999, and a key given twice "
    "unless every copy is valid (a validator reads the last one only: send each key once)."
)
#: Well-formed text: no lone UTF-16 surrogate ("\\ud800" is a JSON string the decoder refuses, and
#: Python's and JavaScript's JSON parsers keep).  A pair is allowed as two code units too, for
#: ECMA 262 validators that match code units (without the ``u`` flag) rather than code points.
TEXT_PATTERN = "^([^\\ud800-\\udfff]|[\\ud800-\\udbff][\\udc00-\\udfff])*$"
#: Bytes are standard base64, padded, as the decoder takes them (``(?!\\n)``: see
#: vigil.events.base.DATE_TIME_PATTERN).
BASE64_PATTERN = "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?(?!\\n)$"
#: The decoder takes doubles only: 1e400 and a 400-digit integer are "Number out of range".
_DOUBLE_MAX = sys.float_info.max
#: Where a schema holds schemas (msgspec emits no others).
_SCHEMA_MAPS = ("$defs", "properties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "propertyNames")


def _document(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_BASE_URI + name,
        "description": DECODER_ONLY,
        **schema,
    }


def _as_decoded(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` (a schema) with what the decoder checks of every number and string said too:
    bounds to the doubles' range on numbers, :data:`TEXT_PATTERN` on strings without a pattern
    of their own (a date-time's takes ASCII only) and on the keys of maps, :data:`BASE64_PATTERN`
    on bytes."""
    out = dict(node)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _as_decoded(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_as_decoded(sub) for sub in out[key]]
    for key in _SCHEMA_VALUES:
        if isinstance(out.get(key), dict):
            out[key] = _as_decoded(out[key])
    kind = out.get("type")
    if kind == "number":
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -_DOUBLE_MAX
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = _DOUBLE_MAX
    elif kind == "string" and not {"pattern", "enum", "const"} & out.keys():
        out["pattern"] = BASE64_PATTERN if out.get("contentEncoding") == "base64" else TEXT_PATTERN
    elif kind == "object" and isinstance(out.get("additionalProperties"), dict):
        out.setdefault("propertyNames", {"pattern": TEXT_PATTERN})
    return out


def _clean_descriptions(node: Any) -> Any:
    """Docstring-derived descriptions, dedented the same way whatever the msgspec version
    (versions differ in whether they clean docstrings), so the files do not drift spuriously."""
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _clean_descriptions(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(v) for v in node]
    return node


def generate() -> dict[str, str]:
    """File name -> schema text, for every event type and record."""
    out: dict[str, str] = {}
    targets: dict[str, Any] = {f"event.{tag}": cls for tag, cls in EVENT_TYPES.items()}
    targets["record.episode_label"] = EpisodeLabel
    targets["record.dead_letter"] = DeadLetter
    for name, target in sorted(targets.items()):
        file = f"{name}.schema.json"
        schema = _as_decoded(_clean_descriptions(msgspec.json.schema(target)))
        out[file] = json.dumps(_document(file, schema), indent=2, sort_keys=True) + "\n"
    return out


def export(directory: Path) -> list[Path]:
    """Write the schema files (and remove stale ones); returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    files = generate()
    for stale in directory.glob("*.schema.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """Names of schema files that are missing, stale or differ from the models."""
    files = generate()
    problems = [
        name
        for name, text in files.items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]
    problems += [p.name for p in directory.glob("*.schema.json") if p.name not in files]
    return sorted(problems)
