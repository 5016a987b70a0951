"""Restoration's training data: HR normalised, crappified on the fly, split by plane.

:func:`crappified_datasets` is what :func:`napari_decrappify.train.train` and
:func:`~napari_decrappify.train.find_lr` share: the normalisation (a fine-tune's keeps the
start model's intensity mapping, :func:`fine_tune_norm`), the crappifier, the
train/validation patch datasets, and the domain statistics the out-of-domain check compares
inputs with (:func:`probe_inputs`, :func:`plane_spread`).
"""

from __future__ import annotations

import numpy as np

from .config import NormConfig, TrainConfig
from .crappify import Crappifier
from .data import CrappifiedPatches, PlaneStack, UnitSpace, make_stacks, percentile_norm
from .domain import training_spans, training_statistics
from .normalization import input_levels

# the out-of-domain reference of an augmented model: statistics of 16 drawn acquisitions
# (zoom, histogram, noise, blur), 32 patches each
SPAN_GROUPS, SPAN_GROUP = 16, 32
# the spread of the training data itself (every model): 8 blocks of consecutive training planes,
# 32 patches each (a range of single patches would be the estimator's noise; on CREMI, ranges
# from 32- and 64-patch groups under two seeds agree within 0.05 in slope and 2% in noise)
SPREAD_GROUPS, SPREAD_GROUP = 8, 32


def probe_inputs(train_stacks, crappifier, config: TrainConfig, arch, unit_space) -> list:
    """Crappified training inputs (network units) of a fixed draw, apart from the training
    draws: what the recorded ``input_levels`` and the domain statistics are measured on."""
    probe = CrappifiedPatches(train_stacks, crappifier, config.patch_size, arch.frames,
                              length=256, seed=config.seed + 2, fixed=True,
                              unit_space=unit_space)
    return [probe[i][0] for i in range(len(probe))]


def fine_tune_norm(hr_images, norm: NormConfig, unit, crappifier, config: TrainConfig, arch,
                    axis: int, start_levels: tuple[float, float]) -> NormConfig:
    """The normalisation of a fine-tune's data that keeps the start model's intensity mapping.

    A fine-tune that normalised the new HR by its own percentiles handed the start weights
    inputs and targets on another contrast scale than the one they were trained on: on 8 nm
    CREMI, 2x the start's input spread, and the fine-tuned em-4x ended below em-4x as it was
    (bench adaptation, 21.38 against 21.52 dB at 10 min). Mapped instead the way the start model
    maps this data at inference (the inputs' percentiles to its ``input_levels``), training starts
    from exactly what the start model does to the data.
    """
    stacks, _, _ = make_stacks(hr_images, norm, axis, config.val_fraction, config.train_planes,
                               config.valid_planes, min_rows=config.patch_size * config.scale)
    lo, hi = input_levels(probe_inputs(stacks, crappifier, config, arch,
                                        UnitSpace(norm, unit)))
    span = norm.high - norm.low  # the probe's percentiles back in the data's units
    start = NormConfig(mode="percentile", input_levels=tuple(start_levels))
    aligned = start.for_input(norm.low + lo * span, norm.low + hi * span)
    return NormConfig(low=aligned.low, high=aligned.high)


def crappified_datasets(hr_images, config: TrainConfig, arch, axis: int, n_train: int,
                         n_valid: int, *, measure_inputs: bool = True,
                         start_levels: tuple[float, float] | None = None):
    """Normalisation, crappifier, split by plane and the train/validation patch datasets that
    :func:`~napari_decrappify.train.train` and :func:`~napari_decrappify.train.find_lr` share.

    ``start_levels``: the ``input_levels`` of the model a fine-tune starts from. The new data
    is then normalised so that its crappified inputs land where the start model's did (the
    mapping the start model applies to this data at inference), instead of by the new HR's
    own percentiles.
    """
    norm = percentile_norm(hr_images)
    crappifier = Crappifier(config.crappify.model_copy(update={"scale": config.scale}))
    # noise levels mean what they mean in the Crappify dock: on the HR dtype's range (found
    # from the data's own normalisation, and kept when a fine-tune re-normalises below)
    unit = UnitSpace.of(norm, hr_images[0].dtype).unit
    percentile_mode = config.normalisation == "percentile" and measure_inputs
    if percentile_mode and start_levels is not None:
        norm = fine_tune_norm(hr_images, norm, unit, crappifier, config, arch, axis,
                               start_levels)
    train_stacks, valid_stacks, split = make_stacks(
        hr_images, norm, axis, config.val_fraction, config.train_planes, config.valid_planes,
        min_rows=config.patch_size * config.scale)
    unit_space = UnitSpace(norm, unit)
    domain = {}
    if percentile_mode:
        # what the network sees of its training inputs: inputs are mapped there at inference.
        # Its own patches (fixed seed, apart from the training draws, which stay as they were),
        # crappified once for both measurements
        inputs = probe_inputs(train_stacks, crappifier, config, arch, unit_space)
        norm = NormConfig.model_validate({**norm.model_dump(), "mode": "percentile",
                                          "input_levels": input_levels(inputs)})
        domain = training_statistics(inputs, norm.input_levels)
        domain["spread"] = plane_spread(train_stacks, crappifier, config, unit_space)
        if config.augment.active:
            # what an augmented network saw is a span: one statistic per drawn acquisition
            varied = CrappifiedPatches(train_stacks, crappifier, config.patch_size, arch.frames,
                                       length=SPAN_GROUPS * SPAN_GROUP, seed=config.seed + 3,
                                       fixed=True, unit_space=unit_space,
                                       augmentation=config.augment, group=SPAN_GROUP)
            domain["spans"] = training_spans([varied[i][0] for i in range(len(varied))],
                                             SPAN_GROUP)
    train_ds = CrappifiedPatches(train_stacks, crappifier, config.patch_size, arch.frames,
                                 length=n_train, seed=config.seed, any_offset=config.any_offset,
                                 unit_space=unit_space, augmentation=config.augment)
    valid_ds = CrappifiedPatches(valid_stacks, crappifier, config.patch_size, arch.frames,
                                 length=n_valid, seed=config.seed + 1, fixed=True,
                                 unit_space=unit_space)
    return norm, crappifier, train_ds, valid_ds, split, domain


def plane_spread(stacks, crappifier: Crappifier, config: TrainConfig,
                  unit_space: UnitSpace) -> dict:
    """The range of the domain statistics over the training planes (``domain["spread"]``).

    The training planes, in order, are cut into up to :data:`SPREAD_GROUPS` blocks of consecutive
    planes (fewer planes than that: each plane is a block, and blocks repeat with other patches);
    each group is :data:`SPREAD_GROUP` crappified patches of one block, measured in its own
    percentiles (:func:`~napari_decrappify.domain.training_spans`). A single pooled value
    missed that one acquisition drifts along z: held-out planes of the training stack itself
    were "out of domain" (CREMI at 32 nm, 100 photons: slope -0.48 at planes 20-24 against a
    pooled -0.74 and blocks from -0.83 to -0.56).
    """
    centres = [(s, i) for s in stacks for i in s.indices]
    blocks = np.array_split(np.arange(len(centres)), min(SPREAD_GROUPS, len(centres)))
    inputs = []
    for g in range(SPREAD_GROUPS):
        # one single-plane stack per centre, so that only this block's planes are drawn; one
        # frame: the statistics are measured on the centre frame, degraded as with neighbours
        block = [PlaneStack(centres[k][0].planes, [centres[k][1]]) for k in blocks[g % len(blocks)]]
        probe = CrappifiedPatches(block, crappifier, config.patch_size, 1, length=SPREAD_GROUP,
                                  seed=config.seed + 4 + g, fixed=True, unit_space=unit_space)
        inputs += [probe[k][0] for k in range(SPREAD_GROUP)]
    return training_spans(inputs, SPREAD_GROUP)


def halo_inputs(valid_ds: CrappifiedPatches, norm: NormConfig, seed: int = 0) -> list[np.ndarray]:
    """Whole crappified validation planes in the model's input units, to measure its halo on
    (:func:`~napari_decrappify.training_runner.record_trained_halo`).

    Up to :data:`~napari_decrappify.engine.halo.TRAINED_PLANES` validation planes (the first
    and the last: apart along z), each a centre crop of at most ``TRAINED_CROP`` LR px,
    crappified like the validation patches (one fixed acquisition per plane, from ``seed``) and
    mapped from the network's units back to the data's (``norm``). A multi-frame model gets
    ``(frames, Y, X)`` stacks, a plane and its neighbours. Planes under ``TRAINED_MIN_SIDE`` LR
    px are left out.
    """
    from .engine.halo import TRAINED_CROP, TRAINED_MIN_SIDE, measurement_picks

    s = valid_ds.crappifier.scale
    rng = np.random.default_rng(seed)
    out = []
    for si, i in measurement_picks(valid_ds.choices):
        stack = valid_ds.stacks[si]
        h, w = (v // s for v in stack.planes.shape[-2:])
        ch, cw = min(h, TRAINED_CROP), min(w, TRAINED_CROP)
        if min(ch, cw) < TRAINED_MIN_SIDE:
            continue
        y0, x0 = (h - ch) // 2 * s, (w - cw) // 2 * s  # on the LR grid: block means line up
        hr = stack.window(i, valid_ds.frames)[:, y0:y0 + ch * s, x0:x0 + cw * s]
        space = valid_ds.unit_space
        frames = hr if space is None else space.to_unit(hr)
        crappify = valid_ds.crappifier.fixed(rng)
        lr = np.stack([crappify(p, seed=rng) for p in frames])
        if space is not None:
            lr = space.from_unit(lr)
        lr = (lr * (norm.high - norm.low) + norm.low).astype(np.float32)
        out.append(lr[0] if valid_ds.frames == 1 else lr)
    return out
