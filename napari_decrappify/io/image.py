"""Images with named axes and physical metadata, and the geometry of upsampled results.

:class:`ImageData` is what :func:`~napari_decrappify.io.open_image` returns and the writers
accept: a (lazy) array, its axes (letters from ``TCZYX``, ending in ``YX``) and its pixel
sizes, origin and units per axis.

Physical space: a layer with pixel size ``s`` and origin ``t`` (centre of the first pixel),
upsampled by ``f`` (LR pixels made of ``f x f`` HR block means) has pixel size ``s / f`` and
origin ``t + 0.5 * s * (1 / f - 1)`` on Y and X; other axes are unchanged. LR, restored and HR
layers then overlay exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

AXES_CHARS = set("TCZYX")  # the axis letters an image may have
NGFF_ORDER = "TCZYX"  # the order of axes in an OME-Zarr store or an OME-TIFF file


@dataclass
class ImageData:
    """A (lazy) image with named axes and physical metadata.

    Attributes
    ----------
    data : dask.array.Array
    axes : str
        One letter per dimension, from ``TCZYX``, ending in ``YX``.
    scale, translate : tuple of float
        Pixel size and position of the first pixel's centre, per axis.
    units : tuple of str
    """

    data: object
    axes: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[str, ...]
    name: str = "image"
    metadata: dict = field(default_factory=dict)


def unpack_image(data, axes, scale, translate, units, name=None):
    """``(array, axes, scale, translate, units, name)``: for an :class:`ImageData`, its own
    array and geometry wherever the caller gave none (the writers' defaults); anything else is
    returned as given."""
    if not isinstance(data, ImageData):
        return data, axes, scale, translate, units, name
    return (data.data, axes or data.axes, scale if scale is not None else data.scale,
            translate if translate is not None else data.translate,
            units if units is not None else data.units, name or data.name)


def check_axes(axes: str, ndim: int) -> str:
    """Validate an axes string such as ``"ZYX"`` for an array of ``ndim`` dimensions."""
    if not isinstance(axes, str):
        raise ValueError(f"axes must be a string of letters from TCZYX, got {axes!r}")
    axes = axes.upper()
    bad = set(axes) - AXES_CHARS
    if bad:
        raise ValueError(f"unknown axes {''.join(sorted(bad))!r} in {axes!r}: use letters from TCZYX")
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes!r} repeat a letter")
    if len(axes) != ndim:
        raise ValueError(f"axes {axes!r} name {len(axes)} dimensions but the image has {ndim}")
    if not axes.endswith("YX"):
        raise ValueError(f"axes {axes!r} must end with YX")
    return axes


def guess_axes(ndim: int) -> str:
    """Default axes for an array of ``ndim`` dimensions: YX, ZYX, TZYX, TCZYX."""
    if not 2 <= ndim <= 5:
        raise ValueError(f"cannot guess axes for a {ndim}-D array: pass axes explicitly")
    return "TCZYX"[5 - ndim:]


def upscale_geometry(scale, translate, axes: str, factor: int):
    """Pixel size and origin of a result upsampled by ``factor`` on Y and X (module docstring)."""
    scale = list(map(float, scale))
    translate = list(map(float, translate))
    for ax in ("Y", "X"):
        i = axes.index(ax)
        s = scale[i]
        scale[i] = s / factor
        translate[i] = translate[i] + 0.5 * s * (1.0 / factor - 1.0)
    return tuple(scale), tuple(translate)


def downscale_geometry(scale, translate, axes: str, factor: int):
    """Inverse of :func:`upscale_geometry`: the geometry of an ``factor``-times block-mean LR."""
    scale = list(map(float, scale))
    translate = list(map(float, translate))
    for ax in ("Y", "X"):
        i = axes.index(ax)
        s = scale[i] * factor
        translate[i] = translate[i] - 0.5 * s * (1.0 / factor - 1.0)
        scale[i] = s
    return tuple(scale), tuple(translate)


def ngff_axis_order(axes: str) -> tuple[str, list[int]]:
    """NGFF axis order (time, channel, then space) and the permutation to get there."""
    order = sorted(range(len(axes)), key=lambda i: NGFF_ORDER.index(axes[i]))
    return "".join(axes[i] for i in order), order
