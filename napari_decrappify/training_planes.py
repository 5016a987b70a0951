"""Training stacks as planes: normalised ``(n, Y, X)`` stacks, blank planes, the split into
training and validation by plane, multi-frame windows, and the check of a real LR/HR pair.

The split into training and validation is by *plane* (never by patch), so validation never
sees a training pixel; a multi-frame window never reaches across the split
(:attr:`PlaneStack.split_bounded`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import NormConfig, check_scale
from .degradation_fit import infer_scale
from .intensity_scale import check_image
from .normalization import normalize

BLANK_STD = 1e-3  # a plane or patch whose std (normalised units) is below this is blank


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
