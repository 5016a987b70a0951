"""Training engine: a fastai ``Learner`` over a restoration U-Net, fit with ``fit_one_cycle``.

Progress events, cancellation from another thread (between batches, best weights kept),
a wall-clock budget, checkpoints and resume are fastai callbacks; the CLI, scripts and the
napari Train dock consume the same events.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import NormConfig, TrainConfig
from .crappify import Crappifier
from .data import (
    CrappifiedPatches,
    PairedPatches,
    PlaneStack,
    UnitSpace,
    fingerprint,
    make_dataloaders,
    make_stacks,
    percentile_norm,
)
from .domain import training_spans, training_statistics
from .models import (
    RestorationModel,
    build_model,
    dead_encoder_warning,
    inflate_frames,
    measure_receptive_field,
    save_model,
)
from .normalization import input_levels, measure_percentiles

ProgressFn = Callable[[dict[str, Any]], None]


class TrainingCancelled(Exception):
    """Raised inside fastai to stop between batches (caught by :func:`train`)."""


# --------------------------------------------------------------------------- losses


class MSSSIML1Loss(nn.Module):
    """``alpha * (1 - MS-SSIM) + (1 - alpha) * L1`` (Zhao et al. 2017), on [0, 1] images.

    MS-SSIM needs images larger than ``(win - 1) * 16`` (5 scales); smaller patches use
    single-scale SSIM instead of failing.
    """

    def __init__(self, alpha: float = 0.84, win_size: int = 7):
        super().__init__()
        self.alpha = alpha
        self.win_size = win_size

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from pytorch_msssim import ms_ssim, ssim

        p, t = pred.float(), target.float()
        # in fp32 even inside a bf16/fp16 autocast region: its Gaussian filters are convolutions,
        # which autocast would run in 8 mantissa bits, and variances computed as
        # E[x^2] - E[x]^2 then lose everything (loss 0.196 instead of 0.054, then NaN)
        with torch.autocast(device_type=p.device.type, enabled=False):
            l1 = F.l1_loss(p, t)
            # pytorch-msssim needs sides > (win - 1) * 16 for its 5 scales; below: plain SSIM
            if min(p.shape[-2:]) > (self.win_size - 1) * 16:
                sim = ms_ssim(p, t, data_range=1.0, win_size=self.win_size, size_average=True)
            else:
                sim = ssim(p, t, data_range=1.0, win_size=self.win_size, size_average=True)
        return self.alpha * (1 - sim) + (1 - self.alpha) * l1


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    f = x.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


class FeatureLoss(nn.Module):
    """Perceptual loss of the fast.ai decrappify work: pixel L1 + feature L1 + Gram (style) terms.

    Features come from a frozen encoder whose weights the user supplies as a local
    safetensors file (no download at run time): either a torchvision ``resnet18/34`` state
    dict, or the encoder of a segmentation model folder made by this package (the
    expert-guided loss: restoration is penalised where it changes what the expert labelled).
    """

    def __init__(self, encoder: nn.Sequential, layer_ids: Sequence[int] | None = None,
                 feature_weight: float = 1.0, gram_weight: float = 5e2, pixel_weight: float = 1.0,
                 in_channels: int = 1):
        super().__init__()
        from fastai.callback.hook import hook_outputs

        encoder = encoder.eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        self.encoder = encoder
        children = list(encoder.children())
        layer_ids = layer_ids or list(range(1, len(children)))
        self.layers = [children[i] for i in layer_ids if i < len(children)]
        self.hooks = hook_outputs(self.layers, detach=False)
        self.fw, self.gw, self.pw = feature_weight, gram_weight, pixel_weight
        self.in_channels = in_channels

    def _features(self, x):
        first = next(self.encoder.parameters())
        if x.shape[1] != first.shape[1]:
            x = x.repeat(1, first.shape[1] // x.shape[1], 1, 1)
        self.encoder(x)
        return [o.clone() for o in self.hooks.stored]

    def forward(self, pred, target):
        # left under bf16 autocast on purpose (unlike MS-SSIM): measured on CREMI the loss
        # moves 2-8% but its gradient keeps direction (cosine 0.99), and the pass is 1.5x faster
        loss = self.pw * F.l1_loss(pred, target)
        f_pred = self._features(pred)
        with torch.no_grad():
            f_targ = self._features(target)
        for a, b in zip(f_pred, f_targ, strict=True):
            loss = loss + self.fw * F.l1_loss(a, b) + self.gw * F.l1_loss(gram_matrix(a), gram_matrix(b))
        return loss

    def __del__(self):
        try:
            self.hooks.remove()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def load_feature_encoder(path: str | Path) -> nn.Sequential:
    """The frozen encoder of the perceptual loss, from a local file or a model folder.

    ``path`` is a model folder of this package (its encoder is used), or a ``.safetensors``
    file with a torchvision ResNet state dict (``resnet18`` or ``resnet34`` by its keys).
    """
    from safetensors.torch import load_file
    from torchvision import models as tvm

    from .models import ModelFileError, load_model

    p = Path(path)
    if p.is_dir():
        model = load_model(p)
        return model.net.unet[0]
    if not p.exists():
        raise FileNotFoundError(f"feature-loss weights file {p} does not exist")
    try:
        state = load_file(str(p))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise ModelFileError(f"{p} is not a readable safetensors file ({e})") from e
    arch = "resnet34" if "layer3.5.conv1.weight" in state else "resnet18"
    net = getattr(tvm, arch)(weights=None)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if len(missing) > 2 or unexpected:  # fc may be absent
        raise ModelFileError(f"{p}: not a torchvision {arch} state dict "
                             f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                         net.layer3)


def make_loss(config: TrainConfig) -> nn.Module:
    if config.loss == "l1":
        return nn.L1Loss()
    if config.loss == "mse":
        # the loss PSNR measures: its optimum is the posterior mean, L1's the median
        return nn.MSELoss()
    if config.loss == "msssim_l1":
        return MSSSIML1Loss()
    if config.loss == "perceptual":
        if not config.feature_weights:
            raise ValueError("loss 'perceptual' needs feature_weights: a local weights file or "
                             "a segmentation model folder (no download at run time)")
        return FeatureLoss(load_feature_encoder(config.feature_weights))
    raise ValueError(f"unknown loss {config.loss!r}")


# --------------------------------------------------------------------------- metrics


def batch_psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean PSNR (dB) of a batch on [0, 1] images (prediction clipped)."""
    mse = ((pred.float().clamp(0, 1) - target.float()) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()


def batch_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from pytorch_msssim import ssim

    return ssim(pred.float().clamp(0, 1), target.float(), data_range=1.0, win_size=7)


# --------------------------------------------------------------------------- callbacks


# the out-of-domain reference of an augmented model: statistics of 16 drawn acquisitions
# (zoom, histogram, noise, blur), 32 patches each
SPAN_GROUPS, SPAN_GROUP = 16, 32
# the spread of the training data itself (every model): 8 blocks of consecutive training planes,
# 32 patches each (a range of single patches would be the estimator's noise; on CREMI, ranges
# from 32- and 64-patch groups under two seeds agree within 0.05 in slope and 2% in noise)
SPREAD_GROUPS, SPREAD_GROUP = 8, 32
#: an epoch whose mean training loss exceeds this many times the lowest so far has diverged
DIVERGENCE_FACTOR = 100.0
#: this many non-finite batch losses in a row stop a run as diverged
NONFINITE_BATCHES = 5
#: a diverged run goes back to its best weights and on at a third of the peak learning rate,
#: this many times at most (then it stops as diverged, keeping its best weights)
MAX_RECOVERIES = 3
#: a recovery needs at least this much of a wall-clock budget left to be worth it
MIN_RECOVERY_SECONDS = 20.0


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


def _callbacks():
    """fastai callbacks, defined lazily so that importing this module stays cheap."""
    from fastai.callback.core import Callback, CancelFitException

    class EventsCallback(Callback):
        """Emit progress events and honour cancel / wall-clock budget between batches."""

        order = 60

        def __init__(self, progress: ProgressFn | None, cancel: threading.Event | None,
                     deadline: float | None, datasets, checkpoint: Callable[[], None] | None = None):
            self.checkpoint = checkpoint
            self.recording = True
            self.progress, self.cancel, self.deadline, self.datasets = progress, cancel, deadline, datasets
            self.history: list[dict] = []
            self.stop_reason = "completed"
            self.best = (math.inf, None, -1)
            self.lowest_train_loss = math.inf
            self.nonfinite_batches = 0
            self.diverged_at: tuple[int, float] | None = None  # (epoch, training loss)
            self.partial: dict | None = None  # scores of the last, unfinished epoch if it was best
            # a fine-tune's start, scored before training (epoch -1): its validation row, and
            # its loss on the first validation batch (what a cancelled first epoch is scored on)
            self.start_row: dict | None = None
            self.start_first_batch = math.inf
            # after a recovery the next fit counts its epochs from 0 again: epochs of the run
            # (history rows, best, data seeds) are the fit's epoch + this offset
            self.epoch_offset = 0
            self.recoveries: list[dict] = []
            self.iterations_before = 0  # training iterations of the fits before this one

        @property
        def run_epoch(self) -> int:
            return self.epoch + self.epoch_offset

        def recover(self, lr_max: float, iterations: int) -> None:
            """Record a divergence as recovered from (the caller reloads the best weights and
            fits again at ``lr_max``): the run goes on, numbering epochs after the last."""
            epoch, loss = self.diverged_at
            self.recoveries.append({"epoch": epoch, "train_loss": loss, "back_to_epoch": self.best[2],
                                    "lr_max": lr_max})
            self._emit({"event": "recovered", "epoch": epoch, "train_loss": loss,
                        "back_to_epoch": self.best[2], "lr_max": lr_max})
            self.stop_reason, self.diverged_at = "completed", None
            self.epoch_offset = len(self.history)
            self.iterations_before += iterations
            self.nonfinite_batches = 0

        def _emit(self, event):
            if self.progress is not None:
                self.progress(event)

        def best_scores(self) -> dict | None:
            """The validation row of the kept weights: an epoch's, or the unfinished last
            epoch's (``partial``), or None when nothing was scored."""
            if self.partial is not None and self.best[2] == self.partial["epoch"]:
                return self.partial
            if self.start_row is not None and self.best[2] == -1:
                return self.start_row  # no epoch beat the start: its scores, not the last's
            if self.history:
                return self.history[self.best[2]] if self.best[2] >= 0 else self.history[-1]
            return None

        def _weights(self) -> dict:
            """A copy of the model's current weights (for ``best``)."""
            return {k: v.detach().clone() for k, v in self.learn.model.state_dict().items()}

        def before_fit(self):
            if "t0" not in self.__dict__:  # the run's start (not each fit's: recoveries)
                self.t0 = time.monotonic()
            self.total = self.n_epoch * len(self.dls.train)
            if self.best[1] is None and not self.history:
                # the weights to fall back on if the run diverges before an epoch is scored
                # (validate() re-runs before_fit later: only the first call takes them)
                self.best = (math.inf, self._weights(), -1)

        def before_epoch(self):
            for ds in self.datasets:
                ds.epoch = self.run_epoch

        def after_batch(self):
            if not self.training:
                # Cancel answers within a validation batch too (a validation can take as long
                # as many training batches); the interrupted epoch is not scored. The scoring
                # after the fit (recording off) is bounded by fit_learner instead.
                if self.recording and self.cancel is not None and self.cancel.is_set():
                    self.stop_reason = "cancelled"
                    raise CancelFitException()
                return
            done = self.iterations_before + self.epoch * len(self.dls.train) + self.iter + 1
            now = time.monotonic()
            elapsed = now - self.t0
            # detached: float() of a tensor that requires grad warns on every run (torch 2.14)
            loss = float(self.loss.detach())
            if self.deadline is not None:
                # a wall-clock budget: n_epoch is only an upper bound, the deadline ends the run
                eta = max(0.0, self.deadline - now)
                total = min(self.total, done + round(eta * done / max(elapsed, 1e-9)))
            else:
                eta, total = elapsed / done * (self.total - done), self.total
            self._emit({"event": "batch", "epoch": self.run_epoch, "batch": self.iter,
                        "iteration": done, "total": total, "loss": loss,
                        "elapsed": elapsed, "eta": eta})
            # weights gone NaN/inf keep every later loss non-finite: stop, the best weights
            # are kept (one fp16 overflow, which the grad scaler skips, is not a divergence)
            self.nonfinite_batches = 0 if math.isfinite(loss) else self.nonfinite_batches + 1
            if self.nonfinite_batches >= NONFINITE_BATCHES:
                self.stop_reason, self.diverged_at = "diverged", (self.run_epoch, loss)
                raise CancelFitException()
            if self.cancel is not None and self.cancel.is_set():
                self.stop_reason = "cancelled"
                raise CancelFitException()
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.stop_reason = "budget"
                raise CancelFitException()

        def after_epoch(self):
            if not self.recording:  # Learner.validate() after the fit also fires after_epoch
                return
            rec = self.recorder
            vals = rec.values[-1] if rec.values else []
            names = [n for n in rec.metric_names[1:] if n not in ("epoch", "time")]
            row = dict(zip(names, [float(v) for v in vals], strict=False))
            row.update({"event": "epoch", "epoch": self.run_epoch,
                        "elapsed": time.monotonic() - self.t0})
            self.history.append(row)
            self._emit(row)
            vloss = row.get("valid_loss", math.inf)
            if vloss < self.best[0]:
                self.best = (vloss, self._weights(), self.run_epoch)
            if self.checkpoint is not None:
                self.checkpoint()
            # a loss blown up far above its lowest (too high a learning rate for the loss) never
            # comes back within the cycle: stop instead of spending the budget on it
            tl = row.get("train_loss", math.nan)
            if not math.isfinite(tl) or tl > DIVERGENCE_FACTOR * self.lowest_train_loss:
                self.stop_reason, self.diverged_at = "diverged", (self.run_epoch, tl)
                raise CancelFitException()
            self.lowest_train_loss = min(self.lowest_train_loss, tl)

    class WallClockScheduleCallback(Callback):
        """Drive the one-cycle schedule by elapsed wall-clock time instead of iterations.

        With a ``--minutes`` budget the number of iterations is unknown up front (other work on
        the machine changes the speed); fastai's ParamScheduler reads ``pct_train``, so setting
        it to the elapsed fraction of the budget makes the learning rate warm up and anneal
        over exactly the budget, and training always ends at the low-LR end of the cycle.
        """

        order = 50  # after TrainEvalCallback, before ParamScheduler (60)

        def __init__(self, seconds: float):
            self.seconds = seconds

        def before_fit(self):
            self.t0 = time.monotonic()

        def before_batch(self):
            if self.training:
                self.learn.pct_train = min((time.monotonic() - self.t0) / self.seconds, 0.999)

    return EventsCallback, CancelFitException, WallClockScheduleCallback


def _cpu_callbacks(precision: str) -> list:
    """fastai callbacks for CPU training: ``channels_last`` always, bf16 autocast if asked.

    fastai's ``MixedPrecision`` (``Learner.to_bf16``) only autocasts CUDA, so on CPU it was a
    no-op; this one autocasts the CPU forward and loss (weights and optimiser stay fp32).
    """
    from fastai.callback.core import Callback

    class ChannelsLastCallback(Callback):
        """NHWC memory layout for model and batches: oneDNN's fast path for convolutions."""

        order = 5

        def before_fit(self):
            self.learn.model.to(memory_format=torch.channels_last)

        def before_batch(self):
            self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last)
                                  if isinstance(x, torch.Tensor) and x.ndim == 4 else x
                                  for x in self.xb)

        # no after_fit: Learner.validate() re-runs before_fit, so fit_learner puts the
        # weights back in the contiguous layout once, at its very end

    class CpuBf16Callback(Callback):
        """bf16 autocast of the forward pass and loss on CPU; predictions handed on as fp32."""

        order = 10
        _ctx = None  # the autocast context entered for the current batch

        def before_batch(self):
            self._ctx = torch.autocast("cpu", dtype=torch.bfloat16)
            self._ctx.__enter__()

        def after_pred(self):
            self.learn.pred = self.pred.float()

        def after_loss(self):
            self._leave()

        # a batch cancelled between before_batch and after_loss must not leave autocast on
        def after_cancel_batch(self):
            self._leave()

        def after_cancel_fit(self):
            self._leave()

        def _leave(self):
            ctx, self._ctx = self._ctx, None
            if ctx is not None:
                ctx.__exit__(None, None, None)

    cbs = [ChannelsLastCallback()]
    if precision == "bf16":
        cbs.append(CpuBf16Callback())
    return cbs


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


# --------------------------------------------------------------------------- train


@dataclass
class TrainResult:
    """What :func:`train` returns: the model (best validation weights) and its history."""

    model: RestorationModel
    history: list[dict] = field(default_factory=list)
    stop_reason: str = "completed"
    seconds: float = 0.0
    iterations: int = 0
    path: Path | None = None


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available on this machine")
    return torch.device(device)


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


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
        Receives event dicts: ``{"event": "batch", ...}`` and ``{"event": "epoch", ...}``.
    cancel : threading.Event, optional
        Set it from another thread to stop cleanly between batches; best weights are kept.
    init_from : RestorationModel, optional
        Resume / fine-tune from these weights: its architecture is used whatever
        ``config.arch`` says (the scale must match, else ValueError). A single-frame model can
        start a multi-frame run (``config.arch.frames > 1``): it is widened with
        :func:`~napari_decrappify.models.inflate_frames` (its weights on the centre frame,
        zeros on the neighbours), so training starts from what it already computes.
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
    import fastai.callback.fp16  # noqa: F401 - patches Learner.to_fp16 / to_bf16
    import fastai.callback.schedule  # noqa: F401 - patches Learner.fit_one_cycle / lr_find
    from fastai.learner import Learner
    from fastai.optimizer import Adam

    config = config or TrainConfig()
    arch = config.arch.model_copy(update={"scale": config.scale})
    if init_from is not None:
        check_fine_tune_start(init_from, config.scale)
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
        # recorded now: checkpoints written during the run re-point the model's path
        previous = {"weights_from": str(init_from.path), **init_from.config.training}
        if widened_from is not None:
            previous["widened_from_frames"] = widened_from
        model = init_from
        model.config.norm = norm
        # the new weights are a new model: its own name, and no scores measured on the old ones
        model.config.name = name
        model.config.metrics = {}
        model.config.training = {}  # the old run's record lives on in "resumed_from"
    else:
        model = build_model(arch, name=name, norm=norm, seed=config.seed, measure_rf=False)
    model.config.crappifier = crappifier.config
    model.config.domain = domain  # what the network saw: the out-of-domain check's reference
    # the HR's (Y, X) pixel size: restore compares inputs with it x scale (none: not checked)
    model.config.pixel_size_nm = None if pixel_size_nm is None else \
        [float(v) for v in pixel_size_nm][-2:]
    data_fingerprint = fingerprint(hr_images)
    precision = training_precision(config.precision, device)

    def record(stop_reason: str, seconds: float, iterations: int) -> dict:
        """The run's entry in ``model.json`` (also written, "in progress", with checkpoints)."""
        out = {
            "command": command, "config": json.loads(config.model_dump_json()),
            "data_fingerprint": data_fingerprint, "split": split,
            "seconds": round(seconds, 1), "iterations": iterations,
            "epochs_run": len(events.history), "stop_reason": stop_reason,
            "hardware": hardware_description(device), "precision": precision,
            "best_epoch": events.best[2], "history": events.history,
        }
        best = events.best_scores()
        if best is not None and best.get("partial"):
            out["best_epoch_unfinished"] = True  # kept: the weights when the run stopped
        if events.recoveries:  # diverged, went back to the best weights at a lower rate
            out["recoveries"] = events.recoveries
        if previous:
            # a resumed run: keep the record of the runs it started from
            out["resumed_from"] = resumed_chain(previous)
        return out

    net = model.net.to(device).train()
    EventsCallback, _, WallClockScheduleCallback = _callbacks()
    deadline = time.monotonic() + config.minutes * 60 if config.minutes else None
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

    events = EventsCallback(progress, cancel, deadline, datasets, checkpoint)
    cbs = [events]
    if config.minutes and not config.epochs:
        cbs.append(WallClockScheduleCallback(config.minutes * 60))
    learn = Learner(dls, net, loss_func=make_loss(config), opt_func=Adam,
                    metrics=[batch_psnr, batch_ssim], wd=config.weight_decay, cbs=cbs)
    learn.recorder.train_metrics = False
    seconds, iterations = fit_learner(learn, config, device, events,
                                      score_start=init_from is not None)
    model.config.receptive_field = measure_receptive_field(net, arch)
    model.config.training = record(events.stop_reason, seconds, iterations)
    record_warnings(model.config.training,
                    [dead_encoder_warning(model.config.receptive_field, arch),
                     run_divergence_warning(events, config.lr_max)])
    best = events.best_scores()
    if best is not None:
        model.config.metrics.update({
            "valid_loss": best.get("valid_loss"), "valid_psnr": best.get("batch_psnr"),
            "valid_ssim": best.get("batch_ssim"),
        })
    try:
        path = save_model(model, out, fp16=fp16) if out is not None else None
    except OSError as e:
        # the run is over: say where what it trained can still be found
        kept = (f"; the last epoch's checkpoint is in {Path(checkpoint_dir) / 'last'}"
                if checkpoint_dir is not None and (Path(checkpoint_dir) / "last").is_dir()
                else "; rerun with --checkpoint-dir on a disk with space to keep epochs as they end")
        raise OSError(f"{e}{kept}") from e
    if progress is not None:
        progress({"event": "done", "stop_reason": events.stop_reason, "seconds": seconds,
                  "path": str(path) if path else None})
    return TrainResult(model=model, history=events.history, stop_reason=events.stop_reason,
                       seconds=seconds, iterations=iterations, path=path)


def fit_learner(learn, config, device: torch.device, events, *,
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
        for cb in _cpu_callbacks(prec):
            learn.add_cb(cb)
    epochs = config.epochs or 1
    wall_clock = bool(config.minutes and not config.epochs)
    if wall_clock:
        # an upper bound: the wall-clock schedule and the deadline end the run on time
        epochs = 10 * _epochs_for_budget(learn, config, device) + 10
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
    events._emit({"event": "stopped", "stop_reason": events.stop_reason, "seconds": seconds,
                  "iterations": iterations})
    return seconds, iterations


def _epochs_for_budget(learn, config: TrainConfig, device: torch.device) -> int:
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


def check_fine_tune_start(model, scale: int) -> None:
    """Refuse to fine-tune ``model`` into a ``scale``x restorer when it cannot be one (a
    segmentation model, another scale): one line, before any data is read."""
    if model.kind != "restoration":
        raise ValueError(f"cannot fine-tune {model.name!r} as a restorer: it is a "
                         f"{model.kind} model")
    if model.scale != scale:
        raise ValueError(f"cannot fine-tune {model.name!r} for {scale}x: it restores "
                         f"{model.scale}x (choose scale {model.scale})")


def _probe_inputs(train_stacks, crappifier, config: TrainConfig, arch, unit_space) -> list:
    """Crappified training inputs (network units) of a fixed draw, apart from the training
    draws: what the recorded ``input_levels`` and the domain statistics are measured on."""
    probe = CrappifiedPatches(train_stacks, crappifier, config.patch_size, arch.frames,
                              length=256, seed=config.seed + 2, fixed=True,
                              unit_space=unit_space)
    return [probe[i][0] for i in range(len(probe))]


def _fine_tune_norm(hr_images, norm: NormConfig, unit, crappifier, config: TrainConfig, arch,
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
    lo, hi = input_levels(_probe_inputs(stacks, crappifier, config, arch,
                                        UnitSpace(norm, unit)))
    span = norm.high - norm.low  # the probe's percentiles back in the data's units
    start = NormConfig(mode="percentile", input_levels=tuple(start_levels))
    aligned = start.for_input(norm.low + lo * span, norm.low + hi * span)
    return NormConfig(low=aligned.low, high=aligned.high)


def _crappified_datasets(hr_images, config: TrainConfig, arch, axis: int, n_train: int,
                         n_valid: int, *, measure_inputs: bool = True,
                         start_levels: tuple[float, float] | None = None):
    """Normalisation, crappifier, split by plane and the train/validation patch datasets that
    :func:`train` and :func:`find_lr` share.

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
        norm = _fine_tune_norm(hr_images, norm, unit, crappifier, config, arch, axis,
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
        inputs = _probe_inputs(train_stacks, crappifier, config, arch, unit_space)
        norm = NormConfig.model_validate({**norm.model_dump(), "mode": "percentile",
                                          "input_levels": input_levels(inputs)})
        domain = training_statistics(inputs, norm.input_levels)
        domain["spread"] = _plane_spread(train_stacks, crappifier, config, unit_space)
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


def _plane_spread(stacks, crappifier: Crappifier, config: TrainConfig,
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


def find_lr(hr_images: Sequence[np.ndarray], config: TrainConfig | None = None, *, axis: int = 0,
            start_lr: float = 1e-6, end_lr: float = 1e-1, num_it: int = 60) -> dict:
    """fastai's learning-rate finder on the same data and model :func:`train` would use.

    Returns ``{"valley": lr, "lrs": [...], "losses": [...]}``; pass ``valley`` (or a value a bit
    below the loss minimum) as ``TrainConfig.lr_max``. The weights are not kept.
    """
    import fastai.callback.schedule  # noqa: F401 - patches Learner.lr_find
    from fastai.callback.schedule import valley
    from fastai.learner import Learner
    from fastai.optimizer import Adam

    config = config or TrainConfig()
    arch = config.arch.model_copy(update={"scale": config.scale})
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    hr_images = [np.asarray(im) for im in hr_images]
    norm, _, train_ds, valid_ds, _, _ = _crappified_datasets(
        hr_images, config, arch, axis, num_it * config.batch_size, config.batch_size,
        measure_inputs=False)  # the weights are not kept: no levels or statistics to record
    dls = make_dataloaders(train_ds, valid_ds, config.batch_size, device=device)
    model = build_model(arch, norm=norm, seed=config.seed, measure_rf=False)
    learn = Learner(dls, model.net.to(device).train(), loss_func=make_loss(config), opt_func=Adam,
                    wd=config.weight_decay)
    if hasattr(learn, "progress"):
        learn.remove_cb(learn.progress)
    with learn.no_logging():
        found = learn.lr_find(start_lr=start_lr, end_lr=end_lr, num_it=num_it, show_plot=False,
                              suggest_funcs=(valley,))
    rec = learn.recorder
    return {"valley": float(found.valley), "lrs": [float(x) for x in rec.lrs],
            "losses": [float(x) for x in rec.losses]}
