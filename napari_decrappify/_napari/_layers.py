"""Layers in, layers out: axes and physical geometry of napari layers, and the layer-data tuples
of restored results, so that LR input, restored output and HR ground truth overlay exactly.

Geometry follows :func:`napari_decrappify.io.upscale_geometry`: a result upsampled ``f`` times
on Y, X has pixel size ``s / f`` and origin ``t + 0.5 * s * (1 / f - 1)``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .. import io

AXES_CHARS = "TCZYX"
#: blending of the image layers this plugin adds. napari's ``add_image`` default is
#: ``translucent_no_depth``, a name its layer controls show as is and nobody reads; in 2-D it
#: draws the same as ``translucent``, which restored results and maps already use
BLENDING = "translucent"


def unit_names(units, ndim: int) -> tuple[str, ...]:
    """Units as plain strings (napari stores pint units; ``None`` -> ``"pixel"``)."""
    if units is None:
        return ("pixel",) * ndim
    return tuple(str(u) if u is not None else "pixel" for u in units)


def layer_axes(layer, axes: str | None = None) -> str:
    """The axes string of an image layer: ``axes`` if given (validated), else the layer's axis
    labels when they are letters from ``TCZYX``, else ``metadata["axes"]``, else a guess by
    dimension (``YX``, ``ZYX``, ``TZYX`` ...)."""
    ndim = layer.ndim
    if getattr(layer, "rgb", False):
        raise ValueError(f"layer {layer.name!r} is RGB: restoration models take one channel; "
                         "split the channels first (right click > Split RGB)")
    if axes:
        return io.check_axes(axes.strip(), ndim)
    labels = "".join(str(a).upper() for a in getattr(layer, "axis_labels", ()) or ())
    if len(labels) == ndim and set(labels) <= set(AXES_CHARS):
        try:
            return io.check_axes(labels, ndim)
        except ValueError:
            pass
    meta_axes = (layer.metadata or {}).get("axes")
    if isinstance(meta_axes, str):
        try:
            return io.check_axes(meta_axes, ndim)
        except ValueError:
            pass
    return io.guess_axes(ndim)


def layer_geometry(layer) -> tuple[tuple[float, ...], tuple[float, ...], tuple[str, ...]]:
    """``(scale, translate, units)`` of a layer, as plain floats and strings."""
    scale = tuple(float(s) for s in layer.scale)
    translate = tuple(float(t) for t in layer.translate)
    return scale, translate, unit_names(getattr(layer, "units", None), layer.ndim)


def restored_name(source_name: str, model_name: str) -> str:
    return f"{source_name} restored ({model_name})"


def mode_text(scale: int, kind: str = "restoration") -> str:
    """What a model does, in words: ``denoise``, ``4x super-resolution`` ..."""
    if kind == "segmentation":
        return "segmentation"
    return "denoise (1x)" if scale == 1 else f"{scale}x super-resolution (+ denoise)"


def model_metadata(model, axes: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a restored layer records about how it was made."""
    return {
        "model": model.name,
        "model_path": str(model.path) if model.path else None,
        "weights_sha256": model.weights_hash,
        "scale": model.scale,
        "axes": axes,
        "parameters": dict(params or {}),
    }


def restored_layer_kwargs(source, model, axes: str, params: dict[str, Any] | None = None,
                          name: str | None = None) -> dict[str, Any]:
    """napari ``add_image`` keyword arguments for ``source`` restored by ``model``: geometry
    from :func:`io.upscale_geometry`, the input's units, axis labels and contrast limits
    (the output is in the input's intensity units), and the model's identity in metadata."""
    scale, translate, units = layer_geometry(source)
    new_scale, new_translate = io.upscale_geometry(scale, translate, axes, model.scale)
    meta = dict(source.metadata or {})
    meta["axes"] = axes
    meta["decrappify"] = {**model_metadata(model, axes, params), "source": source.name}
    kwargs = {
        "name": name or restored_name(source.name, model.name),
        "scale": new_scale,
        "translate": new_translate,
        "units": units,
        "axis_labels": tuple(axes.lower()),
        "metadata": meta,
        "colormap": source.colormap.name,
        "blending": BLENDING,
    }
    if source.contrast_limits is not None:
        kwargs["contrast_limits"] = tuple(float(c) for c in source.contrast_limits)
    return kwargs


def image_tuple(image: io.ImageData, **extra) -> tuple[Any, dict[str, Any], str]:
    """A napari ``LayerDataTuple`` for an :class:`io.ImageData` (reader output)."""
    kwargs = {
        "name": image.name,
        "scale": image.scale,
        "translate": image.translate,
        "units": image.units,
        "axis_labels": tuple(image.axes.lower()),
        "metadata": {**image.metadata, "axes": image.axes},
        "blending": BLENDING,
    }
    kwargs.update(extra)
    return image.data, kwargs, "image"


def current_plane(viewer, layer, axes: str) -> tuple[int, ...]:
    """Data indices of ``layer`` for every axis but Y, X at the viewer's current position."""
    lead = len(axes) - 2
    if lead == 0:
        return ()
    point = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    shape = layer.level_shapes[0] if getattr(layer, "multiscale", False) else layer.data.shape
    idx = []
    for d in range(lead):
        i = int(np.clip(np.round(point[d]), 0, shape[d] - 1))
        idx.append(i)
    return tuple(idx)


def base_data(layer):
    """Full-resolution data of a (possibly multiscale) image layer."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


# names that say "low resolution" / "high resolution": whole words or word starts, so that
# "yellow" or "flower" do not read as LR ("lr4x", "LR_noisy", "crappified" do)
_LR_WORDS = re.compile(r"(?:^|[^a-z])(?:lr|low|lowres|crapp\w*|degraded|noisy)(?:$|[^a-z])",
                       re.IGNORECASE)
_HR_WORDS = re.compile(r"(?:^|[^a-z])(?:hr|high|highres|gt|ground[ _-]?truth|truth|target|clean)"
                       r"(?:$|[^a-z])", re.IGNORECASE)


# names that say "restored": a restoration opened from a file, or made by other means
_RESTORED_WORDS = re.compile(r"(?:^|[^a-z])(?:restored|denoised|pssr|super[ _-]?res\w*)"
                             r"(?:$|[^a-z])", re.IGNORECASE)


def is_product(layer) -> bool:
    """Whether a layer is something this plugin made from another one (a restored result, an
    error or consistency map, an inspected region): never a sensible input by default. A
    crappified LR (the Crappify dock's preview) is an input, not a product."""
    meta = (layer.metadata or {}).get("decrappify")
    return isinstance(meta, dict) and "crappify" not in meta


def _pixel_area(layer) -> float:
    """Y * X pixel size, in nm^2 where the units say so, else in the layer's own units."""
    from ..pixel_size import image_pixel_size_nm

    scale, _, units = layer_geometry(layer)
    try:
        nm = image_pixel_size_nm(scale, units, layer_axes(layer))
    except ValueError:
        nm = None
    y, x = nm if nm is not None else scale[-2:]
    return float(y) * float(x)


def lr_looking(layers) -> Any:
    """The layer of ``layers`` (image layers) that looks most like a low-resolution input, or
    None when there is none.

    The first rule that tells them apart wins: layers made by this plugin (:func:`is_product`)
    come last; then a name that says LR ("lr", "low", "crappified", "noisy"...) first and one
    that says HR ("hr", "high", "ground truth", "gt"...) last; then the largest pixel (Y * X, in
    nm where the units are physical); then the fewest pixels on Y, X. A ground truth opened
    beside its LR (the bundled sample's pair) is therefore never the default input.
    """
    layers = [lyr for lyr in layers if not getattr(lyr, "rgb", False)] or list(layers)
    if not layers:
        return None

    def rank(item):
        i, lyr = item
        name = str(lyr.name)
        words = 0 if _LR_WORDS.search(name) else (2 if _HR_WORDS.search(name) else 1)
        yx = base_data(lyr).shape[-2:]
        return (is_product(lyr), words, -_pixel_area(lyr), int(np.prod(yx)), i)

    return min(enumerate(layers), key=rank)[1]


def is_restored(layer) -> bool:
    """Whether a layer is a restoration made by this plugin (Restore dock, :mod:`.api`): its
    metadata names the model and no classes (a segmentation's probabilities name both)."""
    meta = (layer.metadata or {}).get("decrappify")
    return isinstance(meta, dict) and "model" in meta and "classes" not in meta


def segmentation_input(layers) -> Any:
    """The image layer of ``layers`` a biologist would segment first, or None when there is none.

    The restored result when there is one (the newest: the last restored is on top), one this
    plugin made first, then one whose name says so (a restoration opened from a file:
    "restored", "denoised"); else the finest image there is, not a product of this plugin
    (maps, probabilities, inspected regions, a crappified preview): a name that says HR or
    ground truth first, one that says LR last, then the smallest pixel, then the most pixels.
    That is the opposite of the Restore dock's input (:func:`lr_looking`): one restores the LR
    and segments what came out.
    """
    layers = [lyr for lyr in layers if not getattr(lyr, "rgb", False)] or list(layers)
    if not layers:
        return None

    def rank(item):
        i, lyr = item
        if is_restored(lyr):
            return (0, 0, 0.0, 0, -i)
        meta = (lyr.metadata or {}).get("decrappify")
        name = str(lyr.name)
        if not isinstance(meta, dict) and _RESTORED_WORDS.search(name):
            return (1, 0, 0.0, 0, -i)
        words = 0 if _HR_WORDS.search(name) else (2 if _LR_WORDS.search(name) else 1)
        yx = base_data(lyr).shape[-2:]
        return (2 + (isinstance(meta, dict)), words, _pixel_area(lyr), -int(np.prod(yx)), i)

    return min(enumerate(layers), key=rank)[1]
