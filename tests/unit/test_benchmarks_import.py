"""The benchmarks run only under `make bench`: importing them here catches a benchmark left
behind by a change to the API it uses (a renamed function, a moved module) in `make test`."""

from __future__ import annotations

import importlib
import pkgutil

import benchmarks
import pytest

MODULES = sorted(info.name for info in pkgutil.iter_modules(benchmarks.__path__))


def test_there_are_benchmarks_to_import() -> None:
    assert {"run", "runtime", "detect"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_a_benchmark_module_imports(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__name__ == f"benchmarks.{name}"
