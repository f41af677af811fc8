"""Reading rule files: YAML into plain values that remember where they came from.

Mappings load as :class:`LocDict` and sequences as :class:`LocList`; both keep the
line and column (1-based) of every value, taken from PyYAML's node marks, so the
validation pass can say ``rules/ato.yaml:12:5`` for any field it rejects.  Duplicate
keys, which plain YAML silently collapses, are recorded as problems too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[int, int]


class LocDict(dict[str, Any]):
    """A mapping with ``loc`` (its own position) and ``marks`` (each key's value position)."""

    loc: Loc = (0, 0)
    marks: dict[str, Loc]
    key_marks: dict[str, Loc]

    def mark(self, key: str) -> Loc:
        return self.marks.get(key, self.loc)


class LocList(list[Any]):
    loc: Loc = (0, 0)
    marks: list[Loc]

    def mark(self, index: int) -> Loc:
        return self.marks[index] if 0 <= index < len(self.marks) else self.loc


@dataclass
class LoadedFile:
    path: Path
    data: Any
    problems: list[tuple[Loc, str]] = field(default_factory=list)


def _pos(node: yaml.Node) -> Loc:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Loader(yaml.SafeLoader):
    problems: list[tuple[Loc, str]]

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # A tag's own constructor failing (``!!int one``, ``!!bool maybe``): PyYAML raises a
            # plain error, with no file or line, and it stopped validation with a traceback.
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.tag} {node.value!r}: {exc!r}"[:300], node.start_mark
            ) from None


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocDict:
    own = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)
    # Merged pairs come first (``<<: *base``): a key of the mapping's own given after them
    # overrides theirs, as YAML says; only the mapping's own keys given twice are a mistake.
    merged = len(node.value) - own
    out = LocDict()
    out.loc = _pos(node)
    out.marks = {}
    out.key_marks = {}
    given: dict[str, Loc] = {}  # the mapping's own keys, where each was first given
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            loader.problems.append((_pos(key_node), f"keys must be strings; got {key!r}"))
            key = str(key)
        if i >= merged:
            if key in given:
                loader.problems.append(
                    (_pos(key_node), f"duplicate key {key!r} (first at line {given[key][0]})")
                )
            given.setdefault(key, _pos(key_node))
        out[key] = loader.construct_object(value_node, deep=True)
        out.marks[key] = _pos(value_node)
        out.key_marks[key] = _pos(key_node)
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocList:
    out = LocList(loader.construct_object(child, deep=True) for child in node.value)
    out.loc = _pos(node)
    out.marks = [_pos(child) for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
# Timestamps stay strings: the rule language parses its own times (UTC only).
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_text(text: str, path: Path) -> LoadedFile:
    """Parse one rule file's text; a YAML syntax error becomes a located problem, not an exception."""
    loader = _Loader(text)
    loader.problems = []
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return LoadedFile(path, None, [(loc, f"not valid YAML: {exc.problem or exc}")])
    except yaml.YAMLError as exc:
        return LoadedFile(path, None, [((1, 1), f"not valid YAML: {exc}")])
    finally:
        loader.dispose()
    return LoadedFile(path, data, list(loader.problems))


def load_file(path: Path) -> LoadedFile:
    """The file's rules, or its problem (unreadable, not UTF-8) as a located issue."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        return LoadedFile(path, None, [((line, 1), f"not UTF-8 text ({exc.reason} at byte {exc.start})")])
    except OSError as exc:
        return LoadedFile(path, None, [((0, 0), f"cannot read the file: {exc.strerror or exc}")])
    return load_text(text, path)


def rule_files(paths: list[Path]) -> list[Path]:
    """Expand directories into their ``*.yaml``/``*.yml`` files, sorted (a stable load order)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
        else:
            out.append(p)
    return out
