"""Refusing JSON text that is not well-formed Unicode, naming where.

``json.loads`` accepts a lone UTF-16 surrogate (``"\\ud800"``, or UTF-8 bytes ``ED A0 80``, as it
decodes bytes with ``surrogatepass``).  An event made of one can be neither hashed nor encoded
(UnicodeEncodeError), and was dead-lettered as "unexpected", naming no field.  Normalisers that
parse with ``json.loads`` check what they parsed with :func:`refuse_lone_surrogates`, when
:func:`may_hold_surrogates` says the body can hold one (most cannot: no walk).
"""

from __future__ import annotations

import re
from typing import Any

from vigil.errors import DecodeError

#: A JSON escape of a UTF-16 surrogate (a pair is fine, a lone one is not).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def may_hold_surrogates(body: bytes | str) -> bool:
    """False when ``json.loads(body)`` cannot hold a lone surrogate: text (or strict UTF-8)
    without a surrogate escape."""
    if isinstance(body, str):
        return _SURROGATE_ESCAPE.search(body) is not None or not _well_formed(body)
    if _SURROGATE_ESCAPE_BYTES.search(body):
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def refuse_lone_surrogates(value: Any, where: str, root: str = "$") -> None:
    """Raise :class:`DecodeError` naming a key or string of ``value`` (parsed JSON; the first
    found) that holds a lone UTF-16 surrogate; ``root`` names ``value`` in the path."""
    stack: list[tuple[str, Any]] = [(root, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
            continue
        if isinstance(item, dict):
            for key, v in item.items():
                if not _well_formed(key):
                    msg = f"a key in {path} holds a lone UTF-16 surrogate; expected well-formed text"
                    raise DecodeError(msg, where=where, path=path)
                stack.append((f"{path}.{key}", v))
            continue
        if isinstance(item, str) and not _well_formed(item):
            msg = f"{path} holds a lone UTF-16 surrogate (\\ud800-\\udfff); expected well-formed text"
            raise DecodeError(msg, where=where, path=path)


def _well_formed(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
