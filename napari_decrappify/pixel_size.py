"""Pixel size: what a model expects, what an image has, and resampling between the two.

A restoration model records the pixel size of the HR data it was trained on
(``model.json``: ``pixel_size_nm``, Y and X): it expects inputs at that size times its scale
(em-4x: HR 4 nm, so 16 nm inputs). An input whose pixel size (from its file's metadata, its
layer's scale, or given) differs by more than :data:`TOLERANCE` shows the network structures at
another size than it learned them: by default it is resampled to the model's grid, restored,
and the result resampled to the grid the user asked for (the input's pixel size / the scale),
covering exactly the input's field of view. The policy is ``resample``, ``warn`` or ``error``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

PixelSizePolicy = Literal["resample", "warn", "error"]
POLICIES = ("resample", "warn", "error")
TOLERANCE = 0.15  # relative difference tolerated without resampling

_NM_PER = {"nanometer": 1.0, "micrometer": 1e3, "millimeter": 1e6, "meter": 1e9,
           "angstrom": 0.1, "picometer": 1e-3, "centimeter": 1e7}


def to_nm(value: float, unit: str | None) -> float | None:
    """``value`` in ``unit`` as nanometres; None for pixel or unknown units."""
    from .tiff_metadata import unit_name

    factor = _NM_PER.get(unit_name(unit))
    return None if factor is None else float(value) * factor


def image_pixel_size_nm(scale, units, axes: str) -> tuple[float, float] | None:
    """(Y, X) pixel size of an image in nm, or None when either has no physical unit."""
    out = []
    for ax in ("Y", "X"):
        i = axes.index(ax)
        nm = to_nm(scale[i], units[i] if units is not None else None)
        if nm is None or not nm > 0 or not math.isfinite(nm):
            return None
        out.append(nm)
    return out[0], out[1]


def model_input_pixel_size_nm(model) -> tuple[float, float] | None:
    """The input pixel size a model expects: its HR pixel size times its scale."""
    px = model.config.pixel_size_nm
    if not px:
        return None
    y, x = (px[-2], px[-1]) if len(px) >= 2 else (px[0], px[0])
    return float(y) * model.scale, float(x) * model.scale


def trained_factors(model) -> tuple[float, float] | None:
    """The span of input / model pixel-size factors a model was trained over: a model trained
    with zoom augmentation (``training.config.augment.zoom``, HR rescaled by 0.5-2x) saw its
    structures as at 1/2x-2x its pixel size. None: trained at its pixel size only."""
    augment = (((model.config.training or {}).get("config") or {}).get("augment") or {})
    zoom = augment.get("zoom")
    if not zoom or not zoom[0] < zoom[1] or zoom[0] <= 0:
        return None
    return 1.0 / float(zoom[1]), 1.0 / float(zoom[0])


@dataclass(frozen=True)
class PixelSizeCheck:
    """How an input's pixel size compares with a model's, and what restore does about it.

    ``action``: ``"none"`` (within tolerance, or nothing to compare), ``"resample"`` or
    ``"warn"``. ``factor`` (Y, X) is input / model pixel size: the input is resampled to
    ``factor`` times its pixel count (0.5: half as many pixels) before the network sees it.
    """

    input_nm: tuple[float, float] | None
    model_nm: tuple[float, float] | None
    factor: tuple[float, float] | None
    action: str
    message: str

    def as_dict(self) -> dict:
        return {"input_pixel_size_nm": self.input_nm, "model_input_pixel_size_nm": self.model_nm,
                "factor": self.factor, "action": self.action, "message": self.message}


def check(model, scale, units, axes: str, policy: PixelSizePolicy = "resample",
          tolerance: float = TOLERANCE) -> PixelSizeCheck:
    """Compare an input's pixel size with ``model``'s; raise a ValueError under ``"error"``."""
    if policy not in POLICIES:
        raise ValueError(f"pixel-size mismatch policy must be one of {', '.join(POLICIES)}, got "
                         f"{policy!r}")
    want = model_input_pixel_size_nm(model)
    have = image_pixel_size_nm(scale, units, axes)
    if want is None:
        return PixelSizeCheck(have, None, None, "none",
                              f"model {model.name!r} records no pixel size: the input is used as it is")
    if have is None:
        return PixelSizeCheck(None, want, None, "none",
                              f"the input has no pixel size (units in pixels): assumed to be "
                              f"{_fmt(want)} nm, what {model.name!r} expects; give it (layer "
                              "scale, --pixel-size) to have it checked")
    factor = (have[0] / want[0], have[1] / want[1])
    if all(abs(f - 1) <= tolerance for f in factor):
        return PixelSizeCheck(have, want, factor, "none",
                              f"input pixel size {_fmt(have)} nm matches {model.name!r} ({_fmt(want)} nm)")
    trained = trained_factors(model)
    if trained is not None and all(trained[0] * (1 - tolerance) <= f <= trained[1] * (1 + tolerance)
                                   for f in factor):
        # resampling would only hurt here: an upsampled noisy LR looks like no training input
        # (bench generalisation, 8 nm CREMI: -0.80 dB resampled vs +0.83 dB as it is)
        lo, hi = (tuple(w * t for w in want) for t in trained)
        return PixelSizeCheck(have, want, factor, "none",
                              f"input pixel size {_fmt(have)} nm: within the pixel sizes "
                              f"{model.name!r} was trained over ({_fmt(lo)}-{_fmt(hi)} nm inputs), "
                              "used as it is")
    what = (f"input pixel size {_fmt(have)} nm, but {model.name!r} was trained for "
            f"{_fmt(want)} nm inputs ({max(factor, key=lambda f: abs(math.log(f))):.2f}x)")
    if policy == "error":
        raise ValueError(f"{what}: resample the input, or restore with the pixel-size mismatch "
                         "policy 'resample' (or 'warn' to use it as it is)")
    if policy == "warn":
        return PixelSizeCheck(have, want, factor, "warn",
                              f"⚠ {what}: restored as it is, results may be poor")
    return PixelSizeCheck(have, want, factor, "resample",
                          f"{what}: resampled to the model's grid and the result back to "
                          f"{_fmt(tuple(v / model.scale for v in have))} nm")


def _fmt(v) -> str:
    return f"{v[0]:.3g}" if abs(v[0] - v[1]) <= 1e-6 * max(v) else f"{v[0]:.3g} x {v[1]:.3g}"


def model_grid_shape(yx: tuple[int, int], factor: tuple[float, float]) -> tuple[int, int]:
    """Y, X size of an input resampled by ``factor`` (at least one encoder-friendly pixel)."""
    return max(1, int(round(yx[0] * factor[0]))), max(1, int(round(yx[1] * factor[1])))


def resample_yx(data, axes: str, yx: tuple[int, int], order: int = 1):
    """Resample a dask array on Y, X to ``yx`` pixels covering the same field of view
    (pixel-area convention, as :func:`skimage.transform.resize`), plane by plane.

    Shrinking smooths first (anti-aliasing). Each output chunk is one whole (Y, X) plane: a
    plane must fit in memory.
    """
    import dask.array as da
    from skimage.transform import resize

    iy, ix = axes.index("Y"), axes.index("X")
    data = da.asarray(data)
    chunks = tuple(-1 if i in (iy, ix) else (data.shape[i] if a == "C" else 1)
                   for i, a in enumerate(axes))
    data = data.rechunk(chunks)
    shrink = yx[0] < data.shape[iy] or yx[1] < data.shape[ix]
    dtype = np.float32

    def one(block):
        # plane by plane in 2-D: a spline over the block's size-1 axes too cost 6x the time
        planes = np.moveaxis(block, (iy, ix), (-2, -1))
        lead = planes.shape[:-2]
        flat = planes.reshape((-1,) + planes.shape[-2:]).astype(np.float32)
        out = np.stack([resize(p, yx, order=order, mode="reflect", anti_aliasing=shrink,
                               preserve_range=True) for p in flat]).astype(dtype)
        return np.moveaxis(out.reshape(lead + tuple(yx)), (-2, -1), (iy, ix))

    out_chunks = tuple((yx[0],) if i == iy else (yx[1],) if i == ix else c
                       for i, c in enumerate(data.chunks))
    return data.map_blocks(one, chunks=out_chunks, dtype=dtype)
