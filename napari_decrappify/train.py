"""Restoration training: :func:`train` a U-Net on HR images crappified on the fly (or
fine-tune one), and :func:`find_lr`, fastai's learning-rate finder on the same data.

The run itself (fastai ``Learner``, one-cycle fit, progress events, cancel from another
thread, a wall-clock budget, divergence recovery, the run record) is the runner that
segmentation training shares, :mod:`napari_decrappify.training_runner`; the losses are in
:mod:`napari_decrappify.restoration_loss`, the crappified datasets in
:mod:`napari_decrappify.restoration_data`. Every name this module held before that split is
still importable from here.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .config import NormConfig as NormConfig
from .config import TrainConfig
from .crappify import Crappifier as Crappifier
from .data import PairedPatches, fingerprint, make_dataloaders
from .models import (
    RestorationModel,
    build_model,
    dead_encoder_warning,
    inflate_frames,
    measure_receptive_field,
    save_model,
)
from .normalization import measure_percentiles
from .restoration_data import SPAN_GROUP as SPAN_GROUP
from .restoration_data import SPAN_GROUPS as SPAN_GROUPS
from .restoration_data import SPREAD_GROUP as SPREAD_GROUP
from .restoration_data import SPREAD_GROUPS as SPREAD_GROUPS
from .restoration_data import crappified_datasets, fine_tune_norm, halo_inputs, plane_spread
from .restoration_data import probe_inputs as probe_inputs
from .restoration_loss import FeatureLoss as FeatureLoss
from .restoration_loss import MSSSIML1Loss as MSSSIML1Loss
from .restoration_loss import batch_psnr, batch_ssim, make_loss
from .restoration_loss import gram_matrix as gram_matrix
from .restoration_loss import load_feature_encoder as load_feature_encoder
from .training_callbacks import DIVERGENCE_FACTOR as DIVERGENCE_FACTOR
from .training_callbacks import NONFINITE_BATCHES as NONFINITE_BATCHES
from .training_callbacks import ProgressFn, cpu_callbacks, fit_callbacks
from .training_callbacks import TrainingCancelled as TrainingCancelled
from .training_runner import MAX_RECOVERIES as MAX_RECOVERIES
from .training_runner import MIN_RECOVERY_SECONDS as MIN_RECOVERY_SECONDS
from .training_runner import (
    TrainResult,
    epochs_for_budget,
    finish_run,
    fit_model,
    keep_best_scores,
    pick_device,
    record_trained_halo,
    record_warnings,
    run_divergence_warning,
    run_record,
    start_from,
    training_events,
)
from .training_runner import divergence_warning as divergence_warning
from .training_runner import fit_learner as fit_learner
from .training_runner import hardware_description as hardware_description
from .training_runner import resumed_chain as resumed_chain
from .training_runner import training_precision as training_precision

# the private names these had here before the split (tests and tools/ import them from here)
_callbacks, _cpu_callbacks, _epochs_for_budget = fit_callbacks, cpu_callbacks, epochs_for_budget
_crappified_datasets, _fine_tune_norm = crappified_datasets, fine_tune_norm
_plane_spread, _probe_inputs = plane_spread, probe_inputs


def check_fine_tune_start(model, scale: int) -> None:
    """Refuse to fine-tune ``model`` into a ``scale``x restorer when it cannot be one (a
    segmentation model, another scale): one line, before any data is read."""
    if model.kind != "restoration":
        raise ValueError(f"cannot fine-tune {model.name!r} as a restorer: it is a "
                         f"{model.kind} model")
    if model.scale != scale:
        raise ValueError(f"cannot fine-tune {model.name!r} for {scale}x: it restores "
                         f"{model.scale}x (choose scale {model.scale})")



def train(hr_images: Sequence[np.ndarray], config: TrainConfig | None = None, *,
          out: str | Path | None = None, name: str = "model", axis: int = 0,
          pairs: tuple[np.ndarray, np.ndarray] | None = None,
          progress: ProgressFn | None = None, cancel: threading.Event | None = None,
          init_from: RestorationModel | None = None, command: str = "",
          fp16: bool = False, checkpoint_dir: str | Path | None = None,
          pixel_size_nm: Sequence[float] | None = None) -> TrainResult:
    """Train a restoration model on HR images crappified on the fly.

    Parameters
    ----------
    hr_images : sequence of arrays
        HR stacks (``(..., Y, X)``); planes are taken along ``axis``, blank planes skipped,
        and each stack is split by plane into training and validation.
    config : TrainConfig
        Scale, architecture, crappifier, loss, patch/batch size, budget (``epochs`` and/or
        ``minutes``), precision, device, seed.
    out : path, optional
        Model folder to write (atomically) when training ends, also when cancelled.
    pairs : (lr, hr), optional
        A real registered LR/HR pair, mixed into training: a fifth of the samples (one for every
        four crappified ones; an epoch is then 1.25 x ``iterations_per_epoch``).
    progress : callable, optional
        Receives typed events (:mod:`napari_decrappify.progress`: ``Batch``, ``Epoch``,
        ``Recovered``, ``Stopped``, ``Done``), which read as dicts: ``{"event": "batch", ...}``,
        ``{"event": "epoch", ...}``.
    cancel : threading.Event, optional
        Set it from another thread to stop cleanly between batches; best weights are kept.
    init_from : RestorationModel, optional
        Resume / fine-tune from these weights: its architecture is used whatever
        ``config.arch`` says (the scale must match, else ValueError). A single-frame model can
        start a multi-frame run (``config.arch.frames > 1``): it is widened with
        :func:`~napari_decrappify.models.inflate_frames` (its weights on the centre frame,
        zeros on the neighbours), so training starts from what it already computes.
        Options of ``config`` not set explicitly take the fine-tune schedule
        (:meth:`~napari_decrappify.config.TrainConfig.for_fine_tune`: a lower peak rate, a
        short warm-up, MSE), as ``--resume`` and the dock's *start from* do.
    fp16 : bool
        Store the weights as float16 (half the file size).
    checkpoint_dir : path, optional
        After every epoch the current weights are written (atomically) as a model folder
        ``checkpoint_dir/last``; resume with ``init_from=load_model(checkpoint_dir / "last")``.
        (Optimiser state is not kept: a resumed run starts a new one-cycle schedule.)
    pixel_size_nm : (float, float), optional
        The HR images' pixel size (Y, X) in nm, recorded in the model: restoring checks an
        input's pixel size against it times the scale (:mod:`napari_decrappify.pixel_size`).

    Returns
    -------
    TrainResult
    """
    config = config or TrainConfig()
    arch = config.arch.model_copy(update={"scale": config.scale})
    if init_from is not None:
        check_fine_tune_start(init_from, config.scale)
        config = config.for_fine_tune()  # the fine-tune schedule where none was given
        # the weights decide the network; only the number of input frames may grow (widening)
        arch = init_from.config.arch.model_copy(update={"frames": arch.frames})
        config = config.model_copy(update={"arch": arch})
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    hr_images = [np.asarray(im) for im in hr_images]
    if not hr_images:
        raise ValueError("no HR images given")
    n_train = config.iterations_per_epoch * config.batch_size
    start_norm = None if init_from is None else init_from.config.norm
    norm, crappifier, train_ds, valid_ds, split, domain = _crappified_datasets(
        hr_images, config, arch, axis, n_train, max(config.batch_size * 4, 32),
        start_levels=None if start_norm is None or start_norm.mode != "percentile"
        else start_norm.input_levels)
    if pairs is not None:
        # a pair whose HR is the first training stack (the Train dock allows it) must not
        # train on that stack's validation planes: it uses the same training planes
        same_stack = (len(split["planes_train"]) == 1
                      and np.shape(pairs[1]) == np.shape(hr_images[0]))
        # a fine-tune's HR sits on the start's levels: its real LR goes where restore puts it
        lr_norm = (norm.for_input(*measure_percentiles(pairs[0], norm.input_percentiles))
                   if start_norm is not None and start_norm.mode == "percentile"
                   and norm.mode == "percentile" else None)
        pair_ds = PairedPatches(pairs[0], pairs[1], config.scale, config.patch_size,
                                length=n_train // 4, seed=config.seed, norm=norm,
                                lr_norm=lr_norm, frames=arch.frames,
                                planes=split["planes_train"][0] if same_stack else None)
        train_ds = torch.utils.data.ConcatDataset([train_ds, pair_ds])
        datasets = [train_ds.datasets[0], pair_ds]
    else:
        datasets = [train_ds]
    dls = make_dataloaders(train_ds, valid_ds, config.batch_size, device=device,
                           num_workers=config.num_workers)
    widened_from = None
    if init_from is not None and init_from.frames != arch.frames:
        if init_from.frames != 1:
            raise ValueError(f"cannot start a {arch.frames}-frame model from {init_from.name!r}, "
                             f"which takes {init_from.frames} frames (only 1 can be widened)")
        widened_from = init_from.frames
        init_from = inflate_frames(init_from, arch.frames)
    previous = {}
    if init_from is not None:
        previous = start_from(init_from, name, norm)
        if widened_from is not None:
            previous["widened_from_frames"] = widened_from
        model = init_from
    else:
        model = build_model(arch, name=name, norm=norm, seed=config.seed, measure_rf=False)
    model.config.crappifier = crappifier.config
    model.config.domain = domain  # what the network saw: the out-of-domain check's reference
    # the HR's (Y, X) pixel size: restore compares inputs with it x scale (none: not checked)
    model.config.pixel_size_nm = None if pixel_size_nm is None else \
        [float(v) for v in pixel_size_nm][-2:]
    data_fingerprint = fingerprint(hr_images)

    def record(stop_reason: str, seconds: float, iterations: int) -> dict:
        """The run's entry in ``model.json`` (also written, "in progress", with checkpoints)."""
        return run_record(events, config, device, command=command,
                          data_fingerprint=data_fingerprint, split=split,
                          stop_reason=stop_reason, seconds=seconds, iterations=iterations,
                          previous=previous)

    net = model.net
    checkpoint = None
    if checkpoint_dir is not None:
        def checkpoint():
            # a complete model folder: its run record so far, and a receptive field measured
            # on a copy of the current weights (tiling uses it as the halo; 0 gave seams)
            probe = copy.deepcopy(model.net).cpu().float().to(memory_format=torch.contiguous_format)
            model.config.receptive_field = measure_receptive_field(probe, arch)
            model.config.training = record("in progress", time.monotonic() - events.t0,
                                           int(getattr(events.learn, "train_iter", 0)))
            save_model(model, Path(checkpoint_dir) / "last")

    events = training_events(config, progress, cancel, datasets, checkpoint)
    seconds, iterations = fit_model(net, dls, events, make_loss(config), [batch_psnr, batch_ssim],
                                    config, device, score_start=init_from is not None)
    model.config.receptive_field = measure_receptive_field(net, arch)
    model.config.training = record(events.stop_reason, seconds, iterations)
    record_trained_halo(model, events.stop_reason, lambda: halo_inputs(valid_ds, norm),
                        "validation plane(s) of the training data, crappified as in training, "
                        "seed 0 (LR)")
    record_warnings(model.config.training,
                    [dead_encoder_warning(model.config.receptive_field, arch),
                     run_divergence_warning(events, config.lr_max)])
    keep_best_scores(model, events, {"valid_psnr": "batch_psnr", "valid_ssim": "batch_ssim"})
    try:
        path = save_model(model, out, fp16=fp16) if out is not None else None
    except OSError as e:
        # the run is over: say where what it trained can still be found
        kept = (f"; the last epoch's checkpoint is in {Path(checkpoint_dir) / 'last'}"
                if checkpoint_dir is not None and (Path(checkpoint_dir) / "last").is_dir()
                else "; rerun with --checkpoint-dir on a disk with space to keep epochs as they end")
        raise OSError(f"{e}{kept}") from e
    return finish_run(model, events, seconds, iterations, path, progress)


def find_lr(hr_images: Sequence[np.ndarray], config: TrainConfig | None = None, *, axis: int = 0,
            start_lr: float = 1e-6, end_lr: float = 1e-1, num_it: int = 60,
            init_from: RestorationModel | None = None) -> dict:
    """fastai's learning-rate finder on the same data and model :func:`train` would use.

    Returns ``{"valley": lr, "lrs": [...], "losses": [...]}``; pass ``valley`` (or a value a bit
    below the loss minimum) as ``TrainConfig.lr_max``. The weights are not kept.

    ``init_from``: the model a fine-tune would start from (``--lr-find --resume``): the finder
    then runs on a copy of its weights, with its architecture, the fine-tune's loss and the data
    normalised as a fine-tune normalises it, as :func:`train` would (it used to probe a new
    network, whose best rate says nothing about a fine-tune's).
    """
    import fastai.callback.schedule  # noqa: F401 - patches Learner.lr_find
    from fastai.callback.schedule import valley
    from fastai.learner import Learner
    from fastai.optimizer import Adam

    config = config or TrainConfig()
    arch = config.arch.model_copy(update={"scale": config.scale})
    start_levels = None
    if init_from is not None:
        check_fine_tune_start(init_from, config.scale)
        if init_from.frames != arch.frames:
            if init_from.frames != 1:
                raise ValueError(f"cannot start a {arch.frames}-frame model from "
                                 f"{init_from.name!r}, which takes {init_from.frames} frames")
            init_from = inflate_frames(init_from, arch.frames)
        arch = init_from.config.arch.model_copy(update={"frames": arch.frames})
        config = config.for_fine_tune().model_copy(update={"arch": arch})
        if init_from.config.norm.mode == "percentile":
            start_levels = init_from.config.norm.input_levels
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    hr_images = [np.asarray(im) for im in hr_images]
    # the weights are not kept: no levels or statistics to record, except that a fine-tune's
    # data must be normalised the way its start model maps it
    norm, _, train_ds, valid_ds, _, _ = _crappified_datasets(
        hr_images, config, arch, axis, num_it * config.batch_size, config.batch_size,
        measure_inputs=start_levels is not None, start_levels=start_levels)
    dls = make_dataloaders(train_ds, valid_ds, config.batch_size, device=device)
    net = build_model(arch, norm=norm, seed=config.seed, measure_rf=False).net.float()
    if init_from is not None:  # a copy of the start's weights (a deepcopy trips weight norm)
        net.load_state_dict({k: v.float() for k, v in init_from.net.state_dict().items()})
    learn = Learner(dls, net.to(device).train(), loss_func=make_loss(config), opt_func=Adam,
                    wd=config.weight_decay)
    if hasattr(learn, "progress"):
        learn.remove_cb(learn.progress)
    with learn.no_logging():
        found = learn.lr_find(start_lr=start_lr, end_lr=end_lr, num_it=num_it, show_plot=False,
                              suggest_funcs=(valley,))
    rec = learn.recorder
    return {"valley": float(found.valley), "lrs": [float(x) for x in rec.lrs],
            "losses": [float(x) for x in rec.losses]}
