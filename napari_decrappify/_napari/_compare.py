"""Restored result against HR ground truth: intensity mapping, scores, error maps, regions.

Scores are those of :mod:`napari_decrappify.metrics` (DATA.md protocol), with its one rule for
intensities (:func:`metrics.intensity_maps`): the ground truth's range defines [0, 1] (uint8 /
255, floats in [0, 1] kept, otherwise the ground truth's global 0.1/99.9 percentiles), and the
ground truth, the bicubic baseline and the restored result are all mapped by it; then PSNR /
SSIM per plane with ``data_range=1``, averaged over non-blank planes. Predictions (restored,
bicubic) are in the LR input's units, so they are first brought into the ground truth's
(:func:`metrics.prediction_units`): a float input in [0, 1] beside an integer ground truth is
in the crappifier's unit space (``crappify.to_unit`` of the HR's dtype) and predictions are
put back with ``crappify.from_unit``; in every other case (e.g. the ``cremi-4x`` sample's float
0..255 LR beside its uint8 HR) input and ground truth share units. The error map uses the same
maps. ``metrics.evaluate(restored, hr, normalised=False)`` and ``decrappify evaluate`` give the
same numbers.
"""

from __future__ import annotations

import threading

import numpy as np

from .. import metrics
from ..metrics import IntensityMap


class GroundTruth:
    """A ground-truth stack matched to a restored result, and the intensity maps for
    predictions (``pred_map``) and for the ground truth (``gt_map``), by
    :func:`metrics.intensity_maps` (module doc).

    Made by :func:`ground_truth`, it reads nothing: ``data`` (``hr`` cropped on Y, X to the
    result's shape), ``gt_map`` and ``pred_map`` are built on first use, which reads the whole
    ground truth (a lazy one in slabs, so a ground truth larger than memory works) and computes
    its percentiles, and reads the input's min and max when the input is float and the ground
    truth integer. Use them, or call :meth:`prepare`, in a worker thread, never in napari's UI
    thread.
    """

    def __init__(self, data, pred_map: IntensityMap | None = None,
                 gt_map: IntensityMap | None = None, *, lr=None, yx: tuple[int, int] | None = None):
        self._hr, self._yx, self._lr = data, yx, lr
        self._data = None if yx is not None else data
        self._pred_map, self._gt_map = pred_map, gt_map
        self._lock = threading.Lock()

    @property
    def data(self):
        if self._data is None:
            with self._lock:
                if self._data is None:
                    h, w = self._yx
                    hr = self._hr
                    self._data = hr if tuple(hr.shape[-2:]) == (h, w) else hr[..., :h, :w]
        return self._data

    @property
    def prepared(self) -> bool:
        """Whether the intensity maps exist (using them then reads nothing)."""
        return self._gt_map is not None and self._pred_map is not None

    def prepare(self) -> GroundTruth:
        """Build the intensity maps now (reads the data: call it in a worker thread)."""
        data = self.data
        with self._lock:
            if self._gt_map is None or self._pred_map is None:
                pred_map, gt_map = metrics.intensity_maps(data, self._lr)
                if self._gt_map is None:
                    self._gt_map = gt_map
                if self._pred_map is None:
                    self._pred_map = pred_map if pred_map is not gt_map else self._gt_map
        return self

    @property
    def gt_map(self) -> IntensityMap:
        return self.prepare()._gt_map

    @property
    def pred_map(self) -> IntensityMap:
        return self.prepare()._pred_map


def check_ground_truth(hr_shape, restored_shape: tuple[int, ...], scale: int,
                       name: str = "ground truth") -> None:
    """A clear error when a ground truth of shape ``hr_shape`` cannot match a restored result of
    ``restored_shape``: same leading axes, and Y, X equal or at most ``scale - 1`` larger (LR
    made from HR cropped to a multiple of the scale, see :func:`crappify.crop_to_multiple`).
    Looks at shapes only: reads nothing."""
    hr_shape = tuple(hr_shape)
    ok = (len(hr_shape) == len(restored_shape) and hr_shape[:-2] == tuple(restored_shape[:-2])
          and all(restored_shape[i] <= hr_shape[i] < restored_shape[i] + scale for i in (-2, -1)))
    if not ok:
        raise ValueError(
            f"{name} has shape {hr_shape} but the restored result has shape {tuple(restored_shape)} "
            f"(the input's shape times the model's scale {scale} on Y, X): choose the HR version of "
            "the input"
        )


def match_ground_truth(hr, restored_shape: tuple[int, ...], scale: int, name: str = "ground truth",
                       ) -> object:
    """``hr`` cropped on Y, X to ``restored_shape`` (:func:`check_ground_truth`)."""
    check_ground_truth(hr.shape, restored_shape, scale, name)
    return hr[..., : restored_shape[-2], : restored_shape[-1]]


def ground_truth(hr, lr, restored_shape, scale: int, name: str = "ground truth") -> GroundTruth:
    """Match ``hr`` to a restored result of ``lr`` (a shape check: a ValueError now, nothing
    read); the crop and the intensity maps (module doc) are made on first use, see
    :class:`GroundTruth`."""
    check_ground_truth(hr.shape, restored_shape, scale, name)
    return GroundTruth(hr, lr=lr, yx=(int(restored_shape[-2]), int(restored_shape[-1])))


def score(pred, gt: GroundTruth, index: tuple[int, ...] | None = None) -> dict | None:
    """:func:`metrics.evaluate` of ``pred`` against the ground truth (whole stack, or the plane at
    ``index``); ``None`` when every ground-truth plane there is blank."""
    g = gt.data if index is None else gt.data[index]
    p = np.asarray(pred, dtype=np.float32)
    try:
        return metrics.evaluate(gt.pred_map(p), gt.gt_map(np.asarray(g)), normalised=True)
    except ValueError as e:
        if "blank" in str(e):
            return None
        raise


def combine(planes: list[dict]) -> dict | None:
    """A :func:`metrics.evaluate`-style result from its per-plane rows (``plane``, ``psnr``,
    ``ssim``, ``nrmse``), e.g. scored one plane at a time; ``None`` when there are none."""
    if not planes:
        return None
    mean = {k: float(np.mean([r[k] for r in planes])) for k in ("psnr", "ssim", "nrmse")}
    return {**mean, "n_planes": len(planes), "planes": list(planes)}


def bicubic(lr, scale: int) -> np.ndarray:
    """The bicubic baseline, plane by plane (:func:`metrics.bicubic_upsample`)."""
    lr = np.asarray(lr, dtype=np.float32)
    if lr.ndim == 2:
        return metrics.bicubic_upsample(lr, scale)
    planes = lr.reshape(-1, *lr.shape[-2:])
    out = np.stack([metrics.bicubic_upsample(p, scale) for p in planes])
    return out.reshape(*lr.shape[:-2], *out.shape[-2:])


def error_map(restored, gt: GroundTruth):
    """``|restored - ground truth|`` in [0, 1] units, always lazy (one chunk per plane): napari
    computes the planes it shows, so the Error map button never works through a whole stack in
    the UI thread, whether the result is in memory or not."""
    import dask.array as da

    r = restored
    if not isinstance(r, da.Array):
        r = np.asarray(r)
        r = da.from_array(r, chunks=(1,) * (r.ndim - 2) + r.shape[-2:])
    g = gt.data
    if not isinstance(g, da.Array):
        # a lazy array that is not dask (zarr, h5py, a memmap) is wrapped, not read: np.asarray
        # here read a whole ground truth in the UI thread
        g = da.from_array(g if hasattr(g, "shape") else np.asarray(g), chunks=r.chunks)
    return abs(gt.pred_map(r) - gt.gt_map(g))


# --------------------------------------------------------------------------- regions


def bbox_from_world(corners_world: np.ndarray, layer, yx_shape: tuple[int, int],
                    ) -> tuple[int, int, int, int]:
    """Pixel box ``(y0, y1, x0, x1)`` of ``layer`` covering world points ``corners_world``
    (rows of full world coordinates), clipped to the image."""
    pts = np.array([layer.world_to_data(p) for p in corners_world], dtype=float)[:, -2:]
    lo = np.floor(pts.min(axis=0) + 0.5).astype(int)
    hi = np.ceil(pts.max(axis=0) + 0.5).astype(int)
    y0, x0 = np.clip(lo, 0, yx_shape)
    y1, x1 = np.clip(hi, 0, yx_shape)
    if y1 - y0 < 2 or x1 - x0 < 2:
        raise ValueError("the region does not overlap the image (or is smaller than 2 pixels)")
    return int(y0), int(y1), int(x0), int(x1)


def view_corners_world(viewer) -> np.ndarray:
    """World coordinates of the corners of what the canvas shows (2-D view)."""
    h, w = viewer.canvas.size
    zoom = viewer.scene.camera.zoom
    cy, cx = viewer.scene.camera.center[-2:]
    point = np.asarray(viewer.dims.point, dtype=float)
    rows = []
    for dy in (-0.5, 0.5):
        for dx in (-0.5, 0.5):
            p = point.copy()
            p[-2], p[-1] = cy + dy * h / zoom, cx + dx * w / zoom
            rows.append(p)
    return np.array(rows)


def shape_corners_world(shapes_layer, viewer) -> np.ndarray:
    """World coordinates of the vertices of the selected (else the last) shape."""
    if len(shapes_layer.data) == 0:
        raise ValueError(f"shapes layer {shapes_layer.name!r} has no shape: draw a rectangle")
    selected = sorted(shapes_layer.selected_data)
    i = selected[-1] if selected else len(shapes_layer.data) - 1
    verts = np.asarray(shapes_layer.data[i], dtype=float)
    point = np.asarray(viewer.dims.point, dtype=float)
    rows = []
    for v in verts:
        w = np.asarray(shapes_layer.data_to_world(v), dtype=float)
        p = point.copy()  # the current plane, whatever plane the shape was drawn on
        p[-2:] = w[-2:]
        rows.append(p)
    return np.array(rows)


def halo_box(box: tuple[int, int, int, int], halo: int, yx_shape: tuple[int, int], align: int = 32,
             ) -> tuple[int, int, int, int]:
    """``box`` grown by at least ``halo`` pixels on every side, clipped to the image, with its
    origin on a multiple of ``align``.

    A U-Net is shift-equivariant only for shifts by multiples of its total stride: a crop that
    starts on the same alignment grid as the tiled engine's windows gives exactly the pixels of
    the full restore (with ``halo`` >= the receptive field), not a slightly different version.
    """
    y0, y1, x0, x1 = box
    return (max(0, (y0 - halo) // align * align), min(yx_shape[0], y1 + halo),
            max(0, (x0 - halo) // align * align), min(yx_shape[1], x1 + halo))
