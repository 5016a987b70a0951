"""Image quality metrics against ground truth (PSNR, SSIM, NRMSE) and the bicubic baseline.

Protocol (../shared/DATA.md): intensities in [0, 1] (uint8 / 255; other dtypes: global
0.1/99.9 percentiles of the ground truth, clipped), metrics per 2-D plane with
``data_range=1``, averaged over non-blank planes.

One rule maps everything that is scored (:func:`intensity_maps`; used by :func:`evaluate`, the
Restore dock, ``add_restored`` / ``score_result`` and ``decrappify evaluate``): the ground truth
(HR) defines the range. Predictions (restored, bicubic) are in the units of the LR input they
were made from; they are first brought into the HR's units (:func:`prediction_units`: a float
LR in [0, 1] beside an integer HR is in the crappifier's unit space, ``crappify.to_unit`` of
the HR's dtype, and is put back with ``crappify.from_unit``; otherwise LR and HR share units),
then the HR, bicubic and restored are all mapped by the HR's range (:func:`reference_range`).
A float LR in 0..255 beside a uint8 HR is therefore scored / 255 like the HR, not by the LR's
own percentiles.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from .crappify import check_image, from_unit

BLANK_STD = 1e-3
# float data within [-UNIT_SLACK, 1 + UNIT_SLACK] counts as in [0, 1] (the crappifier's unit
# space) beside an integer ground truth: room for unclipped noise and a restoration's overshoot.
# Data in an integer HR's own units within that span would be black (at most 1.5 of 255)
UNIT_SLACK = 0.5


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


def _min_max(a) -> tuple[float, float]:
    """Min and max of ``a``: numpy directly, anything else (dask, zarr) streamed in slabs."""
    if isinstance(a, np.ndarray):
        return (float(a.min()), float(a.max())) if a.size else (np.inf, -np.inf)
    vmin, vmax = np.inf, -np.inf
    for slab in _slabs(a):
        if slab.size:
            vmin, vmax = min(vmin, float(slab.min())), max(vmax, float(slab.max()))
    return vmin, vmax


def prediction_units(lr, hr_dtype) -> str:
    """The units of predictions made from ``lr``, next to a ground truth of dtype ``hr_dtype``.

    Parameters
    ----------
    lr : array-like (numpy, dask, zarr ...) or None
        The LR input that the predictions (restored result, bicubic) were made from; they are
        in its intensity units. Without it (``None``), pass the prediction itself: the same
        test then looks at the prediction's values (what :func:`evaluate` does).
    hr_dtype : dtype
        The ground truth's dtype.

    Returns
    -------
    str
        ``"unit"`` when ``lr`` is a float image within [0, 1] (give or take
        :data:`UNIT_SLACK`) and the ground truth an integer image: ``lr`` is then in the
        crappifier's unit space (``crappify.to_unit`` of ``hr_dtype``: uint8 / 255,
        uint16 / 65535, int16 / 32767 ...), and predictions are brought into the HR's units
        with ``crappify.from_unit(x, hr_dtype)``. ``"reference"`` otherwise (also for
        ``None``): LR and HR share units (e.g. a float 0..255 LR beside a uint8 HR, or the same
        dtype), and predictions are used as they are.

    Notes
    -----
    Reads ``lr`` only when it is float and the ground truth integer: its min and max, a numpy
    array at once, anything else in slabs of its first axis as :func:`reference_range` reads a
    lazy reference (memory stays bounded). The answer does not depend on how a model normalises
    its input: a model's output is in the units of the input it was given.
    """
    hr_dtype = np.dtype(hr_dtype)
    if lr is None or not np.issubdtype(hr_dtype, np.integer):
        return "reference"
    if not np.issubdtype(np.dtype(lr.dtype), np.floating):
        return "reference"
    vmin, vmax = _min_max(lr)
    return "unit" if vmin >= -UNIT_SLACK and vmax <= 1 + UNIT_SLACK else "reference"


class IntensityMap:
    """A map of intensities to [0, 1] by a ground truth's range, for numpy or dask arrays.

    ``IntensityMap(mode, lo, hi)(a)`` is :func:`apply_range`; with ``unit_dtype`` (predictions
    in the crappifier's unit space, :func:`prediction_units`), ``a`` is first brought into the
    intensities of an image of that dtype by ``crappify.from_unit``. Build them with
    :func:`intensity_maps`.

    Parameters
    ----------
    mode, lo, hi
        A :func:`reference_range` result.
    unit_dtype : dtype, optional
        The ground truth's dtype, when the mapped data is in [0, 1] unit space.
    """

    def __init__(self, mode: str, lo: float = 0.0, hi: float = 1.0, unit_dtype=None):
        self.mode, self.lo, self.hi = mode, float(lo), float(hi)
        self.unit_dtype = None if unit_dtype is None else np.dtype(unit_dtype)

    def __call__(self, a):
        if self.unit_dtype is not None:
            a = from_unit(a, self.unit_dtype)
        return apply_range(a, self.mode, self.lo, self.hi)

    def __repr__(self) -> str:
        units = f", unit_dtype={self.unit_dtype}" if self.unit_dtype is not None else ""
        return f"IntensityMap({self.mode!r}, {self.lo:g}, {self.hi:g}{units})"


def intensity_maps(hr, lr=None, percentiles=(0.1, 99.9)) -> tuple[IntensityMap, IntensityMap]:
    """The intensity maps for scoring against ``hr``: ``(pred_map, gt_map)``.

    The one rule of this package (module doc): ``gt_map`` maps the ground truth to [0, 1] by
    its own range (:func:`reference_range`: uint8 / 255, float in [0, 1] kept, else its
    ``percentiles``); ``pred_map`` maps predictions made from ``lr`` by the same range, after
    bringing them into the HR's units (:func:`prediction_units`).

    Parameters
    ----------
    hr : array-like (numpy, dask, zarr ...)
        The ground truth; a lazy one is streamed (:func:`reference_range`).
    lr : array-like, optional
        The input the predictions were made from (or, without one, a prediction: see
        :func:`prediction_units`). ``None``: predictions are taken to be in the HR's units.
    percentiles : tuple of float
        Of the ground truth, for dtypes other than uint8 and float in [0, 1].

    Returns
    -------
    pred_map, gt_map : IntensityMap
        Callables on numpy or dask arrays, returning float32 in [0, 1]; the same object when
        predictions are in the HR's units.
    """
    gt_map = IntensityMap(*reference_range(hr, percentiles))
    if prediction_units(lr, hr.dtype) == "unit":
        return IntensityMap(gt_map.mode, gt_map.lo, gt_map.hi, unit_dtype=hr.dtype), gt_map
    return gt_map, gt_map


def psnr(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB of one plane (prediction clipped to the data range)."""
    pred = np.clip(np.asarray(pred, np.float64), 0, data_range)
    gt = np.asarray(gt, np.float64)
    if np.array_equal(pred, gt):  # identical: infinite, without scikit-image's divide warning
        return float("inf")
    return float(peak_signal_noise_ratio(gt, pred, data_range=data_range))


def ssim(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of one plane (scikit-image, 7x7 window)."""
    pred = np.clip(np.asarray(pred, np.float64), 0, data_range)
    return float(structural_similarity(np.asarray(gt, np.float64), pred, data_range=data_range))


def nrmse(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(normalized_root_mse(np.asarray(gt, np.float64), np.asarray(pred, np.float64)))


def _check_pair(pred, gt):
    if isinstance(pred, np.ndarray) and isinstance(gt, np.ndarray):
        pred = check_image(pred, "prediction")
        gt = check_image(gt, "ground truth")
    else:  # lazy (dask, zarr): everything but the values now, those plane by plane
        for name, a in (("prediction", pred), ("ground truth", gt)):
            check_image(np.empty((1,) * a.ndim, a.dtype), name)
            if a.size == 0:
                raise ValueError(f"{name} is empty (shape {a.shape})")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    return pred, gt


def _check_unit_range(pred: np.ndarray, gt: np.ndarray) -> None:
    """``normalised=True`` promises [0, 1] data: a uint8 ground truth or a restoration in
    0..255 units scored -43.7 dB for identical images instead of an error."""
    why = None
    if not np.issubdtype(gt.dtype, np.floating) or not np.issubdtype(pred.dtype, np.floating):
        why = f"integer data ({pred.dtype} / {gt.dtype})"
    elif (g := _min_max(gt))[0] < -1e-3 or g[1] > 1 + 1e-3:
        why = f"a ground truth in [{g[0]:.4g}, {g[1]:.4g}]"
    elif (q := _min_max(pred))[0] < -0.5 or q[1] > 1.5:  # restorations overshoot a little
        why = f"a prediction in [{q[0]:.4g}, {q[1]:.4g}]"
    if why:
        raise ValueError(f"normalised=True needs both images in [0, 1], got {why}: pass "
                         "normalised=False to map them (uint8 / 255, else the ground truth's "
                         "0.1/99.9 percentiles)")


SCORE_TILE = 2048  # planes over 4 tiles of this side are scored tile by tile
_SSIM_PAD = 3  # half of SSIM's 7 x 7 window: scikit-image averages its map this far inside


def _finite(a: np.ndarray, name: str) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"the {name} contains NaN or inf values")
    return a


def _plane_scores(pred, gt, pred_map, gt_map) -> dict | None:
    """PSNR / SSIM / NRMSE of one plane (None when the ground truth's plane is blank).

    A plane up to 4 x :data:`SCORE_TILE`^2 pixels is read whole and scored by :func:`psnr`,
    :func:`ssim` and :func:`nrmse`. A larger one (a 100 000^2 plane read whole took 13 GiB) is
    read tile by tile with a 3-pixel halo: the squared errors and SSIM's map (exact where its
    7 x 7 window fits, which is where scikit-image averages it) are summed over the tiles, so
    the figures are those of the whole plane up to the order of the sums."""
    h, w = gt.shape
    t = SCORE_TILE

    def read(a, m, name, region=...):
        a = _finite(np.asarray(a[region]), name)
        return np.asarray(m(a) if m is not None else a, np.float64)

    if h * w <= 4 * t * t:
        a, b = read(pred, pred_map, "prediction"), read(gt, gt_map, "ground truth")
        if float(np.std(b)) < BLANK_STD:
            return None
        return {"psnr": psnr(a, b), "ssim": ssim(a, b), "nrmse": nrmse(a, b)}
    pad = _SSIM_PAD
    sse = sse_clipped = gt_sum = gt_sq = ssim_sum = 0.0
    n = ssim_n = 0
    for y0 in range(0, h, t):
        for x0 in range(0, w, t):
            y1, x1 = min(h, y0 + t), min(w, x0 + t)
            ya, xa = max(0, y0 - pad), max(0, x0 - pad)
            region = (slice(ya, min(h, y1 + pad)), slice(xa, min(w, x1 + pad)))
            a, b = read(pred, pred_map, "prediction", region), read(gt, gt_map, "ground truth",
                                                                     region)
            core = (slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
            ac, bc = a[core], b[core]
            sse += float(((ac - bc) ** 2).sum())
            sse_clipped += float(((np.clip(ac, 0, 1) - bc) ** 2).sum())
            gt_sum, gt_sq, n = gt_sum + float(bc.sum()), gt_sq + float((bc ** 2).sum()), n + bc.size
            sy0, sy1 = max(y0, pad), min(y1, h - pad)
            sx0, sx1 = max(x0, pad), min(x1, w - pad)
            if sy1 > sy0 and sx1 > sx0:
                _, full = structural_similarity(b, np.clip(a, 0, 1), data_range=1.0, full=True)
                inside = full[sy0 - ya:sy1 - ya, sx0 - xa:sx1 - xa]
                ssim_sum, ssim_n = ssim_sum + float(inside.sum()), ssim_n + inside.size
    mean = gt_sum / n
    if np.sqrt(max(gt_sq / n - mean * mean, 0.0)) < BLANK_STD:
        return None
    mse = sse_clipped / n
    return {"psnr": float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"),
            "ssim": ssim_sum / ssim_n, "nrmse": float(np.sqrt(sse / n) / np.sqrt(gt_sq / n))}


def evaluate(pred: np.ndarray, gt: np.ndarray, *, normalised: bool = True, lr=None) -> dict:
    """PSNR / SSIM / NRMSE per 2-D plane and their mean over non-blank ground-truth planes.

    Parameters
    ----------
    pred, gt : arrays of the same shape ``(..., Y, X)``
        With ``normalised=True`` both are already in [0, 1]. Otherwise they are mapped by the
        package's one rule (:func:`intensity_maps`): both by the ground truth's range
        (uint8 / 255, float in [0, 1] kept, else its 0.1/99.9 percentiles), ``pred`` after being
        brought into the ground truth's units. Without ``lr`` that is decided from ``pred``
        itself: a float ``pred`` within [0, 1] (give or take :data:`UNIT_SLACK`, for overshoot)
        beside an integer ``gt`` is in the crappifier's unit space and is put back with
        ``crappify.from_unit(pred, gt.dtype)``; any other ``pred`` is taken to be in ``gt``'s
        units (e.g. a float 0..255 restoration beside a uint8 ground truth).
    normalised : bool
        Whether ``pred`` and ``gt`` are in [0, 1] already (default); a ValueError says so when
        they clearly are not.
    lr : array-like, optional
        With ``normalised=False``: the input ``pred`` was restored from. Its units decide
        (:func:`prediction_units`), as in the Restore dock, instead of ``pred``'s values.

    Returns
    -------
    dict
        ``psnr``, ``ssim``, ``nrmse`` (means), ``n_planes`` and ``planes`` (one row per scored
        plane, with its flat index ``plane``).
    """
    pred, gt = _check_pair(pred, gt)
    if not normalised:
        pred_map, gt_map = intensity_maps(gt, pred if lr is None else lr)
    else:
        _check_unit_range(pred, gt)
        pred_map = gt_map = None
    planes = []
    for i, idx in enumerate(np.ndindex(*gt.shape[:-2])):
        row = _plane_scores(pred[idx], gt[idx], pred_map, gt_map)
        if row is not None:
            planes.append({"plane": i, **row})
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
