"""Matching predicted objects to ground-truth objects one to one, by IoU or centroid distance
(:func:`match`): TP / FP / FN, precision, recall, F1 and count errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _safe_div(a: float, b: float, both_zero: float) -> float:
    return a / b if b else both_zero


def _centroids(lab: np.ndarray, ids: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    if not len(ids):
        return np.zeros((0, lab.ndim))
    return np.asarray(ndi.center_of_mass(np.ones(lab.shape), lab, ids), float).reshape(len(ids), lab.ndim)


def match(pred: np.ndarray, gt: np.ndarray, iou: float = 0.5, *,
          centroid_distance: float | None = None, pixel_size: Sequence[float] | None = None,
          return_pairs: bool = False) -> dict[str, Any]:
    """Match predicted objects to ground-truth objects one to one.

    A pair matches when its IoU is ``>= iou`` (or, with ``centroid_distance``, when the
    centroids are within that distance, in physical units with ``pixel_size``). Among the
    candidate pairs the one-to-one assignment with the most matches is taken, the total IoU
    (the total distance) only breaking ties (Hungarian algorithm, StarDist's cost
    ``-(IoU >= iou) - IoU / (2 min(n_pred, n_gt))``), so thresholds below 0.5, where an object
    may overlap several others by more than the threshold, count every match they can.

    Parameters
    ----------
    pred, gt : integer arrays
        Instance labels (0 = none) of the same shape.
    iou : float
        IoU threshold, ``0 < iou <= 1`` (pairs that do not overlap never match).
    centroid_distance : float, optional
        Match by centroid distance instead of IoU.
    pixel_size : sequence of float, optional
        Physical pixel size per axis, for ``centroid_distance``.
    return_pairs : bool
        Also return the matched ``(pred id, gt id)`` pairs as ``"pairs"``.

    Returns
    -------
    dict
        ``n_pred``, ``n_gt``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``,
        ``fp_rate`` (FP / predicted), ``fn_rate`` (FN / ground truth: the fraction missed),
        ``count_error`` (predicted - true), ``relative_count_error``, ``mean_matched_iou``.
        With no objects on either side every score is 1; with objects on one side only, 0.
    """
    from scipy.optimize import linear_sum_assignment

    if centroid_distance is None and not 0 < iou <= 1:
        why = ": IoU 0 would pair objects that do not overlap" if iou == 0 else ""
        raise ValueError(f"iou must be a threshold in (0, 1], got {iou}{why}")
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {g.shape}")
    for name, a in (("prediction", p), ("ground truth", g)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be integer instance labels, got dtype {a.dtype}")
    pf, gf = p.ravel().astype(np.int64), g.ravel().astype(np.int64)
    p_ids = np.unique(pf[pf > 0])
    g_ids = np.unique(gf[gf > 0])
    both = (pf > 0) & (gf > 0)
    pairs, inter = np.unique(np.stack([pf[both], gf[both]]), axis=1, return_counts=True) \
        if both.any() else (np.zeros((2, 0), np.int64), np.zeros(0, np.int64))
    p_area = dict(zip(*np.unique(pf[pf > 0], return_counts=True), strict=True))
    g_area = dict(zip(*np.unique(gf[gf > 0], return_counts=True), strict=True))
    ious = np.array([n / (p_area[a] + g_area[b] - n) for (a, b), n in
                     zip(pairs.T.tolist(), inter.tolist(), strict=True)], float)
    iou_of = {(a, b): v for (a, b), v in zip(pairs.T.tolist(), ious.tolist(), strict=True)}
    matched: list[tuple[int, int]] = []
    if centroid_distance is None:
        cand = [(a, b) for (a, b), v in iou_of.items() if v >= iou]
        if cand:
            ca = sorted({a for a, _ in cand})
            cb = sorted({b for _, b in cand})
            m = np.zeros((len(ca), len(cb)))
            ia, ib = {v: i for i, v in enumerate(ca)}, {v: i for i, v in enumerate(cb)}
            for a, b in cand:
                m[ia[a], ib[b]] = iou_of[(a, b)]
            # StarDist's cost: each match is worth 1, the IoUs sum to < 1/2 and only break ties,
            # so the assignment maximises the number of matches (maximum total IoU would trade
            # two matches of IoU 0.2 for one of 0.7 below a 0.5 threshold)
            good = m >= iou
            cost = -good.astype(float) - m / (2 * min(m.shape))
            rows, cols = linear_sum_assignment(cost)
            matched = [(ca[r], cb[c]) for r, c in zip(rows, cols, strict=True)
                       if good[r, c] and m[r, c] > 0]
        criterion = f"IoU >= {iou}"
    else:
        from scipy.spatial import cKDTree

        sc = np.asarray(pixel_size if pixel_size is not None else (1.0,) * p.ndim, float)
        if sc.shape != (p.ndim,) or not (np.isfinite(sc).all() and (sc > 0).all()):
            raise ValueError(f"pixel_size needs {p.ndim} finite values > 0 (one per axis of the "
                             f"labels), got {pixel_size}")
        cp = _centroids(p, p_ids) * sc
        cg = _centroids(g, g_ids) * sc
        if len(cp) and len(cg):
            d = cKDTree(cp).sparse_distance_matrix(cKDTree(cg), centroid_distance).toarray()
            close = np.zeros_like(d, bool)
            keys = cKDTree(cp).query_ball_tree(cKDTree(cg), centroid_distance)
            for r, cs in enumerate(keys):
                close[r, cs] = True
            cost = np.where(close, d, 1e9)
            rows, cols = linear_sum_assignment(cost)
            matched = [(int(p_ids[r]), int(g_ids[c])) for r, c in zip(rows, cols, strict=True)
                       if close[r, c]]
        criterion = f"centroid distance <= {centroid_distance}"
    n_pred, n_gt, tp = len(p_ids), len(g_ids), len(matched)
    fp, fn = n_pred - tp, n_gt - tp
    empty = 1.0 if n_pred == 0 and n_gt == 0 else 0.0
    precision = _safe_div(tp, n_pred, empty)
    recall = _safe_div(tp, n_gt, empty)
    f1 = _safe_div(2 * tp, n_pred + n_gt, empty)
    out = {
        "criterion": criterion, "n_pred": n_pred, "n_gt": n_gt, "tp": tp, "fp": fp, "fn": fn,
        "precision": precision, "recall": recall, "f1": f1,
        "fp_rate": _safe_div(fp, n_pred, 0.0), "fn_rate": _safe_div(fn, n_gt, 0.0),
        "count_error": n_pred - n_gt, "relative_count_error": _safe_div(n_pred - n_gt, n_gt, 0.0),
        "mean_matched_iou": (float(np.mean([iou_of.get(m_, 0.0) for m_ in matched]))
                             if matched else float("nan")),
    }
    if return_pairs:
        out["pairs"] = matched
    return out
