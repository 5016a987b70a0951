"""Writing crappified training pairs (and any stack) to TIFF or OME-Zarr files.

:func:`write_pairs` crappifies every plane of an HR stack lazily and writes the LR/HR pair with
its JSON record, bounded in memory, cancellable, and all or nothing; :func:`save_stack` is the
writer dispatch it uses (by file extension). The Crappify dock's "Write training pairs" runs it.
"""

from __future__ import annotations

import numpy as np

from .intensity_scale import intensity_range
from .progress import Progress


def save_stack(path, data, axes: str, scale=None, translate=None, units=None, *,
               overwrite: bool = False, progress=None, cancel=None, name: str | None = None,
               metadata: dict | None = None):
    """Write ``data`` (numpy or lazy dask) as a TIFF (``*.tif``/``*.tiff``) or an OME-Zarr
    (anything else), chunk by chunk with bounded memory.

    A thin dispatch to :func:`napari_decrappify.io.write_tiff` (OME-TIFF, plane by plane; the
    origin as OME plane positions) and :func:`napari_decrappify.io.write_ome_zarr` (resumable: rerunning
    the same computation finishes an interrupted store). ``progress`` receives their events
    (:class:`~napari_decrappify.progress.RateProgress`); setting ``cancel`` (a
    ``threading.Event``) raises ``io.RestoreCancelled``.

    Returns
    -------
    Path
    """
    from pathlib import Path

    from . import io

    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return io.write_tiff(path, data, axes=axes, scale=scale, translate=translate, units=units,
                             overwrite=overwrite, progress=progress, cancel=cancel)
    return io.write_ome_zarr(path, data, axes=axes, scale=scale, translate=translate, units=units,
                             overwrite=overwrite, progress=progress, cancel=cancel, name=name,
                             metadata=metadata)


def _plane_count(shape) -> int:
    return int(np.prod(shape[:-2])) if len(shape) > 2 else 1


def write_pairs(hr, out_dir, config, *, seed: int = 0, axes: str | None = None, scale=None,
                translate=None, units=None, fmt: str = "tif", name: str = "pair",
                overwrite: bool = False, progress=None, cancel=None) -> dict:
    """Crappify every plane of ``hr`` and write the LR/HR training pair to ``out_dir``.

    Writes ``<name>_lr.<ext>`` (float32 in the HR's intensity units: 0..255 for uint8 HR,
    [0, 1] for float HR; LR geometry from
    :func:`napari_decrappify.io.downscale_geometry`), ``<name>_hr.<ext>`` (the HR as given,
    cropped to a multiple of the scale so that the pair is registered exactly) and
    ``<name>.json`` (degradation, seed, geometry). Plane ``i`` of the LR is
    ``Crappifier(config)(hr[i], seed=plane_rng(seed, i))`` in those units: what the Crappify
    dock previews.

    Parameters
    ----------
    hr : array-like
        numpy / dask / zarr, Y, X last.
    out_dir : str or Path
    config : CrappifyConfig or Crappifier
    seed : int
    axes : str, optional
        Default: guessed from the number of dimensions.
    scale, translate, units : sequence, optional
        The HR's geometry per axis.
    fmt : {"tif", "zarr"}
    name : str
        File name stem.
    overwrite : bool
        Replace existing files of that name; otherwise they are an error (checked first).
    progress : callable, optional
        Receives :class:`~napari_decrappify.progress.Progress` events, read as ``{"event":
        "pairs", "stage": "lr" | "hr", "done", "total"}`` (planes of both files together).
    cancel : threading.Event, optional
        Stops between chunks (raises ``io.RestoreCancelled``); a cancelled or failed call
        removes what it wrote, so no LR is left without its HR.

    Returns
    -------
    dict
        ``{"lr": path, "hr": path, "json": path, "lr_shape", "hr_shape"}``.
    """
    import json
    import os
    import shutil
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import dask
    import dask.array as da

    from . import __version__
    from .config import CrappifyConfig
    from .crappify import crappify_lazy, from_unit
    from .io import check_axes, downscale_geometry, guess_axes

    if fmt not in ("tif", "zarr"):
        raise ValueError(f"unknown pair format {fmt!r} (tif or zarr)")
    config = config if isinstance(config, CrappifyConfig) else config.config
    hr_d = hr if isinstance(hr, da.Array) else da.asarray(hr)
    axes = check_axes(axes or guess_axes(hr_d.ndim), hr_d.ndim)
    n = hr_d.ndim
    scale = tuple(float(v) for v in (scale if scale is not None else (1.0,) * n))
    translate = tuple(float(v) for v in (translate if translate is not None else (0.0,) * n))
    units = tuple(str(u) for u in (units if units is not None else ("pixel",) * n))
    s = config.scale
    h, w = hr_d.shape[-2:]
    hr_d = hr_d[..., : h - h % s, : w - w % s].rechunk((1,) * (n - 2) + (-1, -1))
    # the LR in the HR's intensity units (float32, not rounded): a model trained on this kind of
    # data restores it, and it shares the HR's contrast ([0, 1] restored to garbage with uint8
    # models)
    lr_d = from_unit(crappify_lazy(hr_d, config, seed=seed), hr_d.dtype)
    lr_scale, lr_translate = downscale_geometry(scale, translate, axes, s)
    out_dir = Path(out_dir)
    ext = ".tif" if fmt == "tif" else ".zarr"
    paths = {"lr": out_dir / f"{name}_lr{ext}", "hr": out_dir / f"{name}_hr{ext}",
             "json": out_dir / f"{name}.json"}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exists in {out_dir}: choose another name or "
                              "allow overwriting")
    out_dir.mkdir(parents=True, exist_ok=True)
    planes = _plane_count(hr_d.shape)
    total = 2 * planes
    meta = {"napari_decrappify": __version__, "crappify": config.model_dump(mode="json"),
            "seed": seed, "plane_seed": "crappify.plane_rng(seed, plane index)", "axes": axes,
            "units": list(units),
            "hr": {"file": paths["hr"].name, "shape": list(hr_d.shape), "dtype": str(hr_d.dtype),
                   "scale": list(scale), "translate": list(translate)},
            "lr": {"file": paths["lr"].name, "shape": list(lr_d.shape), "dtype": "float32",
                   "range": list(intensity_range(hr_d.dtype)), "scale": list(lr_scale),
                   "translate": list(lr_translate)}}
    complete = False
    # Our own thread pool (dask's threaded scheduler takes it from the config): when a cancel
    # stops the computation, chunk writes already running finish in the background; shutting
    # the pool down waits for them, so the clean-up below is not undone by a late chunk.
    pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="write-pairs")
    try:
        with dask.config.set(pool=pool):
            for k, (stage, data, geo) in enumerate((("lr", lr_d, (lr_scale, lr_translate)),
                                                    ("hr", hr_d, (scale, translate)))):
                def relay(ev, k=k, stage=stage):
                    if progress is not None and ev.get("total"):
                        done = k * planes + round(planes * ev["done"] / ev["total"])
                        progress(Progress("pairs", done, total, extra={"stage": stage}))

                save_stack(paths[stage], data, axes, geo[0], geo[1], units, overwrite=overwrite,
                           progress=relay, cancel=cancel, name=f"{name} {stage.upper()}",
                           metadata=meta)
        paths["json"].write_text(json.dumps(meta, indent=2))
        complete = True
    finally:
        pool.shutdown(wait=True)
        if not complete:  # cancelled or failed: nothing half-written, no LR without its HR
            for p in paths.values():
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    return {**{k: str(v) for k, v in paths.items()}, "lr_shape": tuple(lr_d.shape),
            "hr_shape": tuple(hr_d.shape)}
