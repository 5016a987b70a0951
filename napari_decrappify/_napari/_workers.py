"""Run core functions in napari thread workers: progress events to a progress bar, cancellation.

The core reports progress through a callback (``progress(event)``: the typed events of
:mod:`napari_decrappify.progress`, which read as dicts; plain dicts, which tests and scripts
send, work the same) and stops when a ``threading.Event`` is set. A napari
``GeneratorWorker`` wants a generator that *yields* its progress, so :class:`CoreJob` runs the
core call in a helper thread and its generator yields the events as they arrive (the
stardist-napari pattern: the generator's ``yielded`` signal reaches the UI thread through Qt's
queued connections). The UI thread never waits on the core.

Cancelling sets the event; the core stops at its next check (between tiles, batches or
chunks) and raises a :class:`~napari_decrappify.progress.Cancelled` (or, for training,
returns with ``stop_reason == "cancelled"``). Either way the job reports it through
``on_cancelled`` and never through ``on_result``, so a dock cannot add a half-computed layer
by mistake.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from napari.qt.threading import GeneratorWorker
from napari.utils import progress as napari_progress
from psygnal import Signal

from ..progress import Cancelled

_DONE = object()
# events whose every occurrence matters (plots); other kinds are coalesced to the latest one
_KEEP_ALL = {"batch", "epoch", "done", "recovered", "stopped"}


class _ModelEvents:
    """Process-wide notification that a model folder was written (Train dock -> Restore dock)."""

    saved = Signal(str)


model_events = _ModelEvents()


def warm_imports(*modules: str) -> None:
    """Import ``modules`` now, while a dock opens, not first inside a worker: an import holds
    the GIL while it compiles and runs the module (0.1-0.5 s for scikit-image, dask.array or
    the core's segment module), and napari's UI thread froze that long mid-job."""
    import importlib

    for name in modules:
        importlib.import_module(name)


def is_cancellation(exc: BaseException) -> bool:
    """True for the core's cancellation exceptions (``RestoreCancelled``,
    ``TrainingCancelled``: every :class:`~napari_decrappify.progress.Cancelled`), by class:
    another library's ``...Cancelled`` is a failure to report, not a cancel."""
    return isinstance(exc, Cancelled)


def compute_array(arr, cancel: threading.Event | None = None):
    """``np.asarray(arr)`` in a worker, cancellable: for a dask array (a lazy restored layer, a
    lazily opened file) computed by dask's local schedulers, tasks (tiles, chunks) not yet
    started when ``cancel`` is set are skipped and ``RestoreCancelled`` is raised. (Under
    dask.distributed it is a plain ``np.asarray``: check ``cancel`` between calls.)"""
    import dask
    import dask.array as da
    import numpy as np
    from dask.base import get_scheduler

    if not isinstance(arr, da.Array) or cancel is None:
        return np.asarray(arr)
    if get_scheduler(collections=[arr]) not in (dask.threaded.get, dask.local.get_sync):
        return np.asarray(arr)

    def pretask(_key, _dsk, _state):
        if cancel.is_set():
            from ..tiling import RestoreCancelled

            raise RestoreCancelled("cancelled")

    # (start, start_state, pretask, posttask, finish), for this computation only (the global
    # dask callbacks, such as napari's cache, are not touched)
    return np.asarray(arr.compute(callbacks=[(None, None, pretask, None, None)]))


class _Failed:
    """The core raised: carried as the generator's *return value*, because superqt's worker
    treats a RuntimeError (the base of ``RestoreCancelled``) raised in a worker as "the worker
    was deleted" and silently drops it, emitting neither ``returned`` nor ``errored``."""

    def __init__(self, error: BaseException):
        self.error = error


def _relay(fn: Callable, args, kwargs, cancel: threading.Event):
    """Generator: run ``fn(*args, progress=..., cancel=..., **kwargs)`` in a helper thread and
    yield its progress events; return its result (or its exception wrapped in :class:`_Failed`)."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = fn(*args, progress=events.put, cancel=cancel, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the worker thread below
            outcome["error"] = e
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=target, name=f"decrappify-{getattr(fn, '__name__', 'job')}",
                              daemon=True)
    thread.start()
    finished = False
    while not finished:
        batch = [events.get()]
        while True:  # drain what else is waiting, so a fast core does not flood the UI thread
            try:
                batch.append(events.get_nowait())
            except queue.Empty:
                break
        pending = None
        for ev in batch:
            if ev is _DONE:
                finished = True
                break
            if isinstance(ev, Mapping) and ev.get("event") not in _KEEP_ALL:
                if pending is not None and pending.get("event") != ev.get("event"):
                    yield pending
                pending = ev
                continue
            if pending is not None:
                yield pending
                pending = None
            yield ev
        if pending is not None:
            yield pending
    thread.join()
    if "error" in outcome:
        return _Failed(outcome["error"])
    return outcome.get("value")


def describe(event: dict) -> str:
    """A one-line status for a progress event (tiles, chunks, batches, epochs)."""
    kind = event.get("event", "")
    parts = []
    if kind == "batch":
        parts.append(f"iteration {event.get('iteration')}/{event.get('total')}")
        if event.get("loss") is not None:
            parts.append(f"loss {event['loss']:.4f}")
    elif kind == "epoch":
        parts.append(f"epoch {event.get('epoch', 0) + 1}")
        if event.get("valid_loss") is not None:
            parts.append(f"valid loss {event['valid_loss']:.4f}")
        if event.get("batch_psnr") is not None:
            parts.append(f"valid PSNR {event['batch_psnr']:.2f} dB")
    elif kind == "recovered":
        back = event.get("back_to_epoch", -1)
        back = f"epoch {back + 1}'s weights" if back >= 0 else "the starting weights"
        parts.append(f"diverged at epoch {event.get('epoch', 0) + 1}: back to {back}, peak "
                     f"learning rate now {event.get('lr_max', float('nan')):.2g}")
    elif kind == "stopped":
        parts.append(f"training stopped ({event.get('stop_reason')}): saving the model")
    elif "done" in event and "total" in event:
        parts.append(f"{kind} {event['done']}/{event['total']}")
        if event.get("mpix_per_s"):
            parts.append(f"{event['mpix_per_s']:.2f} Mpix/s")
    if event.get("eta") is not None and kind != "epoch":
        parts.append(f"ETA {event['eta']:.0f} s")
    return ", ".join(parts) or kind


class CoreJob:
    """A core call running in a napari ``GeneratorWorker``, with a progress bar and cancel.

    Parameters
    ----------
    fn : callable
        Called as ``fn(*args, progress=callback, cancel=threading.Event, **kwargs)`` in a
        worker thread.
    description : str
        Shown on the napari progress bar.
    on_event : callable(dict), optional
        Each progress event, in the UI thread.
    on_result : callable(value), optional
        The return value, in the UI thread, unless the job was cancelled.
    on_cancelled : callable(), optional
        Called instead of ``on_result``/``on_error`` when the job stopped because it was
        cancelled. ``cancelled_if`` decides that for a returned value (training returns normally
        with ``stop_reason == "cancelled"``).
    on_error : callable(Exception), optional
        Any other exception; by default shown as a napari error notification.
    on_finished : callable(), optional
        Always, last.
    watchers : sequence of JobProgress, optional
        Told when the job starts, reports, is cancelled and finishes (a dock's progress line).
    abandon_on_cancel : bool
        For a pure computation whose core checks ``cancel`` only between long steps (a
        watershed on a volume): Cancel reports the job cancelled and finished at once, and its
        result, when the helper thread gets there, is dropped.
    """

    def __init__(self, fn: Callable, *args, description: str = "decrappify",
                 on_event: Callable[[dict], None] | None = None,
                 on_result: Callable[[Any], None] | None = None,
                 on_cancelled: Callable[[], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None,
                 on_finished: Callable[[], None] | None = None,
                 cancelled_if: Callable[[Any], bool] | None = None,
                 watchers=(), abandon_on_cancel: bool = False, start: bool = True, **kwargs):
        self.cancel_event = threading.Event()
        self.description = description
        self._on_event, self._on_result, self._on_cancelled = on_event, on_result, on_cancelled
        self._on_error, self._on_finished = on_error, on_finished
        self._cancelled_if = cancelled_if
        self.result: Any = None
        self.error: BaseException | None = None
        self.status = "pending"  # pending -> running -> done | cancelled | failed
        # Qt delivers ``returned`` (status) before ``finished`` (buttons, progress bar): wait on
        # ``finished`` to see the dock in its final state.
        self.finished = False
        self.events: list[dict] = []
        self.t0 = time.monotonic()
        self.pbar: napari_progress | None = None
        self._updating_bar = False
        # a dock's own progress line (:class:`._progress.JobProgress`) follows the job too
        self.watchers: list = list(watchers)
        self._abandon_on_cancel = abandon_on_cancel
        self.abandoned = False
        self.worker = GeneratorWorker(_relay, fn, args, kwargs, self.cancel_event)
        self.worker.yielded.connect(self._event)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.finished.connect(self._finished)
        self.worker.aborted.connect(self._aborted)  # worker.quit(), e.g. napari closing
        if start:
            self.start()

    # -- control
    def start(self) -> None:
        self.status = "running"
        self.t0 = time.monotonic()
        self.pbar = napari_progress(total=0, desc=self.description)  # indeterminate until an event
        for w in self.watchers:
            w.job_started(self)
        self.worker.start()

    def cancel(self) -> None:
        """Ask the core to stop at its next check; the job then reports ``on_cancelled``."""
        self.cancel_event.set()
        if self.pbar is not None:
            self.pbar.set_description(f"{self.description}: cancelling")
        for w in self.watchers:
            w.job_cancelling(self)
        if self._abandon_on_cancel and self.running and not self.abandoned:
            # answered now; the helper thread ends at the core's next check, unheard
            self.abandoned = True
            self.status = "cancelled"
            if self._on_cancelled is not None:
                self._on_cancelled()
            self._finished()

    @property
    def running(self) -> bool:
        return self.status == "running"

    # -- slots (UI thread)
    def _event(self, event) -> None:
        if not isinstance(event, Mapping) or self.abandoned:
            return
        # Updating napari's progress bar can process Qt events, which delivers the next queued
        # event *inside* this call: hand the event on first (so consumers see events in order),
        # and let only the outermost call update the bar, from the latest event.
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)
        for w in self.watchers:
            w.job_event(self, event)
        if self.pbar is None or self._updating_bar:
            return
        self._updating_bar = True
        try:
            latest = self.events[-1]
            done = latest.get("done", latest.get("iteration"))
            total = latest.get("total")
            if total and done is not None:
                if self.pbar.total != total:
                    self.pbar.total = int(total)
                # update(), not ``n = ...``: only update() emits the value event that moves the
                # activity panel's bar (it stayed at 0% while its text said 2/25)
                if self.pbar is not None:
                    self.pbar.update(int(done) - self.pbar.n)
            # the bar's events can process Qt events: the job may have finished (bar closed)
            if self.pbar is not None and not self.cancel_event.is_set():
                self.pbar.set_description(f"{self.description}: {describe(latest)}")
        finally:
            self._updating_bar = False

    def _returned(self, value) -> None:
        if self.abandoned:
            return
        if isinstance(value, _Failed):
            self._errored(value.error)
            return
        self.result = value
        if self.cancel_event.is_set() and self._cancelled_if is not None and self._cancelled_if(value):
            self.status = "cancelled"
            if self._on_cancelled is not None:
                self._on_cancelled()
            return
        self.status = "done"
        if self._on_result is not None:
            self._on_result(value)

    def _errored(self, exc: BaseException) -> None:
        if self.abandoned:
            return
        self.error = exc
        if is_cancellation(exc):
            self.status = "cancelled"
            if self._on_cancelled is not None:
                self._on_cancelled()
            return
        self.status = "failed"
        if self._on_error is not None:
            self._on_error(exc)
        else:
            from napari.utils.notifications import show_error

            show_error(f"{self.description} failed: {exc}")

    def _aborted(self) -> None:
        if self.abandoned:
            return
        self.cancel_event.set()  # the helper thread stops at the core's next check
        self.status = "cancelled"
        if self._on_cancelled is not None:
            self._on_cancelled()

    def _finished(self) -> None:
        if self.finished:  # an abandoned job already finished when it was cancelled
            return
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
        for w in self.watchers:
            w.job_finished(self)
        if self._on_finished is not None:
            self._on_finished()
        self.finished = True


def _load_model_job(path, *, progress=None, cancel=None):
    """Worker: load (and cache) a model's weights, so that the UI thread never does; the
    loaded model is the job's result, handed on to the action that waited for it."""
    from .api import resolve_model

    return resolve_model(path)


class LoadsModelFirst:
    """For docks whose buttons need a model's weights: load them in a worker job first.

    ``_load_then(path, action, start, **kwargs)`` returns ``None`` when the model at
    ``path`` is loaded (:func:`api.loaded_model`) and ``action`` can go on; otherwise it starts
    a loading job with the dock's ``start`` (its CoreJob starter, given ``kwargs``) whose
    result calls ``action()`` again, in the UI thread, and returns that job. The action takes
    its model from :meth:`_model_at`, which never loads weights.
    """

    _loaded_just_now = None  # (path, model) that a loading job has just loaded, for its action

    def _load_then(self, path, action, start, **kwargs):
        from .api import loaded_model

        if not path or self._just_loaded(path) is not None or loaded_model(path) is not None:
            return None
        return start(_load_model_job, path, description=f"Loading model {Path(path).name}",
                     on_result=lambda model: self._after_load(path, model, action),
                     cancelled_if=lambda _model: True, **kwargs)

    def _after_load(self, path, model, action) -> None:
        """Run ``action`` with the ``model`` the job loaded; never a second load for the same
        click, even when the weights file was replaced meanwhile (the cache misses then)."""
        self._loaded_just_now = (path, model)
        try:
            action()
        finally:
            self._loaded_just_now = None

    def _just_loaded(self, path):
        just = self._loaded_just_now
        return just[1] if just is not None and just[0] == path else None

    def _model_at(self, path):
        """The loaded model at ``path`` for an action: the one its loading job handed on, else
        the cached one. Never loads weights, which would block napari's UI thread (also while
        another dock's worker holds the loading lock); the action calls :meth:`_load_then` first.

        Raises
        ------
        ValueError
            The model is not loaded: its weights file changed on disk since the check.
        """
        from .api import loaded_model

        model = self._just_loaded(path)
        if model is None:
            model = loaded_model(path)
        if model is None:
            raise ValueError(f"model {Path(path).name!r} changed on disk just now: "
                             "run again to load it")
        return model
