"""Fitting a degradation to a real registered LR/HR pair: the crappifier the other way round.

:func:`fit` estimates the parameters (scale, blur, Poisson photons, read noise, salt-and-pepper)
that make a :class:`~napari_decrappify.degradation.Crappifier`'s synthetic LR match the real
LR's statistics, and reports how well they match (:class:`FitResult`: the variance line's R^2 and
the power-spectrum error, :func:`radial_power_spectrum`). :func:`infer_scale` checks the scale of
a pair against both axes; training on real pairs uses it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .config import CrappifyConfig, check_scale
from .degradation import Crappifier, _downsample, blur
from .intensity_scale import check_image, to_unit


@dataclass
class FitResult:
    """Degradation parameters estimated from a real LR/HR pair by :func:`fit`.

    Intensities are in HR units mapped to [0, 1] (:func:`to_unit`); ``gain`` and ``offset``
    relate them to the real LR (``lr ~ gain * synthetic + offset``), so noise levels are comparable
    to :class:`CrappifyConfig`'s even when the LR detector had another gain.

    Attributes
    ----------
    scale, downsample, blur_sigma, photons, read_noise, salt_pepper
        The fitted :class:`CrappifyConfig` parameters (``photons`` is None when the noise
        variance does not grow with intensity, i.e. no shot noise was detected).
    gain, offset : float
        Linear intensity map from synthetic LR to real LR.
    r2_variance : float
        Weighted R^2 of the line ``variance = intensity / photons + read_noise^2`` through the
        binned residual variances (1 is a perfect line; near 0 when the variance is flat, i.e.
        read noise only, whatever the fit quality: read ``variance_rel_error`` then).
    variance_rel_error : float
        Median relative error of that line against the binned variances.
    psd_log_error : float
        Mean absolute log10 ratio of the radially averaged power spectra of synthetic LR (made
        with the fitted parameters) and real LR, over all non-zero spatial frequencies
        (0 = identical; 0.1 = spectra within ~26% on average).
    mse : dict
        Residual mean squared error of the noise-free model per downsampling method tried.
    bins : dict
        The binned intensity, variance and pixel count behind the variance fit, and which bins
        were used (bins where clipping at the intensity extremes biases the variance are not).
    psd : dict
        Spatial frequency (cycles per LR pixel) and the two radial power spectra.
    """

    scale: int
    downsample: str
    blur_sigma: float
    photons: float | None
    read_noise: float
    salt_pepper: float
    gain: float
    offset: float
    r2_variance: float
    variance_rel_error: float
    psd_log_error: float
    n_pixels: int
    planes: list[int]
    mse: dict = field(default_factory=dict)
    bins: dict = field(default_factory=dict)
    psd: dict = field(default_factory=dict)

    def to_config(self, **overrides) -> CrappifyConfig:
        """The :class:`CrappifyConfig` that reproduces the real LR (``overrides`` replace fields)."""
        options = dict(scale=self.scale, downsample=self.downsample,
                       blur_sigma=round(self.blur_sigma, 4), photons=self.photons,
                       read_noise=round(self.read_noise, 6), salt_pepper=round(self.salt_pepper, 6))
        options.update(overrides)
        return CrappifyConfig(**options)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One human-readable paragraph: the parameters and the goodness-of-fit figures."""
        photons = "none detected" if self.photons is None else f"{self.photons:.1f}"
        return (f"scale {self.scale}x ({self.downsample}), blur sigma {self.blur_sigma:.2f} HR px, "
                f"photons at intensity 1: {photons}, read noise {self.read_noise:.4f}, "
                f"salt-and-pepper {self.salt_pepper:.4%}, gain {self.gain:.3f}, offset "
                f"{self.offset:+.4f}; variance line R^2 {self.r2_variance:.3f} (median rel. error "
                f"{self.variance_rel_error:.1%}), power-spectrum log10 error {self.psd_log_error:.3f} "
                f"({self.n_pixels} LR pixels, planes {self.planes})")


def infer_scale(lr_shape_yx: Sequence[int], hr_shape_yx: Sequence[int], scale=None) -> int:
    """The integer scale of a registered LR/HR pair, checked against both axes.

    HR may be up to ``scale - 1`` pixels larger than ``scale * LR`` on each axis (what a crop to a
    multiple of the scale leaves out); anything else is an error naming the shapes.
    """
    (ly, lx), (hy, hx) = tuple(lr_shape_yx)[-2:], tuple(hr_shape_yx)[-2:]
    if min(ly, lx) < 1:
        raise ValueError(f"LR image is empty ({ly} x {lx})")
    if scale is None:
        guess = int(round(hy / ly))
        if guess < 1 or float(hy / ly) < 0.999:
            raise ValueError(f"LR ({ly} x {lx}) is not smaller than HR ({hy} x {hx}): "
                             "pass the LR image first, then the HR image")
        scale = guess
    scale = check_scale(scale)
    if (hy // scale, hx // scale) != (ly, lx):
        raise ValueError(
            f"LR/HR shapes do not match scale {scale}: LR {ly} x {lx}, HR {hy} x {hx} (expected HR "
            f"of {ly * scale}..{ly * scale + scale - 1} x {lx * scale}..{lx * scale + scale - 1}); "
            "are the images registered and is the scale right?")
    return scale


def radial_power_spectrum(planes: np.ndarray, bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of ``(n, Y, X)`` planes (mean removed, Hann window).

    Returns ``(frequency, power)`` with frequency in cycles per pixel (0..0.5], DC excluded.
    """
    planes = np.asarray(planes, np.float64)
    n, h, w = planes.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    power = np.zeros((h, w))
    for p in planes:
        f = np.fft.fft2((p - p.mean()) * win)
        power += np.abs(f) ** 2
    power /= n
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    radius = np.hypot(fy, fx)
    bins = bins or max(4, min(h, w) // 2)
    edges = np.linspace(0, 0.5, bins + 1)
    which = np.digitize(radius.ravel(), edges) - 1
    ok = (which >= 0) & (which < bins) & (radius.ravel() > 0)
    total = np.bincount(which[ok], power.ravel()[ok], bins)
    count = np.bincount(which[ok], minlength=bins)
    keep = count > 0
    centres = 0.5 * (edges[:-1] + edges[1:])
    return centres[keep], total[keep] / count[keep]


def _norm_cdf(z):
    from scipy.special import ndtr

    return ndtr(z)


def fit(lr: np.ndarray, hr: np.ndarray, scale: int | None = None, *, downsample: str = "mean",
        max_planes: int = 8, max_sigma: float | None = None, n_bins: int = 32,
        seed: int = 0) -> FitResult:
    """Estimate the degradation that turns ``hr`` into the real ``lr`` of a registered pair.

    The model is the one :class:`Crappifier` simulates: ``lr = gain * noise(downsample(blur(hr)))
    + offset`` with Poisson shot noise (variance ``u / photons`` at intensity ``u``), Gaussian read
    noise and salt-and-pepper pixels, clipped to the LR's intensity range.

    1. **scale** from the shape ratio (checked on both axes; see :func:`infer_scale`);
    2. **blur sigma** (and the downsampling method when ``downsample="auto"``): the sigma that
       makes ``downsample(blur(hr, sigma))`` best match ``lr`` after a linear intensity fit
       (least squares; the noise does not depend on sigma, so it does not bias the minimum);
    3. **photons, read noise**: the residual ``lr - model`` is binned by model intensity; its
       variance per bin is fitted by weighted linear least squares as
       ``var = gain^2 * (u / photons + read^2)``. Bins near the clipping levels are left out
       (clipping shrinks the variance there);
    4. **salt-and-pepper**: the fraction of pixels at the LR's extreme values in bins where noise
       alone cannot reach them;
    5. goodness of fit: R^2 of the variance line and the power-spectrum log-ratio error between a
       synthetic LR made with the fitted parameters and the real LR.

    Parameters
    ----------
    lr, hr : array
        Registered pair, 2-D planes or stacks with the same number of planes (Y, X last); uint8,
        uint16 or float (see :func:`to_unit`).
    scale : int, optional
        Checked against the shapes; inferred from them when None.
    downsample : {"mean", "bilinear", "bicubic", "auto"}
        ``"mean"`` (default) is what a larger camera pixel records; ``"auto"`` tries all three.
    max_planes : int
        Fit on at most this many (evenly spaced, non-constant) planes, for speed.
    max_sigma : float, optional
        Largest blur sigma searched, in HR pixels (default ``2 * scale + 2``).
    n_bins : int
        Intensity bins for the variance fit.
    seed : int
        Seed of the synthetic LR used for the power-spectrum comparison.

    Returns
    -------
    FitResult

    Examples
    --------
    >>> from napari_decrappify.crappify import Crappifier, fit
    >>> from napari_decrappify.samples import synthetic_em
    >>> hr = synthetic_em((2, 192, 192))
    >>> lr = Crappifier.from_options(scale=2, photons=100, read_noise=0.03)(hr, seed=1)
    >>> result = fit(lr, hr)
    >>> result.scale, round(result.photons, -1)  # doctest: +SKIP
    (2, 100.0)
    """
    lr_a = check_image(lr, "LR image")
    hr_a = check_image(hr, "HR image")
    if lr_a.ndim != hr_a.ndim or lr_a.shape[:-2] != hr_a.shape[:-2]:
        raise ValueError(f"LR {lr_a.shape} and HR {hr_a.shape} do not have the same planes "
                         "(all axes but Y, X must match)")
    s = infer_scale(lr_a.shape[-2:], hr_a.shape[-2:], scale)
    ly, lx = lr_a.shape[-2:]
    if ly * lx < 32 * 32:
        raise ValueError(f"LR planes of {ly} x {lx} pixels are too small to fit noise statistics "
                         "(need at least 32 x 32)")
    methods = ("mean", "bilinear", "bicubic") if downsample == "auto" else (downsample,)
    for m in methods:
        if m not in ("mean", "bilinear", "bicubic"):
            raise ValueError(f"unknown downsampling method {m!r} (mean, bilinear, bicubic, auto)")
    lr_p = to_unit(lr_a).reshape(-1, ly, lx).astype(np.float64)
    hr_p = to_unit(hr_a).reshape(-1, *hr_a.shape[-2:])[..., : ly * s, : lx * s]
    usable = [i for i in range(len(lr_p)) if lr_p[i].std() > 0 and hr_p[i].std() > 0]
    if not usable:
        raise ValueError("the LR or HR image is constant (every plane): nothing to fit")
    if len(usable) > max_planes:
        usable = [usable[int(round(j))] for j in np.linspace(0, len(usable) - 1, max_planes)]
    lr_p, hr_p = lr_p[usable], hr_p[usable]

    # Pixels at the LR's extreme values are clipped (or salt-and-pepper hits): they say nothing
    # about the mean or the variance, so every fit below leaves them out.
    lo, hi = float(lr_p.min()), float(lr_p.max())
    extreme = (lr_p <= lo) | (lr_p >= hi)
    if (~extreme).sum() < 1000:
        raise ValueError("almost every LR pixel is at its minimum or maximum value (saturated "
                         "or empty image): nothing to fit")

    def model(sigma: float, method: str) -> np.ndarray:
        x = blur(hr_p, sigma) if sigma > 0 else hr_p
        return _downsample(x, s, method).astype(np.float64)

    max_sigma = float(max_sigma if max_sigma is not None else 2 * s + 2)
    # Pass 1 fits the mean on every non-extreme pixel. Near a clipping level that keeps only
    # the pixels whose noise pulled them away from it, which biases the mean; pass 2 refits
    # without the pixels where pass 1's noise model says clipping is likely.
    mask = ~extreme
    for _ in range(2):
        method, sigma, mse_by_method, pred, gain, offset = _fit_mean(
            lr_p, mask, model, methods, max_sigma)
        rows, used, k_slope, c_icpt = _fit_noise(lr_p, pred, gain, offset, extreme, lo, hi, n_bins)
        sd = np.sqrt(np.maximum(k_slope, 0) * pred + max(c_icpt, 0)) + 1e-12
        m = gain * pred + offset
        p_clip = _norm_cdf((lo - m) / sd) + 1 - _norm_cdf((hi - m) / sd)
        mask = ~extreme & (p_clip < 1e-3)
        if mask.sum() < 1000:
            break
    g2 = gain**2
    photons = None if k_slope <= 0 else float(g2 / k_slope)
    read = float(np.sqrt(max(c_icpt, 0.0) / g2))
    xu, vu, nu = rows[used, 0], rows[used, 1], rows[used, 2]
    fitted = np.maximum(k_slope, 0) * xu + max(c_icpt, 0)
    w = nu / np.maximum(fitted, 1e-12) ** 2
    mean_w = np.sum(w * vu) / np.sum(w)
    ss_tot = float(np.sum(w * (vu - mean_w) ** 2))
    ss_res = float(np.sum(w * (vu - fitted) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    rel_err = float(np.median(np.abs(fitted - vu) / vu))

    # ---- salt-and-pepper: extreme pixels where noise cannot put them (half go each way)
    # counted where noise cannot reach a clipping level, so extremes there are hits
    far = rows[:, 5] < 1e-3
    if far.sum() < 3:
        far = rows[:, 5] <= np.median(rows[:, 5])
    hits, pix = rows[far, 4].sum(), rows[far, 3].sum()
    expected = float(np.sum(rows[far, 5] * rows[far, 3]))
    salt = float(max(hits - expected, 0) / pix) if hits > 2 else 0.0

    result = FitResult(
        scale=s, downsample=method, blur_sigma=sigma, photons=photons, read_noise=read,
        salt_pepper=salt, gain=gain, offset=offset, r2_variance=float(r2),
        variance_rel_error=rel_err, psd_log_error=float("nan"), n_pixels=int(lr_p.size),
        planes=usable, mse={k: float(v) for k, v in mse_by_method.items()},
        bins={"intensity": rows[:, 0].tolist(), "variance": rows[:, 1].tolist(),
              "count": rows[:, 2].astype(int).tolist(), "used": used.tolist()},
    )
    # ---- goodness of fit in the frequency domain: synthetic LR against real LR
    config = result.to_config(clip=True)
    synth = Crappifier(config.model_copy(update={"clip": False}))(hr_p, seed=seed)
    synth = np.clip(gain * synth.astype(np.float64) + offset, lo, hi)
    freq, p_real = radial_power_spectrum(lr_p)
    _, p_syn = radial_power_spectrum(synth)
    good = (p_real > 0) & (p_syn > 0)
    result.psd_log_error = float(np.mean(np.abs(np.log10(p_syn[good] / p_real[good]))))
    result.psd = {"frequency": freq.tolist(), "real": p_real.tolist(), "synthetic": p_syn.tolist()}
    return result


def _fit_mean(lr_p, mask, model, methods, max_sigma):
    """Blur sigma (and method) minimising the residual MSE after a linear intensity fit."""
    from scipy.optimize import minimize_scalar

    y = lr_p[mask]

    def linfit(pred: np.ndarray) -> tuple[float, float, float]:
        x = pred[mask]
        A = np.stack([x, np.ones_like(x)], 1)
        (a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
        return float(a), float(b), float(np.mean((y - a * x - b) ** 2))

    grid = np.arange(0.0, max_sigma + 1e-9, 0.5)
    best = None
    mse_by_method = {}
    for method in methods:
        errs = [linfit(model(g, method))[2] for g in grid]
        k = int(np.argmin(errs))
        lo_s, hi_s = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
        res = minimize_scalar(lambda g, m=method: linfit(model(g, m))[2], bounds=(lo_s, hi_s),
                              method="bounded", options={"xatol": 0.005})
        sigma, err = (float(res.x), float(res.fun)) if res.fun <= errs[k] else (float(grid[k]), errs[k])
        mse_by_method[method] = err
        if best is None or err < best[2]:
            best = (method, sigma, err)
    method, sigma, _ = best
    if sigma < 0.02:
        sigma = 0.0
    pred = model(sigma, method)
    gain, offset, _ = linfit(pred)
    if not abs(gain) > 1e-6:
        raise ValueError("the LR does not follow the HR at all (fitted gain ~ 0): are the images "
                         "a registered pair?")
    return method, sigma, {k: float(v) for k, v in mse_by_method.items()}, pred, gain, offset


def _fit_noise(lr_p, pred, gain, offset, extreme, lo, hi, n_bins):
    """Residual variance against model intensity in bins of equal pixel count, and the line
    ``var = k * u + c`` through the bins that clipping does not bias.

    Returns ``rows`` (per bin: mean intensity, variance, pixels used, pixels, extreme pixels,
    clipping probability), the mask of bins used, ``k`` and ``c``.
    """
    u = pred.ravel()
    mean = (gain * pred + offset).ravel()
    y = lr_p.ravel()
    r = y - mean
    ext = extreme.ravel()
    n_bins = int(max(4, min(n_bins, u.size // 200)))
    edges = np.unique(np.quantile(u, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        sel = which == b
        good = sel & ~ext
        if good.sum() < 50:
            continue
        rb = r[good]
        robust = 1.4826 * float(np.median(np.abs(rb - np.median(rb))))
        var = float(rb.var(ddof=1))
        sd = max(robust, np.sqrt(var), 1e-12)
        m_lo = gain * float(u[sel].min()) + offset
        m_hi = gain * float(u[sel].max()) + offset
        if gain < 0:
            m_lo, m_hi = m_hi, m_lo
        # chance that noise alone reaches a clipping level from this bin's intensities
        p_clip = float(_norm_cdf((lo - m_lo) / sd) + 1 - _norm_cdf((hi - m_hi) / sd))
        censored = sel & ext
        # clipped pixels are those noise can take to the level; the others are salt-and-pepper
        # hits, which say nothing about the variance
        at_lo = y <= lo
        reach = np.where(at_lo, _norm_cdf((lo - mean) / sd), 1 - _norm_cdf((hi - mean) / sd))
        censored &= reach > 1e-4
        if p_clip >= 1e-3 and censored.any():
            # Dropping the clipped pixels truncates the distribution and shrinks the variance
            # (a dark, clipped fluorescence background gave photons 75 for 100): estimate it as
            # a censored normal instead, clipped pixels counting as "at or beyond the level"
            var = _censored_variance(y[good], mean[good], y[censored] <= lo, mean[censored],
                                     lo, hi, sd)
        rows.append((float(u[good].mean()), var, int(good.sum()), int(sel.sum()),
                     int((sel & ext).sum()), p_clip))
    if len(rows) < 3:
        raise ValueError("too few intensity levels to fit the noise (is the HR nearly constant?)")
    rows = np.array(rows)
    # bins mostly beyond a clipping level carry too little about their variance
    used = rows[:, 4] <= 0.5 * rows[:, 3]
    if used.sum() < 3:
        used = rows[:, 4] <= np.median(rows[:, 4])
    k, c = _wls_line(rows[used, 0], rows[used, 1], rows[used, 2])
    return rows, used, k, c


def _censored_variance(y, m, at_lo, m_cens, lo, hi, sd0) -> float:
    """Maximum-likelihood variance of ``y ~ N(m, sigma^2)`` when some samples were clipped
    (Tobit): ``y`` and ``m`` are the unclipped samples and their means, ``m_cens`` the means of
    the clipped ones and ``at_lo`` whether each was clipped at ``lo`` (else at ``hi``)."""
    from scipy.optimize import minimize_scalar
    from scipy.stats import norm

    m_lo, m_hi = m_cens[at_lo], m_cens[~at_lo]

    def nll(log_sigma: float) -> float:
        sigma = np.exp(log_sigma)
        z = (y - m) / sigma
        return float(0.5 * np.sum(z * z) + y.size * log_sigma
                     - np.sum(norm.logcdf((lo - m_lo) / sigma))
                     - np.sum(norm.logsf((hi - m_hi) / sigma)))

    centre = np.log(max(sd0, 1e-9))
    res = minimize_scalar(nll, bounds=(centre - 3, centre + 3), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(2 * res.x))


def _wls_line(x: np.ndarray, v: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """Fit ``v = k * x + c`` (k, c >= 0) by least squares weighted with the inverse variance of a
    sample variance (``2 v^2 / (n - 1)``), evaluated at an unweighted first fit."""

    def solve(weights, with_slope=True, with_icpt=True):
        cols = ([x] if with_slope else []) + ([np.ones_like(x)] if with_icpt else [])
        A = np.stack(cols, 1) * np.sqrt(weights)[:, None]
        coef, *_ = np.linalg.lstsq(A, v * np.sqrt(weights), rcond=None)
        coef = list(coef)
        k = coef.pop(0) if with_slope else 0.0
        c = coef.pop(0) if with_icpt else 0.0
        return float(k), float(c)

    k, c = solve(np.ones_like(x))
    for _ in range(2):
        pred = np.maximum(k * x + c, 1e-12)
        w = (n - 1) / (2 * pred**2)
        k, c = solve(w)
    # A slope within two standard errors of zero is no evidence of shot noise: flat variance.
    A = np.stack([x, np.ones_like(x)], 1)
    cov = np.linalg.pinv(A.T @ (A * w[:, None]))
    if k <= 2 * np.sqrt(max(cov[0, 0], 0.0)):
        k, c = 0.0, float(np.sum(w * v) / np.sum(w))
    elif c < 0:
        k, c = solve(w, with_icpt=False)[0], 0.0
    return k, c
