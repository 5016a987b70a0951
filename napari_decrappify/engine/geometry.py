"""Tile geometry of the engine: how an image axis is cut into tiles, halos and aligned windows.

Per axis, on the input grid: the image is cut into *cores* of ``tile`` pixels (the last one
may stick out of the image). Each core is run with ``halo`` pixels of context on both sides,
in a *window* rounded up to a multiple of the model's alignment (32: the U-Net downsamples 5
times); the extra alignment pixels go on the far side. Outside the image the window is filled
by reflection (``numpy.pad(mode="reflect")``, repeated for tiny images). The network output is
trimmed back to the core after upscaling. All window origins are multiples of the alignment in
the reflect-padded image, so with ``halo >=`` the receptive field the tiled result equals the
whole plane reflect-padded by ``halo`` and run in one go
(:func:`napari_decrappify.engine.restore.restore_whole`) to ~1e-6.

Pure arithmetic on sizes (numpy only): no model, no dask, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALIGN = 32


def reflect_index(idx, n: int) -> np.ndarray:
    """Map indices (any integers) into ``[0, n)`` by reflection without repeating the edge,
    as ``numpy.pad(mode="reflect")`` does (repeatedly, for pads larger than the image)."""
    idx = np.asarray(idx)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


def round_up(v: int, m: int) -> int:
    """``v`` rounded up to a multiple of ``m``."""
    return -(-v // m) * m


def default_tile(halo: int, align: int = ALIGN) -> int:
    """The tile (input px) used when none is given: ``TileConfig().tile`` or 2 x halo if larger.

    Every window computes its tile plus a halo on each side, so small tiles waste most of the
    work: with a core of >= 2 halos at least 25% of a window is kept. Measured on CPU for em-4x
    (halo 178) on a 1024^2 plane: tile 512 ran 1.6x faster than 384 (the former 2 x halo) for
    9% more peak memory.
    """
    from ..config import TileConfig

    return max(TileConfig().tile, round_up(2 * int(halo), align))


@dataclass(frozen=True)
class AxisTiling:
    """How one image axis of ``size`` pixels is cut (all on the input grid).

    Tile ``k`` restores the core ``[k * core, min((k + 1) * core, size))`` from the window
    ``[k * core - halo, k * core - halo + window)`` (reflected outside the image).
    """

    size: int
    core: int
    halo: int
    window: int

    @property
    def n(self) -> int:
        return -(-self.size // self.core)

    def core_range(self, k: int) -> tuple[int, int]:
        return k * self.core, min((k + 1) * self.core, self.size)

    def window_start(self, k: int) -> int:
        return k * self.core - self.halo

    def source_index(self, k: int) -> np.ndarray:
        """Image indices of window ``k`` (reflected at the borders)."""
        s = self.window_start(k)
        return reflect_index(np.arange(s, s + self.window), self.size)


def tile_axis(size: int, tile: int, halo: int, align: int = ALIGN) -> AxisTiling:
    """Tiling of an axis: cores of ``tile`` pixels (less for a small image, rounded up to
    ``align``), windows of ``core + 2 * halo`` rounded up to ``align``."""
    if tile % align:
        raise ValueError(f"tile {tile} must be a multiple of {align} (the model's alignment)")
    core = min(tile, round_up(size, align))
    return AxisTiling(size=size, core=core, halo=halo, window=round_up(core + 2 * halo, align))


def balanced_tile(size: int, max_core: int, align: int = ALIGN) -> int:
    """The tile for an axis of ``size`` px cut in as few tiles of at most ``max_core`` px as
    possible, all about equal (not ``max_core`` and a sliver: a last core of a few pixels
    computes a whole window)."""
    max_core = max(align, max_core // align * align)
    n = -(-size // max_core)
    return min(max_core, round_up(-(-size // n), align))


def fit_tiles(size_y: int, size_x: int, halo: int, max_window_px: float,
              align: int = ALIGN) -> tuple[int, int]:
    """(tile_y, tile_x): the largest tiles whose windows (core + 2 halo, aligned) have at most
    ``max_window_px`` pixels, balanced over each axis (:func:`balanced_tile`); at least
    ``align``. Largest, because each window computes ``2 * halo`` of context per axis however
    small its core: the kept fraction grows with the core."""
    margin = round_up(2 * int(halo), align)  # window - core, for an aligned core
    side = int(np.sqrt(max(0.0, float(max_window_px))))
    max_core = max(align, (side // align) * align - margin)
    # an axis smaller than the square tile gives its pixels to the other one
    ty = balanced_tile(size_y, max_core, align)
    wy = ty + margin
    rest = int(max(0.0, float(max_window_px)) // wy)
    max_core_x = max(max_core, (rest // align) * align - margin)
    tx = balanced_tile(size_x, max_core_x, align)
    return ty, tx


def useful_fraction(ty: AxisTiling, tx: AxisTiling) -> float:
    """Output pixels kept / input-window pixels computed over the whole plane: the share of
    the network's work that becomes output (the rest is halo, alignment and overhang)."""
    return (ty.size * tx.size) / (ty.n * ty.window * tx.n * tx.window)


def output_axes(model, axes: str) -> str:
    """Axes of :func:`restore_lazy`'s output for an input with ``axes`` (module docstring)."""
    if model.kind == "segmentation":
        return "C" + axes.replace("C", "")
    if "C" in axes or model.out_channels == 1:
        return axes
    return "C" + axes



def can_split(core: int, depth: int, align: int) -> bool:
    """Whether a core of ``core`` pixels halves ``depth`` times into aligned sub-cores (the
    device worker's out-of-memory fallback splits a tile in 2 x 2, exactly)."""
    return core % (align * 2**depth) == 0
