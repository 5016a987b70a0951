"""LR consistency: does a restoration reproduce its own input? A check without ground truth.

The restored image is degraded the way the model's training LR was made, without noise (its
crappifier's blur and downsampling: a block mean by the scale for the bundled models), and
compared with the LR input it was restored from. A restoration that invents or drops structure
coarser than the LR pixel does not reproduce its input; a faithful one does, up to the noise
the input carries (which the restoration removes: the score of a perfect restoration of a
noisy input is the input's own noise level, not infinity).

What it cannot catch: detail finer than an LR pixel that averages out (made-up texture of the
right mean is invisible after the block mean), and errors the degradation model shares.
Intensities follow the package's metric rule with the LR as the reference: the LR's range
(uint8 / 255, float in [0, 1] kept, else its 0.1/99.9 percentiles) maps both to [0, 1].
"""

from __future__ import annotations

import numpy as np

from . import metrics
from .crappify import blur, downsample
from .progress import Progress


def degrade(restored: np.ndarray, scale: int, method: str = "mean", blur_sigma: float = 0.0,
            ) -> np.ndarray:
    """``restored`` (float, any units, ``(..., Y, X)``) blurred and downsampled without noise."""
    x = np.asarray(restored, dtype=np.float32)
    if blur_sigma:
        x = blur(x, blur_sigma)
    return downsample(x, scale, method)


def model_degradation(model) -> dict:
    """The noise-free part of ``model``'s training degradation: scale, downsampling, blur (a
    sampled range counts as its middle)."""
    c = model.config.crappifier
    if c is None:
        return {"scale": model.scale, "method": "mean", "blur_sigma": 0.0}
    sigma = c.blur_sigma
    if isinstance(sigma, tuple | list):
        sigma = (sigma[0] + sigma[1]) / 2
    return {"scale": model.scale, "method": c.downsample, "blur_sigma": float(sigma)}


def lr_consistency(restored, lr, scale: int, method: str = "mean", blur_sigma: float = 0.0,
                   *, with_map: bool = False, lr_range: tuple | None = None) -> dict:
    """PSNR / SSIM of the degraded restoration against the LR input, per plane and mean.

    Parameters
    ----------
    restored : array ``(..., Y*scale, X*scale)``
        The restoration, in the LR's intensity units (what the engine returns).
    lr : array ``(..., Y, X)``
        The input it was restored from.
    scale, method, blur_sigma
        The degradation (:func:`model_degradation`).
    with_map : bool
        Also return ``"map"``: ``|degraded - lr|`` in [0, 1] units, on the LR grid.
    lr_range : (mode, lo, hi), optional
        :func:`metrics.reference_range` of the whole LR, when ``lr`` is a part of it.

    Returns
    -------
    dict
        ``psnr``, ``ssim`` (means over non-blank planes), ``n_planes``, ``planes``.
    """
    lr = np.asarray(lr)
    restored = np.asarray(restored)
    if restored.shape[:-2] != lr.shape[:-2] or any(restored.shape[i] // scale != lr.shape[i]
                                                   for i in (-2, -1)):
        raise ValueError(f"the restored image {restored.shape} is not the LR {lr.shape} "
                         f"x {scale} on Y, X")
    low, ref = degrade(restored, scale, method, blur_sigma), lr
    mode, lo, hi = lr_range if lr_range is not None else metrics.reference_range(lr)
    a, b = metrics.apply_range(low, mode, lo, hi), metrics.apply_range(ref, mode, lo, hi)
    res = metrics.evaluate(a, b, normalised=True)
    out = {"psnr": res["psnr"], "ssim": res["ssim"], "n_planes": res["n_planes"],
           "planes": [{k: p[k] for k in ("plane", "psnr", "ssim")} for p in res["planes"]],
           "degradation": {"scale": scale, "method": method, "blur_sigma": blur_sigma}}
    if with_map:
        out["map"] = np.abs(a - b)
    return out


def model_lr_consistency(model, restored, lr, *, with_map: bool = False) -> dict:
    """:func:`lr_consistency` with ``model``'s own degradation."""
    return lr_consistency(restored, lr, **model_degradation(model), with_map=with_map)


def stack_lr_consistency(model, restored, lr, axes: str, progress=None) -> dict:
    """:func:`model_lr_consistency` of a (lazy) stack, one 2-D plane at a time (memory: one
    plane of each), e.g. a written result read back from disk. ``axes`` of ``lr`` (``restored``
    has the same, Y and X times the scale)."""
    from . import planes

    lr_range = metrics.reference_range(lr)
    rows, n = [], planes.count(lr.shape, axes)
    deg = model_degradation(model)
    for k, idx in planes.walk(lr.shape, axes):
        a, b = np.asarray(restored[idx]), np.asarray(lr[idx])
        a, b = a.reshape(-1, *a.shape[-2:])[:1], b.reshape(-1, *b.shape[-2:])[:1]
        try:
            one = lr_consistency(a, b, **deg, lr_range=lr_range)
        except ValueError as e:
            if "blank" not in str(e):
                raise
            continue
        rows.append({"plane": k, "psnr": one["psnr"], "ssim": one["ssim"]})
        if progress is not None:
            progress(Progress("consistency", k + 1, n))
    if not rows:
        raise ValueError("every input plane is blank: no LR consistency")
    return {"psnr": float(np.mean([r["psnr"] for r in rows])),
            "ssim": float(np.mean([r["ssim"] for r in rows])), "n_planes": len(rows),
            "planes": rows, "degradation": deg}
