"""The UI thread's longest stall while a dock works: a QTimer ticks every 10 ms in the UI
thread; the longest gap between two ticks (or between the last tick and the end) is how long
napari could not repaint or react to a click."""

import time

from qtpy.QtCore import QTimer


class StallMeter:
    """Context manager: ``with StallMeter() as m: ...`` then ``m.longest_ms``.

    Ticks are recorded while the Qt event loop runs (``qtbot.waitUntil`` runs it); code in the
    ``with`` block that blocks the UI thread itself (a synchronous action) counts as a stall.
    """

    def __init__(self, interval_ms: int = 10):
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.ticks = 0
        self.gaps: list[tuple[float, float]] = []  # (start, end) of every tick interval
        self._last = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append((self._last, now))
        self._last = now
        self.ticks += 1

    @property
    def longest_ms(self) -> float:
        return max(((b - a) * 1000 for a, b in self.gaps), default=0.0)

    def longest_outside_ms(self, windows) -> float:
        """The longest stall that does not overlap any ``(start, end)`` window (perf_counter
        seconds), e.g. the moment napari creates a result layer (its own fixed cost)."""
        def inside(gap):
            return any(gap[0] < w1 and w0 < gap[1] for w0, w1 in windows)

        return max([(b - a) * 1000 for a, b in self.gaps if not inside((a, b))], default=0.0)


    def __enter__(self):
        self._last = time.perf_counter()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self._tick()
        self.timer.stop()
        return False


def timed(record: list, fn):
    """``fn`` wrapped to append its ``(start, end)`` perf_counter window to ``record``."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record.append((t0, time.perf_counter()))

    return wrapper
