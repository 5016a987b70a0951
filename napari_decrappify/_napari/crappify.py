"""Crappify: preview a degradation of a high-resolution layer, and save LR/HR training pairs.

A thin dock: it collects the parameters into a :class:`~napari_decrappify.config.CrappifyConfig`,
runs :class:`~napari_decrappify.crappify.Crappifier` on the current plane in a thread worker
(latest request wins, the UI never waits) and shows the result as ``"<name> crappified"``: a
layer with the LR geometry of :func:`napari_decrappify.io.downscale_geometry` (it overlays the HR
layer) placed at the current plane along the other axes. "Save pairs…" writes every plane
with :func:`napari_decrappify.pair_files.write_pairs` in a cancellable :class:`._workers.CoreJob`,
followed like every dock's job (:class:`._job_dock.JobDock`: busy, Cancel, progress line, the
failure on the status line).

Plane ``i`` is seeded with ``crappify.plane_rng(seed, i)`` everywhere, so the preview of a plane
is exactly that plane of the saved LR (and of ``decrappify crappify --seed``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from napari.qt.threading import thread_worker
from qtpy.QtCore import QTimer

from .. import io
from ..config import CrappifyConfig, Downsample, choices
from ..crappify import Crappifier, check_unit_float, from_unit, plane_rng
from ..pair_files import write_pairs  # (not ..data: that imports torch)
from ._job_dock import JobDock
from ._layers import BLENDING
from ._progress import JobProgress

# the folder the user chose for pairs in this session: used again for layers without a file
_CHOSEN_FOLDER: list[Path] = []


def output_folder(layer) -> Path:
    """Where a layer's pairs go by default: next to its file when it has one (pairs beside the
    data they came from), else the folder the user chose last in this session, else the home
    folder; never the working directory napari happened to start in."""
    path = getattr(getattr(layer, "source", None), "path", None) if layer is not None else None
    if path:
        return Path(path).parent
    return _CHOSEN_FOLDER[0] if _CHOSEN_FOLDER else Path.home()


def _unit_names(layer) -> tuple[str, ...]:
    units = getattr(layer, "units", None)
    if units is None:
        return ("pixel",) * layer.ndim
    return tuple(str(u) if u is not None else "pixel" for u in units)


def _layer_axes(layer) -> str:
    """The layer's axes: ``metadata["axes"]`` if valid, else its axis labels, else a guess."""
    if getattr(layer, "rgb", False):
        raise ValueError(f"layer {layer.name!r} is RGB: crappify one channel (split it first)")
    for candidate in ((layer.metadata or {}).get("axes"),
                      "".join(str(a).upper() for a in (getattr(layer, "axis_labels", None) or ()))):
        if isinstance(candidate, str) and candidate:
            try:
                return io.check_axes(candidate, layer.ndim)
            except ValueError:
                pass
    return io.guess_axes(layer.ndim)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "pair"


class CrappifyWidget(JobDock, Container):
    """Crappify dock: parameters, live preview of the current plane, "Save pairs…".

    The previews are not jobs (the latest request wins, nothing to cancel); saving is the
    dock's one :class:`._job_dock.JobDock` job.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    BUSY_TEXT = "already saving"
    CANCEL_TEXT = "cancelling…"
    FAILED_STATUS = "save failed: {exc}"
    FAILED_NOTICE = "Decrappify: saving pairs failed: {exc}"

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.layer = ComboBox(label="HR image", choices=self._image_layers, nullable=True)
        self.scale = SpinBox(label="scale", value=4, min=1, max=8,
                             tooltip="integer downsampling factor (block mean = a larger pixel)")
        self.photons = FloatSpinBox(label="photons", value=255.0, min=0.0, max=1e6, step=1.0,
                                    tooltip="photon count at intensity 1 (Poisson noise); 0 = none")
        self.read_noise = FloatSpinBox(label="read noise", value=0.01, min=0.0, max=1.0, step=0.001,
                                       tooltip="Gaussian read noise std on the [0, 1] scale")
        self.blur = FloatSpinBox(label="blur sigma", value=0.0, min=0.0, max=20.0, step=0.1,
                                 tooltip="Gaussian PSF sigma in HR pixels (before downsampling)")
        self.salt_pepper = FloatSpinBox(label="salt-pepper", value=0.0, min=0.0, max=0.5,
                                        step=0.001, tooltip="fraction of dead / hot pixels")
        self.downsample = ComboBox(label="downsample", value="mean",
                                   choices=choices(Downsample))
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1,
                            tooltip="plane i uses plane_rng(seed, i): preview == saved pair")
        self.live = CheckBox(text="live preview", value=True)
        self.preview_button = PushButton(text="Preview current plane")
        self.folder = FileEdit(label="folder", mode="d", value=output_folder(None),
                               tooltip="by default the HR file's folder; for a layer without "
                                       "a file, the folder you chose last (else your home)")
        self.name_edit = LineEdit(label="name", value="")
        self.format = ComboBox(label="format", value="tif", choices=["tif", "zarr"])
        self.overwrite = CheckBox(text="overwrite", value=False)
        self.save_button = PushButton(text="Save pairs…")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.extend([self.layer, self.scale, self.photons, self.read_noise, self.blur,
                     self.salt_pepper, self.downsample, self.seed, self.live, self.preview_button,
                     self.folder, self.name_edit, self.format, self.overwrite, self.save_button])
        # messages, the saving's progress (what, bar, ETA) and Cancel, at the bottom
        self.progress = JobProgress(self.cancel_button.native, self.status.native)
        self.native.layout().addWidget(self.progress)
        self._setting_folder = False

        self._preview_worker = None
        self._preview_pending = False
        self.last_pairs: dict | None = None

        self.preview_button.changed.connect(self.preview)
        self.save_button.changed.connect(self.save_pairs)
        self.cancel_button.changed.connect(self.cancel)
        self.folder.changed.connect(self._folder_chosen)
        self.layer.changed.connect(self._default_folder)
        for w in (self.layer, self.scale, self.photons, self.read_noise, self.blur,
                  self.salt_pepper, self.downsample, self.seed, self.live):
            w.changed.connect(self._live_update)
        self._closed = False
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._live_update)
        self.native.destroyed.connect(self._on_destroyed)
        self._refresh_layers()
        self._default_folder()
        # first live preview once napari has docked the widget (after this constructor returns)
        QTimer.singleShot(0, self._live_update)

    def _on_destroyed(self, *_args) -> None:
        """The dock was closed: stop listening to the viewer and let running workers end."""
        self._closed = True
        for emitter, slot in ((self.viewer.layers.events.inserted, self._refresh_layers),
                              (self.viewer.layers.events.removed, self._refresh_layers),
                              (self.viewer.dims.events.current_step, self._live_update)):
            emitter.disconnect(slot)
        self._cancel_job()

    # ------------------------------------------------------------------ parameters

    def _folder_chosen(self, *_args) -> None:
        if not self._setting_folder:  # the user's choice: kept for the next layers
            _CHOSEN_FOLDER[:] = [Path(self.folder.value)]

    def _default_folder(self, *_args) -> None:
        """The folder for the chosen layer's pairs (:func:`output_folder`), set when the layer
        changes: a folder typed for this layer stays until then."""
        folder = output_folder(self.layer.value)
        self._setting_folder = True
        try:
            self.folder.value = folder
        finally:
            self._setting_folder = False

    def _image_layers(self, _widget=None) -> list:
        return [lyr for lyr in self.viewer.layers
                if isinstance(lyr, Image) and not lyr.name.endswith(" crappified")]

    def _docked(self) -> bool:
        """In a window and not destroyed. napari's ``remove_dock_widget`` only unparents the
        dock (it is not destroyed), so a removed dock must stop reacting to the viewer itself."""
        return not self._closed and self.native.window() is not self.native

    def _refresh_layers(self, _event=None) -> None:
        if self._closed:
            return
        self.layer.reset_choices()
        if self.layer.value is None:  # pick the first image layer rather than nothing
            choices = self._image_layers()
            if choices:
                self.layer.value = choices[0]

    def config(self) -> CrappifyConfig:
        """The degradation the dock describes."""
        return CrappifyConfig(
            scale=int(self.scale.value), photons=float(self.photons.value) or None,
            read_noise=float(self.read_noise.value), blur_sigma=float(self.blur.value),
            salt_pepper=float(self.salt_pepper.value), downsample=self.downsample.value)

    def _source(self):
        layer = self.layer.value
        if layer is None:
            raise ValueError("choose an HR image layer first")
        if getattr(layer, "multiscale", False):
            raise ValueError(f"layer {layer.name!r} is multiscale: open its full resolution level")
        return layer

    def current_index(self, layer) -> tuple[int, ...]:
        """Data index of ``layer`` along every axis but Y, X at the viewer's current position."""
        lead = layer.ndim - 2
        if lead <= 0:
            return ()
        point = np.asarray(layer.world_to_data(self.viewer.dims.point), dtype=float)
        shape = layer.data.shape
        return tuple(int(np.clip(np.round(point[d]), 0, shape[d] - 1)) for d in range(lead))

    def preview_geometry(self, layer, index: tuple[int, ...], scale: int):
        """``(scale, translate)`` of the preview: the LR geometry on Y, X, the current plane's
        position on the other axes."""
        axes = _layer_axes(layer)
        hr_scale = tuple(float(s) for s in layer.scale)
        hr_translate = tuple(float(t) for t in layer.translate)
        lr_scale, lr_translate = io.downscale_geometry(hr_scale, hr_translate, axes, scale)
        lr_translate = tuple(t + i * s for t, i, s in zip(lr_translate, index, lr_scale, strict=False)
                             ) + lr_translate[len(index):]
        return lr_scale, lr_translate

    # ------------------------------------------------------------------ preview

    def _report(self, what: str, error: BaseException) -> None:
        if not self._closed:
            self.status.value = f"{what}: {error}"

    def _live_update(self, *_args) -> None:
        if self._docked() and self.live.value and self.layer.value is not None:
            self.preview()

    def preview(self, *_args):
        """Crappify the current plane in a worker and show it (returns the worker, or None when a
        preview is already running: the latest request then runs when it finishes)."""
        if self._preview_worker is not None:
            self._preview_pending = True
            return None
        try:
            layer = self._source()
            config = self.config()
            index = self.current_index(layer)
            plane = layer.data[index]  # a lazy (dask) plane is read in the worker, not here
            geometry = self.preview_geometry(layer, index, config.scale)
        except ValueError as e:
            self.status.value = f"preview: {e}"
            return None
        seed = int(self.seed.value)

        # errors are shown in the status line (not re-raised in the Qt event loop)
        @thread_worker(ignore_errors=True)
        def work():
            return Crappifier(config)(check_unit_float(plane), seed=plane_rng(seed, index))

        worker = work()
        worker.returned.connect(lambda lr: self._show_preview(layer, lr, geometry, index))
        worker.errored.connect(lambda e: self._report("preview", e))
        worker.finished.connect(self._preview_done)
        self._preview_worker = worker
        worker.start()
        return worker

    def _preview_done(self) -> None:
        self._preview_worker = None
        if self._preview_pending and not self._closed:
            self._preview_pending = False
            self.preview()

    def _show_preview(self, layer, lr: np.ndarray, geometry, index) -> None:
        if self._closed:
            return
        scale, translate = geometry
        # in the HR layer's intensity units (the crappifier works on [0, 1]): the preview then
        # shares the HR's contrast, and restoring it with a model trained on such data works
        # (a [0, 1] preview of uint8 data restored to garbage)
        data = from_unit(lr, layer.data.dtype).reshape((1,) * len(index) + lr.shape)
        name = f"{layer.name} crappified"
        limits = tuple(float(c) for c in layer.contrast_limits)
        if name in self.viewer.layers:
            out = self.viewer.layers[name]
            out.data = data
            out.scale = scale
            out.translate = translate
            out.contrast_limits = limits
        else:
            out = self.viewer.add_image(
                data, name=name, scale=scale, translate=translate, units=_unit_names(layer),
                contrast_limits=limits, colormap=layer.colormap.name, blending=BLENDING)
        out.metadata["decrappify"] = {"crappify": self.config().model_dump(mode="json"),
                                      "seed": int(self.seed.value), "plane": list(index),
                                      "source": layer.name}
        self.status.value = (f"preview of plane {index or '(2-D)'}: {lr.shape[0]} x {lr.shape[1]} "
                             f"LR pixels")

    # ------------------------------------------------------------------ save pairs
    def _job_buttons(self) -> tuple:
        return (self.save_button,)

    @property
    def _save_job(self):
        """The saving job until it has finished (its buttons back), else None."""
        job = self.job
        return None if job is None or job.finished else job


    def save_pairs(self, *_args):
        """Write LR/HR pairs of every plane to the chosen folder
        (:func:`napari_decrappify.pair_files.write_pairs` in a :class:`._workers.CoreJob`: a progress bar, and
        Cancel removes what was written). Returns the job, or None when nothing was started."""
        if self._busy():
            return None
        try:
            layer = self._source()
            config = self.config()
            axes = _layer_axes(layer)
        except ValueError as e:
            self.status.value = f"save: {e}"
            return None
        folder = Path(self.folder.value)
        name = _safe_name(self.name_edit.value or layer.name)
        kwargs = dict(seed=int(self.seed.value), axes=axes,
                      scale=tuple(float(s) for s in layer.scale),
                      translate=tuple(float(t) for t in layer.translate), units=_unit_names(layer),
                      fmt=self.format.value, name=name, overwrite=bool(self.overwrite.value))
        ext = ".tif" if kwargs["fmt"] == "tif" else ".zarr"
        existing = [p.name for p in (folder / f"{name}_lr{ext}", folder / f"{name}_hr{ext}",
                                     folder / f"{name}.json") if p.exists()]
        if existing and not kwargs["overwrite"]:  # said at once, not from a worker
            self.status.value = (f"save: {', '.join(existing)} exists in {folder}; tick "
                                 "'overwrite' or change the name")
            return None
        self.status.value = f"saving {name} to {folder}…"
        return self._start_job(
            write_pairs, layer.data, folder, config, description=f"saving pairs {name}",
            on_result=self._saved, cancelled="saving cancelled: nothing written", **kwargs)

    def _saved(self, result: dict) -> None:
        self.last_pairs = result
        self._set_status(f"saved {Path(result['lr']).name}, {Path(result['hr']).name}")

    def cancel(self, *_args) -> None:
        """Stop saving at the next chunk; what was written is removed."""
        self._cancel_job()
