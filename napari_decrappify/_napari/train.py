"""Train dock: fit a restoration model on high-resolution layers, with a live loss plot.

The dock collects parameters into a :class:`~napari_decrappify.config.TrainConfig` and calls
:func:`napari_decrappify.train.train` in a thread worker. Training events drive the progress
bar and a plot of the training loss (per iteration) and the validation PSNR (per epoch).
Cancelling stops between batches; the best validation weights are kept and saved. A saved
model is announced to the Restore dock, whose model list then shows it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
)

from ..config import Downsample, Encoder, choices
from . import _ui
from ._job_dock import JobDock
from ._layers import base_data, mode_text
from ._model_picker import ModelPicker
from ._plot import LossPlot
from ._ui import STOP_TEXT, DockBody, devices, layer_choices, note
from ._workers import CoreJob, model_events

SCALE_CHOICES = [("denoise (1x)", 1), ("2x", 2), ("4x", 4), ("8x", 8)]
ENCODERS = choices(Encoder)
LOSSES = [("L1", "l1"), ("MSE (the loss PSNR measures)", "mse"), ("MS-SSIM + L1", "msssim_l1")]
ACTIVATIONS = [("leaky ReLU", "leaky_relu"), ("ReLU (models before leaky)", "relu")]
MIN_FORM_HEIGHT = 240  # px of the scrolled form always shown: about six rows


def default_model_dir() -> Path:
    """Where new models go: the first user model folder (``DECRAPPIFY_MODELS`` or the user
    data dir), never the bundled ``zoo``."""
    from ..models import ZOO_DIR, model_search_dirs

    return next(d for d in model_search_dirs() if d != ZOO_DIR)


class TrainWidget(JobDock, DockBody):
    """Train: fit a restoration model on high-resolution layers.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    CANCEL_TEXT = ("cancelling: stopping after this batch (validation included), keeping the "
                   "best weights ...")
    FAILED_STATUS = "⚠ training failed: {exc}"
    FAILED_NOTICE = "Training failed: {exc}"

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.job: CoreJob | None = None
        self.result = None  # TrainResult of the last run
        v = napari_viewer
        # the dock's defaults are the core's: the same recipe as `decrappify train` with no options
        from ..config import ArchConfig, TrainConfig

        train_defaults = TrainConfig.model_fields
        arch_defaults = ArchConfig.model_fields

        self.hr_layers = Select(label="HR layers", choices=layer_choices(v), allow_multiple=True)
        self.hr_layers.native.setMaximumHeight(90)
        self.scale = ComboBox(label="scale", choices=SCALE_CHOICES, value=4)
        self.encoder = ComboBox(label="architecture", choices=ENCODERS, value="resnet18s",
                                tooltip="U-Net encoder: 'tiny' for quick tests, resnet18s a good "
                                        "CPU default, resnet34 for GPU training")
        self.loss = ComboBox(label="loss", choices=LOSSES, value=train_defaults["loss"].default)
        self.start_from = ModelPicker(
            "restoration", text=_start_text, none="new network", label="start from", value=None,
            tooltip="a new network, or fine-tune a trained restoration model on these layers "
                    "(its architecture and scale are kept; a 1-frame model can be widened to "
                    "3 or 5 frames)")
        self.budget_unit, self.budget = _ui.budget_widgets(minutes=10.0)
        self.main = Container(widgets=[self.hr_layers, self.scale, self.encoder, self.loss,
                                       self.start_from, self.budget_unit, self.budget])

        # the degradation applied on the fly to HR patches (preview it in the Crappify dock)
        self.photons = FloatSpinBox(label="photons at max", value=255.0, min=0.0, max=1e6, step=10,
                                    tooltip="expected photon count at full intensity (shot noise); "
                                            "0: no shot noise")
        self.read_noise = FloatSpinBox(label="read noise", value=0.01, min=0.0, max=1.0, step=0.005)
        self.blur = FloatSpinBox(label="blur sigma (px)", value=0.0, min=0.0, max=10.0, step=0.1)
        self.downsample = ComboBox(label="downsampling", choices=choices(Downsample),
                                   value="mean")
        self.crappifier = Container(widgets=[self.photons, self.read_noise, self.blur,
                                             self.downsample])

        self.pair_lr = ComboBox(label="real LR layer", choices=layer_choices(v, optional=True))
        self.pair_hr = ComboBox(label="real HR layer", choices=layer_choices(v, optional=True))
        self.pairs = Container(widgets=[note("Optional registered LR/HR pair, mixed into "
                                             "training (a fifth of the samples)."),
                                        self.pair_lr, self.pair_hr])

        self.patch_size = SpinBox(label="patch size (LR px)",
                                  value=train_defaults["patch_size"].default, min=16, max=1024,
                                  step=16)
        self.batch_size = SpinBox(label="batch size", value=train_defaults["batch_size"].default,
                                  min=1, max=512)
        self.iterations = SpinBox(label="iterations / epoch",
                                  value=train_defaults["iterations_per_epoch"].default, min=1,
                                  max=1_000_000)
        self.lr_max = FloatSpinBox(label="max learning rate", value=train_defaults["lr_max"].default,
                                   min=1e-6, max=1.0, step=1e-4)
        self.activation = ComboBox(
            label="decoder activation", choices=ACTIVATIONS,
            value=arch_defaults["activation"].default,
            tooltip="leaky ReLU keeps the decoder alive (a ReLU decoder trained with L1 can go "
                    "all-zero and shrink the field of view to ~14 px); ReLU only to reproduce "
                    "an old recipe")
        self.frames = ComboBox(label="frames (multi-frame)", choices=[1, 3, 5], value=1)
        self.device = ComboBox(label="device", choices=devices(), value="auto")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.advanced = Container(widgets=[self.patch_size, self.batch_size, self.iterations,
                                           self.lr_max, self.activation, self.frames,
                                           self.device, self.seed])

        self.model_name = LineEdit(label="model name", value="my-model")
        self.folder = FileEdit(label="save in", mode="d", value=default_model_dir())
        self.overwrite = CheckBox(label="replace an existing model", value=False)
        self.output = Container(widgets=[self.model_name, self.folder, self.overwrite])

        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel (keep best weights)", enabled=False)
        self.status = note()
        self.buttons = Container(widgets=[self.train_button], labels=False)

        self.plot = LossPlot(v)

        self.add(self.main)
        self.add(self.crappifier, "Crappifier (simulated low-res data)")
        self.add(self.pairs, "Real LR/HR pair")
        self.add(self.advanced, "Advanced")
        self.add(self.output)
        self.add(self.buttons)
        self._layout.addWidget(self.plot.canvas)
        self.finish()
        # progress: iteration, loss, ETA. With three docks stacked napari squeezed this one to
        # a single visible row: the form's first rows stay visible, the rest scrolls
        self._progress_below(MIN_FORM_HEIGHT)

        self.train_button.changed.connect(self.start)
        # Qt's signal: magicgui's `changed` is not emitted when the value goes back to None
        self.start_from.native.currentIndexChanged.connect(
            lambda *_: self._start_from_changed(self.start_from.value))
        self.follow_layers(v)
        model_events.saved.connect(self._model_saved)

    # ------------------------------------------------------------------ choices
    def _start_from_changed(self, path) -> None:
        """Fine-tuning keeps the model's network: show its scale and encoder, lock them."""
        from ..models import read_model_config

        fine_tune = path is not None
        if fine_tune:
            arch = read_model_config(Path(path)).arch
            self.scale.value = arch.scale
            if arch.encoder in ENCODERS:
                self.encoder.value = arch.encoder
            self.activation.value = arch.activation
            self.frames.value = arch.frames
        for widget in (self.scale, self.encoder, self.activation):
            widget.enabled = not fine_tune
        # the fine-tune schedule (lower peak, short warm-up) unless the rate was set by hand
        from ..config import FINE_TUNE_LOSS, FINE_TUNE_LR_MAX, TrainConfig

        for widget, field, tuned in ((self.lr_max, "lr_max", FINE_TUNE_LR_MAX),
                                     (self.loss, "loss", FINE_TUNE_LOSS)):
            scratch = TrainConfig.model_fields[field].default
            if fine_tune and widget.value == scratch:
                widget.value = tuned
            elif not fine_tune and widget.value == tuned:
                widget.value = scratch

    def _model_saved(self, _path: str) -> None:
        try:
            self.start_from.reset_choices()
        except RuntimeError:  # the dock's Qt widgets were already deleted
            model_events.saved.disconnect(self._model_saved)

    # ------------------------------------------------------------------ parameters
    def config(self):
        """The :class:`TrainConfig` described by the dock (raises ValueError on bad input)."""
        from ..config import ArchConfig, CrappifyConfig, TrainConfig

        scale = int(self.scale.value)
        minutes, epochs = _ui.budget(self.budget_unit, self.budget)
        return TrainConfig(
            scale=scale,
            arch=ArchConfig(encoder=self.encoder.value, scale=scale, frames=int(self.frames.value),
                            activation=self.activation.value),
            crappify=CrappifyConfig(
                scale=scale, downsample=self.downsample.value, blur_sigma=float(self.blur.value),
                photons=float(self.photons.value) or None, read_noise=float(self.read_noise.value)),
            loss=self.loss.value, patch_size=int(self.patch_size.value),
            batch_size=int(self.batch_size.value), iterations_per_epoch=int(self.iterations.value),
            epochs=epochs, minutes=minutes, lr_max=float(self.lr_max.value),
            device=self.device.value, seed=int(self.seed.value),
        )  # a fine-tune's short warm-up: train() applies TrainConfig.for_fine_tune

    def out_path(self) -> Path:
        """Where the model is saved (:func:`._ui.model_folder`)."""
        return _ui.model_folder(self.folder.value, self.model_name.value)

    # ------------------------------------------------------------------ actions
    def start(self, *_args) -> CoreJob | None:
        """Start training in a worker; returns the job (``None`` when the input is invalid)."""
        if self.running:
            return self.job
        try:
            layers = list(self.hr_layers.value or [])
            if not layers:
                raise ValueError("choose at least one HR layer to train on")
            for layer in layers:
                if getattr(layer, "rgb", False):
                    raise ValueError(f"layer {layer.name!r} is RGB: split its channels first")
            config = self.config()
            out = _ui.model_folder(self.folder.value, self.model_name.value,
                                   replace=bool(self.overwrite.value))
            pairs = None
            if (self.pair_lr.value is None) != (self.pair_hr.value is None):
                raise ValueError("a real pair needs both an LR and an HR layer")
            if self.pair_lr.value is not None:
                pairs = (base_data(self.pair_lr.value), base_data(self.pair_hr.value))
            hr = [base_data(layer) for layer in layers]  # read in the worker, not the UI thread
            pixel_size = _pixel_size(layers)
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return None

        self.plot.clear()
        self.result = None
        name = out.name
        what = f"{config.arch.encoder}, {config.scale}x"
        if self.start_from.value is not None:
            what = f"fine-tuning {Path(self.start_from.value).name}, {config.scale}x"
        self._set_status(f"training {name} ({what}) ...")
        return self._start_job(
            _train_job, hr, config, out=out, name=name, pairs=pairs,
            start_from=self.start_from.value, pixel_size_nm=pixel_size,
            command=f"napari Train dock: {', '.join(layer.name for layer in layers)}",
            description=f"Training {name}", on_event=self.plot.add, on_result=self._done)

    def _job_buttons(self) -> tuple:
        return (self.train_button,)

    # ------------------------------------------------------------------ worker slots
    def _done(self, result) -> None:
        self.result = result
        cfg = result.model.config
        psnr = cfg.metrics.get("valid_psnr")
        what = STOP_TEXT.get(result.stop_reason, result.stop_reason)
        text = f"{what}; {result.iterations} iterations in {result.seconds:.0f} s"
        if psnr is not None:
            text += f"; validation PSNR {psnr:.2f} dB"
        if result.path is not None:
            text += f"\nsaved {result.path}"
            model_events.saved.emit(str(result.path))
        self._set_status(text)


def _pixel_size(layers) -> tuple[float, float] | None:
    """The HR layers' (Y, X) pixel size in nm from their scale and units (recorded in the
    model); None when they have none, or differ."""
    from ..pixel_size import image_pixel_size_nm
    from ._layers import layer_geometry

    sizes = set()
    for layer in layers:
        scale, _, units = layer_geometry(layer)
        axes = "YX" if layer.ndim == 2 else "Z" * (layer.ndim - 2) + "YX"
        sizes.add(image_pixel_size_nm(scale, units, axes))
    return sizes.pop() if len(sizes) == 1 else None


def _start_text(m: dict) -> str:
    """How a restoration model to fine-tune reads in "start from" (after "new network")."""
    return f"fine-tune {m['name']}  ({mode_text(m['scale'])}, {m['encoder']})"


def _train_job(hr, config, *, pairs=None, start_from=None, **kwargs):
    """Worker: read the layers' data (lazy layers are computed here, off the UI thread), load
    the model to fine-tune, train."""
    from .. import train as train_mod
    from ..models import load_model

    if start_from is not None:
        kwargs["init_from"] = load_model(start_from)
    hr = [np.asarray(h) for h in hr]
    if pairs is not None:
        pairs = (np.asarray(pairs[0]), np.asarray(pairs[1]))
    result = train_mod.train(hr, config, pairs=pairs, **kwargs)
    if result.path is not None:  # loaded back here, so the Restore dock finds it loaded
        from .api import resolve_model

        resolve_model(result.path)
    return result
