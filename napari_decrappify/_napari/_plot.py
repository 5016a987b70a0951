"""The Train dock's live plot: training loss per iteration, validation PSNR per epoch.

Drawn with ``QPainter`` in the widget's ``paintEvent`` (about a millisecond), not matplotlib:
a matplotlib redraw took 0.2-0.3 s of napari's UI thread on 2 busy cores, and rendered in a
worker thread it still starved the UI thread of the GIL as long. Margins are measured with the
font's metrics, so tick labels are never clipped, at any dock width.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFontMetrics, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR, PSNR_COLOR = "#4c9be8", "#f0a830"
MAX_POINTS = 1000  # a longer loss curve is drawn from every k-th point


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round tick values (1, 2, 5 x 10^k steps) from below ``lo`` to above
    ``hi``: the first and last are the axis' limits."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    count = math.ceil((hi - first) / step - 1e-9)
    return [round(first + i * step, 12) for i in range(count + 1)]


def tick_text(v: float) -> str:
    return f"{v:.3g}" if v != 0 else "0"


def _theme_colors(viewer) -> tuple[str, str]:
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        return theme.background.as_hex(), theme.text.as_hex()
    except Exception:  # noqa: BLE001 - a custom theme without these fields
        return "#262930", "#f0f1f2"


class _Canvas(QWidget):
    def __init__(self, plot: LossPlot):
        super().__init__()
        self.plot = plot
        self.setMinimumHeight(200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(220)

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        try:
            self.plot.paint(p, QRectF(self.rect()), QFontMetrics(self.font()))
        finally:
            p.end()


class LossPlot:
    """Training loss per iteration and validation PSNR per epoch (``canvas``: the widget)."""

    def __init__(self, viewer):
        self.bg, self.fg = (QColor(c) for c in _theme_colors(viewer))
        self.canvas = _Canvas(self)
        self.paints = 0
        self.clear()

    def clear(self) -> None:
        self.iterations: list[int] = []
        self.losses: list[float] = []
        self.epoch_iterations: list[int] = []
        self.valid_psnr: list[float] = []
        self.valid_loss: list[float] = []
        self.canvas.update()

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
        self.canvas.update()  # Qt coalesces repaints

    # ------------------------------------------------------------------ drawing
    def layout(self, rect: QRectF, fm: QFontMetrics):
        """The plot area inside ``rect`` and the ticks: margins fit the widest tick label."""
        loss = [v for v in self.losses if math.isfinite(v)]
        psnr = [v for v in self.valid_psnr if math.isfinite(v)]
        x_hi = max(self.iterations[-1] if self.iterations else 1, 1)
        xt = nice_ticks(0, x_hi)
        yt = nice_ticks(min(loss), max(loss)) if loss else nice_ticks(0, 1)
        pt = nice_ticks(min(psnr), max(psnr)) if psnr else []
        h = fm.height()
        left = max([fm.horizontalAdvance(tick_text(v)) for v in yt], default=0) + h + 8
        right = max([fm.horizontalAdvance(tick_text(v)) for v in pt], default=0) + h + 8
        area = QRectF(rect.left() + left, rect.top() + h // 2 + 4,
                      max(rect.width() - left - right, 10), max(rect.height() - 2.5 * h - 10, 10))
        return area, xt, yt, pt

    def paint(self, p: QPainter, rect: QRectF, fm: QFontMetrics) -> None:
        self.paints += 1
        p.fillRect(rect, self.bg)
        area, xt, yt, pt = self.layout(rect, fm)
        x0, x1 = xt[0], xt[-1]
        y0, y1 = yt[0], yt[-1]

        def sx(v):
            return area.left() + (v - x0) / ((x1 - x0) or 1) * area.width()

        def sy(v, lo, hi):
            return area.bottom() - (v - lo) / ((hi - lo) or 1) * area.height()

        p.setPen(QPen(self.fg, 1))
        p.drawRect(area)
        h = fm.height()
        for v in xt:
            x = sx(v)
            p.drawLine(QPointF(x, area.bottom()), QPointF(x, area.bottom() + 3))
            t = tick_text(v)
            p.drawText(QPointF(x - fm.horizontalAdvance(t) / 2, area.bottom() + h + 2), t)
        for v in yt:
            y = sy(v, y0, y1)
            t = tick_text(v)
            p.drawText(QPointF(area.left() - fm.horizontalAdvance(t) - 5, y + fm.ascent() / 2.5), t)
        for v in pt:
            y = sy(v, pt[0], pt[-1])
            p.drawText(QPointF(area.right() + 5, y + fm.ascent() / 2.5), tick_text(v))
        p.drawText(QRectF(rect.left(), area.bottom() + h + 4, rect.width(), h),
                   int(Qt.AlignmentFlag.AlignHCenter), "iteration")
        p.save()  # vertical axis names
        p.translate(rect.left() + h - 2, area.center().y())
        p.rotate(-90)
        p.setPen(QColor(LOSS_COLOR))
        p.drawText(QRectF(-area.height() / 2, -h, area.height(), h), int(Qt.AlignmentFlag.AlignCenter),
                   "training loss")
        p.restore()
        if pt:
            p.save()
            p.translate(rect.right() - 2, area.center().y())
            p.rotate(-90)
            p.setPen(QColor(PSNR_COLOR))
            p.drawText(QRectF(-area.height() / 2, -h, area.height(), h), int(Qt.AlignmentFlag.AlignCenter),
                       "valid PSNR (dB)")
            p.restore()
        p.setClipRect(area)
        pts = [(i, v) for i, v in zip(self.iterations, self.losses, strict=False)
               if math.isfinite(v)]
        step = max(1, len(pts) // MAX_POINTS)
        if pts:
            p.setPen(QPen(QColor(LOSS_COLOR), 1))
            p.drawPolyline(QPolygonF([QPointF(sx(i), sy(v, y0, y1)) for i, v in pts[::step]]))
        psnr = [(i, v) for i, v in zip(self.epoch_iterations, self.valid_psnr, strict=False)
                if math.isfinite(v)]
        if psnr and pt:
            p.setPen(QPen(QColor(PSNR_COLOR), 1.5))
            poly = [QPointF(sx(i), sy(v, pt[0], pt[-1])) for i, v in psnr]
            p.drawPolyline(QPolygonF(poly))
            for q in poly:
                p.drawEllipse(q, 2.5, 2.5)
