"""Blinded counting study dock: how PSSR was validated by human experts.

Choose the source layers (e.g. LR, restored, HR; smaller layers are upsampled bicubically to
the reference's grid) and the reference (HR). "New study" cuts the same crops from every
source, shuffles them and shows them one at a time with their origin hidden (the source layers
are hidden meanwhile); click every object (a Points layer in add mode), then "Next crop". The
study is saved as JSON after every crop: "Resume" continues it later, and a second annotator
can resume a copy under their own name ("new session"). "Unblind" reports, per source, counts,
false negatives (missed) and false positives against the reference clicks at the same places,
and the agreement with another annotator's file when one is given.

The logic is :class:`napari_decrappify.segment.CountingStudy`; this module only shows crops.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
)
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

from ..progress import Progress
from ._job_dock import JobDock
from ._layers import BLENDING, base_data, current_plane, layer_axes
from ._ui import DockBody, layer_choices
from ._workers import CoreJob, compute_array, warm_imports

CROP_LAYER = "blinded crop"
CLICKS_LAYER = "clicks"

# per viewer: [(layer, its visibility before a study hid it)], shared by every counting dock of
# that viewer (a study resumed in a reopened dock gives back what the first dock hid)
_HIDDEN: dict[int, tuple[weakref.ref, list]] = {}


def _hidden_in(viewer) -> list:
    for key in [k for k, (ref, _) in _HIDDEN.items() if ref() is None]:  # closed viewers
        del _HIDDEN[key]
    entry = _HIDDEN.get(id(viewer))
    if entry is None or entry[0]() is not viewer:  # none yet, or a recycled id
        entry = _HIDDEN[id(viewer)] = (weakref.ref(viewer), [])
    return entry[1]


def _image_type():
    from napari.layers import Image

    return Image


class CountingStudyWidget(JobDock, DockBody):
    """Blinded counting study: shuffled crops from LR / restored / HR, click objects, unblind."""

    BUSY_TEXT = "⚠ busy: wait for the crops to be read or cancel"
    CANCEL_TEXT = None

    def __init__(self, napari_viewer):
        super().__init__()
        warm_imports("dask.array", "napari_decrappify.segment", "napari_decrappify.metrics",
                     "napari_decrappify.tiling")
        self.viewer = v = napari_viewer
        self.study = None
        self.job: CoreJob | None = None
        self.images: dict[str, np.ndarray] = {}
        self.current: int | None = None
        self.results: dict | None = None

        self.sources = Select(label="sources", choices=layer_choices(v, _image_type()),
                              allow_multiple=True)
        self.sources.native.setMaximumHeight(90)
        self.reference = ComboBox(label="reference (truth)", choices=layer_choices(v, _image_type()))
        self.locations = SpinBox(label="locations", value=4, min=1, max=1000)
        self.size = SpinBox(label="crop size (px)", value=128, min=16, max=4096, step=16)
        self.max_distance = FloatSpinBox(label="match distance (px)", value=6.0, min=0.5, max=500)
        self.annotator = LineEdit(label="annotator", value="annotator 1")
        self.path = FileEdit(label="study file", mode="w", filter="*.json",
                             value="counting-study.json")
        self.other = FileEdit(label="other annotator", mode="r", filter="*.json", value="",
                              tooltip="optional: a second annotator's study file, for agreement")
        self.new_button = PushButton(text="New study")
        self.resume_button = PushButton(text="Resume study")
        self.session_button = PushButton(text="New session (same crops, this annotator)")
        self.next_button = PushButton(text="Next crop", enabled=False)
        self.unblind_button = PushButton(text="Unblind")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.form = Container(widgets=[
            self.sources, self.reference, self.locations, self.size, self.max_distance,
            self.annotator, self.path, self.other, self.new_button, self.resume_button,
            self.session_button, self.next_button, self.unblind_button])
        self.table = QTableWidget(0, 7)
        self.table.setHorizontalHeaderLabels(["source", "count", "reference", "TP", "missed (FN)",
                                              "FP", "F1"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(120)
        self.add(self.form)
        self._layout.addWidget(self.table)
        self.finish()
        self._progress_below()

        self.new_button.changed.connect(self.new_study)
        self.resume_button.changed.connect(self.resume)
        self.session_button.changed.connect(self.new_session)
        self.next_button.changed.connect(self.next_crop)
        self.unblind_button.changed.connect(self.unblind)
        self.follow_layers(v)

    # ------------------------------------------------------------------ data
    def _plane(self, layer):
        """The layer's current plane, not read yet (a lazy layer is computed in the worker)."""
        data = base_data(layer)
        axes = layer_axes(layer)
        if len(axes) > 2:
            data = data[current_plane(self.viewer, layer, axes)]
        return data

    def _plan(self, names=None) -> dict[str, tuple]:
        """``{name: (plane, upsampling factor)}`` of the chosen sources on the reference's
        grid: shapes are checked here, the planes are read by :func:`_collect_job`."""
        ref = self.reference.value
        if ref is None:
            raise ValueError("choose the reference layer (the HR ground truth)")
        layers = list(self.sources.value or [])
        if ref not in layers:
            layers.append(ref)
        if names is not None:
            by_name = {layer.name: layer for layer in self.viewer.layers}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise ValueError(f"the study needs layers named {missing}: open them first")
            layers = [by_name[n] for n in names]
        if len(layers) < 2:
            raise ValueError("choose at least one source besides the reference")
        grid = tuple(self._plane(ref).shape)
        out = {}
        for layer in layers:
            img = self._plane(layer)
            shape, f = tuple(img.shape), 1
            if shape != grid:
                f = grid[1] / shape[1]
                if len(shape) != 2 or not float(f).is_integer() or shape[0] * f != grid[0]:
                    raise ValueError(f"layer {layer.name!r} {shape} is not on the reference "
                                     f"grid {grid} nor an integer downscale of it")
            out[layer.name] = (img, int(f))
        return out

    def _start(self, plan: dict, then, description: str) -> CoreJob:
        """Read the planes of ``plan`` in a worker; ``then(images)`` in the UI thread."""
        return self._start_job(_collect_job, plan, description=description, on_result=then,
                               cancelled="cancelled",
                               on_error=lambda e: self._set_status(f"⚠ {e}"),
                               abandon_on_cancel=True)  # an upsampling is one step

    def _job_buttons(self) -> tuple:
        return (self.new_button, self.resume_button, self.session_button, self.unblind_button)

    # ------------------------------------------------------------------ study lifecycle
    def new_study(self, *_args) -> CoreJob | None:
        """Read the sources' planes in a worker, then cut, shuffle and show the first crop;
        returns the job (None when the input is refused)."""
        if self._busy():
            return None
        try:
            plan = self._plan()
            ref = self.reference.value.name
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return None
        return self._start(plan, lambda images: self._created(images, ref),
                           "Reading the study's planes")

    def _created(self, images, ref) -> None:
        from ..segment import CountingStudy

        try:
            study = CountingStudy.create(next(iter(images.values())).shape, list(images), ref,
                                         n_locations=int(self.locations.value),
                                         size=int(self.size.value), annotator=self.annotator.value,
                                         max_distance=float(self.max_distance.value))
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return
        self.study, self.images = study, images
        study.save(self._study_path())
        self._begin()

    def resume(self, *_args) -> CoreJob | None:
        """Load the study file and read its sources' planes in a worker, then go on."""
        from ..segment import CountingStudy

        if self._busy():
            return None
        try:
            study = CountingStudy.load(self._study_path())
            plan = self._plan(study.sources)
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return None
        return self._start(plan, lambda images: self._resumed(study, images),
                           "Reading the study's planes")

    def _resumed(self, study, images) -> None:
        self.study, self.images = study, images
        self._begin()

    def new_session(self, *_args):
        """The loaded study's crops for another annotator, saved under a new file name
        (the planes are read in a worker first when none are loaded: the job is returned)."""
        from ..segment import CountingStudy

        if self._busy():
            return None
        try:
            base = self.study or CountingStudy.load(self._study_path())
            name = self.annotator.value.strip() or "annotator 2"
            if name == base.annotator:
                raise ValueError("enter the new annotator's name first")
            plan = None if self.images else self._plan(base.sources)
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return None
        if plan is None:
            return self._session(base, name, self.images)
        return self._start(plan, lambda images: self._session(base, name, images),
                           "Reading the study's planes")

    def _session(self, base, name, images):
        from ..segment import new_session

        self.images = images
        study = new_session(base, name)
        path = self._study_path()
        safe = "".join(c if c.isalnum() else "-" for c in name)
        study.save(path.with_name(f"{path.stem}-{safe}.json"))
        self.path.value = study.path
        self.study = study
        self._begin()
        return study

    def _study_path(self) -> Path:
        p = Path(self.path.value).expanduser()
        return p if p.suffix.lower() == ".json" else p.with_suffix(".json")

    @property
    def _hidden(self) -> list[tuple]:
        """(layer, its visibility before the study hid it), for this viewer: given back when
        the study ends."""
        return _hidden_in(self.viewer)

    def _begin(self) -> None:
        # hide the named sources so that nothing on screen tells where a crop comes from; a
        # study started while another is shown keeps the visibility remembered the first time
        sources = set(self.study.sources)
        known = {id(layer) for layer, _ in self._hidden}
        for layer in self.viewer.layers:
            if layer.name in (CROP_LAYER, CLICKS_LAYER) or id(layer) in known:
                continue
            if layer.visible or layer.name in sources:
                self._hidden.append((layer, bool(layer.visible)))
                layer.visible = False
        self._show(self.study.next_index())

    def _show(self, k: int | None) -> None:
        self.current = k
        crop = None if k is None else self.study.crop(k, self.images)
        layers = self.viewer.layers
        if (crop is not None and CROP_LAYER in layers and CLICKS_LAYER in layers
                and layers[CROP_LAYER].data.shape == crop.shape):
            # the next crop in the same layers: creating napari layers costs the UI thread
            # ~0.1 s each
            self._fill(crop, layers[CROP_LAYER], layers[CLICKS_LAYER])
            return
        for name in (CROP_LAYER, CLICKS_LAYER):
            if name in layers:
                layers.remove(name)
        if k is None:
            self.next_button.enabled = False
            for layer, visible in self._hidden:
                if layer in self.viewer.layers:
                    layer.visible = visible
            self._hidden.clear()
            self._set_status(f"study complete ({self.study.n_crops} crops): unblind to see the "
                             "results")
            return
        image = self.viewer.add_image(crop, name=CROP_LAYER, colormap="gray", blending=BLENDING)
        points = self.viewer.add_points(np.zeros((0, 2)), name=CLICKS_LAYER,
                                        size=max(3, self.study.size // 32), face_color="yellow")
        self._fill(crop, image, points)
        self.viewer.reset_view()

    def _fill(self, crop, image, points) -> None:
        lo, hi = np.percentile(crop, (0.5, 99.5))
        image.data = crop
        image.contrast_limits = (float(lo), float(max(hi, lo + 1e-6)))
        points.data = np.zeros((0, 2))
        points.mode = "add"
        self.next_button.enabled = True
        self._set_status(f"crop {self.study.n_done + 1} of {self.study.n_crops} (origin hidden): "
                         "click every object, then 'Next crop'")

    def next_crop(self, *_args):
        """Record the clicks on the shown crop, save the study, show the next crop."""
        if self.study is None or self.current is None:
            return None
        points = self.viewer.layers[CLICKS_LAYER].data if CLICKS_LAYER in self.viewer.layers else []
        try:
            self.study.record(self.current, np.asarray(points)[:, -2:] if len(points) else [])
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return None
        self.study.save()
        self._show(self.study.next_index())
        return self.current

    def unblind(self, *_args):
        from ..segment import CountingStudy, annotator_agreement

        try:
            study = self.study or CountingStudy.load(self._study_path())
            res = study.unblind(float(self.max_distance.value))
            other = str(self.other.value or "")
            if other not in ("", "."):
                res["agreement"] = annotator_agreement(study, CountingStudy.load(other),
                                                       float(self.max_distance.value))
        except ValueError as e:
            self._set_status(f"⚠ {e}")
            return None
        self.results = res
        rows = res["sources"]
        self.table.setRowCount(len(rows))
        for r, (name, s) in enumerate(rows.items()):
            vals = [name, s["count"], s["reference_count"], s["tp"], s["fn"], s["fp"], f"{s['f1']:.3f}"]
            for c, val in enumerate(vals):
                self.table.setItem(r, c, QTableWidgetItem(str(val)))
        self.table.resizeColumnsToContents()
        out = (study.path or self._study_path())
        results_path = out.with_name(out.stem + "_results.json")
        results_path.write_text(json.dumps(res, indent=1))
        text = (f"unblinded ({'complete' if res['complete'] else 'partial'}); reference "
                f"{res['reference']}; wrote {results_path.name}")
        if "agreement" in res:
            text += "\nagreement with the other annotator (F1): " + ", ".join(
                f"{n} {s['f1']:.2f}" for n, s in res["agreement"]["sources"].items())
        self._set_status(text)
        return res


def _collect_job(plan: dict, *, progress=None, cancel=None) -> dict[str, np.ndarray]:
    """Worker: read every source's plane (a lazy restored layer runs its network here) and
    put it on the reference's grid (bicubic upsampling)."""
    from ..metrics import bicubic_upsample

    out = {}
    for k, (name, (plane, factor)) in enumerate(plan.items()):
        if cancel is not None and cancel.is_set():
            from ..tiling import RestoreCancelled

            raise RestoreCancelled("cancelled")
        if progress is not None:
            progress(Progress(f"reading {name}", k, len(plan)))
        img = np.asarray(compute_array(plane, cancel), dtype=np.float32)
        out[name] = bicubic_upsample(img, factor) if factor != 1 else img
    return out
