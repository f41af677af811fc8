"""JSON Schema files generated from the models: the contract checked at the edge.

``vigil schemas export DIR`` writes one file per event type plus the records; a test
regenerates them and fails when the committed files drift from the models.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from vigil.events.records import DeadLetter, EpisodeLabel
from vigil.events.types import EVENT_TYPES

SCHEMA_BASE_URI = "https://vigil.dev/schemas/"


def _document(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_BASE_URI + name,
        **schema,
    }


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
        schema = _clean_descriptions(msgspec.json.schema(target))
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
