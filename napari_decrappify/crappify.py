"""Crappify: degrade high-resolution images the way a faster, gentler acquisition would.

All functions take 2-D planes or stacks (the last two axes are Y, X) of uint8, uint16 or float
and return float32. Intensities are first mapped to [0, 1] by :func:`to_unit` (uint8 / 255,
uint16 / 65535, float kept as is); noise levels are on that [0, 1] scale, and with
``clip=True`` (the default) the output stays in [0, 1].

Every random function takes a seed or a :class:`numpy.random.Generator`: the same seed gives
the same output. Stacks processed plane by plane (:func:`crappify_lazy`, the Crappify dock, the
``decrappify crappify`` command) seed each plane with :func:`plane_rng` (seed + plane index), so
a plane's result does not depend on how the stack was chunked or in which order it ran.

:func:`fit` goes the other way: from a real registered LR/HR pair it estimates the parameters
(scale, blur, Poisson photons, read noise, salt-and-pepper) that make synthetic LR match the real
LR statistics, and reports how well they match.

Every crappify name is imported from here (``from napari_decrappify.crappify import
Crappifier``); the code lives in one module per concern:

- :mod:`napari_decrappify.intensity_scale`: the [0, 1] scale (:func:`to_unit`,
  :func:`from_unit`, :func:`intensity_range`) and the input checks (:func:`check_image`,
  :func:`check_unit_float`, :func:`check_noise_scale`).
- :mod:`napari_decrappify.degradation`: the operators (:func:`downsample`, :func:`blur`,
  :func:`poisson_noise`, :func:`gaussian_noise`, :func:`salt_pepper`), :class:`Crappifier`,
  :func:`crappify`, the benchmark protocol :func:`protocol_lr` and the seeds (:func:`plane_rng`).
- :mod:`napari_decrappify.degradation_fit`: :func:`fit` to a real pair, :class:`FitResult`,
  :func:`infer_scale`, :func:`radial_power_spectrum`.
- this module: stacks of any size, lazily (:func:`crappify_lazy`, big planes in tiles,
  :func:`lr_shape`) and files (:func:`crappify_file`). The tiling thresholds
  :data:`BIG_PLANE` and :data:`PLANE_TILE` are read here at call time, so setting them on this
  module changes what :func:`crappify_lazy` does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .config import CrappifyConfig, CrappifyDtype, check_scale, choices
from .degradation import (
    Crappifier,
    RngLike,
    blur,
    crappify,
    crop_to_multiple,
    downsample,
    gaussian_noise,
    plane_rng,
    poisson_noise,
    protocol_lr,
    salt_pepper,
)

# private names the single module held, still importable from here
from .degradation import _downsample as _downsample
from .degradation import _draw as _draw
from .degradation import _rng as _rng
from .degradation_fit import FitResult, fit, infer_scale, radial_power_spectrum
from .degradation_fit import _censored_variance as _censored_variance
from .degradation_fit import _fit_mean as _fit_mean
from .degradation_fit import _fit_noise as _fit_noise
from .degradation_fit import _norm_cdf as _norm_cdf
from .degradation_fit import _wls_line as _wls_line
from .intensity_scale import (
    check_image,
    check_noise_scale,
    check_unit_float,
    from_unit,
    intensity_range,
    to_unit,
)

__all__ = [
    "BIG_PLANE", "PLANE_TILE", "Crappifier", "FitResult", "RngLike", "blur", "check_image",
    "check_noise_scale", "check_unit_float", "crappify", "crappify_file", "crappify_lazy",
    "crop_to_multiple", "downsample", "fit", "from_unit", "gaussian_noise", "infer_scale",
    "intensity_range", "lr_shape", "plane_rng", "poisson_noise", "protocol_lr",
    "radial_power_spectrum", "salt_pepper", "to_unit",
]


# --------------------------------------------------------------------------- stacks, lazily

# HR pixels of a plane above which it is crappified in tiles: a 100 000^2 plane crappified
# whole took 10 GiB within 20 s. Planes up to this size keep their plane-seeded results.
BIG_PLANE = 4096 * 4096
PLANE_TILE = 4096  # HR pixels per tile side (rounded down to a multiple of the scale)


def _crappify_tiled(data, crap: Crappifier, seed: int):
    """:func:`crappify_lazy` for planes over :data:`BIG_PLANE` pixels: tiles of
    :data:`PLANE_TILE` with a halo for the blur (and the anti-aliasing of bilinear/bicubic
    downsampling), so memory is bounded by a few tiles. Blur and block mean equal the whole
    plane's; an acquisition setting drawn from a range is drawn once per plane, and the noise
    is seeded per tile (``plane_rng(seed, plane index + tile index)``): the same whatever the
    chunking of the input."""

    import dask.array as da
    from dask.base import tokenize

    s, lead = crap.scale, data.ndim - 2
    c = crap.config
    # not cropped to a multiple of the scale first: the blur reflects at the plane's own edge,
    # as the whole plane's does; the last tile's downsampling drops its remainder
    h, w = data.shape[-2:]
    sigma = max(c.blur_sigma) if isinstance(c.blur_sigma, tuple) else c.blur_sigma
    reach = int(4 * sigma + 0.5) + 1 if sigma else 0  # scipy's gaussian radius (truncate 4)
    if c.downsample != "mean":
        reach += 4 * s  # the anti-aliasing filter of skimage's resize (sigma (s - 1) / 2)
    depth = -(-reach // s) * s  # whole LR pixels, so the crop in LR space is exact
    tile = max(PLANE_TILE // s * s, depth, s)

    def sizes(n):
        chunks = [tile] * (n // tile) + ([n % tile] if n % tile else [])
        if len(chunks) > 1 and chunks[-1] < depth:  # map_overlap needs chunks >= depth
            chunks[-2:] = [chunks[-2] + chunks[-1]]
        return tuple(chunks)

    data = data.rechunk((1,) * lead + (sizes(h), sizes(w)))
    if depth:
        padded = da.overlap.overlap(data, depth={lead: depth, lead + 1: depth},
                                    boundary={lead: "reflect", lead + 1: "reflect"})
    else:
        padded = data
    d = depth // s

    def block(x, block_info=None):
        loc = block_info[0]["chunk-location"]
        index, tile_index = tuple(loc[:lead]), tuple(loc[lead:])
        setting = crap.fixed(plane_rng(seed, index))  # one acquisition per plane
        u = to_unit(check_unit_float(x.reshape(x.shape[-2:])))
        sig = setting.config.blur_sigma
        if sig:
            u = blur(u, sig)
        u = downsample(u, s, setting.config.downsample)
        if d:
            u = u[d:u.shape[0] - d, d:u.shape[1] - d]
        lr = setting._noise(u, plane_rng(seed, index + tile_index))
        return lr.reshape((1,) * lead + lr.shape)

    chunks = padded.chunks[:lead] + tuple(tuple((n - 2 * depth) // s for n in cs)
                                          for cs in padded.chunks[lead:])
    name = "crappify-tiled-" + tokenize(data.name, c.model_dump_json(), int(seed))
    return padded.map_blocks(block, dtype=np.float32, chunks=chunks,
                             meta=np.empty((0,) * data.ndim, np.float32), name=name)


def lr_shape(shape: Sequence[int], scale: int) -> tuple[int, ...]:
    """Shape of the LR made from an HR of ``shape`` (Y, X divided by ``scale``, rounded down)."""
    scale = check_scale(scale)
    *lead, h, w = shape
    if h < scale or w < scale:
        raise ValueError(f"image of {h} x {w} pixels is smaller than the scale {scale}")
    return (*lead, h // scale, w // scale)


def crappify_lazy(image, config: CrappifyConfig | Crappifier, seed: int = 0):
    """Crappify a (large, lazy) stack plane by plane with dask.

    Parameters
    ----------
    image : array-like
        numpy, dask or zarr array with Y, X last (2-D to 5-D).
    config : CrappifyConfig or Crappifier
    seed : int
        Each plane is seeded with :func:`plane_rng` ``(seed, plane index)``: the result is the
        same whatever the chunking or scheduler.

    Returns
    -------
    dask.array.Array
        float32 LR stack, chunked one plane per chunk, shape :func:`lr_shape`.
    """
    import dask.array as da
    from dask.base import tokenize

    crap = config if isinstance(config, Crappifier) else Crappifier(config)
    data = image if isinstance(image, da.Array) else da.asarray(image)
    if data.ndim < 2:
        raise ValueError(f"image must have at least 2 dimensions (..., Y, X), got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ValueError(f"image has unsupported dtype {data.dtype} (need integer or float)")
    check_noise_scale(data.dtype, crap.config)  # before any plane is written
    lead = data.ndim - 2
    out_shape = lr_shape(data.shape, crap.scale)
    if data.shape[-2] * data.shape[-1] > BIG_PLANE:
        return _crappify_tiled(data, crap, seed)
    data = data.rechunk((1,) * lead + (-1, -1))

    def block(x, block_info=None):
        index = block_info[0]["chunk-location"][:lead] if block_info else (0,) * lead
        plane = crap(check_unit_float(x.reshape(x.shape[-2:])), seed=plane_rng(seed, index))
        return plane.reshape((1,) * lead + plane.shape)

    # a deterministic name (input, degradation, seed): a rerun of an interrupted write of this
    # result recognises it and resumes (io.write_ome_zarr fingerprints by the dask name)
    name = "crappify-" + tokenize(data.name, crap.config.model_dump_json(), int(seed))
    return data.map_blocks(block, dtype=np.float32, chunks=(1,) * lead + out_shape[-2:],
                           meta=np.empty((0,) * data.ndim, np.float32), name=name)


# --------------------------------------------------------------------------- files


def _to_dtype(lr, dtype: str, input_dtype):
    """float32 [0, 1] LR -> the requested output dtype (0..1 scaled to 0..the integer's maximum)."""
    if dtype == "input":
        # any integer input dtype (int16 EM, uint32 ...): the inverse of to_unit's mapping
        dtype = str(np.dtype(input_dtype)) if np.issubdtype(input_dtype, np.integer) else "float32"
    elif dtype not in choices(CrappifyDtype):
        raise ValueError(f"unknown output dtype {dtype!r} ({', '.join(choices(CrappifyDtype))})")
    if dtype == "float32":
        return lr
    lo, hi = intensity_range(dtype)
    return lr.map_blocks(_scale_to_int, lo, hi, dtype, dtype=dtype, name=f"{lr.name}-{dtype}")


def _scale_to_int(x, lo, hi, dtype):
    # float64: float32 cannot hold every value of a 32-bit integer range
    return np.rint(np.clip(x, 0, 1).astype(np.float64) * (hi - lo) + lo).astype(dtype)


def crappify_file(source, out, config: CrappifyConfig, *, seed: int = 0, axes: str | None = None,
                  pixel_size: Sequence[float] | None = None, units: Sequence[str] | None = None,
                  dtype: CrappifyDtype = "float32", overwrite: bool = False, progress=None,
                  cancel=None) -> dict:
    """Crappify an image file (or array) that may be larger than memory, plane by plane.

    Reads lazily with :func:`napari_decrappify.io.open_image` (TIFF through its zarr store,
    Zarr / OME-Zarr), crappifies with :func:`crappify_lazy` (one chunk per plane, seeded by
    :func:`plane_rng`) and streams the result with :func:`napari_decrappify.io.write_tiff`
    (``*.tif`` outputs) or :func:`napari_decrappify.io.write_ome_zarr` (anything else) with the LR geometry of
    :func:`napari_decrappify.io.downscale_geometry`. Memory stays bounded by a few planes.

    Parameters
    ----------
    source : str, Path or array
    out : str or Path
    config : CrappifyConfig
    seed : int
    axes : str, optional
        Axes of the input (default: from the file, else guessed from the number of dimensions).
    pixel_size, units : sequence, optional
        Override the input's pixel size / units per axis.
    dtype : {"float32", "uint8", "uint16", "input"}
        Output dtype: float32 in [0, 1], or integers from 0 to their maximum.
    overwrite : bool
        Replace ``out``. Without it an existing ``out`` is an error, except an unfinished
        OME-Zarr of the same computation (same input file, parameters and seed), which is
        resumed: finished chunks are not recomputed.
    progress : callable, optional
        Receives the writer's events (:class:`~napari_decrappify.progress.RateProgress`, read
        as ``{"event": "chunks" | "planes", "done", "total", ...}``).
    cancel : threading.Event, optional
        Stops the write between chunks (``io.RestoreCancelled``).

    Returns
    -------
    dict
        ``out``, ``shape``, ``dtype``, ``axes``, ``scale``, ``translate``, ``units``.
    """
    from pathlib import Path

    from . import io
    from .io import downscale_geometry, open_image

    if dtype != "input" and dtype not in choices(CrappifyDtype):  # every option before work
        raise ValueError(f"unknown output dtype {dtype!r} ({', '.join(choices(CrappifyDtype))})")
    image = open_image(source, axes=axes, scale=pixel_size, units=units)
    lr = crappify_lazy(image.data, config, seed=seed)
    lr = _to_dtype(lr, dtype, image.data.dtype)
    lr_scale, lr_translate = downscale_geometry(image.scale, image.translate, image.axes,
                                                config.scale)
    # (the writers pair_files.save_stack dispatches to, by the same rule, called directly)
    if Path(out).suffix.lower() in (".tif", ".tiff"):
        path = io.write_tiff(out, lr, axes=image.axes, scale=lr_scale, translate=lr_translate,
                             units=image.units, overwrite=overwrite, progress=progress,
                             cancel=cancel)
    else:
        path = io.write_ome_zarr(
            out, lr, axes=image.axes, scale=lr_scale, translate=lr_translate, units=image.units,
            overwrite=overwrite, progress=progress, cancel=cancel, name=f"{image.name} crappified",
            metadata={"crappify": config.model_dump(mode="json"), "seed": int(seed),
                      "source": str(source) if isinstance(source, str | os.PathLike) else None})
    return {"out": str(path), "shape": tuple(lr.shape), "dtype": str(lr.dtype), "axes": image.axes,
            "scale": lr_scale, "translate": lr_translate, "units": tuple(image.units)}
