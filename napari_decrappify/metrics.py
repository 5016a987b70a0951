"""Image quality metrics against ground truth (PSNR, SSIM, NRMSE) and the bicubic baseline.

Protocol (../shared/DATA.md): intensities in [0, 1] (uint8 / 255; other dtypes: global
0.1/99.9 percentiles of the ground truth, clipped), metrics per 2-D plane with
``data_range=1``, averaged over non-blank planes.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from .crappify import check_image

BLANK_STD = 1e-3


def unit_range(image: np.ndarray, reference: np.ndarray | None = None,
               percentiles=(0.1, 99.9)) -> np.ndarray:
    """Map to [0, 1]: uint8 / 255; otherwise by the percentiles of ``reference`` (or itself)."""
    a = np.asarray(image)
    ref = np.asarray(reference) if reference is not None else a
    if ref.dtype == np.uint8:
        return np.clip(a.astype(np.float32) / 255.0, 0, 1)
    if np.issubdtype(ref.dtype, np.floating) and ref.min() >= 0 and ref.max() <= 1:
        return np.clip(a.astype(np.float32), 0, 1)
    lo, hi = np.percentile(ref, percentiles)
    return np.clip((a.astype(np.float32) - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)


def psnr(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB of one plane (prediction clipped to the data range)."""
    pred = np.clip(np.asarray(pred, np.float64), 0, data_range)
    return float(peak_signal_noise_ratio(np.asarray(gt, np.float64), pred, data_range=data_range))


def ssim(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of one plane (scikit-image, 7x7 window)."""
    pred = np.clip(np.asarray(pred, np.float64), 0, data_range)
    return float(structural_similarity(np.asarray(gt, np.float64), pred, data_range=data_range))


def nrmse(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(normalized_root_mse(np.asarray(gt, np.float64), np.asarray(pred, np.float64)))


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = check_image(pred, "prediction")
    gt = check_image(gt, "ground truth")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    return pred, gt


def _check_unit_range(pred: np.ndarray, gt: np.ndarray) -> None:
    """``normalised=True`` promises [0, 1] data: a uint8 ground truth or a restoration in
    0..255 units scored -43.7 dB for identical images instead of an error."""
    why = None
    if not np.issubdtype(gt.dtype, np.floating) or not np.issubdtype(pred.dtype, np.floating):
        why = f"integer data ({pred.dtype} / {gt.dtype})"
    elif float(gt.min()) < -1e-3 or float(gt.max()) > 1 + 1e-3:
        why = f"a ground truth in [{float(gt.min()):.4g}, {float(gt.max()):.4g}]"
    elif float(pred.min()) < -0.5 or float(pred.max()) > 1.5:  # restorations overshoot a little
        why = f"a prediction in [{float(pred.min()):.4g}, {float(pred.max()):.4g}]"
    if why:
        raise ValueError(f"normalised=True needs both images in [0, 1], got {why}: pass "
                         "normalised=False to map them (uint8 / 255, else the ground truth's "
                         "0.1/99.9 percentiles)")


def evaluate(pred: np.ndarray, gt: np.ndarray, *, normalised: bool = True) -> dict:
    """PSNR / SSIM / NRMSE per 2-D plane and their mean over non-blank ground-truth planes.

    Parameters
    ----------
    pred, gt : arrays of the same shape ``(..., Y, X)``
        With ``normalised=True`` both are already in [0, 1]; otherwise they are mapped with
        :func:`unit_range` using the ground truth's range.
    """
    pred, gt = _check_pair(pred, gt)
    if not normalised:
        pred, gt = unit_range(pred, gt), unit_range(gt)
    else:
        _check_unit_range(pred, gt)
    p = pred.reshape(-1, *pred.shape[-2:])
    g = gt.reshape(-1, *gt.shape[-2:])
    planes = []
    for i, (a, b) in enumerate(zip(p, g, strict=True)):
        if float(np.std(b)) < BLANK_STD:
            continue
        planes.append({"plane": i, "psnr": psnr(a, b), "ssim": ssim(a, b), "nrmse": nrmse(a, b)})
    if not planes:
        raise ValueError("every ground-truth plane is blank: nothing to score")
    mean = {k: float(np.mean([r[k] for r in planes])) for k in ("psnr", "ssim", "nrmse")}
    return {**mean, "n_planes": len(planes), "planes": planes}


def bicubic_upsample(lr: np.ndarray, scale: int) -> np.ndarray:
    """The baseline: ``skimage.transform.resize(order=3, mode='reflect')`` on Y, X."""
    from skimage.transform import resize

    lr = np.asarray(lr, np.float32)
    if scale == 1:
        return lr.copy()
    shape = lr.shape[:-2] + (lr.shape[-2] * scale, lr.shape[-1] * scale)
    return resize(lr, shape, order=3, mode="reflect", anti_aliasing=False).astype(np.float32)
