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
"""

from __future__ import annotations

import html
import math
import time
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ..pixel_size import POLICIES
from . import _compare, _live_lazy, api
from ._job_dock import JobDock, model_first
from ._layers import (
    BLENDING,
    base_data,
    current_plane,
    layer_axes,
    layer_geometry,
    lr_looking,
    mode_text,
)
from ._model_picker import ModelPicker
from ._progress import InlineProgress
from ._ui import DefaultChoice, DockBody, devices, layer_choices, note
from ._workers import CoreJob, LoadsModelFirst, compute_array, model_events

CURRENT_VIEW = "current view"
INSPECT_PANELS = ("LR", "bicubic", "restored", "HR")
QUICK_HALO = 32  # context of a "quick" region inspection, input pixels
LAZY_PIXELS = 64_000_000  # results larger than this (output pixels) default to lazy mode
WARN_COLOR = "#f0a030"  # ⚠ lines in the dock
LIVE_POLL_MS = 250  # how often the lazy view's progress is read
# the folder of the last bioimage.io export in this session: the file dialog starts there
_EXPORT_FOLDER: list[Path] = []


def _model_text(m: dict) -> str:
    """How a restoration model reads in the dock's model list."""
    where = "bundled" if m["bundled"] else "user"
    return f"{m['name']}  ({mode_text(m['scale'])}, {m['encoder']}, {where})"


def _fmt(scores: dict | None) -> str:
    if not scores:
        return "—"
    return f"{scores['psnr']:.2f} dB / {scores['ssim']:.4f}"


def _fmt_consistency(scores: dict | None) -> str:
    if not scores or scores.get("psnr") is None:
        return "— (blank)"
    return f"{scores['psnr']:.2f} dB / {scores['ssim']:.3f}"


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


class RestoreWidget(LoadsModelFirst, JobDock, DockBody):
    """Restore: denoise and upsample an image layer with a model.

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

        # -- lazy result -> OME-Zarr
        self.render_path = FileEdit(label="OME-Zarr", mode="w", filter="*.zarr")
        self.render_overwrite = CheckBox(label="replace an existing store", value=False)
        self.render_button = PushButton(text="Render all to OME-Zarr")
        self.render = Container(widgets=[
            note("Writes every tile (resumable: an interrupted write continues where it "
                 "stopped), then the layer reads from the store."),
            self.render_path, self.render_overwrite, self.render_button])

        # -- ground truth and metrics
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

        # -- inspect
        self.region = ComboBox(label="region", choices=self._region_choices)
        self.inspect_quick = CheckBox(
            label=f"quick: {QUICK_HALO} px of context", value=False,
            tooltip="restore the region with a small halo instead of the model's receptive field: "
                    "much faster for big models, but pixels near the region's edges may differ "
                    "from a full restore")
        self.inspect_button = PushButton(text="Inspect region")
        self.inspect_label = note("Draw a rectangle in a Shapes layer, or use the view.")
        self.inspect_box = Container(widgets=[self.region, self.inspect_quick, self.inspect_button,
                                              self.inspect_label])

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
        self.render_button.changed.connect(self.render_to_zarr)
        self.score_plane_button.changed.connect(lambda *_: self.score("plane"))
        self.score_stack_button.changed.connect(lambda *_: self.score("stack"))
        self.error_button.changed.connect(self.add_error_map)
        self.grid_button.changed.connect(self.toggle_grid)
        self.inspect_button.changed.connect(self.inspect)
        self.consistency_button.changed.connect(self.check_consistency)
        self.consistency_map_button.changed.connect(self.add_consistency_map)
        for w in (self.image, self.model, self.axes, self.pixel_size, self.pixel_policy):
            w.changed.connect(self._update_pixel_note)
        self.follow_layers(v)
        v.dims.events.current_step.connect(self._plane_changed)
        model_events.saved.connect(self._model_saved)
        self._default_input()
        self._image_changed()
        self._model_changed()
        self._update_pixel_note()
        # a lazy result's tiles on screen are restored in the background: their progress is
        # polled (cheap counters) while no job runs
        from qtpy.QtCore import QTimer

        self._live_timer = QTimer(self)
        self._live_timer.setInterval(LIVE_POLL_MS)
        self._live_timer.timeout.connect(self._poll_live)
        self._live_timer.start()
        self._live_shown = ""
        self._contrast_pending: dict = {}  # map layers whose contrast waits for their data

    # ------------------------------------------------------------------ choices
    def model_entries(self) -> list[dict]:
        """Restoration models offered: bundled, user (``DECRAPPIFY_MODELS``, user data dir) and
        folders chosen by hand (:meth:`ModelPicker.entries`)."""
        return self.model.entries()

    def _region_choices(self, _widget=None):
        from napari.layers import Shapes

        return [(CURRENT_VIEW, None)] + [(f"shapes: {s.name}", s) for s in self.viewer.layers
                                         if isinstance(s, Shapes)]

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

    # ------------------------------------------------------------------ export
    def export_model(self, path=None, *, overwrite: bool = False) -> CoreJob | None:
        """Export the chosen model to a bioimage.io package (:func:`napari_decrappify.bioimageio
        .export_bioimageio`) in a worker, with the dock's progress and Cancel.

        Parameters
        ----------
        path : str or os.PathLike, optional
            The package to write (``.zip`` is added when missing). None: a file dialog asks
            (it asks before replacing a file, so its answer overwrites).
        overwrite : bool
            Replace ``path`` if it exists (else the export stops with a one-line error).

        Returns
        -------
        CoreJob or None
            The export job, or None when nothing was started (busy, no model, dialog closed).
            The dock's status line then says where the package is, or why it failed.
        """
        if self._busy():
            return None
        model = self.model.value
        if model is None:
            self._set_status("⚠ choose a model to export")
            return None
        name = Path(model).name.removesuffix(".zip")
        if path is None:
            path = self._ask_export_path(name)
            if not path:
                return None
            overwrite = True  # the dialog asked before replacing a file
        out = Path(path).expanduser()
        if out.suffix.lower() != ".zip":
            out = out.with_name(out.name + ".zip")
        _EXPORT_FOLDER[:] = [out.parent]
        authors = [a.strip() for a in str(self.export_authors.value).split(",") if a.strip()]
        source = self._export_source()
        told: dict = {}  # the worker says there what the test image is
        self._set_status(f"exporting {name} to {out} …")
        return self._start(
            _export_job, model, out, overwrite=overwrite, authors=authors, source=source,
            told=told, description=f"Exporting {name} to bioimage.io",
            on_result=lambda path: self._exported(path, told),
            on_error=self._export_failed, cancelled_text="cancelled, nothing was written",
            # Cancel answers now; the worker stops the export's process and removes its files
            abandon_on_cancel=True)

    def _export_source(self) -> _ExportSource | None:
        """What the package's test image is cut from: the input layer's plane on screen (its
        neighbours too, for a multi-frame model), read in the worker; None (a held-out CREMI
        plane) when the input is not a single-channel image."""
        layer = self.image.value
        if layer is None or getattr(layer, "rgb", False):
            return None
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        if data.ndim < 2 or data.ndim > 3:  # (a time series / channels: which plane is unclear)
            return None
        z = None
        if data.ndim == 3:
            step = self.viewer.dims.current_step
            z = int(step[-3]) if len(step) >= 3 else data.shape[0] // 2
            z = min(max(z, 0), data.shape[0] - 1)
        return _ExportSource(layer.name, data, z)

    def _ask_export_path(self, name: str) -> str:
        from qtpy.QtWidgets import QFileDialog

        start = (_EXPORT_FOLDER[0] if _EXPORT_FOLDER else Path.home()) / f"{name}.zip"
        path, _ = QFileDialog.getSaveFileName(self, "Export to bioimage.io", str(start),
                                              "bioimage.io package (*.zip)")
        return path

    def _exported(self, path, told: dict | None = None) -> None:
        test_image = (told or {}).get("test_image")
        self._set_status(f"exported to {path} (a bioimage.io package for other tools; "
                         "decrappify restore reads it as a model too)"
                         + (f"; test image: {test_image}" if test_image else ""))

    def _export_failed(self, exc: BaseException) -> None:
        """One line: bioimageio.spec's validation errors run over many."""
        from napari.utils.notifications import show_error

        line = next((t.strip() for t in str(exc).splitlines() if t.strip()), type(exc).__name__)
        if len(line) > 300:
            line = line[:297] + "…"
        self._set_status(f"⚠ export failed: {line}")
        show_error(f"Decrappify: export failed: {line}")

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

    # ------------------------------------------------------------------ pixel size, measured
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

    def _live(self):
        """The lazy result's :class:`_live_lazy.LiveArray`, if the result shown is one."""
        r = self.result
        if r is None or r["layer"] not in self.viewer.layers:
            return None
        return _live_lazy.live_of(r["layer"])

    def _poll_live(self) -> None:
        """Progress of the lazy result's tiles on screen, while no job runs; map layers'
        contrast from their data (:meth:`_contrast_maps`)."""
        if self._contrast_pending:
            self._contrast_maps()
        if self.running:
            return
        live = self._live()
        text = _live_lazy.status_text(live) if live is not None else ""
        busy = live is not None and not live.idle
        if busy:
            done, total = live.visible_progress()
            self._progress_line.show(text, done, total)
            self.cancel_button.enabled = True
        elif self._live_shown:
            self._progress_line.hide()
            self.cancel_button.enabled = False
        self._live_shown = text if busy else ""

    def cancel(self, *_args) -> None:
        """Stop the running job, else the lazy result's tiles on screen. Answers at once: the
        job stops at its next check (the tile being computed finishes in the background and
        is dropped; a lazy view's is kept)."""
        if self._cancel_job():  # its progress line is hidden at once
            self.cancel_button.enabled = False
            return
        live = self._live()
        if live is not None and not live.idle:
            live.cancel()
            self._progress_line.hide()
            self.cancel_button.enabled = False
            self._live_shown = ""
            self._set_status("stopped restoring the tiles on screen (the placeholder stays); "
                             "another plane or a pan goes on")

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

    def _set_result(self, source, layer, model, axes, gt_layer, gt, lazy) -> None:
        self.result = {"source": source, "layer": layer, "model": model, "axes": axes,
                       "gt_layer": gt_layer, "gt": gt, "lazy": lazy}
        self._show_metrics()

    # ------------------------------------------------------------------ metrics
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

    # ------------------------------------------------------------------ render
    def render_to_zarr(self, *_args):
        """Write the (lazy) result to an OME-Zarr store, then show the layer from the store."""
        from .. import io

        if self._busy() or not self._result_ready(need_gt=False):
            return None
        path = Path(self.render_path.value).expanduser()
        if str(self.render_path.value) in ("", ".") or path.is_file():
            self._set_status("⚠ choose where to write the OME-Zarr store (a new *.zarr folder)")
            return None
        if not path.name.endswith(".zarr"):
            path = path.with_name(path.name + ".ome.zarr")
        r = self.result
        layer = r["layer"]
        scale, translate, units = layer_geometry(layer)

        def done(_value):
            opened = io.open_image(path)
            if layer.multiscale:
                layer.data = [opened.data, *list(layer.data)[1:]]
            else:
                layer.data = opened.data
            layer.metadata["decrappify"]["store"] = str(path)
            layer.metadata["decrappify"]["lazy"] = False
            self._set_status(f"rendered to {path}; the layer now reads from it")

        return self._start(io.write_ome_zarr, path, _exact(layer), axes=r["axes"], scale=scale,
                           translate=translate, units=units, name=layer.name,
                           overwrite=bool(self.render_overwrite.value),
                           metadata=_jsonable(layer.metadata.get("decrappify", {})),
                           description=f"Writing {path.name}", on_result=done,
                           cancelled_text="cancelled; the layer is unchanged, and rendering to the "
                                          "same store again resumes where it stopped")

    # ------------------------------------------------------------------ inspect
    @model_first
    def inspect(self, *_args):
        """Restore only a region (Shapes rectangle or current view) of the current plane and
        show LR / bicubic / restored / HR crops side by side, with scores (a worker job)."""
        try:
            source, model, axes, config, gt_layer = self._inputs()
            lr = base_data(source)
            yx = tuple(lr.shape[-2:])
            shapes = self.region.value
            if self.viewer.dims.ndisplay != 2:
                raise ValueError("region inspection works in the 2-D view: switch off 3-D display")
            corners = (_compare.view_corners_world(self.viewer) if shapes is None
                       else _compare.shape_corners_world(shapes, self.viewer))
            box = _compare.bbox_from_world(corners, source, yx)
            index = current_plane(self.viewer, source, axes)
            resample = self._resample_plan(self._pixel_check(source, model, axes), yx)
            halo = config.halo if config.halo is not None else (
                model.receptive_field if config.exact else model.default_halo)
            if self.inspect_quick.value:
                halo = min(halo, QUICK_HALO)
                config = config.model_copy(update={"halo": halo})
            context = halo  # input pixels around the region
            if resample is not None:  # the halo is on the model's grid; a few more for resizing
                context = math.ceil(halo / min(resample["factor"])) + 4
            hbox = _compare.halo_box(box, context, yx, math.lcm(32, int(model.alignment or 32)))
            gt = None
            if gt_layer is not None:  # a shape check: the crop is read in the worker
                out_shape = tuple(lr.shape[:-2]) + (yx[0] * model.scale, yx[1] * model.scale)
                gt = _compare.ground_truth(base_data(gt_layer), lr, out_shape, model.scale,
                                           name=f"ground truth {gt_layer.name!r}")
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return None

        quick = bool(self.inspect_quick.value)

        def done(value):
            self._remember(lr, model, resample, value.pop("measured"))
            value["plane"], value["quick"], value["resampled"] = index, quick, resample is not None
            self.inspection = value
            self._show_inspection(source, model, box, value, gt_layer)

        # the whole layer's intensity range (measured in the job if not known yet): the region
        # is normalised exactly as in the full result
        return self._start(_inspect_job, model, lr, axes, index, config, box, hbox, gt, resample,
                           self._known(lr, model, resample), description="Inspecting region",
                           on_result=done)

    def _show_inspection(self, source, model, box, value, gt_layer=None) -> None:
        s = model.scale
        scale, translate, units = layer_geometry(source)
        sy, sx = scale[-2:]
        ty, tx = translate[-2:]
        uy, ux = units[-2:]
        y0, y1, x0, x1 = box
        nx = base_data(source).shape[-1]
        width = (x1 - x0) * sx
        gap = 0.05 * width + sx
        left = tx + (nx - 0.5) * sx + gap  # right of the image's last pixel edge
        panels = {"LR": value["lr"], "bicubic": value["bicubic"], "restored": value["restored"],
                  "HR": value["hr"]}
        for i, (key, data) in enumerate(panels.items()):
            name = f"inspect: {key}"
            if data is None:
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
                continue
            lr_scale = (sy, sx)
            lr_translate = (ty + y0 * sy, left + i * (width + gap) + 0.5 * sx)
            if key == "LR":
                geo = (lr_scale, lr_translate)
            else:
                from .. import io

                geo = io.upscale_geometry(lr_scale, lr_translate, "YX", s)
            kwargs = {"scale": geo[0], "translate": geo[1], "units": (uy, ux)}
            # the HR crop is in the ground truth's intensities, the others in the input's
            look = gt_layer if key == "HR" and gt_layer is not None else source
            cl = tuple(float(c) for c in look.contrast_limits)
            cl_range = tuple(float(c) for c in look.contrast_limits_range)
            if name in self.viewer.layers:  # inspected before, maybe another source: update all
                layer = self.viewer.layers[name]
                layer.data = data
                layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
                layer.units = kwargs["units"]
                layer.colormap = look.colormap
                layer.contrast_limits_range = (min(cl_range[0], cl[0]), max(cl_range[1], cl[1]))
                layer.contrast_limits = cl
            else:
                layer = self.viewer.add_image(data, name=name, contrast_limits=cl,
                                              colormap=look.colormap, blending=BLENDING,
                                              **kwargs)
            layer.metadata["decrappify"] = {"inspect": key, "box": box, "plane": value["plane"],
                                            "scores": value["scores"].get(key)}
        sc = value["scores"]
        lines = [f"region y {y0}:{y1}, x {x0}:{x1} (plane {', '.join(map(str, value['plane'])) or '–'})"
                 f", restored in {value['seconds']:.2f} s"
                 + (" (quick: edges approximate)" if value.get("quick") else "")
                 + (" (resampled to the model's pixel size and back: approximate)"
                    if value.get("resampled") else "")]
        if value["hr"] is not None:
            lines.append(f"bicubic: {_fmt(sc.get('bicubic'))}")
            lines.append(f"restored: {_fmt(sc.get('restored'))}")
        else:
            lines.append("(no ground truth: choose an HR layer for scores)")
        self.inspect_label.value = "<br>".join(lines)


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


def _jsonable(meta: dict) -> dict:
    """Provenance for the store's attributes: the JSON-serialisable part of layer metadata."""
    import json

    return json.loads(json.dumps(meta, default=lambda _o: None))


def _check_cancel(cancel) -> None:
    if cancel is not None and cancel.is_set():
        from .. import tiling

        raise tiling.RestoreCancelled("cancelled while scoring")


# the export runs in a process of its own: importing bioimageio.spec the first time froze
# napari's UI thread 0.6-0.7 s from a worker thread (pydantic builds its schemas holding the
# GIL), and a process can be stopped mid-way, which a thread running the export cannot
_EXPORT_CHILD = """
import os, signal, sys
if hasattr(os, "nice"):
    os.nice(10)  # the UI's process keeps the cores it needs on a busy machine
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # Cancel: unwind, temporary files go
from napari_decrappify.bioimageio import export_bioimageio
image = None
if len(sys.argv) > 3 and sys.argv[3]:
    import numpy as np
    image = np.load(sys.argv[3], allow_pickle=False)
authors = sys.argv[4:] or None
try:
    export_bioimageio(sys.argv[1], sys.argv[2], overwrite=True, authors=authors,
                      test_image=image)
except Exception as e:
    line = next((t.strip() for t in str(e).splitlines() if t.strip()), type(e).__name__)
    print("decrappify-export-error: " + line, file=sys.stderr)
    sys.exit(1)
"""


def _export_package(model, part: Path, cancel=None, *, test_image: Path | None = None,
                    authors=()) -> None:
    """Write the package ``part`` from ``model`` (a path) in a child process; RestoreCancelled
    when ``cancel`` is set (the child is stopped), a one-line RuntimeError when it fails.
    ``test_image``: a ``.npy`` file whose centre crop becomes the test input (None: CREMI);
    ``authors``: the package's authors (none: the login name)."""
    import subprocess
    import sys
    import threading

    from ..tiling import RestoreCancelled

    argv = [str(model), str(part), str(test_image) if test_image is not None else "",
            *authors]
    proc = subprocess.Popen([sys.executable, "-c", _EXPORT_CHILD, *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err: list[str] = []  # read while it runs: a full pipe would block the child
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            if cancel is not None and cancel.wait(0.1):
                raise RestoreCancelled("export cancelled: nothing written")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _remove_export_leftovers(part)
    reader.join(5)
    if proc.returncode != 0:
        lines = [t.strip() for t in err if t.strip()]
        mine = [t.split(": ", 1)[1] for t in lines if t.startswith("decrappify-export-error: ")]
        raise RuntimeError(mine[-1] if mine else (lines[-1] if lines else
                                                  f"the export stopped (exit {proc.returncode})"))


def _remove_export_leftovers(part: Path) -> None:
    """The export's temporary folder beside ``part`` (``export_bioimageio`` makes it there),
    when its process was killed before removing it."""
    import shutil

    for tmp in part.parent.glob(f".{part.name}.*"):
        shutil.rmtree(tmp, ignore_errors=True)


class _ExportSource(NamedTuple):
    """The input layer a package's test image is cut from (read in the worker)."""

    name: str
    data: object  # the layer's (level-0) array: numpy, dask, zarr ...
    z: int | None  # the plane on screen of a stack; None for a plane


def _export_test_image(model, source: _ExportSource | None, folder: Path, name: str):
    """Cut the package's test image from ``source`` (its centre, the smallest size the
    package's halo allows, and the model's frames around the plane on screen) into a ``.npy``
    in ``folder``; (path, what it is), or (None, why CREMI is used instead)."""
    from ..bioimageio import _given_test_input, min_input_size
    from ..engine.registry import load_cached

    cremi = "a held-out CREMI plane"
    if source is None:
        return None, f"{cremi} (the input is not a single-channel plane or stack)"
    m = load_cached(model, release_stale=False)  # (as the dock's own loads: api.resolve_model)
    if m.kind != "restoration":  # (export_bioimageio refuses it with its own message)
        return None, cremi
    size = min_input_size(m)
    shape = source.data.shape
    h, w = shape[-2:]
    if min(h, w) < size:
        return None, (f"{cremi} (the input layer {source.name!r} is {h} x {w} px; the package "
                      f"needs at least {size} x {size})")
    half = m.frames // 2
    if source.z is None:
        if m.frames > 1:
            return None, f"{cremi} (the model takes {m.frames} planes; the input is one plane)"
        lead, where = (), "its plane"
    else:
        z0 = min(max(source.z - half, 0), shape[0] - m.frames)
        if z0 < 0:
            return None, f"{cremi} (the model takes {m.frames} planes; the input has {shape[0]})"
        lead, where = (slice(z0, z0 + m.frames),), f"plane {source.z}"
    y0, x0 = (h - size) // 2, (w - size) // 2
    # only the crop is read (the layer may be lazy and larger than memory); the export's own
    # check of a given test image then decides whether it will do (NaN, frames ...)
    crop = np.asarray(source.data[(*lead, slice(y0, y0 + size), slice(x0, x0 + size))])
    try:
        checked, _ = _given_test_input(m, size, crop)  # (1, frames, size, size) float32
    except ValueError as e:
        return None, f"{cremi} (the input layer {source.name!r}: {e})"
    path = folder / f"{name}.test-image.npy"
    np.save(path, checked[0, 0] if source.z is None else checked[0], allow_pickle=False)
    return path, f"{source.name!r}, {where}, centre {size} x {size} px"


def _export_job(model, out: Path, *, overwrite: bool = False, authors=(), source=None,
                told: dict | None = None, progress=None, cancel=None) -> Path:
    """Worker side of "Export to bioimage.io…": the package is written under a hidden name
    beside ``out`` (:func:`_export_package`, in a child process) and moved into place at the
    end, so that a Cancel leaves nothing behind, and a package being replaced stays whole
    until the new one is complete. The test image is cut from ``source`` (the input layer)
    where it can be (:func:`_export_test_image`); ``told["test_image"]`` says what it is
    (read by the dock once the job has finished)."""
    import os
    import threading

    from ..tiling import RestoreCancelled

    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: choose another name (the file dialog asks before "
                              "replacing one)")
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder: give the package a file name ending in .zip")
    if progress is not None:
        progress({"event": "tracing the network, test tensors, packaging"})
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = f".{out.stem}.{os.getpid()}-{threading.get_ident()}"
    part = out.with_name(f"{stem}.part.zip")
    image, what = _export_test_image(model, source, out.parent, stem)
    if told is not None:
        told["test_image"] = what
    extra = {}
    if image is not None:
        extra["test_image"] = image
    if authors:
        extra["authors"] = tuple(authors)
    try:
        _export_package(model, part, cancel, **extra)
        if cancel is not None and cancel.is_set():
            raise RestoreCancelled("export cancelled: nothing written")
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
        if image is not None:
            image.unlink(missing_ok=True)
    return out


def _login_name() -> str:
    """The default author of an export: the login name (export_bioimageio's own default)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # (no login name: a container without a passwd entry)
        return ""


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
            progress({"event": "measuring the input", "done": 0, "total": 1})
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
    progress({"event": "scoring", "done": 0, "total": n})
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
        progress({"event": "scoring", "done": flat + 1, "total": n})
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
    progress({"event": "scoring", "done": 0, "total": 2})
    r, low = compute_array(restored[index], cancel), np.asarray(lr[index])
    out = {"restored": _compare.score(r, gt, index)}
    progress({"event": "scoring", "done": 1, "total": 2})
    _check_cancel(cancel)
    out["bicubic"] = _compare.score(_compare.bicubic(low, model.scale), gt, index)
    cons = _plane_consistency(model, r, low, lr_range)
    progress({"event": "scoring", "done": 2, "total": 2})
    return {k: _summary(v) for k, v in out.items()}, cons, lr_range


def _prepare_ground_truth(gt, *, progress=None, cancel=None):
    """Worker: read the ground truth and build its intensity maps (:meth:`GroundTruth.prepare`)."""
    return gt.prepare()


def _window(lr, axes: str, index: tuple[int, ...], frames: int, hbox):
    """The input crop for a region of the current plane: ``(crop, crop_axes, pick)``.

    Single-frame models get the 2-D crop. Multi-frame models get the neighbouring planes along
    T (or Z) too, and ``pick`` selects the current plane from the restored window.
    """
    y0, y1, x0, x1 = hbox
    if frames <= 1 or len(axes) == 2:
        return np.asarray(lr[index][y0:y1, x0:x1]), "YX", ()
    frame_ax = axes.index("T") if "T" in axes else axes.index("Z") if "Z" in axes else None
    if frame_ax is None:
        return np.asarray(lr[index][y0:y1, x0:x1]), "YX", ()
    n = lr.shape[frame_ax]
    half = frames // 2
    lo, hi = max(0, index[frame_ax] - half), min(n, index[frame_ax] + half + 1)
    sel = list(index)
    sel[frame_ax] = slice(lo, hi)
    crop = np.asarray(lr[tuple(sel)][..., y0:y1, x0:x1])
    return crop, axes[frame_ax] + "YX", (index[frame_ax] - lo,)


def _restore_crop(model, crop, crop_axes: str, config, resample: dict | None, progress, cancel):
    """Restore a crop; with ``resample``, through the model's grid and back as
    :func:`tiling.restore_image` does (the crop resampled by the same factor)."""
    from .. import tiling

    if resample is None:
        return tiling.restore(model, crop, config, axes=crop_axes, progress=progress, cancel=cancel)
    from ..pixel_size import model_grid_shape, resample_yx

    yx = tuple(crop.shape[-2:])
    grid = model_grid_shape(yx, resample["factor"])
    src = resample_yx(crop, crop_axes, grid, resample["order"]).compute()
    out = tiling.restore(model, src, config, axes=crop_axes, progress=progress, cancel=cancel)
    s = model.scale
    order = 3 if yx[0] >= grid[0] and yx[1] >= grid[1] else 1
    return np.asarray(resample_yx(out, crop_axes, (yx[0] * s, yx[1] * s), order=order).compute())


def _inspect_job(model, lr, axes, index, config, box, hbox, gt, resample=None, known=None, *,
                 progress=None, cancel=None):
    """Worker: the whole input's intensity range unless known (the region is normalised as
    in the full result), then read the haloed crop (and the HR crop), restore it, trim the
    halo, bicubic of the same crop, scores."""
    measured = _measure(model, lr, axes, resample, known or {}, domain=False, progress=progress,
                        cancel=cancel)
    config = config.model_copy(update={"input_range": measured.get("range")})
    crop, crop_axes, pick = _window(lr, axes, index, model.frames, hbox)
    s = model.scale
    y0, y1, x0, x1 = box
    hr_crop = None
    if gt is not None:
        hr_crop = np.asarray(gt.data[index][y0 * s: y1 * s, x0 * s: x1 * s])
    t0 = time.monotonic()
    restored = _restore_crop(model, crop, crop_axes, config, resample, progress, cancel)
    seconds = time.monotonic() - t0
    if pick:
        restored, crop = restored[pick], crop[pick]
    oy, ox = (y0 - hbox[0]), (x0 - hbox[2])
    trim = (slice(oy * s, (oy + y1 - y0) * s), slice(ox * s, (ox + x1 - x0) * s))
    restored = np.asarray(restored)[trim]
    bic = _compare.bicubic(crop, s)[trim]
    lr_crop = crop[oy: oy + y1 - y0, ox: ox + x1 - x0]
    scores: dict = {}
    if hr_crop is not None:
        crop_gt = _compare.GroundTruth(hr_crop, gt.pred_map, gt.gt_map)  # the stack's maps
        for key, pred in (("bicubic", bic), ("restored", restored)):
            scores[key] = _summary(_compare.score(pred, crop_gt))
    return {"lr": lr_crop, "bicubic": bic, "restored": restored, "hr": hr_crop, "scores": scores,
            "seconds": seconds, "measured": measured}
