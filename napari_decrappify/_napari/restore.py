"""Restore dock: denoise and upsample an image layer with a model, and compare with ground truth.

What the dock does, each step in a thread worker with the dock's own progress bar (what runs,
n of m, ETA), napari's progress bar, and a Cancel that answers at once:

* **Restore** the chosen layer with a model (bundled, user, or a folder), either at once (an
  in-memory layer) or *lazily* (a layer whose tiles on screen are restored in background
  threads and shown as they finish, the input upsampled until then: napari's UI thread never
  computes one, :mod:`._live_lazy`; for upsampling models a two-level multiscale
  ``[restored, input]``, so a zoomed-out view reads only the input). The dock shows the lazy
  view's progress (n of m tiles on screen, ETA) and its Cancel stops it.
  The result is named ``"<input> restored (<model>)"`` and carries the
  scale, translate and units that make it overlay the input exactly
  (:func:`napari_decrappify.io.upscale_geometry`), and the model's name, weights hash and the
  parameters in ``metadata["decrappify"]``. Cancelling leaves no layer behind. Restoring again
  under the same name replaces that result (:func:`api.add_result_layer` with ``replace``).
* **Render all to OME-Zarr**: write a lazy result to disk, then swap the layer's data to the
  written store.
* **Ground truth**: with an HR layer chosen, PSNR / SSIM of the bicubic baseline and of the
  restored result (current plane and whole stack, plane by plane; numbers from
  :mod:`napari_decrappify.metrics`, whose one rule maps all three to [0, 1] by the ground
  truth's range, predictions after being brought from the input's units into the ground
  truth's: :func:`napari_decrappify.metrics.intensity_maps`), an error-map layer (the same
  maps), and a grid ``LR | restored | HR``. The button slots only check shapes: the ground
  truth (and its intensity range) is read in the workers (:class:`_compare.GroundTruth`).
* **Inspect region**: restore only a rectangle (a Shapes layer) or the current view, with a
  halo, and show LR / bicubic / restored / HR crops side by side with their scores.

What the dock checks, without ground truth (also in workers; the UI thread reads no data):

* **Intensities**: models normalised from the data (:mod:`napari_decrappify.normalization`)
  map the input's 1st / 99.8th percentiles, measured once on the *whole layer* in a worker
  before the (lazy or in-memory) result is built, and remembered per layer data, model
  normalisation and pixel grid: restoring again, or inspecting a region, reads nothing more,
  and an inspected region gets exactly the full result's normalisation.
* **Pixel size** (:mod:`napari_decrappify.pixel_size`): the layer's scale and units (or the
  *pixel size* field) against what the model was trained for; by default a mismatch is
  restored through the model's grid and back (:func:`napari_decrappify.tiling.restore_image`),
  and the result layer keeps the geometry it has without resampling.
* **Out of domain** (:mod:`napari_decrappify.domain`): patches of the input compared with the
  model's training inputs; a ⚠ line in the dock when they differ.
* **LR consistency** (:mod:`napari_decrappify.consistency`): the result degraded back to the
  input's grid against the input: PSNR / SSIM per plane and for the stack, and an optional map
  layer on the input's grid.

The dock is split by concern: this module builds the form, follows the input and model
choices and restores (:class:`RestoreWidget`); :mod:`._restore_input` measures and checks the
input and holds the restore worker, :mod:`._restore_scores` scores against ground truth and the
LR consistency, :mod:`._restore_inspect` inspects a region, :mod:`._restore_lazy` follows and
renders the lazy result, :mod:`._restore_export` exports to bioimage.io. Their names stay
importable from here.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ..pixel_size import POLICIES
from . import _compare, api
from ._job_dock import JobDock, model_first
from ._layers import base_data, layer_axes, lr_looking, mode_text
from ._model_picker import ModelPicker
from ._progress import InlineProgress
from ._restore_export import (  # noqa: F401 - re-exported: tests patch _export_package here
    _EXPORT_CHILD,
    _EXPORT_FOLDER,
    ExportMixin,
    _export_job,
    _export_package,
    _export_test_image,
    _ExportSource,
    _login_name,
    _remove_export_leftovers,
)
from ._restore_input import (  # noqa: F401 - re-exported
    WARN_COLOR,
    InputChecksMixin,
    _check_messages,
    _factor_text,
    _html_line,
    _jsonable,
    _measure,
    _Measured,
    _norm_key,
    _Planes,
    _restore_job,
)
from ._restore_inspect import (  # noqa: F401 - re-exported
    CURRENT_VIEW,
    INSPECT_PANELS,
    QUICK_HALO,
    InspectMixin,
    _inspect_job,
    _restore_crop,
    _window,
)
from ._restore_lazy import LIVE_POLL_MS, LiveResultMixin  # noqa: F401 - re-exported
from ._restore_scores import (  # noqa: F401 - re-exported
    ScoresMixin,
    _check_cancel,
    _consistency_job,
    _consistency_map,
    _exact,
    _fmt,
    _fmt_consistency,
    _lr_range_job,
    _plane_consistency,
    _prepare_ground_truth,
    _score_job,
    _score_planes,
    _summary,
)
from ._ui import DefaultChoice, DockBody, devices, layer_choices, note
from ._workers import CoreJob, LoadsModelFirst, model_events

LAZY_PIXELS = 64_000_000  # results larger than this (output pixels) default to lazy mode


def _model_text(m: dict) -> str:
    """How a restoration model reads in the dock's model list."""
    where = "bundled" if m["bundled"] else "user"
    return f"{m['name']}  ({mode_text(m['scale'])}, {m['encoder']}, {where})"


class RestoreWidget(ExportMixin, ScoresMixin, InspectMixin, LiveResultMixin, InputChecksMixin,
                    LoadsModelFirst, JobDock, DockBody):
    """Restore: denoise and upsample an image layer with a model.

    Each concern is a mixin of its own module: :class:`._restore_input.InputChecksMixin`
    (pixel size, measurements, the findings), :class:`._restore_scores.ScoresMixin` (ground
    truth, LR consistency, maps, grid), :class:`._restore_inspect.InspectMixin` (a region),
    :class:`._restore_lazy.LiveResultMixin` (the lazy result's progress, Cancel, rendering) and
    :class:`._restore_export.ExportMixin` (bioimage.io); this class builds the form, follows
    the choices and restores.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    BUSY_TEXT = "busy: wait for the current job or cancel it"
    CANCEL_TEXT = "cancelling: stops after the tile being computed …"
    FAILED_STATUS = "⚠ {exc}"

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = v = napari_viewer
        self.job: CoreJob | None = None
        self.result: dict | None = None  # source, layer, model, axes, lazy, gt_layer
        self.metrics: dict = {}  # {"stack": {...}, "plane": {...}} as shown in the dock
        self.consistency: dict = {}  # LR consistency {"stack": {...}, "plane": {...}}
        self.inspection: dict | None = None
        self.measured = _Measured()  # input ranges, domain verdicts, LR ranges per layer data

        # -- input
        self.image = ComboBox(label="input", choices=layer_choices(v))
        self.model = ModelPicker("restoration", label="model", text=_model_text,
                                 empty="(no model: train one, or choose a folder)")
        self.model.list_with(self.model_entries)
        self.folder_button = PushButton(text="Model folder…")
        self.export_button = PushButton(
            text="Export to bioimage.io…",
            tooltip="write the chosen model as a bioimage.io package (*.zip) that other tools "
                    "read (bioimage.io, deepImageJ, bioimageio.core ...); 20-40 s in the "
                    "background")
        self.mode = note()
        self.axes = LineEdit(label="axes", value="",
                             tooltip="one letter per dimension from TCZYX, ending in YX; guessed "
                                     "from the layer, edit to override")
        self.lazy = CheckBox(label="lazy: compute tiles as they are viewed", value=False)
        self._lazy_by_hand = False  # the user ticked / unticked it: model changes keep it
        self._setting_lazy = False
        # the input defaults to the LR-looking layer (_layers.lr_looking) until the user picks
        # one: then layers added later (a result, another image) leave their choice alone
        self._input_default = DefaultChoice(self.image, lr_looking, v)
        self.ground_truth = ComboBox(label="HR ground truth", choices=layer_choices(v, optional=True))
        self.pixel_size = FloatSpinBox(
            label="pixel size (nm)", value=0.0, min=0.0, max=1e7, step=0.5,
            tooltip="the input's pixel size on Y and X in nanometres; 0 (\"from layer\") takes "
                    "it from the layer's scale and units. Compared with the pixel size the model "
                    "was trained for")
        self.pixel_size.native.setSpecialValueText("from layer")  # shown for 0
        self.pixel_policy = ComboBox(
            label="pixel-size mismatch", choices=list(POLICIES), value="resample",
            tooltip="when the input's pixel size differs from the model's by more than 15%: "
                    "resample it to the model's grid and the result back (same geometry), "
                    "restore it as it is with a warning, or refuse")
        self.pixel_note = note()
        self.main = Container(widgets=[self.image, self.model, self.folder_button,
                                       self.export_button, self.mode,
                                       self.axes, self.lazy, self.ground_truth, self.pixel_size,
                                       self.pixel_policy, self.pixel_note])

        # -- advanced
        self.tile = SpinBox(label="tile (input px; 0: auto)", value=0, min=0, max=8192, step=32)
        self.halo = SpinBox(label="halo (px; -1: model's)", value=-1, min=-1, max=4096)
        self.batch = SpinBox(label="batch (0: auto)", value=0, min=0, max=4096)
        self.device = ComboBox(label="device", choices=devices(), value="auto")
        self.precision = ComboBox(label="precision", choices=["auto", "fp32", "bf16", "fp16"],
                                  value="auto")
        self.tta = CheckBox(label="test-time augmentation (8x slower)", value=False,
                            tooltip="each tile restored in its 8 rotations / flips and the "
                                    "results averaged: a little better, 8 times the compute")
        self.export_authors = LineEdit(
            label="export authors", value=_login_name(),
            tooltip="the bioimage.io package's authors, full names separated by commas "
                    "(\"Export to bioimage.io…\" records them; its test image is the input "
                    "layer's plane on screen)")
        self.exact = CheckBox(
            label="exact halo (receptive field)", value=False,
            tooltip="tile with the model's receptive field as halo: tiled output equals "
                    "whole-image output (~1e-6), at about 1.2-1.4x the compute of the model's "
                    "measured halo (within 2e-3 of the range)")
        self.advanced = Container(widgets=[self.tile, self.halo, self.exact, self.batch, self.device,
                                           self.precision, self.tta, self.export_authors])

        # -- actions
        self.restore_button = PushButton(text="Restore")
        self.cancel_button = PushButton(
            text="Cancel", enabled=False,
            tooltip="stop the running job (at its next tile), or the lazy result's tiles on "
                    "screen")
        # the dock's own progress: what is running, n of m, ETA (the job's or the lazy view's)
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.progress_text = note()  # what runs, n of m, ETA (the status line keeps messages)
        self.progress_text.visible = False
        self._progress_line = InlineProgress(self.progress, self.progress_text)
        self.status = note()
        # what the restore found: normalisation, pixel size, out-of-domain check (wraps; the
        # plain text is the tooltip)
        self.info = note()
        self.actions = Container(widgets=[self.restore_button, self.cancel_button,
                                          self.progress_text, self.progress, self.status,
                                          self.info], labels=False)

        self.render = self._render_section()
        self.gt_box = self._scores_section()
        self.inspect_box = self._inspect_section()

        self.add(self.main)
        self.add(self.advanced, "Advanced (tiles, device)")
        self.add(self.actions)
        self.add(self.gt_box, "Ground truth and metrics", collapsed=False)
        self.add(self.inspect_box, "Inspect a region", collapsed=False)
        self.add(self.render, "Lazy result: render to OME-Zarr")
        self.finish()

        self.ground_truth.changed.connect(lambda *_: self._show_metrics())
        self.image.changed.connect(self._image_changed)
        self.lazy.changed.connect(self._lazy_changed)
        self.model.changed.connect(self._model_changed)
        self.folder_button.changed.connect(self._choose_folder)
        self.export_button.changed.connect(lambda *_: self.export_model())
        self.restore_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        for w in (self.image, self.model, self.axes, self.pixel_size, self.pixel_policy):
            w.changed.connect(self._update_pixel_note)
        self.follow_layers(v)
        v.dims.events.current_step.connect(self._plane_changed)
        model_events.saved.connect(self._model_saved)
        self._default_input()
        self._image_changed()
        self._model_changed()
        self._update_pixel_note()
        self._start_live_poll()

    # ------------------------------------------------------------------ choices
    def model_entries(self) -> list[dict]:
        """Restoration models offered: bundled, user (``DECRAPPIFY_MODELS``, user data dir) and
        folders chosen by hand (:meth:`ModelPicker.entries`)."""
        return self.model.entries()

    def add_model_folder(self, folder) -> None:
        """Offer the model in ``folder`` in the dropdown and select it (:class:`ModelPicker`:
        a ValueError for a folder that holds no model, or a model of another kind)."""
        self.model.add_folder(folder)

    def _choose_folder(self, *_args) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder")
        if folder:
            try:
                self.add_model_folder(folder)
            except ValueError as e:
                self._set_status(f"⚠ {e}")

    def _model_saved(self, path: str) -> None:
        """A model folder was written (Train dock): offer it, and select it, when it is a
        restoration model, also when it was saved outside the folders models are listed from
        (not a segmentation model from the Segment dock)."""
        try:
            if self.model.offer_saved(path):
                self._set_status(f"new model {Path(path).name} available (selected)")
        except RuntimeError:  # the dock's Qt widgets were already deleted
            model_events.saved.disconnect(self._model_saved)

    def reset_choices(self, *args) -> None:
        """Refresh the layer choices (layers added, removed, renamed), then the input's default."""
        with self._input_default.quiet():  # a value that changes here was not picked by the user
            super().reset_choices(*args)
        self._default_input()

    def _default_input(self) -> None:
        """Point the input at the LR-looking image layer (:func:`_layers.lr_looking`: by name,
        then the largest pixel, then the smallest image; never one of this plugin's results),
        unless the user chose the input and it is still open. With the bundled sample's LR and
        HR open, that is the LR, whatever their order in the layer list."""
        self._input_default.apply()

    def _image_changed(self, *_args) -> None:
        layer = self.image.value
        if layer is None:
            return
        try:
            self.axes.value = layer_axes(layer)
        except ValueError as e:
            self.axes.value = ""
            self._set_status(f"⚠ {e}")
            return
        self._lazy_by_hand = False  # a new input: its own default
        self._lazy_default()

    def _lazy_default(self) -> None:
        """Tick *lazy* for results over :data:`LAZY_PIXELS` output pixels and for inputs that are
        already lazy (dask, zarr), unless the user set the box by hand."""
        layer = self.image.value
        if layer is None or self._lazy_by_hand:
            return
        n = int(np.prod(base_data(layer).shape))
        scale = self._model_scale() or 1
        self._setting_lazy = True
        try:
            self.lazy.value = n * scale * scale > LAZY_PIXELS or not isinstance(base_data(layer),
                                                                               np.ndarray)
        finally:
            self._setting_lazy = False

    def _lazy_changed(self, *_args) -> None:
        if not self._setting_lazy:
            self._lazy_by_hand = True

    def _model_scale(self) -> int | None:
        from ..models import read_model_config

        if not self.model.value:
            return None
        try:
            return read_model_config(Path(self.model.value)).arch.scale
        except ValueError:
            return None

    def _model_changed(self, *_args) -> None:
        from ..models import read_model_config

        self._lazy_default()  # the result's size depends on the model's scale
        if not self.model.value:
            self.mode.value = "no model selected"
            return
        try:
            cfg = read_model_config(Path(self.model.value))
        except ValueError as e:
            self.mode.value = f"⚠ {e}"
            return
        parts = [f"<b>{mode_text(cfg.arch.scale, cfg.kind)}</b>", cfg.arch.encoder,
                 f"halo {cfg.default_halo} px"]
        if cfg.arch.frames > 1:
            parts.append(f"{cfg.arch.frames} frames")
        if cfg.metrics.get("valid_psnr") is not None:
            parts.append(f"validation PSNR {cfg.metrics['valid_psnr']:.2f} dB")
        self.mode.value = " · ".join(parts)

    # ------------------------------------------------------------------ inputs
    def tile_config(self):
        from ..config import TileConfig

        options = {"halo": None if self.halo.value < 0 else int(self.halo.value),
                   "batch_size": int(self.batch.value), "device": self.device.value,
                   "precision": self.precision.value, "tta": bool(self.tta.value),
                   "exact": bool(self.exact.value)}
        if self.tile.value:  # else the engine's default, grown to the model's halo if needed
            options["tile"] = int(self.tile.value)
        return TileConfig(**options)

    def _inputs(self):
        """(source layer, model, axes, TileConfig, ground-truth layer), or a ValueError."""
        source = self.image.value
        if source is None:
            raise ValueError("choose an input image layer")
        if not self.model.value:
            raise ValueError("choose a model (or train one in the Train dock)")
        axes = layer_axes(source, self.axes.value or None)
        model = self._model_at(self.model.value)  # loaded in a worker first (_load_model_first)
        if model.kind != "restoration":
            raise ValueError(f"model {model.name!r} is a {model.kind} model, not a restoration model")
        gt = self.ground_truth.value
        if gt is source:
            raise ValueError("the ground truth cannot be the input layer itself")
        return source, model, axes, self.tile_config(), gt

    def _start(self, fn, *args, description: str, on_result,
               cancelled_text: str = "cancelled, nothing was added", **kwargs) -> CoreJob:
        """A job with the dock's lifecycle (:meth:`JobDock._start_job`); when it is cancelled
        the status line says ``cancelled_text``."""
        return self._start_job(
            fn, *args, description=description, on_result=on_result,
            cancelled=f"{description}: {cancelled_text}", **kwargs)

    def _job_buttons(self) -> tuple:
        return (self.restore_button,)

    def _job_watchers(self) -> list:
        """The dock's own bar and text line (in its form, shared with the lazy view's tiles)."""
        return [self._progress_line]

    def _load_model_first(self, action):
        """The loading job when the chosen model is not loaded yet (:class:`LoadsModelFirst`);
        ``None`` also when the inputs are incomplete (``action`` then says so)."""
        if self.image.value is None:
            return None
        return self._load_then(
            self.model.value, action, self._start,
            cancelled_text="cancelled before the model was loaded, nothing was added")

    # ------------------------------------------------------------------ restore
    @model_first
    def run(self, *_args):
        """Restore the input with the model: a worker job (returned) that measures the input
        (intensity range, out-of-domain check; each once per layer data) and then either builds
        the lazy result, added as a layer whose tiles are computed as they are viewed, or
        computes the whole result (with its LR consistency and, with a ground truth, scores).

        An input whose pixel size differs from the model's is resampled to the model's grid
        and the result back (*pixel-size mismatch* ``resample``), restored as it is (``warn``)
        or refused (``error``). A model not loaded yet is loaded in a worker first: the job
        returned is then that loading job, which restores when it is done.
        """
        from ..io import ImageData

        try:
            source, model, axes, config, gt_layer = self._inputs()
            lr = base_data(source)
            out_shape = tuple(lr.shape[:-2]) + (lr.shape[-2] * model.scale, lr.shape[-1] * model.scale)
            check = self._pixel_check(source, model, axes)
            gt = None
            if gt_layer is not None:  # a shape check: the data is read in the worker
                gt = _compare.ground_truth(base_data(gt_layer), lr, out_shape, model.scale,
                                           name=f"ground truth {gt_layer.name!r}")
        except ValueError as e:  # includes ModelFileError and pydantic's ValidationError
            self._set_status(f"⚠ {e}")
            return None
        lazy = bool(self.lazy.value)
        policy = self.pixel_policy.value
        resample = self._resample_plan(check, tuple(lr.shape[-2:]))
        scale, translate, units = self._input_geometry(source, axes)
        image = ImageData(data=lr, axes=axes, scale=scale, translate=translate, units=units,
                          name=source.name)
        params = {"tile_config": config.model_dump(), "lazy": lazy,
                  "pixel_size_mismatch": policy,
                  "pixel_size_nm": float(self.pixel_size.value) or None}
        known = self._known(lr, model, resample)
        self.metrics = {}
        t0 = time.monotonic()

        def done(value):
            self._remember(lr, model, resample, value["measured"])
            self.consistency = {}
            checks = value["checks"]
            params["tile_config"]["input_range"] = checks["input_range"]
            data = value["data"] if lazy else value["restored"]
            layer = api.add_result_layer(self.viewer, source, model, data, axes, params, lazy=lazy,
                                         replace=True)
            layer.metadata["decrappify"]["checks"] = _jsonable(checks)
            self._set_result(source, layer, model, axes, gt_layer, gt, lazy=lazy)
            self.result.update(checks=checks, resample=resample)
            if value.get("consistency") is not None:
                self.consistency["stack"] = value["consistency"]
                layer.metadata["decrappify"]["lr_consistency"] = _summary(value["consistency"])
            scores = value.get("scores")
            if scores is not None:
                self.metrics["stack"] = scores
                layer.metadata["decrappify"]["metrics"] = {
                    "ground_truth": gt_layer.name,
                    **{k: _summary(v) for k, v in scores.items()}}
            self._plane_changed()
            self._show_checks(checks)
            if lazy:
                text = (f"added lazy layer {layer.name!r}: the tiles on screen are restored in "
                        "the background (the input upsampled until then)")
            else:
                text = f"restored {source.name!r} in {time.monotonic() - t0:.1f} s"
            if resample is not None:
                text += ("; resampled to the model's pixel size and the result back "
                         f"({_factor_text(resample['factor'])})")
            warned = [m for m in _check_messages(checks) if m.startswith("⚠")]
            if warned:
                text += f" — ⚠ {len(warned)} warning{'s' if len(warned) > 1 else ''} below"
            self._set_status(text)
            if lazy and gt is not None:
                self.score("plane")

        what = "Preparing" if lazy else "Restoring"
        return self._start(_restore_job, model, image, config, policy, resample, known, lazy, gt,
                           description=f"{what} {source.name}", on_result=done)

    def _set_result(self, source, layer, model, axes, gt_layer, gt, lazy) -> None:
        self.result = {"source": source, "layer": layer, "model": model, "axes": axes,
                       "gt_layer": gt_layer, "gt": gt, "lazy": lazy}
        self._show_metrics()
