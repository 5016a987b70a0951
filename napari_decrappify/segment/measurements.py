"""Measurements of objects: area / volume, centroid, diameter, intensity and class per object,
count and density per class (:func:`measure`, :class:`Measurements`), and their CSV
(:func:`write_csv`)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np

from .. import units
from .classes import class_name, object_class_ids
from .splitting import _spatial_loop, object_classes


@dataclass
class Measurements:
    """Per-object rows and per-class summary of :func:`measure`.

    ``rows``: one dict per object (``label``, ``class_id``, ``class``, ``area``, ``area_px``,
    ``centroid_<axis>`` in physical units, ``equivalent_diameter``, ``mean_intensity``, and
    ``t``/``c`` for stacks). ``summary``: one dict per class (``count``, ``density`` = count
    per unit area (per unit volume in 3-D) of the field, mean area and diameter). These are
    in the layer's own ``unit`` (``area`` is ``unit^2``, and in 3-D the object's *volume* in
    ``unit^3``), for computing with.

    What people read is converted by :mod:`napari_decrappify.units`, as in the Segment dock:
    :meth:`table` / :meth:`to_csv` and :meth:`summary_table` / :meth:`summary_csv` name a
    3-D object's size a volume and a 2-D one's an area, with the unit in the column name
    (``volume_um3``, ``area_um2``, ``centroid_x_um``; ``nm`` for objects so small that µm
    would need an exponent, :func:`~napari_decrappify.units.shown_unit`), and densities per
    µm³ / µm² (``density_per_um3``); :meth:`summary_lines` says the same in words.
    """

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    unit: str = "pixel"
    field_size: float = 0.0
    columns: list[str] = dataclass_field(default_factory=list)
    summary_columns: list[str] = dataclass_field(default_factory=list)

    @property
    def spatial_ndim(self) -> int:
        """2 or 3: the objects' spatial axes (3 when there is a ``centroid_z``)."""
        return 3 if "centroid_z" in self.columns else 2

    @property
    def length_unit(self) -> str:
        """The one length unit people read this table in (``µm``, ``nm`` or ``px``), chosen by
        the objects' median area / volume (:func:`napari_decrappify.units.shown_unit`)."""
        return units.shown_unit(self.unit, [r.get("area") for r in self.rows], self.spatial_ndim)

    def _people(self, key: str) -> tuple[str | None, int]:
        """(column name for people, power of the length unit) of a row or summary key; the name
        is None for a column people do not need (``density_unit``: the name says it)."""
        nd, shown = self.spatial_ndim, self.length_unit
        size = units.size_word(nd)
        length = units.column_unit(self.unit, 1, shown)
        named = {"area": (f"{size}_{units.column_unit(self.unit, nd, shown)}", nd),
                 # a count, not a size: how many pixels / voxels the object covers
                 "area_px": ("voxels" if nd == 3 else "pixels", 0),
                 "equivalent_diameter": (f"equivalent_diameter_{length}", 1),
                 "mean_area": (f"mean_{size}_{units.column_unit(self.unit, nd, shown)}", nd),
                 "mean_equivalent_diameter": (f"mean_equivalent_diameter_{length}", 1),
                 "density": (units.density_column(self.unit, nd), -1),
                 "density_unit": (None, 0)}
        if key.startswith("centroid_"):
            return f"{key}_{length}", 1
        return named.get(key, (key, 0))

    def _for_people(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
                    ) -> tuple[list[str], list[dict[str, Any]]]:
        nd, shown = self.spatial_ndim, self.length_unit
        keys = list(columns) + [k for r in rows for k in r if k not in columns]
        keys = list(dict.fromkeys(keys))
        names = {k: self._people(k) for k in keys}
        out = []
        for r in rows:
            row = {}
            for k, v in r.items():
                name, power = names[k]
                if name is None:
                    continue
                if isinstance(v, float | np.floating):
                    if power == -1:  # a density: always per µm² / µm³, as the dock says it
                        v = units.per_um(v, self.unit, nd)
                    elif power:
                        v = units.to_display(v, self.unit, power, shown)
                row[name] = v
            out.append(row)
        return [names[k][0] for k in keys if names[k][0] is not None], out

    def table(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The per-object rows for people (what :meth:`to_csv` writes).

        Returns
        -------
        columns : list of str
            ``label``, (``t``, ``c``), ``class_id``, ``class``, ``area_um2`` (2-D) or
            ``volume_um3`` (3-D), ``pixels`` / ``voxels`` (the object's size as a count),
            ``centroid_<axis>_um``, ``equivalent_diameter_um``, ``mean_intensity``; ``nm``
            instead of ``um`` for tiny objects, ``px`` without a physical unit.
        rows : list of dict
            One per object, keyed by ``columns``, the values in those units.
        """
        return self._for_people(self.rows, self.columns)

    def summary_table(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The per-class summary for people (what :meth:`summary_csv` writes).

        Returns
        -------
        columns : list of str
            ``class_id``, ``class``, ``count``, ``density_per_um3`` (``_um2`` in 2-D: objects
            per µm³ of the field), ``mean_volume_um3`` (``mean_area_um2``),
            ``mean_equivalent_diameter_um``, in the units of :meth:`table`.
        rows : list of dict
            One per class.
        """
        return self._for_people(self.summary, self.summary_columns)

    def summary_lines(self) -> list[str]:
        """The summary in words, one line per class: ``vesicle: 12 objects, 58 per µm³, mean
        volume 33510 nm³, mean diameter 40 nm``.

        Returns
        -------
        list of str
            One line per class of :attr:`summary`.
        """
        nd, shown, unit = self.spatial_ndim, self.length_unit, self.unit
        lines = []
        for s in self.summary:
            n = s["count"]
            line = f"{s['class']}: {n} object{'' if n == 1 else 's'}"
            if n:
                mean = units.to_display(s["mean_area"], unit, nd, shown)
                diameter = units.to_display(s["mean_equivalent_diameter"], unit, 1, shown)
                line += (f", {units.density_text(s['density'], unit, nd)}, mean "
                         f"{units.size_word(nd)} {units.number(mean)} "
                         f"{units.display_unit(unit, nd, shown)}, mean diameter "
                         f"{units.number(diameter)} {units.display_unit(unit, 1, shown)}")
            lines.append(line)
        return lines

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the per-object table for people (:meth:`table`; a header even when there are
        no objects).

        Parameters
        ----------
        path : path
            The CSV file.

        Returns
        -------
        Path
            ``path``.
        """
        columns, rows = self.table()
        return write_csv(rows, path, columns=columns)

    def summary_csv(self, path: str | os.PathLike) -> Path:
        """Write the per-class summary for people (:meth:`summary_table`).

        Parameters
        ----------
        path : path
            The CSV file.

        Returns
        -------
        Path
            ``path``.
        """
        columns, rows = self.summary_table()
        return write_csv(rows, path, columns=columns)


def _csv_value(v: Any) -> Any:
    # str of a float is its shortest round-trip repr: stage coordinates such as 12345715.0
    # keep every digit (a fixed number of significant digits would round them)
    return str(v) if isinstance(v, float | np.floating) else v


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
              columns: Sequence[str] | None = None) -> Path:
    """Write dict rows to a CSV, atomically.

    Parameters
    ----------
    rows : sequence of mapping
        One dict per row.
    path : path
        The CSV file.
    columns : sequence of str, optional
        Columns first, in this order (written as the header even with no rows); keys of the
        rows not among them follow in first-seen order.

    Returns
    -------
    Path
        ``path``. Floats are written with full precision (they read back exactly).
    """
    path = Path(path)
    cols: list[str] = list(columns or [])
    for r in rows:
        for key in r:
            if key not in cols:
                cols.append(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({key: _csv_value(v) for key, v in r.items()})
    tmp.replace(path)
    return path


def measure(instance_labels: np.ndarray, image: np.ndarray | None = None,
            classes: Sequence[str] | None = None, pixel_size: Sequence[float] | None = None, *,
            semantic: np.ndarray | None = None, translate: Sequence[float] | None = None,
            unit: str = "pixel", axes: str | None = None) -> Measurements:
    """Measure objects: class, area, centroid, equivalent diameter, mean intensity; per-class
    counts and density.

    Parameters
    ----------
    instance_labels : integer array
        Objects (0 = none), e.g. from :func:`instances`.
    image : array, optional
        Intensities for ``mean_intensity`` (same shape).
    classes : sequence of str, optional
        Names of semantic labels ``1..K``.
    pixel_size, translate : sequence of float, optional
        Physical pixel size and origin per axis (a napari layer's ``scale`` / ``translate``);
        default 1 and 0.
    semantic : integer array, optional
        Semantic labels, to give each object its class: the most common value under it, per
        plane with ``axes``. Without it every object gets the first object class of
        ``classes`` (the first name that is not background-like, :func:`object_class_ids`),
        or class 0 ("none") without object class names.
    unit : str
        Length unit of ``pixel_size``: the rows stay in it; :meth:`Measurements.to_csv` and
        the summary convert to µm (nm for tiny objects) by it.
    axes : str, optional
        With T/C axes, objects are measured per plane (``t``/``c`` columns).
    """
    from skimage.measure import regionprops_table

    inst = np.asarray(instance_labels)
    if not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"instance labels must be integers, got dtype {inst.dtype}")
    if image is not None:
        image = np.asarray(image)
        if image.shape != inst.shape:
            raise ValueError(f"image shape {image.shape} differs from the labels {inst.shape}")
    if semantic is not None and np.shape(semantic) != inst.shape:
        raise ValueError(f"semantic labels shape {np.shape(semantic)} differs from {inst.shape}")
    nd = inst.ndim
    scale = np.asarray(pixel_size if pixel_size is not None else (1.0,) * nd, float)
    origin = np.asarray(translate if translate is not None else (0.0,) * nd, float)
    if len(scale) != nd or len(origin) != nd:
        raise ValueError(f"pixel_size/translate need {nd} values (one per axis)")
    if not (np.isfinite(scale).all() and (scale > 0).all() and np.isfinite(origin).all()):
        raise ValueError(f"pixel_size must be finite and > 0 and translate finite, got "
                         f"{tuple(scale)} / {tuple(origin)}")
    if inst.size and inst.min() < 0:  # regionprops skips them: objects would vanish silently
        raise ValueError(f"instance labels must be >= 0 (0 = none), found {int(inst.min())}")
    loop, nsp = _spatial_loop(inst.shape, axes)
    lead_names = [a.lower() for a in (axes or "")[: nd - nsp]]
    sp_names = "zyx"[3 - nsp:]
    sp_scale, sp_origin = scale[nd - nsp:], origin[nd - nsp:]
    voxel = float(np.prod(sp_scale))
    if semantic is not None:
        semantic = np.asarray(semantic)
    object_ids = object_class_ids(classes) if classes else []
    # not 1: with the module's convention label 1 is usually "background"
    default_class = object_ids[0] if object_ids else 0
    columns = (["label", *lead_names, "class_id", "class", "area", "area_px"]
               + [f"centroid_{ax}" for ax in sp_names] + ["equivalent_diameter"]
               + (["mean_intensity"] if image is not None else []))
    rows = []
    for idx in loop:
        plane = inst[idx]
        if not plane.any():
            continue
        # per plane: ids may restart in every frame, so one id is several objects in a stack
        cls_of = object_classes(plane, semantic[idx]) if semantic is not None else {}
        props = ["label", "area", "centroid"] + (["intensity_mean"] if image is not None else [])
        t = regionprops_table(plane, image[idx] if image is not None else None, properties=props)
        for j in range(len(t["label"])):
            lab = int(t["label"][j])
            area_px = int(t["area"][j])
            area = area_px * voxel
            cid = int(cls_of.get(lab, default_class))
            row: dict[str, Any] = {"label": lab}
            for name, i in zip(lead_names, idx, strict=True):
                row[name] = int(i)
            row.update({"class_id": cid, "class": class_name(classes, cid), "area": area,
                        "area_px": area_px})
            for d, ax in enumerate(sp_names):
                row[f"centroid_{ax}"] = float(t[f"centroid-{d}"][j] * sp_scale[d] + sp_origin[d])
            row["equivalent_diameter"] = (2 * math.sqrt(area / math.pi) if nsp == 2
                                          else (6 * area / math.pi) ** (1 / 3))
            if image is not None:
                row["mean_intensity"] = float(t["intensity_mean"][j])
            rows.append(row)
    field_size = float(np.prod(inst.shape[nd - nsp:])) * voxel * len(loop)
    summary = []
    ids = sorted({r["class_id"] for r in rows} | set(object_ids))
    for cid in ids:
        sel = [r for r in rows if r["class_id"] == cid]
        summary.append({
            "class_id": cid, "class": class_name(classes, cid), "count": len(sel),
            "density": len(sel) / field_size if field_size else float("nan"),
            "mean_area": float(np.mean([r["area"] for r in sel])) if sel else float("nan"),
            "mean_equivalent_diameter": (float(np.mean([r["equivalent_diameter"] for r in sel]))
                                         if sel else float("nan")),
            "density_unit": f"1/{unit}^{nsp}",
        })
    return Measurements(rows=rows, summary=summary, unit=unit, field_size=field_size,
                        columns=columns,
                        summary_columns=["class_id", "class", "count", "density", "mean_area",
                                         "mean_equivalent_diameter", "density_unit"])
