"""Statistics that sites pool by addition (private).

A site's release (per-day counts, adverse-event counts, Cox sums or derivatives) is a frozen
dataclass whose fields all add elementwise when sites are pooled: ``a + b`` adds every field,
the builtin ``sum`` starts from 0, and equality compares every field (arrays elementwise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import Field
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

__all__ = ["Pooled", "flat_vectors", "pool"]


class Pooled:
    """Mixin of a frozen dataclass (``eq=False``) whose fields add up across sites."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def _check_poolable(self, other: Self) -> None:
        """Raise ValueError when ``other`` cannot be added to ``self`` (another shape)."""

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def __add__(self, other: object) -> Self:
        if not isinstance(other, type(self)):
            return NotImplemented
        self._check_poolable(other)
        return dataclasses.replace(
            self, **{f.name: getattr(self, f.name) + getattr(other, f.name)
                     for f in dataclasses.fields(self)}
        )

    def __radd__(self, other: object) -> Self:
        # Lets the builtin ``sum`` start from 0.
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return all(
            bool(np.array_equal(a, b)) if isinstance(a, np.ndarray) else bool(a == b)
            for a, b in zip(self._values(), other._values(), strict=True)
        )

    def __hash__(self) -> int:
        return hash(tuple(v.tobytes() if isinstance(v, np.ndarray) else v for v in self._values()))


_PooledT = TypeVar("_PooledT", bound=Pooled)


def pool(items: Iterable[_PooledT], empty_message: str) -> _PooledT:
    """Sum of ``items`` (at least one), added left to right.

    Raises
    ------
    ValueError
        With ``empty_message`` if ``items`` is empty; as ``a + b`` if two cannot be pooled.
    """
    values = list(items)
    if not values:
        raise ValueError(empty_message)
    total = values[0]
    for item in values[1:]:
        total = total + item
    return total


def flat_vectors(
    vectors: Mapping[str, ArrayLike],
    lengths: Mapping[str, int],
    what: str,
    dtype: DTypeLike | None = None,
) -> dict[str, NDArray[Any]]:
    """The flat vectors of a release (``to_vectors`` output, possibly summed over sites).

    Raises
    ------
    ValueError
        On a missing or unknown key or a vector whose length is not ``lengths[key]``.
    """
    if set(vectors) != set(lengths):
        raise ValueError(
            f"{what} need exactly the vectors {sorted(lengths)}, got {sorted(vectors)}"
        )
    flat = {}
    for key, length in lengths.items():
        vec = np.asarray(vectors[key], dtype=dtype)
        if vec.shape != (length,):
            raise ValueError(f"vector {key!r} must have length {length}, got {vec.shape}")
        flat[key] = vec
    return flat
