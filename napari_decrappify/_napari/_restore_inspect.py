"""Restore dock, region inspection: restore a rectangle of the current plane and compare.

:class:`InspectMixin` is the dock's side (the *Inspect a region* section: a Shapes rectangle or
the current view, LR / bicubic / restored / HR crops beside the image, with scores);
:func:`_inspect_job` restores the haloed crop in a worker, normalised as the full result.
"""

from __future__ import annotations

import math
import time

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton

from . import _compare
from ._job_dock import model_first
from ._layers import BLENDING, base_data, current_plane, layer_geometry
from ._restore_input import _measure
from ._restore_scores import _fmt, _summary
from ._ui import note

CURRENT_VIEW = "current view"
INSPECT_PANELS = ("LR", "bicubic", "restored", "HR")
QUICK_HALO = 32  # context of a "quick" region inspection, input pixels


class InspectMixin:
    """The Restore dock's region inspection (mixed into :class:`.restore.RestoreWidget`)."""

    def _inspect_section(self) -> Container:
        """The dock's *Inspect a region* section (its button connected)."""
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
        self.inspect_button.changed.connect(self.inspect)
        return self.inspect_box

    def _region_choices(self, _widget=None):
        from napari.layers import Shapes

        return [(CURRENT_VIEW, None)] + [(f"shapes: {s.name}", s) for s in self.viewer.layers
                                         if isinstance(s, Shapes)]

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
