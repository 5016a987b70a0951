"""Lengths, areas, volumes and densities for people: µm² for an area, µm³ for a volume (nm,
nm², nm³ for objects so small that µm would need an exponent, such as vesicles), counts per µm³
with readable numbers (``58 per µm³``, not ``5.8e-08 1/nanometer^3``).

One rule for every table of objects, in the core and in napari: the measurements
(:func:`napari_decrappify.segment.measure`) are computed in the layer's own unit, and these
helpers choose what a person reads, in the Segment dock's table, in ``decrappify segment``'s
summary and in the measurements CSV (where the unit is part of the column name, in ASCII:
``volume_um3``, ``density_per_um3``). Units that are not lengths (``pixel``) stay ``px``, ``px²``,
``px³``; a length this module does not know (``inch``) keeps its own name, unconverted.
"""

from __future__ import annotations

import math

__all__ = ["NM_BELOW", "column_unit", "density_column", "density_text", "display_unit",
           "number", "per_um", "shown_unit", "size_word", "to_display", "um_per"]

# micrometres per unit, for the spellings napari (pint), OME metadata and people use
_TO_UM = {
    "nanometer": 1e-3, "nanometre": 1e-3, "nm": 1e-3, "angstrom": 1e-4, "Å": 1e-4,
    "micrometer": 1.0, "micrometre": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "μm": 1.0,
    "millimeter": 1e3, "millimetre": 1e3, "mm": 1e3, "centimeter": 1e4, "centimetre": 1e4,
    "cm": 1e4, "meter": 1e6, "metre": 1e6, "m": 1e6,
}
_PIXEL = {"", "pixel", "pixels", "px", "none"}
_POWER = {1: "", 2: "²", 3: "³"}
_SHOWN_UM = {"µm": 1.0, "nm": 1e-3}  # micrometres per unit a table may be shown in
#: a table whose median object size (area or volume, in µm² or µm³) is under this is shown in
#: nm, nm², nm³: µm would need an exponent (a 40 nm vesicle is 3.35e-05 µm³ but 33 510 nm³);
#: above it µm reads without one, and nm³ would not (a 200 nm object is 4.19e+06 nm³)
NM_BELOW = 1e-3


def um_per(unit: str | None) -> float | None:
    """Micrometres per ``unit``.

    Parameters
    ----------
    unit : str or None
        A length unit as napari, OME or a person spells it (``nanometer``, ``nm``, ``µm``...).

    Returns
    -------
    float or None
        None for ``pixel`` or anything this module does not know as a length.
    """
    return _TO_UM.get(str(unit or "").strip())


def _own(unit: str | None) -> str:
    """The name of a unit that is not a known length: ``px`` for pixels, else its own."""
    name = str(unit or "").strip()
    return "px" if name.lower() in _PIXEL else name


def shown_unit(unit: str | None, sizes=(), power: int = 2) -> str:
    """The length unit a table of objects reads best in, one for all its rows.

    Parameters
    ----------
    unit : str or None
        The measurements' own length unit.
    sizes : iterable of float
        The objects' areas (``power`` 2) or volumes (``power`` 3) in ``unit`` to that power.
    power : int
        2 for areas, 3 for volumes.

    Returns
    -------
    str
        ``nm`` when the median size is under :data:`NM_BELOW` µm² / µm³, else ``µm``; ``px``
        when ``unit`` is not a length (an unknown length keeps its own name).
    """
    f = um_per(unit)
    if f is None:
        return _own(unit)
    vals = sorted(float(v) for v in sizes if v is not None and math.isfinite(v))
    if vals and vals[len(vals) // 2] * f**power < NM_BELOW:
        return "nm"
    return "µm"


def display_unit(unit: str | None, power: int = 1, shown: str = "µm") -> str:
    """A unit to a power, for a header or a sentence.

    Parameters
    ----------
    unit : str or None
        The measurements' own length unit.
    power : int
        1 (length), 2 (area) or 3 (volume).
    shown : str
        ``µm`` or ``nm`` (:func:`shown_unit`).

    Returns
    -------
    str
        ``µm``, ``µm²``, ``µm³`` (``nm``... with ``shown="nm"``) for a length unit; ``px``,
        ``px²``, ``px³`` otherwise.
    """
    base = shown if um_per(unit) is not None else _own(unit)
    return base + _POWER[power]


def column_unit(unit: str | None, power: int = 1, shown: str = "µm") -> str:
    """:func:`display_unit` in ASCII, for a column name a script can type: ``um3``, ``nm2``,
    ``px``.

    Parameters
    ----------
    unit : str or None
        The measurements' own length unit.
    power : int
        1 (length), 2 (area) or 3 (volume).
    shown : str
        ``µm`` or ``nm`` (:func:`shown_unit`).

    Returns
    -------
    str
        The unit and its power, ASCII letters and digits only.
    """
    base = shown if um_per(unit) is not None else _own(unit)
    base = "".join(c for c in base.replace("µ", "u").replace("μ", "u") if c.isascii()
                   and c.isalnum()) or "px"
    return base + (str(power) if power > 1 else "")


def to_display(value: float, unit: str | None, power: int = 1, shown: str = "µm") -> float:
    """``value`` (in ``unit`` to the ``power``) in :func:`display_unit`'s unit.

    Parameters
    ----------
    value : float
        A length, area or volume in ``unit`` to the ``power``.
    unit : str or None
        Its length unit; not a known length: ``value`` is returned as it is.
    power : int
        1, 2 or 3.
    shown : str
        ``µm`` or ``nm``.

    Returns
    -------
    float
        The converted value.
    """
    f = um_per(unit)
    if f is None:
        return float(value)
    ratio = f / _SHOWN_UM.get(shown, 1.0)
    if ratio < 1:
        # the units are powers of ten apart: divide by the exact integer inverse (1000; 0.001 is
        # inexact), so a stage coordinate of 23 456 975 nm is 23456.975 µm, not 23456.975000000002
        return float(value) / round(1 / ratio) ** power
    return float(value) * ratio**power


def per_um(density: float, unit: str | None, ndim: int) -> float:
    """A count per ``unit``\\ :sup:`ndim` as a count per µm² (2-D) or µm³ (3-D).

    Parameters
    ----------
    density : float
        Objects per unit area (``ndim`` 2) or volume (``ndim`` 3) in ``unit``.
    unit : str or None
        The length unit; not a known length: ``density`` is returned as it is (per px²).
    ndim : int
        2 or 3.

    Returns
    -------
    float
        Per µm² or µm³: 5.8e-08 per nm³ is 58 per µm³.
    """
    f = um_per(unit)
    return float(density) if f is None else float(density) / f**ndim


def density_column(unit: str | None, ndim: int) -> str:
    """The name of a density column: ``density_per_um3``, ``density_per_um2``, ``density_per_px2``.

    Parameters
    ----------
    unit : str or None
        The measurements' own length unit.
    ndim : int
        2 or 3.

    Returns
    -------
    str
        The column name (the values: :func:`per_um`).
    """
    return f"density_per_{column_unit(unit, ndim)}"


def size_word(ndim: int) -> str:
    """What an object's size is called: ``area`` in 2-D, ``volume`` in 3-D.

    Parameters
    ----------
    ndim : int
        The number of spatial axes.

    Returns
    -------
    str
        ``"area"`` or ``"volume"``.
    """
    return "volume" if ndim == 3 else "area"


def density_text(density: float, unit: str | None, ndim: int) -> str:
    """A count per area or volume, readable: ``58 per µm³``, ``3.2 per 100 µm²``.

    Parameters
    ----------
    density : float
        Objects per ``unit`` squared (``ndim`` 2) or cubed (``ndim`` 3).
    unit : str or None
        The length unit.
    ndim : int
        2 or 3.

    Returns
    -------
    str
        The count per µm² / µm³, the reference field grown by tens until the number is at
        least 0.1 (``1 per 1 000 µm³``); ``n/a`` for no number.
    """
    if density is None or not math.isfinite(density):
        return "n/a"
    per = per_um(density, unit, ndim)
    field = 1
    while 0 < per * field**ndim < 0.1 and field < 10**6:
        field *= 10
    value = float(f"{per * field**ndim:.3g}")  # 3 significant digits: a count, not a measure
    where = display_unit(unit, ndim)
    if field != 1:  # "per 1 000 µm³": thousands separated by a space, as in SI
        where = f"{field**ndim:,} {where}".replace(",", " ")
    # 81 400 per µm³, not 8.14e+04: big counts read as numbers (vesicles per µm³ run to 10⁴)
    text = f"{value:,.0f}".replace(",", " ") if value >= 1000 else f"{value:.3g}"
    return f"{text} per {where}"


def number(value) -> str:
    """A table cell: integers as they are, floats with 4 significant digits, no exponent for
    everyday magnitudes.

    Parameters
    ----------
    value : object
        A cell's value.

    Returns
    -------
    str
        ``3``, ``0.1235``, ``12346``, ``2.5e+07``.
    """
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)
