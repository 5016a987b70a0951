"""Training data: planes from HR stacks, random patches, real LR/HR pairs, multi-frame windows,
normalisation and fastai ``DataLoaders``.

The split into training and validation is by *plane* (never by patch), so validation never
sees a training pixel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import NormConfig, check_scale
from .crappify import Crappifier, RngLike, _rng, check_image

BLANK_STD = 1e-3  # a plane or patch whose std (normalised units) is below this is blank


# --------------------------------------------------------------------------- normalisation


def percentile_norm(images: Sequence[np.ndarray], percentiles=(0.1, 99.9)) -> NormConfig:
    """Normalisation for training data: uint8 -> [0, 255]; other dtypes -> global percentiles.

    Stored with the model so that inference uses exactly the training intensities.
    """
    first = np.asarray(images[0])
    if first.dtype == np.uint8:
        return NormConfig(low=0.0, high=255.0)
    sample = np.concatenate([np.asarray(im, dtype=np.float32).ravel()[::7] for im in images])
    lo, hi = np.percentile(sample, percentiles)
    if not hi > lo:
        raise ValueError("the training images are constant: nothing to learn from")
    return NormConfig(low=float(lo), high=float(hi), percentiles=tuple(percentiles))


def normalize(image: np.ndarray, norm: NormConfig) -> np.ndarray:
    return ((np.asarray(image, dtype=np.float32) - norm.low) / (norm.high - norm.low)).astype(
        np.float32
    )


# --------------------------------------------------------------------------- planes


@dataclass
class PlaneStack:
    """A stack of 2-D planes ``(n, Y, X)`` (normalised float32) with the index of each plane's
    neighbours along the frame axis, for multi-frame windows."""

    planes: np.ndarray
    indices: list[int]  # which planes may be used as centre (non-blank)

    def window(self, i: int, frames: int) -> np.ndarray:
        """``frames`` planes centred on ``i`` (reflected at the ends): ``(frames, Y, X)``."""
        n = len(self.planes)
        half = frames // 2
        idx = [_reflect_index(j, n) for j in range(i - half, i + half + 1)]
        return self.planes[idx]


def _reflect_index(j: int, n: int) -> int:
    """Index ``j`` reflected into ``0..n-1`` (``-1 -> 1``, ``n -> n-2``)."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    j = abs(j) % period
    return period - j if j >= n else j


def as_planes(stack: np.ndarray, axis: int = 0) -> np.ndarray:
    """Any 2-D/3-D/4-D stack -> ``(n, Y, X)``, taking planes along ``axis`` (Y, X are last)."""
    a = check_image(stack)
    if a.ndim == 2:
        return a[None]
    if a.ndim > 2:
        a = np.moveaxis(a, axis, 0)
    return a.reshape(-1, *a.shape[-2:])


def blank_planes(planes: np.ndarray, norm: NormConfig | None = None) -> list[int]:
    """Indices of planes that are constant (e.g. the all-zero plane 14 of CREMI)."""
    out = []
    for i, p in enumerate(planes):
        p = normalize(p, norm) if norm is not None else np.asarray(p, np.float32)
        if float(p.std()) < BLANK_STD:
            out.append(i)
    return out


def split_planes(n: int, val_fraction: float = 0.15, exclude: Sequence[int] = (),
                 ) -> tuple[list[int], list[int]]:
    """Contiguous split by plane: the last ``val_fraction`` of the planes validate.

    Contiguous (not random) so that neighbouring, highly correlated planes do not leak into
    validation.
    """
    usable = [i for i in range(n) if i not in set(exclude)]
    if len(usable) < 2:
        raise ValueError(f"need at least 2 non-blank planes to split train/validation, got {len(usable)}")
    n_val = max(1, int(round(len(usable) * val_fraction)))
    return usable[:-n_val], usable[-n_val:]


def fingerprint(arrays: Sequence[np.ndarray]) -> str:
    """sha256 of the training data (shape, dtype and bytes): recorded in the model file."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- augmentation


def augment(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip / 90-degree rotation applied to every array (last two axes)."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(-2, -1))
        if flip:
            a = a[..., ::-1]
        out.append(np.ascontiguousarray(a))
    return out


# --------------------------------------------------------------------------- datasets


class CrappifiedPatches(torch.utils.data.Dataset):
    """Random HR patches and their crappified LR, drawn fresh for every index and epoch.

    Parameters
    ----------
    stacks : list of PlaneStack
        HR planes (normalised to [0, 1]).
    crappifier : Crappifier
        HR -> LR degradation (its scale sets the LR/HR ratio).
    patch : int
        LR patch size (the HR patch is ``patch * scale``).
    frames : int
        Number of neighbouring planes stacked as input channels (odd).
    length : int
        Samples per epoch.
    fixed : bool
        Validation mode: the same patches and noise for every epoch, no augmentation.
    """

    def __init__(self, stacks: list[PlaneStack], crappifier: Crappifier, patch: int,
                 frames: int = 1, length: int = 800, seed: int = 0, fixed: bool = False,
                 max_tries: int = 20):
        self.stacks = stacks
        self.crappifier = crappifier
        self.patch = patch
        self.frames = frames
        self.length = length
        self.seed = seed
        self.fixed = fixed
        self.epoch = 0
        self.max_tries = max_tries
        hr_size = patch * crappifier.scale
        for s in stacks:
            h, w = s.planes.shape[-2:]
            if h < hr_size or w < hr_size:
                raise ValueError(f"images of {h} x {w} pixels are smaller than one HR patch "
                                 f"({hr_size} x {hr_size}); use a smaller patch size")
        self.choices = [(si, i) for si, s in enumerate(stacks) for i in s.indices]
        if not self.choices:
            raise ValueError("no usable (non-blank) planes for training")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        seed = (self.seed, index) if self.fixed else (self.seed, self.epoch, index)
        rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
        s = self.crappifier.scale
        hp = self.patch * s
        for _ in range(self.max_tries):
            si, i = self.choices[int(rng.integers(len(self.choices)))]
            stack = self.stacks[si]
            h, w = stack.planes.shape[-2:]
            # top-left on the LR grid so that block means line up with the full-image LR
            y = int(rng.integers((h - hp) // s + 1)) * s
            x = int(rng.integers((w - hp) // s + 1)) * s
            hr_win = stack.window(i, self.frames)[:, y : y + hp, x : x + hp]
            if hr_win[self.frames // 2].std() > 2 * BLANK_STD:
                break
        lr = np.stack([self.crappifier(p, seed=rng) for p in hr_win])
        hr = hr_win[self.frames // 2][None]
        if not self.fixed:
            lr, hr = augment([lr, hr], rng)
        return torch.from_numpy(lr), torch.from_numpy(hr)


class PairedPatches(torch.utils.data.Dataset):
    """Patches of registered real LR/HR pairs (``hr.shape == lr.shape * scale`` on Y, X)."""

    def __init__(self, lr: np.ndarray, hr: np.ndarray, scale: int, patch: int,
                 length: int = 800, seed: int = 0, fixed: bool = False):
        self.scale = check_scale(scale)
        self.lr, self.hr = check_pair(lr, hr, self.scale)
        self.patch, self.length, self.seed, self.fixed = patch, length, seed, fixed
        self.epoch = 0
        if min(self.lr.shape[-2:]) < patch:
            raise ValueError(f"LR images of {self.lr.shape[-2:]} are smaller than one patch ({patch})")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        seed = (self.seed, index) if self.fixed else (self.seed, self.epoch, index)
        rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
        n, h, w = self.lr.shape
        i = int(rng.integers(n))
        y, x = int(rng.integers(h - self.patch + 1)), int(rng.integers(w - self.patch + 1))
        s = self.scale
        lr = self.lr[i, y : y + self.patch, x : x + self.patch][None]
        hr = self.hr[i, y * s : (y + self.patch) * s, x * s : (x + self.patch) * s][None]
        if not self.fixed:
            lr, hr = augment([lr, hr], rng)
        return torch.from_numpy(np.ascontiguousarray(lr)), torch.from_numpy(np.ascontiguousarray(hr))


def check_pair(lr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Check that an LR/HR pair is consistent with ``scale`` and return ``(n, y, x)`` stacks."""
    lr = as_planes(lr)
    hr = as_planes(hr)
    if lr.shape[0] != hr.shape[0]:
        raise ValueError(f"LR has {lr.shape[0]} planes but HR has {hr.shape[0]}")
    ly, lx = lr.shape[-2:]
    hy, hx = hr.shape[-2:]
    if (hy // scale, hx // scale) != (ly, lx):
        raise ValueError(
            f"LR/HR shapes do not match scale {scale}: LR {ly} x {lx}, HR {hy} x {hx} "
            f"(expected HR of {ly * scale} x {lx * scale}); are the images registered?"
        )
    return lr, hr[..., : ly * scale, : lx * scale]


def make_stacks(images: Sequence[np.ndarray], norm: NormConfig, axis: int = 0,
                val_fraction: float = 0.15, train_planes: Sequence[int] | None = None,
                valid_planes: Sequence[int] | None = None,
                ) -> tuple[list[PlaneStack], list[PlaneStack], dict]:
    """Normalise HR images, drop blank planes, split each stack by plane into train/validation.

    With explicit ``train_planes`` / ``valid_planes`` (the same for every stack) the split is
    exactly those planes (minus blank ones); they must not overlap.
    """
    if train_planes is not None and valid_planes is not None:
        overlap = set(train_planes) & set(valid_planes)
        if overlap:
            raise ValueError(f"planes {sorted(overlap)} are in both training and validation")
    train, valid = [], []
    info = {"planes_train": [], "planes_valid": [], "blank": []}
    for im in images:
        planes = normalize(as_planes(im, axis), norm)
        blank = blank_planes(planes)
        if train_planes is not None and valid_planes is not None:
            n = len(planes)
            bad = [i for i in list(train_planes) + list(valid_planes) if not 0 <= i < n]
            if bad:
                raise ValueError(f"plane indices {bad} are outside 0..{n - 1}")
            tr = [i for i in train_planes if i not in blank]
            va = [i for i in valid_planes if i not in blank]
            if not tr or not va:
                raise ValueError("the explicit train/validation planes are all blank")
        else:
            tr, va = split_planes(len(planes), val_fraction, exclude=blank)
        train.append(PlaneStack(planes, tr))
        valid.append(PlaneStack(planes, va))
        info["planes_train"].append(tr)
        info["planes_valid"].append(va)
        info["blank"].append(blank)
    return train, valid, info


def make_dataloaders(train_ds, valid_ds, batch_size: int = 8, device=None, num_workers: int = 0):
    """fastai ``DataLoaders`` from a training and a validation dataset."""
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader

    train_dl = DataLoader(train_ds, bs=batch_size, shuffle=False, drop_last=True,
                          num_workers=num_workers)
    valid_dl = DataLoader(valid_ds, bs=batch_size, shuffle=False, drop_last=False,
                          num_workers=num_workers)
    return DataLoaders(train_dl, valid_dl, device=device)


def seeded_rng(seed: RngLike) -> np.random.Generator:
    return _rng(seed)
