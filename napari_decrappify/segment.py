"""Segmentation: semantic training from sparse painted labels, prediction through the tiled
engine, instance split, measurements, object matching and count comparison.

Label convention (the same numbers in the painted Labels layer, in the model and in its output)
    ``0`` is *unlabelled* in training labels: the loss ignores those pixels. ``1..K`` are the
    named classes (``classes[k - 1]`` names label ``k``; paint the background as a class of its
    own, e.g. ``classes=["background", "mitochondria"]``). The network has ``K + 1`` outputs so
    that output channel ``k`` is label ``k``; channel 0 is never a training target (its
    probability goes to ~0) and marks "no prediction" (the engine's skipped empty tiles).
    Classes named like background (:data:`BACKGROUND_NAMES`) are not split into objects.

Pipeline::

    result = train_segmenter([image], [painted], ["background", "nucleus"], SegmentConfig(minutes=2))
    seg = predict(result.model, image)              # seg.probabilities (K+1, ...), seg.labels
    objects = instances(seg.labels, "watershed", classes=seg.classes)
    table = measure(objects, image, seg.classes, pixel_size=(0.1, 0.1), semantic=seg.labels)
    table.to_csv("objects.csv")
    stats = match(objects, ground_truth_instances, iou=0.5)   # TP/FP/FN, precision, recall, F1
"""

from __future__ import annotations

import csv
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn import functional as F

from . import units
from .config import (
    ArchConfig,
    BaseTrainConfig,
    InstanceMethod,
    LearningRate,
    PositiveInt,
    SegmentationLoss,
    TileConfig,
)

ProgressFn = Callable[[dict[str, Any]], None]

BACKGROUND_NAMES = frozenset({"background", "bg", "backgr", "other", "none", "unlabelled",
                              "unlabeled", "cytoplasm"})
MAX_COORDS_PER_CLASS = 1_000_000  # patch centres kept per class (subsampled beyond that)


def segmentation_arch(encoder: str = "resnet18s") -> ArchConfig:
    """The segmentation U-Net: on the image grid, no residual path, ReLU decoder.

    Unlike L1 restoration, the cross-entropy + Dice segmenter's ReLU decoder stays alive
    (``decrappify bench segmentation -o seg_epochs=8``: field 57 px, at most 7 of 128 channels of
    a layer never positive), and a leaky decoder scored the same (HR F1 0.758 vs 0.768, one
    object apart), so ReLU stays.
    """
    return ArchConfig(encoder=encoder, scale=1, residual=False, activation="relu")


class SegmentConfig(BaseTrainConfig):
    """Segmentation training parameters.

    ``loss``: ``"ce"`` (weighted cross-entropy on labelled pixels) or ``"dice_ce"`` (that plus
    ``dice_weight`` times a soft Dice loss on labelled pixels: an overlap loss that helps thin
    and rare structures). ``class_weights``: ``"balanced"`` (inverse frequency of each class in
    the sampled training patches, clipped to ``max_class_weight``), ``"none"``, or one weight
    per class ``1..K``. Patches are centred on labelled pixels, drawing the class uniformly,
    so sparse strokes are all used. ``patch_size`` is in image pixels; a budget is ``epochs``
    and/or ``minutes`` (wall clock) as for restoration. The options both share (batch, budget,
    schedule, split, device) have restoration's bounds: see
    :class:`napari_decrappify.config.BaseTrainConfig`.
    """

    _dump_order: ClassVar[tuple[str, ...]] = (
        "arch", "loss", "dice_weight", "class_weights", "max_class_weight", "patch_size",
        "batch_size", "epochs", "minutes", "iterations_per_epoch", "lr_max", "weight_decay",
        "pct_start", "intensity_jitter", "precision", "device", "seed", "val_fraction",
        "num_workers")

    arch: ArchConfig = Field(default_factory=segmentation_arch)
    loss: SegmentationLoss = "dice_ce"
    dice_weight: float = 1.0
    class_weights: Literal["balanced", "none"] | list[float] = "balanced"
    max_class_weight: float = 10.0
    # segmentation's own defaults of shared options (their bounds stay BaseTrainConfig's)
    patch_size: PositiveInt = 128
    iterations_per_epoch: PositiveInt = 50
    lr_max: LearningRate = 1e-3
    intensity_jitter: float = 0.1  # random gain/offset (normalised units) per training patch

    @field_validator("patch_size")
    @classmethod
    def _patch(cls, v):
        if v < 32 or v % 32:
            raise ValueError(f"patch_size must be a multiple of 32 and >= 32, got {v}")
        return v

    @field_validator("max_class_weight")
    @classmethod
    def _maxw(cls, v):
        if not v >= 1:
            raise ValueError(f"max_class_weight must be >= 1, got {v}")
        return v


# --------------------------------------------------------------------------- classes


def check_classes(classes: Sequence[str]) -> list[str]:
    """Class names for labels ``1..K``: non-empty, unique strings."""
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",")]
    classes = [str(c).strip() for c in classes]
    if not classes:
        raise ValueError("give at least one class name (label 1 = first name)")
    if any(not c for c in classes):
        raise ValueError(f"class names must not be empty: {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique: {classes!r}")
    return classes


def object_class_ids(classes: Sequence[str] | None, present: Sequence[int] | None = None) -> list[int]:
    """Label values that are objects: every class ``1..K`` except background-like names.

    Without names, every non-zero value in ``present``.
    """
    if classes:
        return [k for k, name in enumerate(classes, start=1)
                if name.strip().lower() not in BACKGROUND_NAMES]
    return sorted(int(v) for v in (present or []) if int(v) != 0)


def class_name(classes: Sequence[str] | None, k: int) -> str:
    if classes and 1 <= k <= len(classes):
        return classes[k - 1]
    return "object" if k else "none"


# --------------------------------------------------------------------------- loss and metrics


class SparseSegLoss(nn.Module):
    """Cross-entropy (+ optional soft Dice) over labelled pixels only.

    ``logits`` ``(N, K+1, H, W)``, ``target`` ``(N, H, W)`` with ``0`` = unlabelled: those
    pixels contribute nothing to either term (so a prediction there cannot change the loss).

    Parameters
    ----------
    weights : sequence of float, optional
        Per output channel (``K + 1``; entry 0 is unused): class weighting of the
        cross-entropy.
    dice_weight : float
        Weight of ``1 - mean soft Dice`` over the classes present (in the target or the
        prediction) on the labelled pixels of the batch. 0: cross-entropy only.
    """

    def __init__(self, weights: Sequence[float] | None = None, dice_weight: float = 0.0,
                 ignore_index: int = 0):
        super().__init__()
        w = torch.as_tensor(weights, dtype=torch.float32) if weights is not None else None
        self.register_buffer("weights", w, persistent=False)
        self.dice_weight = float(dice_weight)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        mask = target != self.ignore_index
        if not bool(mask.any()):
            return logits.sum() * 0.0
        logits = logits.float()
        w = self.weights.to(logits.device) if self.weights is not None else None
        loss = F.cross_entropy(logits, target, weight=w, ignore_index=self.ignore_index)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, mask)
        return loss


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   eps: float = 1.0) -> torch.Tensor:
    """``1 - mean_c Dice_c`` on the pixels where ``mask`` is true, classes ``1..K``."""
    n_out = logits.shape[1]
    p = torch.softmax(logits, dim=1)
    m = mask[:, None].to(p.dtype)
    onehot = F.one_hot(target.clamp_min(0), n_out).permute(0, 3, 1, 2).to(p.dtype)
    dims = (0, 2, 3)
    inter = (p * onehot * m).sum(dims)[1:]
    denom = (p * m).sum(dims)[1:] + (onehot * m).sum(dims)[1:]
    present = (onehot * m).sum(dims)[1:] > 0
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice[present].mean() if bool(present.any()) else logits.sum() * 0.0


def seg_accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of labelled pixels whose predicted class is right."""
    mask = target > 0
    if not bool(mask.any()):
        return torch.tensor(float("nan"))
    return (logits.argmax(1)[mask] == target[mask]).float().mean()


def seg_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean hard Dice over the classes present, on labelled pixels."""
    mask = target > 0
    pred = logits.argmax(1)[mask]
    t = target[mask]
    scores = []
    for c in torch.unique(t).tolist():
        a, b = pred == c, t == c
        scores.append(2 * (a & b).sum().float() / (a.sum() + b.sum()).clamp_min(1).float())
    return torch.stack(scores).mean() if scores else torch.tensor(float("nan"))


# --------------------------------------------------------------------------- data


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
            from .data import augment

            xi, yl = augment([xi, yl], rng)
            if self.jitter:
                gain = 1 + rng.uniform(-self.jitter, self.jitter)
                xi = xi * gain + rng.uniform(-self.jitter, self.jitter) / 2
        return (torch.from_numpy(np.ascontiguousarray(xi, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(yl).astype(np.int64)))


def _check_training_data(images, labels, classes: list[str], axis: int):
    from .crappify import check_image
    from .data import as_planes

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


def _sample_weights(ds: LabelledPatches, k: int, config: SegmentConfig) -> list[float]:
    """Class weights for the cross-entropy (index 0 unused)."""
    if config.class_weights == "none":
        return [1.0] * (k + 1)
    if isinstance(config.class_weights, list):
        if len(config.class_weights) != k:
            raise ValueError(f"class_weights has {len(config.class_weights)} values for {k} classes")
        return [1.0] + [float(v) for v in config.class_weights]
    # frequencies as the loss will see them: count labels in sampled patches
    counts = np.zeros(k + 1)
    for i in range(min(64, max(8, len(ds)))):
        counts += np.bincount(ds[i][1].numpy().ravel(), minlength=k + 1)[: k + 1]
    freq = counts[1:]
    present = freq > 0
    w = np.ones(k)
    w[present] = freq[present].sum() / (present.sum() * freq[present])
    w = np.clip(w, 1 / config.max_class_weight, config.max_class_weight)
    return [1.0] + [float(v) for v in w]


# --------------------------------------------------------------------------- training


def train_segmenter(images, labels, classes: Sequence[str], config: SegmentConfig | None = None, *,
                    out: str | os.PathLike | None = None, name: str = "segmenter", axis: int = 0,
                    progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                    init_from=None, command: str = "", pixel_size_nm: Sequence[float] | None = None):
    """Train a semantic segmentation model from sparse labels.

    Parameters
    ----------
    images : array or sequence of arrays
        Raw or restored images (``(..., Y, X)``; planes along ``axis``).
    labels : array or sequence of arrays
        Same shapes; ``0`` = unlabelled (ignored by the loss), ``k`` = ``classes[k - 1]``.
    classes : sequence of str
        Names of labels ``1..K`` (a comma separated string works too). Every class needs
        labelled pixels.
    config : SegmentConfig
        Architecture (scale 1), loss, class weighting, patch/batch size, budget, device.
    out : path, optional
        Model folder to write (atomically) when training ends, also when cancelled or out of
        budget (best validation weights).
    progress, cancel
        As for :func:`napari_decrappify.train.train` (``batch``/``epoch``/``done`` events).
    init_from : RestorationModel, optional
        Continue from a segmentation model with the same class names in the same order
        (remap the label values otherwise). The result is a new model: it is called ``name``,
        has no metrics of the old weights, and ``config.training["resumed_from"]`` records the
        runs it started from (``weights_from``: the old model's folder), as
        :func:`napari_decrappify.train.train` does.

    Returns
    -------
    napari_decrappify.train.TrainResult
        ``result.model.config.training`` records the split, class weights and history.
    """
    import fastai.callback.fp16  # noqa: F401 - patches Learner.to_fp16 / to_bf16
    import fastai.callback.schedule  # noqa: F401 - patches Learner.fit_one_cycle
    from fastai.learner import Learner
    from fastai.optimizer import Adam

    from .data import fingerprint, make_dataloaders, normalize, percentile_norm
    from .models import build_model, measure_receptive_field, save_model
    from .train import (
        TrainResult,
        _callbacks,
        fit_learner,
        hardware_description,
        pick_device,
        record_warnings,
        resumed_chain,
        run_divergence_warning,
        training_precision,
    )

    config = config or SegmentConfig()
    classes = check_classes(classes)
    k = len(classes)
    if init_from is not None:
        _check_init_from(init_from, classes)
        # the weights decide the network (what is recorded must be what was trained)
        config = config.model_copy(update={"arch": init_from.config.arch})
    raw_images, raw_labels, plane_imgs, plane_labs = _check_training_data(images, labels, classes,
                                                                          axis)
    present = set()
    for lab in plane_labs:
        present |= set(np.unique(lab).tolist())
    missing = [f"{classes[c - 1]} ({c})" for c in range(1, k + 1) if c not in present]
    if missing:
        raise ValueError(f"no labelled pixels for class(es) {', '.join(missing)}: paint some, or "
                         "remove those names")
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    norm = percentile_norm(raw_images)
    planes = [p for im in plane_imgs for p in normalize(im, norm)]
    labs = [lab for ls in plane_labs for lab in ls]
    labelled = [i for i, lab in enumerate(labs) if lab.any()]
    # split by plane when there are several labelled planes (and training keeps every class)
    n_val = int(round(len(labelled) * config.val_fraction))
    train_idx, valid_idx, held_out = labelled, labelled, False
    if len(labelled) >= 2 and n_val >= 1:
        tr, va = labelled[:-n_val], labelled[-n_val:]
        tr_classes = set()
        for i in tr:
            tr_classes |= set(np.unique(labs[i]).tolist())
        if tr_classes >= set(range(1, k + 1)):
            train_idx, valid_idx, held_out = tr, va, True
    split = {"planes_train": train_idx, "planes_valid": valid_idx, "validation_held_out": held_out}
    if not held_out:
        split["note"] = ("one labelled plane (or classes only in some planes): validation patches "
                         "come from the training labels, so the validation loss is not held out")
    n_train = config.iterations_per_epoch * config.batch_size
    arch = config.arch.model_copy(update={"scale": 1, "frames": 1, "in_channels": 1,
                                          "out_channels": k + 1, "residual": False})
    train_ds = LabelledPatches([planes[i] for i in train_idx], [labs[i] for i in train_idx],
                               config.patch_size, n_train, seed=config.seed,
                               jitter=config.intensity_jitter)
    valid_ds = LabelledPatches([planes[i] for i in valid_idx], [labs[i] for i in valid_idx],
                               config.patch_size, max(config.batch_size * 4, 32),
                               seed=config.seed + 1, fixed=True)
    weights = _sample_weights(train_ds, k, config)
    dls = make_dataloaders(train_ds, valid_ds, config.batch_size, device=device,
                           num_workers=config.num_workers)
    previous: dict[str, Any] = {}
    if init_from is not None:
        # recorded before training: saving re-points the model's path
        previous = {"weights_from": str(init_from.path), **init_from.config.training}
        model = init_from
        model.config.norm = norm
        # the new weights are a new model: its own name, and no scores of the old weights
        model.config.name = name
        model.config.metrics = {}
        model.config.training = {}  # the old run's record lives on in "resumed_from"
    else:
        model = build_model(arch, kind="segmentation", name=name, norm=norm, classes=classes,
                            seed=config.seed, measure_rf=False)
    net = model.net.to(device).train()
    EventsCallback, _, WallClockScheduleCallback = _callbacks()
    deadline = time.monotonic() + config.minutes * 60 if config.minutes else None
    events = EventsCallback(progress, cancel, deadline, [train_ds])
    cbs = [events]
    if config.minutes and not config.epochs:
        cbs.append(WallClockScheduleCallback(config.minutes * 60))
    loss = SparseSegLoss(weights, config.dice_weight if config.loss == "dice_ce" else 0.0)
    # train on logits (log-softmax inside the loss is stable); the saved net ends in softmax
    net.head = "identity"
    try:
        learn = Learner(dls, net, loss_func=loss, opt_func=Adam, metrics=[seg_accuracy, seg_dice],
                        wd=config.weight_decay, cbs=cbs)
        learn.recorder.train_metrics = False
        seconds, iterations = fit_learner(learn, config, device, events)
        net.eval().cpu()
        # measured on the logits: the softmax outputs sum to 1, so their summed gradient is 0
        model.config.receptive_field = measure_receptive_field(net, model.config.arch)
    finally:
        net.head = "softmax"
        net.eval().cpu()
    if pixel_size_nm is not None:
        model.config.pixel_size_nm = [float(v) for v in pixel_size_nm]
    model.config.training.update({
        "command": command, "task": "semantic segmentation from sparse labels",
        "config": json.loads(config.model_dump_json()),
        "label_convention": "0 = unlabelled (ignored), k = classes[k-1]; output channel k = label k",
        "class_weights": weights, "data_fingerprint": fingerprint(raw_images + raw_labels),
        "labelled_pixels": {classes[c - 1]: int(sum(int((lab == c).sum()) for lab in labs))
                            for c in range(1, k + 1)},
        "split": split, "seconds": round(seconds, 1), "iterations": iterations,
        "epochs_run": len(events.history), "stop_reason": events.stop_reason,
        "hardware": hardware_description(device),
        "precision": training_precision(config.precision, device), "best_epoch": events.best[2],
        "history": events.history,
    })
    record_warnings(model.config.training, [run_divergence_warning(events, config.lr_max)])
    if previous:
        # a resumed run: keep the record of the runs it started from (as train.train does)
        model.config.training["resumed_from"] = resumed_chain(previous)
    best = events.best_scores()  # an epoch's, or the unfinished last epoch's if it was kept
    if best is not None:
        model.config.metrics.update({"valid_loss": best.get("valid_loss"),
                                     "valid_accuracy": best.get("seg_accuracy"),
                                     "valid_dice": best.get("seg_dice")})
    if best is not None and best.get("partial"):
        model.config.training["best_epoch_unfinished"] = True
    model._hash = None
    path = save_model(model, out) if out is not None else None
    if progress is not None:
        progress({"event": "done", "stop_reason": events.stop_reason, "seconds": seconds,
                  "path": str(path) if path else None})
    return TrainResult(model=model, history=events.history, stop_reason=events.stop_reason,
                       seconds=seconds, iterations=iterations, path=path)


# --------------------------------------------------------------------------- prediction


@dataclass
class Segmentation:
    """Output of :func:`predict`.

    Attributes
    ----------
    probabilities : array
        ``(K + 1, ...)``: class probabilities, channel ``k`` = label ``k`` (numpy, or dask
        when ``lazy``).
    labels : array
        The most probable class per pixel (uint8/uint16), shaped like the image without C.
    classes : list of str
        Names of labels ``1..K``.
    axes : str
        Axes of ``labels`` (``probabilities`` has a ``C`` in front).
    """

    probabilities: Any
    labels: Any
    classes: list[str]
    axes: str
    model: str = ""
    objects: np.ndarray | None = None


def _labels_dtype(n_out: int):
    return np.uint8 if n_out <= 255 else np.uint16


def predict(model, image, *, axes: str | None = None, config: TileConfig | None = None,
            lazy: bool = False, progress: ProgressFn | None = None,
            cancel: threading.Event | None = None, **tile_options) -> Segmentation:
    """Segment an image of any size through the tiled engine.

    Parameters
    ----------
    model : RestorationModel, str or path
        A segmentation model (loaded, a folder, or a name).
    image : array-like or path
        In the intensity units the model was trained on (it normalises with its stored
        percentiles).
    axes : str, optional
        ``"YX"``, ``"ZYX"``, ``"TYX"``...; guessed from ndim when omitted.
    lazy : bool
        Return dask arrays computed tile by tile when read (napari, huge data).
    progress, cancel
        Tile events and a stop event (non-lazy only; cancelling raises ``RestoreCancelled``).
    **tile_options
        :class:`~napari_decrappify.config.TileConfig` fields (``tile``, ``halo``, ``device``...).

    Raises
    ------
    ValueError
        When the image holds NaN or inf values: a numpy image is checked before any tile runs;
        a dask/zarr image is checked tile by tile on the probabilities (when they are computed,
        i.e. on reading with ``lazy``).
    """
    from . import tiling
    from .crappify import check_image
    from .io import ImageData, open_image

    model = tiling._as_model(model)
    if model.kind != "segmentation":
        raise ValueError(f"model {model.name!r} is a {model.kind} model, not a segmentation model")
    if config is None:
        config = TileConfig(**tile_options)
    elif tile_options:
        config = config.model_copy(update=tile_options)
    source = image.data if isinstance(image, ImageData) else image
    if isinstance(source, np.ndarray):
        # one NaN pixel makes every tile whose halo reaches it NaN, and argmax(NaN) is label 0
        # ("no prediction"): a silent hole, so refuse up front (cheap for an in-memory array)
        check_image(source, "image")
    img = open_image(image, axes=axes)
    dtype = _labels_dtype(model.out_channels)
    if lazy:
        probs = tiling.restore_lazy(model, img, config, progress=progress, cancel=cancel)
        # a lazy input is not read up front: each tile checks its own output when computed
        probs = probs.map_blocks(_finite_probabilities, dtype=probs.dtype)
        labels = probs.argmax(axis=0).astype(dtype)
    else:
        probs = _finite_probabilities(
            tiling.restore(model, img, config, progress=progress, cancel=cancel))
        labels = np.argmax(probs, axis=0).astype(dtype)
    return Segmentation(probabilities=probs, labels=labels, classes=list(model.config.classes),
                        axes=img.axes.replace("C", ""), model=model.name)


def _finite_probabilities(probs: np.ndarray) -> np.ndarray:
    """``probs`` unchanged, or a ValueError when they hold NaN/inf (from a non-finite image)."""
    if not np.isfinite(probs).all():
        raise ValueError("the segmentation came out NaN or inf: the image contains NaN or inf "
                         "values (replace them, e.g. with np.nan_to_num, before segmenting)")
    return probs


def segment(image, model, axes: str | None = None, lazy: bool = False, *, objects: str | None = None,
            min_size: int = 0, h: float = 2.0, pixel_size: Sequence[float] | None = None,
            progress: ProgressFn | None = None, cancel: threading.Event | None = None,
            **tile_options) -> Segmentation:
    """Segment an image with a segmentation model (the facade's ``napari_decrappify.segment``).

    :func:`predict`, and with ``objects="cc"`` or ``"watershed"`` also :func:`instances` of
    the model's object classes into ``result.objects`` (not with ``lazy``; ``min_size``,
    ``h`` and ``pixel_size``, per spatial axis or per axis of the labels, as there).

    Examples
    --------
    >>> seg = nd.segment(image, "my-segmenter", axes="YX", objects="watershed")  # doctest: +SKIP
    >>> seg.labels, seg.objects, seg.probabilities.shape                          # doctest: +SKIP
    """
    if objects is not None and lazy:
        raise ValueError("objects (instance split) needs lazy=False: it works on the whole image")
    seg = predict(model, image, axes=axes, lazy=lazy, progress=progress, cancel=cancel,
                  **tile_options)
    if objects is not None:
        if pixel_size is None:  # a file's (or ImageData's) voxel size, as the CLI uses it
            pixel_size = _file_pixel_size(image, axes, seg.axes)
        seg.objects = instances(np.asarray(seg.labels), objects, classes=seg.classes or None,
                                min_size=min_size, h=h, axes=_instance_axes(seg.axes),
                                pixel_size=pixel_size)
    return seg


def _file_pixel_size(image, axes: str | None, label_axes: str) -> tuple[float, ...] | None:
    """The pixel size per axis of ``label_axes`` recorded with ``image`` (a path or an
    :class:`~napari_decrappify.io.ImageData`), or None for a plain array."""
    from .io import ImageData, open_image

    if isinstance(image, str | os.PathLike):
        image = open_image(image, axes=axes)  # lazy: reads the metadata only
    if not isinstance(image, ImageData):
        return None
    size = dict(zip(image.axes, image.scale, strict=True))
    return tuple(float(size.get(a, 1.0)) for a in label_axes)


def _instance_axes(axes: str) -> str | None:
    """Axes to pass to :func:`instances`: None for plain YX / ZYX."""
    return None if axes in ("YX", "ZYX") else axes


# --------------------------------------------------------------------------- instances


def _spatial_loop(shape: tuple[int, ...], axes: str | None):
    """Indices of the leading non-spatial planes (T, C) and the number of spatial axes."""
    if axes is None:
        if len(shape) not in (2, 3):
            raise ValueError(f"a {len(shape)}-D label image needs axes (e.g. 'TYX', 'TZYX') to "
                             "tell spatial axes from time/channels")
        return [()], len(shape)
    from .io import check_axes

    axes = check_axes(axes, len(shape))
    lead = [a for a in axes if a not in "ZYX"]
    if axes[: len(lead)] != "".join(lead):
        raise ValueError(f"axes {axes!r}: put T/C before the spatial axes Z, Y, X")
    return list(np.ndindex(*shape[: len(lead)])) or [()], len(shape) - len(lead)


def instances(semantic: np.ndarray, method: InstanceMethod = "cc", *,
              classes: Sequence[str] | None = None, class_ids: Sequence[int] | None = None,
              min_size: int = 0, h: float = 2.0, axes: str | None = None,
              pixel_size: Sequence[float] | None = None) -> np.ndarray:
    """Split a semantic label image into objects (instance labels, int32, 0 = none).

    Parameters
    ----------
    semantic : integer array
        Class per pixel (``0`` = nothing).
    method : {"cc", "watershed"}
        ``cc``: connected components of each class (face connectivity). ``watershed``: each
        component is split at the necks of its Euclidean distance transform: seeds are the
        h-maxima of the (lightly smoothed) distance, so two touching round objects become two,
        while bumps lower than ``h`` pixels do not over-split.
    classes, class_ids
        Which label values are objects: explicit ``class_ids``, else every named class that is
        not background-like (:func:`object_class_ids`), else every non-zero value.
    min_size : int
        Objects with fewer pixels are dropped (noise specks in predictions).
    h : float
        Watershed seed height in pixels (the finest axis's pixels with ``pixel_size``).
    axes : str, optional
        For stacks with T/C axes: objects are found per spatial plane/volume. Without it a 2-D
        or 3-D array is one 2-D image or one volume.
    pixel_size : sequence of float, optional
        Physical pixel size per spatial axis (Z, Y, X), or per axis of ``semantic`` (the T/C
        entries are then ignored), for ``watershed``: the distance transform and its
        smoothing are measured in physical distance, so that a z step coarser than the xy
        pixels (a confocal stack) does not hide the neck between touching objects. Only the
        ratios matter. Default: isotropic.
    """
    from scipy import ndimage as ndi

    sem = np.asarray(semantic)
    if not np.issubdtype(sem.dtype, np.integer):
        raise ValueError(f"semantic labels must be integers, got dtype {sem.dtype}")
    if method not in ("cc", "watershed"):
        raise ValueError(f"unknown instance method {method!r}: use 'cc' or 'watershed'")
    loop, nsp = _spatial_loop(sem.shape, axes)
    sampling = _sampling(pixel_size, sem.ndim, nsp)
    ids = list(class_ids) if class_ids is not None else object_class_ids(
        classes, np.unique(sem).tolist())
    out = np.zeros(sem.shape, np.int32)
    next_id = 1
    structure = ndi.generate_binary_structure(nsp, 1)
    for idx in loop:
        plane = sem[idx]
        for c in ids:
            mask = plane == c
            if not mask.any():
                continue
            if method == "cc":
                lab, n = ndi.label(mask, structure)
            else:
                lab, n = _watershed_split(mask, h, structure, sampling)
            if min_size > 1 and n:
                sizes = np.bincount(lab.ravel())
                small = sizes < min_size
                small[0] = False
                lab[small[lab]] = 0
            vals = np.unique(lab)
            vals = vals[vals > 0]
            if not len(vals):
                continue
            lut = np.zeros(int(lab.max()) + 1, np.int32)
            lut[vals] = np.arange(next_id, next_id + len(vals), dtype=np.int32)
            target = out[idx]
            target[mask] = lut[lab[mask]]
            next_id += len(vals)
    return out


def _sampling(pixel_size: Sequence[float] | None, ndim: int, nsp: int) -> np.ndarray | None:
    """Spatial pixel size relative to the finest axis, or None when isotropic."""
    if pixel_size is None:
        return None
    s = np.asarray(pixel_size, float).ravel()
    if len(s) == ndim:
        s = s[ndim - nsp:]
    if len(s) != nsp:
        raise ValueError(f"pixel_size needs {nsp} values (one per spatial axis) or {ndim} (one "
                         f"per axis), got {len(s)}")
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"pixel_size must be positive and finite, got {s.tolist()}")
    s = s / s.min()
    return None if (s == 1).all() else s


def _watershed_split(mask: np.ndarray, h: float, structure,
                     sampling: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    if sampling is None:
        dist = ndi.distance_transform_edt(mask)
        sigma: float | np.ndarray = 1.0
    else:
        # distances in finest-axis pixels, and the same physical smoothing along every axis
        dist = ndi.distance_transform_edt(mask, sampling=sampling)
        sigma = 1.0 / sampling
    smooth = ndi.gaussian_filter(dist, sigma) * mask
    peaks = h_maxima(smooth, h) > 0
    markers, n = ndi.label(peaks & mask, structure)
    lab = watershed(-smooth, markers, mask=mask, connectivity=1) if n else np.zeros(mask.shape, np.int32)
    rest = mask & (lab == 0)  # components too flat to have a seed: keep them whole
    if rest.any():
        extra, m = ndi.label(rest, structure)
        lab = np.where(extra > 0, extra + n, lab)
        n += m
    return lab.astype(np.int32), n


def object_classes(instance_labels: np.ndarray, semantic: np.ndarray) -> dict[int, int]:
    """Class of each object: the most common semantic value under it."""
    inst = np.asarray(instance_labels).ravel()
    sem = np.asarray(semantic).ravel()
    if inst.shape != sem.shape:
        raise ValueError("instance and semantic labels must have the same shape")
    sel = inst > 0
    if not sel.any():
        return {}
    # one int64 key per (object, class) pair: a 1-D unique sorts without the GIL (the 2-D
    # ``unique(axis=1)`` held it ~0.1 s per 2 x 448^2 stack, freezing napari's UI thread)
    i_sel, s_sel = inst[sel].astype(np.int64), sem[sel].astype(np.int64)
    s_min = int(s_sel.min())
    base = int(s_sel.max()) - s_min + 1
    keys, counts = np.unique(i_sel * base + (s_sel - s_min), return_counts=True)
    pairs = np.stack([keys // base, keys % base + s_min])
    best: dict[int, tuple[int, int]] = {}
    for (i, c), n in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        if i not in best or n > best[i][1]:
            best[i] = (c, n)
    return {i: c for i, (c, _) in best.items()}


# --------------------------------------------------------------------------- measurements


@dataclass
class Measurements:
    """Per-object rows and per-class summary of :func:`measure`.

    ``rows``: one dict per object (``label``, ``class_id``, ``class``, ``area``, ``area_px``,
    ``centroid_<axis>`` in physical units, ``equivalent_diameter``, ``mean_intensity``, and
    ``t``/``c`` for stacks). ``summary``: one dict per class (``count``, ``density`` = count
    per unit area (per unit volume in 3-D) of the field, mean area and diameter). These are
    in the layer's own ``unit`` (``area`` is ``unit^2``, and in 3-D the object's *volume* in
    ``unit^3``), for computing with.

    What people read is converted by :mod:`napari_decrappify.units`, as in the Segment dock:
    :meth:`table` / :meth:`to_csv` and :meth:`summary_table` / :meth:`summary_csv` name a
    3-D object's size a volume and a 2-D one's an area, with the unit in the column name
    (``volume_um3``, ``area_um2``, ``centroid_x_um``; ``nm`` for objects so small that µm
    would need an exponent, :func:`~napari_decrappify.units.shown_unit`), and densities per
    µm³ / µm² (``density_per_um3``); :meth:`summary_lines` says the same in words.
    """

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    unit: str = "pixel"
    field_size: float = 0.0
    columns: list[str] = dataclass_field(default_factory=list)
    summary_columns: list[str] = dataclass_field(default_factory=list)

    @property
    def spatial_ndim(self) -> int:
        """2 or 3: the objects' spatial axes (3 when there is a ``centroid_z``)."""
        return 3 if "centroid_z" in self.columns else 2

    @property
    def length_unit(self) -> str:
        """The one length unit people read this table in (``µm``, ``nm`` or ``px``), chosen by
        the objects' median area / volume (:func:`napari_decrappify.units.shown_unit`)."""
        return units.shown_unit(self.unit, [r.get("area") for r in self.rows], self.spatial_ndim)

    def _people(self, key: str) -> tuple[str | None, int]:
        """(column name for people, power of the length unit) of a row or summary key; the name
        is None for a column people do not need (``density_unit``: the name says it)."""
        nd, shown = self.spatial_ndim, self.length_unit
        size = units.size_word(nd)
        length = units.column_unit(self.unit, 1, shown)
        named = {"area": (f"{size}_{units.column_unit(self.unit, nd, shown)}", nd),
                 # a count, not a size: how many pixels / voxels the object covers
                 "area_px": ("voxels" if nd == 3 else "pixels", 0),
                 "equivalent_diameter": (f"equivalent_diameter_{length}", 1),
                 "mean_area": (f"mean_{size}_{units.column_unit(self.unit, nd, shown)}", nd),
                 "mean_equivalent_diameter": (f"mean_equivalent_diameter_{length}", 1),
                 "density": (units.density_column(self.unit, nd), -1),
                 "density_unit": (None, 0)}
        if key.startswith("centroid_"):
            return f"{key}_{length}", 1
        return named.get(key, (key, 0))

    def _for_people(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
                    ) -> tuple[list[str], list[dict[str, Any]]]:
        nd, shown = self.spatial_ndim, self.length_unit
        keys = list(columns) + [k for r in rows for k in r if k not in columns]
        keys = list(dict.fromkeys(keys))
        names = {k: self._people(k) for k in keys}
        out = []
        for r in rows:
            row = {}
            for k, v in r.items():
                name, power = names[k]
                if name is None:
                    continue
                if isinstance(v, float | np.floating):
                    if power == -1:  # a density: always per µm² / µm³, as the dock says it
                        v = units.per_um(v, self.unit, nd)
                    elif power:
                        v = units.to_display(v, self.unit, power, shown)
                row[name] = v
            out.append(row)
        return [names[k][0] for k in keys if names[k][0] is not None], out

    def table(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The per-object rows for people (what :meth:`to_csv` writes).

        Returns
        -------
        columns : list of str
            ``label``, (``t``, ``c``), ``class_id``, ``class``, ``area_um2`` (2-D) or
            ``volume_um3`` (3-D), ``pixels`` / ``voxels`` (the object's size as a count),
            ``centroid_<axis>_um``, ``equivalent_diameter_um``, ``mean_intensity``; ``nm``
            instead of ``um`` for tiny objects, ``px`` without a physical unit.
        rows : list of dict
            One per object, keyed by ``columns``, the values in those units.
        """
        return self._for_people(self.rows, self.columns)

    def summary_table(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The per-class summary for people (what :meth:`summary_csv` writes).

        Returns
        -------
        columns : list of str
            ``class_id``, ``class``, ``count``, ``density_per_um3`` (``_um2`` in 2-D: objects
            per µm³ of the field), ``mean_volume_um3`` (``mean_area_um2``),
            ``mean_equivalent_diameter_um``, in the units of :meth:`table`.
        rows : list of dict
            One per class.
        """
        return self._for_people(self.summary, self.summary_columns)

    def summary_lines(self) -> list[str]:
        """The summary in words, one line per class: ``vesicle: 12 objects, 58 per µm³, mean
        volume 33510 nm³, mean diameter 40 nm``.

        Returns
        -------
        list of str
            One line per class of :attr:`summary`.
        """
        nd, shown, unit = self.spatial_ndim, self.length_unit, self.unit
        lines = []
        for s in self.summary:
            n = s["count"]
            line = f"{s['class']}: {n} object{'' if n == 1 else 's'}"
            if n:
                mean = units.to_display(s["mean_area"], unit, nd, shown)
                diameter = units.to_display(s["mean_equivalent_diameter"], unit, 1, shown)
                line += (f", {units.density_text(s['density'], unit, nd)}, mean "
                         f"{units.size_word(nd)} {units.number(mean)} "
                         f"{units.display_unit(unit, nd, shown)}, mean diameter "
                         f"{units.number(diameter)} {units.display_unit(unit, 1, shown)}")
            lines.append(line)
        return lines

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the per-object table for people (:meth:`table`; a header even when there are
        no objects).

        Parameters
        ----------
        path : path
            The CSV file.

        Returns
        -------
        Path
            ``path``.
        """
        columns, rows = self.table()
        return write_csv(rows, path, columns=columns)

    def summary_csv(self, path: str | os.PathLike) -> Path:
        """Write the per-class summary for people (:meth:`summary_table`).

        Parameters
        ----------
        path : path
            The CSV file.

        Returns
        -------
        Path
            ``path``.
        """
        columns, rows = self.summary_table()
        return write_csv(rows, path, columns=columns)


def _csv_value(v: Any) -> Any:
    # str of a float is its shortest round-trip repr: stage coordinates such as 12345715.0
    # keep every digit (a fixed number of significant digits would round them)
    return str(v) if isinstance(v, float | np.floating) else v


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
              columns: Sequence[str] | None = None) -> Path:
    """Write dict rows to a CSV, atomically.

    Parameters
    ----------
    rows : sequence of mapping
        One dict per row.
    path : path
        The CSV file.
    columns : sequence of str, optional
        Columns first, in this order (written as the header even with no rows); keys of the
        rows not among them follow in first-seen order.

    Returns
    -------
    Path
        ``path``. Floats are written with full precision (they read back exactly).
    """
    path = Path(path)
    cols: list[str] = list(columns or [])
    for r in rows:
        for key in r:
            if key not in cols:
                cols.append(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({key: _csv_value(v) for key, v in r.items()})
    tmp.replace(path)
    return path


def measure(instance_labels: np.ndarray, image: np.ndarray | None = None,
            classes: Sequence[str] | None = None, pixel_size: Sequence[float] | None = None, *,
            semantic: np.ndarray | None = None, translate: Sequence[float] | None = None,
            unit: str = "pixel", axes: str | None = None) -> Measurements:
    """Measure objects: class, area, centroid, equivalent diameter, mean intensity; per-class
    counts and density.

    Parameters
    ----------
    instance_labels : integer array
        Objects (0 = none), e.g. from :func:`instances`.
    image : array, optional
        Intensities for ``mean_intensity`` (same shape).
    classes : sequence of str, optional
        Names of semantic labels ``1..K``.
    pixel_size, translate : sequence of float, optional
        Physical pixel size and origin per axis (a napari layer's ``scale`` / ``translate``);
        default 1 and 0.
    semantic : integer array, optional
        Semantic labels, to give each object its class: the most common value under it, per
        plane with ``axes``. Without it every object gets the first object class of
        ``classes`` (the first name that is not background-like, :func:`object_class_ids`),
        or class 0 ("none") without object class names.
    unit : str
        Length unit of ``pixel_size``: the rows stay in it; :meth:`Measurements.to_csv` and
        the summary convert to µm (nm for tiny objects) by it.
    axes : str, optional
        With T/C axes, objects are measured per plane (``t``/``c`` columns).
    """
    from skimage.measure import regionprops_table

    inst = np.asarray(instance_labels)
    if not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"instance labels must be integers, got dtype {inst.dtype}")
    if image is not None:
        image = np.asarray(image)
        if image.shape != inst.shape:
            raise ValueError(f"image shape {image.shape} differs from the labels {inst.shape}")
    if semantic is not None and np.shape(semantic) != inst.shape:
        raise ValueError(f"semantic labels shape {np.shape(semantic)} differs from {inst.shape}")
    nd = inst.ndim
    scale = np.asarray(pixel_size if pixel_size is not None else (1.0,) * nd, float)
    origin = np.asarray(translate if translate is not None else (0.0,) * nd, float)
    if len(scale) != nd or len(origin) != nd:
        raise ValueError(f"pixel_size/translate need {nd} values (one per axis)")
    if not (np.isfinite(scale).all() and (scale > 0).all() and np.isfinite(origin).all()):
        raise ValueError(f"pixel_size must be finite and > 0 and translate finite, got "
                         f"{tuple(scale)} / {tuple(origin)}")
    if inst.size and inst.min() < 0:  # regionprops skips them: objects would vanish silently
        raise ValueError(f"instance labels must be >= 0 (0 = none), found {int(inst.min())}")
    loop, nsp = _spatial_loop(inst.shape, axes)
    lead_names = [a.lower() for a in (axes or "")[: nd - nsp]]
    sp_names = "zyx"[3 - nsp:]
    sp_scale, sp_origin = scale[nd - nsp:], origin[nd - nsp:]
    voxel = float(np.prod(sp_scale))
    if semantic is not None:
        semantic = np.asarray(semantic)
    object_ids = object_class_ids(classes) if classes else []
    # not 1: with the module's convention label 1 is usually "background"
    default_class = object_ids[0] if object_ids else 0
    columns = (["label", *lead_names, "class_id", "class", "area", "area_px"]
               + [f"centroid_{ax}" for ax in sp_names] + ["equivalent_diameter"]
               + (["mean_intensity"] if image is not None else []))
    rows = []
    for idx in loop:
        plane = inst[idx]
        if not plane.any():
            continue
        # per plane: ids may restart in every frame, so one id is several objects in a stack
        cls_of = object_classes(plane, semantic[idx]) if semantic is not None else {}
        props = ["label", "area", "centroid"] + (["intensity_mean"] if image is not None else [])
        t = regionprops_table(plane, image[idx] if image is not None else None, properties=props)
        for j in range(len(t["label"])):
            lab = int(t["label"][j])
            area_px = int(t["area"][j])
            area = area_px * voxel
            cid = int(cls_of.get(lab, default_class))
            row: dict[str, Any] = {"label": lab}
            for name, i in zip(lead_names, idx, strict=True):
                row[name] = int(i)
            row.update({"class_id": cid, "class": class_name(classes, cid), "area": area,
                        "area_px": area_px})
            for d, ax in enumerate(sp_names):
                row[f"centroid_{ax}"] = float(t[f"centroid-{d}"][j] * sp_scale[d] + sp_origin[d])
            row["equivalent_diameter"] = (2 * math.sqrt(area / math.pi) if nsp == 2
                                          else (6 * area / math.pi) ** (1 / 3))
            if image is not None:
                row["mean_intensity"] = float(t["intensity_mean"][j])
            rows.append(row)
    field_size = float(np.prod(inst.shape[nd - nsp:])) * voxel * len(loop)
    summary = []
    ids = sorted({r["class_id"] for r in rows} | set(object_ids))
    for cid in ids:
        sel = [r for r in rows if r["class_id"] == cid]
        summary.append({
            "class_id": cid, "class": class_name(classes, cid), "count": len(sel),
            "density": len(sel) / field_size if field_size else float("nan"),
            "mean_area": float(np.mean([r["area"] for r in sel])) if sel else float("nan"),
            "mean_equivalent_diameter": (float(np.mean([r["equivalent_diameter"] for r in sel]))
                                         if sel else float("nan")),
            "density_unit": f"1/{unit}^{nsp}",
        })
    return Measurements(rows=rows, summary=summary, unit=unit, field_size=field_size,
                        columns=columns,
                        summary_columns=["class_id", "class", "count", "density", "mean_area",
                                         "mean_equivalent_diameter", "density_unit"])


# --------------------------------------------------------------------------- matching


def _safe_div(a: float, b: float, both_zero: float) -> float:
    return a / b if b else both_zero


def _centroids(lab: np.ndarray, ids: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    if not len(ids):
        return np.zeros((0, lab.ndim))
    return np.asarray(ndi.center_of_mass(np.ones(lab.shape), lab, ids), float).reshape(len(ids), lab.ndim)


def match(pred: np.ndarray, gt: np.ndarray, iou: float = 0.5, *,
          centroid_distance: float | None = None, pixel_size: Sequence[float] | None = None,
          return_pairs: bool = False) -> dict[str, Any]:
    """Match predicted objects to ground-truth objects one to one.

    A pair matches when its IoU is ``>= iou`` (or, with ``centroid_distance``, when the
    centroids are within that distance, in physical units with ``pixel_size``). Among the
    candidate pairs the one-to-one assignment with the most matches is taken, the total IoU
    (the total distance) only breaking ties (Hungarian algorithm, StarDist's cost
    ``-(IoU >= iou) - IoU / (2 min(n_pred, n_gt))``), so thresholds below 0.5, where an object
    may overlap several others by more than the threshold, count every match they can.

    Parameters
    ----------
    pred, gt : integer arrays
        Instance labels (0 = none) of the same shape.
    iou : float
        IoU threshold, ``0 < iou <= 1`` (pairs that do not overlap never match).
    centroid_distance : float, optional
        Match by centroid distance instead of IoU.
    pixel_size : sequence of float, optional
        Physical pixel size per axis, for ``centroid_distance``.
    return_pairs : bool
        Also return the matched ``(pred id, gt id)`` pairs as ``"pairs"``.

    Returns
    -------
    dict
        ``n_pred``, ``n_gt``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``,
        ``fp_rate`` (FP / predicted), ``fn_rate`` (FN / ground truth: the fraction missed),
        ``count_error`` (predicted - true), ``relative_count_error``, ``mean_matched_iou``.
        With no objects on either side every score is 1; with objects on one side only, 0.
    """
    from scipy.optimize import linear_sum_assignment

    if centroid_distance is None and not 0 < iou <= 1:
        why = ": IoU 0 would pair objects that do not overlap" if iou == 0 else ""
        raise ValueError(f"iou must be a threshold in (0, 1], got {iou}{why}")
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {g.shape}")
    for name, a in (("prediction", p), ("ground truth", g)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be integer instance labels, got dtype {a.dtype}")
    pf, gf = p.ravel().astype(np.int64), g.ravel().astype(np.int64)
    p_ids = np.unique(pf[pf > 0])
    g_ids = np.unique(gf[gf > 0])
    both = (pf > 0) & (gf > 0)
    pairs, inter = np.unique(np.stack([pf[both], gf[both]]), axis=1, return_counts=True) \
        if both.any() else (np.zeros((2, 0), np.int64), np.zeros(0, np.int64))
    p_area = dict(zip(*np.unique(pf[pf > 0], return_counts=True), strict=True))
    g_area = dict(zip(*np.unique(gf[gf > 0], return_counts=True), strict=True))
    ious = np.array([n / (p_area[a] + g_area[b] - n) for (a, b), n in
                     zip(pairs.T.tolist(), inter.tolist(), strict=True)], float)
    iou_of = {(a, b): v for (a, b), v in zip(pairs.T.tolist(), ious.tolist(), strict=True)}
    matched: list[tuple[int, int]] = []
    if centroid_distance is None:
        cand = [(a, b) for (a, b), v in iou_of.items() if v >= iou]
        if cand:
            ca = sorted({a for a, _ in cand})
            cb = sorted({b for _, b in cand})
            m = np.zeros((len(ca), len(cb)))
            ia, ib = {v: i for i, v in enumerate(ca)}, {v: i for i, v in enumerate(cb)}
            for a, b in cand:
                m[ia[a], ib[b]] = iou_of[(a, b)]
            # StarDist's cost: each match is worth 1, the IoUs sum to < 1/2 and only break ties,
            # so the assignment maximises the number of matches (maximum total IoU would trade
            # two matches of IoU 0.2 for one of 0.7 below a 0.5 threshold)
            good = m >= iou
            cost = -good.astype(float) - m / (2 * min(m.shape))
            rows, cols = linear_sum_assignment(cost)
            matched = [(ca[r], cb[c]) for r, c in zip(rows, cols, strict=True)
                       if good[r, c] and m[r, c] > 0]
        criterion = f"IoU >= {iou}"
    else:
        from scipy.spatial import cKDTree

        sc = np.asarray(pixel_size if pixel_size is not None else (1.0,) * p.ndim, float)
        if sc.shape != (p.ndim,) or not (np.isfinite(sc).all() and (sc > 0).all()):
            raise ValueError(f"pixel_size needs {p.ndim} finite values > 0 (one per axis of the "
                             f"labels), got {pixel_size}")
        cp = _centroids(p, p_ids) * sc
        cg = _centroids(g, g_ids) * sc
        if len(cp) and len(cg):
            d = cKDTree(cp).sparse_distance_matrix(cKDTree(cg), centroid_distance).toarray()
            close = np.zeros_like(d, bool)
            keys = cKDTree(cp).query_ball_tree(cKDTree(cg), centroid_distance)
            for r, cs in enumerate(keys):
                close[r, cs] = True
            cost = np.where(close, d, 1e9)
            rows, cols = linear_sum_assignment(cost)
            matched = [(int(p_ids[r]), int(g_ids[c])) for r, c in zip(rows, cols, strict=True)
                       if close[r, c]]
        criterion = f"centroid distance <= {centroid_distance}"
    n_pred, n_gt, tp = len(p_ids), len(g_ids), len(matched)
    fp, fn = n_pred - tp, n_gt - tp
    empty = 1.0 if n_pred == 0 and n_gt == 0 else 0.0
    precision = _safe_div(tp, n_pred, empty)
    recall = _safe_div(tp, n_gt, empty)
    f1 = _safe_div(2 * tp, n_pred + n_gt, empty)
    out = {
        "criterion": criterion, "n_pred": n_pred, "n_gt": n_gt, "tp": tp, "fp": fp, "fn": fn,
        "precision": precision, "recall": recall, "f1": f1,
        "fp_rate": _safe_div(fp, n_pred, 0.0), "fn_rate": _safe_div(fn, n_gt, 0.0),
        "count_error": n_pred - n_gt, "relative_count_error": _safe_div(n_pred - n_gt, n_gt, 0.0),
        "mean_matched_iou": (float(np.mean([iou_of.get(m_, 0.0) for m_ in matched]))
                             if matched else float("nan")),
    }
    if return_pairs:
        out["pairs"] = matched
    return out


# --------------------------------------------------------------------------- count comparison


def segment_objects(model, image, *, method: str = "watershed", min_size: int = 0, h: float = 2.0,
                    axes: str | None = None, pixel_size: Sequence[float] | None = None,
                    **tile_options) -> tuple[np.ndarray, Segmentation]:
    """:func:`predict` then :func:`instances` of the model's object classes (``pixel_size``:
    per spatial axis or per axis of the labels, for the watershed)."""
    seg = segment(image, model, axes, objects=method, min_size=min_size, h=h,
                  pixel_size=pixel_size, **tile_options)
    return seg.objects, seg


def compare_counts(sources: Mapping[str, np.ndarray], reference: np.ndarray | str, *, model=None,
                   method: str = "watershed", iou: float = 0.5, centroid_distance: float | None = None,
                   min_size: int = 0, h: float = 2.0, pixel_size: Sequence[float] | None = None,
                   axes: str | None = None, progress: ProgressFn | None = None,
                   cancel: threading.Event | None = None) -> dict[str, Any]:
    """Object counts, TP/FP/FN and F1 of several sources (e.g. LR-bicubic, restored, HR)
    against a reference, like PSSR's vesicle-count validation.

    Parameters
    ----------
    sources : mapping name -> array
        With ``model``: images on the reference's grid (upsample LR first, e.g.
        :func:`napari_decrappify.metrics.bicubic_upsample`), each segmented by the same model
        and split into objects. Without ``model``: instance label arrays.
    reference : array or str
        Ground-truth instance labels, or the name of one of ``sources`` whose objects are the
        reference (e.g. ``"HR"`` when there is no manual annotation).
    iou, centroid_distance
        Matching criterion (:func:`match`).
    pixel_size : sequence of float, optional
        Physical pixel size per axis of the reference: for ``centroid_distance`` and, with
        ``model``, for the watershed split (:func:`instances`).

    Returns
    -------
    dict
        ``{"reference": ..., "reference_count": n, "sources": {name: match stats + "count"}}``
        (plus ``"objects"``: the instance arrays, not JSON; pop it before dumping).
    """
    objects: dict[str, np.ndarray] = {}
    names = list(sources)
    for n, name in enumerate(names):
        if cancel is not None and cancel.is_set():
            from .io import RestoreCancelled

            raise RestoreCancelled("count comparison cancelled")
        src = sources[name]
        if model is not None:
            objects[name], _ = segment_objects(model, src, method=method, min_size=min_size, h=h,
                                               axes=axes, pixel_size=pixel_size)
        else:
            objects[name] = np.asarray(src)
        if progress is not None:
            progress({"event": "sources", "done": n + 1, "total": len(names), "source": name})
    if isinstance(reference, str):
        if reference not in objects:
            raise ValueError(f"reference {reference!r} is not one of the sources {names}")
        ref = objects[reference]
        ref_name = reference
    else:
        ref = np.asarray(reference)
        ref_name = "ground truth"
    out: dict[str, Any] = {"reference": ref_name, "reference_count": int(len(np.unique(ref[ref > 0]))),
                           "method": method, "min_size": min_size, "sources": {}}
    for name in names:
        if objects[name].shape != ref.shape:
            raise ValueError(f"source {name!r} has shape {objects[name].shape} but the reference "
                             f"{ref.shape}: bring it to the reference grid first (upsample LR)")
        stats = match(objects[name], ref, iou, centroid_distance=centroid_distance,
                      pixel_size=pixel_size)
        stats["count"] = stats["n_pred"]
        out["sources"][name] = stats
    out["objects"] = objects
    return out


# --------------------------------------------------------------------------- blinded counting study

STUDY_VERSION = 1


def match_points(a, b, max_distance: float) -> dict[str, Any]:
    """One-to-one matching of two point sets (``(n, 2)``) within ``max_distance`` (Hungarian,
    minimum total distance). ``a`` is scored against ``b``: TP, FP (in ``a`` only), FN (in ``b``
    only), precision, recall, F1 (1.0 when both are empty)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    a = np.asarray(a, float).reshape(-1, 2)
    b = np.asarray(b, float).reshape(-1, 2)
    tp = 0
    if len(a) and len(b):
        d = cdist(a, b)
        cost = np.where(d <= max_distance, d, 1e9)
        rows, cols = linear_sum_assignment(cost)
        tp = int(sum(d[r, c] <= max_distance for r, c in zip(rows, cols, strict=True)))
    fp, fn = len(a) - tp, len(b) - tp
    empty = 1.0 if not len(a) and not len(b) else 0.0
    return {"count": len(a), "reference_count": len(b), "tp": tp, "fp": fp, "fn": fn,
            "precision": _safe_div(tp, len(a), empty), "recall": _safe_div(tp, len(b), empty),
            "f1": _safe_div(2 * tp, len(a) + len(b), empty)}


def _totals(parts: list[dict]) -> dict[str, Any]:
    tp, fp, fn = (sum(p[k] for p in parts) for k in ("tp", "fp", "fn"))
    n, ref = tp + fp, tp + fn
    empty = 1.0 if n == 0 and ref == 0 else 0.0
    return {"count": n, "reference_count": ref, "tp": tp, "fp": fp, "fn": fn,
            "precision": _safe_div(tp, n, empty), "recall": _safe_div(tp, ref, empty),
            "f1": _safe_div(2 * tp, n + ref, empty), "fn_rate": _safe_div(fn, ref, 0.0),
            "fp_rate": _safe_div(fp, n, 0.0), "crops": len(parts)}


@dataclass
class CountingStudy:
    """A blinded counting study, as PSSR was validated by human experts.

    The same ``size`` x ``size`` crops (``positions``, top-left corners on the common grid) are
    cut from every source (e.g. LR upsampled bicubically, restored, HR); all crops are
    shuffled (``order``: ``(source index, position index)`` per presented crop) and shown with
    the source hidden; the annotator clicks every object. :meth:`unblind` then scores each
    source's clicks against the ``reference`` source's clicks at the same place (clicks closer
    than ``max_distance`` pixels match one to one). Saved as JSON after every crop, so a study
    can be paused and resumed; two annotators' files compare with :func:`annotator_agreement`.
    """

    sources: list[str]
    reference: str
    size: int
    shape: tuple[int, int]
    positions: list[tuple[int, int]]
    order: list[tuple[int, int]]
    seed: int = 0
    annotator: str = ""
    max_distance: float = 6.0
    clicks: dict[int, list[list[float]]] = dataclass_field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def create(cls, shape: Sequence[int], sources: Sequence[str], reference: str, *,
               n_locations: int = 4, size: int = 128, seed: int = 0, annotator: str = "",
               max_distance: float = 6.0) -> CountingStudy:
        """Choose ``n_locations`` non-overlapping crop positions (seeded) and shuffle the crops."""
        sources = list(sources)
        if len(set(sources)) != len(sources) or not sources:
            raise ValueError(f"sources must be distinct names, got {sources!r}")
        if reference not in sources:
            raise ValueError(f"the reference {reference!r} must be one of the sources {sources}")
        h, w = int(shape[-2]), int(shape[-1])
        size = int(min(size, h, w))
        if size < 8:
            raise ValueError(f"images of {h} x {w} pixels are too small for a counting study")
        cells = [(y, x) for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]
        if n_locations < 1 or n_locations > len(cells):
            raise ValueError(f"{n_locations} locations of {size} x {size} do not fit in {h} x {w} "
                             f"(at most {len(cells)})")
        rng = np.random.default_rng(seed)
        positions = [cells[i] for i in sorted(rng.choice(len(cells), n_locations, replace=False))]
        pairs = [(s, p) for s in range(len(sources)) for p in range(n_locations)]
        order = [pairs[i] for i in rng.permutation(len(pairs))]
        return cls(sources=sources, reference=reference, size=size, shape=(h, w),
                   positions=positions, order=order, seed=seed, annotator=annotator,
                   max_distance=max_distance)

    # -- progress
    @property
    def n_crops(self) -> int:
        return len(self.order)

    @property
    def n_done(self) -> int:
        return len(self.clicks)

    def next_index(self) -> int | None:
        """The first crop not yet annotated, or None when the study is complete."""
        return next((k for k in range(self.n_crops) if k not in self.clicks), None)

    def crop_box(self, k: int) -> tuple[str, tuple[slice, slice]]:
        """(hidden source name, (y slice, x slice)) of presented crop ``k``."""
        s, p = self.order[k]
        y, x = self.positions[p]
        return self.sources[s], (slice(y, y + self.size), slice(x, x + self.size))

    def crop(self, k: int, images: Mapping[str, np.ndarray]) -> np.ndarray:
        """The pixels of crop ``k`` from ``images`` (name -> 2-D array on the common grid)."""
        name, box = self.crop_box(k)
        if name not in images:
            raise ValueError(f"the study needs an image for every source; {name!r} is missing")
        img = np.asarray(images[name])
        if img.shape[-2:] != tuple(self.shape):
            raise ValueError(f"image {name!r} is {img.shape[-2:]}, the study was made for "
                             f"{tuple(self.shape)}")
        return img[(..., *box)]

    def record(self, k: int, points) -> None:
        """Store the clicks of crop ``k`` (crop pixel coordinates ``(n, 2)``, y then x)."""
        if not 0 <= k < self.n_crops:
            raise ValueError(f"crop {k} does not exist (0..{self.n_crops - 1})")
        pts = np.asarray(points, float).reshape(-1, 2)
        if len(pts) and (pts.min() < -0.5 or pts.max() > self.size - 0.5):
            raise ValueError(f"clicks must lie inside the {self.size} x {self.size} crop")
        self.clicks[k] = pts.round(2).tolist()

    # -- persistence
    def to_dict(self) -> dict[str, Any]:
        return {"study_version": STUDY_VERSION, "sources": self.sources, "reference": self.reference,
                "size": self.size, "shape": list(self.shape),
                "positions": [list(p) for p in self.positions],
                "order": [list(o) for o in self.order], "seed": self.seed,
                "annotator": self.annotator, "max_distance": self.max_distance,
                "clicks": {str(k): v for k, v in sorted(self.clicks.items())}}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the study (atomically) as JSON; the clicks so far are kept for resuming."""
        from .io import write_text_atomic

        path = write_text_atomic(path or self.path or "counting-study.json",
                                 json.dumps(self.to_dict(), indent=1))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CountingStudy:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the counting study {path}: {e}") from e
        if not isinstance(d, dict) or d.get("study_version") != STUDY_VERSION:
            raise ValueError(f"{path} is not a counting study of version {STUDY_VERSION}")
        try:
            study = cls(sources=list(d["sources"]), reference=d["reference"], size=int(d["size"]),
                        shape=tuple(d["shape"]), positions=[tuple(p) for p in d["positions"]],
                        order=[tuple(o) for o in d["order"]], seed=int(d.get("seed", 0)),
                        annotator=d.get("annotator", ""),
                        max_distance=float(d.get("max_distance", 6.0)),
                        clicks={int(k): v for k, v in d.get("clicks", {}).items()}, path=path)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a valid counting study ({e})") from e
        return study

    # -- results
    def _by_location(self) -> dict[tuple[int, int], list[list[float]]]:
        """(source index, position index) -> clicks, for annotated crops."""
        return {self.order[k]: v for k, v in self.clicks.items()}

    def unblind(self, max_distance: float | None = None) -> dict[str, Any]:
        """Per source: counts, TP, FN (missed), FP against the reference source's clicks at the
        same locations (locations where both were annotated), with precision, recall, F1."""
        md = self.max_distance if max_distance is None else max_distance
        loc = self._by_location()
        r = self.sources.index(self.reference)
        out: dict[str, Any] = {"reference": self.reference, "annotator": self.annotator,
                               "max_distance": md, "complete": self.next_index() is None,
                               "sources": {}}
        for s, name in enumerate(self.sources):
            parts = [match_points(loc[(s, p)], loc[(r, p)], md) for p in range(len(self.positions))
                     if (s, p) in loc and (r, p) in loc]
            out["sources"][name] = _totals(parts)
        return out


def annotator_agreement(a: CountingStudy, b: CountingStudy, max_distance: float | None = None
                        ) -> dict[str, Any]:
    """Agreement of two annotators who did the same study (same crops): per source, annotator
    A's clicks matched against B's (F1 is symmetric), over the crops both annotated."""
    if (a.sources, a.positions, a.size, tuple(a.shape)) != (b.sources, b.positions, b.size,
                                                            tuple(b.shape)):
        raise ValueError("the two studies do not show the same crops (different sources, positions "
                         "or size): create the second one from the first's JSON")
    md = a.max_distance if max_distance is None else max_distance
    la, lb = a._by_location(), b._by_location()
    out: dict[str, Any] = {"annotators": [a.annotator, b.annotator], "max_distance": md,
                           "sources": {}}
    for s, name in enumerate(a.sources):
        parts = [match_points(la[(s, p)], lb[(s, p)], md) for p in range(len(a.positions))
                 if (s, p) in la and (s, p) in lb]
        out["sources"][name] = _totals(parts)
    return out


def new_session(study: CountingStudy, annotator: str, seed: int | None = None) -> CountingStudy:
    """A second annotator's session on the same crops, in a fresh random order."""
    rng = np.random.default_rng(study.seed + 1 if seed is None else seed)
    order = [study.order[i] for i in rng.permutation(study.n_crops)]
    return CountingStudy(sources=list(study.sources), reference=study.reference, size=study.size,
                         shape=tuple(study.shape), positions=list(study.positions), order=order,
                         seed=study.seed, annotator=annotator, max_distance=study.max_distance)


__all__ = [
    "BACKGROUND_NAMES", "CountingStudy", "Measurements", "annotator_agreement", "match_points",
    "new_session", "SegmentConfig", "Segmentation", "SparseSegLoss",
    "check_classes", "compare_counts", "instances", "match", "measure", "object_class_ids",
    "segmentation_arch",
    "object_classes", "predict", "segment", "segment_objects", "train_segmenter", "write_csv",
]

