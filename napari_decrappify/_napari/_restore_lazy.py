"""Restore dock, the lazy result: its tiles' progress, Cancel, and rendering it to OME-Zarr.

A lazy result's tiles on screen are restored in background threads (:mod:`._live_lazy`);
:class:`LiveResultMixin` polls their progress into the dock's progress line while no job
runs, lets Cancel stop them when no job runs, and writes the whole result to an OME-Zarr
store, whose data the layer then reads.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, Container, FileEdit, PushButton

from . import _live_lazy
from ._layers import layer_geometry
from ._restore_input import _jsonable
from ._restore_scores import _exact
from ._ui import note

LIVE_POLL_MS = 250  # how often the lazy view's progress is read


class LiveResultMixin:
    """The Restore dock's lazy result (mixed into :class:`.restore.RestoreWidget`)."""

    def _render_section(self) -> Container:
        """The dock's *render to OME-Zarr* section (its button connected)."""
        self.render_path = FileEdit(label="OME-Zarr", mode="w", filter="*.zarr")
        self.render_overwrite = CheckBox(label="replace an existing store", value=False)
        self.render_button = PushButton(text="Render all to OME-Zarr")
        self.render = Container(widgets=[
            note("Writes every tile (resumable: an interrupted write continues where it "
                 "stopped), then the layer reads from the store."),
            self.render_path, self.render_overwrite, self.render_button])
        self.render_button.changed.connect(self.render_to_zarr)
        return self.render

    def _start_live_poll(self) -> None:
        """Follow the lazy result's tiles on screen (:meth:`_poll_live`)."""
        # a lazy result's tiles on screen are restored in the background: their progress is
        # polled (cheap counters) while no job runs
        from qtpy.QtCore import QTimer

        self._live_timer = QTimer(self)
        self._live_timer.setInterval(LIVE_POLL_MS)
        self._live_timer.timeout.connect(self._poll_live)
        self._live_timer.start()
        self._live_shown = ""
        self._contrast_pending: dict = {}  # map layers whose contrast waits for their data

    def _live(self):
        """The lazy result's :class:`_live_lazy.LiveArray`, if the result shown is one."""
        r = self.result
        if r is None or r["layer"] not in self.viewer.layers:
            return None
        return _live_lazy.live_of(r["layer"])

    def _poll_live(self) -> None:
        """Progress of the lazy result's tiles on screen, while no job runs; map layers'
        contrast from their data (:meth:`_contrast_maps`)."""
        if self._contrast_pending:
            self._contrast_maps()
        if self.running:
            return
        live = self._live()
        text = _live_lazy.status_text(live) if live is not None else ""
        busy = live is not None and not live.idle
        if busy:
            done, total = live.visible_progress()
            self._progress_line.show(text, done, total)
            self.cancel_button.enabled = True
        elif self._live_shown:
            self._progress_line.hide()
            self.cancel_button.enabled = False
        self._live_shown = text if busy else ""

    def cancel(self, *_args) -> None:
        """Stop the running job, else the lazy result's tiles on screen. Answers at once: the
        job stops at its next check (the tile being computed finishes in the background and
        is dropped; a lazy view's is kept)."""
        if self._cancel_job():  # its progress line is hidden at once
            self.cancel_button.enabled = False
            return
        live = self._live()
        if live is not None and not live.idle:
            live.cancel()
            self._progress_line.hide()
            self.cancel_button.enabled = False
            self._live_shown = ""
            self._set_status("stopped restoring the tiles on screen (the placeholder stays); "
                             "another plane or a pan goes on")

    # ------------------------------------------------------------------ render
    def render_to_zarr(self, *_args):
        """Write the (lazy) result to an OME-Zarr store, then show the layer from the store."""
        from .. import io

        if self._busy() or not self._result_ready(need_gt=False):
            return None
        path = Path(self.render_path.value).expanduser()
        if str(self.render_path.value) in ("", ".") or path.is_file():
            self._set_status("⚠ choose where to write the OME-Zarr store (a new *.zarr folder)")
            return None
        if not path.name.endswith(".zarr"):
            path = path.with_name(path.name + ".ome.zarr")
        r = self.result
        layer = r["layer"]
        scale, translate, units = layer_geometry(layer)

        def done(_value):
            opened = io.open_image(path)
            if layer.multiscale:
                layer.data = [opened.data, *list(layer.data)[1:]]
            else:
                layer.data = opened.data
            layer.metadata["decrappify"]["store"] = str(path)
            layer.metadata["decrappify"]["lazy"] = False
            self._set_status(f"rendered to {path}; the layer now reads from it")

        return self._start(io.write_ome_zarr, path, _exact(layer), axes=r["axes"], scale=scale,
                           translate=translate, units=units, name=layer.name,
                           overwrite=bool(self.render_overwrite.value),
                           metadata=_jsonable(layer.metadata.get("decrappify", {})),
                           description=f"Writing {path.name}", on_result=done,
                           cancelled_text="cancelled; the layer is unchanged, and rendering to the "
                                          "same store again resumes where it stopped")
