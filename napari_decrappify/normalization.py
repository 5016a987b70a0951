"""Input normalisation that follows the data (CSBDeep/CARE's convention).

A restoration model records, at training, the network values of its training inputs' 1st and
99.8th percentiles (:attr:`~napari_decrappify.config.NormConfig.input_levels`). At inference the
same percentiles are measured on the *input itself* (the whole image or stack, streamed when it
is lazy) and mapped to those values; the output is mapped back by the inverse. So a model
trained on uint8 EM restores a uint16, float [0, 1] or float 0..255 version of the same image
to the same result, in each input's own units, instead of silently mangling it.

Models with ``mode="fixed"`` (absolute intensities matter) are applied as they always were.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import INPUT_PERCENTILES, NormConfig


def measure_percentiles(image, percentiles: Sequence[float]) -> tuple[float, float]:
    """``percentiles`` of all values of ``image`` (numpy: exact; a lazy array is streamed in
    bounded memory by :func:`napari_decrappify.metrics.reference_range`)."""
    from .metrics import reference_range

    if np.dtype(image.dtype) == np.bool_:
        raise ValueError("a boolean (mask) image has no intensities to restore: convert it to "
                         "uint8 if it really is an image")
    if int(np.prod(image.shape, dtype=np.int64)) == 0:
        raise ValueError(f"the image is empty (shape {tuple(image.shape)}): nothing to restore")
    _, lo, hi = reference_range(image, tuple(percentiles), shortcuts=False)
    return float(lo), float(hi)


MAX_PLANES = 100  # planes measured for a stack's range (evenly spaced beyond this)
WHOLE_PLANE_PIXELS = 64_000_000  # planes up to this size are read whole (else streamed)


def input_range(norm: NormConfig, image) -> tuple[float, float] | None:
    """The input intensities that ``norm`` maps to its ``input_levels``; ``None`` for a
    fixed normalisation, which does not depend on the input.

    A 2-D image: its own percentiles. A stack (any leading axes): the median over its planes
    (up to :data:`MAX_PLANES`, evenly spaced) of each plane's percentiles, leaving out blank
    planes (one value): a single black plane among EM sections (CREMI's plane 14) moved the
    whole stack's 1st percentile from 74 to 0 and spoilt every plane's restoration. Where the
    percentiles coincide (a sparse image), the plane's full range is used.
    """
    if norm.mode == "fixed":
        return None
    if image.ndim < 2 or int(np.prod(image.shape, dtype=np.int64)) == 0:
        raise ValueError(f"the image is empty or not 2-D (shape {tuple(image.shape)}): nothing "
                         "to restore")
    from . import planes

    ranges = []
    whole = int(np.prod(image.shape[-2:])) <= WHOLE_PLANE_PIXELS
    for _, idx in planes.walk(image.shape, max_planes=MAX_PLANES):
        plane = image[idx]
        if whole:  # read once: a lazy plane computed whole (a resampled input) was recomputed
            plane = np.asarray(plane)  # for every slab that the streamed percentiles read
        lo, hi = measure_percentiles(plane, norm.input_percentiles)
        if not hi > lo:  # mostly one value: the full range, unless the plane is blank
            lo, hi = measure_percentiles(plane, (0.0, 100.0))
        if hi > lo:
            ranges.append((lo, hi))
    if not ranges:  # every plane constant
        lo, hi = measure_percentiles(image, (0.0, 100.0))
        return lo, hi
    lows, highs = zip(*ranges, strict=True)
    return float(np.median(lows)), float(np.median(highs))


def resolve(norm: NormConfig, image=None, given: tuple[float, float] | None = None,
            ) -> NormConfig:
    """The fixed normalisation to apply to ``image``.

    Parameters
    ----------
    norm : NormConfig
        The model's normalisation.
    image : array-like, optional
        The whole input (numpy, dask or zarr; read once when lazy). Not read when ``given``.
    given : (float, float), optional
        The input's intensity range to use instead of measuring it (e.g. the whole stack's,
        when restoring a crop of it, so that the crop restores exactly as in the full result).

    Returns
    -------
    NormConfig
        ``norm`` itself when fixed; otherwise a fixed ``NormConfig`` mapping the input's
        percentiles to the model's ``input_levels``.
    """
    if norm.mode == "fixed":
        return norm
    lo, hi = given if given is not None else input_range(norm, image)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError(f"the input's intensity range ({lo}, {hi}) is not finite: the image "
                         "contains NaN or inf values; replace them (e.g. numpy.nan_to_num)")
    if not hi > lo:  # a constant image: any span keeps the constant
        hi = lo + 1.0
    return norm.for_input(lo, hi)


def input_levels(inputs, percentiles: Sequence[float] = INPUT_PERCENTILES) -> tuple[float, float]:
    """``percentiles`` of a model's training ``inputs`` (network-unit arrays): the values a
    data-normalised model maps its inputs' own percentiles to (:attr:`NormConfig.input_levels`)."""
    xs = [np.asarray(x, dtype=np.float32).ravel() for x in inputs]
    if not xs:
        raise ValueError("no training inputs to measure the normalisation on")
    lo, hi = np.percentile(np.concatenate(xs), percentiles)
    if not hi > lo:
        raise ValueError("the training inputs are constant: nothing to learn from")
    return float(lo), float(hi)


def normalize(x: np.ndarray, norm: NormConfig) -> np.ndarray:
    """Input units -> network units by a fixed ``norm`` (float32)."""
    return ((np.asarray(x, dtype=np.float32) - norm.low) / (norm.high - norm.low)).astype(np.float32)


def denormalize(y: np.ndarray, norm: NormConfig) -> np.ndarray:
    """Network units -> input units by a fixed ``norm`` (float32)."""
    return (np.asarray(y, dtype=np.float32) * (norm.high - norm.low) + norm.low).astype(np.float32)


def describe(norm: NormConfig, given: tuple[float, float] | None) -> str:
    """One line saying how the input was normalised (for the dock, the CLI and reports)."""
    if norm.mode == "fixed":
        return (f"fixed intensity range {norm.low:g}..{norm.high:g} (the model's units: the input "
                "must be in them)")
    q0, q1 = norm.input_percentiles
    lo, hi = given
    return (f"input intensities normalised from the data: its {q0:g} and {q1:g} percentiles "
            f"{lo:.6g}..{hi:.6g} mapped to the training data's")
