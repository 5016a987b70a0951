"""The OME-NGFF metadata vocabulary shared by the OME-Zarr reader and writer: the NGFF name of
a unit (:func:`ngff_unit`) and where a store keeps its OME metadata (:func:`ome_attributes`:
NGFF 0.5, 0.4, or our own attribute while a write is unfinished).
"""

from __future__ import annotations

from ..tiff_metadata import unit_name


def ngff_unit(unit: str | None, axis: str) -> str | None:
    """The NGFF name of ``unit`` for an axis (``"nm"`` -> ``"nanometer"``); None when the unit
    is ``pixel``/unknown (NGFF then records no unit for that axis)."""
    from ome_zarr.axes import KNOWN_SPATIAL_UNITS, KNOWN_TEMPORAL_UNITS

    if unit is None:
        return None
    u = unit_name(unit)
    known = KNOWN_TEMPORAL_UNITS if axis == "T" else KNOWN_SPATIAL_UNITS if axis in "ZYX" else ()
    return u if u in known else None


def ome_attributes(attrs: dict) -> dict:
    """The OME-NGFF metadata of a group's attributes: ``ome`` (0.5), the attributes themselves
    (0.4), or, in an unfinished store of ours, where the writer keeps it until complete."""
    if "ome" in attrs:
        return attrs["ome"]
    pending = (attrs.get("decrappify") or {}).get("ome")
    return pending if isinstance(pending, dict) else attrs
