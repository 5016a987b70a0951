"""Training a semantic segmenter from sparse painted labels (:func:`train_segmenter`), with the
class weighting of its loss."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import training_runner as runner
from .classes import check_classes
from .loss import SparseSegLoss, seg_accuracy, seg_dice
from .segment_config import ProgressFn, SegmentConfig
from .training_data import LabelledPatches, _check_init_from, _check_training_data


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


def train_segmenter(images, labels, classes: Sequence[str], config: SegmentConfig | None = None, *,
                    out: str | os.PathLike | None = None, name: str = "segmenter", axis: int = 0,
                    progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                    init_from=None, command: str = "",
                    pixel_size_nm: Sequence[float] | None = None) -> runner.TrainResult:
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
    napari_decrappify.training_runner.TrainResult
        ``result.model.config.training`` records the split, class weights and history.
    """
    from ..data import fingerprint, make_dataloaders, normalize, percentile_norm
    from ..models import build_model, measure_receptive_field, save_model
    from ..models.networks import trainable

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
    device = runner.pick_device(config.device)
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
        previous = runner.start_from(init_from, name, norm)
        model = init_from
    else:
        model = build_model(arch, kind="segmentation", name=name, norm=norm, classes=classes,
                            seed=config.seed, measure_rf=False)
    net = model.net = trainable(model.net)
    events = runner.training_events(config, progress, cancel, [train_ds])
    loss = SparseSegLoss(weights, config.dice_weight if config.loss == "dice_ce" else 0.0)
    # train on logits (log-softmax inside the loss is stable); the saved net ends in softmax
    net.head = "identity"
    try:
        seconds, iterations = runner.fit_model(net, dls, events, loss, [seg_accuracy, seg_dice],
                                               config, device)
        net.eval().cpu()
        # measured on the logits: the softmax outputs sum to 1, so their summed gradient is 0
        model.config.receptive_field = measure_receptive_field(net, model.config.arch)
    finally:
        net.head = "softmax"
        net.eval().cpu()
    if pixel_size_nm is not None:
        model.config.pixel_size_nm = [float(v) for v in pixel_size_nm]
    model.config.training = runner.run_record(
        events, config, device, command=command,
        data_fingerprint=fingerprint(raw_images + raw_labels), split=split,
        stop_reason=events.stop_reason, seconds=seconds, iterations=iterations,
        previous=previous, task="semantic segmentation from sparse labels",
        label_convention="0 = unlabelled (ignored), k = classes[k-1]; output channel k = label k",
        class_weights=weights,
        labelled_pixels={classes[c - 1]: int(sum(int((lab == c).sum()) for lab in labs))
                         for c in range(1, k + 1)})
    runner.record_warnings(model.config.training,
                           [runner.run_divergence_warning(events, config.lr_max)])
    runner.keep_best_scores(model, events,
                            {"valid_accuracy": "seg_accuracy", "valid_dice": "seg_dice"})
    runner.record_trained_halo(model, events.stop_reason,
                               lambda: _halo_images(planes, valid_idx, norm),
                               "labelled validation plane(s)")
    path = save_model(model, out) if out is not None else None
    return runner.finish_run(model, events, seconds, iterations, path, progress)


def _halo_images(planes, valid_idx: Sequence[int], norm) -> list[np.ndarray]:
    """The first and last validation planes, centre-cropped and back in the data's units: what
    :func:`~napari_decrappify.training_runner.record_trained_halo` measures the halo on."""
    from ..engine.halo import TRAINED_MIN_SIDE, centre_crop, measurement_picks

    return [(centre_crop(planes[i]) * (norm.high - norm.low) + norm.low).astype(np.float32)
            for i in measurement_picks(valid_idx)
            if min(planes[i].shape[-2:]) >= TRAINED_MIN_SIDE]
