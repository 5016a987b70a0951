"""Physical pixel sizes and units stored in TIFF files.

Three places a TIFF can keep them, tried in this order: OME-XML (``PhysicalSizeX`` ...,
``TimeIncrement``), ImageJ tags (``XResolution`` / ``YResolution`` with the ``unit`` and
``spacing`` / ``finterval`` entries of the ImageJ description), and plain resolution tags when
their unit is a length (inch or centimetre; scanner-style "pixels per inch" at 72 dpi is not a
microscope pixel size, so a resolution of 1 is ignored).

OME-XML also records where planes are (``Plane PositionX/Y/Z``): read back as the image's
origin (:func:`axis_origins`), in the unit of its pixel size. :func:`ome_unit` gives the OME
unit symbol (``"nm"``, ``"µm"``, ``"Å"``...) that a writer must use for a unit name.

:func:`tiff_axes` maps tifffile's axis codes to ``TCZYX``: RGB samples (``S``) become channels.
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

# OME-XML unit symbols (UnitsLength, UnitsTime) of the NGFF / pint unit names, with the size of
# one unit in metres or seconds (to bring a position into the unit of the pixel size)
_SI_PREFIXES = (
    ("yotta", "Y", 1e24), ("zetta", "Z", 1e21), ("exa", "E", 1e18), ("peta", "P", 1e15),
    ("tera", "T", 1e12), ("giga", "G", 1e9), ("mega", "M", 1e6), ("kilo", "k", 1e3),
    ("hecto", "h", 1e2), ("deca", "da", 1e1), ("", "", 1.0), ("deci", "d", 1e-1),
    ("centi", "c", 1e-2), ("milli", "m", 1e-3), ("micro", "µ", 1e-6), ("nano", "n", 1e-9),
    ("pico", "p", 1e-12), ("femto", "f", 1e-15), ("atto", "a", 1e-18), ("zepto", "z", 1e-21),
    ("yocto", "y", 1e-24),
)
OME_LENGTH = {f"{name}meter": (f"{sym}m", f) for name, sym, f in _SI_PREFIXES} | {
    "angstrom": ("Å", 1e-10), "inch": ("in", 0.0254), "foot": ("ft", 0.3048),
    "yard": ("yd", 0.9144), "mile": ("mi", 1609.344), "parsec": ("pc", 3.0856775814913673e16),
}
OME_TIME = {f"{name}second": (f"{sym}s", f) for name, sym, f in _SI_PREFIXES} | {
    "minute": ("min", 60.0), "hour": ("h", 3600.0), "day": ("d", 86400.0),
}
# exact OME symbols first: case matters there ("Mm" is a megametre, "mm" a millimetre)
_OME_SYMBOL_NAMES = {sym: name for table in (OME_LENGTH, OME_TIME)
                     for name, (sym, _) in table.items()}
_OME_SYMBOL_NAMES["\u03bcm"] = "micrometer"  # Greek mu, as well as the micro sign
_OME_SYMBOL_NAMES["\u03bcs"] = "microsecond"
_PIXEL = ("pixel", "reference frame")


def unit_name(unit: str | None) -> str:
    """OME / pint unit name for a unit symbol found in a file (``"um"`` -> ``"micrometer"``)."""
    if unit is None:
        return "pixel"
    u = str(unit).strip()
    if u in _OME_SYMBOL_NAMES:
        return _OME_SYMBOL_NAMES[u]
    return UNIT_NAMES.get(u.lower(), UNIT_NAMES.get(u, u))


def ome_unit(unit: str | None, axis: str) -> str | None:
    """The OME-XML symbol of ``unit`` for an axis (``"nanometer"`` or ``"nm"`` -> ``"nm"``,
    ``"angstrom"`` -> ``"Å"``): a length for Z, Y, X, a time for T.

    Returns ``"pixel"`` for pixel units on Z, Y, X (a valid OME length unit; OME has no pixel
    time unit) and None when ``unit`` has no OME equivalent for that axis.
    """
    name = unit_name(unit)
    if axis in "ZYX":
        if name in _PIXEL:
            return "pixel"
        return OME_LENGTH[name][0] if name in OME_LENGTH else None
    if axis == "T":
        return OME_TIME[name][0] if name in OME_TIME else None
    return None


def tiff_axes(file_axes: str) -> tuple[str | None, tuple[int, ...]]:
    """``TCZYX`` axes for tifffile's axis codes, and the transposition that puts Y, X last.

    RGB(A) samples (``S``) are channels: ``"YXS"`` -> ``("CYX", (2, 0, 1))``. Generic codes
    (``Q`` unknown, ``I`` image sequence) get the unused letters of ``ZT`` in that order; when
    the file names no axis but Y and X, returns ``(None, order)`` (the caller guesses from the
    number of dimensions, as for any array). Samples next to channels (``"CYXS"``) are one C
    axis for OME (SizeC counts samples): the caller merges them (the order puts them side by
    side, and the returned axes have one C for both).

    Raises
    ------
    ValueError
        An axis code with no meaning here (``A`` angle, ``P`` phase, ``R`` tile, ``H``
        lifetime, ``E`` lambda...), or no Y and X: name the axes explicitly instead.
    """
    codes = file_axes.upper()
    if "S" in codes and "Y" in codes and codes.index("S") < codes.index("Y"):
        # planar samples: what tifffile.imwrite makes of any (3 or 4, Y, X) stack (photometric
        # RGB, planar), far more often a 3-plane stack than a colour image; only interleaved
        # samples (S after X) are taken as RGB channels, planar ones are an unnamed axis
        codes = codes.replace("S", "Q")
    named = [c for c in codes if c not in "QI"]
    if "Y" not in codes or "X" not in codes or len(set(named)) != len(named):
        raise ValueError(f"tifffile axes {file_axes!r} have no Y and X or repeat a letter")
    bad = set(codes) - set("TCZYXSQI")
    if bad:
        raise ValueError(f"tifffile axes {file_axes!r} hold {', '.join(sorted(bad))!r}, which is "
                         "not one of T, C, Z, Y, X or S (RGB samples)")
    # channels (and samples after them) first among the non-spatial axes, then Y, X last
    lead = [i for i, c in enumerate(codes) if c not in "YXS"]
    s = [codes.index("S")] if "S" in codes else []
    if "C" in codes and s:
        c = codes.index("C")
        lead = [i for i in lead if i != c]
        order = lead + [c] + s + [codes.index("Y"), codes.index("X")]
    else:
        # S takes the place of C: where it was if it came before Y, X, else just before them
        order = (sorted(lead + s) if s and s[0] < codes.index("Y") else lead + s) + [
            codes.index("Y"), codes.index("X")]
    letters = ["C" if codes[i] == "S" else codes[i] for i in order]
    if "C" in codes and s:
        letters.pop(letters.index("C") + 1)  # C and S merged into one C
    generic = [i for i, c in enumerate(letters) if c in "QI"]
    if generic and len(generic) == len(letters) - 2:
        return None, tuple(order)
    free = [c for c in "ZT" if c not in letters]
    if len(free) < len(generic):
        raise ValueError(f"tifffile axes {file_axes!r} have more unnamed dimensions than free "
                         "letters: name the axes explicitly")
    for i, c in zip(generic, free, strict=False):
        letters[i] = c
    return "".join(letters), tuple(order)


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


def axis_origins(tif) -> dict[str, float]:
    """``{axis: origin}`` for the Z, Y, X positions an open ``tifffile.TiffFile`` records (OME
    ``Plane PositionX/Y/Z`` of the first plane), each in the unit of that axis's pixel size
    (:func:`axis_sizes`); a position in a unit that cannot be converted is left out."""
    if tif.is_ome and tif.ome_metadata:
        return _ome_origins(tif.ome_metadata)
    return {}


def origin_for_axes(origins: dict[str, float], axes: str) -> tuple[float, ...] | None:
    """Translate along ``axes`` (0 where an axis has no origin); None when there is none."""
    if not origins:
        return None
    return tuple(float(origins.get(a, 0.0)) for a in axes)


def tiff_geometry(path: Path, axes: str) -> tuple[tuple[float, ...] | None, tuple[str, ...] | None]:
    """Pixel sizes and units of the TIFF at ``path`` along ``axes`` (``(None, None)`` if absent)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return geometry_for_axes(axis_sizes(tif), axes)


def _ome_pixels(xml: str):
    """The ``Pixels`` element of an OME-XML string, or None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    return next((el for el in root.iter() if el.tag.endswith("Pixels")), None)


def _ome_sizes(xml: str) -> dict[str, tuple[float, str]]:
    pixels = _ome_pixels(xml)
    return {} if pixels is None else _pixel_sizes(pixels)


def _pixel_sizes(pixels) -> dict[str, tuple[float, str]]:
    out = {}
    for ax in "XYZ":
        v = pixels.get(f"PhysicalSize{ax}")
        if v is not None:
            out[ax] = (float(v), unit_name(pixels.get(f"PhysicalSize{ax}Unit", "µm")))
    if pixels.get("TimeIncrement") is not None:
        out["T"] = (float(pixels.get("TimeIncrement")), unit_name(pixels.get("TimeIncrementUnit", "s")))
    return out


def _ome_origins(xml: str) -> dict[str, float]:
    pixels = _ome_pixels(xml)
    if pixels is None:
        return {}
    planes = [el for el in pixels if el.tag == "Plane" or el.tag.endswith("}Plane")]
    first = next((el for el in planes if all(el.get(f"The{a}", "0") == "0" for a in "CZT")), None)
    if first is None:
        return {}
    sizes = _pixel_sizes(pixels)
    out = {}
    for ax in "XYZ":
        v = first.get(f"Position{ax}")
        if v is None:
            continue
        # OME's default position unit is the (undefined) "reference frame"
        value = _convert(float(v), unit_name(first.get(f"Position{ax}Unit", "reference frame")),
                         sizes.get(ax, (1.0, "pixel"))[1])
        if value is not None:
            out[ax] = value
    return out


def _convert(value: float, unit: str, target: str) -> float | None:
    """``value`` in ``unit`` expressed in ``target`` (lengths), None if they do not convert."""
    if unit == target:
        return value
    if unit in OME_LENGTH and target in OME_LENGTH:
        return value * OME_LENGTH[unit][1] / OME_LENGTH[target][1]
    return None


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
