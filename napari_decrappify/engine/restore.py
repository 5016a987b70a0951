"""The engine's entry points: restore an image lazily (:func:`restore_lazy`), with its physical
geometry (:func:`restore_image`), or now into numpy (:func:`restore`); and the whole-plane
reference that tiling must reproduce (:func:`restore_whole`).

Output layout
    Restoration: float32 (or the input dtype, ``TileConfig.output_dtype="input"``) in the
    input's intensity units, Y and X multiplied by ``model.scale``, same axes as the input (a
    ``C`` axis is added in front if the model has several output channels and the input has
    none). Segmentation models (scale 1, softmax head): class probabilities on a new leading
    ``C`` axis (the input's own ``C``, if any, is consumed), float32.
    :func:`~.geometry.output_axes` gives the axes; :func:`restore_image` returns them with the
    physical geometry.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np

from ..config import TileConfig
from ..io import ImageData, RestoreCancelled, open_image, upscale_geometry
from ..normalization import describe
from .distributed import compute_distributed, use_scheduler
from .geometry import ALIGN, round_up
from .graph import RUNS, Plan, build
from .registry import as_model


def restore_lazy(model, image, config: TileConfig | None = None, *, axes: str | None = None,
                 progress=None, cancel: threading.Event | None = None):
    """Restore (or segment) an image lazily, tile by tile.

    Parameters
    ----------
    model : RestorationModel, str or path
        A loaded model, a model folder, or the name of a bundled/user model. A folder or name
        is loaded once and reused (with its device worker) while its files are unchanged.
    image : numpy, dask or zarr array, ImageData, or a path (TIFF, Zarr, OME-Zarr)
        Files are opened lazily (:func:`napari_decrappify.io.open_image`).
    config : TileConfig, optional
        Tile size and halo (default: the model's measured tolerance halo, ``halo_px``, and
        the largest tile whose window fits the device's memory; ``exact=True`` or a model
        without ``halo_px``: the receptive field and 512 px tiles), device, precision, batch size,
        ``skip_empty`` (constant input tiles are not run: a restoration returns the constant,
        a segmentation class 0), ``output_dtype``, ``tta`` (mean over the 8 rotations and
        flips of each tile: a little better, 8 times slower).
    axes : str, optional
        Axes of ``image`` (``"ZYX"``...); default: from the file, else guessed from ndim.
        Multi-frame models take their neighbouring frames along T when T > 1, else along Z.
    progress : callable, optional
        Called from worker threads after each tile with a
        :class:`~napari_decrappify.progress.RateProgress` (read as ``{"event": "tiles",
        "done", "total", "mpix_per_s", "eta"}``: output megapixels per second, seconds left). Under
        dask.distributed the tiles run elsewhere and this is not called from them: use
        :func:`restore` or :func:`~napari_decrappify.io.write_ome_zarr`, which report there.
    cancel : threading.Event, optional
        When set, tiles not yet started raise :class:`RestoreCancelled`.

    Returns
    -------
    dask.array.Array
        Chunks are tiles (axes: :func:`output_axes`). Float32 in the input's units, Y and X
        multiplied by ``model.scale``; class probabilities on a leading C axis for segmentation.

    Raises
    ------
    ValueError
        Bad axes, channels or tile settings (at once); a tile whose window reads NaN or inf
        input (when that tile is computed: the message says where).
    """
    return build(model, image, config, axes, progress, cancel).data


def restore_image(model, image, config: TileConfig | None = None, *, axes: str | None = None,
                  progress=None, cancel: threading.Event | None = None,
                  pixel_size_mismatch: str = "resample", check_domain: bool = True) -> ImageData:
    """:func:`restore_lazy` with the output's axes and physical geometry (scale, translate and
    units per :func:`napari_decrappify.io.upscale_geometry`), ready for a layer or a writer.

    The input's pixel size (from its metadata, or the geometry of an :class:`ImageData`) is
    compared with the model's (:mod:`napari_decrappify.pixel_size`): beyond 15%,
    ``pixel_size_mismatch="resample"`` resamples the input to the model's grid and the result
    to the input's grid times the scale (same field of view, same geometry as without
    resampling); ``"warn"`` restores as it is; ``"error"`` raises a ValueError. With
    ``check_domain``, a few hundred 64 x 64 patches of the input are compared with the model's
    training inputs (:mod:`napari_decrappify.domain`). The result's ``metadata`` says what was
    done and found (``pixel_size``, ``normalisation``, ``input_range``, ``domain``).
    """
    from ..pixel_size import check, model_grid_shape, resample_yx

    model = as_model(model)
    img = open_image(image, axes=axes)
    ps = check(model, img.scale, img.units, img.axes, pixel_size_mismatch)
    source = img
    if ps.action == "resample":
        iy, ix = img.axes.index("Y"), img.axes.index("X")
        yx = (img.data.shape[iy], img.data.shape[ix])
        grid = model_grid_shape(yx, ps.factor)
        order = 1 if grid[0] < yx[0] or grid[1] < yx[1] else 3
        source = dataclasses.replace(img, data=resample_yx(img.data, img.axes, grid, order))
    b = build(model, source, config, img.axes, progress, cancel)
    data = b.data
    if ps.action == "resample":
        s = model.scale
        # bicubic up to the asked grid; linear with anti-aliasing down to it
        order = 3 if yx[0] >= grid[0] and yx[1] >= grid[1] else 1
        data = resample_yx(data, b.out_axes, (yx[0] * s, yx[1] * s), order=order)
    scale, translate = upscale_geometry(img.scale, img.translate, img.axes, model.scale)
    units = img.units
    if b.out_axes != img.axes:  # a C axis in front (and the input's C consumed)
        keep = [i for i, a in enumerate(img.axes) if a != "C"] if model.kind == "segmentation" \
            else list(range(len(img.axes)))
        scale = (1.0,) + tuple(scale[i] for i in keep)
        translate = (0.0,) + tuple(translate[i] for i in keep)
        units = ("pixel",) + tuple(units[i] for i in keep)
    return ImageData(data=data, axes=b.out_axes, scale=tuple(scale), translate=tuple(translate),
                     units=tuple(units), name=f"{img.name} restored ({model.name})",
                     metadata={"model": model.name, "weights_sha256": model.weights_hash,
                               "kind": model.kind, "halo": b.plan.ty.halo, "tile": b.plan.ty.core,
                               "normalisation": describe(model.config.norm, b.plan.input_range),
                               "input_range": b.plan.input_range,
                               "pixel_size": ps.as_dict(),
                               "domain": _domain(model, source, b.plan, check_domain)})


def _domain(model, source: ImageData, plan: Plan, check_domain: bool) -> dict:
    """The out-of-domain verdict on what the network sees (the resampled input, if so)."""
    from ..domain import check

    if not check_domain or model.kind != "restoration":
        return {"in_domain": None, "findings": [], "message": "not checked"}
    return check(model, source.data, source.axes, plan.input_range)


def restore(model, image, config: TileConfig | None = None, *, axes: str | None = None,
            progress=None, cancel: threading.Event | None = None, scheduler=None) -> np.ndarray:
    """Restore an image now: :func:`restore_lazy`, computed into a numpy array.

    ``scheduler``: None (the active dask.distributed Client if any, else threads),
    ``"threads"``, ``"sync"``, ``"local"`` (a LocalCluster for this call) or a scheduler
    address. Progress and cancel work with every scheduler.
    """
    with use_scheduler(scheduler) as client:
        built = build(model, image, config, axes, progress, cancel)
        arr = built.data
        try:
            if client is None:
                result = arr.compute(scheduler="sync" if scheduler == "sync" else "threads")
            else:
                persisted = client.persist(arr)
                compute_distributed(client, persisted, RUNS.get(built.plan.run_id), cancel,
                                     int(np.prod([c[0] for c in arr.chunks])))
                result = persisted.compute()
        finally:
            RUNS.pop(built.plan.run_id, None)
    if cancel is not None and cancel.is_set():
        raise RestoreCancelled("restore cancelled")
    return result



def restore_whole(model, plane: np.ndarray, border: int = 0) -> np.ndarray:
    """The reference that tiling must reproduce: one normalised ``(channels, h, w)`` plane,
    extended to the alignment past its far edges by reflection (and reflect-padded by
    ``border`` px first, the reference of ``TileConfig(border="reflect")`` with ``border =
    halo``), run through ``model.net`` in one piece (fp32, calling thread), trimmed. Returns
    ``(out_channels, h*s, w*s)`` in network units. Small images only (tests and the seams
    benchmark)."""
    import torch

    x = np.asarray(plane, dtype=np.float32)
    _, h, w = x.shape
    a = math.lcm(ALIGN, int(model.alignment or ALIGN))
    b = int(border)
    py = round_up(h + 2 * b, a) - h - b
    px = round_up(w + 2 * b, a) - w - b
    xp = np.pad(x, ((0, 0), (b, py), (b, px)), mode="reflect")
    s = model.scale
    with torch.inference_mode():
        device = next(model.net.parameters()).device
        y = model.net(torch.from_numpy(xp)[None].to(device)).float().cpu().numpy()[0]
    return y[:, b * s:(b + h) * s, b * s:(b + w) * s]

