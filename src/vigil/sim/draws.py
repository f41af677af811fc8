"""Random variates drawn from numpy in blocks, handed out one Python float at a time.

The benign generator needs a handful of variates per event.  ``random.Random`` draws
uniforms cheaply, but its ``gauss``, ``lognormvariate``, ``expovariate`` and ``choice``
are Python code costing about as much as building the event itself.  Here numpy draws
8192 at a time and ``tolist()`` turns them into floats in one C loop; taking one is a
step of a C iterator.  Everything derives from one seeded ``numpy.random.Generator``, so a
seed still gives one stream.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from vigil.events.ids import stable_id

T = TypeVar("T")

BLOCK = 8192


def generator(*parts: object) -> np.random.Generator:
    """A numpy generator seeded by the parts (a seed and a purpose), the same in every process."""
    return np.random.default_rng(int(stable_id("vigil-sim", *parts), 16))


def _block(draw: Callable[[int], np.ndarray[Any, Any]], _: int) -> list[float]:
    values: list[float] = draw(BLOCK).tolist()
    return values


def _floats(draw: Callable[[int], np.ndarray[Any, Any]]) -> Iterator[float]:
    # C iterators only (chain over map): taking a value runs no Python frame.
    return itertools.chain.from_iterable(map(functools.partial(_block, draw), itertools.count()))


def uniforms(gen: np.random.Generator) -> Callable[[], float]:
    """``u()`` returns the next uniform in [0, 1)."""
    return _floats(gen.random).__next__


def normals(gen: np.random.Generator) -> Callable[[], float]:
    """``z()`` returns the next standard normal variate (``exp(mu + s * z())`` is log-normal)."""
    return _floats(gen.standard_normal).__next__


def pick(u: float, items: Sequence[T]) -> T:
    """The item a uniform ``u`` in [0, 1) falls on (``random.choice`` without the Python frames)."""
    return items[int(u * len(items))]
