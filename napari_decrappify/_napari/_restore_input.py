"""Restore dock, its input: the pixel-size check, measurements and the restore worker.

:class:`InputChecksMixin` is the dock's side: the input's geometry (with the *pixel size*
field), the pixel-size verdict before restoring, what was measured on a layer's data (input
range, out-of-domain verdict, LR range: :class:`_Measured`, so restoring again or inspecting
reads nothing more) and the restore's findings. :func:`_measure` and :func:`_restore_job` are
the worker side.
"""

from __future__ import annotations

import html
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..progress import Progress
from ._layers import layer_axes, layer_geometry
from ._restore_scores import _check_cancel, _lr_range_job, _score_planes
from ._workers import compute_array

WARN_COLOR = "#f0a030"  # ⚠ lines in the dock


def _norm_key(norm) -> tuple | None:
    """What an input range measured for ``norm`` depends on (None: fixed, nothing measured)."""
    return None if norm.mode == "fixed" else (norm.mode, tuple(float(q) for q in norm.input_percentiles))


class _Measured:
    """Values measured on a layer's data in workers (the input range, the out-of-domain
    verdict, the LR's intensity range for consistency), keyed by the data's identity (the
    array object, held weakly when it can be) and by what they depend on: restoring again or
    inspecting a region reads nothing more. Used in the UI thread only."""

    def __init__(self, size: int = 32):
        self._items: dict = {}
        self._size = size

    def get(self, data, key):
        hit = self._items.get((id(data), key))
        if hit is None or hit[0]() is not data:
            return None
        return hit[1]

    def put(self, data, key, value) -> None:
        if value is None:
            return
        try:
            ref = weakref.ref(data)
        except TypeError:  # not weak-referenceable: held (a few entries at most)
            def ref(d=data):
                return d
        self._items.pop((id(data), key), None)
        self._items[(id(data), key)] = (ref, value)
        while len(self._items) > self._size:
            self._items.pop(next(iter(self._items)))


class InputChecksMixin:
    """The Restore dock's input checks (mixed into :class:`.restore.RestoreWidget`): pixel
    size, the measurements remembered per layer data, the restore's findings."""

    def _input_geometry(self, source, axes: str):
        """``(scale, translate, units)`` of the input: the layer's, with Y, X in nm from the
        *pixel size* field when it is set."""
        scale, translate, units = layer_geometry(source)
        if self.pixel_size.value > 0:
            scale, units = list(scale), list(units)
            for ax in "YX":
                i = axes.index(ax)
                scale[i], units[i] = float(self.pixel_size.value), "nanometer"
        return tuple(scale), tuple(translate), tuple(units)

    def _pixel_check(self, source, model, axes: str):
        """:func:`pixel_size.check` of the input against ``model`` (a loaded model, or anything
        with ``config``, ``scale`` and ``name``) under the chosen policy; a ValueError under
        ``error``. Reads no data."""
        from .. import pixel_size

        scale, _translate, units = self._input_geometry(source, axes)
        return pixel_size.check(model, scale, units, axes, self.pixel_policy.value)

    @staticmethod
    def _resample_plan(check, yx: tuple[int, int]) -> dict | None:
        """How the input is resampled to the model's grid (as
        :func:`napari_decrappify.tiling.restore_image` does), or None."""
        from ..pixel_size import model_grid_shape

        if check.action != "resample":
            return None
        grid = model_grid_shape(yx, check.factor)
        order = 1 if grid[0] < yx[0] or grid[1] < yx[1] else 3
        return {"grid": grid, "order": order, "factor": tuple(check.factor)}

    def _update_pixel_note(self, *_args) -> None:
        """The pixel-size verdict for the chosen input and model, before restoring (reads the
        model's ``model.json`` and the layer's scale, no data)."""
        from ..models import read_model_config

        layer, path = self.image.value, self.model.value
        if layer is None or not path:
            self.pixel_note.value = ""
            return
        try:
            cfg = read_model_config(Path(path))
            axes = layer_axes(layer, self.axes.value or None)
            check = self._pixel_check(layer, SimpleNamespace(config=cfg, scale=cfg.arch.scale,
                                                             name=cfg.name), axes)
            text = check.message
        except ValueError as e:
            text = f"⚠ {e}"
        self.pixel_note.value = _html_line(text)
        self.pixel_note.tooltip = text

    def _keys(self, model, resample: dict | None) -> dict:
        grid = None if resample is None else tuple(resample["grid"])
        norm = _norm_key(model.config.norm)
        return {"range": ("range", norm, grid),
                "domain": ("domain", model.weights_hash, norm, grid),
                "lr_range": ("lr_range",)}

    def _known(self, data, model, resample: dict | None) -> dict:
        """What was measured on ``data`` before (for ``model``'s normalisation and grid)."""
        out = {}
        for name, key in self._keys(model, resample).items():
            value = self.measured.get(data, key)
            if value is not None:
                out[name] = value
        return out

    def _remember(self, data, model, resample: dict | None, measured: dict) -> None:
        for name, key in self._keys(model, resample).items():
            if measured.get(name) is not None:
                self.measured.put(data, key, measured[name])

    def _show_checks(self, checks: dict | None) -> None:
        """The restore's findings, one line each (⚠ lines in colour); the tooltip has them as
        plain text."""
        if not checks:
            self.info.value, self.info.tooltip = "", ""
            return
        titles = ("intensities", "pixel size", "training data")
        lines = _check_messages(checks)
        self.info.value = "<br>".join(f"<i>{t}</i>: {_html_line(m)}" for t, m in zip(titles, lines,
                                                                                      strict=True))
        self.info.tooltip = "\n".join(f"{t}: {m}" for t, m in zip(titles, lines, strict=True))



# --------------------------------------------------------------------------- worker functions

def _jsonable(meta: dict) -> dict:
    """Provenance for the store's attributes: the JSON-serialisable part of layer metadata."""
    import json

    return json.loads(json.dumps(meta, default=lambda _o: None))


def _html_line(text: str) -> str:
    """A message for a rich-text label: escaped, a ⚠ one in colour."""
    esc = html.escape(text, quote=False)
    return f"<span style='color:{WARN_COLOR}'>{esc}</span>" if text.startswith("⚠") else esc


def _check_messages(checks: dict) -> list[str]:
    """The normalisation, pixel-size and out-of-domain lines of a restore's checks."""
    return [checks["normalisation"], checks["pixel_size"]["message"], checks["domain"]["message"]]


def _factor_text(factor) -> str:
    fy, fx = factor
    return f"{fy:.2f}x" if abs(fy - fx) < 1e-6 * max(fy, fx) else f"{fy:.2f} x {fx:.2f}"


class _Planes:
    """A (lazy) array read for measurements one whole (Y, X) plane at a time, the last plane
    kept: an input resampled to the model's grid (whose chunks are whole planes) is computed
    once per plane however many patches are taken from it, and Cancel is checked per plane."""

    def __init__(self, data, cancel=None):
        self.data, self.cancel = data, cancel
        self.shape, self.dtype, self.ndim = tuple(data.shape), np.dtype(data.dtype), len(data.shape)
        self._key, self._plane = None, None

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        lead = self.ndim - 2
        head = idx[:lead]
        if len(head) == lead and all(isinstance(i, int | np.integer) for i in head):
            key = tuple(int(i) for i in head)
            if key != self._key:
                _check_cancel(self.cancel)
                self._plane, self._key = np.asarray(self.data[key]), key
            return self._plane[idx[lead:]] if len(idx) > lead else self._plane
        _check_cancel(self.cancel)
        return np.asarray(self.data[idx])

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.data, dtype=dtype)


def _measure(model, lr, axes: str, resample: dict | None, known: dict, *, domain: bool = True,
             progress=None, cancel=None) -> dict:
    """Worker: the input range that ``model``'s normalisation maps (the whole input's, median
    over planes: :func:`normalization.input_range`) and the out-of-domain verdict
    (:func:`domain.check`), each on what the network sees (the input resampled to the
    model's grid when ``resample``), unless ``known``."""
    from .. import domain as domain_check
    from .. import normalization

    out = dict(known)
    need_range = "range" not in out and _norm_key(model.config.norm) is not None
    need_domain = domain and "domain" not in out
    if not (need_range or need_domain):
        return out
    source = lr
    if resample is not None:
        from ..pixel_size import resample_yx

        source = resample_yx(lr, axes, resample["grid"], resample["order"])
    # numpy planes, each read (or resampled) once: exact percentiles, Cancel between planes
    source = np.asarray(source) if len(source.shape) == 2 else _Planes(source, cancel)
    if need_range:
        if progress is not None:  # (the restore's tile events follow)
            progress(Progress("measuring the input", 0, 1))
        out["range"] = normalization.input_range(model.config.norm, source)
    if need_domain:
        try:
            out["domain"] = domain_check.check(model, source, axes, out.get("range"))
        except ValueError as e:  # e.g. no non-constant patch
            out["domain"] = {"in_domain": None, "findings": [], "message": f"not checked ({e})"}
    return out


def _restore_job(model, image, config, policy, resample, known, lazy, gt, *, progress=None,
                 cancel=None) -> dict:
    """Worker: measure the input (:func:`_measure`), then :func:`tiling.restore_image` with
    that range (resampling to the model's grid and back as the pixel-size check says): the
    lazy result as it is, or computed, with its LR consistency per plane and, with a ground
    truth, its scores and bicubic's."""
    from .. import tiling

    measured = _measure(model, image.data, image.axes, resample, known, progress=progress,
                        cancel=cancel)
    config = config.model_copy(update={"input_range": measured.get("range")})
    # a lazy graph outlives the job: no progress callback or cancel event of this job in it
    res = tiling.restore_image(model, image, config, axes=image.axes,
                               progress=None if lazy else progress,
                               cancel=None if lazy else cancel,
                               pixel_size_mismatch=policy, check_domain=False)
    meta = res.metadata
    checks = {"normalisation": meta["normalisation"], "input_range": meta["input_range"],
              "pixel_size": meta["pixel_size"], "domain": measured["domain"]}
    out = {"measured": measured, "checks": checks}
    if lazy:
        out["data"] = res.data
        return out
    restored = compute_array(res.data, cancel)
    _check_cancel(cancel)
    out["restored"] = restored
    lr_range = measured.get("lr_range")
    if lr_range is None:
        lr_range = measured["lr_range"] = _lr_range_job(image.data)
    planes = _score_planes(restored, image.data, model, gt, lr_range, progress=progress,
                           cancel=cancel)
    out["consistency"] = planes.pop("consistency")
    out["scores"] = planes if gt is not None else None
    return out
