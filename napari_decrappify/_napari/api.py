"""Scripted sessions: restore layers of a running napari viewer from Python.

The same operations as the Restore dock, for the napari console, a notebook or a script::

    import napari
    from napari_decrappify._napari.api import add_restored, compare

    viewer = napari.Viewer()
    em = viewer.add_image(lr_stack, name="em", scale=(40, 16, 16), units="nm")
    restored = add_restored(viewer, em, "em-4x")                  # lazy: computed as viewed
    hr = viewer.add_image(hr_stack, name="hr", scale=(40, 4, 4), units="nm")
    restored = add_restored(viewer, "em", "em-4x", lazy=False, ground_truth="hr", tile=256)
    restored.metadata["decrappify"]["metrics"]                  # PSNR / SSIM vs ground truth
    compare(viewer, em, restored, hr)                            # grid: LR | restored | HR

Results carry scale, translate and units (:func:`napari_decrappify.io.upscale_geometry`) so that
they overlay the input and the ground truth exactly, and record the model (name, weights hash)
and the parameters in ``layer.metadata["decrappify"]``. Without napari, use
:func:`napari_decrappify.restore`.
"""

from __future__ import annotations

import os
import weakref

import numpy as np

from . import _compare, _live_lazy
from ._layers import base_data, layer_axes, restored_layer_kwargs

_GRID_STATE: dict[int, dict] = {}


def loaded_model(model):
    """The model if it is loaded already (a model object, or in :func:`resolve_model`'s cache),
    else ``None``: lets a dock load weights in a worker instead of the UI thread."""
    from ..engine import registry

    if not isinstance(model, str | os.PathLike):
        return model
    try:
        return registry.loaded(model)
    except (OSError, ValueError):  # unknown name: resolve_model raises the clear error
        return None


def resolve_model(model):
    """A loaded model from a model object, a model folder or a bundled / user model name.

    Loaded models are cached in the engine's one model cache
    (:func:`napari_decrappify.engine.registry.load_cached`: keyed by path and the time and size
    of its files), so switching back and forth in the dock does not reload them. The cache
    holds one version per path: loading weights saved anew into a folder, or a package
    exported anew at the same path, drops its older ones (results already made with them
    still compute).

    Parameters
    ----------
    model : RestorationModel, str or os.PathLike
        A loaded model (returned as is), a model folder, or a model name.

    Returns
    -------
    RestorationModel
        The loaded model.
    """
    from ..engine import registry

    if not isinstance(model, str | os.PathLike):
        return model
    return registry.load_cached(model, release_stale=False)


def _layer(viewer, layer):
    if isinstance(layer, str):
        if layer not in viewer.layers:
            raise ValueError(f"no layer named {layer!r} in the viewer "
                             f"(layers: {', '.join(x.name for x in viewer.layers) or 'none'})")
        return viewer.layers[layer]
    return layer


def _previous_result(viewer, name: str):
    """The image layer called ``name`` when it is a restored result (made by this plugin)."""
    from napari.layers import Image

    if name not in viewer.layers:
        return None
    old = viewer.layers[name]
    if isinstance(old, Image) and "decrappify" in (old.metadata or {}) and not old.rgb:
        return old
    return None


def add_result_layer(viewer, source, model, data, axes: str, params: dict | None = None, *,
                     lazy: bool = False, multiscale: bool | None = None, name: str | None = None,
                     replace: bool = False):
    """Add a restored array as an image layer just above ``source``, with the right geometry.

    A lazy (dask) result is shown through a :class:`~._live_lazy.LiveArray`: napari's UI
    thread never computes a tile. The tiles on screen are restored in a background thread, the
    one nearest the view's centre first, and shown as they finish (cached, so going back is
    instant); until then the layer shows the input upsampled (bicubic; the layer's
    ``metadata["decrappify"]["placeholder"]`` says so). Moving to another plane or panning
    drops the tiles no longer on screen from the queue. Reading the layer's data in another
    thread (a worker) gives the exact result. An upsampling model's lazy result is a
    two-level multiscale layer ``[restored, input]`` unless ``multiscale=False``: zoomed out,
    napari shows the input (no network call); zoomed in, only the tiles in view are computed.

    With ``replace``, a previous result of the same name (a re-run) is updated instead of a
    second layer ``"<name> [1]"`` being added: its data, geometry and metadata are the new
    ones, its display settings (contrast, colormap, gamma, opacity, blending) are kept, and it
    is made visible. (When the two differ in their number of dimensions or in being multiscale,
    a new layer with those settings takes the old one's place.)
    """
    kwargs = restored_layer_kwargs(source, model, axes, params, name=name)
    kwargs["metadata"]["decrappify"]["lazy"] = bool(lazy)
    live = _live(source, model, data) if lazy else None
    if live is not None:
        data = live
        kwargs["metadata"]["decrappify"]["placeholder"] = live.placeholder
    if multiscale is None:
        multiscale = lazy and model.scale > 1
    if multiscale and model.scale > 1:
        data = [data, base_data(source)]
        kwargs["multiscale"] = True
    old = _previous_result(viewer, kwargs["name"]) if replace else None
    if old is not None:
        shape = tuple(data[0].shape if kwargs.get("multiscale") else data.shape)
        if bool(old.multiscale) == bool(kwargs.get("multiscale")) and old.ndim == len(shape):
            old.data = data
            old.scale, old.translate = kwargs["scale"], kwargs["translate"]
            old.units, old.axis_labels = kwargs["units"], kwargs["axis_labels"]
            old.metadata = kwargs["metadata"]
            old.visible = True
            layer = old
        else:
            kwargs.update(contrast_limits=tuple(old.contrast_limits), colormap=old.colormap,
                          gamma=old.gamma, opacity=old.opacity, blending=old.blending)
            viewer.layers.remove(old)
            layer = viewer.add_image(data, **kwargs)
    else:
        layer = viewer.add_image(data, **kwargs)
    # keep it next to its input in the layer list
    src_index = viewer.layers.index(source) if source in viewer.layers else None
    if src_index is not None:
        viewer.layers.move(viewer.layers.index(layer), src_index + 1)
    if live is not None:
        _live_lazy.bind(layer, live)
    return layer


def _live(source, model, data):
    """A lazy (dask) result as a :class:`_live_lazy.LiveArray`: napari's UI thread never
    computes a tile; until a tile is restored it shows the input upsampled (bicubic, nearest
    for the first instant)."""
    import dask.array as da

    if not isinstance(data, da.Array):
        return None
    lr = base_data(source)
    preview, quick = _live_lazy.upsampled_input(lr, model.scale, data.ndim)
    what = "bicubic upsampling of the input" if model.scale > 1 else "input"
    return _live_lazy.LiveArray(data, preview, quick, describe=what)


def add_restored(viewer, layer, model, *, lazy: bool = True, ground_truth=None,
                 axes: str | None = None, name: str | None = None, multiscale: bool | None = None,
                 **tile_options):
    """Restore an image layer with a model and add the result to the viewer.

    Parameters
    ----------
    viewer : napari.Viewer
    layer : napari.layers.Image or str
        The input layer (or its name).
    model : RestorationModel, str or path
        A loaded model, a model folder, or a bundled / user model name (``"em-4x"``).
    lazy : bool
        True (default): a layer whose tiles on screen are restored in background threads as it
        is viewed, the input upsampled until then (napari's UI thread never computes a tile:
        :func:`add_result_layer`); returns once the lazy graph is built (the input's intensity
        range is measured first, in the calling thread). False: compute everything now
        (blocking) and add an in-memory layer.
    ground_truth : napari.layers.Image or str, optional
        The HR version of the input. PSNR / SSIM of the restored result and of the bicubic
        baseline (:mod:`napari_decrappify.metrics`) are stored in
        ``result.metadata["decrappify"]["metrics"]``; this computes the whole result, also
        when ``lazy``. Intensities follow :func:`napari_decrappify.metrics.intensity_maps`:
        all three are mapped to [0, 1] by the ground truth's range, predictions after being
        brought from the input's units into the ground truth's (see :func:`score_result`).
    axes : str, optional
        Axes of the input (``"ZYX"``); read from the layer (axis labels, metadata) or guessed.
    name : str, optional
        Layer name; default ``"<input> restored (<model>)"``.
    multiscale : bool, optional
        See :func:`add_result_layer`.
    **tile_options
        :class:`~napari_decrappify.config.TileConfig` fields: ``tile``, ``halo``, ``device`` ...

    Returns
    -------
    napari.layers.Image
        The new layer.
    """
    from ..config import TileConfig
    from ..engine.restore import restore, restore_lazy

    source = _layer(viewer, layer)
    axes = layer_axes(source, axes)
    model = resolve_model(model)
    config = TileConfig(**tile_options)
    data = base_data(source)
    params = {"tile_config": config.model_dump(), "lazy": lazy}
    if lazy:
        result = restore_lazy(model, data, config, axes=axes)
    else:
        result = restore(model, data, config, axes=axes)
    scores = None
    if ground_truth is not None:
        scores = score_result(result, data, _layer(viewer, ground_truth), model.scale)
    out = add_result_layer(viewer, source, model, result, axes, params, lazy=lazy,
                           multiscale=multiscale, name=name)
    if scores is not None:
        out.metadata["decrappify"]["metrics"] = scores
    return out


def score_result(restored, lr, hr_layer, scale: int) -> dict:
    """PSNR / SSIM (whole stack) of a restored result and of bicubic against an HR layer.

    The Restore dock's numbers, by the package's one intensity rule
    (:func:`napari_decrappify.metrics.intensity_maps`): the HR layer's range maps the HR, the
    bicubic baseline and ``restored`` to [0, 1] (uint8 / 255, float in [0, 1] kept, else its
    0.1/99.9 percentiles). ``restored`` and bicubic are in the units of ``lr``: a float ``lr``
    in [0, 1] beside an integer HR is in the crappifier's unit space (put back into the HR's
    units with ``crappify.from_unit``); otherwise (e.g. a float 0..255 ``lr`` beside a uint8
    HR) they share the HR's units. ``metrics.evaluate(restored, hr, normalised=False, lr=lr)``
    gives the same figures.

    Returns
    -------
    dict
        ``ground_truth`` (the layer's name), ``restored`` and ``bicubic``
        (:func:`napari_decrappify.metrics.evaluate` results).
    """
    gt = _compare.ground_truth(base_data(hr_layer), lr, restored.shape, scale, name=hr_layer.name)
    return {
        "ground_truth": hr_layer.name,
        "restored": _compare.score(np.asarray(restored), gt),
        "bicubic": _compare.score(_compare.bicubic(lr, scale), gt),
    }


def compare(viewer, lr_layer, restored_layer, hr_layer=None, *, enable: bool = True) -> None:
    """Show ``LR | restored | HR`` side by side in napari's grid mode (or turn it off again).

    Only these layers stay visible while the grid is on, in that order from the left; calling
    with ``enable=False`` restores the previous visibility, layer order and grid settings.
    Works the same whatever the layers' pixel sizes: each grid cell shows one layer in its
    own physical coordinates.
    """
    state = _GRID_STATE.get(id(viewer))
    if not enable:
        if state is None or state["viewer"]() is not viewer:
            viewer.canvas.grid.enabled = False
            return
        del _GRID_STATE[id(viewer)]
        known = [lyr for lyr, _ in sorted(state["order"], key=lambda x: x[1]) if lyr in viewer.layers]
        for target, lyr in enumerate(known):
            current = viewer.layers.index(lyr)
            if current > target:
                viewer.layers.move(current, target)
        for lyr, visible in state["visible"]:
            if lyr in viewer.layers:
                lyr.visible = visible
        viewer.canvas.grid.enabled = state["grid"][0]
        viewer.canvas.grid.shape = state["grid"][1]
        viewer.canvas.grid.stride = state["grid"][2]
        return
    panels = [_layer(viewer, x) for x in (lr_layer, restored_layer, hr_layer) if x is not None]
    for lyr in panels:
        if lyr not in viewer.layers:
            raise ValueError(f"layer {lyr.name!r} is no longer in the viewer")
    if state is not None and (state["viewer"]() is not viewer or not viewer.canvas.grid.enabled):
        state = None  # stale: another viewer with a recycled id, or the grid was turned off by hand
    if state is None:
        _GRID_STATE[id(viewer)] = {
            "viewer": weakref.ref(viewer),
            "order": [(lyr, i) for i, lyr in enumerate(viewer.layers)],
            "visible": [(lyr, lyr.visible) for lyr in viewer.layers],
            "grid": (viewer.canvas.grid.enabled, viewer.canvas.grid.shape, viewer.canvas.grid.stride),
        }
    # napari fills grid cells in layer-list order: put the panels in LR, restored, HR order
    for prev, nxt in zip(panels, panels[1:], strict=False):
        i, j = viewer.layers.index(prev), viewer.layers.index(nxt)
        if j < i:
            viewer.layers.move(j, i + 1)  # napari: insert before the item now at i + 1
    for lyr in viewer.layers:
        lyr.visible = lyr in panels
    viewer.canvas.grid.stride = 1
    viewer.canvas.grid.shape = (1, len(panels))
    viewer.canvas.grid.enabled = True
    viewer.reset_view()


def grid_active(viewer) -> bool:
    """Whether :func:`compare` currently shows a grid in ``viewer``."""
    return id(viewer) in _GRID_STATE and bool(viewer.canvas.grid.enabled)
