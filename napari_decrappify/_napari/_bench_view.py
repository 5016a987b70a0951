"""The napari side of ``decrappify bench napari``
(:mod:`napari_decrappify.bench.napari_stalls`): a window, a 10 ms QTimer recording the UI
thread's stalls, and the inspection replayed on a lazy result shown two ways (the plain dask
layer, the plugin's live layer). Looked up at run time by the benchmark, so that the benchmark
package stays free of napari imports like the rest of the headless side."""

from __future__ import annotations

import time

import numpy as np

STALL_LIMIT_MS = 100.0


def _wait(cond, timeout: float) -> bool:
    """Run the Qt event loop until ``cond()`` or ``timeout`` seconds (polled every 5 ms)."""
    from qtpy.QtCore import QEventLoop, QTimer

    if cond():
        return True
    loop, poll = QEventLoop(), QTimer()
    deadline = time.monotonic() + timeout
    state = {"ok": False}

    def check():
        if cond():
            state["ok"] = True
            loop.quit()
        elif time.monotonic() > deadline:
            loop.quit()

    poll.setInterval(5)
    poll.timeout.connect(check)
    poll.start()
    (getattr(loop, "exec", None) or loop.exec_)()
    poll.stop()
    return state["ok"]


class _Ticks:
    """A 10 ms QTimer's gaps in the UI thread, with the windows to leave out (layer creation)."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.spans: list[tuple[float, float]] = []
        self.excluded: list[tuple[float, float]] = []
        self._last = time.perf_counter()

    def _tick(self):
        now = time.perf_counter()
        self.spans.append((self._last, now))
        self._last = now

    def start(self):
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self):
        self._tick()
        self.timer.stop()

    def stats(self, exclude: bool) -> dict:
        def inside(a, b):
            return any(a < w1 and w0 < b for w0, w1 in self.excluded)

        gaps = np.array([(b - a) * 1000 for a, b in self.spans if not (exclude and inside(a, b))])
        return {"max_ms": float(gaps.max()), "p95_ms": float(np.percentile(gaps, 95)),
                "over_100ms": int((gaps > STALL_LIMIT_MS).sum()),
                "frozen_s": float(gaps[gaps > STALL_LIMIT_MS].sum() / 1000), "ticks": len(gaps)}


def _inspect(viewer, lr_layer, model, data, mode: str, steps: list[int], scroll: list[int],
             scroll_ms: int) -> dict:
    """Replay the inspection for one way of showing ``data``; returns its figures."""
    from . import _live_lazy, api

    ticks = _Ticks()
    ticks.start()
    t_add = time.perf_counter()
    from ._layers import restored_layer_kwargs

    original = viewer.add_image

    def timed_add(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            ticks.excluded.append((t0, time.perf_counter()))

    live = None
    if mode == "before":  # the plain dask layer: napari computes what it shows in its thread
        kwargs = restored_layer_kwargs(lr_layer, model, "ZYX", {}, name=f"restored ({mode})")
        # napari's fixed cost cannot be told from the tiles it computes in this call: nothing
        # is left out for "before"
        layer = viewer.add_image([data, lr_layer.data], multiscale=True, **kwargs)
    else:
        object.__setattr__(viewer, "add_image", timed_add)
        try:
            if mode == "after":
                layer = api.add_result_layer(viewer, lr_layer, model, data, "ZYX", {}, lazy=True,
                                             name=f"restored ({mode})")
                live = _live_lazy.live_of(layer)
            else:  # "floor": an in-memory array of the same size, napari's own display cost
                kwargs = restored_layer_kwargs(lr_layer, model, "ZYX", {}, name=f"restored ({mode})")
                layer = viewer.add_image([data, lr_layer.data], multiscale=True, **kwargs)
        finally:
            object.__setattr__(viewer, "add_image", original)

    def restored() -> bool:
        if live is None:
            return True  # napari returned from slicing: what it shows is computed
        done, total = live.visible_progress()
        return total > 0 and done == total

    timeout = 600.0
    _wait(restored, timeout)
    to_full = {"first display": time.perf_counter() - t_add}
    for z in steps:
        t0 = time.perf_counter()
        viewer.dims.set_current_step(0, z)
        _wait(restored, timeout)
        to_full[f"plane {z}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for z in scroll:  # a quick scroll: a step every scroll_ms, whatever is restored
        viewer.dims.set_current_step(0, z)
        _wait(lambda: False, scroll_ms / 1000)
    _wait(restored, timeout)
    to_full[f"scroll to plane {scroll[-1]}"] = time.perf_counter() - t0
    back = steps[0]
    t0 = time.perf_counter()
    viewer.dims.set_current_step(0, back)
    _wait(restored, timeout)
    to_full[f"back to plane {back}"] = time.perf_counter() - t0
    _wait(lambda: False, 0.3)  # the last refresh
    ticks.stop()
    viewer.layers.remove(layer)
    return {"mode": mode, "stalls": ticks.stats(exclude=False),
            "stalls_without_layer_creation": ticks.stats(exclude=True),
            "seconds_to_full_plane": {k: round(v, 3) for k, v in to_full.items()},
            "tiles_computed": live.computed if live is not None else None}


def measure(model, lr: np.ndarray, modes, steps: list[int], scroll: list[int],
            scroll_ms: int) -> list[dict]:
    """Show ``lr`` (ZYX, in [0, 1]) in a 1600 x 1000 napari window and replay the inspection of
    its lazy restoration by ``model`` once per mode (``"floor"``: an in-memory array of the
    result's size, napari's own cost; ``"after"``: the plugin's live layer; ``"before"``: the
    plain dask layer), from the middle plane; returns one :func:`_inspect` record per mode."""
    import napari

    from .. import tiling

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    try:
        s = 4.0 * model.scale  # CREMI's HR is 4 nm
        lr_layer = viewer.add_image(lr, name="LR", scale=(40.0, s, s), units=("nm",) * 3,
                                    contrast_limits=(0.0, 1.0))
        _wait(lambda: False, 1.0)  # the window settles
        rows = []
        for mode in modes:
            viewer.dims.set_current_step(0, lr.shape[0] // 2)
            if mode == "floor":  # what napari's display of an in-memory result costs
                from .. import metrics

                data = metrics.bicubic_upsample(lr, model.scale)
            else:  # built outside the measurement, as the dock's worker does
                data = tiling.restore_lazy(model, lr, axes="ZYX")
            rows.append(_inspect(viewer, lr_layer, model, data, mode, steps, scroll, scroll_ms))
        return rows
    finally:
        viewer.close()
