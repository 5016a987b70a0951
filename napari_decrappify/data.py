"""Training data: random patches of HR stacks crappified on the fly, patches of real LR/HR pairs,
and fastai ``DataLoaders``.

The split into training and validation is by *plane* (never by patch), so validation never
sees a training pixel.

Every training-data name is imported from here (``from napari_decrappify.data import
make_stacks``); the code lives in one module per concern:

- :mod:`napari_decrappify.training_norm`: :func:`percentile_norm`, :class:`UnitSpace`.
- :mod:`napari_decrappify.training_planes`: :class:`PlaneStack`, :func:`make_stacks`,
  :func:`split_planes`, :func:`blank_planes`, :func:`as_planes`, :func:`check_pair`,
  :func:`fingerprint`.
- :mod:`napari_decrappify.pair_files`: :func:`write_pairs`, :func:`save_stack`.
- this module: the datasets (:class:`CrappifiedPatches`, :class:`PairedPatches`), their
  flips and rotations (:func:`augment`, looked up here at call time, so setting it on this
  module changes what the datasets do) and :func:`make_dataloaders`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .augmentation import Variation
from .config import AugmentConfig, NormConfig, check_scale
from .degradation import Crappifier, RngLike, _rng

# ``name as name``: names this module held before the split but no longer uses itself, still
# importable from here
from .degradation_fit import infer_scale as infer_scale
from .intensity_scale import check_image as check_image
from .intensity_scale import intensity_range as intensity_range
from .normalization import normalize
from .pair_files import _plane_count as _plane_count
from .pair_files import save_stack, write_pairs
from .training_norm import UnitSpace, percentile_norm
from .training_planes import (
    BLANK_STD,
    PlaneStack,
    as_planes,
    blank_planes,
    check_pair,
    fingerprint,
    make_stacks,
    split_planes,
)
from .training_planes import _frame_stacks as _frame_stacks
from .training_planes import _reflect_index as _reflect_index

__all__ = [
    "BLANK_STD", "CrappifiedPatches", "PairedPatches", "PlaneStack", "UnitSpace", "as_planes",
    "augment", "blank_planes", "check_pair", "fingerprint", "make_dataloaders", "make_stacks",
    "normalize", "percentile_norm", "save_stack", "seeded_rng", "split_planes", "write_pairs",
]


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
    any_offset : bool
        Training mode only: cut HR patches at any pixel offset, not only on the LR grid, so
        every one of the ``scale**2`` ways of grouping HR pixels into LR blocks is used (16x more
        distinct clean LR/HR pairs at 4x from the same planes). Validation patches stay on the
        LR grid, where they line up with the full-image LR.
    unit_space : UnitSpace, optional
        Crappify on the HR dtype's [0, 1] scale (where the noise levels are defined) and hand
        the LR back in the planes' normalisation. Default: the planes are on that scale.
    augmentation : AugmentConfig, optional
        A zoom and intensity variation drawn per sample and applied to the HR before it is
        crappified (the target is the varied HR). Not given to validation sets.
    group : int
        Draw the degradation and the variation once per ``group`` consecutive indices (one
        acquisition per group: what the out-of-domain reference measures); 0: per sample.

    Every frame of a sample gets the same degradation parameters (one acquisition setting),
    drawn per sample from the crappifier's ranges; the noise itself is independent per frame.
    """

    def __init__(self, stacks: list[PlaneStack], crappifier: Crappifier, patch: int,
                 frames: int = 1, length: int = 800, seed: int = 0, fixed: bool = False,
                 max_tries: int = 20, any_offset: bool = False,
                 unit_space: UnitSpace | None = None,
                 augmentation: AugmentConfig | None = None, group: int = 0):
        self.stacks = stacks
        self.crappifier = crappifier
        self.unit_space = None if unit_space is None or unit_space.identity else unit_space
        self.patch = patch
        self.frames = frames
        self.length = length
        self.seed = seed
        self.fixed = fixed
        self.epoch = 0
        self.max_tries = max_tries
        self.any_offset = any_offset and not fixed
        self.augmentation = (augmentation if augmentation is not None and augmentation.active
                             else None)
        self.group = group
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
        # the acquisition: this sample's own, or its group's
        acquisition = rng if not self.group else np.random.default_rng(
            np.random.SeedSequence([self.seed, 1 << 20, index // self.group]))
        variation = (None if self.augmentation is None
                     else Variation.draw(self.augmentation, acquisition))
        for _ in range(self.max_tries):
            si, i = self.choices[int(rng.integers(len(self.choices)))]
            stack = self.stacks[si]
            h, w = stack.planes.shape[-2:]
            # HR pixels to cut: zoomed to the patch size afterwards
            src = hp if variation is None else variation.source_size(hp, min(h, w))
            # top-left on the LR grid (block means line up with the full-image LR) unless any
            # offset is allowed (a zoomed window has no grid to line up with)
            step = 1 if self.any_offset or variation is not None else s
            y = int(rng.integers((h - src) // step + 1)) * step
            x = int(rng.integers((w - src) // step + 1)) * step
            hr_win = stack.window(i, self.frames)[:, y : y + src, x : x + src]
            if variation is not None:
                hr_win = variation.resize(hr_win, hp)
            if hr_win[self.frames // 2].std() > 2 * BLANK_STD:
                break
        crappify = self.crappifier.fixed(acquisition)
        frames = hr_win if self.unit_space is None else self.unit_space.to_unit(hr_win)
        if variation is not None:
            frames = variation.intensities(frames)
            hr_win = frames if self.unit_space is None else self.unit_space.from_unit(frames)
        lr = np.stack([crappify(p, seed=rng) for p in frames])
        if self.unit_space is not None:
            lr = self.unit_space.from_unit(lr)
        hr = hr_win[self.frames // 2][None]
        if not self.fixed:
            lr, hr = augment([lr, hr], rng)
        return torch.from_numpy(lr), torch.from_numpy(hr)


class PairedPatches(torch.utils.data.Dataset):
    """Patches of registered real LR/HR pairs (``hr.shape == lr.shape * scale`` on Y, X).

    Parameters
    ----------
    lr, hr : array
        The pair, 2-D planes or stacks with the same number of planes (see :func:`check_pair`).
    scale : int
    patch : int
        LR patch size (the HR patch is ``patch * scale``).
    length, seed, fixed
        As in :class:`CrappifiedPatches`.
    norm : NormConfig, optional
        Normalisation of the HR (the model's). Default: :func:`percentile_norm` of ``hr``.
    lr_norm : NormConfig, optional
        Normalisation of the LR. Default: :func:`percentile_norm` of ``lr`` (a real LR comes from
        another acquisition, often with another detector gain, so it gets its own).
    frames : int
        Neighbouring LR planes stacked as channels (odd); the target is the centre plane's HR.
        Windows stay on the run of usable planes around their centre (reflected at its ends):
        never a blank plane, nor one outside ``planes``.
    planes : sequence of int, optional
        The planes that may be used (default: all); blank HR planes are always left out. Pass
        the training split's planes when the pair is the training stack itself, so that its
        validation planes do not leak into training.
    """

    def __init__(self, lr: np.ndarray, hr: np.ndarray, scale: int, patch: int,
                 length: int = 800, seed: int = 0, fixed: bool = False,
                 norm: NormConfig | None = None, lr_norm: NormConfig | None = None,
                 frames: int = 1, planes: Sequence[int] | None = None):
        self.scale = check_scale(scale)
        lr, hr = check_pair(lr, hr, self.scale)
        if frames < 1 or frames % 2 == 0:
            raise ValueError(f"frames must be an odd number >= 1, got {frames}")
        self.norm = norm or percentile_norm([hr])
        self.lr_norm = lr_norm or percentile_norm([lr])
        self.lr = normalize(lr, self.lr_norm)
        self.hr = normalize(hr, self.norm)
        blank = set(blank_planes(self.hr))
        allowed = range(len(self.lr)) if planes is None else sorted(set(planes))
        bad = [i for i in allowed if not 0 <= i < len(self.lr)]
        if bad:
            raise ValueError(f"pair plane indices {bad} are outside 0..{len(self.lr) - 1}")
        self.stack = PlaneStack(self.lr, [i for i in allowed if i not in blank],
                                split_bounded=True)
        if not self.stack.indices:
            raise ValueError("every plane of the HR of the pair is blank (constant)"
                             if planes is None else
                             "every usable plane of the pair is blank (constant)")
        self.patch, self.length, self.seed, self.fixed = patch, length, seed, fixed
        self.frames = frames
        self.epoch = 0
        if min(self.lr.shape[-2:]) < patch:
            raise ValueError(f"LR images of {self.lr.shape[-2]} x {self.lr.shape[-1]} pixels are "
                             f"smaller than one patch ({patch} x {patch}); use a smaller patch size")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        seed = (self.seed, index) if self.fixed else (self.seed, self.epoch, index)
        rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
        _, h, w = self.lr.shape
        s, p = self.scale, self.patch
        i = self.stack.indices[int(rng.integers(len(self.stack.indices)))]
        y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
        lr = self.stack.window(i, self.frames)[:, y : y + p, x : x + p]
        hr = self.hr[i, y * s : (y + p) * s, x * s : (x + p) * s][None]
        if not self.fixed:
            lr, hr = augment([lr, hr], rng)
        return torch.from_numpy(np.ascontiguousarray(lr)), torch.from_numpy(np.ascontiguousarray(hr))


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
