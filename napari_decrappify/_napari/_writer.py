"""npe2 writer: save an image layer to OME-Zarr with its axes, pixel sizes, origin and units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import io
from ._layers import unit_names

OME_ZARR_SUFFIXES = (".zarr",)


def layer_axes_from_meta(meta: dict[str, Any], ndim: int) -> str:
    """Axes of a layer being written: its metadata ``axes``, its axis labels, or a guess."""
    axes = (meta.get("metadata") or {}).get("axes")
    if isinstance(axes, str) and len(axes) == ndim:
        return io.check_axes(axes, ndim)
    labels = "".join(str(a).upper() for a in meta.get("axis_labels") or ())
    if len(labels) == ndim and set(labels) <= set("TCZYX"):
        try:
            return io.check_axes(labels, ndim)
        except ValueError:
            pass
    return io.guess_axes(ndim)


def write_ome_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one image layer (its full-resolution level) to an OME-Zarr store at ``path``.

    napari's save dialog has already confirmed replacing an existing path; a path that exists
    and is not a Zarr store is refused rather than deleted (:func:`io.write_ome_zarr`).
    """
    p = Path(path)
    if not p.name.endswith(OME_ZARR_SUFFIXES):
        p = p.with_name(p.name + ".ome.zarr")
    if meta.get("multiscale") and isinstance(data, list | tuple):
        data = data[0]
    if meta.get("rgb"):
        raise ValueError("RGB layers cannot be written as OME-Zarr by this plugin: split the "
                         "channels first")
    ndim = len(data.shape)
    axes = layer_axes_from_meta(meta, ndim)
    io.write_ome_zarr(
        p, data, axes=axes,
        scale=tuple(float(s) for s in meta.get("scale", (1.0,) * ndim)),
        translate=tuple(float(t) for t in meta.get("translate", (0.0,) * ndim)),
        units=unit_names(meta.get("units"), ndim),
        overwrite=True, name=meta.get("name"),
    )
    return [str(p)]
