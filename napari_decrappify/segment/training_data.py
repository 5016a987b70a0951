"""Training data for the segmenter: checks of images, sparse labels and a model to continue
from, and the patches centred on labelled pixels that training draws (:class:`LabelledPatches`)."""

from __future__ import annotations

import numpy as np
import torch

MAX_COORDS_PER_CLASS = 1_000_000  # patch centres kept per class (subsampled beyond that)


def _pad_to(a: np.ndarray, size: int, mode: str) -> np.ndarray:
    ph, pw = max(0, size - a.shape[-2]), max(0, size - a.shape[-1])
    if not ph and not pw:
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(a, pad, mode=mode) if mode == "reflect" else np.pad(a, pad)


class LabelledPatches(torch.utils.data.Dataset):
    """Patches centred on labelled pixels: the class is drawn uniformly among the classes
    present, then a labelled pixel of that class; the patch contains it at a random offset.

    Parameters
    ----------
    planes : list of (H, W) float32 arrays
        Normalised image planes.
    labels : list of (H, W) integer arrays
        0 = unlabelled, 1..K classes.
    patch : int
        Patch side (images smaller than that are padded: reflect / unlabelled).
    fixed : bool
        Validation mode: the same patches every epoch, no augmentation.
    """

    def __init__(self, planes: list[np.ndarray], labels: list[np.ndarray], patch: int,
                 length: int, seed: int = 0, fixed: bool = False, jitter: float = 0.0):
        self.planes, self.labels = planes, labels
        self.patch, self.length, self.seed, self.fixed, self.jitter = patch, length, seed, fixed, jitter
        self.epoch = 0
        rng = np.random.default_rng(seed)
        coords: dict[int, list[np.ndarray]] = {}
        for i, lab in enumerate(labels):
            ys, xs = np.nonzero(lab)
            vals = lab[ys, xs]
            for c in np.unique(vals):
                sel = vals == c
                coords.setdefault(int(c), []).append(
                    np.stack([np.full(int(sel.sum()), i), ys[sel], xs[sel]], axis=1))
        self.coords = {}
        for c, parts in coords.items():
            allc = np.concatenate(parts)
            if len(allc) > MAX_COORDS_PER_CLASS:
                allc = allc[rng.choice(len(allc), MAX_COORDS_PER_CLASS, replace=False)]
            self.coords[c] = allc
        self.classes = sorted(self.coords)
        if not self.classes:
            raise ValueError("no labelled pixels to train on (every label is 0 = unlabelled)")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        seed = (self.seed, index) if self.fixed else (self.seed, self.epoch, index)
        rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
        c = self.classes[int(rng.integers(len(self.classes)))]
        pts = self.coords[c]
        i, y, x = (int(v) for v in pts[int(rng.integers(len(pts)))])
        img, lab = self.planes[i], self.labels[i]
        p = self.patch
        h, w = img.shape
        y0 = int(np.clip(y - rng.integers(p), 0, max(0, h - p)))
        x0 = int(np.clip(x - rng.integers(p), 0, max(0, w - p)))
        xi = _pad_to(img[y0:y0 + p, x0:x0 + p], p, "reflect")[None]
        yl = _pad_to(lab[y0:y0 + p, x0:x0 + p], p, "constant")
        if not self.fixed:
            from ..data import augment

            xi, yl = augment([xi, yl], rng)
            if self.jitter:
                gain = 1 + rng.uniform(-self.jitter, self.jitter)
                xi = xi * gain + rng.uniform(-self.jitter, self.jitter) / 2
        return (torch.from_numpy(np.ascontiguousarray(xi, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(yl).astype(np.int64)))


def _check_training_data(images, labels, classes: list[str], axis: int):
    from ..crappify import check_image
    from ..data import as_planes

    # one array (numpy, dask, zarr) or a sequence of arrays
    if not isinstance(images, list | tuple):
        images = [images]
    if not isinstance(labels, list | tuple):
        labels = [labels]
    images = [np.asarray(im) for im in images]
    labels = [np.asarray(lab) for lab in labels]
    if not images:
        raise ValueError("no images given")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label arrays: give one label "
                         "array per image")
    k = len(classes)
    plane_imgs, plane_labs = [], []
    for n, (im, lab) in enumerate(zip(images, labels, strict=True)):
        check_image(im, f"image {n}")
        if im.shape != lab.shape:
            raise ValueError(f"labels {n} have shape {lab.shape} but image {n} has {im.shape}: "
                             "they must match pixel for pixel")
        if not np.issubdtype(lab.dtype, np.integer):
            if np.issubdtype(lab.dtype, np.floating) and np.all(np.mod(lab, 1) == 0):
                lab = lab.astype(np.int64)
            else:
                raise ValueError(f"labels {n} must be integers (0 = unlabelled, 1..{k} = classes), "
                                 f"got dtype {lab.dtype}")
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi > k:
            bad = sorted(set(np.unique(lab).tolist()) - set(range(k + 1)))[:10]
            raise ValueError(f"labels {n} contain values {bad} outside 0..{k}: there are {k} "
                             f"class names ({', '.join(classes)}); label k is classes[k-1]")
        plane_imgs.append(as_planes(im, axis))
        plane_labs.append(as_planes(lab, axis).astype(np.int16 if k < 32000 else np.int32))
    return images, labels, plane_imgs, plane_labs


def _check_init_from(model, classes: list[str]) -> None:
    """Refuse to continue training a model whose output channels mean other classes."""
    if model.kind != "segmentation":
        raise ValueError(f"cannot continue from model {model.name!r}: it is a {model.kind} model, "
                         "not a segmentation model")
    old = list(model.config.classes or [])
    if old != classes:
        hint = ""
        if sorted(old) == sorted(classes):
            remap = ", ".join(f"{classes.index(c) + 1} -> {old.index(c) + 1}" for c in classes
                              if classes.index(c) != old.index(c))
            hint = f" (same names in another order: remap the label values {remap})"
        raise ValueError(f"cannot continue from model {model.name!r}: its classes are {old} "
                         f"(label k = k-th name) but these labels use {classes}; give the classes "
                         f"in the model's order and remap the label values to match{hint}, or "
                         "train a new model")
    if model.out_channels != len(classes) + 1:
        raise ValueError(f"cannot continue from model {model.name!r}: it has {model.out_channels} "
                         f"outputs, not {len(classes) + 1} for {len(classes)} classes")
