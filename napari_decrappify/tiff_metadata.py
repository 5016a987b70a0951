"""Physical pixel sizes and units stored in TIFF files.

Three places a TIFF can keep them, tried in this order: OME-XML (``PhysicalSizeX`` ...,
``TimeIncrement``), ImageJ tags (``XResolution`` / ``YResolution`` with the ``unit`` and
``spacing`` / ``finterval`` entries of the ImageJ description), and plain resolution tags when
their unit is a length (inch or centimetre; scanner-style "pixels per inch" at 72 dpi is not a
microscope pixel size, so a resolution of 1 is ignored).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

UNIT_NAMES = {
    "um": "micrometer", "µm": "micrometer", "\u03bcm": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "micrometer": "micrometer", "nm": "nanometer", "nanometer": "nanometer",
    "mm": "millimeter", "millimeter": "millimeter", "a": "angstrom", "å": "angstrom",
    "angstrom": "angstrom", "s": "second", "sec": "second", "second": "second", "ms": "millisecond",
    "min": "minute", "pixel": "pixel", "pixels": "pixel", "px": "pixel", "": "pixel",
    "cm": "centimeter", "m": "meter", "h": "hour", "us": "microsecond", "µs": "microsecond",
}


def unit_name(unit: str | None) -> str:
    """OME / pint unit name for a unit symbol found in a file (``"um"`` -> ``"micrometer"``)."""
    if unit is None:
        return "pixel"
    u = str(unit).strip()
    return UNIT_NAMES.get(u.lower(), UNIT_NAMES.get(u, u))


def axis_sizes(tif) -> dict[str, tuple[float, str]]:
    """``{axis: (pixel size, unit)}`` for the axes an open ``tifffile.TiffFile`` records."""
    if tif.is_ome and tif.ome_metadata:
        return _ome_sizes(tif.ome_metadata)
    if tif.is_imagej:
        return _imagej_sizes(tif)
    return _resolution_sizes(tif)


def geometry_for_axes(sizes: dict[str, tuple[float, str]], axes: str
                      ) -> tuple[tuple[float, ...] | None, tuple[str, ...] | None]:
    """Scale and units along ``axes`` (1 pixel where an axis has no size); ``(None, None)``
    when the file records no size at all."""
    if not sizes:
        return None, None
    scale = tuple(sizes.get(a, (1.0, "pixel"))[0] for a in axes)
    units = tuple(sizes.get(a, (1.0, "pixel"))[1] for a in axes)
    return scale, units


def tiff_geometry(path: Path, axes: str) -> tuple[tuple[float, ...] | None, tuple[str, ...] | None]:
    """Pixel sizes and units of the TIFF at ``path`` along ``axes`` (``(None, None)`` if absent)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return geometry_for_axes(axis_sizes(tif), axes)


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
