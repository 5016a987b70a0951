"""Restore dock, ground truth and LR consistency: scores, difference maps, the comparison grid.

:class:`ScoresMixin` is the dock's side (the *Ground truth and metrics* section: score the
plane or the stack against an HR layer, the LR consistency without one, error and consistency
map layers computed as they are viewed, the ``LR | restored | HR`` grid); the worker functions
below it read the data, plane by plane, with Cancel checked between planes.
"""

from __future__ import annotations

import html
import weakref

import numpy as np
from magicgui.widgets import Container, PushButton

from ..progress import Progress
from . import _compare, _live_lazy, api
from ._layers import BLENDING, base_data, current_plane, layer_geometry
from ._ui import note
from ._workers import compute_array


def _fmt(scores: dict | None) -> str:
    if not scores:
        return "—"
    return f"{scores['psnr']:.2f} dB / {scores['ssim']:.4f}"


def _fmt_consistency(scores: dict | None) -> str:
    if not scores or scores.get("psnr") is None:
        return "— (blank)"
    return f"{scores['psnr']:.2f} dB / {scores['ssim']:.3f}"


class ScoresMixin:
    """The Restore dock's scores against ground truth, LR consistency, maps and grid (mixed
    into :class:`.restore.RestoreWidget`, whose ``result``, ``metrics``, ``consistency`` and
    ``measured`` it reads and fills)."""

    def _scores_section(self) -> Container:
        """The dock's *Ground truth and metrics* section (its buttons connected)."""
        self.metrics_label = note("Choose an HR ground-truth layer to score results.")
        self.score_plane_button = PushButton(text="Score current plane")
        self.score_stack_button = PushButton(text="Score whole stack")
        self.error_button = PushButton(text="Error map layer")
        self.grid_button = PushButton(text="Grid: LR | restored | HR")
        self.consistency_label = note("LR consistency (no ground truth needed): restore first.")
        self.consistency_label.tooltip = (
            "the result degraded back to the input's grid (the model's own noise-free "
            "degradation) against the input: PSNR / SSIM. Low values mean the restoration "
            "does not reproduce its input (made-up or lost structure); a perfect restoration "
            "of a noisy input scores the input's own noise level")
        self.consistency_button = PushButton(
            text="Check consistency",
            tooltip="LR consistency of the plane on screen (for a lazy result, that plane is "
                    "computed in the background)")
        self.consistency_map_button = PushButton(text="LR consistency map layer")
        self.gt_box = Container(widgets=[self.metrics_label, self.score_plane_button,
                                         self.score_stack_button, self.error_button,
                                         self.grid_button, self.consistency_label,
                                         self.consistency_button, self.consistency_map_button],
                                labels=False)
        self.score_plane_button.changed.connect(lambda *_: self.score("plane"))
        self.score_stack_button.changed.connect(lambda *_: self.score("stack"))
        self.error_button.changed.connect(self.add_error_map)
        self.grid_button.changed.connect(self.toggle_grid)
        self.consistency_button.changed.connect(self.check_consistency)
        self.consistency_map_button.changed.connect(self.add_consistency_map)
        return self.gt_box

    def _result_ready(self, need_gt: bool = True) -> bool:
        if self.result is None or self.result["layer"] not in self.viewer.layers:
            self._set_status("⚠ restore a layer first")
            return False
        if need_gt and self.result["gt"] is None:
            self._set_status("⚠ choose an HR ground-truth layer, then restore")
            return False
        return True

    def _lr_range(self):
        """The LR's intensity range for LR consistency, if measured already (else the job
        measures it)."""
        return self.measured.get(base_data(self.result["source"]), ("lr_range",))

    def score(self, scope: str = "plane"):
        """Score the current plane or the whole stack against the ground truth (a worker job);
        the LR consistency of the same planes comes with it."""
        if self._busy() or not self._result_ready():
            return None
        r = self.result
        data = _exact(r["layer"])
        lr = base_data(r["source"])
        index = current_plane(self.viewer, r["source"], r["axes"]) if scope == "plane" else None

        def done(value):
            scores, cons, lr_range = value
            self.measured.put(lr, ("lr_range",), lr_range)
            if scope == "plane":
                self.metrics["plane"] = {"index": index, **scores}
                self.consistency["plane"] = {"index": index, **(cons or {"psnr": None})}
            else:
                self.metrics["stack"] = scores
                self.metrics.pop("plane", None)
                if cons is not None:
                    self.consistency["stack"] = cons
                self._plane_changed()
            self._show_metrics()
            self._set_status(f"scored the {'current plane' if scope == 'plane' else 'whole stack'}")

        return self._start(_score_job, data, lr, r["model"], r["gt"], index, self._lr_range(),
                           description=f"Scoring ({scope})", on_result=done)

    def check_consistency(self, *_args):
        """LR consistency of the current plane (a worker job: a lazy result's plane is computed
        there), without any ground truth."""
        if self._busy() or not self._result_ready(need_gt=False):
            return None
        r = self.result
        lr = base_data(r["source"])
        index = current_plane(self.viewer, r["source"], r["axes"])

        def done(value):
            cons, lr_range = value
            self.measured.put(lr, ("lr_range",), lr_range)
            self.consistency["plane"] = {"index": index, **(cons or {"psnr": None})}
            self._show_metrics()
            self._set_status("checked the LR consistency of the current plane")

        return self._start(_consistency_job, _exact(r["layer"]), lr, r["model"], index,
                           self._lr_range(), description="LR consistency", on_result=done)

    def add_consistency_map(self, *_args):
        """Add (or update) the LR consistency map: ``|degraded result - input|`` in [0, 1]
        units (the input's intensity range) on the input's grid, with the input layer's
        geometry; lazy, one plane at a time as viewed.

        Returns the layer; or, when the input's intensity range is not known yet (it may read
        the whole input), the worker job that measures it and then adds the layer.
        """
        if not self._result_ready(need_gt=False):
            return None
        r = self.result
        lr = base_data(r["source"])
        lr_range = self._lr_range()
        if lr_range is None:
            if self._busy():
                return None

            def measured(value):
                self.measured.put(lr, ("lr_range",), value)
                self.add_consistency_map()

            return self._start(_lr_range_job, lr, description="Measuring the input's range",
                               on_result=measured, cancelled_text="cancelled, no map")
        cmap = _consistency_map(_exact(r["layer"]), lr, r["model"], lr_range)
        return self._map_layer(f"{r['layer'].name} LR consistency", cmap, r["source"], "magma",
                               {"lr_consistency_of": r["layer"].name, "input": r["source"].name})

    def _map_layer(self, name: str, data, geometry_of, colormap: str, meta: dict):
        """Add (or update) a difference-map layer with ``geometry_of``'s scale, translate and
        units. The map (a dask array) is computed in the background as it is viewed, never in
        napari's UI thread (:class:`_live_lazy.LiveArray`; zeros until a plane is done).

        The map reads on its own: its own colormap, drawn opaque over the grey layers
        (``translucent`` blending at full opacity; ``additive`` over a grey image saturated
        most of it), and contrast limits from its own values, ``(0, 99.5th percentile)`` of the
        first view once its tiles are done (:meth:`_contrast_maps`; ``(0, 0.25)`` until then).
        """
        scale, translate, units = layer_geometry(geometry_of)
        live = _live_lazy.LiveArray(data)
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = live
            layer.scale, layer.translate, layer.units = scale, translate, units
        else:
            layer = self.viewer.add_image(live, name=name, scale=scale, translate=translate,
                                          units=units, colormap=colormap, contrast_limits=(0, 0.25),
                                          blending=BLENDING, opacity=1.0,
                                          metadata={"decrappify": meta})
            layer.contrast_limits_range = (0.0, 1.0)  # maps are in [0, 1] intensity units
        _live_lazy.bind(layer, live)
        self._contrast_pending[name] = (weakref.ref(layer), live)
        return layer

    def _contrast_maps(self) -> None:
        """Contrast limits of new map layers from their data: once the tiles on screen are done
        (read from the map's cache: nothing computed here), ``(0, 99.5th percentile)``. Runs in
        the UI thread from the progress poll; a percentile of one view costs milliseconds."""
        for name, (ref, live) in list(self._contrast_pending.items()):
            layer = ref()
            if layer is None or layer not in self.viewer.layers or _live_lazy.live_of(layer) is not live:
                del self._contrast_pending[name]
                continue
            values = _live_lazy.view_values(live)
            if values is None:
                continue
            del self._contrast_pending[name]
            values = values[np.isfinite(values)]
            top = float(np.percentile(values, 99.5)) if values.size else 0.0
            top = max(top, 1e-3)  # a perfect match (all zeros) still gets a valid range
            layer.contrast_limits_range = (0.0, max(1.0, top))
            layer.contrast_limits = (0.0, top)

    def _plane_changed(self, *_args) -> None:
        """Current-plane scores and LR consistency from the whole-stack ones, when those exist;
        a lazy result's plane consistency is checked on request (it computes the plane)."""
        if self.result is None:
            self._show_metrics()
            return
        r = self.result
        index = current_plane(self.viewer, r["source"], r["axes"])
        lead = base_data(r["source"]).shape[:-2]
        flat = int(np.ravel_multi_index(index, lead)) if lead else 0
        if "stack" in self.metrics:
            plane = {"index": index}
            for k, v in self.metrics["stack"].items():
                plane[k] = next((p for p in v["planes"] if p["plane"] == flat), None) if v else None
            self.metrics["plane"] = plane
        stack = self.consistency.get("stack")
        if stack is not None:
            row = next((p for p in stack["planes"] if p["plane"] == flat), None)
            self.consistency["plane"] = {"index": index, **(row or {"psnr": None})}
        elif (self.consistency.get("plane") or {}).get("index") != index:
            self.consistency.pop("plane", None)  # another plane: check it again
        self._show_metrics()

    def _show_metrics(self) -> None:
        self._show_consistency()
        if self.result is None or self.result.get("gt") is None:
            gt = self.ground_truth.value
            self.metrics_label.value = (
                f"Restore to score against <b>{html.escape(gt.name)}</b>." if gt is not None
                else "Choose an HR ground-truth layer, then restore, to score.")
            return
        plane = self.metrics.get("plane") or {}
        stack = self.metrics.get("stack") or {}
        where = ", ".join(str(i) for i in plane.get("index", ())) or "–"
        rows = "".join(
            f"<tr><td>{name}</td><td>{_fmt(plane.get(key)) if plane else '…'}</td>"
            f"<td>{_fmt(_summary(stack.get(key))) if stack else '…'}</td></tr>"
            for name, key in (("bicubic", "bicubic"), ("restored", "restored")))
        n = stack.get("restored", {}).get("n_planes") if stack.get("restored") else None
        self.metrics_label.value = (
            f"PSNR / SSIM vs <b>{self.result['gt_layer'].name}</b><table cellspacing='4'>"
            f"<tr><th></th><th>plane [{where}]</th><th>stack{f' ({n} planes)' if n else ''}</th></tr>"
            f"{rows}</table>")

    def _show_consistency(self) -> None:
        """``LR consistency: xx.xx dB / 0.xxx (plane [i]); stack: ... (n planes)``."""
        if self.result is None:
            self.consistency_label.value = "LR consistency (no ground truth needed): restore first."
            return
        plane, stack = self.consistency.get("plane"), self.consistency.get("stack")
        if plane is not None:
            where = ", ".join(str(i) for i in plane["index"]) or "–"
            text = f"LR consistency: {_fmt_consistency(plane)} (plane [{where}])"
        else:
            text = "LR consistency: press <i>Check consistency</i> for the current plane"
        if stack is not None:
            text += f"; stack: {_fmt_consistency(stack)} ({stack['n_planes']} planes)"
        self.consistency_label.value = text

    def add_error_map(self, *_args):
        """Add (or update) ``|restored - HR|`` (in [0, 1] units: the scores' intensity maps,
        :func:`_compare.error_map`) as a layer over the result.

        Returns the layer; or, when the ground truth's intensity maps are not known yet (they
        read the whole ground truth), the worker job that reads them and then adds the layer.
        """
        if not self._result_ready():
            return None
        if not self.result["gt"].prepared:
            if self._busy():
                return None
            return self._start(_prepare_ground_truth, self.result["gt"],
                               description="Reading the ground truth",
                               on_result=lambda _gt: self.add_error_map(),
                               cancelled_text="cancelled, no error map")
        r = self.result
        err = _compare.error_map(_exact(r["layer"]), r["gt"])
        return self._map_layer(f"{r['layer'].name} error", err, r["layer"], "inferno",
                               {"error_of": r["layer"].name, "ground_truth": r["gt_layer"].name})

    def toggle_grid(self, *_args) -> None:
        """Grid of LR | restored | HR, or back to the overlay."""
        if api.grid_active(self.viewer):
            api.compare(self.viewer, None, None, None, enable=False)
            self.grid_button.text = "Grid: LR | restored | HR"
            return
        if not self._result_ready(need_gt=False):
            return
        r = self.result
        gone = [f"{what} {lyr.name!r}" for what, lyr in (("input", r["source"]),
                                                         ("ground truth", r["gt_layer"]))
                if lyr is not None and lyr not in self.viewer.layers]
        panels = [lyr if lyr is not None and lyr in self.viewer.layers else None
                  for lyr in (r["source"], r["layer"], r["gt_layer"])]
        try:
            api.compare(self.viewer, *panels)
        except ValueError as e:
            self._failed(e)
            return
        self.grid_button.text = "Back to overlay"
        if gone:
            self._set_status(f"grid without the {' and the '.join(gone)}: removed from the viewer")


# --------------------------------------------------------------------------- worker functions

def _exact(layer):
    """A result layer's full-resolution data for workers: a lazy result as a dask array read
    exactly through the tiles the viewer has cached (:func:`_live_lazy.as_dask`)."""
    return _live_lazy.as_dask(base_data(layer))


def _summary(scores: dict | None) -> dict | None:
    """The stack means of a :func:`metrics.evaluate` result (without the per-plane list)."""
    if not scores:
        return None
    return {k: scores[k] for k in ("psnr", "ssim", "nrmse", "n_planes") if k in scores}

def _check_cancel(cancel) -> None:
    if cancel is not None and cancel.is_set():
        from .. import tiling

        raise tiling.RestoreCancelled("cancelled while scoring")


def _lr_range_job(lr, *, progress=None, cancel=None):
    """Worker: the LR's intensity range for LR consistency (:func:`metrics.reference_range`
    of the whole input: uint8 reads nothing, other data are streamed)."""
    from .. import metrics

    return metrics.reference_range(lr)


def _plane_consistency(model, restored_plane, lr_plane, lr_range) -> dict | None:
    """LR consistency (:func:`consistency.lr_consistency`, the model's degradation) of one 2-D
    plane, in the whole input's intensity range; None for a blank plane."""
    from .. import consistency

    try:
        one = consistency.lr_consistency(np.asarray(restored_plane), np.asarray(lr_plane),
                                         **consistency.model_degradation(model), lr_range=lr_range)
    except ValueError as e:
        if "blank" in str(e):
            return None
        raise
    return {"psnr": float(one["psnr"]), "ssim": float(one["ssim"])}


def _consistency_job(restored, lr, model, index, lr_range, *, progress=None, cancel=None):
    """Worker: LR consistency of the plane at ``index`` (a lazy result's plane computed here)."""
    if lr_range is None:
        lr_range = _lr_range_job(lr)
    _check_cancel(cancel)
    r = compute_array(restored[index], cancel)
    _check_cancel(cancel)
    return _plane_consistency(model, r, np.asarray(lr[index]), lr_range), lr_range


def _consistency_map(restored, lr, model, lr_range):
    """``|degraded result - input|`` in [0, 1] units (the input's intensity range), on the
    input's grid: lazy, one chunk per plane, so napari computes only the planes it shows."""
    import dask.array as da

    from .. import consistency, metrics

    deg = consistency.model_degradation(model)
    mode, lo, hi = lr_range
    lead = lr.ndim - 2
    r = restored if isinstance(restored, da.Array) else da.from_array(
        np.asarray(restored), chunks=(1,) * lead + tuple(restored.shape[-2:]))
    r = r.rechunk((1,) * lead + (-1, -1))
    low = lr if isinstance(lr, da.Array) else da.from_array(
        lr if hasattr(lr, "shape") else np.asarray(lr), chunks=(1,) * lead + tuple(lr.shape[-2:]))
    low = low.rechunk((1,) * lead + (-1, -1))

    def one(lr_block, r_block):
        a = metrics.apply_range(consistency.degrade(r_block, **deg), mode, lo, hi)
        b = metrics.apply_range(np.asarray(lr_block, dtype=np.float32), mode, lo, hi)
        return np.abs(a - b).astype(np.float32)

    # block k of the input with block k of the result (Y, X times the scale): the input's chunks
    index = "".join(chr(ord("a") + i) for i in range(lr.ndim))
    return da.blockwise(one, index, low, index, r, index, dtype=np.float32, align_arrays=False)


def _score_planes(restored, lr, model, gt, lr_range=None, *, progress, cancel) -> dict:
    """Worker: plane by plane over the whole stack (a lazy result's tiles included),
    :func:`_compare.score` of the restored result and of bicubic when ``gt`` is given
    (``restored``, ``bicubic``) and the LR consistency when ``lr_range`` is (``consistency``,
    summed up like the scores): a ``scoring`` progress event per plane, and Cancel checked
    between planes (and between a lazy plane's tiles). The same numbers as scoring the whole
    stack at once."""
    lead = tuple(restored.shape[:-2])
    n = int(np.prod(lead)) if lead else 1
    planes: dict[str, list] = {"restored": [], "bicubic": [], "consistency": []}
    progress(Progress("scoring", 0, n))
    for flat, idx in enumerate(np.ndindex(*lead)):
        _check_cancel(cancel)
        r = compute_array(restored[idx], cancel)
        _check_cancel(cancel)
        low = np.asarray(lr[idx])
        if gt is not None:
            for key, pred in (("restored", r), ("bicubic", _compare.bicubic(low, model.scale))):
                one = _compare.score(pred, gt, idx)
                if one is not None:
                    planes[key].extend({**p, "plane": flat} for p in one["planes"])
        if lr_range is not None:
            cons = _plane_consistency(model, r, low, lr_range)
            if cons is not None:
                planes["consistency"].append({**cons, "plane": flat})
        progress(Progress("scoring", flat + 1, n))
    out = {k: _compare.combine(planes[k]) for k in ("restored", "bicubic")} if gt is not None else {}
    rows = planes["consistency"]
    out["consistency"] = None if not rows else {
        "psnr": float(np.mean([p["psnr"] for p in rows])),
        "ssim": float(np.mean([p["ssim"] for p in rows])), "n_planes": len(rows), "planes": rows}
    return out


def _score_job(restored, lr, model, gt, index, lr_range, *, progress=None, cancel=None):
    """Worker: scores of the restored result and of bicubic, and the LR consistency (a plane,
    or the whole stack): ``(scores, consistency, lr_range)``."""
    if lr_range is None:
        lr_range = _lr_range_job(lr)
    if index is None:
        out = _score_planes(restored, lr, model, gt, lr_range, progress=progress, cancel=cancel)
        return out, out.pop("consistency"), lr_range
    progress(Progress("scoring", 0, 2))
    r, low = compute_array(restored[index], cancel), np.asarray(lr[index])
    out = {"restored": _compare.score(r, gt, index)}
    progress(Progress("scoring", 1, 2))
    _check_cancel(cancel)
    out["bicubic"] = _compare.score(_compare.bicubic(low, model.scale), gt, index)
    cons = _plane_consistency(model, r, low, lr_range)
    progress(Progress("scoring", 2, 2))
    return {k: _summary(v) for k, v in out.items()}, cons, lr_range


def _prepare_ground_truth(gt, *, progress=None, cancel=None):
    """Worker: read the ground truth and build its intensity maps (:meth:`GroundTruth.prepare`)."""
    return gt.prepare()
