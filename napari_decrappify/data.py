"""Training data: planes from HR stacks, random patches, real LR/HR pairs, multi-frame windows,
normalisation and fastai ``DataLoaders``.

The split into training and validation is by *plane* (never by patch), so validation never
sees a training pixel.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .augmentation import Variation
from .config import AugmentConfig, NormConfig, check_scale
from .crappify import Crappifier, RngLike, _rng, check_image, infer_scale, intensity_range
from .normalization import normalize

BLANK_STD = 1e-3  # a plane or patch whose std (normalised units) is below this is blank


# --------------------------------------------------------------------------- normalisation


def percentile_norm(images: Sequence[np.ndarray], percentiles=(0.1, 99.9)) -> NormConfig:
    """Normalisation for training data: uint8 -> [0, 255]; other dtypes -> global percentiles.

    Stored with the model so that inference uses exactly the training intensities.
    """
    images = [check_image(im, "training image") for im in images]  # NaN is not "constant"
    kinds = {intensity_range(np.asarray(im).dtype) for im in images}
    if len(kinds) > 1:
        dtypes = sorted({str(np.asarray(im).dtype) for im in images})
        raise ValueError(f"the training images have different dtypes ({', '.join(dtypes)}): their "
                         "intensities are on different scales; convert them to one dtype first")
    first = np.asarray(images[0])
    if first.dtype == np.uint8:
        return NormConfig(low=0.0, high=255.0)
    sample = np.concatenate([np.asarray(im, dtype=np.float32).ravel()[::7] for im in images])
    lo, hi = np.percentile(sample, percentiles)
    if not hi > lo:
        raise ValueError("the training images are constant: nothing to learn from")
    return NormConfig(low=float(lo), high=float(hi), percentiles=tuple(percentiles))


@dataclass(frozen=True)
class UnitSpace:
    """Between the model's normalisation and the [0, 1] scale the crappifier's noise is
    defined on (:func:`napari_decrappify.crappify.to_unit` of the HR's dtype).

    Training planes are normalised by their percentiles, but ``photons`` and ``read_noise``
    mean what the Crappify dock, ``decrappify crappify`` and ``crappify.fit`` make of them: on
    the dtype's range. Without this, a uint16 image using a tenth of its range would be trained
    with about 10x less relative noise than the Crappify dock shows for the same settings.
    """

    norm: NormConfig
    unit: tuple[float, float]  # the intensities to_unit maps to 0 and 1

    @classmethod
    def of(cls, norm: NormConfig, dtype) -> UnitSpace:
        unit = intensity_range(dtype)
        dtype = np.dtype(dtype)
        wide = np.issubdtype(dtype, np.integer) and dtype.itemsize > 2
        if wide or (not np.issubdtype(dtype, np.integer) and not 0 <= norm.low < norm.high <= 1):
            # float data beyond [0, 1] has no scale of its own (to_unit would clip it to 1),
            # nor has int32 (2^31 is no detector's full scale): noise levels are relative to
            # its normalised range, as they always were for such floats
            unit = (norm.low, norm.high)
        return cls(norm, unit)

    @property
    def identity(self) -> bool:
        return (self.norm.low, self.norm.high) == self.unit

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        n, (u0, u1) = self.norm, self.unit
        return ((x * (n.high - n.low) + n.low - u0) / (u1 - u0)).astype(np.float32)

    def from_unit(self, x: np.ndarray) -> np.ndarray:
        n, (u0, u1) = self.norm, self.unit
        return ((x * (u1 - u0) + u0 - n.low) / (n.high - n.low)).astype(np.float32)


# --------------------------------------------------------------------------- planes


@dataclass
class PlaneStack:
    """A stack of 2-D planes ``(n, Y, X)`` (normalised float32) with the index of each plane's
    neighbours along the frame axis, for multi-frame windows.

    ``split_bounded``: windows draw only on the run of consecutive ``indices`` around their
    centre, reflected at its ends as at the ends of the stack. A training window then never
    shows the network a validation (or held-out, or blank) plane as a neighbour, nor a
    validation window a test plane.
    """

    planes: np.ndarray
    indices: list[int]  # which planes may be used as centre (non-blank)
    split_bounded: bool = False

    def window(self, i: int, frames: int) -> np.ndarray:
        """``frames`` planes centred on ``i`` (reflected at the ends): ``(frames, Y, X)``."""
        half = frames // 2
        lo, hi = self._run(i) if self.split_bounded else (0, len(self.planes) - 1)
        idx = [lo + _reflect_index(j - lo, hi - lo + 1) for j in range(i - half, i + half + 1)]
        return self.planes[idx]

    def _run(self, i: int) -> tuple[int, int]:
        """First and last plane of the run of consecutive ``indices`` that holds ``i``."""
        try:
            return self._runs[i]
        except KeyError:
            raise ValueError(f"plane {i} is not one of this split's planes") from None

    @functools.cached_property
    def _runs(self) -> dict[int, tuple[int, int]]:
        # built once: window() is called for every training sample
        runs: dict[int, tuple[int, int]] = {}
        ordered = sorted(set(self.indices))
        start = 0
        for k in range(1, len(ordered) + 1):
            if k == len(ordered) or ordered[k] != ordered[k - 1] + 1:
                for j in ordered[start:k]:
                    runs[j] = (ordered[start], ordered[k - 1])
                start = k
        return runs


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
    # at least one plane on each side, whatever the fraction
    n_val = min(len(usable) - 1, max(1, int(round(len(usable) * val_fraction))))
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


def check_pair(lr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Check that an LR/HR pair is consistent with ``scale`` and return ``(n, y, x)`` stacks.

    HR is cropped to ``scale`` times the LR (HR may be up to ``scale - 1`` pixels larger on each
    axis); any other mismatch, NaN/inf or a different number of planes is a ValueError naming it.
    """
    scale = check_scale(scale)
    lr = as_planes(check_image(lr, "LR image"))
    hr = as_planes(check_image(hr, "HR image"))
    if lr.shape[0] != hr.shape[0]:
        raise ValueError(f"LR has {lr.shape[0]} planes but HR has {hr.shape[0]}")
    infer_scale(lr.shape[-2:], hr.shape[-2:], scale)
    ly, lx = lr.shape[-2:]
    return lr, hr[..., : ly * scale, : lx * scale]


def _frame_stacks(images: Sequence[np.ndarray], axis: int) -> list[np.ndarray]:
    """Each image as ``(n, Y, X)`` stacks along ``axis``. An image of more than 3 dimensions
    (e.g. T, Z, Y, X) gives one stack per index of its other leading axes, so that a
    multi-frame window only ever holds neighbours along ``axis`` (flattening would make the
    last leading axis the neighbours and jump between blocks)."""
    out = []
    for im in images:
        a = check_image(im)
        if a.ndim <= 3:
            out.append(as_planes(a, axis))
            continue
        a = np.moveaxis(a, axis, 0)
        out.extend(a[(slice(None), *idx)] for idx in np.ndindex(*a.shape[1:-2]))
    return out


def make_stacks(images: Sequence[np.ndarray], norm: NormConfig, axis: int = 0,
                val_fraction: float = 0.15, train_planes: Sequence[int] | None = None,
                valid_planes: Sequence[int] | None = None, min_rows: int = 0,
                ) -> tuple[list[PlaneStack], list[PlaneStack], dict]:
    """Normalise HR images, drop blank planes, split each stack by plane into train/validation.

    With explicit ``train_planes`` / ``valid_planes`` (the same for every stack) the split is
    exactly those planes (minus blank ones); they must not overlap. Images of more than 3
    dimensions are split into one stack per index of their other leading axes; plane indices
    count along ``axis``. A single image with one non-blank plane is split by rows instead:
    its bottom ``max(val_fraction, 0.2)`` validates (``info["rows_valid"]``), at least
    ``min_rows`` rows (one HR patch) when the image is tall enough for both parts.
    """
    if (train_planes is None) != (valid_planes is None):
        raise ValueError("an explicit split needs both train_planes and valid_planes (planes in "
                         "neither are held out); give both, or neither for a val_fraction split")
    if train_planes is not None and valid_planes is not None:
        overlap = set(train_planes) & set(valid_planes)
        if overlap:
            raise ValueError(f"planes {sorted(overlap)} are in both training and validation")
    train, valid = [], []
    info = {"planes_train": [], "planes_valid": [], "blank": []}
    for k, im in enumerate(_frame_stacks(images, axis)):
        planes = normalize(im, norm)
        blank = blank_planes(planes)
        if len(blank) == len(planes):
            raise ValueError(f"HR stack {k} (shape {np.shape(im)}) is constant: every plane is "
                             "blank, nothing to learn from")
        if train_planes is not None and valid_planes is not None:
            n = len(planes)
            bad = [i for i in list(train_planes) + list(valid_planes) if not 0 <= i < n]
            if bad:
                raise ValueError(f"plane indices {bad} are outside 0..{n - 1}")
            tr = [i for i in train_planes if i not in blank]
            va = [i for i in valid_planes if i not in blank]
            if not tr or not va:
                raise ValueError("the explicit train/validation planes are all blank")
        elif len(planes) - len(blank) == 1 and len(images) == 1:
            # one 2-D image (a single SEM frame is common): the bottom rows validate, so a
            # user with one plane can train; rows next to the cut are alike, a small leak
            (i,) = [j for j in range(len(planes)) if j not in blank]
            h = planes.shape[-2]
            cut = min(int(round(h * (1 - max(val_fraction, 0.2)))), h - min_rows)
            if cut < max(1, min_rows) or cut >= h:
                raise ValueError(f"the image of shape {np.shape(im)} is too small to split into "
                                 "training and validation rows")
            train.append(PlaneStack(planes[i:i + 1, :cut], [0], split_bounded=True))
            valid.append(PlaneStack(planes[i:i + 1, cut:], [0], split_bounded=True))
            info["planes_train"].append([i])
            info["planes_valid"].append([])
            info["rows_valid"] = [cut, h]
            info["blank"].append(blank)
            continue
        else:
            tr, va = split_planes(len(planes), val_fraction, exclude=blank)
        train.append(PlaneStack(planes, tr, split_bounded=True))
        valid.append(PlaneStack(planes, va, split_bounded=True))
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


# --------------------------------------------------------------------------- writing stacks and pairs


def save_stack(path, data, axes: str, scale=None, translate=None, units=None, *,
               overwrite: bool = False, progress=None, cancel=None, name: str | None = None,
               metadata: dict | None = None):
    """Write ``data`` (numpy or lazy dask) as a TIFF (``*.tif``/``*.tiff``) or an OME-Zarr
    (anything else), chunk by chunk with bounded memory.

    A thin dispatch to :func:`napari_decrappify.io.write_tiff` (OME-TIFF, plane by plane; the
    origin as OME plane positions) and :func:`napari_decrappify.io.write_ome_zarr` (resumable: rerunning
    the same computation finishes an interrupted store). ``progress`` receives their event
    dicts; setting ``cancel`` (a ``threading.Event``) raises ``io.RestoreCancelled``.

    Returns
    -------
    Path
    """
    from pathlib import Path

    from . import io

    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return io.write_tiff(path, data, axes=axes, scale=scale, translate=translate, units=units,
                             overwrite=overwrite, progress=progress, cancel=cancel)
    return io.write_ome_zarr(path, data, axes=axes, scale=scale, translate=translate, units=units,
                             overwrite=overwrite, progress=progress, cancel=cancel, name=name,
                             metadata=metadata)


def _plane_count(shape) -> int:
    return int(np.prod(shape[:-2])) if len(shape) > 2 else 1


def write_pairs(hr, out_dir, config, *, seed: int = 0, axes: str | None = None, scale=None,
                translate=None, units=None, fmt: str = "tif", name: str = "pair",
                overwrite: bool = False, progress=None, cancel=None) -> dict:
    """Crappify every plane of ``hr`` and write the LR/HR training pair to ``out_dir``.

    Writes ``<name>_lr.<ext>`` (float32 in the HR's intensity units: 0..255 for uint8 HR,
    [0, 1] for float HR; LR geometry from
    :func:`napari_decrappify.io.downscale_geometry`), ``<name>_hr.<ext>`` (the HR as given,
    cropped to a multiple of the scale so that the pair is registered exactly) and
    ``<name>.json`` (degradation, seed, geometry). Plane ``i`` of the LR is
    ``Crappifier(config)(hr[i], seed=plane_rng(seed, i))`` in those units: what the Crappify
    dock previews.

    Parameters
    ----------
    hr : array-like
        numpy / dask / zarr, Y, X last.
    out_dir : str or Path
    config : CrappifyConfig or Crappifier
    seed : int
    axes : str, optional
        Default: guessed from the number of dimensions.
    scale, translate, units : sequence, optional
        The HR's geometry per axis.
    fmt : {"tif", "zarr"}
    name : str
        File name stem.
    overwrite : bool
        Replace existing files of that name; otherwise they are an error (checked first).
    progress : callable, optional
        Receives ``{"event": "pairs", "stage": "lr" | "hr", "done", "total"}`` (planes of both
        files together).
    cancel : threading.Event, optional
        Stops between chunks (raises ``io.RestoreCancelled``); a cancelled or failed call
        removes what it wrote, so no LR is left without its HR.

    Returns
    -------
    dict
        ``{"lr": path, "hr": path, "json": path, "lr_shape", "hr_shape"}``.
    """
    import json
    import os
    import shutil
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import dask
    import dask.array as da

    from . import __version__
    from .config import CrappifyConfig
    from .crappify import crappify_lazy, from_unit
    from .io import check_axes, downscale_geometry, guess_axes

    if fmt not in ("tif", "zarr"):
        raise ValueError(f"unknown pair format {fmt!r} (tif or zarr)")
    config = config if isinstance(config, CrappifyConfig) else config.config
    hr_d = hr if isinstance(hr, da.Array) else da.asarray(hr)
    axes = check_axes(axes or guess_axes(hr_d.ndim), hr_d.ndim)
    n = hr_d.ndim
    scale = tuple(float(v) for v in (scale if scale is not None else (1.0,) * n))
    translate = tuple(float(v) for v in (translate if translate is not None else (0.0,) * n))
    units = tuple(str(u) for u in (units if units is not None else ("pixel",) * n))
    s = config.scale
    h, w = hr_d.shape[-2:]
    hr_d = hr_d[..., : h - h % s, : w - w % s].rechunk((1,) * (n - 2) + (-1, -1))
    # the LR in the HR's intensity units (float32, not rounded): a model trained on this kind of
    # data restores it, and it shares the HR's contrast ([0, 1] restored to garbage with uint8
    # models)
    lr_d = from_unit(crappify_lazy(hr_d, config, seed=seed), hr_d.dtype)
    lr_scale, lr_translate = downscale_geometry(scale, translate, axes, s)
    out_dir = Path(out_dir)
    ext = ".tif" if fmt == "tif" else ".zarr"
    paths = {"lr": out_dir / f"{name}_lr{ext}", "hr": out_dir / f"{name}_hr{ext}",
             "json": out_dir / f"{name}.json"}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exists in {out_dir}: choose another name or "
                              "allow overwriting")
    out_dir.mkdir(parents=True, exist_ok=True)
    planes = _plane_count(hr_d.shape)
    total = 2 * planes
    meta = {"napari_decrappify": __version__, "crappify": config.model_dump(mode="json"),
            "seed": seed, "plane_seed": "crappify.plane_rng(seed, plane index)", "axes": axes,
            "units": list(units),
            "hr": {"file": paths["hr"].name, "shape": list(hr_d.shape), "dtype": str(hr_d.dtype),
                   "scale": list(scale), "translate": list(translate)},
            "lr": {"file": paths["lr"].name, "shape": list(lr_d.shape), "dtype": "float32",
                   "range": list(intensity_range(hr_d.dtype)), "scale": list(lr_scale),
                   "translate": list(lr_translate)}}
    complete = False
    # Our own thread pool (dask's threaded scheduler takes it from the config): when a cancel
    # stops the computation, chunk writes already running finish in the background; shutting
    # the pool down waits for them, so the clean-up below is not undone by a late chunk.
    pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="write-pairs")
    try:
        with dask.config.set(pool=pool):
            for k, (stage, data, geo) in enumerate((("lr", lr_d, (lr_scale, lr_translate)),
                                                    ("hr", hr_d, (scale, translate)))):
                def relay(ev, k=k, stage=stage):
                    if progress is not None and ev.get("total"):
                        done = k * planes + round(planes * ev["done"] / ev["total"])
                        progress({"event": "pairs", "stage": stage, "done": done, "total": total})

                save_stack(paths[stage], data, axes, geo[0], geo[1], units, overwrite=overwrite,
                           progress=relay, cancel=cancel, name=f"{name} {stage.upper()}",
                           metadata=meta)
        paths["json"].write_text(json.dumps(meta, indent=2))
        complete = True
    finally:
        pool.shutdown(wait=True)
        if not complete:  # cancelled or failed: nothing half-written, no LR without its HR
            for p in paths.values():
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    return {**{k: str(v) for k, v in paths.items()}, "lr_shape": tuple(lr_d.shape),
            "hr_shape": tuple(hr_d.shape)}
