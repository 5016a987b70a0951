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
        self.excluded: list[list[float]] = []  # [start, end] of napari's own fixed costs
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

    def report(self) -> str:
        """The gaps over 50 ms (start and length, ms from the first tick) and the windows left
        out: for a failure message."""
        t0 = self.spans[0][0] if self.spans else 0.0
        big = [(round((a - t0) * 1000), round(g)) for g, (a, _b) in zip(self.gaps_ms, self.spans,
                                                                        strict=True) if g > 50]
        out = [(round((a - t0) * 1000), round((b - a) * 1000)) for a, b in self.excluded]
        return f"gaps (start, ms): {big}; left out (start, ms): {out}"

    def exclude(self, fn):
        """``fn`` wrapped so that the gaps while it runs, and while the Qt events it posted are
        handled, do not count: napari's own fixed cost of creating a layer (vispy visuals, layer
        controls: ~0.2 s whatever the data), not what is measured."""
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            window = [t0, float("inf")]
            self.excluded.append(window)
            try:
                return fn(*args, **kwargs)
            finally:
                window[1] = time.perf_counter()

                def end():  # the Qt events the call posted (layouts, deferred deletes) are done
                    window[1] = time.perf_counter()

                QTimer.singleShot(0, end)

        return wrapper

    def __enter__(self):
        self._last = time.perf_counter()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self._tick()
        self.timer.stop()
        return False
