"""Helpers for lazy (live) layers in GUI tests: wait until the tiles on screen are shown, and
measure the UI thread's longest stall."""

import time

from qtpy.QtCore import QTimer


def settle(qtbot, layer, timeout=30_000):
    """Wait until a lazy layer's tiles on screen are restored (in the background) and shown."""
    from napari_decrappify._napari._live_lazy import REFRESH_S, live_of

    live = live_of(layer)

    def done():
        finished, total = live.visible_progress()
        return total > 0 and finished == total and live.idle

    qtbot.waitUntil(done, timeout=timeout)
    qtbot.wait(int(REFRESH_S * 1000) + 100)  # the coalesced refresh


class Stalls:
    """``with Stalls() as s: ...``: a QTimer ticks every ``interval_ms`` in the UI thread; the
    gaps between ticks are how long napari could not repaint or react (``s.longest_ms``)."""

    def __init__(self, interval_ms: int = 10):
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.gaps_ms: list[float] = []
        self.spans: list[tuple[float, float]] = []  # (start, end) of every gap
        self.excluded: list[tuple[float, float]] = []  # windows of napari's own fixed costs
        self._last = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps_ms.append((now - self._last) * 1000)
        self.spans.append((self._last, now))
        self._last = now

    @property
    def longest_ms(self) -> float:
        """The longest gap, but for those overlapping an :meth:`exclude`d call."""
        def inside(a, b):
            return any(a < w1 and w0 < b for w0, w1 in self.excluded)

        return max([g for g, (a, b) in zip(self.gaps_ms, self.spans, strict=True)
                    if not inside(a, b)], default=0.0)

    def exclude(self, fn):
        """``fn`` wrapped so that the gaps while it runs do not count: napari's own fixed cost of
        creating a layer (vispy visuals, ~0.2 s whatever the data), not what is measured."""
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.excluded.append((t0, time.perf_counter()))

        return wrapper

    def __enter__(self):
        self._last = time.perf_counter()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self._tick()
        self.timer.stop()
        return False
