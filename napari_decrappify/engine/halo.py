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
import math
import warnings
from collections.abc import Sequence

import numpy as np

from .geometry import ALIGN, cut_window, reflect_index, round_up, tile_axis

HALO_TOLERANCE = 2e-3  # of the output range (network units): half an 8-bit grey level
HALO_MARGIN = 0.75  # the measured error must stay below tolerance x margin (unseen data varies)
EXACT_TOLERANCE = 1e-4  # what the receptive-field halo (exact mode) keeps
MEASURE_TILE = 64  # px: the cores measured, 3 x 3 per plane and halo (_Windows)
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

    t = torch.from_numpy(np.ascontiguousarray(x))[None].to(device)
    if device == "cpu":  # as the engine runs it on CPU (oneDNN's faster layout)
        t = t.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return net(t).float().cpu().numpy()[0]


class _Windows:
    """One plane's whole-plane output and, per halo, the error of the windows the engine would
    give a 3 x 3 grid of ``core`` px cores (:meth:`error`).

    A core's four edges are where a tile's output has the least context; the grid gives 2304
    edge pixels per plane and halo (one central 256 px core, 1024, picked 96 px for em-4x
    where the seams benchmark finds 2.7e-3 on other planes). A plane too small for windows cut
    on every side at the largest halo (em-4x: CREMI's LR planes are 156 px) is first extended
    by mirroring it (continuous content, no new edges)."""

    def __init__(self, net, x: np.ndarray, scale: int, largest_halo: int, align: int, core: int,
                 device: str):
        need = 2 * round_up(largest_halo, align) + 3 * core
        _, h, w = x.shape
        py, px = max(0, need - h), max(0, need - w)
        if py or px:
            x = x[:, reflect_index(np.arange(-(py // 2), h + py - py // 2), h)]
            x = x[:, :, reflect_index(np.arange(-(px // 2), w + px - px // 2), w)]
        self.x, self.net, self.scale, self.align, self.core, self.device = \
            x, net, scale, align, core, device
        _, h, w = x.shape
        self.ext = (round_up(h, align), round_up(w, align))
        self.whole = _run(net, np.pad(x, ((0, 0), (0, self.ext[0] - h), (0, self.ext[1] - w)),
                                      mode="reflect"), device)
        self.starts = [[max(0, min(n - core, round(f * (n - core)) // align * align))
                        for f in (0.25, 0.5, 0.75)] for n in (h, w)]

    def error(self, halo: int) -> float | None:
        """Max abs difference over the cores, windows against the whole plane; ``None`` where
        every window holds the whole plane (nothing measured)."""
        x, s, a, c = self.x, self.scale, self.align, self.core
        _, h, w = x.shape
        worst, cut = 0.0, False
        for y0 in self.starts[0]:
            for x0 in self.starts[1]:
                (ya, yb), (xa, xb) = (cut_window(c0, c0 + c, halo, e, a)
                                      for c0, e in ((y0, self.ext[0]), (x0, self.ext[1])))
                if (ya, yb, xa, xb) == (0, self.ext[0], 0, self.ext[1]):
                    continue  # the whole plane: exact by construction, nothing learnt
                cut = True
                win = x[:, reflect_index(np.arange(ya, yb), h)][:, :,
                                                                 reflect_index(np.arange(xa, xb), w)]
                y = _run(self.net, win, self.device)
                oy, ox = (y0 - ya) * s, (x0 - xa) * s
                got = y[:, oy:oy + c * s, ox:ox + c * s]
                ref = self.whole[:, y0 * s:(y0 + c) * s, x0 * s:(x0 + c) * s]
                worst = max(worst, float(np.abs(got - ref).max()))
        return worst if cut else None


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
    (the exact output) and, per candidate halo (:func:`candidate_halos`, smallest first), in
    the windows the engine would give a 3 x 3 grid of ``tile`` px cores (the halo each side,
    aligned), in fp32 (:class:`_Windows`); the error is the max abs difference over the cores,
    in network units (the output range of real data is about [0, 1], so 2e-3 is half an 8-bit
    grey level). The halo picked is the smallest for which it and the next larger candidate
    stay within ``tolerance * margin`` on every image (errors fall with the halo; larger
    candidates are not run: ``None`` in the record), else the receptive field.

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
        Side of the measured cores (their edges are the seams measured).
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
    import torch

    from .device import _private_net

    rf = int(model.receptive_field)
    a = model_alignment(model)
    tile = max(a, round_up(int(tile), a))
    halos = candidate_halos(model)
    errors: dict[int, float | None] = dict.fromkeys(halos)
    net = _private_net(model).to(device).float().eval()
    if device == "cpu":
        net = net.to(memory_format=torch.channels_last)
    planes = []
    shapes = []
    for image in images:
        image = np.asarray(image)
        x = _network_input(model, image, _axes(model, image))
        planes.append(_Windows(net, x, model.scale, max(halos), a, tile, device))
        shapes.append(list(image.shape))
    bound = tolerance * margin
    picked, passed = rf, 0
    for h in halos:  # smallest first: stop once a halo and the next one are within bound
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = [e for e in (p.error(h) for p in planes) if e is not None]
        errors[h] = max(found) if found else None
        if errors[h] is not None and errors[h] > bound:
            picked, passed = rf, 0
            continue
        if errors[h] is not None and passed == 0:
            picked = h
        passed += errors[h] is not None
        if passed >= 2:
            break
    return {"halo_px": int(picked), "halo_measurement": {
        "tolerance": tolerance, "margin": margin, "bound": bound,
        "units": "network output units (real data about [0, 1]); max abs tiled - exact "
                 "(null: not run, or every window held the whole image)",
        "criterion": "smallest multiple of the alignment whose error and the next larger "
                     "candidate's are within tolerance x margin on every image (larger ones "
                     "not run), else the receptive field; windows aligned from the image's "
                     "origin, cut at its edges",
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
