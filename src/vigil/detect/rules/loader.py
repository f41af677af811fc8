"""Reading rule files: YAML into plain values that remember where they came from.

Mappings load as :class:`LocDict` and sequences as :class:`LocList`; both keep the
line and column (1-based) of every value, taken from PyYAML's node marks, so the
validation pass can say ``rules/ato.yaml:12:5`` for any field it rejects.  Duplicate
keys, which plain YAML silently collapses, are recorded as problems too.
"""

from __future__ import annotations

import os
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


#: How many values a file's aliases may make of it, over its own (``*a`` repeats what ``&a``
#: names): ten aliases of ten aliases, nine deep, in a 1 KB file, made a billion, and validation
#: ran out of memory (a rule file is loaded by ``vigil detect`` too).
ALIAS_GROWTH = 10
#: ... and how many values any file may reach that way, whatever its size.
ALIASED_VALUES_FREE = 100_000


def load_text(text: str, path: Path) -> LoadedFile:
    """Parse one rule file's text; a YAML syntax error becomes a located problem, not an exception."""
    try:
        loader = _Loader(text)  # (it refuses a control character here, before any parsing)
    except yaml.reader.ReaderError as exc:
        return LoadedFile(path, None, [_unreadable(text, exc)])
    loader.problems = []
    try:
        node = loader.get_single_node()
        if node is None:
            return LoadedFile(path, None, [])
        values, own = _expanded_size(node)
        if values > max(ALIASED_VALUES_FREE, ALIAS_GROWTH * own):
            why = (
                f"its aliases (*name) make its {own:,} values {values:,} once expanded: refused (at "
                f"most {ALIAS_GROWTH} times a file's own, or {ALIASED_VALUES_FREE:,})"
            )
            return LoadedFile(path, None, [(_pos(node), why)])
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return LoadedFile(path, None, [(loc, f"not valid YAML: {exc.problem or exc}")])
    except yaml.YAMLError as exc:
        return LoadedFile(path, None, [((1, 1), f"not valid YAML: {exc}")])
    except RecursionError:
        # PyYAML composes and constructs recursively: 200 levels of [[[...]]] raised out of
        # validation with a traceback.
        return LoadedFile(path, None, [((1, 1), "not valid here: nested too deeply")])
    finally:
        loader.dispose()
    return LoadedFile(path, data, list(loader.problems))


def _unreadable(text: str, exc: yaml.reader.ReaderError) -> tuple[Loc, str]:
    """What PyYAML's reader refused, at the file's line and column (it says "<unicode string>,
    position N"; raised before parsing, it was a traceback naming no file)."""
    before = text[: exc.position]
    loc = (before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1)
    char = exc.character
    shown = f"#x{ord(char):04x}" if isinstance(char, str) else f"#x{char:02x}"
    return (
        loc,
        f"not valid YAML: {exc.reason} {shown} (a control character; write it escaped in a "
        "double-quoted string)",
    )


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """How many values the document makes once its aliases are expanded, and how many nodes
    it has of its own (each counted once), each node walked once, children before parents (not
    recursively: the depth is the file's).  A node inside itself (``&a [*a]``, which the
    construction refuses, located) counts once there."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            sizes[id(node)] = 1 + sum(max(1, sizes[id(child)]) for child in _children(node))
            continue
        if id(node) in sizes:
            continue
        sizes[id(node)] = 0  # (under way)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)], len(sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


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


RULE_SUFFIXES = (".yaml", ".yml")


def rule_files(paths: list[Path]) -> list[Path]:
    """Expand directories into their rule files, sorted (a stable load order).

    A directory is searched with its subdirectories, and a suffix in any case counts
    (``*.yaml``, ``*.yml``, ``*.YAML``): a team that files its rules by domain
    (``rules/chain/mixers.yaml``) or on a system that upper-cases names got a set missing
    those rules, with nothing said.  Hidden files and directories (``.git``, an editor's
    ``.#ato.yaml``) are not rules.  Symbolic links to directories are not followed, so a
    link back up cannot loop.
    """
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found: list[Path] = []
            for root, dirs, names in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [
                    Path(root, n)
                    for n in names
                    if not n.startswith(".") and n.lower().endswith(RULE_SUFFIXES)
                ]
            out += sorted(found)
        else:
            out.append(p)
    return out
