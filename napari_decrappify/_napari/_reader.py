"""npe2 reader: TIFF stacks and OME-Zarr stores, opened lazily (dask) with physical metadata.

Pixel sizes, origins and units come from the OME-Zarr ``multiscales`` metadata, or for TIFF from
OME-XML (``PhysicalSizeX`` ...) or ImageJ tags (``XResolution``, ``spacing``, ``unit``). OME-Zarr
stores with several resolution levels open as a multiscale layer: napari then only reads the
tiles on screen at the resolution the zoom needs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .. import io
from ._layers import image_tuple

TIFF_SUFFIXES = (".tif", ".tiff")
_UNIT_NAMES = {
    "um": "micrometer", "µm": "micrometer", "\u03bcm": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "micrometer": "micrometer", "nm": "nanometer", "nanometer": "nanometer",
    "mm": "millimeter", "millimeter": "millimeter", "a": "angstrom", "å": "angstrom",
    "angstrom": "angstrom", "s": "second", "sec": "second", "second": "second", "ms": "millisecond",
    "min": "minute", "pixel": "pixel", "pixels": "pixel", "px": "pixel", "": "pixel",
}


def unit_name(unit: str | None) -> str:
    """OME / pint unit name for a unit symbol found in a file (``"um"`` -> ``"micrometer"``)."""
    if unit is None:
        return "pixel"
    u = str(unit).strip()
    return _UNIT_NAMES.get(u.lower(), _UNIT_NAMES.get(u, u))


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zattrs", ".zarray",
                                                                 ".zgroup"))


def get_reader(path):
    """Return :func:`read` for a TIFF file or a Zarr / OME-Zarr folder, else ``None``."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES and p.is_file():
        return read
    if _is_zarr(p):
        return read
    return None


def read(path):
    """Read ``path`` into a list with one lazy image ``LayerDataTuple``."""
    if isinstance(path, list | tuple):
        path = path[0]
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES:
        image = io.open_image(p)
        scale, units = tiff_geometry(p, image.axes)
        image = io.open_image(p, axes=image.axes, scale=scale, units=units)
        return [image_tuple(image)]
    image = io.open_image(p)
    levels = _zarr_levels(p)
    if len(levels) > 1:
        _, kwargs, kind = image_tuple(image, multiscale=True)
        return [(levels, kwargs, kind)]
    return [image_tuple(image)]


def _zarr_levels(path: Path) -> list:
    """All resolution levels of an OME-Zarr image (one entry for a plain array)."""
    import dask.array as da
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return [da.from_zarr(node)]
    attrs = dict(node.attrs)
    ms = attrs.get("ome", attrs).get("multiscales") or []
    if not ms:
        return []
    return [da.from_zarr(node[ds["path"]]) for ds in ms[0]["datasets"]]


def tiff_geometry(path: Path, axes: str) -> tuple[tuple[float, ...] | None, tuple[str, ...] | None]:
    """Pixel sizes and units of a TIFF from OME-XML or ImageJ metadata (``(None, None)`` if absent)."""
    import tifffile

    sizes: dict[str, tuple[float, str]] = {}
    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            sizes = _ome_sizes(tif.ome_metadata)
        elif tif.is_imagej:
            sizes = _imagej_sizes(tif)
        else:
            sizes = _resolution_sizes(tif)
    if not sizes:
        return None, None
    scale = tuple(sizes.get(a, (1.0, "pixel"))[0] for a in axes)
    units = tuple(sizes.get(a, (1.0, "pixel"))[1] for a in axes)
    return scale, units


def _ome_sizes(xml: str) -> dict[str, tuple[float, str]]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return {}
    out = {}
    for ax in "XYZ":
        v = pixels.get(f"PhysicalSize{ax}")
        if v is not None:
            out[ax] = (float(v), unit_name(pixels.get(f"PhysicalSize{ax}Unit", "µm")))
    if pixels.get("TimeIncrement") is not None:
        out["T"] = (float(pixels.get("TimeIncrement")), unit_name(pixels.get("TimeIncrementUnit", "s")))
    return out


def _rational(value) -> float | None:
    if isinstance(value, tuple):
        num, den = value
        return num / den if den else None
    return float(value) if value else None


def _imagej_sizes(tif) -> dict[str, tuple[float, str]]:
    meta = tif.imagej_metadata or {}
    unit = unit_name(meta.get("unit"))
    page = tif.pages[0]
    out = {}
    for ax, tag in (("X", "XResolution"), ("Y", "YResolution")):
        t = page.tags.get(tag)
        res = _rational(t.value) if t is not None else None
        if res:
            out[ax] = (1.0 / res, unit)
    if meta.get("spacing"):
        out["Z"] = (float(meta["spacing"]), unit)
    if meta.get("finterval"):
        out["T"] = (float(meta["finterval"]), "second")
    return out


def _resolution_sizes(tif) -> dict[str, tuple[float, str]]:
    """Plain TIFF resolution tags, only when their unit is a length (inch or centimetre)."""
    page = tif.pages[0]
    unit_tag = page.tags.get("ResolutionUnit")
    per = {2: 25_400.0, 3: 10_000.0}.get(int(unit_tag.value) if unit_tag is not None else 1)
    if per is None:
        return {}
    out = {}
    for ax, tag in (("X", "XResolution"), ("Y", "YResolution")):
        t = page.tags.get(tag)
        res = _rational(t.value) if t is not None else None
        if res and res != 1:
            out[ax] = (per / res, "micrometer")
    return out
