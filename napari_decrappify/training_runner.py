"""The training runner that restoration (:func:`napari_decrappify.train.train`) and
segmentation (:func:`napari_decrappify.segment.train_segmenter`) share.

What each kind of training does before and after is its own (data, network, loss, the extra
entries of its record); the run itself is one code path:

* :func:`start_from` makes a model a run resumes or fine-tunes from the new run's model;
* :func:`training_events` and :func:`fit_model`: the fastai ``Learner`` set-up and the fit
  under the config's budget (:func:`fit_learner`: precision, wall clock, cancel, divergence
  recovery, the unfinished last epoch scored, a fine-tune's start scored as epoch -1, best
  weights kept);
* :func:`run_record`, :func:`record_warnings` and :func:`keep_best_scores`: what
  ``model.json`` says of the run;
* :func:`finish_run`: the ``done`` event and the :class:`TrainResult`.
"""

from __future__ import annotations

import json
import math
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import BaseTrainConfig
from .progress import Done, Stopped
from .training_callbacks import ProgressFn, cpu_callbacks, fit_callbacks

if TYPE_CHECKING:
    from .models import RestorationModel

#: a diverged run goes back to its best weights and on at a third of the peak learning rate,
#: this many times at most (then it stops as diverged, keeping its best weights)
MAX_RECOVERIES = 3
#: a recovery needs at least this much of a wall-clock budget left to be worth it
MIN_RECOVERY_SECONDS = 20.0


@dataclass
class TrainResult:
    """What :func:`napari_decrappify.train.train` and
    :func:`napari_decrappify.segment.train_segmenter` return: the model (best validation
    weights) and its history."""

    model: RestorationModel
    history: list[dict] = field(default_factory=list)
    stop_reason: str = "completed"
    seconds: float = 0.0
    iterations: int = 0
    path: Path | None = None


def pick_device(device: str = "auto") -> torch.device:
    """The torch device a run trains on: ``"auto"`` is CUDA where there is one, else the CPU;
    asking for CUDA where there is none is a RuntimeError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available on this machine")
    return torch.device(device)


def hardware_description(device: torch.device) -> str:
    """What the run record says of the machine: the GPU's name, or the CPU and its threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def training_precision(precision: str, device: torch.device) -> str:
    """The precision a training run uses: ``auto`` is bf16 (fp16 where bf16 is unsupported) on
    CUDA; on CPU bf16 where the CPU has native bf16 (1.9x faster steps, measured), else fp32.
    On CPU ``fp16`` means bf16 (CPU fp16 autocast is slow)."""
    from .tiling import cpu_has_native_bf16

    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "bf16" if precision in ("bf16", "fp16") else "fp32"


def resumed_chain(previous: dict) -> list[dict]:
    """``training["resumed_from"]`` of a run started from a model whose record is ``previous``:
    that model's own chain, then its run (without its epoch history)."""
    earlier = {k: v for k, v in previous.items() if k not in ("resumed_from", "history")}
    return previous.get("resumed_from", []) + [earlier]


def record_warnings(training: dict, messages: Sequence[str | None]) -> None:
    """Warn (``RuntimeWarning``) with each message that is not None and list it under
    ``training["warnings"]`` of the model record."""
    for message in filter(None, messages):
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        training.setdefault("warnings", []).append(message)


def run_divergence_warning(events, lr_max: float) -> str | None:
    """The :func:`divergence_warning` of a run whose ``EventsCallback`` is ``events``; None
    when it did not diverge."""
    if events.diverged_at is None:
        return None
    return divergence_warning(*events.diverged_at, events.best[2], lr_max)


def divergence_warning(epoch: int, loss: float, best_epoch: int, lr_max: float) -> str:
    """The message for a run stopped as ``diverged`` (recorded in ``model.json`` too)."""
    kept = (f"the best weights (epoch {best_epoch})" if best_epoch >= 0 else
            "the weights it started from (no scored epoch was better)")
    return (f"training diverged at epoch {epoch} (training loss {loss:.3g}) after "
            f"{MAX_RECOVERIES} recoveries at ever lower learning rates; stopped there and kept "
            f"{kept}. Train again with a lower learning rate, e.g. --lr-max {lr_max / 30:.2g}")


# --------------------------------------------------------------------------- the run


def start_from(model: RestorationModel, name: str, norm) -> dict:
    """Make ``model``, the weights a run resumes or fine-tunes from, the new run's model, and
    return the record of the run it came from (``previous`` of :func:`run_record`).

    The record is taken before training: saving the model (and checkpoints) re-points its
    path. The new weights are a new model: its own name and normalisation, no scores measured
    on the old weights, and the old run's record lives on in ``resumed_from``.
    """
    previous = {"weights_from": str(model.path), **model.config.training}
    model.config.norm = norm
    model.config.name = name
    model.config.metrics = {}
    model.config.training = {}
    return previous


def training_events(config: BaseTrainConfig, progress: ProgressFn | None, cancel, datasets,
                    checkpoint=None):
    """The ``EventsCallback`` of a run under ``config``'s budget: progress events, cancel,
    the wall-clock deadline (from now), the datasets told each epoch, the checkpoint to write
    after each epoch."""
    EventsCallback, _, _ = fit_callbacks()
    deadline = time.monotonic() + config.minutes * 60 if config.minutes else None
    return EventsCallback(progress, cancel, deadline, datasets, checkpoint)


def fit_model(net: torch.nn.Module, dls, events, loss_func, metrics: Sequence,
              config: BaseTrainConfig, device: torch.device, *,
              score_start: bool = False) -> tuple[float, int]:
    """Train ``net`` on ``dls``: a fastai ``Learner`` (Adam, ``config.weight_decay``, the
    validation ``metrics``) fit by :func:`fit_learner` under ``config``'s budget.

    A ``minutes`` budget without ``epochs`` drives the one-cycle schedule by the wall clock.
    ``net`` ends in eval mode on the CPU with the best weights. Returns ``(seconds,
    iterations)``.
    """
    import fastai.callback.fp16  # noqa: F401 - patches Learner.to_fp16 / to_bf16
    import fastai.callback.schedule  # noqa: F401 - patches Learner.fit_one_cycle
    from fastai.learner import Learner
    from fastai.optimizer import Adam

    net.to(device).train()
    cbs = [events]
    if config.minutes and not config.epochs:
        _, _, WallClockScheduleCallback = fit_callbacks()
        cbs.append(WallClockScheduleCallback(config.minutes * 60))
    learn = Learner(dls, net, loss_func=loss_func, opt_func=Adam, metrics=list(metrics),
                    wd=config.weight_decay, cbs=cbs)
    learn.recorder.train_metrics = False
    return fit_learner(learn, config, device, events, score_start=score_start)


def run_record(events, config: BaseTrainConfig, device: torch.device, *, command: str, data_fingerprint: str,
               split: dict, stop_reason: str, seconds: float, iterations: int,
               previous: dict | None = None, **extra) -> dict:
    """The run's entry in ``model.json`` (``config.training``).

    ``extra``: the entries of one kind of training (segmentation: its task, classes and class
    weights), recorded after ``command``. ``previous``: the record :func:`start_from` returned,
    for a run that started from a model.
    """
    record = {
        "command": command, **extra, "config": json.loads(config.model_dump_json()),
        "data_fingerprint": data_fingerprint, "split": split,
        "seconds": round(seconds, 1), "iterations": iterations,
        "epochs_run": len(events.history), "stop_reason": stop_reason,
        "hardware": hardware_description(device),
        "precision": training_precision(config.precision, device),
        "best_epoch": events.best[2], "history": events.history,
    }
    best = events.best_scores()
    if best is not None and best.get("partial"):
        record["best_epoch_unfinished"] = True  # kept: the weights when the run stopped
    if events.recoveries:  # diverged, went back to the best weights at a lower rate
        record["recoveries"] = events.recoveries
    if previous:
        # a resumed run: keep the record of the runs it started from
        record["resumed_from"] = resumed_chain(previous)
    return record


def keep_best_scores(model: RestorationModel, events, columns: dict[str, str]) -> None:
    """Record the kept weights' validation scores (an epoch's, the unfinished last epoch's, or
    a fine-tune's start's) in ``model.config.metrics``: ``valid_loss``, and each validation
    column ``columns[name]`` as ``name``."""
    best = events.best_scores()
    if best is not None:
        model.config.metrics.update({"valid_loss": best.get("valid_loss"),
                                     **{name: best.get(col) for name, col in columns.items()}})


def record_trained_halo(model: RestorationModel, stop_reason: str,
                        images_of: Callable[[], list], source: str) -> None:
    """Measure the tolerance halo of freshly trained weights and record it in ``model.config``.

    Without it a trained model (a fine-tune too: its start's measurement was made on other
    weights) is tiled with its receptive field as halo, the exact mode, 1.4x slower than
    a bundled model on CPU (em-4x, ``bench throughput``). Measured as the bundled models' are
    (:func:`~napari_decrappify.engine.halo.measure_halo`) on ``images_of()``: validation planes
    the run never trained on, in the model's input units; ``source`` says what they are. The
    seconds it took are recorded with it. A cancelled run is saved at once, unmeasured.
    """
    if stop_reason == "cancelled":
        return
    images = images_of()
    if not images:
        return
    from .engine.halo import record_halo

    t0 = time.monotonic()
    sides = "x".join(str(v) for v in images[0].shape[-2:])
    record_halo(model, images, source=f"{len(images)} {source}, centre crop {sides} px")
    model.config.halo_measurement["seconds"] = round(time.monotonic() - t0, 2)


def finish_run(model: RestorationModel, events, seconds: float, iterations: int,
               path: Path | None, progress: ProgressFn | None) -> TrainResult:
    """Emit the ``done`` event and return the run's :class:`TrainResult` (``path``: where the
    model was saved, or None)."""
    model._hash = None  # the weights changed: their hash is measured again when asked for
    if progress is not None:
        progress(Done(stop_reason=events.stop_reason, seconds=seconds,
                      path=str(path) if path else None))
    return TrainResult(model=model, history=events.history, stop_reason=events.stop_reason,
                       seconds=seconds, iterations=iterations, path=path)


def fit_learner(learn, config: BaseTrainConfig, device: torch.device, events, *,
                score_start: bool = False) -> tuple[float, int]:
    """Fit ``learn`` with one-cycle under ``config``'s budget; keep the best weights.

    Shared by restoration and segmentation training (:mod:`napari_decrappify.segment`).
    ``config`` needs ``precision``, ``epochs``, ``minutes``, ``iterations_per_epoch``,
    ``lr_max`` and ``pct_start``; ``events`` is the ``EventsCallback`` among the learner's
    callbacks. Precision: :func:`training_precision`; on CPU also ``channels_last``. After a
    stop (cancel or budget) the last, partial epoch is validated too, and the best weights
    are loaded into ``learn.model``, which ends in eval mode on the CPU. ``score_start`` (a
    fine-tune): the starting weights are validated first and count as epoch -1, so a run
    that makes no epoch better than its start keeps the start's weights.

    Returns
    -------
    (seconds, iterations)
    """
    net = learn.model
    prec = training_precision(config.precision, device)
    if device.type == "cuda":
        if prec == "fp16":
            learn.to_fp16()
        elif prec == "bf16":
            learn.to_bf16()
    else:
        for cb in cpu_callbacks(prec):
            learn.add_cb(cb)
    epochs = config.epochs or 1
    wall_clock = bool(config.minutes and not config.epochs)
    if wall_clock:
        # an upper bound: the wall-clock schedule and the deadline end the run on time
        epochs = 10 * epochs_for_budget(learn, config, device) + 10
    t0 = time.monotonic()
    if hasattr(learn, "progress"):
        learn.remove_cb(learn.progress)  # our own events replace fastprogress bars
    lr_max = config.lr_max
    names = ["valid_loss"] + [getattr(m, "name", str(m)) for m in learn.metrics]
    if score_start:
        # a fine-tune whose epochs all score below its start (too short a budget, a loss at
        # odds with the start's) hands back the start, not the least bad epoch
        events.recording = False
        with learn.no_logging():
            values = [float(v) for v in learn.validate()]
            first = float(learn.validate(dl=[next(iter(learn.dls.valid))])[0])
        events.recording = True
        start_loss = values[0] if math.isfinite(values[0]) else math.inf
        events.start_row = {**dict(zip(names, values, strict=False)), "epoch": -1, "start": True}
        events.start_first_batch = first if math.isfinite(first) else math.inf
        events.best = (start_loss, events._weights(), -1)
        left = None if events.deadline is None else events.deadline - time.monotonic()
        for cb in learn.cbs:  # the schedule spans what the scoring left of the budget
            if type(cb).__name__ == "WallClockScheduleCallback" and left is not None:
                cb.seconds = max(left, 1.0)
    while True:
        with learn.no_logging():
            learn.fit_one_cycle(epochs, lr_max=lr_max, pct_start=config.pct_start,
                                reset_opt=bool(events.recoveries))
        # read before validate(): its validation context re-runs before_fit (train_iter = 0)
        fit_iterations = int(learn.train_iter) if hasattr(learn, "train_iter") else 0
        left = None if events.deadline is None else events.deadline - time.monotonic()
        if (events.stop_reason != "diverged" or len(events.recoveries) >= MAX_RECOVERIES
                or (left is not None and left < MIN_RECOVERY_SECONDS)):
            break
        # a divergence is not the end of the budget: back to the best weights (Adam's moments
        # are reset too), a third of the peak learning rate, and on with what is left
        lr_max /= 3
        net.load_state_dict(events.best[1])
        if not wall_clock:  # an epoch budget: the epochs it has not run yet
            epochs -= events.diverged_at[0] - events.epoch_offset + 1
            if epochs < 1:
                break
        events.recover(lr_max, fit_iterations)
        for cb in learn.cbs:  # the wall-clock schedule spans what is left of the budget
            if type(cb).__name__ == "WallClockScheduleCallback" and left is not None:
                cb.seconds = left
    seconds = time.monotonic() - t0
    iterations = events.iterations_before + fit_iterations
    cancelled = events.stop_reason == "cancelled"
    if events.stop_reason == "budget" or (cancelled and not events.history):
        # the last, unfinished epoch (lowest learning rate of the cycle; all the training there
        # is when a run stops in its first epoch) may be the best: score it. A diverged run's
        # current weights are not worth it. Cancel must answer within a batch: a cancelled run
        # keeps its best scored epoch, and one cancelled before any scores its weights on one
        # validation batch only (better than the random starting weights, known to be noisy).
        events.recording = False
        valid = [next(iter(learn.dls.valid))] if cancelled else None
        values = [float(v) for v in learn.validate(dl=valid)]
        # one batch against one batch: a kept start competes with its first-batch loss
        reference = (events.start_first_batch if valid is not None and events.best[2] == -1
                     and events.start_row is not None else events.best[0])
        if values[0] < reference:
            epoch = len(events.history)
            events.partial = {**dict(zip(names, values, strict=False)), "epoch": epoch,
                              "partial": True, "iteration": iterations}
            events.best = (values[0], None, epoch)
    if events.best[1] is not None:
        net.load_state_dict(events.best[1])
    net.eval().cpu().to(memory_format=torch.contiguous_format)
    # training is over (a Cancel is answered here): what follows is the model's saving
    events._emit(Stopped(stop_reason=events.stop_reason, seconds=seconds, iterations=iterations))
    return seconds, iterations


def epochs_for_budget(learn, config: BaseTrainConfig, device: torch.device) -> int:
    """Epochs that fit in ``config.minutes``, from the measured time of a few iterations.

    fit_one_cycle needs its length up front; the deadline callback is a safety net on top.
    """
    net = learn.model
    xb, yb = next(iter(learn.dls.train))
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    loss_fn = learn.loss_func
    times = []
    # train-mode passes move BatchNorm running statistics: a fine-tune must start from the
    # model as it was (and fall back on exactly it if it diverges)
    params = {n for n, _ in net.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in net.state_dict().items() if k not in params}
    for _ in range(3):
        t = time.perf_counter()
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    net.load_state_dict(buffers, strict=False)
    per_iter = min(times[1:]) * 1.15  # + data loading and validation
    iters = config.minutes * 60 / per_iter
    return max(1, int(iters // config.iterations_per_epoch))
