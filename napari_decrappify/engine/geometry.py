"""Tile geometry of the engine: how an image axis is cut into tiles, halos and aligned windows.

Per axis, on the input grid: the image is cut into *cores* of ``tile`` pixels (the last one
may stick out of the image). Each core is run in a *window* with ``halo`` pixels of context
on each side that has a neighbour, cut at the image's own borders: the image's edge is the
window's edge, as it is for the whole plane run in one go. Windows start and end on multiples
of the model's alignment (32: the U-Net downsamples 5 times) counted from the image's origin,
so every window sits on the same pooling grid as the whole plane. Past the far edge the image
is extended to the alignment by reflection (``numpy.pad(mode="reflect")``, repeated for tiny
images). The network output is trimmed back to the core after upscaling. With ``halo >=`` the
receptive field the tiled result equals the whole plane (extended to the alignment) run in one
go (:func:`napari_decrappify.engine.restore.restore_whole`) to ~1e-6.

Why the image's border and not a reflected halo around it: a window never computes context
that is not in the image, so a plane that fits in one or two windows per axis keeps most of
what it computes (1024 px em-4x plane: 80% kept instead of 48%), and the network sees the
borders as in training, where every crop's edge is a real edge. On CREMI's held-out planes
em-4x scores 25.75 dB this way against 25.62 dB with a 105 px reflected border (bench quality).

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


def cut_window(a: int, b: int, halo: int, extent: int, align: int = ALIGN) -> tuple[int, int]:
    """``(start, stop)``: the window of the core ``[a, b)``, ``halo`` px of context each side,
    both ends on multiples of ``align`` (from 0), cut at 0 and at ``extent`` (the edges)."""
    return max(0, (a - halo) // align * align), min(extent, round_up(b + halo, align))


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
    :meth:`window_range` ``(k)``: the core with ``halo`` px of context on each side, cut at
    the image's edges, both ends aligned. With ``reflect`` (the engine's former geometry,
    ``TileConfig(border="reflect")``) every window is ``core + 2 * halo`` px, aligned, from
    ``k * core - halo``: the image is reflected past its edges, and windows are aligned from
    ``-halo``, as the plane reflect-padded by the halo would be.
    """

    size: int
    core: int
    halo: int
    align: int = ALIGN
    reflect: bool = False

    @property
    def n(self) -> int:
        return -(-self.size // self.core)

    @property
    def extent(self) -> int:
        """The axis extended to the alignment: windows cut at the edges never reach past it."""
        return round_up(self.size, self.align)

    def core_range(self, k: int) -> tuple[int, int]:
        return k * self.core, min((k + 1) * self.core, self.size)

    def window_range(self, k: int) -> tuple[int, int]:
        """``(start, stop)`` of window ``k``: aligned, in ``[0, extent]`` (with ``reflect``:
        ``core + 2 * halo`` px, aligned, from ``k * core - halo``)."""
        a, b = self.core_range(k)
        if self.reflect:
            return a - self.halo, a - self.halo + round_up(self.core + 2 * self.halo, self.align)
        return cut_window(a, b, self.halo, self.extent, self.align)

    def window_start(self, k: int) -> int:
        return self.window_range(k)[0]

    def core_offset(self, k: int) -> int:
        """Where core ``k`` starts in its window."""
        return self.core_range(k)[0] - self.window_start(k)

    def window_length(self, k: int) -> int:
        start, stop = self.window_range(k)
        return stop - start

    def _kinds(self) -> tuple[list[int], int | None]:
        """The tiles whose windows an edge of the image cuts (those within a halo and an
        alignment of it), and one of the others, if any: those are all alike (their cores
        start on aligned positions)."""
        n = self.n
        reach = -(-(self.halo + self.align) // self.core) + 1
        edges = sorted(set(range(min(n, reach))) | set(range(max(0, n - reach), n)))
        inner = next((k for k in range(reach, n - reach)), None)
        return edges, inner

    @property
    def window(self) -> int:
        """The longest window."""
        edges, inner = self._kinds()
        return max(self.window_length(k) for k in edges + ([] if inner is None else [inner]))

    @property
    def computed(self) -> int:
        """Pixels of all windows together (what the network computes along this axis)."""
        edges, inner = self._kinds()
        total = sum(self.window_length(k) for k in edges)
        return total if inner is None else total + (self.n - len(edges)) * self.window_length(inner)

    def source_index(self, k: int) -> np.ndarray:
        """Image indices of window ``k`` (reflected past the edges)."""
        start, stop = self.window_range(k)
        return reflect_index(np.arange(start, stop), self.size)


def tile_axis(size: int, tile: int, halo: int, align: int = ALIGN,
              reflect: bool = False) -> AxisTiling:
    """Tiling of an axis: cores of ``tile`` pixels (less for a small image, rounded up to
    ``align``), each in a window with ``halo`` px of context (:class:`AxisTiling`)."""
    if tile % align:
        raise ValueError(f"tile {tile} must be a multiple of {align} (the model's alignment)")
    core = min(tile, round_up(size, align))
    return AxisTiling(size=size, core=core, halo=halo, align=align, reflect=reflect)


def balanced_tile(size: int, max_core: int, align: int = ALIGN) -> int:
    """The tile for an axis of ``size`` px cut in as few tiles of at most ``max_core`` px as
    possible, all about equal (not ``max_core`` and a sliver: a last core of a few pixels
    computes a whole window)."""
    max_core = max(align, max_core // align * align)
    n = -(-size // max_core)
    return min(max_core, round_up(-(-size // n), align))


def fit_tiles(size_y: int, size_x: int, halo: int, max_window_px: float,
              align: int = ALIGN, max_tile: int | None = None,
              reflect: bool = False) -> tuple[int, int]:
    """(tile_y, tile_x): the tiles that compute the fewest window pixels over the plane with
    no window above ``max_window_px`` pixels (ties: fewer tiles), balanced over each axis
    (:func:`balanced_tile`); at least ``align``, at most ``max_tile``. A plane of 1024 px
    with a 105 px halo: one tile along Y and two along X (windows 1024 x 640, 80% kept)
    beats 2 x 2 (640 x 640, 64% kept) when the larger window fits."""
    ys = _axis_options(size_y, halo, align, max_tile, reflect)
    xs = _axis_options(size_x, halo, align, max_tile, reflect)
    area = np.outer(ys[:, 1], xs[:, 1]).astype(float)
    cost = np.outer(ys[:, 2], xs[:, 2]).astype(float)
    tiles = np.outer(ys[:, 3], xs[:, 3]).astype(float)
    fits = area <= max(0.0, float(max_window_px))
    if not fits.any():  # nothing fits: the smallest windows there are
        fits = area == area.min()
    key = np.where(fits, cost + tiles / (tiles.max() + 1.0), np.inf)
    iy, ix = np.unravel_index(int(np.argmin(key)), key.shape)
    return int(ys[iy, 0]), int(xs[ix, 0])


def _axis_options(size: int, halo: int, align: int, max_tile: int | None,
                  reflect: bool) -> np.ndarray:
    """Rows ``(tile, longest window, pixels computed, tiles)`` for every balanced tile count
    of an axis (each count once: the balanced tile for it)."""
    rows, seen = [], set()
    top = round_up(size, align) if max_tile is None else min(round_up(size, align),
                                                            max(align, max_tile // align * align))
    n_min = -(-size // top)
    for n in range(n_min, -(-size // align) + 1):
        tile = min(top, round_up(-(-size // n), align))
        if tile in seen:
            continue
        seen.add(tile)
        t = tile_axis(size, tile, halo, align, reflect)
        rows.append((tile, t.window, t.computed, t.n))
    return np.array(rows, dtype=np.int64)


def useful_fraction(ty: AxisTiling, tx: AxisTiling) -> float:
    """Output pixels kept / input-window pixels computed over the whole plane: the share of
    the network's work that becomes output (the rest is halo, alignment and overhang)."""
    return (ty.size * tx.size) / (ty.computed * tx.computed)


def output_axes(model, axes: str) -> str:
    """Axes of :func:`restore_lazy`'s output for an input with ``axes`` (module docstring)."""
    if model.kind == "segmentation":
        return "C" + axes.replace("C", "")
    if "C" in axes or model.out_channels == 1:
        return axes
    return "C" + axes



def can_split(core: int, depth: int, align: int) -> bool:
    """Whether a core of ``core`` pixels halves ``depth`` times into sub-cores of at least
    ``align`` pixels (the device worker's out-of-memory fallback splits a tile in 2 x 2; each
    sub-core keeps its halo, so the result is the same)."""
    return core >= align * 2**depth
