"""Segment dock: train a segmenter from painted labels, predict, split objects, measure, count.

Paint a few strokes per class into a Labels layer (0 = unlabelled; label ``k`` = the ``k``-th
class name), train (in a thread worker, with progress and cancel), predict the whole image or
stack or only the current plane into a class-probability Image layer and a class Labels layer,
split the classes into objects (connected components or watershed) and measure them: a table
in the dock (click a row to select and centre the object), CSV export, per-class counts and
density. "Compare counts" segments several layers (LR upsampled bicubically, restored, HR) with
the same model and matches their objects against a ground-truth Labels layer (or against the
objects of one of them) at IoU >= 0.5: counts, TP, FP, FN, F1.

Everything heavy is :mod:`napari_decrappify.segment`; this module only moves layers in and out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
)
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

from ..io import RestoreCancelled
from ..progress import Progress
from . import _ui
from ._job_dock import JobDock, model_first
from ._layers import base_data, current_plane, layer_axes, layer_geometry, segmentation_input
from ._model_picker import ModelPicker
from ._ui import STOP_TEXT, DefaultChoice, DockBody, devices, layer_choices
from ._units import display_unit, number, size_word, to_display
from ._workers import CoreJob, LoadsModelFirst, compute_array, model_events, warm_imports

MIN_FORM_HEIGHT = 200  # px of the scrolled form always shown
WHOLE = "whole image / stack"
PLANE = "current plane"
ENCODERS = ["tiny", "resnet18s", "resnet18", "resnet34"]
LOSSES = [("Dice + cross-entropy", "dice_ce"), ("cross-entropy", "ce")]
METHODS = [("watershed (split touching)", "watershed"), ("connected components", "cc")]
TABLE_COLUMNS = ["label", "class", "area", "centroid_z", "centroid_y", "centroid_x",
                 "equivalent_diameter", "mean_intensity"]


def _labels_type():
    from napari.layers import Labels

    return Labels


def _image_type():
    from napari.layers import Image

    return Image


class SegmentWidget(LoadsModelFirst, JobDock, DockBody):
    """Segment: train from painted labels, predict, split into objects, measure, count.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    FAILED_NOTICE = "Segment: {exc}"

    def __init__(self, napari_viewer):
        super().__init__()
        _warm_imports()
        self.viewer = v = napari_viewer
        self.job: CoreJob | None = None
        self.result = None  # TrainResult of the last training
        self.model = None  # the loaded / trained segmentation model in use
        self.measurements = None  # segment.Measurements of the last split
        self.objects_layer = None
        self.comparison: dict | None = None

        # ---------------------------------------------------------------- data and classes
        self.image = ComboBox(label="image", choices=layer_choices(v, _image_type()),
                              tooltip="by default the restored result (the newest), else the "
                                      "finest image open")
        # the image defaults to what a biologist segments (_layers.segmentation_input: the
        # restored result, else the finest image), not the first layer, until the user picks one
        self._image_default = DefaultChoice(self.image, segmentation_input, v)
        self.labels = ComboBox(label="painted labels", choices=layer_choices(v, _labels_type(),
                                                                             optional=True),
                               tooltip="0 = unlabelled (ignored); label k = k-th class name")
        self.classes = LineEdit(label="class names", value="background, object",
                                tooltip="comma separated: label 1 = first name, 2 = second ...; "
                                        "names like 'background' are not counted as objects")
        self.new_labels_button = PushButton(text="New labels layer to paint on")
        self.main = Container(widgets=[self.image, self.labels, self.classes,
                                       self.new_labels_button])

        # ---------------------------------------------------------------- training
        self.encoder = ComboBox(label="architecture", choices=ENCODERS, value="resnet18s")
        self.loss = ComboBox(label="loss", choices=LOSSES, value="dice_ce")
        self.weighting = ComboBox(label="class weights", choices=["balanced", "none"],
                                  value="balanced", tooltip="balanced: rare classes weigh more")
        self.budget_unit, self.budget = _ui.budget_widgets(minutes=2.0)
        self.patch_size = SpinBox(label="patch size (px)", value=128, min=32, max=1024, step=32)
        self.batch_size = SpinBox(label="batch size", value=8, min=1, max=512)
        self.iterations = SpinBox(label="iterations / epoch", value=50, min=1, max=1_000_000)
        self.device = ComboBox(label="device", choices=devices(), value="auto")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.model_name = LineEdit(label="model name", value="my-segmenter")
        self.folder = FileEdit(label="save in", mode="d", value=_default_model_dir())
        self.overwrite = CheckBox(label="replace an existing model of that name", value=False)
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.training = Container(widgets=[
            self.encoder, self.loss, self.weighting, self.budget_unit, self.budget,
            self.patch_size, self.batch_size, self.iterations, self.device, self.seed,
            self.model_name, self.folder, self.overwrite])

        # ---------------------------------------------------------------- model and prediction
        self.model_choice = ModelPicker("segmentation", label="model",
                                        empty="(no segmentation model: train one)")
        self.model_folder = FileEdit(label="or folder", mode="d", value="")
        self.scope = ComboBox(label="predict", choices=[WHOLE, PLANE], value=WHOLE)
        self.predict_button = PushButton(text="Predict")
        self.predicting = Container(widgets=[self.model_choice, self.model_folder, self.scope,
                                             self.predict_button])

        # ---------------------------------------------------------------- objects
        self.semantic = ComboBox(label="class labels", choices=layer_choices(v, _labels_type()),
                                 tooltip="a predicted class Labels layer")
        self.method = ComboBox(label="split", choices=METHODS, value="watershed")
        self.min_size = SpinBox(label="min size (px)", value=10, min=0, max=10_000_000)
        self.split_button = PushButton(text="Split into objects and measure")
        self.csv_path = FileEdit(label="CSV", mode="w", filter="*.csv", value="objects.csv")
        self.export_button = PushButton(text="Export table")
        self.summary = Label(value="")
        self.summary.native.setWordWrap(True)
        self.objects = Container(widgets=[self.semantic, self.method, self.min_size,
                                          self.split_button, self.summary, self.csv_path,
                                          self.export_button])
        self.table = QTableWidget(0, 0)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(160)

        # ---------------------------------------------------------------- count comparison
        self.compare_sources = Select(label="sources", choices=layer_choices(v, _image_type()),
                                      allow_multiple=True,
                                      tooltip="e.g. LR, restored, HR; smaller layers are upsampled "
                                              "(bicubic) to the reference grid")
        self.compare_sources.native.setMaximumHeight(90)
        self.reference = ComboBox(label="reference", choices=self._reference_choices,
                                  tooltip="ground-truth instance Labels, or a source whose objects "
                                          "are the reference (e.g. HR)")
        self.match_intensity = CheckBox(label="match intensities (0.1/99.9 percentiles)", value=True)
        self.compare_button = PushButton(text="Compare counts")
        self.compare = Container(widgets=[self.compare_sources, self.reference,
                                          self.match_intensity, self.compare_button])
        self.compare_table = QTableWidget(0, 7)
        self.compare_table.setHorizontalHeaderLabels(["source", "count", "TP", "FP", "FN", "F1",
                                                      "missed"])
        self.compare_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.compare_table.setMinimumHeight(120)

        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.buttons = Container(widgets=[self.train_button], labels=False)

        self.add(self.main)
        self.add(self.training, "Training", collapsed=False)
        self.add(self.buttons)
        self.add(self.predicting, "Predict", collapsed=False)
        self.add(self.objects, "Objects and measurements", collapsed=False)
        self._layout.addWidget(self.table)
        self.add(self.compare, "Compare counts (LR / restored / HR)")
        self._layout.addWidget(self.compare_table)
        self.finish()
        # not squeezed to a row or two when other docks are open: the rest scrolls
        self._progress_below(MIN_FORM_HEIGHT)

        self.new_labels_button.changed.connect(self.new_labels_layer)
        self.train_button.changed.connect(self.start_training)
        self.predict_button.changed.connect(self.start_prediction)
        self.split_button.changed.connect(self.split_and_measure)
        self.export_button.changed.connect(self.export_csv)
        self.compare_button.changed.connect(self.start_comparison)
        self.model_folder.changed.connect(self._folder_chosen)
        self.table.itemSelectionChanged.connect(self._row_selected)
        self.follow_layers(v)
        self._image_default.apply()

    # ------------------------------------------------------------------ choices
    def reset_choices(self, *args) -> None:
        """Refresh the layer choices (layers added, removed, renamed), then the image's default
        (:class:`._ui.DefaultChoice`)."""
        with self._image_default.quiet():  # a value that changes here was not picked by the user
            super().reset_choices(*args)
        self._image_default.apply()

    def _reference_choices(self, _widget=None):
        items = [(f"labels: {layer.name}", layer) for layer in self.viewer.layers
                 if isinstance(layer, _labels_type())]
        items += [(f"objects of: {layer.name}", layer) for layer in self.viewer.layers
                  if isinstance(layer, _image_type())]
        return items or [("(none)", None)]

    def add_model_folder(self, folder) -> None:
        """Offer the segmentation model in ``folder`` and select it (:class:`ModelPicker`:
        a ValueError for a folder that holds no model, or a model of another kind)."""
        self.model_choice.add_folder(folder)

    def _folder_chosen(self, *_args) -> None:
        value = str(self.model_folder.value or "")
        if value in ("", "."):
            return
        try:
            self.add_model_folder(value)
        except ValueError as e:
            self._set_status(f"⚠ {e}")

    # ------------------------------------------------------------------ helpers
    def class_names(self) -> list[str]:
        from ..segment import check_classes

        return check_classes(self.classes.value)

    def _load_model_first(self, action):
        """The loading job when the chosen model is not loaded yet (:class:`LoadsModelFirst`)."""
        return self._load_then(
            self.model_choice.value, action, self._start_job,
            cancelled="cancelled before the model was loaded")

    def current_model(self):
        """The chosen segmentation model, loaded by :meth:`_load_model_first` (in a worker):
        never loaded here, in the UI thread; a ValueError when it is not loaded."""
        path = self.model_choice.value
        if path is None:
            if self.model is None:
                raise ValueError("no segmentation model: train one or choose a model folder")
            return self.model
        model = self._model_at(path)
        if model.kind != "segmentation":
            raise ValueError(f"model {model.name!r} is not a segmentation model")
        self.model = model
        return model

    def config(self):
        from ..segment import SegmentConfig, segmentation_arch

        minutes, epochs = _ui.budget(self.budget_unit, self.budget)
        return SegmentConfig(
            arch=segmentation_arch(self.encoder.value),
            loss=self.loss.value, class_weights=self.weighting.value,
            patch_size=int(self.patch_size.value), batch_size=int(self.batch_size.value),
            iterations_per_epoch=int(self.iterations.value), epochs=epochs, minutes=minutes,
            device=self.device.value, seed=int(self.seed.value))

    def out_path(self) -> Path:
        """Where the model is saved (:func:`._ui.model_folder`)."""
        return _ui.model_folder(self.folder.value, self.model_name.value)

    def _job_buttons(self) -> tuple:
        return (self.train_button, self.predict_button, self.split_button, self.compare_button)

    # ------------------------------------------------------------------ painting
    def new_labels_layer(self, *_args):
        """An empty Labels layer over the chosen image (same shape and geometry), selected for
        painting with label 1."""
        image = self.image.value
        if image is None:
            self._set_status("⚠ choose an image layer first")
            return None
        scale, translate, units = layer_geometry(image)
        data = np.zeros(base_data(image).shape, np.uint8)
        layer = self.viewer.add_labels(data, name=f"{image.name} painted", scale=scale,
                                       translate=translate, units=units)
        layer.selected_label = 1
        layer.mode = "paint"
        self.labels.reset_choices()
        self.labels.value = layer
        return layer

    # ------------------------------------------------------------------ training
    def start_training(self, *_args) -> CoreJob | None:

        if self._busy():
            return None
        try:
            image, labels = self.image.value, self.labels.value
            if image is None:
                raise ValueError("choose an image layer")
            if labels is None:
                raise ValueError("choose the Labels layer with your painted strokes")
            if getattr(image, "rgb", False):
                raise ValueError(f"layer {image.name!r} is RGB: split its channels first")
            # the image is read in the worker (a lazy layer computes there, not in the UI
            # thread); painted labels are in memory
            data, lab = base_data(image), np.asarray(labels.data)
            if tuple(data.shape) != lab.shape:
                raise ValueError(f"labels {labels.name!r} {lab.shape} and image {image.name!r} "
                                 f"{tuple(data.shape)} must have the same shape")
            classes = self.class_names()
            if int(lab.max()) > len(classes):
                raise ValueError(f"labels {labels.name!r} use label {int(lab.max())} but there are "
                                 f"only {len(classes)} class names ({', '.join(classes)})")
            if not lab.any():
                raise ValueError(f"labels {labels.name!r} are empty: paint a few strokes per class")
            config = self.config()
            out = _ui.model_folder(self.folder.value, self.model_name.value,
                                   replace=bool(self.overwrite.value))
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return None
        self.result = None
        self._set_status(f"training {out.name} on {image.name} ({', '.join(classes)}) ...")
        return self._start_job(
            _train_segmenter_job, data, lab, classes, config, out=out, name=out.name,
            command=f"napari Segment dock: {image.name} + {labels.name}",
            description=f"Training {out.name}", on_result=self._trained)

    def _trained(self, result) -> None:
        self.result = result
        self.model = result.model
        what = STOP_TEXT.get(result.stop_reason, result.stop_reason)
        acc = result.model.config.metrics.get("valid_accuracy")
        text = f"{what}; {result.iterations} iterations in {result.seconds:.0f} s"
        if acc is not None:
            text += f"; validation pixel accuracy {acc:.3f}"
        if result.path is not None:
            text += f"\nsaved {result.path}"
            self.add_model_folder(result.path)
            model_events.saved.emit(str(result.path))
        self._set_status(text)

    # ------------------------------------------------------------------ prediction
    def _input(self, image, scope: str):
        """(data, axes, scale, translate, units, plane index) for prediction."""
        axes = layer_axes(image)
        if "C" in axes:
            raise ValueError(f"layer {image.name!r} has a channel axis: choose one channel")
        data = base_data(image)
        scale, translate, units = layer_geometry(image)
        idx: tuple[int, ...] = ()
        if scope == PLANE and len(axes) > 2:
            idx = current_plane(self.viewer, image, axes)
            data = data[idx]
            # the plane keeps its place: leading axes of size 1 at the plane's position
            translate = tuple(t + i * s for t, i, s in zip(translate, idx, scale, strict=False)) + \
                translate[len(idx):]
            # reshape, not np.asarray: a lazy plane is computed in the worker, not here
            data = data.reshape((1,) * len(idx) + tuple(data.shape))
        return data, axes, scale, translate, units, idx

    @model_first
    def start_prediction(self, *_args) -> CoreJob | None:
        from .. import segment

        try:
            image = self.image.value
            if image is None:
                raise ValueError("choose an image layer")
            model = self.current_model()
            data, axes, scale, translate, units, _ = self._input(image, self.scope.value)
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return None
        self._set_status(f"segmenting {image.name} with {model.name} ...")
        geometry = {"scale": scale, "translate": translate, "units": units, "axes": axes,
                    "source": image.name, "model": model}
        return self._start_job(segment.predict, model, data, axes=axes,
                               description=f"Segmenting {image.name}",
                               on_result=lambda seg: self._predicted(seg, geometry))

    def _predicted(self, seg, geo) -> None:
        model = geo["model"]
        meta = {"decrappify": {"model": model.name, "weights_sha256": model.weights_hash,
                               "classes": seg.classes, "source": geo["source"]},
                "axes": geo["axes"], "classes": seg.classes}
        n = len(seg.classes) + 1
        features = {"index": list(range(n)), "class": ["none"] + list(seg.classes)}
        probabilities = np.asarray(seg.probabilities)
        # one layer per class, with the labels' axes: a layer with a leading class axis added a
        # "class" slider to the viewer, even hidden
        offset = probabilities.shape[0] - len(seg.classes)  # 1: channel 0 is "none"
        for k, cls in enumerate(seg.classes, offset):
            if k < 0:
                continue
            self._put_layer(
                "image", probabilities[k], probability_name(geo["source"], cls, model.name),
                scale=geo["scale"], translate=geo["translate"], units=geo["units"],
                axis_labels=tuple(geo["axes"].lower()), colormap="magma",
                contrast_limits=(0.0, 1.0), blending="additive", visible=False,
                metadata={**meta, "class": cls})
        lname = f"{geo['source']} classes ({model.name})"
        labels = self._put_layer(
            "labels", np.asarray(seg.labels), lname, scale=geo["scale"],
            translate=geo["translate"], units=geo["units"],
            axis_labels=tuple(geo["axes"].lower()), metadata=meta, features=features, opacity=0.5)
        self.semantic.reset_choices()
        self.semantic.value = labels
        counts = np.bincount(np.asarray(seg.labels).ravel(), minlength=n)
        share = ", ".join(f"{c} {counts[k] / counts.sum():.1%}" for k, c in enumerate(seg.classes, 1))
        self._set_status(f"predicted {lname}: {share}")

    def _put_layer(self, kind: str, data, name: str, **kwargs):
        """Show ``data`` as the ``kind`` ("image" or "labels") layer ``name``: in place when a
        layer of that name, kind, shape and geometry exists (creating a napari layer costs the
        UI thread ~0.1 s of its own; a new prediction or split usually replaces the last)."""
        layers = self.viewer.layers
        old = layers[name] if name in layers else None
        same = (old is not None and type(old).__name__.lower() == kind
                and old.data.shape == data.shape
                and tuple(old.scale) == tuple(kwargs["scale"])
                and tuple(old.translate) == tuple(kwargs["translate"]))
        if same:
            old.data = data
            old.metadata = kwargs.get("metadata", {})
            if "features" in kwargs:
                old.features = kwargs["features"]
            return old
        if old is not None:
            layers.remove(name)
        return getattr(self.viewer, f"add_{kind}")(data, name=name, **kwargs)

    # ------------------------------------------------------------------ objects
    def split_and_measure(self, *_args) -> CoreJob | None:
        """Split the chosen class Labels layer into objects (a new Labels layer) and measure
        them against the image layer, in a worker (a watershed on a stack takes seconds);
        returns the job, or None when the input is refused."""
        if self._busy():
            return None
        sem_layer = self.semantic.value
        if sem_layer is None:
            self._set_status("⚠ predict first (or choose a class Labels layer)")
            return None
        try:
            classes = (sem_layer.metadata or {}).get("classes") or self.class_names()
            sem = np.asarray(sem_layer.data)
            axes = (sem_layer.metadata or {}).get("axes") or layer_axes(sem_layer)
            split_axes = None if axes in ("YX", "ZYX") else axes
            scale, translate, units = layer_geometry(sem_layer)
            image = self.image.value
            intensity = None  # read in the worker: a lazy layer computes there
            if image is not None and tuple(base_data(image).shape) == sem.shape:
                intensity = base_data(image)
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return None
        unit = units[-1] if units else "pixel"
        where = {"layer": sem_layer, "classes": classes, "axes": axes, "scale": scale,
                 "translate": translate, "units": units}
        self._set_status(f"splitting {sem_layer.name} into objects ...")
        # the layer's scale: the watershed measures physical distance (z steps > xy pixels)
        return self._start_job(
            _split_job, sem, intensity, method=self.method.value, classes=classes,
            min_size=int(self.min_size.value), axes=split_axes, scale=scale,
            translate=translate, unit=unit, description=f"Splitting {sem_layer.name}",
            on_result=lambda res: self._split_done(*res, where),
            on_error=lambda e: self._set_status(f"⚠ {e}"),
            cancelled="splitting cancelled",
            abandon_on_cancel=True)  # a volume's watershed is one step of seconds

    def _split_done(self, objects, measurements, where) -> None:
        sem_layer = where["layer"]
        self.measurements = measurements
        name = sem_layer.name.replace(" classes", " objects")
        if name == sem_layer.name:
            name = f"{sem_layer.name} objects"
        self.objects_layer = self._put_layer(
            "labels", objects, name, scale=where["scale"], translate=where["translate"],
            units=where["units"], axis_labels=sem_layer.axis_labels,
            metadata={"classes": where["classes"], "axes": where["axes"]})
        self._fill_table(measurements)
        # the core's words, so the dock, `decrappify segment` and the CSV say the same
        self.summary.value = "\n".join(measurements.summary_lines()) or "no objects"
        self._set_status(f"{len(measurements.rows)} objects in {name}")

    def _fill_table(self, m) -> None:
        """The objects in the table, in units for people: µm, µm² (area) or µm³ (volume)."""
        keys, headers, powers = table_columns(m)
        shown = _shown(m)
        self.table.blockSignals(True)
        self.table.setColumnCount(len(keys))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(len(m.rows))
        for r, row in enumerate(m.rows):
            for c, key in enumerate(keys):
                v = row.get(key, "")
                if powers[c] and isinstance(v, float):
                    v = to_display(v, m.unit, powers[c], shown)
                self.table.setItem(r, c, QTableWidgetItem(number(v)))
        self.table.resizeColumnsToContents()
        self.table.blockSignals(False)

    def select_row(self, r: int) -> None:
        """Select object ``r`` of the table: its label in the objects layer, centred on screen."""
        if self.measurements is None or not 0 <= r < len(self.measurements.rows):
            return
        row = self.measurements.rows[r]
        layer = self.objects_layer
        if layer is None:
            return
        layer.selected_label = int(row["label"])
        # centroids are in world (physical) coordinates: move the slider(s), then the camera
        ndim = layer.ndim
        axes = (layer.metadata or {}).get("axes") or ""
        world = list(self.viewer.dims.point)
        offset = len(world) - ndim
        for d, ax in enumerate(axes):
            key = f"centroid_{ax.lower()}"
            if key in row:
                world[offset + d] = row[key]
            elif ax.lower() in row:  # a t/c plane index
                scale, translate, _ = layer_geometry(layer)
                world[offset + d] = translate[d] + row[ax.lower()] * scale[d]
        displayed = list(self.viewer.dims.displayed)
        for d in range(len(world)):
            if d not in displayed:
                self.viewer.dims.set_point(d, world[d])
        self.viewer.scene.camera.center = tuple(world[d] for d in displayed)

    def _row_selected(self) -> None:
        rows = {i.row() for i in self.table.selectedItems()}
        if rows:
            self.select_row(min(rows))

    def export_csv(self, *_args):
        if self.measurements is None:
            self._set_status("⚠ split into objects first: no table to export")
            return None
        path = Path(self.csv_path.value).expanduser()
        if path.suffix.lower() != ".csv":
            path = path.with_suffix(".csv")
        try:
            self.measurements.to_csv(path)
            self.measurements.summary_csv(path.with_name(path.stem + "_summary.csv"))
        except OSError as e:
            self._set_status(f"⚠ cannot write {path}: {e}")
            return None
        self._set_status(f"wrote {path} ({len(self.measurements.rows)} objects) and "
                         f"{path.stem}_summary.csv")
        return path

    # ------------------------------------------------------------------ count comparison
    @model_first
    def start_comparison(self, *_args) -> CoreJob | None:
        try:
            model = self.current_model()
            layers = list(self.compare_sources.value or [])
            ref = self.reference.value
            if ref is None:
                raise ValueError("choose a reference: ground-truth Labels or a source layer")
            if isinstance(ref, _image_type()) and ref not in layers:
                layers.append(ref)
            if len(layers) < 1:
                raise ValueError("choose the source layers to compare (e.g. LR, restored, HR)")
            grid = tuple(base_data(ref).shape)
            # shapes are checked here; the sources are read and resampled in the worker
            sources = {layer.name: (base_data(layer), _grid_factor(layer, grid))
                       for layer in layers}
            norm = model.config.norm if self.match_intensity.value else None
            reference = ref.name if isinstance(ref, _image_type()) else np.asarray(ref.data)
            if not isinstance(reference, str) and not np.issubdtype(reference.dtype, np.integer):
                raise ValueError(f"reference {ref.name!r} must hold integer instance labels")
            axes = layer_axes(ref) if isinstance(ref, _image_type()) else layer_axes(layers[0])
            # per axis of the objects (no C), for the watershed's physical distances
            pixel_size = tuple(v for v, a in zip(layer_geometry(ref)[0], axes, strict=False)
                               if a != "C")
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return None
        self._set_status(f"segmenting and matching {len(sources)} sources ...")
        return self._start_job(
            _compare_counts_job, sources, reference, norm, model=model, method=self.method.value,
            min_size=int(self.min_size.value), axes=axes, pixel_size=pixel_size,
            description="Comparing counts",
            on_result=self._compared)

    def _compared(self, res) -> None:
        res = dict(res)
        res.pop("objects", None)
        self.comparison = res
        rows = res["sources"]
        self.compare_table.setRowCount(len(rows))
        for r, (name, s) in enumerate(rows.items()):
            vals = [name, s["count"], s["tp"], s["fp"], s["fn"], f"{s['f1']:.3f}",
                    f"{s['fn_rate']:.1%}"]
            for c, v in enumerate(vals):
                self.compare_table.setItem(r, c, QTableWidgetItem(str(v)))
        self.compare_table.resizeColumnsToContents()
        self._set_status(f"reference ({res['reference']}): {res['reference_count']} objects; "
                         "matched at IoU >= 0.5")


def _warm_imports() -> None:
    """What the workers use, imported while the dock opens (:func:`._workers.warm_imports`)."""
    warm_imports("dask.array", "scipy.ndimage", "skimage.measure", "skimage.morphology",
                 "skimage.segmentation", "napari_decrappify.segment",
                 "napari_decrappify.metrics", "napari_decrappify.tiling")


def probability_name(source: str, cls: str, model: str) -> str:
    """The name of a class's probability layer."""
    return f"{source} P({cls}) ({model})"


def _spatial_ndim(m) -> int:
    return m.spatial_ndim


def _shown(m) -> str:
    """The length unit of a measurements table (:func:`napari_decrappify.units.shown_unit`):
    one for all its rows, chosen by the objects' median area (volume in 3-D), as in its CSV."""
    return m.length_unit


def table_columns(m) -> tuple[list[str], list[str], list[int]]:
    """(row keys, headers, power of the length unit) of the measurements table: ``volume
    (µm³)`` for objects in 3-D, ``area (µm²)`` in 2-D; centroids and diameters in µm (in nm
    for objects so small that µm would need an exponent, :func:`._units.shown_unit`)."""
    nd = _spatial_ndim(m)
    shown = _shown(m)
    names = {"area": f"{size_word(nd)} ({display_unit(m.unit, nd, shown)})",
             "equivalent_diameter": f"diameter ({display_unit(m.unit, 1, shown)})",
             "mean_intensity": "mean intensity"}
    powers = {"area": nd, "equivalent_diameter": 1}
    keys = [k for k in TABLE_COLUMNS if k in m.columns]
    headers = []
    for k in keys:
        if k.startswith("centroid_"):
            headers.append(f"{k[-1]} ({display_unit(m.unit, 1, shown)})")
            powers[k] = 1
        else:
            headers.append(names.get(k, k))
    return keys, headers, [powers.get(k, 0) for k in keys]


def _split_job(sem, image, *, method, classes, min_size, axes, scale, translate, unit,
               progress=None, cancel=None):
    """Worker side of "Split into objects and measure": (objects, Measurements)."""
    from .. import segment

    def step(k: int, what: str) -> None:
        if cancel is not None and cancel.is_set():
            raise RestoreCancelled("cancelled")
        if progress is not None:
            progress(Progress(what, k, 3))

    step(0, "splitting into objects")
    objects = segment.instances(sem, method, classes=classes, min_size=min_size, axes=axes,
                                pixel_size=scale)
    step(1, "reading intensities")
    intensity = None if image is None else compute_array(image, cancel)
    step(2, "measuring")
    measurements = segment.measure(objects, intensity, classes, scale, semantic=sem,
                                   translate=translate, unit=unit, axes=axes)
    step(3, "measured")
    return objects, measurements


def _grid_factor(layer, grid: tuple[int, ...]) -> int:
    """The integer factor that puts ``layer`` on the reference ``grid`` (1: already on it)."""
    shape = tuple(base_data(layer).shape)
    if shape == grid:
        return 1
    f = grid[-1] / shape[-1]
    if shape[:-2] != grid[:-2] or not float(f).is_integer() or shape[-2] * f != grid[-2]:
        raise ValueError(f"layer {layer.name!r} {shape} is not the reference grid {grid} nor an "
                         "integer downscale of it")
    return int(f)


def _on_grid(data, factor: int, norm=None, cancel=None) -> np.ndarray:
    """A source on the reference grid (bicubic upsampling by ``factor``), mapped into the
    model's intensity range ``norm`` when given (``match intensities``)."""
    from ..metrics import bicubic_upsample

    data = compute_array(data, cancel).astype(np.float32, copy=False)
    if factor != 1:
        data = bicubic_upsample(data, factor)
    if norm is not None:
        lo, hi = np.percentile(data, (0.1, 99.9))
        data = np.clip((data - lo) / max(hi - lo, 1e-12), 0, 1) * (norm.high - norm.low) + norm.low
    return data.astype(np.float32)


def _compare_counts_job(sources, reference, norm, *, progress=None, cancel=None, **kwargs):
    """Worker side of "Compare counts": read and resample each source (a lazy restored layer
    runs its network here), then segment and match them."""
    from .. import segment

    on_grid = {}
    for k, (name, (data, factor)) in enumerate(sources.items()):
        if cancel is not None and cancel.is_set():
            raise RestoreCancelled("cancelled")
        if progress is not None:
            progress(Progress("reading", k, len(sources), extra={"source": name}))
        on_grid[name] = _on_grid(data, factor, norm, cancel)
    return segment.compare_counts(on_grid, reference, progress=progress, cancel=cancel, **kwargs)


def _train_segmenter_job(image, labels, *args, cancel=None, **kwargs):
    """Worker side of "Train": the image is read here (a lazy layer computes in the worker,
    and Cancel stops it); the saved model is loaded back here too, so that Predict finds it
    loaded (:func:`api.resolve_model`'s cache) instead of loading it first."""
    from .. import segment
    from .api import resolve_model

    result = segment.train_segmenter(compute_array(image, cancel), labels, *args, cancel=cancel,
                                     **kwargs)
    if result.path is not None:
        resolve_model(result.path)
    return result


def _default_model_dir() -> Path:
    from .train import default_model_dir

    return default_model_dir()


_devices = devices  # the old name of the shared device choices (:func:`._ui.devices`)
