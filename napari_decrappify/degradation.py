"""The degradation operators HR -> LR: downsampling, blur, shot and read noise, salt-and-pepper.

Each operator takes a 2-D plane or a stack (Y, X last), maps it to [0, 1] float32 with
:func:`~napari_decrappify.intensity_scale.to_unit` and returns float32 on that scale.
:class:`Crappifier` composes them as one acquisition (blur, downsample, Poisson noise, read
noise, salt-and-pepper, clipped), its parameters drawn from ranges per sample for training;
:func:`crappify` is its one-call form and :func:`protocol_lr` the project's fixed benchmark
degradation.

Every random function takes a seed or a :class:`numpy.random.Generator`: the same seed gives
the same output. Stacks processed plane by plane seed each plane with :func:`plane_rng` (seed +
plane index), so a plane's result does not depend on how the stack was chunked or in which order
it ran (:func:`napari_decrappify.crappify.crappify_lazy`, the Crappify dock, ``decrappify
crappify``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .config import CrappifyConfig, check_scale
from .intensity_scale import check_noise_scale, to_unit

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
