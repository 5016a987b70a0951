"""Helpers for lazy (live) layers in GUI tests: wait until the tiles on screen are shown, and
measure the UI thread's longest stall."""

import time

from _stall import StallMeter
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


class Stalls(StallMeter):
    """:class:`StallMeter` that can leave out napari's own fixed costs (:meth:`exclude`)."""

    def __init__(self, interval_ms: int = 10):
        super().__init__(interval_ms)
        self.excluded: list[list[float]] = []  # [start, end] of napari's own fixed costs

    @property
    def longest_ms(self) -> float:
        """The longest gap, but for those overlapping an :meth:`exclude`d call."""
        return self.longest_outside_ms(self.excluded)

    def report(self) -> str:
        """The gaps over 50 ms (start and length, ms from the first tick) and the windows left
        out: for a failure message."""
        t0 = self.gaps[0][0] if self.gaps else 0.0
        big = [(round((a - t0) * 1000), round((b - a) * 1000)) for a, b in self.gaps
               if (b - a) * 1000 > 50]
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

