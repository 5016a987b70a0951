"""Image arguments of the command line, and the plane lists of ``--train-planes``.

An image argument is a TIFF or Zarr/OME-Zarr path, or ``sample:KEY`` for a real sample data set
(``sample:cremi``), optionally with a plane range: ``sample:cremi[0:20]``. These helpers read one
(whole, lazily, or as :class:`~napari_decrappify.io.ImageData` with its geometry) and apply
``--pixel-size`` and ``--units`` to it.
"""

from __future__ import annotations

import re


def parse_planes(text: str | None, option: str = "--train-planes") -> list[int] | None:
    """``"0-17"``, ``"0-13,15-17"`` or ``"18,19"`` -> list of plane indices."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None or (m[2] is not None and int(m[2]) < int(m[1])):
            raise ValueError(f"{option} {text!r}: expected plane numbers and ranges FIRST-LAST "
                             f"separated by commas, e.g. 0-13,15-17 or 18,19")
        out.extend(range(int(m[1]), int(m[2] if m[2] is not None else m[1]) + 1))
    return out


SAMPLE_FORM = "sample:KEY or sample:KEY[START:STOP], e.g. sample:cremi[0:20]"


def parse_sample(spec: str):
    """``"sample:KEY"`` or ``"sample:KEY[a:b]"`` -> ``(Sample, slice or None)``."""
    from ..samples import SAMPLES

    text = spec[len("sample:"):]
    m = re.fullmatch(r"([^\[\]]+)(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?", text)
    if m is None:
        raise ValueError(f"bad sample argument {spec!r}: expected {SAMPLE_FORM}")
    key = m[1]
    if key not in SAMPLES:
        raise ValueError(f"unknown sample {key!r}: known samples are {', '.join(SAMPLES)}")
    sl = None
    if m[2] is not None:
        sl = slice(int(m[2]) if m[2] else None, int(m[3]) if m[3] else None)
    return SAMPLES[key], sl


def _load_sample(spec: str):
    """``(array, Sample, first plane)`` of a ``sample:KEY[a:b]`` argument."""
    from ..samples import load_sample

    sample, sl = parse_sample(spec)
    data, _ = load_sample(sample.key)
    if sl is None:
        return data, sample, 0
    start, stop, _ = sl.indices(len(data))
    if stop <= start:
        raise ValueError(f"{spec}: the plane range selects no planes (the sample has "
                         f"{len(data)} planes along {sample.axes[0]})")
    return data[start:stop], sample, start


def read_input(spec: str):
    """Read an image argument into a numpy/dask array (see module docstring)."""
    import numpy as np

    if spec.startswith("sample:"):
        return _load_sample(spec)[0]
    from ..io import open_image

    return np.asarray(open_image(spec).data)


def _lazy_input(spec: str):
    """An image argument as a lazy (dask) array; a sample as numpy."""
    if spec.startswith("sample:"):
        return read_input(spec)
    from ..io import open_image

    return open_image(spec).data


def open_input(spec: str, axes: str | None = None, scale=None):
    """An image argument as :class:`~napari_decrappify.io.ImageData` (lazy for files), with the
    sample's axes and pixel size for ``sample:KEY``; a plane range ``[a:b]`` puts the origin
    of the first axis at ``a`` x its pixel size (``metadata["first_plane"] = a``)."""
    from ..io import open_image

    if not spec.startswith("sample:"):
        return open_image(spec, axes=axes, scale=scale)
    data, sample, start = _load_sample(spec)
    scale = tuple(scale) if scale is not None else sample.scale
    image = open_image(data, axes=axes or sample.axes, scale=scale,
                       translate=_sample_origin(start, scale, data.ndim), units=sample.units,
                       name=sample.key)
    image.metadata["first_plane"] = start
    return image


def _sample_origin(start: int, scale, ndim: int) -> tuple[float, ...]:
    """Origin of planes ``start:`` of a sample: ``start`` x the pixel size on the first axis."""
    first = float(start) * float(scale[0]) if len(scale) else 0.0
    return (first,) + (0.0,) * (ndim - 1)


def _with_geometry(image, pixel_size, units, *, yx_alone: bool = False):
    """``image`` with ``--pixel-size`` (one per axis; with ``yx_alone`` also one value for Y
    and X, or two for Y, X) and ``--units`` (one for all, or one per axis) applied."""
    ndim, axes = image.data.ndim, image.axes
    if pixel_size:
        scale = list(image.scale)
        if yx_alone and len(pixel_size) in (1, 2) and len(pixel_size) != ndim:
            yx = pixel_size * 2 if len(pixel_size) == 1 else pixel_size
            scale[axes.index("Y")], scale[axes.index("X")] = yx
        elif len(pixel_size) == ndim:
            scale = list(pixel_size)
        else:
            also = " or 1 for Y and X" if yx_alone else ""
            raise ValueError(f"--pixel-size needs {ndim} values (one per axis {axes}){also}, "
                             f"got {len(pixel_size)}")
        image.scale = tuple(float(v) for v in scale)
        if "first_plane" in image.metadata:  # a sample's plane range: origin in the new size
            image.translate = _sample_origin(image.metadata["first_plane"], image.scale, ndim)
    if units:
        if len(units) not in (1, ndim):
            raise ValueError(f"--units needs 1 value or {ndim} (one per axis {axes}), got {len(units)}")
        image.units = tuple(units) * (ndim if len(units) == 1 else 1)
    elif pixel_size and yx_alone:  # a pixel size in pixel units would mean nothing: nm
        image.units = tuple("nm" if a in "YX" and u in ("pixel", None) else u
                            for a, u in zip(axes, image.units, strict=True))
    return image
