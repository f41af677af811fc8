"""An application built and not run (its broker's address is a closed port), for unit tests of
the runtime's own steps with stand-ins for its clients."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from vigil.config import load_settings
from vigil.stream.app import Application
from vigil.stream.base import Context, Operator, Record, StoreSpec

COUNTS = StoreSpec("counts", 1)


class Nothing(Operator[Any]):
    id = "nothing"
    stores: tuple[StoreSpec, ...] = ()

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        pass


class Stateful(Nothing):
    id = "stateful"
    stores = (COUNTS,)


def offline_app(
    tmp_path: Path,
    guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once",
    *,
    stateful: bool = False,
    operators: Sequence[Operator[Any]] | None = None,
    **kw: Any,
) -> Application:
    """Application ``a`` reading ``in``, with one operator that does nothing (``stateful``: with
    a store), or ``operators``."""
    return Application(
        load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path),
        name="a",
        inputs=["in"],
        operators=list(operators) if operators is not None else [Stateful() if stateful else Nothing()],
        guarantee=guarantee,
        **kw,
    )


class Fetched:
    """A consumed record of ``in``, as the loop reads it."""

    def __init__(self, partition: int, offset: int, value: bytes = b"") -> None:
        self._partition = partition
        self._offset = offset
        self._value = value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)
