"""Crappify: degrade high-resolution images the way a faster, gentler acquisition would.

All functions take 2-D planes or stacks (the last two axes are Y, X) of uint8, uint16 or float
and return float32. Intensities are first mapped to [0, 1] by :func:`to_unit` (uint8 / 255,
uint16 / 65535, float kept as is); noise levels are on that [0, 1] scale, and with
``clip=True`` (the default) the output stays in [0, 1].

Every random function takes a seed or a :class:`numpy.random.Generator`: the same seed gives
the same output. Stacks processed plane by plane (:func:`crappify_lazy`, the Crappify dock, the
``decrappify crappify`` command) seed each plane with :func:`plane_rng` (seed + plane index), so
a plane's result does not depend on how the stack was chunked or in which order it ran.

:func:`fit` goes the other way: from a real registered LR/HR pair it estimates the parameters
(scale, blur, Poisson photons, read noise, salt-and-pepper) that make synthetic LR match the real
LR statistics, and reports how well they match.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .config import CrappifyConfig, CrappifyDtype, check_scale, choices

RngLike = int | np.random.Generator | None


def _rng(seed: RngLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def plane_rng(seed: int, index: Sequence[int] | int = ()) -> np.random.Generator:
    """The random generator of one plane of a stack: derived from ``seed`` and the plane's index
    along the non-YX axes (e.g. ``(z,)`` or ``(t, z)``).

    Every path that crappifies a stack plane by plane uses it, so the same seed gives the same
    plane whatever the chunking, the order or the number of worker threads.
    """
    idx = [int(index)] if np.isscalar(index) else [int(i) for i in index]
    if int(seed) < 0 or any(i < 0 for i in idx):
        raise ValueError(f"seed and plane index must be >= 0, got seed={seed}, index={idx}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), len(idx), *idx]))


def check_image(image: np.ndarray, name: str = "image", min_ndim: int = 2) -> np.ndarray:
    """Refuse what cannot be an image: wrong ndim, non-numeric dtype, NaN/inf, empty."""
    a = np.asarray(image)
    if a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions (..., Y, X), "
                         f"got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} has unsupported dtype {a.dtype} (need integer or float)")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return a


def intensity_range(dtype) -> tuple[float, float]:
    """The intensities that :func:`to_unit` maps to 0 and 1 for ``dtype``: 0 and the integer
    type's maximum, ``(0, 1)`` for floats. The crappifier's noise levels are defined on that scale.

    Zero is zero photons for signed integers too: mapping int16's full range put 0 at 0.5,
    which gave a dark int16 background the shot noise of a half-bright pixel. Negative values
    (an offset-subtracted background) count as no signal.
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return 0.0, float(np.iinfo(dtype).max)
    return 0.0, 1.0


def to_unit(image: np.ndarray) -> np.ndarray:
    """Map intensities to [0, 1] float32: uint8 / 255, uint16 / 65535, int16 / 32767 (negative
    values stay negative), other integers by their maximum, floats unchanged (they are assumed
    to be normalised already)."""
    a = check_image(image)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = intensity_range(a.dtype)
        return ((a.astype(np.float32) - lo) / (hi - lo)).astype(np.float32)
    return a.astype(np.float32, copy=False)


def from_unit(x, dtype):
    """The inverse of :func:`to_unit`: [0, 1] values (numpy or dask) back in the intensities
    of an image of ``dtype``, as float32 (no rounding, no clipping)."""
    lo, hi = intensity_range(dtype)
    return (x * np.float32(hi - lo) + np.float32(lo)).astype(np.float32)


def check_noise_scale(dtype, config: CrappifyConfig) -> None:
    """Refuse noise on integers wider than 16 bits: noise levels are fractions of full scale,
    and 2^31 is no detector's (int32 counts up to 181 000 got read noise 0.01 x 2^31, a mean
    of 8.9 million, without a word). Blur and downsampling need no scale."""
    dtype = np.dtype(dtype)
    noisy = (c := config).photons is not None or c.read_noise != 0 or c.salt_pepper != 0
    if np.issubdtype(dtype, np.integer) and dtype.itemsize > 2 and noisy:
        raise ValueError(f"{dtype} intensities have no full scale for the noise levels (its "
                         f"maximum is {np.iinfo(dtype).max:,}): convert the image to uint16 if "
                         "its values fit, or to float32 in [0, 1] (divided by your detector's "
                         "full scale)")


def check_unit_float(image: np.ndarray) -> np.ndarray:
    """``image``, after checking that a float image is in [0, 1], the scale :func:`to_unit`
    assumes for floats: a float image in 0..255 was crappified to an all-1 LR, silently."""
    a = np.asarray(image)
    if np.issubdtype(a.dtype, np.floating) and a.size:
        with warnings.catch_warnings():  # all-NaN: refused by check_image, not warned here
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"a float image must be in [0, 1] to be crappified (noise levels are "
                             f"on that scale); this one spans [{lo:.4g}, {hi:.4g}]: divide it by "
                             "its maximum, or convert it to uint8/uint16")
    return a


def crop_to_multiple(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop Y and X (from the end) to a multiple of ``scale``."""
    h, w = image.shape[-2:]
    return image[..., : h - h % scale, : w - w % scale]


def downsample(image: np.ndarray, scale: int, method: str = "mean") -> np.ndarray:
    """Downsample Y and X by an integer ``scale``.

    ``mean`` is an exact block mean (what a pixel ``scale`` times larger records); Y, X are
    cropped to a multiple of ``scale`` first. ``bilinear``/``bicubic`` use anti-aliased
    interpolation (scikit-image).
    """
    scale = check_scale(scale)
    a = to_unit(image)
    if scale == 1:
        return a.copy()
    a = crop_to_multiple(a, scale)
    h, w = a.shape[-2:]
    if h == 0 or w == 0:
        raise ValueError(f"image of shape {image.shape} is smaller than the scale {scale}")
    if method == "mean":
        lead = a.shape[:-2]
        return a.reshape(*lead, h // scale, scale, w // scale, scale).mean(axis=(-3, -1),
                                                                         dtype=np.float64
                                                                         ).astype(np.float32)
    if method in ("bilinear", "bicubic"):
        from skimage.transform import resize

        order = 1 if method == "bilinear" else 3
        out_shape = a.shape[:-2] + (h // scale, w // scale)
        return resize(a, out_shape, order=order, anti_aliasing=True, mode="reflect",
                      preserve_range=True).astype(np.float32)
    raise ValueError(f"unknown downsampling method {method!r} (mean, bilinear, bicubic)")


_downsample = downsample  # fit() takes a ``downsample`` argument that shadows the function


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (a PSF of standard deviation ``sigma`` pixels) on Y and X."""
    a = to_unit(image)
    if sigma <= 0:
        return a.copy()
    sig = (0,) * (a.ndim - 2) + (sigma, sigma)
    return ndi.gaussian_filter(a, sig, mode="reflect").astype(np.float32)


def poisson_noise(image: np.ndarray, photons: float, seed: RngLike = None) -> np.ndarray:
    """Shot noise: ``Poisson(u * photons) / photons`` for ``u`` in [0, 1].

    ``photons`` is the expected photon (electron) count at intensity 1; the variance at
    intensity ``u`` is ``u / photons``.
    """
    if photons <= 0:
        raise ValueError(f"photons must be > 0, got {photons}")
    a = np.clip(to_unit(image), 0, None)
    return (_rng(seed).poisson(a.astype(np.float64) * photons) / photons).astype(np.float32)


def gaussian_noise(image: np.ndarray, sigma: float, seed: RngLike = None) -> np.ndarray:
    """Read noise: additive ``N(0, sigma^2)``."""
    a = to_unit(image)
    if sigma <= 0:
        return a.copy()
    return (a + _rng(seed).normal(0.0, sigma, a.shape)).astype(np.float32)


def salt_pepper(image: np.ndarray, amount: float, seed: RngLike = None) -> np.ndarray:
    """Set a fraction ``amount`` of pixels to 0 or 1 (half each): dead/hot pixels."""
    a = to_unit(image).copy()
    if amount <= 0:
        return a
    rng = _rng(seed)
    hit = rng.random(a.shape) < amount
    a[hit] = (rng.random(int(hit.sum())) < 0.5).astype(np.float32)
    return a


def _draw(value, rng: np.random.Generator) -> float:
    if value is None:
        return None
    if isinstance(value, tuple):
        return float(rng.uniform(value[0], value[1]))
    return float(value)


@dataclass
class Crappifier:
    """A composite degradation HR -> LR: blur, downsample, Poisson and read noise, salt-pepper.

    Parameters given as ranges ``(lo, hi)`` in the config are drawn per call (per sample), so a
    training set sees a family of degradations rather than one.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_decrappify.crappify import Crappifier
    >>> hr = np.full((64, 64), 128, np.uint8)
    >>> lr = Crappifier.from_options(scale=4, photons=255, read_noise=0.01)(hr, seed=0)
    >>> lr.shape, lr.dtype
    ((16, 16), dtype('float32'))
    """

    config: CrappifyConfig

    @classmethod
    def from_options(cls, **options) -> Crappifier:
        return cls(CrappifyConfig(**options))

    @property
    def scale(self) -> int:
        return self.config.scale

    def fixed(self, seed: RngLike = None) -> Crappifier:
        """This degradation with every ``(lo, hi)`` range drawn once: one acquisition setting,
        e.g. for all the frames of one multi-frame training sample."""
        rng = _rng(seed)
        c = self.config
        drawn = {k: _draw(getattr(c, k), rng)
                 for k in ("blur_sigma", "photons", "read_noise", "salt_pepper")}
        return Crappifier(c.model_copy(update=drawn))

    def __call__(self, hr: np.ndarray, seed: RngLike = None) -> np.ndarray:
        c = self.config
        check_noise_scale(np.asarray(hr).dtype, c)
        rng = _rng(seed)
        x = to_unit(hr)
        sigma = _draw(c.blur_sigma, rng)
        if sigma:
            x = blur(x, sigma)
        x = downsample(x, c.scale, c.downsample)
        return self._noise(x, rng)

    def _noise(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The noise steps of :meth:`__call__` on an LR ``x`` in [0, 1] units."""
        c = self.config
        photons = _draw(c.photons, rng)
        if photons:
            x = poisson_noise(x, photons, rng)
        read = _draw(c.read_noise, rng)
        if read:
            x = gaussian_noise(x, read, rng)
        sp = _draw(c.salt_pepper, rng)
        if sp:
            x = salt_pepper(x, sp, rng)
        if c.clip:
            x = np.clip(x, 0.0, 1.0)
        return x.astype(np.float32, copy=False)


def crappify(hr: np.ndarray, scale: int = 4, *, seed: RngLike = 0, **options) -> np.ndarray:
    """Degrade ``hr`` with :class:`Crappifier` options (``photons``, ``read_noise``, ...)."""
    return Crappifier.from_options(scale=scale, **options)(hr, seed=seed)


def protocol_lr(hr: np.ndarray, scale: int, noisy: bool, seed: RngLike = 0) -> np.ndarray:
    """The project's benchmark degradation (../shared/DATA.md protocol).

    Block mean by ``scale``; with ``noisy``, ``Poisson(u * 255) / 255 + N(0, 0.01)``, clipped.
    """
    rng = _rng(seed)
    lr = downsample(hr, scale, "mean")
    if noisy:
        lr = rng.poisson(lr.astype(np.float64) * 255) / 255.0 + rng.normal(0, 0.01, lr.shape)
        lr = np.clip(lr, 0, 1).astype(np.float32)
    return lr


# --------------------------------------------------------------------------- stacks, lazily

# HR pixels of a plane above which it is crappified in tiles: a 100 000^2 plane crappified
# whole took 10 GiB within 20 s. Planes up to this size keep their plane-seeded results.
BIG_PLANE = 4096 * 4096
PLANE_TILE = 4096  # HR pixels per tile side (rounded down to a multiple of the scale)


def _crappify_tiled(data, crap: Crappifier, seed: int):
    """:func:`crappify_lazy` for planes over :data:`BIG_PLANE` pixels: tiles of
    :data:`PLANE_TILE` with a halo for the blur (and the anti-aliasing of bilinear/bicubic
    downsampling), so memory is bounded by a few tiles. Blur and block mean equal the whole
    plane's; an acquisition setting drawn from a range is drawn once per plane, and the noise
    is seeded per tile (``plane_rng(seed, plane index + tile index)``): the same whatever the
    chunking of the input."""

    import dask.array as da
    from dask.base import tokenize

    s, lead = crap.scale, data.ndim - 2
    c = crap.config
    # not cropped to a multiple of the scale first: the blur reflects at the plane's own edge,
    # as the whole plane's does; the last tile's downsampling drops its remainder
    h, w = data.shape[-2:]
    sigma = max(c.blur_sigma) if isinstance(c.blur_sigma, tuple) else c.blur_sigma
    reach = int(4 * sigma + 0.5) + 1 if sigma else 0  # scipy's gaussian radius (truncate 4)
    if c.downsample != "mean":
        reach += 4 * s  # the anti-aliasing filter of skimage's resize (sigma (s - 1) / 2)
    depth = -(-reach // s) * s  # whole LR pixels, so the crop in LR space is exact
    tile = max(PLANE_TILE // s * s, depth, s)

    def sizes(n):
        chunks = [tile] * (n // tile) + ([n % tile] if n % tile else [])
        if len(chunks) > 1 and chunks[-1] < depth:  # map_overlap needs chunks >= depth
            chunks[-2:] = [chunks[-2] + chunks[-1]]
        return tuple(chunks)

    data = data.rechunk((1,) * lead + (sizes(h), sizes(w)))
    if depth:
        padded = da.overlap.overlap(data, depth={lead: depth, lead + 1: depth},
                                    boundary={lead: "reflect", lead + 1: "reflect"})
    else:
        padded = data
    d = depth // s

    def block(x, block_info=None):
        loc = block_info[0]["chunk-location"]
        index, tile_index = tuple(loc[:lead]), tuple(loc[lead:])
        setting = crap.fixed(plane_rng(seed, index))  # one acquisition per plane
        u = to_unit(check_unit_float(x.reshape(x.shape[-2:])))
        sig = setting.config.blur_sigma
        if sig:
            u = blur(u, sig)
        u = downsample(u, s, setting.config.downsample)
        if d:
            u = u[d:u.shape[0] - d, d:u.shape[1] - d]
        lr = setting._noise(u, plane_rng(seed, index + tile_index))
        return lr.reshape((1,) * lead + lr.shape)

    chunks = padded.chunks[:lead] + tuple(tuple((n - 2 * depth) // s for n in cs)
                                          for cs in padded.chunks[lead:])
    name = "crappify-tiled-" + tokenize(data.name, c.model_dump_json(), int(seed))
    return padded.map_blocks(block, dtype=np.float32, chunks=chunks,
                             meta=np.empty((0,) * data.ndim, np.float32), name=name)


def lr_shape(shape: Sequence[int], scale: int) -> tuple[int, ...]:
    """Shape of the LR made from an HR of ``shape`` (Y, X divided by ``scale``, rounded down)."""
    scale = check_scale(scale)
    *lead, h, w = shape
    if h < scale or w < scale:
        raise ValueError(f"image of {h} x {w} pixels is smaller than the scale {scale}")
    return (*lead, h // scale, w // scale)


def crappify_lazy(image, config: CrappifyConfig | Crappifier, seed: int = 0):
    """Crappify a (large, lazy) stack plane by plane with dask.

    Parameters
    ----------
    image : array-like
        numpy, dask or zarr array with Y, X last (2-D to 5-D).
    config : CrappifyConfig or Crappifier
    seed : int
        Each plane is seeded with :func:`plane_rng` ``(seed, plane index)``: the result is the
        same whatever the chunking or scheduler.

    Returns
    -------
    dask.array.Array
        float32 LR stack, chunked one plane per chunk, shape :func:`lr_shape`.
    """
    import dask.array as da
    from dask.base import tokenize

    crap = config if isinstance(config, Crappifier) else Crappifier(config)
    data = image if isinstance(image, da.Array) else da.asarray(image)
    if data.ndim < 2:
        raise ValueError(f"image must have at least 2 dimensions (..., Y, X), got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ValueError(f"image has unsupported dtype {data.dtype} (need integer or float)")
    check_noise_scale(data.dtype, crap.config)  # before any plane is written
    lead = data.ndim - 2
    out_shape = lr_shape(data.shape, crap.scale)
    if data.shape[-2] * data.shape[-1] > BIG_PLANE:
        return _crappify_tiled(data, crap, seed)
    data = data.rechunk((1,) * lead + (-1, -1))

    def block(x, block_info=None):
        index = block_info[0]["chunk-location"][:lead] if block_info else (0,) * lead
        plane = crap(check_unit_float(x.reshape(x.shape[-2:])), seed=plane_rng(seed, index))
        return plane.reshape((1,) * lead + plane.shape)

    # a deterministic name (input, degradation, seed): a rerun of an interrupted write of this
    # result recognises it and resumes (io.write_ome_zarr fingerprints by the dask name)
    name = "crappify-" + tokenize(data.name, crap.config.model_dump_json(), int(seed))
    return data.map_blocks(block, dtype=np.float32, chunks=(1,) * lead + out_shape[-2:],
                           meta=np.empty((0,) * data.ndim, np.float32), name=name)


# --------------------------------------------------------------------------- fit to a real pair


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


# --------------------------------------------------------------------------- files


def _to_dtype(lr, dtype: str, input_dtype):
    """float32 [0, 1] LR -> the requested output dtype (0..1 scaled to 0..the integer's maximum)."""
    if dtype == "input":
        # any integer input dtype (int16 EM, uint32 ...): the inverse of to_unit's mapping
        dtype = str(np.dtype(input_dtype)) if np.issubdtype(input_dtype, np.integer) else "float32"
    elif dtype not in choices(CrappifyDtype):
        raise ValueError(f"unknown output dtype {dtype!r} ({', '.join(choices(CrappifyDtype))})")
    if dtype == "float32":
        return lr
    lo, hi = intensity_range(dtype)
    return lr.map_blocks(_scale_to_int, lo, hi, dtype, dtype=dtype, name=f"{lr.name}-{dtype}")


def _scale_to_int(x, lo, hi, dtype):
    # float64: float32 cannot hold every value of a 32-bit integer range
    return np.rint(np.clip(x, 0, 1).astype(np.float64) * (hi - lo) + lo).astype(dtype)


def crappify_file(source, out, config: CrappifyConfig, *, seed: int = 0, axes: str | None = None,
                  pixel_size: Sequence[float] | None = None, units: Sequence[str] | None = None,
                  dtype: CrappifyDtype = "float32", overwrite: bool = False, progress=None,
                  cancel=None) -> dict:
    """Crappify an image file (or array) that may be larger than memory, plane by plane.

    Reads lazily with :func:`napari_decrappify.io.open_image` (TIFF through its zarr store,
    Zarr / OME-Zarr), crappifies with :func:`crappify_lazy` (one chunk per plane, seeded by
    :func:`plane_rng`) and streams the result with :func:`napari_decrappify.io.write_tiff`
    (``*.tif`` outputs) or :func:`napari_decrappify.io.write_ome_zarr` (anything else) with the LR geometry of
    :func:`napari_decrappify.io.downscale_geometry`. Memory stays bounded by a few planes.

    Parameters
    ----------
    source : str, Path or array
    out : str or Path
    config : CrappifyConfig
    seed : int
    axes : str, optional
        Axes of the input (default: from the file, else guessed from the number of dimensions).
    pixel_size, units : sequence, optional
        Override the input's pixel size / units per axis.
    dtype : {"float32", "uint8", "uint16", "input"}
        Output dtype: float32 in [0, 1], or integers from 0 to their maximum.
    overwrite : bool
        Replace ``out``. Without it an existing ``out`` is an error, except an unfinished
        OME-Zarr of the same computation (same input file, parameters and seed), which is
        resumed: finished chunks are not recomputed.
    progress : callable, optional
        Receives the writer's event dicts (``{"event": "chunks" | "planes", "done", "total",
        ...}``).
    cancel : threading.Event, optional
        Stops the write between chunks (``io.RestoreCancelled``).

    Returns
    -------
    dict
        ``out``, ``shape``, ``dtype``, ``axes``, ``scale``, ``translate``, ``units``.
    """
    from pathlib import Path

    from . import io
    from .io import downscale_geometry, open_image

    if dtype != "input" and dtype not in choices(CrappifyDtype):  # every option before work
        raise ValueError(f"unknown output dtype {dtype!r} ({', '.join(choices(CrappifyDtype))})")
    image = open_image(source, axes=axes, scale=pixel_size, units=units)
    lr = crappify_lazy(image.data, config, seed=seed)
    lr = _to_dtype(lr, dtype, image.data.dtype)
    lr_scale, lr_translate = downscale_geometry(image.scale, image.translate, image.axes,
                                                config.scale)
    # (the writers of data.save_stack, called directly: importing data.py would load torch)
    if Path(out).suffix.lower() in (".tif", ".tiff"):
        path = io.write_tiff(out, lr, axes=image.axes, scale=lr_scale, translate=lr_translate,
                             units=image.units, overwrite=overwrite, progress=progress,
                             cancel=cancel)
    else:
        path = io.write_ome_zarr(
            out, lr, axes=image.axes, scale=lr_scale, translate=lr_translate, units=image.units,
            overwrite=overwrite, progress=progress, cancel=cancel, name=f"{image.name} crappified",
            metadata={"crappify": config.model_dump(mode="json"), "seed": int(seed),
                      "source": str(source) if isinstance(source, str | os.PathLike) else None})
    return {"out": str(path), "shape": tuple(lr.shape), "dtype": str(lr.dtype), "axes": image.axes,
            "scale": lr_scale, "translate": lr_translate, "units": tuple(image.units)}
