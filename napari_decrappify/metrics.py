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
    mode, lo, hi = reference_range(reference if reference is not None else a, percentiles)
    return apply_range(a, mode, lo, hi)


def apply_range(a, mode: str, lo: float = 0.0, hi: float = 1.0):
    """Map ``a`` (numpy or dask) to [0, 1] float32 by a :func:`reference_range` result."""
    if mode == "uint8":
        return (a.astype(np.float32) / 255.0).clip(0, 1)
    if mode == "unit":
        return a.astype(np.float32).clip(0, 1)
    # in float64 (numpy scalars), then float32: the values unit_range has always given. Data
    # that float32 cannot hold exactly (float64, 32/64-bit integers: 1e8 + k) is subtracted in
    # float64 too, or an offset image collapsed to a few levels
    exact32 = np.dtype(a.dtype) == np.float32 or np.dtype(a.dtype).itemsize <= 2
    span = np.float64(max(hi - lo, 1e-12))
    x = a.astype(np.float32 if exact32 else np.float64)
    return ((x - np.float64(lo)) / span).clip(0, 1).astype(np.float32)


HISTOGRAM_BINS = 1 << 20  # percentiles of out-of-memory float data: within (max - min) / 2**20
STREAM_VALUES = 1 << 22  # values per read when streaming a lazy reference (then chunk-aligned)


def _slabs(reference):
    """``reference`` as numpy slabs along its first axis of about :data:`STREAM_VALUES` values,
    aligned to its chunks there: reading a 2-D image row by row made one dask computation (and
    one decompression of every chunk it crosses) per row."""
    if reference.ndim == 0:
        yield np.asarray(reference)
        return
    n = reference.shape[0]
    per_index = max(1, int(np.prod(reference.shape[1:], dtype=np.int64)))
    step = max(1, STREAM_VALUES // per_index)
    chunks = getattr(reference, "chunks", None)
    if chunks:  # dask: a tuple of tuples; zarr: a tuple of ints
        c = chunks[0][0] if isinstance(chunks[0], tuple) else chunks[0]
        if c and c > 1 and step >= c:
            step = step // c * c
        elif c and c > 1 and c * per_index <= 4 * STREAM_VALUES:
            step = c  # a whole chunk, if not much more than the budget (thick z chunks of
            # large planes stay partial reads: memory first)
    for i in range(0, n, step):
        yield np.asarray(reference[i: i + step] if step > 1 else reference[i])


def _check_finite(plane: np.ndarray) -> None:
    if np.issubdtype(plane.dtype, np.floating) and not np.isfinite(plane).all():
        raise ValueError("the reference image (ground truth) contains NaN or inf values: no "
                         "intensity range; replace them (e.g. np.nan_to_num) first")


def reference_range(reference, percentiles=(0.1, 99.9), *, shortcuts: bool = True,
                    ) -> tuple[str, float, float]:
    """How :func:`unit_range` maps to [0, 1] with ``reference``: ``(mode, lo, hi)``.

    ``mode`` is ``"uint8"`` (divide by 255), ``"unit"`` (float data already in [0, 1]: clip) or
    ``"percentile"`` (``lo``, ``hi``: the ``percentiles`` of ``reference``, as ``np.percentile``).

    A numpy array is used as it is. Anything else (a dask or zarr array, e.g. a ground truth
    larger than memory) is read in slabs of the first axis (:data:`STREAM_VALUES` values,
    chunk-aligned), so memory stays bounded: uint8 reads nothing; float min/max are streamed;
    percentiles of integer data of up to 16 bits are exact, from one histogram of all values;
    those of other data come from a histogram of 2**20 bins between the min and the max (within
    (max - min) / 2**20 of exact; a constant image is exact). Float data with NaN or inf is
    refused with a ValueError. ``shortcuts=False`` always measures the percentiles (mode
    ``"percentile"``), for uint8 and [0, 1] float data too.
    """
    dtype = np.dtype(reference.dtype)
    if dtype == np.uint8 and shortcuts:
        return "uint8", 0.0, 255.0
    if isinstance(reference, np.ndarray):
        _check_finite(reference)
        if (shortcuts and np.issubdtype(dtype, np.floating) and reference.min() >= 0
                and reference.max() <= 1):
            return "unit", 0.0, 1.0
        lo, hi = np.percentile(reference, percentiles)
        return "percentile", float(lo), float(hi)

    exact = np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2
    if exact:  # one bin per value of the dtype: a single pass over the data
        info = np.iinfo(dtype)
        offset, bins, width = int(info.min), int(info.max) - int(info.min) + 1, 1.0
    else:  # a first pass for the range (and the "unit" test), then the histogram
        n, vmin, vmax = 0, np.inf, -np.inf
        for plane in _slabs(reference):
            if plane.size:
                _check_finite(plane)
                n += plane.size
                vmin, vmax = min(vmin, float(plane.min())), max(vmax, float(plane.max()))
        if n == 0:
            raise ValueError("the reference image is empty: no intensity range")
        if shortcuts and np.issubdtype(dtype, np.floating) and vmin >= 0 and vmax <= 1:
            return "unit", 0.0, 1.0
        if vmax == vmin:  # every percentile is that value (a made-up bin width shifted it)
            return "percentile", vmin, vmin
        offset, bins = vmin, HISTOGRAM_BINS
        width = (vmax - vmin) / bins
    counts = np.zeros(bins, np.int64)
    for plane in _slabs(reference):
        if exact:
            idx = plane.astype(np.int64).ravel() - offset
        else:
            idx = np.minimum(((plane.astype(np.float64).ravel() - offset) / width).astype(np.int64),
                             bins - 1)
        counts += np.bincount(idx, minlength=bins)
    cum = np.cumsum(counts)
    n = int(cum[-1])
    if n == 0:
        raise ValueError("the reference image is empty: no intensity range")

    def order_stat(k: int) -> float:
        """The k-th smallest value (0-based): exact for one-value bins, else the bin's value
        interpolated by rank."""
        b = int(np.searchsorted(cum, k, side="right"))
        if exact:
            return float(offset + b)
        before = int(cum[b - 1]) if b else 0
        return float(offset + width * (b + (k - before + 0.5) / max(int(counts[b]), 1)))

    out = []
    for q in percentiles:  # np.percentile's default ("linear"): rank q/100 * (n - 1)
        r = q / 100 * (n - 1)
        k = int(np.floor(r))
        a = order_stat(k)
        b = order_stat(min(k + 1, n - 1))
        out.append(a + (r - k) * (b - a))
    return "percentile", out[0], out[1]


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
