"""Multiscale pyramids of OME-Zarr outputs: how many levels (:func:`auto_levels`) and one
full-resolution chunk's block of a lower level (:func:`pyramid_block`).

The lower levels are written with each full-resolution chunk as it finishes
(:mod:`.chunk_writing`), so a pyramid costs no second pass over the data: each level is
computed from full resolution directly, not from the level above it.
"""

from __future__ import annotations

MAX_AUTO_LEVELS = 6  # auto pyramids stop at 1/32 of full resolution
MIN_LEVEL_CHUNK = 32  # px: lower levels' chunks (the full-resolution chunk halved) stay this big


def auto_levels(shape, chunks, axes: str) -> int:
    """The resolution levels of ``levels="auto"``: as many as keep every level's Y and X at
    least one full-resolution chunk across, and its chunks (halved per level) at least
    :data:`MIN_LEVEL_CHUNK` px, up to :data:`MAX_AUTO_LEVELS`. An output of at most 2 x 2 chunks
    gets one level; 1 GB of 8-bit EM in 512 px chunks gets 5.

    Parameters
    ----------
    shape, chunks : tuple of int
        The full-resolution shape and chunk shape, in ``axes`` order.
    axes : str
        One letter per axis; the pyramid halves ``Y`` and ``X``.
    """
    yx = [(n, c) for n, c, a in zip(shape, chunks, axes, strict=True) if a in "YX"]
    levels = 1
    while levels < MAX_AUTO_LEVELS:
        f = 2**levels
        if any(n // f < c or c // f < MIN_LEVEL_CHUNK for n, c in yx):
            break
        levels += 1
    return levels


def pyramid_block(block, axes: str, level: int, labels: bool = False):
    """``block`` at resolution ``level`` (Y and X divided by ``2**level``; trailing rows and
    columns that do not fill a ``2**level`` square dropped), in ``block``'s dtype.

    Images: the mean of each square (integers rounded and clipped), the same as halving
    ``level`` times with 2x2 means up to rounding. ``labels``: each square's first pixel, so
    that a label image's lower levels hold labels, not averages of them.
    """
    import numpy as np

    f = 2**level
    block = np.asarray(block)
    cut = tuple(slice(0, n // f * f) if a in "YX" else slice(None)
                for n, a in zip(block.shape, axes, strict=True))
    if labels:
        return np.ascontiguousarray(block[tuple(slice(0, c.stop, f) if a in "YX" else c
                                                for c, a in zip(cut, axes, strict=True))])
    shape, squares = [], []  # each of Y, X split into (blocks, f): the f axes are averaged
    for n, a in zip(block.shape, axes, strict=True):
        if a in "YX":
            shape += [n // f, f]
            squares.append(len(shape) - 1)
        else:
            shape.append(n)
    out = block[cut].astype(np.float32).reshape(shape).mean(axis=tuple(squares))
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(block.dtype)
