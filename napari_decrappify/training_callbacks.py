"""The fastai callbacks of a training run: progress events, cancel, the wall-clock budget and
schedule, divergence detection, and CPU speed-ups (``channels_last``, bf16 autocast).

Defined inside functions so that importing this module (and :mod:`napari_decrappify.train`)
does not import fastai; restoration and segmentation training use the same callbacks through
:mod:`napari_decrappify.training_runner`.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .progress import Batch, Cancelled, Epoch, Recovered

ProgressFn = Callable[[Mapping[str, Any]], None]  # receives napari_decrappify.progress events


class TrainingCancelled(Cancelled):
    """Raised inside fastai to stop a training run between batches when its ``cancel`` is
    set. fastai ends the fit on it (its concrete class is also fastai's
    ``CancelFitException``: :func:`fit_callbacks`); :func:`~napari_decrappify.train.train`
    then returns normally, ``stop_reason == "cancelled"``, with the best weights kept."""

#: an epoch whose mean training loss exceeds this many times the lowest so far has diverged
DIVERGENCE_FACTOR = 100.0
#: this many non-finite batch losses in a row stop a run as diverged
NONFINITE_BATCHES = 5


@functools.cache  # one set of classes: isinstance and type checks agree across calls
def fit_callbacks():
    """The classes ``(EventsCallback, CancelFitException, WallClockScheduleCallback)``, defined
    on the first call so that importing this module stays cheap (no fastai)."""
    from fastai.callback.core import Callback, CancelFitException

    class FitCancelled(TrainingCancelled, CancelFitException):
        """The cancel of a run, as fastai's stop of a fit (caught by ``Learner.fit``)."""

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
            self._emit(Recovered(epoch=epoch, train_loss=loss, back_to_epoch=self.best[2],
                                 lr_max=lr_max))
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
                    raise FitCancelled()
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
            self._emit(Batch(epoch=self.run_epoch, batch=self.iter, iteration=done, total=total,
                             loss=loss, elapsed=elapsed, eta=eta))
            # weights gone NaN/inf keep every later loss non-finite: stop, the best weights
            # are kept (one fp16 overflow, which the grad scaler skips, is not a divergence)
            self.nonfinite_batches = 0 if math.isfinite(loss) else self.nonfinite_batches + 1
            if self.nonfinite_batches >= NONFINITE_BATCHES:
                self.stop_reason, self.diverged_at = "diverged", (self.run_epoch, loss)
                raise CancelFitException()
            if self.cancel is not None and self.cancel.is_set():
                self.stop_reason = "cancelled"
                raise FitCancelled()
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
            self.history.append(row)  # a dict: the history is saved in model.json
            self._emit(Epoch(epoch=row["epoch"], elapsed=row["elapsed"],
                             extra={k: v for k, v in row.items()
                                    if k not in ("event", "epoch", "elapsed")}))
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


def cpu_callbacks(precision: str) -> list:
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
