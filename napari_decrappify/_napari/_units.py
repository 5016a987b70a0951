"""The dock's units for people: the core's :mod:`napari_decrappify.units`, so that the Segment
dock's table, ``decrappify segment``'s summary and the measurements CSV choose µm² / µm³ (nm for
tiny objects), area vs volume and densities per µm³ by one rule (the core must not import
napari, so the rule lives there and this module only re-exports it)."""

from __future__ import annotations

from ..units import (  # noqa: F401
    NM_BELOW,
    column_unit,
    density_column,
    density_text,
    display_unit,
    number,
    per_um,
    shown_unit,
    size_word,
    to_display,
    um_per,
)
