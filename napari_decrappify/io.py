"""Reading images lazily with their physical metadata, and the geometry of upsampled results.

Physical space: a layer with pixel size ``s`` and origin ``t`` (centre of the first pixel),
upsampled by ``f`` (LR pixels made of ``f x f`` HR block means) has pixel size ``s / f`` and
origin ``t + 0.5 * s * (1 / f - 1)`` on Y and X; other axes are unchanged. LR, restored and HR
layers then overlay exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

AXES_CHARS = set("TCZYX")


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


def check_axes(axes: str, ndim: int) -> str:
    """Validate an axes string such as ``"ZYX"`` for an array of ``ndim`` dimensions."""
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


def open_image(source, axes: str | None = None, scale=None, translate=None, units=None,
               name: str | None = None) -> ImageData:
    """Open a numpy / dask / zarr array, a TIFF file or a Zarr / OME-Zarr store lazily.

    TIFF files are read through tifffile's zarr store (no full read); OME-Zarr metadata
    (axes, pixel sizes, translations, units) is used when present.
    """
    import dask.array as da

    meta_scale = meta_translate = meta_units = None
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        name = name or path.name.split(".")[0]
        if path.suffix.lower() in (".tif", ".tiff"):
            data, tif_axes = _open_tiff(path)
            axes = axes or tif_axes
        elif path.is_dir():
            data, zaxes, meta_scale, meta_translate, meta_units = _open_zarr(path)
            axes = axes or zaxes
        else:
            raise ValueError(f"cannot read {path}: expected a .tif/.tiff file or a Zarr folder")
    else:
        data = source if isinstance(source, da.Array) else da.asarray(source)
        name = name or "image"
    if data.size == 0:
        raise ValueError(f"input {name!r} is empty (shape {data.shape})")
    axes = check_axes(axes or guess_axes(data.ndim), data.ndim)
    n = data.ndim
    scale = tuple(float(s) for s in (scale if scale is not None else meta_scale or (1.0,) * n))
    translate = tuple(float(t) for t in (translate if translate is not None
                                         else meta_translate or (0.0,) * n))
    units = tuple(units if units is not None else meta_units or ("pixel",) * n)
    for label, v in (("scale", scale), ("translate", translate), ("units", units)):
        if len(v) != n:
            raise ValueError(f"{label} has {len(v)} values for a {n}-D image")
    return ImageData(data=data, axes=axes, scale=scale, translate=translate, units=units,
                     name=name)


def _open_tiff(path: Path):
    import dask.array as da
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            tif_axes = "".join(c for c in series.axes.upper() if c in AXES_CHARS)
            if len(tif_axes) != len(series.shape):
                tif_axes = None
        store = tifffile.imread(path, aszarr=True)
        arr = zarr.open(store, mode="r")
        if hasattr(arr, "keys") and not hasattr(arr, "shape"):  # multiscale group: level 0
            arr = arr["0"]
    except (tifffile.TiffFileError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a readable TIFF file ({e})") from e
    return da.from_zarr(arr), tif_axes


def _open_zarr(path: Path):
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:  # noqa: BLE001 - zarr raises several types
        raise ValueError(f"{path} is not a readable Zarr store ({e})") from e
    if hasattr(node, "shape"):
        return da.from_zarr(node), None, None, None, None
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise ValueError(f"{path} is a Zarr group without OME multiscales metadata")
    ms = multiscales[0]
    ds = ms["datasets"][0]
    axes = "".join(a["name"].upper() if isinstance(a, dict) else a.upper() for a in ms["axes"])
    units = tuple((a.get("unit") or "pixel") if isinstance(a, dict) else "pixel"
                  for a in ms["axes"])
    scale = translate = None
    for t in ds.get("coordinateTransformations", []):
        if t["type"] == "scale":
            scale = tuple(t["scale"])
        elif t["type"] == "translation":
            translate = tuple(t["translation"])
    data = da.from_zarr(node[ds["path"]])
    return data, axes, scale, translate, units
