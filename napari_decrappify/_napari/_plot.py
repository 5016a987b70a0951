"""The Train dock's live plot, drawn off the UI thread.

Drawing a matplotlib figure (tick-label metrics, constrained layout) took 0.2-0.3 s of napari's
UI thread per redraw on 2 busy cores. :class:`LossPlot` keeps the numbers in the UI thread, and
at most a few times a second renders a snapshot of them with Agg in a worker thread (a figure of
its own, touched by that thread only) into an image shown by a ``QLabel``. The figure is laid out
at the label's size with a constrained layout, so tick labels are never clipped.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy

REDRAW_MS = 400  # the longest an event waits to be drawn


def _theme_colors(viewer) -> tuple[str, str]:
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        return theme.canvas.as_hex(), theme.text.as_hex()
    except Exception:  # noqa: BLE001 - a custom theme without these fields
        return "#262930", "#f0f1f2"


def render(data: dict, width: int, height: int, colors: tuple[str, str]) -> np.ndarray:
    """The plot of ``data`` (iterations, losses, epoch_iterations, valid_psnr) as an RGBA
    array of ``height`` x ``width`` pixels (any thread: the figure is private)."""
    fig = figure(data, width, height, colors)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def figure(data: dict, width: int, height: int, colors: tuple[str, str]):
    """The matplotlib ``Figure`` that :func:`render` draws (with an Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bg, fg = colors
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor=bg, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ax2 = ax.twinx()
    for a in (ax, ax2):
        a.set_facecolor(bg)
        a.tick_params(colors=fg, labelsize=8)
        for spine in a.spines.values():
            spine.set_color(fg)
    ax.set_xlabel("iteration", fontsize=8, color=fg)
    ax.set_ylabel("training loss", fontsize=8, color=fg)
    ax2.set_ylabel("validation PSNR (dB)", fontsize=8, color=fg)
    if data["iterations"]:
        ax.plot(data["iterations"], data["losses"], lw=1, color="#4c9be8")
    psnr = [(i, p) for i, p in zip(data["epoch_iterations"], data["valid_psnr"], strict=False)
            if math.isfinite(p)]
    if psnr:
        ax2.plot(*zip(*psnr, strict=True), "o-", ms=3, color="#f0a830")
    return fig


class LossPlot:
    """Training loss per iteration and validation PSNR per epoch (``canvas``: the widget)."""

    def __init__(self, viewer):
        self.colors = _theme_colors(viewer)
        self.canvas = QLabel()
        self.canvas.setMinimumHeight(220)
        self.canvas.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        self.canvas.setFixedHeight(240)
        self.canvas.setAlignment(Qt.AlignCenter)
        self._timer = QTimer(self.canvas)  # a child: it dies with the dock
        self._timer.setInterval(REDRAW_MS)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._redraw)
        self._worker = None
        self._dirty = False
        self.renders = 0
        self.clear()

    def clear(self) -> None:
        self.iterations: list[int] = []
        self.losses: list[float] = []
        self.epoch_iterations: list[int] = []
        self.valid_psnr: list[float] = []
        self.valid_loss: list[float] = []
        self._changed()

    def add(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "batch":
            self.iterations.append(int(event["iteration"]))
            self.losses.append(float(event["loss"]))
        elif kind == "epoch":
            it = self.iterations[-1] if self.iterations else len(self.epoch_iterations)
            self.epoch_iterations.append(it)
            self.valid_loss.append(float(event.get("valid_loss", math.nan)))
            self.valid_psnr.append(float(event.get("batch_psnr", math.nan)))
        else:
            return
        self._changed()

    def _changed(self) -> None:
        self._dirty = True
        if not self._timer.isActive():
            self._timer.start()

    def _redraw(self) -> None:
        if self._worker is not None or not self._dirty:  # one render at a time
            return
        from napari.qt.threading import thread_worker

        self._dirty = False
        data = {"iterations": list(self.iterations), "losses": list(self.losses),
                "epoch_iterations": list(self.epoch_iterations),
                "valid_psnr": list(self.valid_psnr)}
        width = max(self.canvas.width(), 200)
        height = max(self.canvas.height(), 150)
        worker = thread_worker(render, start_thread=False, ignore_errors=True)(
            data, width, height, self.colors)
        worker.returned.connect(self._show)
        worker.finished.connect(self._rendered)
        self._worker = worker
        worker.start()

    def _show(self, rgba: np.ndarray) -> None:
        h, w = rgba.shape[:2]
        image = QImage(rgba.data, w, h, 4 * w, QImage.Format_RGBA8888)
        try:
            self.canvas.setPixmap(QPixmap.fromImage(image.copy()))
        except RuntimeError:  # the dock was closed while the plot was rendered
            return
        self.renders += 1

    def _rendered(self) -> None:
        self._worker = None
        try:
            if self._dirty:  # events arrived while rendering
                self._timer.start()
        except RuntimeError:  # the dock (and its timer) is gone
            pass
