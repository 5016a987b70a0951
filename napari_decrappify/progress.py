"""Progress and cancellation of long work: the typed events the core reports, the one rate/ETA
counter behind its tile, chunk and plane events, and the base of its cancellation exceptions.

Long core calls take ``progress`` (a callable) and ``cancel`` (a ``threading.Event``). Each
progress event is a frozen dataclass (:class:`Progress`, :class:`RateProgress`,
:class:`Batch`, :class:`Epoch`, :class:`Recovered`, :class:`Stopped`, :class:`Done`) that also
reads as a read-only mapping equal to the dict the core sent before these classes existed
(``ev["event"]``, ``ev.get("eta")``, ``"done" in ev``, ``dict(ev)``, ``ev == {...}``): scripts
written against dicts keep working, new code can test ``isinstance(ev, Batch)``.

Setting ``cancel`` stops the work at its next check with a :class:`Cancelled` (restore, write,
crappify, segmentation, scoring: :class:`~napari_decrappify.io.RestoreCancelled`); training
stops fastai with :class:`~napari_decrappify.train.TrainingCancelled` and returns normally,
with ``stop_reason == "cancelled"`` and its best weights kept.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

__all__ = ["Batch", "Cancelled", "Done", "Epoch", "Event", "Progress", "RateCounter",
           "RateProgress", "Recovered", "Stopped"]


class Cancelled(Exception):
    """Base of the core's cancellation exceptions: work stopped because its ``cancel`` event
    was set (not a failure). The napari docks report a job that raises one as cancelled."""


# a field left out of the mapping while None (a step without a count has no "done"/"total")
_OMIT_NONE = {"omit_none": True}


@functools.cache
def _fields(cls) -> tuple[tuple[str, bool], ...]:
    """``(name, omitted when None)`` of ``cls``'s mapped fields (all but ``event``, ``extra``)."""
    return tuple((f.name, bool(f.metadata.get("omit_none"))) for f in fields(cls)
                 if f.name not in ("event", "extra"))


@dataclass(frozen=True, eq=False)
class Event(Mapping):
    """A progress event: its fields, ``"event"`` (its kind) and ``extra``, read as a mapping.

    ``extra`` carries what an emitter adds to a kind's fields (the ``"source"`` being read,
    the ``"stage"`` of pairing, an epoch's validation metrics); its keys read like fields.
    Equality is the mapping's (``collections.abc.Mapping``): an event equals a dict with the
    same items.
    """

    extra: Mapping[str, Any] = field(default_factory=dict, kw_only=True)

    def _present(self) -> Iterator[str]:
        yield "event"
        for name, omit_none in _fields(type(self)):
            if not (omit_none and getattr(self, name) is None):
                yield name
        yield from self.extra

    def __getitem__(self, key: str) -> Any:
        if key == "event":
            return self.event
        for name, omit_none in _fields(type(self)):
            if name == key:
                value = getattr(self, name)
                if omit_none and value is None:
                    raise KeyError(key)
                return value
        return self.extra[key]

    def __iter__(self) -> Iterator[str]:
        return self._present()

    def __len__(self) -> int:
        return sum(1 for _ in self._present())


@dataclass(frozen=True, eq=False)
class Progress(Event):
    """A counted step of some work (``done`` of ``total``), or a stage of unknown length
    (``done`` and ``total`` None: left out of the mapping). ``event`` names it: "scoring",
    "consistency", "pairs", "sources", "reading ..."."""

    event: str
    done: int | None = field(default=None, metadata=_OMIT_NONE)
    total: int | None = field(default=None, metadata=_OMIT_NONE)


@dataclass(frozen=True, eq=False)
class RateProgress(Event):
    """One more of ``total`` tiles, chunks or planes (``event``: "tiles", "chunks",
    "planes"), with the throughput so far (``mpix_per_s``) and the seconds left (``eta``)."""

    event: str
    done: int
    total: int
    mpix_per_s: float
    eta: float


@dataclass(frozen=True, eq=False)
class Batch(Event):
    """A training batch: ``iteration`` of ``total`` (with a time budget, an estimate)."""

    event: ClassVar[str] = "batch"
    epoch: int
    batch: int
    iteration: int
    total: int
    loss: float
    elapsed: float
    eta: float


@dataclass(frozen=True, eq=False)
class Epoch(Event):
    """A scored training epoch; its validation metrics (``valid_loss``, ``batch_psnr`` ...)
    are in ``extra``, read as keys."""

    event: ClassVar[str] = "epoch"
    epoch: int
    elapsed: float


@dataclass(frozen=True, eq=False)
class Recovered(Event):
    """Training diverged at ``epoch`` and goes on from ``back_to_epoch``'s weights."""

    event: ClassVar[str] = "recovered"
    epoch: int
    train_loss: float
    back_to_epoch: int
    lr_max: float


@dataclass(frozen=True, eq=False)
class Stopped(Event):
    """Training is over (the model is being saved): why, after how long, how many iterations."""

    event: ClassVar[str] = "stopped"
    stop_reason: str
    seconds: float
    iterations: int


@dataclass(frozen=True, eq=False)
class Done(Event):
    """A training run finished: why, how long, and where the model was saved (or None)."""

    event: ClassVar[str] = "done"
    stop_reason: str
    seconds: float
    path: str | None


class RateCounter:
    """Items done of ``total`` and their pixels, from which each :class:`RateProgress` takes
    its rate and ETA; ticked from many threads (dask tasks), hence the lock.

    Parameters
    ----------
    event : str
        The kind of item: "tiles", "chunks", "planes".
    total : int
    progress : callable, optional
        Receives each tick's :class:`RateProgress`.
    cancel : threading.Event, optional
        Kept for the tasks that tick this counter (they check it before each item).
    clock_from_first_tick : bool
        Start the clock at the first item done instead of now: a lazy restoration is built
        long before (and may never be) computed, a write starts at once.
    clock : callable
        Seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, event: str, total: int, progress: Callable | None = None, cancel=None, *,
                 clock_from_first_tick: bool = False, clock: Callable[[], float] = time.monotonic):
        self.event, self.total, self.progress, self.cancel = event, total, progress, cancel
        self.done = self.pixels = 0
        self.clock = clock
        self.t0: float | None = None if clock_from_first_tick else clock()
        self.lock = threading.Lock()

    def tick(self, pixels: int = 0) -> RateProgress:
        """Count one item of ``pixels`` pixels; report and return its event."""
        with self.lock:
            now = self.clock()
            if self.t0 is None:
                self.t0 = now
            self.done += 1
            self.pixels += pixels
            done, px, t0 = self.done, self.pixels, self.t0
        dt = max(now - t0, 1e-6)
        # done can pass total: a lazy restoration recomputes tiles napari dropped from its cache
        ev = RateProgress(self.event, min(done, self.total), self.total, mpix_per_s=px / dt / 1e6,
                          eta=max(0.0, (self.total - done) * dt / done))
        if self.progress is not None:
            self.progress(ev)
        return ev
