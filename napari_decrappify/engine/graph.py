"""The dask graph of a restoration: one task per output tile, each reading only the input chunks
its window touches.

:func:`build` checks the model against the image (channels, frames, tile and halo), plans the
tiling (:mod:`.geometry`), measures the input's intensity range once, registers the model
(:mod:`.registry`) and returns a dask array whose chunks are restored tiles. The graph holds
one :class:`Plan` (everything a tile task needs, with a :class:`~.registry.ModelRef` instead
of the model); each task gathers its window from the input chunks (reflected outside the
image), normalises it, has the model's device worker run it and trims the result to its core.
Progress and cancel reach the tasks through a :class:`Run` kept in this process while the
graph lives.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import os
import uuid
import warnings
import weakref
from dataclasses import dataclass

import numpy as np

from ..config import NormConfig, TileConfig
from ..io import ImageData, RestoreCancelled, check_axes, open_image
from ..normalization import denormalize, input_range, normalize, resolve
from ..progress import RateCounter
from .distributed import distributed_client, in_distributed_worker
from .geometry import (
    ALIGN,
    AxisTiling,
    default_tile,
    fit_tiles,
    output_axes,
    reflect_index,
    round_up,
    tile_axis,
)
from .registry import ModelRef, as_model, get_worker, lookup, register


class Run(RateCounter):
    """One restoration's progress callback, cancel event and tile count (its events'
    rate and ETA: :class:`~napari_decrappify.progress.RateCounter`, whose clock starts at the
    first tile: a lazy array is built long before it is computed)."""

    def __init__(self, progress, cancel, total: int):
        super().__init__("tiles", total, progress, cancel, clock_from_first_tick=True)


RUNS: dict[str, Run] = {}


def _local_run(plan) -> Run | None:
    if plan.pid != os.getpid() or in_distributed_worker():
        return None
    return RUNS.get(plan.run_id)


# --------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class Plan:
    """Everything a tile task needs (one copy in the graph, shared by all tasks)."""

    ref: ModelRef
    in_name: str
    in_axes: str
    in_shape: tuple[int, ...]
    in_chunks: tuple[tuple[int, ...], ...]
    out_axes: str
    out_dtype: str
    ty: AxisTiling
    tx: AxisTiling
    scale: int
    frames: int
    frame_axis: int | None
    kind: str
    out_channels: int
    skip_empty: bool
    device: str
    precision: str
    batch_size: int
    tta: bool
    run_id: str
    pid: int
    norm: NormConfig  # the fixed normalisation of this input (data-normalised models: resolved)
    input_range: tuple[float, float] | None  # the input's measured range (percentile models)

    def box(self, plane: dict[int, int], ky: int, kx: int):
        """Per input axis, the source indices the tile reads: an index array (Y, X, frame
        axis), a single plane index, or ``None`` (all of C)."""
        ys, xs = self.ty.source_index(ky), self.tx.source_index(kx)
        out = []
        for i, a in enumerate(self.in_axes):
            if a == "Y":
                out.append(ys)
            elif a == "X":
                out.append(xs)
            elif a == "C":
                out.append(None)
            elif i == self.frame_axis:
                k = self.frames // 2
                p = plane[i]
                out.append(reflect_index(np.arange(p - k, p + k + 1), self.in_shape[i]))
            else:
                out.append(plane[i])
        return out

    @functools.cached_property
    def bounds(self) -> tuple[np.ndarray, ...]:
        """Per input axis, the chunk boundaries ``[0, c0, c0 + c1, ..., size]``.

        Computed once per plan: recomputing them per tile made building the graph quadratic
        in the number of planes (4000 planes: ~2 s of cumsums)."""
        return tuple(np.cumsum((0,) + c) for c in self.in_chunks)

    def chunk_ranges(self, box) -> list[range]:
        """Per input axis, the input chunks that the box touches."""
        ranges = []
        for i, sel in enumerate(box):
            if sel is None:
                ranges.append(range(0, len(self.in_chunks[i])))
                continue
            lo, hi = (int(sel.min()), int(sel.max()) + 1) if isinstance(sel, np.ndarray) \
                else (int(sel), int(sel) + 1)
            edges = self._edges[i]  # Python ints: bisect is ~10x cheaper than np.searchsorted
            ranges.append(range(bisect.bisect_right(edges, lo) - 1, bisect.bisect_left(edges, hi)))
        return ranges

    @functools.cached_property
    def _edges(self) -> tuple[list[int], ...]:
        return tuple(b.tolist() for b in self.bounds)


def _split_out_index(plan: Plan, out_idx: tuple[int, ...]):
    """Output block index -> (plane indices per input axis, ky, kx)."""
    plane: dict[int, int] = {}
    ky = kx = 0
    for a, k in zip(plan.out_axes, out_idx, strict=True):
        if a == "Y":
            ky = k
        elif a == "X":
            kx = k
        elif a != "C":
            plane[plan.in_axes.index(a)] = k
    return plane, ky, kx


def _gather(plan: Plan, box, parts: list) -> np.ndarray:
    """Assemble the tile's source box from its input chunks, then index it (reflection):
    returns ``(frames * channels, window_y, window_x)`` in input units."""
    ranges = plan.chunk_ranges(box)
    bounds = plan.bounds
    lo = [bounds[i][r.start] for i, r in enumerate(ranges)]
    hi = [bounds[i][r.stop] for i, r in enumerate(ranges)]
    if len(parts) == 1:
        buf = np.asarray(parts[0])
    else:
        first = np.asarray(parts[0])
        buf = np.empty(tuple(h - l for l, h in zip(lo, hi, strict=True)), dtype=first.dtype)
        for chunk_idx, part in zip(itertools.product(*ranges), parts, strict=True):
            sl = tuple(slice(bounds[i][c] - lo[i], bounds[i][c + 1] - lo[i])
                       for i, c in enumerate(chunk_idx))
            buf[sl] = part
    # select: arrays (Y, X, frames) and single planes, relative to the box origin
    sel = [slice(None) if s is None else s - lo[i] for i, s in enumerate(box)]
    # numpy advanced indexing with several arrays would broadcast them: index one axis at a time
    x = buf[tuple(s if not isinstance(s, np.ndarray) else slice(None) for s in sel)]
    kept = [i for i, s in enumerate(sel) if not isinstance(s, int | np.integer)]
    for pos, i in enumerate(kept):
        if isinstance(sel[i], np.ndarray):
            x = np.take(x, sel[i], axis=pos)
    # bring to (frame, C, Y, X)
    labels = ["F" if i == plan.frame_axis else plan.in_axes[i] for i in kept]
    order = [labels.index(a) for a in ("F", "C", "Y", "X") if a in labels]
    x = np.transpose(x, order)
    return x.reshape((-1,) + x.shape[-2:])


def _tile_task(plan: Plan, out_idx: tuple[int, ...], parts: list) -> np.ndarray:
    """dask task: restore one output block (one tile)."""
    run = _local_run(plan)
    if run is not None and run.cancel is not None and run.cancel.is_set():
        raise RestoreCancelled("restore cancelled")
    lookup(plan.ref)  # the registered model (loaded here in a distributed worker)
    plane, ky, kx = _split_out_index(plan, out_idx)
    box = plan.box(plane, ky, kx)
    raw = _gather(plan, box, parts)
    if raw.dtype.kind in "fc" and not np.isfinite(raw).all():
        # one NaN/inf would spread over every tile whose window reaches it: a silent hole
        raise ValueError(_non_finite_message(plan, box, plane, ky, kx, raw))
    ys, ye = plan.ty.core_range(ky)
    xs, xe = plan.tx.core_range(kx)
    s, h = plan.scale, plan.ty.halo
    oy, ox = plan.ty.core_offset(ky), plan.tx.core_offset(kx)  # where the core sits in the window
    oh, ow = (ye - ys) * s, (xe - xs) * s
    if plan.skip_empty and (lo := raw.min()) == raw.max():
        # constant input: restoration keeps the value, segmentation says background (class 0)
        if plan.kind == "segmentation":
            y = np.zeros((plan.out_channels, oh, ow), np.float32)
            y[0] = 1.0
        else:
            y = np.full((plan.out_channels, oh, ow), float(lo), np.float32)
    else:
        x = normalize(raw, plan.norm)
        worker = get_worker(plan.ref, plan.device, plan.precision, plan.batch_size, plan.tta)
        geom = (h, ye - ys, xe - xs, oy, ox)
        y = worker.submit(x, geom, run.cancel if run is not None else None).result()
        y = y[:, oy * s:oy * s + oh, ox * s:ox * s + ow]
        y = denormalize(y, plan.norm) if plan.kind == "restoration" else y
    y = _cast(y, plan.out_dtype)
    if run is not None:
        run.tick(oh * ow)
    return _to_block(plan, y)


def _non_finite_message(plan: Plan, box, plane: dict[int, int], ky: int, kx: int,
                        raw: np.ndarray) -> str:
    """Where the first NaN/inf of a tile's window is, in input coordinates."""
    f, iy, ix = (int(v) for v in np.argwhere(~np.isfinite(raw))[0])
    n_c = plan.in_shape[plan.in_axes.index("C")] if "C" in plan.in_axes else 1
    at = []
    for i, a in enumerate(plan.in_axes):
        if a == "Y":
            v = box[i][iy]
        elif a == "X":
            v = box[i][ix]
        elif a == "C":
            v = f % n_c
        elif i == plan.frame_axis:
            v = box[i][f // n_c]
        else:
            v = box[i]
        at.append(f"{a}={int(v)}")
    where = ", ".join(f"{plan.in_axes[i]}={k}" for i, k in sorted(plane.items()))
    (ys, ye), (xs, xe) = plan.ty.core_range(ky), plan.tx.core_range(kx)
    value = raw[f, iy, ix]
    return (f"the input contains NaN or inf values: {value} at {', '.join(at)} (axes "
            f"{plan.in_axes}), read for the tile {where + ', ' if where else ''}Y {ys}-{ye}, "
            f"X {xs}-{xe}; replace them (e.g. numpy.nan_to_num) before restoring or segmenting")


def _cast(y: np.ndarray, dtype: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return np.clip(np.rint(y), info.min, info.max).astype(dt)
    return y.astype(dt, copy=False)


def _to_block(plan: Plan, y: np.ndarray) -> np.ndarray:
    """``(channels, h, w)`` -> the output block, with size-1 plane axes and C where it goes."""
    shape = []
    for a in plan.out_axes:
        shape.append(y.shape[0] if a == "C" else y.shape[1] if a == "Y" else
                     y.shape[2] if a == "X" else 1)
    if "C" in plan.out_axes:
        c = plan.out_axes.index("C")
        y = np.moveaxis(y.reshape((y.shape[0],) + (1,) * (len(plan.out_axes) - 3) + y.shape[1:]),
                        0, c)
    return y.reshape(shape)


def _tiling(model, config: TileConfig, size_y: int, size_x: int, rf: int,
            align: int) -> tuple[AxisTiling, AxisTiling]:
    """The Y and X tilings: the halo given, else the model's measured tolerance halo
    (``halo_px``; :mod:`.halo`) unless ``exact``, else its receptive field; the tile given,
    else with a tolerance halo the largest tiles that fit the device's memory
    (:mod:`.memory`), else :func:`default_tile`."""
    tolerance_halo = config.halo is None and not config.exact and model.default_halo != rf
    halo = int(config.halo) if config.halo is not None else \
        (model.default_halo if tolerance_halo else rf)
    tile = config.tile
    if tile % align:
        raise ValueError(f"tile {tile} must be a multiple of {align} (model alignment)")
    if "tile" in config.model_fields_set:
        if tile < halo:
            raise ValueError(f"tile {tile} is smaller than the halo {halo}: most of each tile's "
                             f"work would be thrown away; use a tile >= {round_up(halo, align)} "
                             "or a smaller halo")
        tile_y = tile_x = tile
    elif tolerance_halo:
        tile_y, tile_x = _fitted_tiles(model, config, size_y, size_x, halo, align)
    else:
        tile_y = tile_x = default_tile(halo, align)  # grows with the halo
    if halo < rf and not tolerance_halo:
        warnings.warn(f"halo {halo} is below the model's receptive field {rf}: seams between tiles "
                      "may be visible (differences above 1e-4)", stacklevel=4)
    reflect = config.border == "reflect"
    return (tile_axis(size_y, tile_y, halo, align, reflect),
            tile_axis(size_x, tile_x, halo, align, reflect))


def _fitted_tiles(model, config: TileConfig, size_y: int, size_x: int, halo: int,
                  align: int) -> tuple[int, int]:
    """The largest (balanced) tiles whose windows fit the memory bound of the device that
    will run them: the more of each window is core, the less is spent on halos."""
    from ..config import MAX_TILE
    from .device import resolve_device
    from .memory import max_window_pixels

    device = resolve_device(config.device)
    batch = config.batch_size or (8 if device.startswith("cuda") else 1)
    rf = int(model.receptive_field)
    former = default_tile(rf, align) + round_up(2 * rf, align)  # the former default window
    budget = max_window_pixels(model, device, batch, floor_px=former ** 2)
    return fit_tiles(size_y, size_x, halo, budget, align, max_tile=MAX_TILE,
                     reflect=config.border == "reflect")


@dataclass
class Built:
    data: object
    image: ImageData
    out_axes: str
    plan: Plan


def build(model, image, config: TileConfig | None, axes, progress, cancel) -> Built:
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    config = config or TileConfig()
    model = as_model(model)
    img = open_image(image, axes=axes)
    x = img.data
    in_axes = check_axes(img.axes, x.ndim)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        # a bool mask restored to all-True, silently: only intensities can be restored
        raise ValueError(f"cannot restore an image of dtype {x.dtype} (a mask or labels?): "
                         "give intensities (integer or float)")
    # channels
    n_in = x.shape[in_axes.index("C")] if "C" in in_axes else 1
    if n_in != model.in_channels:
        where = f"a C axis of {n_in}" if "C" in in_axes else "no C axis (1 channel)"
        raise ValueError(f"model {model.name!r} takes {model.in_channels} input channel(s) but the "
                         f"image (axes {in_axes!r}, shape {tuple(x.shape)}) has {where}")
    frame_axis = None
    if model.frames > 1:
        # neighbours come from T when there is a time series (T > 1), else from Z: a z-stack
        # stored as TCZYX with T = 1 must not give the model copies of one plane
        if "T" in in_axes and (x.shape[in_axes.index("T")] > 1 or "Z" not in in_axes):
            fa = "T"
        else:
            fa = "Z" if "Z" in in_axes else None
        if fa is None:
            raise ValueError(f"model {model.name!r} takes {model.frames} frames along T or Z but "
                             f"the image axes {in_axes!r} have neither")
        frame_axis = in_axes.index(fa)
    if model.kind == "segmentation" and model.scale != 1:
        raise ValueError("segmentation models must have scale 1")
    # tiles and halo
    align = math.lcm(ALIGN, int(model.alignment or ALIGN))
    rf = int(model.receptive_field)
    size_y, size_x = x.shape[in_axes.index("Y")], x.shape[in_axes.index("X")]
    ty, tx = _tiling(model, config, size_y, size_x, rf, align)
    # output
    out_ax = output_axes(model, in_axes)
    s = model.scale
    if config.output_dtype == "input" and model.kind == "restoration":
        out_dtype = np.dtype(x.dtype).str
    else:
        out_dtype = np.dtype(np.float32).str
    # the whole input's percentiles (one streamed pass), unless given: every tile then maps
    # intensities alike, and a crop restores as in the whole result when given its range
    given = config.input_range if config.input_range is not None else \
        input_range(model.config.norm, x)
    norm = resolve(model.config.norm, x, given)
    ref = register(model, need_file=distributed_client() is not None)
    run_id = uuid.uuid4().hex
    plan = Plan(ref=ref, in_name=x.name, in_axes=in_axes, in_shape=tuple(int(v) for v in x.shape),
                 in_chunks=tuple(tuple(int(c) for c in cs) for cs in x.chunks), out_axes=out_ax,
                 out_dtype=out_dtype, ty=ty, tx=tx, scale=s, frames=model.frames,
                 frame_axis=frame_axis, kind=model.kind, out_channels=model.out_channels,
                 skip_empty=config.skip_empty, device=config.device, precision=config.precision,
                 batch_size=config.batch_size, tta=config.tta, run_id=run_id, pid=os.getpid(),
                 norm=norm, input_range=given)
    # the normalisation and architecture too: the same weights with another norm (an edited
    # model.json) compute other tiles, and a dask cache or a resumed store must not mix them
    token = tokenize(model.weights_hash, norm.model_dump_json(),
                     model.config.arch.model_dump_json(), x.name, in_axes, out_ax, out_dtype, ty,
                     tx, model.frames, config.skip_empty, config.precision, config.tta, model.kind)
    name = f"restore-{token}"
    plan_key = f"{name}-plan"
    chunks = []
    for a in out_ax:
        if a == "C":
            chunks.append((model.out_channels,))
        elif a == "Y":
            chunks.append(tuple((ty.core_range(k)[1] - ty.core_range(k)[0]) * s for k in range(ty.n)))
        elif a == "X":
            chunks.append(tuple((tx.core_range(k)[1] - tx.core_range(k)[0]) * s for k in range(tx.n)))
        else:
            chunks.append((1,) * x.shape[in_axes.index(a)])
    layer: dict = {plan_key: plan}
    for out_idx in itertools.product(*(range(len(c)) for c in chunks)):
        plane, ky, kx = _split_out_index(plan, out_idx)
        keys = [(x.name, *ci) for ci in itertools.product(*plan.chunk_ranges(plan.box(plane, ky, kx)))]
        layer[(name, *out_idx)] = (_tile_task, plan_key, tuple(out_idx), keys)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[x])
    total = int(np.prod([len(c) for c in chunks]))
    RUNS[run_id] = Run(progress=progress, cancel=cancel, total=total)
    # the progress record lives as long as some graph holds the plan (the array, or anything
    # derived from it), then goes: lazy arrays dropped by napari or a script leave nothing behind
    weakref.finalize(plan, RUNS.pop, run_id, None)
    out = da.Array(graph, name, chunks=tuple(chunks), dtype=np.dtype(out_dtype),
                   meta=np.empty((0,) * len(out_ax), dtype=np.dtype(out_dtype)))
    return Built(data=out, image=img, out_axes=out_ax, plan=plan)
