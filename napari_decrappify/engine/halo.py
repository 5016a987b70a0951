"""The tolerance halo: how much context each tile needs for its output to be right *enough*.

The receptive-field halo (``model.receptive_field``, 169 px for em-4x) makes tiled output equal
the whole-image output to ~1e-6, but its windows are mostly halo: with 512 px tiles only 35%
of the pixels computed are kept. The influence of far pixels decays quickly, so a much smaller
halo keeps tiled output within half an 8-bit grey level of the exact output.
:func:`measure_halo` finds the smallest such halo on real images; it is recorded in
``model.json`` (``halo_px``, with ``halo_measurement`` saying how) and becomes the engine's
default; ``TileConfig(exact=True)`` keeps the receptive field.

Why only multiples of the alignment are tried: a strided U-Net is not shift-invariant, so
every window starts on the whole plane's pooling grid (a multiple of the alignment from the
image's origin: :mod:`.geometry`), and the context a window gets before an aligned core is the
halo rounded up to the alignment. Halos between two multiples compute the same windows.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np

from .geometry import ALIGN, reflect_index, round_up, tile_axis

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
    """The multiples of the alignment below the receptive field, smallest first, then the
    receptive field itself (module docstring)."""
    rf, a = int(model.receptive_field), model_alignment(model)
    return list(range(a, rf, a)) + [rf]


def _network_input(model, image: np.ndarray, axes: str):
    """What the engine feeds the network for ``image`` (its middle plane for a multi-frame
    stack): ``(frames * channels, H, W)``, normalised as the engine normalises this image."""
    from .graph import RUNS, _gather, build

    built = build(model, image, None, axes, None, None)
    RUNS.pop(built.plan.run_id, None)
    plan = built.plan
    shape = image.shape
    # one tile holding the whole plane, read from the array itself (a single chunk)
    plan = dataclasses.replace(plan, in_chunks=tuple((n,) for n in shape),
                               ty=tile_axis(shape[-2], round_up(shape[-2], plan.ty.align), 0,
                                            plan.ty.align),
                               tx=tile_axis(shape[-1], round_up(shape[-1], plan.tx.align), 0,
                                            plan.tx.align))
    plane = {i: shape[i] // 2 for i, a in enumerate(axes) if a not in "CYX"}
    raw = _gather(plan, plan.box(plane, 0, 0), [image])[..., :shape[-2], :shape[-1]]
    from ..normalization import normalize

    return normalize(raw, plan.norm).astype(np.float32)


def _run(net, x: np.ndarray, device: str) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return net(torch.from_numpy(np.ascontiguousarray(x))[None].to(device)).float().cpu() \
            .numpy()[0]


def _window_errors(net, x: np.ndarray, scale: int, halos: Sequence[int], align: int,
                   core: int, device: str) -> dict[int, float | None]:
    """Per halo, the max abs difference between the engine's windows for a 3 x 3 grid of
    ``core`` px cores and the whole plane (in one go), over the cores; ``None`` where every
    window holds the whole plane (the halo reaches past its edges: nothing measured).

    A plane too small for windows that stop short of its edges at the largest halo (em-4x:
    CREMI's LR planes are 156 px) is first extended by mirroring it (continuous content, no
    new edges) to ``2 * halo + 3 * core`` px."""
    need = 2 * round_up(max(halos), align) + 3 * core
    _, h, w = x.shape
    py, px = max(0, need - h), max(0, need - w)
    if py or px:
        x = x[:, reflect_index(np.arange(-(py // 2), h + py - py // 2), h)]
        x = x[:, :, reflect_index(np.arange(-(px // 2), w + px - px // 2), w)]
    _, h, w = x.shape
    ext = (round_up(h, align), round_up(w, align))
    whole = _run(net, np.pad(x, ((0, 0), (0, ext[0] - h), (0, ext[1] - w)), mode="reflect"),
                 device)
    starts = [[max(0, min(n - core, round(f * (n - core)) // align * align))
               for f in (0.25, 0.5, 0.75)] for n in (h, w)]
    out: dict[int, float | None] = {}
    for halo in halos:
        worst, cut = 0.0, False
        for y0, x0 in itertools.product(*starts):
            box = []
            for c0, e in ((y0, ext[0]), (x0, ext[1])):
                a0 = max(0, (c0 - halo) // align * align)
                box.append((a0, min(e, round_up(c0 + core + halo, align))))
            (ya, yb), (xa, xb) = box
            if (ya, yb, xa, xb) == (0, ext[0], 0, ext[1]):
                continue  # the whole plane: exact by construction, nothing learnt
            cut = True
            win = x[:, reflect_index(np.arange(ya, yb), h)][:, :, reflect_index(np.arange(xa, xb), w)]
            y = _run(net, win, device)
            oy, ox = (y0 - ya) * scale, (x0 - xa) * scale
            got = y[:, oy:oy + core * scale, ox:ox + core * scale]
            ref = whole[:, y0 * scale:(y0 + core) * scale, x0 * scale:(x0 + core) * scale]
            worst = max(worst, float(np.abs(got - ref).max()))
        out[halo] = worst if cut else None
    return out


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

    Each image, normalised as the engine normalises it, is run through the network whole
    (the exact output) and, per candidate halo (:func:`candidate_halos`), in the windows the
    engine would give a 3 x 3 grid of ``tile`` px cores (the halo each side, aligned, cut at
    the image's edges), in fp32; the error is the max abs difference over the cores, in
    network units (the output range of real data is about [0, 1], so 2e-3 is half an 8-bit
    grey level). A halo whose windows all hold the whole image measures nothing (``None``).
    The halo picked is the smallest measured one for which it and every larger measured
    candidate stay within ``tolerance * margin`` on every image; else the receptive field.

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
    from .device import _private_net

    rf = int(model.receptive_field)
    a = model_alignment(model)
    tile = max(a, round_up(int(tile), a))
    halos = candidate_halos(model)
    errors: dict[int, float | None] = dict.fromkeys(halos)
    net = _private_net(model).to(device).float().eval()
    shapes = []
    for image in images:
        image = np.asarray(image)
        x = _network_input(model, image, _axes(model, image))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = _window_errors(net, x, model.scale, halos, a, tile, device)
        for h, e in found.items():
            if e is not None:
                errors[h] = max(errors[h] or 0.0, e)
        shapes.append(list(image.shape))
    bound = tolerance * margin
    picked = rf
    for h in reversed(halos):  # the smallest measured halo from which on all are in bound
        if errors[h] is None:
            continue  # windows as large as the images: exact here, but not a measurement
        if errors[h] > bound:
            break
        picked = h
    return {"halo_px": int(picked), "halo_measurement": {
        "tolerance": tolerance, "margin": margin, "bound": bound,
        "units": "network output units (real data about [0, 1]); max abs tiled - exact "
                 "(null: every window held the whole image, nothing measured)",
        "criterion": "smallest multiple of the alignment whose error, and every larger "
                     "one's up to the receptive field, is within tolerance x margin on every "
                     "image (windows cut at the image's edges)",
        "receptive_field": rf, "alignment": a, "tile": tile, "cores": "3 x 3 per image",
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
