"""The live array behind lazy layers, without a viewer: reads in the UI (main) thread never
compute and give the placeholder until tiles are done, then exactly the engine's numbers; reads
in other threads are exact; the tile cache is bounded; Cancel holds until another view."""

import threading
import time

import numpy as np
import pytest
from _tiny import lr_hr

from napari_decrappify import tiling
from napari_decrappify._napari._live_lazy import LiveArray, as_dask, upsampled_input
from napari_decrappify.config import TileConfig

pytestmark = pytest.mark.gui

CONFIG = TileConfig(tile=32, halo=8)


def _live(model, lr, **kwargs):
    source = tiling.restore_lazy(model, lr, CONFIG, axes="ZYX")
    preview, quick = upsampled_input(lr, model.scale, source.ndim)
    return LiveArray(source, preview, quick, describe="bicubic upsampling of the input", **kwargs)


def _until(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_ui_reads_show_the_placeholder_then_the_exact_tiles(tiny2x):
    lr, _ = lr_hr(50, shape=(3, 128, 128))
    live = _live(tiny2x, lr)
    want = tiling.restore(tiny2x, lr, CONFIG, axes="ZYX")
    first = np.asarray(live[1])  # nothing computed yet: the nearest-neighbour upsampling
    np.testing.assert_array_equal(first, np.repeat(np.repeat(lr[1], 2, 0), 2, 1))
    assert live.computed == 0 and not live.idle and live.visible_progress() == (0, 4)
    _until(lambda: live.idle)  # the background restored the plane asked for, nothing else
    assert live.computed == 4 and live.visible_progress() == (4, 4)
    np.testing.assert_allclose(np.asarray(live[1]), want[1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(live[1, 10:70, 5:90]), want[1, 10:70, 5:90], atol=1e-5)
    # another thread reads exactly (computing what is missing), through the same cache
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("all", np.asarray(live)))
    t.start()
    t.join()
    np.testing.assert_allclose(got["all"], want, atol=1e-5)
    assert live.computed == 12  # plane 1's tiles were not computed again
    np.testing.assert_allclose(np.asarray(as_dask(live)), want, atol=1e-5)  # exact in any thread


def test_bicubic_preview_comes_first_and_cancel_holds(tiny2x, monkeypatch):
    gate = threading.Event()  # no tile finishes until it is set
    original = tiling.DeviceWorker._forward

    def gated(self, x):
        gate.wait(30)
        return original(self, x)

    monkeypatch.setattr(tiling.DeviceWorker, "_forward", gated)
    lr, _ = lr_hr(51, shape=(3, 128, 128))
    live = _live(tiny2x, lr, cache_bytes=2 * 64 * 64 * 4)  # room for two tiles
    np.asarray(live[0])
    _until(lambda: len(live._previews) == 4)  # made while a tile is running: not behind it
    shown = np.asarray(live[0])  # the bicubic preview everywhere, no tile is done yet
    bicubic = upsampled_input(lr, 2, 3)[0](((0, 1), (0, 128), (0, 128)))[0]
    # (made per tile with a margin, clipped to its own input range: the whole plane's bicubic
    # but for a few pixels at the image's edges and by local extremes)
    diff = np.abs(shown - bicubic)
    assert diff.mean() < 0.05 and np.mean(diff > 0.5) < 0.005 and diff.max() < 5
    assert live.computed == 0
    live.cancel()  # the tile running finishes; the others are dropped, also after refreshes
    assert live.idle
    gate.set()
    _until(lambda: live.computed == 1)
    np.asarray(live[0])
    time.sleep(0.5)
    assert live.idle and live.computed == 1
    np.asarray(live[2])  # another view goes on
    assert not live.idle
    _until(lambda: live.idle)
    assert live.computed == 5
    assert len(live._cache) == 2  # bounded: the least recently used tiles were dropped
