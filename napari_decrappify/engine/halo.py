"""The tolerance halo: how much context each tile needs for its output to be right *enough*.

The receptive-field halo (``model.receptive_field``, 169 px for em-4x) makes tiled output equal
the whole-image output to ~1e-6, but its windows are mostly halo: with 512 px tiles only 35%
of the pixels computed are kept. The influence of far pixels decays quickly, so a much smaller
halo keeps tiled output within half an 8-bit grey level of the exact output.
:func:`measure_halo` finds the smallest such halo on real images; it is recorded in
``model.json`` (``halo_px``, with ``halo_measurement`` saying how) and becomes the engine's
default; ``TileConfig(exact=True)`` keeps the receptive field.

Why only some halos are tried: a strided U-Net is not shift-invariant, and a tile's window
starts ``halo`` pixels before its core, so the halo modulo the alignment decides how the
image sits on the encoder's pooling grid. The exact output puts the image at
``receptive_field`` modulo the alignment; a halo with another phase changes every output pixel
(em-4x: by up to 0.08), however large. So the candidates are ``receptive_field - k *
alignment``: the same phase as the exact output, differing only by the context cut off.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from .geometry import ALIGN, round_up

HALO_TOLERANCE = 2e-3  # of the output range (network units): half an 8-bit grey level
HALO_MARGIN = 0.75  # the measured error must stay below tolerance x margin (unseen data varies)
EXACT_TOLERANCE = 1e-4  # what the receptive-field halo (exact mode) keeps
MEASURE_TILE = 64  # small tiles in the measurement: many seams per image, the worst case seen
# a trained model's halo is measured when it is saved, on this many validation planes, each a
# centre crop of at most this many input px per side (as the bundled models':
# tools/measure_bundled_halos.py); planes under MIN_SIDE px are left out (too few seams)
TRAINED_PLANES, TRAINED_CROP, TRAINED_MIN_SIDE = 2, 160, 64


def model_alignment(model) -> int:
    """The window alignment the engine uses for ``model`` (a multiple of 32)."""
    return math.lcm(ALIGN, int(model.alignment or ALIGN))


def candidate_halos(model) -> list[int]:
    """Halos with the exact output's alignment phase, smallest first, up to the receptive
    field (module docstring)."""
    rf, a = int(model.receptive_field), model_alignment(model)
    return list(range(rf % a, rf + 1, a))


def _network_units(model, image, config, axes: str) -> np.ndarray:
    """The engine's output for ``image`` in network units (real data: about [0, 1])."""
    from ..normalization import normalize
    from .graph import RUNS, build

    built = build(model, image, config, axes, None, None)
    try:
        y = np.asarray(built.data.compute(scheduler="threads"), dtype=np.float32)
    finally:
        RUNS.pop(built.plan.run_id, None)
    if model.kind != "restoration":
        return y  # probabilities: already in [0, 1]
    return normalize(y, built.plan.norm)


def _axes(model, image: np.ndarray) -> str:
    if image.ndim == 2:
        return "YX"
    if image.ndim == 3:
        return "CYX" if model.in_channels > 1 else "ZYX"
    raise ValueError(f"measure_halo takes 2-D planes (or 3-D stacks for multi-frame or "
                     f"multi-channel models), got shape {image.shape}")


def measure_halo(model, images: Sequence[np.ndarray], *, tolerance: float = HALO_TOLERANCE,
                 margin: float = HALO_MARGIN, tile: int = MEASURE_TILE, device: str = "cpu",
                 source: str = "") -> dict:
    """The smallest halo whose tiled output stays within ``tolerance`` of the exact output.

    Each image is restored once exactly (receptive-field halo, one tile) and once per
    candidate halo (:func:`candidate_halos`) in ``tile`` px tiles, through the engine, in fp32;
    the error is the max abs difference in network units (the output range of real data is
    about [0, 1], so 2e-3 is half an 8-bit grey level). The halo picked is the smallest for
    which it and every larger candidate stay within ``tolerance * margin`` on every image.

    Parameters
    ----------
    model : RestorationModel
        A restoration or segmentation model.
    images : sequence of numpy arrays
        Real images in the model's input units (what it restores), 2-D planes; ``(Z, Y, X)``
        stacks for multi-frame models, ``(C, Y, X)`` for multi-channel ones. One or two
        validation planes are enough; blank planes measure nothing.
    tolerance, margin : float
        The bound (network units) and the fraction of it the measurement must keep.
    tile : int
        Tile size of the measurement (small: many seams).
    device : str
        Where to run (fp32); ``"cpu"`` by default, so GPU precision does not enter the figure.
    source : str
        What the images are, recorded with the result.

    Returns
    -------
    dict
        ``{"halo_px": int, "halo_measurement": {...}}``: the two ``model.json`` fields
        (:func:`record_halo` sets them on the model).
    """
    from ..config import TileConfig

    rf = int(model.receptive_field)
    a = model_alignment(model)
    tile = max(a, round_up(int(tile), a))
    halos = candidate_halos(model)
    errors = dict.fromkeys(halos, 0.0)
    shapes = []
    for image in images:
        image = np.asarray(image)
        axes = _axes(model, image)
        side = max(image.shape[-2:])
        exact = TileConfig(tile=min(round_up(max(side, rf), a), 16384), halo=rf, device=device,
                           precision="fp32", exact=True)
        ref = _network_units(model, image, exact, axes)
        for h in halos:
            cfg = TileConfig(tile=max(tile, round_up(h, a)), halo=h, device=device,
                             precision="fp32", exact=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # halos below the receptive field, on purpose
                y = _network_units(model, image, cfg, axes)
            errors[h] = max(errors[h], float(np.abs(y - ref).max()))
        shapes.append(list(image.shape))
    bound = tolerance * margin
    picked = rf
    for h in reversed(halos):  # the smallest halo from which on every larger one is in bound
        if errors[h] > bound:
            break
        picked = h
    return {"halo_px": int(picked), "halo_measurement": {
        "tolerance": tolerance, "margin": margin, "bound": bound,
        "units": "network output units (real data about [0, 1]); max abs tiled - exact",
        "criterion": "smallest halo with the exact output's alignment phase (receptive field "
                     "minus multiples of the alignment) whose error, and every larger one's, "
                     "is within tolerance x margin on every image",
        "receptive_field": rf, "alignment": a, "tile": tile,
        "max_abs_diff": {str(h): errors[h] for h in halos},
        "images": shapes, "source": source, "device": device, "precision": "fp32",
    }}


def record_halo(model, images: Sequence[np.ndarray], **options) -> dict:
    """:func:`measure_halo` and set its result on ``model.config`` (``halo_px``,
    ``halo_measurement``); :func:`napari_decrappify.models.save_model` then stamps the
    measurement with the saved weights' sha256. Returns the result."""
    result = measure_halo(model, images, **options)
    model.config.halo_px = result["halo_px"]
    model.config.halo_measurement = result["halo_measurement"]
    return result


def measurement_picks(items: Sequence) -> list:
    """Which of ``items`` (validation planes, in order) a trained model's halo is measured on:
    up to :data:`TRAINED_PLANES`, spread evenly from the first to the last (apart along z)."""
    n = min(TRAINED_PLANES, len(items))
    if n <= 1:
        return list(items[:n])
    return [items[round(k * (len(items) - 1) / (n - 1))] for k in range(n)]


def centre_crop(image: np.ndarray, side: int = TRAINED_CROP) -> np.ndarray:
    """The centre ``side`` x ``side`` px of ``image``'s last two axes (all of a smaller one)."""
    h, w = image.shape[-2:]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[..., y0:y0 + side, x0:x0 + side]
