"""Random JSON values and places inside a JSON document, for the fuzzing tests."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator, Sequence
from typing import Any


def random_value(rng: random.Random, atoms: Sequence[Any], keys: Sequence[str], depth: int = 0) -> Any:
    """One of `atoms` (most often), or a small array or object of such values."""
    roll = rng.random()
    if depth > 2 or roll < 0.6:
        return copy.deepcopy(rng.choice(atoms))
    if roll < 0.8:
        return [random_value(rng, atoms, keys, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(keys): random_value(rng, atoms, keys, depth + 1) for _ in range(rng.randint(0, 3))}


def places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value inside `value` (keys and indexes), outermost first."""
    if path:
        yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from places(item, path + (key,))


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc
