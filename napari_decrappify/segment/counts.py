"""Count comparison: several sources (e.g. LR upsampled, restored, HR) segmented by the same
model and matched against a reference (:func:`compare_counts`), as PSSR validated counts."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..progress import Progress
from .matching import match
from .prediction import Segmentation, segment
from .segment_config import ProgressFn


def segment_objects(model, image, *, method: str = "watershed", min_size: int = 0, h: float = 2.0,
                    axes: str | None = None, pixel_size: Sequence[float] | None = None,
                    **tile_options) -> tuple[np.ndarray, Segmentation]:
    """:func:`predict` then :func:`instances` of the model's object classes (``pixel_size``:
    per spatial axis or per axis of the labels, for the watershed)."""
    seg = segment(image, model, axes, objects=method, min_size=min_size, h=h,
                  pixel_size=pixel_size, **tile_options)
    return seg.objects, seg


def compare_counts(sources: Mapping[str, np.ndarray], reference: np.ndarray | str, *, model=None,
                   method: str = "watershed", iou: float = 0.5, centroid_distance: float | None = None,
                   min_size: int = 0, h: float = 2.0, pixel_size: Sequence[float] | None = None,
                   axes: str | None = None, progress: ProgressFn | None = None,
                   cancel: threading.Event | None = None) -> dict[str, Any]:
    """Object counts, TP/FP/FN and F1 of several sources (e.g. LR-bicubic, restored, HR)
    against a reference, like PSSR's vesicle-count validation.

    Parameters
    ----------
    sources : mapping name -> array
        With ``model``: images on the reference's grid (upsample LR first, e.g.
        :func:`napari_decrappify.metrics.bicubic_upsample`), each segmented by the same model
        and split into objects. Without ``model``: instance label arrays.
    reference : array or str
        Ground-truth instance labels, or the name of one of ``sources`` whose objects are the
        reference (e.g. ``"HR"`` when there is no manual annotation).
    iou, centroid_distance
        Matching criterion (:func:`match`).
    pixel_size : sequence of float, optional
        Physical pixel size per axis of the reference: for ``centroid_distance`` and, with
        ``model``, for the watershed split (:func:`instances`).

    Returns
    -------
    dict
        ``{"reference": ..., "reference_count": n, "sources": {name: match stats + "count"}}``
        (plus ``"objects"``: the instance arrays, not JSON; pop it before dumping).
    """
    objects: dict[str, np.ndarray] = {}
    names = list(sources)
    for n, name in enumerate(names):
        if cancel is not None and cancel.is_set():
            from ..io import RestoreCancelled

            raise RestoreCancelled("count comparison cancelled")
        src = sources[name]
        if model is not None:
            objects[name], _ = segment_objects(model, src, method=method, min_size=min_size, h=h,
                                               axes=axes, pixel_size=pixel_size)
        else:
            objects[name] = np.asarray(src)
        if progress is not None:
            progress(Progress("sources", n + 1, len(names), extra={"source": name}))
    if isinstance(reference, str):
        if reference not in objects:
            raise ValueError(f"reference {reference!r} is not one of the sources {names}")
        ref = objects[reference]
        ref_name = reference
    else:
        ref = np.asarray(reference)
        ref_name = "ground truth"
    out: dict[str, Any] = {"reference": ref_name, "reference_count": int(len(np.unique(ref[ref > 0]))),
                           "method": method, "min_size": min_size, "sources": {}}
    for name in names:
        if objects[name].shape != ref.shape:
            raise ValueError(f"source {name!r} has shape {objects[name].shape} but the reference "
                             f"{ref.shape}: bring it to the reference grid first (upsample LR)")
        stats = match(objects[name], ref, iou, centroid_distance=centroid_distance,
                      pixel_size=pixel_size)
        stats["count"] = stats["n_pred"]
        out["sources"][name] = stats
    out["objects"] = objects
    return out
