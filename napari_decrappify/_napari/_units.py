"""Lengths, areas, volumes and densities for people: µm² for an area, µm³ for a volume (nm,
nm², nm³ for objects so small that µm would need an exponent, such as vesicles), counts per µm³
with readable numbers (``58 per µm³``, not ``5.8e-08 1/nanometer^3``).

The measurements (:func:`napari_decrappify.segment.measure`) stay in the layer's own unit; the
Segment dock shows them through these helpers. Units napari does not know as lengths (``pixel``)
stay as they are, with ``px²`` / ``px³``.
"""

from __future__ import annotations

import math

# micrometres per unit, for the spellings napari (pint) and OME metadata use
_TO_UM = {
    "nanometer": 1e-3, "nm": 1e-3, "angstrom": 1e-4, "Å": 1e-4,
    "micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "μm": 1.0,
    "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "cm": 1e4, "meter": 1e6, "m": 1e6,
}
_POWER = {1: "", 2: "²", 3: "³"}
_SHOWN_UM = {"µm": 1.0, "nm": 1e-3}  # micrometres per unit a table may be shown in
#: a table whose median object size (area or volume, in µm² or µm³) is under this is shown in
#: nm, nm², nm³: µm would need an exponent (a 40 nm vesicle is 3.35e-05 µm³ but 33 510 nm³);
#: above it µm reads without one, and nm³ would not (a 200 nm object is 4.19e+06 nm³)
NM_BELOW = 1e-3


def um_per(unit: str | None) -> float | None:
    """Micrometres per ``unit`` (None for ``pixel`` or anything not a length)."""
    return _TO_UM.get(str(unit or "").strip())


def shown_unit(unit: str | None, sizes=(), power: int = 2) -> str:
    """The length unit a table of objects reads best in: ``px`` when ``unit`` is not a length;
    ``nm`` when the objects' median size (``sizes``: areas, ``power`` 2, or volumes, ``power``
    3, in ``unit`` to that power) is under :data:`NM_BELOW` µm² / µm³; else ``µm``."""
    f = um_per(unit)
    if f is None:
        return "px"
    vals = sorted(float(v) for v in sizes if v is not None and math.isfinite(v))
    if vals and vals[len(vals) // 2] * f**power < NM_BELOW:
        return "nm"
    return "µm"


def display_unit(unit: str | None, power: int = 1, shown: str = "µm") -> str:
    """``µm``, ``µm²``, ``µm³`` (or ``nm``... with ``shown="nm"``) for a length unit; ``px``,
    ``px²``, ``px³`` otherwise."""
    base = shown if um_per(unit) is not None else "px"
    return base + _POWER[power]


def to_display(value: float, unit: str | None, power: int = 1, shown: str = "µm") -> float:
    """``value`` (in ``unit`` to the ``power``) in the :func:`display_unit`'s unit."""
    f = um_per(unit)
    if f is None:
        return float(value)
    return float(value) * (f / _SHOWN_UM.get(shown, 1.0)) ** power


def size_word(ndim: int) -> str:
    """What an object's size is called: ``area`` in 2-D, ``volume`` in 3-D."""
    return "volume" if ndim == 3 else "area"


def density_text(density: float, unit: str | None, ndim: int) -> str:
    """A count per area or volume, readable: ``58 per µm³``, ``3.2 per 100 µm²`` (the
    reference field grows by tens until the number is at least 0.1)."""
    if density is None or not math.isfinite(density):
        return "n/a"
    f = um_per(unit)
    base = "µm" if f is not None else "px"
    per_unit = density / f**ndim if f is not None else density
    field = 1
    while 0 < per_unit * field**ndim < 0.1 and field < 10**6:
        field *= 10
    value = per_unit * field**ndim
    where = f"{base}{_POWER[ndim]}"
    if field != 1:  # "per 1 000 µm³": thousands separated by a space, as in SI
        where = f"{field**ndim:,} {where}".replace(",", " ")
    return f"{value:.3g} per {where}"


def number(value) -> str:
    """A table cell: integers as they are, floats with 4 significant digits, no exponent for
    everyday magnitudes."""
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)
