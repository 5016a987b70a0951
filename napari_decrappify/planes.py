"""Walking the 2-D (Y, X) planes of an image of any axes, one plane at a time.

The input range, the out-of-domain check and the LR consistency each measure a stack plane by
plane (a lazy plane is read once, memory stays at one plane); they share this walk.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def _yx(ndim: int, axes: str | None) -> tuple[int, int]:
    if axes is None:  # Y, X last
        return ndim - 2, ndim - 1
    return axes.index("Y"), axes.index("X")


def count(shape, axes: str | None = None) -> int:
    """How many 2-D planes an image of ``shape`` (``axes``; default: Y, X last) holds."""
    iy, ix = _yx(len(shape), axes)
    return int(np.prod([s for i, s in enumerate(shape) if i not in (iy, ix)], dtype=np.int64))


def picks(n: int, max_planes: int | None = None) -> np.ndarray:
    """Indices of up to ``max_planes`` of ``n`` planes, evenly spaced, first and last included
    (all of them when ``max_planes`` is None)."""
    if max_planes is None or n <= max_planes:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_planes).round().astype(int))


def index(shape, k: int, axes: str | None = None, yx=(slice(None), slice(None))) -> tuple:
    """The index of the ``k``-th plane (row-major over the axes other than Y and X), with
    ``yx`` (slices, default whole) on Y and X."""
    iy, ix = _yx(len(shape), axes)
    lead = [i for i in range(len(shape)) if i not in (iy, ix)]
    idx: list = [0] * len(shape)
    for i, v in zip(lead, np.unravel_index(k, [shape[i] for i in lead]) if lead else (),
                    strict=True):
        idx[i] = int(v)
    idx[iy], idx[ix] = yx
    return tuple(idx)


def walk(shape, axes: str | None = None, max_planes: int | None = None,
         ) -> Iterator[tuple[int, tuple]]:
    """``(k, index)`` of the planes :func:`picks` chooses, in order."""
    for k in picks(count(shape, axes), max_planes):
        yield int(k), index(shape, int(k), axes)
