"""Lazy inspection never blocks napari: the UI thread's longest stall (a 10 ms QTimer's longest
gap) stays under 100 ms while a lazy 25-plane result is shown, stepped through, panned and
zoomed, and while the Restore dock scores it and builds its error map; what is shown once the
background is done is exactly the engine's result.

The viewers are hidden, as in the other docks' stall tests: napari's slicing, our reads and the
layer refreshes run in the UI thread as on screen, but not the painting (software OpenGL under
Xvfb, which on a busy 2-core machine alone costs 50-200 ms a frame, whatever the layers show;
``decrappify bench napari`` measures a shown 1600 x 1000 window, beside an in-memory floor).
napari's own fixed cost of creating a layer (~0.2 s of vispy set-up, the same for any data) is
left out too (with the docks' reactions to a new layer); the reads of the lazy layer in the UI
thread, including the first display's, are measured on their own and stay a few
milliseconds."""

import time

import numpy as np
import pytest
from _live import Stalls, settle
from _tiny import lr_hr

from napari_decrappify import tiling
from napari_decrappify.config import TileConfig

pytestmark = pytest.mark.gui

STALL_MS = 100
TILE_S = 0.15  # each tile's forward is slowed to this: a plane (4 tiles) takes ~0.6 s, like a
# real model's tile on CPU (seconds) it would freeze napari for that long if run in its thread


@pytest.fixture
def ui_reads(monkeypatch):
    """Milliseconds of every read of a live layer in the UI thread."""
    from napari_decrappify._napari import _live_lazy

    times, original = [], _live_lazy.LiveArray.read

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            if _live_lazy.in_ui_thread():
                times.append((time.perf_counter() - t0) * 1000)

    monkeypatch.setattr(_live_lazy.LiveArray, "read", timed)
    return times


@pytest.fixture
def slow_forward(monkeypatch):
    original = tiling.DeviceWorker._forward

    def slow(self, x):
        time.sleep(TILE_S)
        return original(self, x)

    monkeypatch.setattr(tiling.DeviceWorker, "_forward", slow)


def _shown(widget) -> bool:
    return not widget.native.isHidden()  # (the dock itself is not on screen in these tests)


def _warm_up(viewer, qtbot, model) -> None:
    """A first lazy layer in this process, shown and removed: one-time set-up (the background
    thread, the device worker, first uses of Qt widgets) is not what is measured. (In a fresh
    process it cost up to ~0.5 s once, on a loaded 2-core machine.)"""
    from napari_decrappify._napari import api

    small = viewer.add_image(np.zeros((1, 32, 32), np.uint8), name="warm-up")
    layer = api.add_restored(viewer, small, model, tile=32, halo=8)
    settle(qtbot, layer)
    viewer.layers.remove(layer)
    viewer.layers.remove(small)


def _dock(viewer, lr, hr=None):
    from napari_decrappify._napari.restore import RestoreWidget

    layer = viewer.add_image(lr, name="lr", scale=(40.0, 8.0, 8.0), units=("nm",) * 3)
    if hr is not None:
        viewer.add_image(hr, name="hr", scale=(40.0, 4.0, 4.0), translate=(0, -2.0, -2.0),
                         units=("nm",) * 3)
    dock = RestoreWidget(viewer)
    dock.image.value = layer
    if hr is not None:
        dock.ground_truth.value = viewer.layers["hr"]
    dock.halo.value, dock.tile.value = 8, 32
    dock.lazy.value = True
    return dock


def test_lazy_inspection_of_a_stack_never_stalls_and_shows_the_exact_result(
        make_napari_viewer, qtbot, tiny2x, slow_forward, ui_reads, monkeypatch):
    from napari_decrappify._napari import api
    from napari_decrappify._napari._live_lazy import live_of

    viewer = make_napari_viewer()
    _warm_up(viewer, qtbot, tiny2x)
    lr, _ = lr_hr(40, shape=(25, 128, 128))
    dock = _dock(viewer, lr)
    with Stalls() as stalls:
        # adding the layer: napari's set-up, and the docks' reactions to a new layer
        monkeypatch.setattr(api, "add_result_layer", stalls.exclude(api.add_result_layer))
        job = dock.run()  # measures the input in a worker, then adds the lazy layer
        qtbot.waitUntil(lambda: job.finished, timeout=30_000)
        layer = dock.result["layer"]
        live = live_of(layer)
        assert live is not None and "bicubic" in live.placeholder
        settle(qtbot, layer)  # first display: the plane on screen, restored in the background
        for z in (3, 4, 5, 17, 24, 0, 12):  # plane changes, faster than a plane restores
            viewer.dims.set_current_step(0, z)
            qtbot.wait(80)
        settle(qtbot, layer)
        draw = viewer.window._qt_viewer.canvas.on_draw  # what a shown canvas does each frame
        viewer.scene.camera.zoom *= 3  # zoom in on a corner, then pan
        viewer.scene.camera.center = (0, 100.0, 100.0)
        draw(None)
        qtbot.wait(100)
        viewer.scene.camera.center = (0, 400.0, 300.0)
        draw(None)
        settle(qtbot, layer)
    assert stalls.longest_ms < STALL_MS, (
        f"the UI thread stalled {stalls.longest_ms:.0f} ms: {stalls.report()}")
    assert len(stalls.gaps) > 50
    # the first display's read included; a tile computed here would take 150 ms
    assert len(ui_reads) > 10 and max(ui_reads) < 50

    def tiles_done(z):
        return sum(live.finished((z, i, j)) for i in range(2) for j in range(2))

    # the plane first shown (12) and the last one settled on are complete; planes stepped over
    # quickly were not finished (their tiles were dropped from the queue)
    assert tiles_done(12) == 4
    assert tiles_done(4) < 4 and live.computed < 25 * 4
    # what napari shows is the engine's result for that plane
    viewer.reset_view()
    settle(qtbot, layer)
    z = viewer.dims.current_step[0]
    want = tiling.restore(tiny2x, lr[z:z + 1], TileConfig(tile=32, halo=8), axes="ZYX")[0]
    np.testing.assert_allclose(np.asarray(layer.data[0][z]), want, atol=1e-5)
    # and going back to a plane seen before is instant: nothing to compute
    viewer.dims.set_current_step(0, 24)
    settle(qtbot, layer)
    viewer.dims.set_current_step(0, z)
    assert live.idle and live.visible_progress() == (4, 4)


def test_placeholder_first_then_tiles_and_cancel(make_napari_viewer, qtbot, tiny2x,
                                                 slow_forward):
    from napari_decrappify._napari._live_lazy import live_of

    viewer = make_napari_viewer()
    lr, _ = lr_hr(41, shape=(4, 128, 128))
    dock = _dock(viewer, lr)
    job = dock.run()
    qtbot.waitUntil(lambda: job.finished, timeout=30_000)
    layer = dock.result["layer"]
    live = live_of(layer)
    qtbot.waitUntil(lambda: not live.idle or live.visible_progress()[0] > 0, timeout=5_000)
    qtbot.waitUntil(lambda: "of 4 tiles restored" in dock.progress_text.value, timeout=5_000)
    assert _shown(dock.progress) and dock.cancel_button.enabled
    t0 = time.perf_counter()
    dock.cancel()
    assert time.perf_counter() - t0 < 1.0
    assert "stopped" in dock.status.value and live.idle
    qtbot.wait(int(3 * TILE_S * 1000))
    done, total = live.visible_progress()
    assert done < total  # the tiles not started were dropped
    # the rest of the plane still shows the placeholder (the bicubic upsampling)
    z = viewer.dims.current_step[0]
    shown = np.asarray(layer.data[0][z])
    assert shown.shape == (128, 128) and np.isfinite(shown).all() and shown.std() > 0
    viewer.dims.set_current_step(0, (z + 1) % 4)  # another plane: goes on
    settle(qtbot, layer)


def test_scoring_and_error_map_never_stall(make_napari_viewer, qtbot, tiny2x, slow_forward,
                                           ui_reads):
    viewer = make_napari_viewer()
    lr, hr = lr_hr(42, shape=(10, 128, 128))
    dock = _dock(viewer, lr, hr)
    job = dock.run()
    qtbot.waitUntil(lambda: job.finished, timeout=30_000)
    qtbot.waitUntil(lambda: dock.job.finished, timeout=30_000)  # the automatic plane score
    with Stalls() as stalls:
        object.__setattr__(viewer, "add_image", stalls.exclude(viewer.add_image))
        job = dock.score("stack")  # 25 planes: every tile, in a worker
        qtbot.waitUntil(lambda: len(job.events) > 3, timeout=30_000)
        assert _shown(dock.progress) and "Scoring (stack): scoring" in dock.progress_text.value
        qtbot.waitUntil(lambda: job.finished, timeout=60_000)
        assert job.status == "done", dock.status.value
        err = dock.add_error_map()
        settle(qtbot, err)
        for z in (2, 20):
            viewer.dims.set_current_step(0, z)
            qtbot.wait(50)
        settle(qtbot, err)
    assert stalls.longest_ms < STALL_MS, (
        f"the UI thread stalled {stalls.longest_ms:.0f} ms: {stalls.report()}")
    assert dock.metrics["stack"]["restored"]["n_planes"] == 10
    assert max(ui_reads) < 50
