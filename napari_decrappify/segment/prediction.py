"""Prediction: a segmentation model through the tiled engine (:func:`predict`), and the
facade's :func:`segment` (prediction, then optionally the instance split)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import TileConfig
from .segment_config import ProgressFn
from .splitting import instances


@dataclass
class Segmentation:
    """Output of :func:`predict`.

    Attributes
    ----------
    probabilities : array
        ``(K + 1, ...)``: class probabilities, channel ``k`` = label ``k`` (numpy, or dask
        when ``lazy``).
    labels : array
        The most probable class per pixel (uint8/uint16), shaped like the image without C.
    classes : list of str
        Names of labels ``1..K``.
    axes : str
        Axes of ``labels`` (``probabilities`` has a ``C`` in front).
    """

    probabilities: Any
    labels: Any
    classes: list[str]
    axes: str
    model: str = ""
    objects: np.ndarray | None = None


def _labels_dtype(n_out: int):
    return np.uint8 if n_out <= 255 else np.uint16


def predict(model, image, *, axes: str | None = None, config: TileConfig | None = None,
            lazy: bool = False, progress: ProgressFn | None = None,
            cancel: threading.Event | None = None, **tile_options) -> Segmentation:
    """Segment an image of any size through the tiled engine.

    Parameters
    ----------
    model : RestorationModel, str or path
        A segmentation model (loaded, a folder, or a name).
    image : array-like or path
        In the intensity units the model was trained on (it normalises with its stored
        percentiles).
    axes : str, optional
        ``"YX"``, ``"ZYX"``, ``"TYX"``...; guessed from ndim when omitted.
    lazy : bool
        Return dask arrays computed tile by tile when read (napari, huge data).
    progress, cancel
        Tile events and a stop event (non-lazy only; cancelling raises ``RestoreCancelled``).
    **tile_options
        :class:`~napari_decrappify.config.TileConfig` fields (``tile``, ``halo``, ``device``...).

    Raises
    ------
    ValueError
        When the image holds NaN or inf values: a numpy image is checked before any tile runs;
        a dask/zarr image is checked tile by tile on the probabilities (when they are computed,
        i.e. on reading with ``lazy``).
    """
    from .. import tiling
    from ..crappify import check_image
    from ..io import ImageData, open_image

    model = tiling._as_model(model)
    if model.kind != "segmentation":
        raise ValueError(f"model {model.name!r} is a {model.kind} model, not a segmentation model")
    if config is None:
        config = TileConfig(**tile_options)
    elif tile_options:
        config = config.model_copy(update=tile_options)
    source = image.data if isinstance(image, ImageData) else image
    if isinstance(source, np.ndarray):
        # one NaN pixel makes every tile whose halo reaches it NaN, and argmax(NaN) is label 0
        # ("no prediction"): a silent hole, so refuse up front (cheap for an in-memory array)
        check_image(source, "image")
    img = open_image(image, axes=axes)
    dtype = _labels_dtype(model.out_channels)
    if lazy:
        probs = tiling.restore_lazy(model, img, config, progress=progress, cancel=cancel)
        # a lazy input is not read up front: each tile checks its own output when computed
        probs = probs.map_blocks(_finite_probabilities, dtype=probs.dtype)
        labels = probs.argmax(axis=0).astype(dtype)
    else:
        probs = _finite_probabilities(
            tiling.restore(model, img, config, progress=progress, cancel=cancel))
        labels = np.argmax(probs, axis=0).astype(dtype)
    return Segmentation(probabilities=probs, labels=labels, classes=list(model.config.classes),
                        axes=img.axes.replace("C", ""), model=model.name)


def _finite_probabilities(probs: np.ndarray) -> np.ndarray:
    """``probs`` unchanged, or a ValueError when they hold NaN/inf (from a non-finite image)."""
    if not np.isfinite(probs).all():
        raise ValueError("the segmentation came out NaN or inf: the image contains NaN or inf "
                         "values (replace them, e.g. with np.nan_to_num, before segmenting)")
    return probs


def segment(image, model, axes: str | None = None, lazy: bool = False, *, objects: str | None = None,
            min_size: int = 0, h: float = 2.0, pixel_size: Sequence[float] | None = None,
            progress: ProgressFn | None = None, cancel: threading.Event | None = None,
            **tile_options) -> Segmentation:
    """Segment an image with a segmentation model (the facade's ``napari_decrappify.segment``).

    :func:`predict`, and with ``objects="cc"`` or ``"watershed"`` also :func:`instances` of
    the model's object classes into ``result.objects`` (not with ``lazy``; ``min_size``,
    ``h`` and ``pixel_size``, per spatial axis or per axis of the labels, as there).

    Examples
    --------
    >>> seg = nd.segment(image, "my-segmenter", axes="YX", objects="watershed")  # doctest: +SKIP
    >>> seg.labels, seg.objects, seg.probabilities.shape                          # doctest: +SKIP
    """
    if objects is not None and lazy:
        raise ValueError("objects (instance split) needs lazy=False: it works on the whole image")
    seg = predict(model, image, axes=axes, lazy=lazy, progress=progress, cancel=cancel,
                  **tile_options)
    if objects is not None:
        if pixel_size is None:  # a file's (or ImageData's) voxel size, as the CLI uses it
            pixel_size = _file_pixel_size(image, axes, seg.axes)
        seg.objects = instances(np.asarray(seg.labels), objects, classes=seg.classes or None,
                                min_size=min_size, h=h, axes=_instance_axes(seg.axes),
                                pixel_size=pixel_size)
    return seg


def _file_pixel_size(image, axes: str | None, label_axes: str) -> tuple[float, ...] | None:
    """The pixel size per axis of ``label_axes`` recorded with ``image`` (a path or an
    :class:`~napari_decrappify.io.ImageData`), or None for a plain array."""
    from ..io import ImageData, open_image

    if isinstance(image, str | os.PathLike):
        image = open_image(image, axes=axes)  # lazy: reads the metadata only
    if not isinstance(image, ImageData):
        return None
    size = dict(zip(image.axes, image.scale, strict=True))
    return tuple(float(size.get(a, 1.0)) for a in label_axes)


def _instance_axes(axes: str) -> str | None:
    """Axes to pass to :func:`instances`: None for plain YX / ZYX."""
    return None if axes in ("YX", "ZYX") else axes
