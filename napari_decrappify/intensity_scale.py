"""The intensity scale the degradations work on, and the checks of what can be degraded.

Every degradation (:mod:`napari_decrappify.degradation`) takes uint8, uint16 or float planes and
works in float32 on a [0, 1] scale: :func:`to_unit` maps integers by their type's range (uint8 /
255, uint16 / 65535; zero is zero photons, signed types included) and keeps floats as they are,
assumed to be in [0, 1] already (:func:`check_unit_float` refuses a float image that is not).
:func:`from_unit` maps back. Noise levels (photons, read noise) are defined on that scale, so an
integer type without a detector's full scale (wider than 16 bits) cannot carry them
(:func:`check_noise_scale`).

:func:`check_image` is the one check of "is this an image at all" (dimensions, dtype, NaN/inf,
empty) that the whole core uses.
"""

from __future__ import annotations

import warnings

import numpy as np

from .config import CrappifyConfig


def check_image(image: np.ndarray, name: str = "image", min_ndim: int = 2) -> np.ndarray:
    """Refuse what cannot be an image: wrong ndim, non-numeric dtype, NaN/inf, empty."""
    a = np.asarray(image)
    if a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions (..., Y, X), "
                         f"got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} has unsupported dtype {a.dtype} (need integer or float)")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return a


def intensity_range(dtype) -> tuple[float, float]:
    """The intensities that :func:`to_unit` maps to 0 and 1 for ``dtype``: 0 and the integer
    type's maximum, ``(0, 1)`` for floats. The crappifier's noise levels are defined on that scale.

    Zero is zero photons for signed integers too: mapping int16's full range put 0 at 0.5,
    which gave a dark int16 background the shot noise of a half-bright pixel. Negative values
    (an offset-subtracted background) count as no signal.
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return 0.0, float(np.iinfo(dtype).max)
    return 0.0, 1.0


def to_unit(image: np.ndarray) -> np.ndarray:
    """Map intensities to [0, 1] float32: uint8 / 255, uint16 / 65535, int16 / 32767 (negative
    values stay negative), other integers by their maximum, floats unchanged (they are assumed
    to be normalised already)."""
    a = check_image(image)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = intensity_range(a.dtype)
        return ((a.astype(np.float32) - lo) / (hi - lo)).astype(np.float32)
    return a.astype(np.float32, copy=False)


def from_unit(x, dtype):
    """The inverse of :func:`to_unit`: [0, 1] values (numpy or dask) back in the intensities
    of an image of ``dtype``, as float32 (no rounding, no clipping)."""
    lo, hi = intensity_range(dtype)
    return (x * np.float32(hi - lo) + np.float32(lo)).astype(np.float32)


def check_noise_scale(dtype, config: CrappifyConfig) -> None:
    """Refuse noise on integers wider than 16 bits: noise levels are fractions of full scale,
    and 2^31 is no detector's (int32 counts up to 181 000 got read noise 0.01 x 2^31, a mean
    of 8.9 million, without a word). Blur and downsampling need no scale."""
    dtype = np.dtype(dtype)
    noisy = (c := config).photons is not None or c.read_noise != 0 or c.salt_pepper != 0
    if np.issubdtype(dtype, np.integer) and dtype.itemsize > 2 and noisy:
        raise ValueError(f"{dtype} intensities have no full scale for the noise levels (its "
                         f"maximum is {np.iinfo(dtype).max:,}): convert the image to uint16 if "
                         "its values fit, or to float32 in [0, 1] (divided by your detector's "
                         "full scale)")


def check_unit_float(image: np.ndarray) -> np.ndarray:
    """``image``, after checking that a float image is in [0, 1], the scale :func:`to_unit`
    assumes for floats: a float image in 0..255 was crappified to an all-1 LR, silently."""
    a = np.asarray(image)
    if np.issubdtype(a.dtype, np.floating) and a.size:
        with warnings.catch_warnings():  # all-NaN: refused by check_image, not warned here
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"a float image must be in [0, 1] to be crappified (noise levels are "
                             f"on that scale); this one spans [{lo:.4g}, {hi:.4g}]: divide it by "
                             "its maximum, or convert it to uint8/uint16")
    return a
