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
