"""A dock's own progress line: what runs, a progress bar, the ETA, and the dock's Cancel.

napari's activity panel is collapsed by default, so a dock shows its jobs where the user looks:
:class:`JobProgress` sits below the dock's scroll area (always visible, wherever the dock is
scrolled) and follows every :class:`._workers.CoreJob` that names it in ``watchers``. Its text
is the job's description and its latest progress event (:func:`._workers.describe`); the ETA is
the core's own estimate when it gives one (training, tiles), else extrapolated from the events'
``done`` / ``total`` at the rate so far. Work of unknown length shows a busy bar and the time
spent. Between jobs it shows nothing but the dock's last message.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QSizePolicy, QVBoxLayout, QWidget

from ._workers import describe


def eta_seconds(event: dict, elapsed: float) -> float | None:
    """Seconds left for a job ``elapsed`` seconds in: the event's own ``eta``, else
    extrapolated from ``done`` / ``total`` (None when the work's length is unknown)."""
    if event.get("eta") is not None:
        return float(event["eta"])
    done, total = event.get("done", event.get("iteration")), event.get("total")
    if not total or not done:
        return None
    return elapsed / done * max(total - done, 0)


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: a duration for people."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class JobProgress(QWidget):
    """What a dock is doing: a line of text, a progress bar and (optionally) its Cancel button.

    Parameters
    ----------
    cancel_button : QWidget, optional
        The dock's Cancel button (a native Qt widget), placed beside the bar.
    status : QWidget, optional
        The dock's message line (results, warnings), shown above the progress line.
    parent : QWidget, optional
    """

    def __init__(self, cancel_button: QWidget | None = None, status: QWidget | None = None,
                 parent=None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 4)
        if status is not None:
            # the dock's width, wrapped (its own size hint wrapped it at a third of the width)
            status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            layout.addWidget(status)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        if cancel_button is not None:
            row.addWidget(cancel_button)
        layout.addWidget(self.label)
        layout.addLayout(row)
        self.bar.setVisible(False)
        self.job = None
        self._t0 = time.monotonic()

    @property
    def text(self) -> str:
        return self.label.text()

    def attach_to(self, dock_body) -> JobProgress:
        """Put this line below a :class:`._ui.DockBody`'s scroll area (outside it: always seen)."""
        dock_body.layout().addWidget(self)
        return self

    # -- CoreJob watcher interface (UI thread)
    def job_started(self, job) -> None:
        self.job = job
        self._t0 = time.monotonic()
        self.bar.setRange(0, 0)  # busy until the first event with a known length
        self.bar.setVisible(True)
        self.label.setText(f"{job.description} …")

    def job_event(self, job, event: dict) -> None:
        if job is not self.job or not isinstance(event, Mapping):
            return
        elapsed = time.monotonic() - self._t0
        done, total = event.get("done", event.get("iteration")), event.get("total")
        if total and done is not None:
            self.bar.setRange(0, int(total))
            self.bar.setValue(min(int(done), int(total)))
        text = f"{job.description}: {describe({k: v for k, v in event.items() if k != 'eta'})}"
        eta = eta_seconds(event, elapsed)
        text += f" · {format_seconds(elapsed)} so far"
        if eta is not None:
            text += f", about {format_seconds(eta)} left"
        if job.cancel_event.is_set() and event.get("event") != "stopped":
            text = f"{job.description}: cancelling …"
        self.label.setText(text)

    def job_cancelling(self, job) -> None:
        if job is self.job:
            self.label.setText(f"{job.description}: cancelling …")

    def job_finished(self, job) -> None:
        if job is not self.job:
            return
        self.job = None
        self.bar.setVisible(False)
        elapsed = format_seconds(time.monotonic() - self._t0)
        word = job.status
        if job.cancel_event.is_set() and job.status == "done":
            word = "cancelled"  # training returns normally when cancelled (best weights kept)
        self.label.setText(f"{job.description}: {word} after {elapsed}")


class InlineProgress:
    """:class:`JobProgress`'s watcher interface over a dock's own magicgui ``ProgressBar`` and
    text line (the Restore dock's, in its form: between jobs the lazy view's tiles use them).

    Parameters
    ----------
    bar : magicgui.widgets.ProgressBar
        Shown while a job runs: ``n of m``, or busy while the length is unknown.
    text : magicgui.widgets.Label
        What runs, n of m, ETA (the dock's status line keeps its messages).
    """

    def __init__(self, bar, text):
        self.bar, self.text = bar, text
        self.job = None

    def show(self, text: str, done=None, total=None) -> None:
        """The bar (busy when ``total`` is unknown) and its line of text."""
        bar = self.bar.native
        if total:
            bar.setRange(0, int(total))
            bar.setValue(min(int(done or 0), int(total)))
            bar.setFormat("%v of %m")
        else:
            bar.setRange(0, 0)  # Qt's busy indicator
        self.bar.visible = self.text.visible = True
        if self.text.value != text:
            self.text.value = text

    def hide(self) -> None:
        self.bar.visible = self.text.visible = False

    # -- CoreJob watcher interface (UI thread)
    def job_started(self, job) -> None:
        self.job = job
        self.show(f"{job.description} …")

    def job_event(self, job, event: dict) -> None:
        if job is not self.job or job.cancel_event.is_set() or not isinstance(event, Mapping):
            return
        self.show(f"{job.description}: {describe(event)}", event.get("done"), event.get("total"))

    def job_cancelling(self, job) -> None:
        if job is self.job:
            self.hide()

    def job_finished(self, job) -> None:
        if job is self.job:  # not when a job chained from it runs
            self.job = None
            self.hide()
