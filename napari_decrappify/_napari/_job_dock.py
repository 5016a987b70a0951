"""The job lifecycle every dock shares: one :class:`._workers.CoreJob` at a time.

:class:`JobDock` starts a dock's worker jobs and follows them: the buttons that start a job
are disabled and Cancel enabled while one runs, the dock's progress line follows it, a click
while it runs says the dock is busy, Cancel asks the job to stop, a failure is said on the
status line and as a napari notification, and the buttons come back when it is finished
(unless a job chained from it runs). A dock keeps only what is its own: its parameters, its
jobs' functions and what it turns their results into.
"""

from __future__ import annotations

import functools

from ._workers import CoreJob


def model_first(action):
    """Decorates a dock's action that needs the dock's model (:class:`._workers.LoadsModelFirst`,
    the dock's ``_load_model_first``): refused (None) while a job runs; when the model is not
    loaded yet, the job that loads it is returned, and its end calls the action again."""

    @functools.wraps(action)
    def run(self, *args):
        if self._busy():
            return None
        loading = self._load_model_first(getattr(self, action.__name__))
        if loading is not None:
            return loading
        return action(self, *args)

    return run


class JobDock:
    """Mixed into a dock widget (before :class:`._ui.DockBody`).

    The dock provides ``status`` (its message line, a magicgui value widget), ``cancel_button``
    and ``progress`` (a :class:`._progress.JobProgress`; or :meth:`_job_watchers` names another
    watcher with its interface), and lists in :meth:`_job_buttons` the buttons that start jobs.

    Class attributes word the dock's messages: ``BUSY_TEXT`` (a click while a job runs),
    ``CANCEL_TEXT`` (on Cancel; None: none), ``FAILED_STATUS`` and ``FAILED_NOTICE`` (format
    strings of ``{exc}``: the status line and the napari notification of a failed job).

    A dock that sets ``_closed`` when its widget is destroyed (the Crappify dock) is left
    alone by its jobs' ends: their Qt widgets are gone.
    """

    job: CoreJob | None = None
    _closed = False
    BUSY_TEXT = "⚠ busy: wait for the running job or cancel it"
    CANCEL_TEXT: str | None = "cancelling ..."
    FAILED_STATUS = "⚠ failed: {exc}"
    FAILED_NOTICE = "Decrappify: {exc}"

    def _job_buttons(self) -> tuple:
        """The buttons that start a job, disabled while one runs: one job at a time."""
        return ()

    def _progress_below(self, min_form_height: int | None = None) -> None:
        """The dock's message line, progress line and Cancel below its scroll area (a
        :class:`._progress.JobProgress`: seen wherever the dock is scrolled); at least
        ``min_form_height`` px of the form stay visible when other docks squeeze this one."""
        from ._progress import JobProgress

        self.progress = JobProgress(self.cancel_button.native, self.status.native).attach_to(self)
        if min_form_height is not None:
            self._scroll.setMinimumHeight(min_form_height)
        self.cancel_button.changed.connect(self.cancel)

    def _job_watchers(self) -> list:
        """What follows the dock's jobs: its progress line."""
        return [self.progress]

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status.value = text

    @property
    def running(self) -> bool:
        """A job of this dock is running."""
        return self.job is not None and self.job.running

    def _busy(self) -> bool:
        """True (and said on the status line) while a job runs."""
        if self.running:
            self._set_status(self.BUSY_TEXT)
            return True
        return False

    def _start_job(self, fn, *args, cancelled: str | None = None, **kwargs) -> CoreJob:
        """Run ``fn`` in a :class:`CoreJob` (its keyword arguments as CoreJob's), followed by
        the dock's progress line; a failure goes to :meth:`_failed` unless ``on_error`` is
        given; ``cancelled`` is what the status line says when the job is cancelled (instead of
        an ``on_cancelled``)."""
        if kwargs.get("on_error") is None:
            kwargs["on_error"] = self._failed
        if cancelled is not None:
            kwargs["on_cancelled"] = lambda: self._set_status(cancelled)
        self.job = CoreJob(fn, *args, on_finished=self._job_finished, watchers=self._job_watchers(),
                           **kwargs)
        for button in self._job_buttons():
            button.enabled = False
        self.cancel_button.enabled = True
        return self.job

    def _job_finished(self) -> None:
        # a job chained from the one that ended (a model loaded, then used) runs on; a closed
        # dock has no widgets left
        if self.running or self._closed:
            return
        for button in self._job_buttons():
            button.enabled = True
        self.cancel_button.enabled = False

    def _failed(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._set_status(self.FAILED_STATUS.format(exc=exc))
        show_error(self.FAILED_NOTICE.format(exc=exc))

    def _cancel_job(self) -> bool:
        """Ask the running job to stop (it stops at the core's next check); False when none
        runs."""
        if not self.running:
            return False
        if self.CANCEL_TEXT is not None:
            self._set_status(self.CANCEL_TEXT)  # first: an abandoned job reports at once
        self.job.cancel()
        return True

    def cancel(self, *_args) -> None:
        self._cancel_job()
