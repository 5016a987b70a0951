"""Restore dock end to end with a tiny model: layers with the right shape, geometry and metadata,
cancel leaving nothing behind, the lazy layer computing only what is viewed, render to OME-Zarr,
metrics equal to metrics.py, error map, grid, and region inspection."""

import numpy as np
import pytest
from _live import settle
from _tiny import lr_hr

from napari_decrappify import metrics, tiling
from napari_decrappify._napari.restore import LIVE_POLL_MS
from napari_decrappify.config import TileConfig

pytestmark = pytest.mark.gui

LR_SCALE, LR_TRANSLATE = (40.0, 8.0, 8.0), (0.0, 100.0, 50.0)
HR_SCALE, HR_TRANSLATE = (40.0, 4.0, 4.0), (0.0, 98.0, 48.0)  # io.upscale_geometry of the LR


@pytest.fixture
def forward_calls(monkeypatch):
    """Tiles that went through the network (the engine's only call site is DeviceWorker._forward)."""
    calls = []
    original = tiling.DeviceWorker._forward

    def counting(self, x):
        calls.append(int(x.shape[0]))
        return original(self, x)

    monkeypatch.setattr(tiling.DeviceWorker, "_forward", counting)
    return calls


def _setup(viewer, seed, *, with_hr=True):
    from napari_decrappify._napari.restore import RestoreWidget

    lr, hr = lr_hr(seed)
    lr_layer = viewer.add_image(lr, name="lr", scale=LR_SCALE, translate=LR_TRANSLATE,
                                units=("nm", "nm", "nm"))
    hr_layer = (viewer.add_image(hr, name="hr", scale=HR_SCALE, translate=HR_TRANSLATE,
                                 units=("nm", "nm", "nm")) if with_hr else None)
    dock = RestoreWidget(viewer)
    dock.image.value = lr_layer
    dock.halo.value = 8
    dock.tile.value = 32
    return dock, lr_layer, hr_layer


def _wait(qtbot, job, timeout=60_000):
    assert job is not None
    qtbot.waitUntil(lambda: job.finished, timeout=timeout)


def _idle(qtbot, dock, timeout=60_000):
    """Wait for the dock's job and the jobs chained from it (a lazy restore's job adds the
    layer, then scores the current plane when there is a ground truth)."""
    qtbot.waitUntil(lambda: dock.job is not None and dock.job.finished, timeout=timeout)


def _lazy(qtbot, dock):
    """A lazy restore: the slot starts a job that measures the input in a worker, whose result
    adds the lazy layer."""
    job = dock.run()
    assert job is not None, dock.status.value
    _idle(qtbot, dock)
    assert job.status == "done", dock.status.value
    return dock.result["layer"]


def test_dock_lists_models_and_shows_mode(make_napari_viewer, tiny2x, model_dir):
    dock, lr_layer, _ = _setup(make_napari_viewer(), 1, with_hr=False)
    assert dock.model.value == str(model_dir / "tiny-2x")
    assert "2x super-resolution" in dock.mode.value and "tiny" in dock.mode.value
    assert dock.axes.value == "ZYX"  # guessed from the 3-D layer


def test_restore_in_memory_layer_geometry_and_metadata(make_napari_viewer, qtbot, tiny2x):
    viewer = make_napari_viewer()
    dock, lr_layer, hr_layer = _setup(viewer, 2)
    dock.lazy.value = False
    job = dock.run()
    _wait(qtbot, job)
    assert job.status == "done", dock.status.value

    name = "lr restored (tiny-2x)"
    assert name in viewer.layers
    out = viewer.layers[name]
    assert out.data.shape == (3, 128, 128)
    np.testing.assert_allclose(out.scale, HR_SCALE)
    np.testing.assert_allclose(out.translate, HR_TRANSLATE)
    assert [str(u) for u in out.units] == ["nanometer"] * 3
    # restored pixel (0, 0, 0) sits where the HR pixel (0, 0, 0) is: they overlay exactly
    np.testing.assert_allclose(out.data_to_world((0, 0, 0)), hr_layer.data_to_world((0, 0, 0)))
    meta = out.metadata["decrappify"]
    assert meta["model"] == "tiny-2x" and meta["weights_sha256"] == tiny2x.weights_hash
    assert meta["source"] == "lr" and meta["axes"] == "ZYX"
    assert meta["parameters"]["tile_config"]["tile"] == 32
    # the numbers are the engine's
    expected = tiling.restore(tiny2x, lr_layer.data, TileConfig(tile=32, halo=8), axes="ZYX")
    np.testing.assert_allclose(out.data, expected, atol=1e-5)
    assert viewer.layers.index(out) == viewer.layers.index(lr_layer) + 1


def test_cancel_stops_worker_and_adds_no_layer(make_napari_viewer, qtbot, tiny2x, monkeypatch):
    import time

    original = tiling.DeviceWorker._forward

    def slow(self, x):
        time.sleep(0.3)
        return original(self, x)

    monkeypatch.setattr(tiling.DeviceWorker, "_forward", slow)
    viewer = make_napari_viewer()
    dock, *_ = _setup(viewer, 3, with_hr=False)
    dock.lazy.value = False
    n_layers = len(viewer.layers)
    job = dock.run()  # 3 planes x 4 tiles of 32 px: ~4 s uncancelled
    qtbot.waitUntil(lambda: len(job.events) >= 1, timeout=30_000)
    assert dock.cancel_button.enabled
    dock.cancel()
    _wait(qtbot, job)
    assert job.status == "cancelled"
    assert len(viewer.layers) == n_layers
    assert "cancelled" in dock.status.value
    assert job.events[-1]["done"] < job.events[-1]["total"]
    assert dock.restore_button.enabled and not dock.cancel_button.enabled


def test_lazy_layer_computes_only_viewed_planes(make_napari_viewer, qtbot, tiny2x, forward_calls):
    viewer = make_napari_viewer()
    dock, lr_layer, _ = _setup(viewer, 4, with_hr=False)
    dock.lazy.value = True
    layer = _lazy(qtbot, dock)
    settle(qtbot, layer)
    assert layer.name == "lr restored (tiny-2x)"
    assert layer.multiscale and layer.data[0].shape == (3, 128, 128)
    assert layer.data[1] is lr_layer.data  # zoomed out, napari may show the input itself
    np.testing.assert_allclose(layer.scale, HR_SCALE)
    np.testing.assert_allclose(layer.translate, HR_TRANSLATE)
    per_plane = 4  # (64 / 32) ** 2 tiles of the LR plane
    assert sum(forward_calls) == per_plane  # only the plane on screen
    viewer.dims.set_current_step(0, 0)
    settle(qtbot, layer)
    assert sum(forward_calls) == 2 * per_plane
    viewer.dims.set_current_step(0, 1)  # seen before: cached, no new network call
    settle(qtbot, layer)
    assert sum(forward_calls) == 2 * per_plane
    # what napari shows is the engine's result for that plane
    expected = tiling.restore(tiny2x, lr_layer.data[:1], TileConfig(tile=32, halo=8), axes="ZYX")
    np.testing.assert_allclose(np.asarray(layer.data[0][0]), expected[0], atol=1e-5)


def test_lazy_multiscale_shows_input_zoomed_out_and_computes_tiles_in_view(
        make_napari_viewer, qtbot, tiny2x, forward_calls):
    from napari_decrappify._napari.restore import RestoreWidget

    viewer = make_napari_viewer()
    lr = (np.random.default_rng(11).random((2, 640, 640)) * 255).astype(np.uint8)
    viewer.add_image(lr, name="big")
    dock = RestoreWidget(viewer)
    dock.image.value = viewer.layers["big"]
    dock.lazy.value, dock.tile.value, dock.halo.value = True, 64, 8
    layer = _lazy(qtbot, dock)
    qtbot.wait(100)
    # the 1280 x 1280 result does not fit the canvas: napari shows the input level, no network call
    assert layer.data_level == 1 and sum(forward_calls) == 0
    viewer.scene.camera.zoom *= 8
    viewer.scene.camera.center = (0, 100, 100)
    viewer.window._qt_viewer.canvas.on_draw(None)  # what a shown canvas does on the next frame
    settle(qtbot, layer)
    assert layer.data_level == 0
    per_plane = (640 // 64) ** 2
    assert 0 < sum(forward_calls) <= 16 < per_plane  # only the tiles in view (3 x 3 here)


def test_render_all_to_ome_zarr_swaps_layer_data(make_napari_viewer, qtbot, tiny2x, tmp_path):
    from napari_decrappify import io

    viewer = make_napari_viewer()
    dock, lr_layer, _ = _setup(viewer, 5, with_hr=False)
    dock.lazy.value = True
    layer = _lazy(qtbot, dock)
    dock.render_path.value = tmp_path / "restored.ome.zarr"
    job = dock.render_to_zarr()
    _wait(qtbot, job)
    assert job.status == "done", dock.status.value
    assert job.events and job.events[-1]["event"] == "chunks"
    store = io.open_image(tmp_path / "restored.ome.zarr")
    assert store.axes == "ZYX"
    np.testing.assert_allclose(store.scale, HR_SCALE)
    np.testing.assert_allclose(store.translate, HR_TRANSLATE)
    assert layer.metadata["decrappify"]["store"] == str(tmp_path / "restored.ome.zarr")
    # the layer now reads from the store (same values as the engine)
    assert layer.data[0].name == store.data.name
    expected = tiling.restore(tiny2x, lr_layer.data, TileConfig(tile=32, halo=8), axes="ZYX")
    np.testing.assert_allclose(np.asarray(layer.data[0]), expected, atol=1e-5)


def test_render_cancel_keeps_layer_and_resumes(make_napari_viewer, qtbot, tiny2x, tmp_path,
                                               monkeypatch):
    import time

    original = tiling.DeviceWorker._forward

    def slow(self, x):
        time.sleep(0.2)
        return original(self, x)

    monkeypatch.setattr(tiling.DeviceWorker, "_forward", slow)
    viewer = make_napari_viewer()
    dock, *_ = _setup(viewer, 12, with_hr=False)
    dock.lazy.value = True
    layer = _lazy(qtbot, dock)
    lazy_data = layer.data[0]
    dock.render_path.value = tmp_path / "partial.ome.zarr"
    job = dock.render_to_zarr()
    qtbot.waitUntil(lambda: len(job.events) >= 1, timeout=30_000)
    dock.cancel()
    _wait(qtbot, job)
    assert job.status == "cancelled"
    assert layer.data[0] is lazy_data and "store" not in layer.metadata["decrappify"]
    assert "resumes" in dock.status.value
    job = dock.render_to_zarr()  # same store, no overwrite: resumed, not refused
    _wait(qtbot, job)
    assert job.status == "done", dock.status.value
    assert layer.metadata["decrappify"]["store"] == str(tmp_path / "partial.ome.zarr")


def test_metrics_shown_equal_metrics_py(make_napari_viewer, qtbot, tiny2x):
    viewer = make_napari_viewer()
    dock, lr_layer, hr_layer = _setup(viewer, 6)
    dock.ground_truth.value = hr_layer
    dock.lazy.value = False
    job = dock.run()
    _wait(qtbot, job)
    restored = viewer.layers["lr restored (tiny-2x)"].data
    lr, hr = lr_layer.data, hr_layer.data
    bic = np.stack([metrics.bicubic_upsample(p, 2) for p in lr])

    want_r = metrics.evaluate(restored, hr, normalised=False)
    want_b = metrics.evaluate(bic, hr, normalised=False)
    stack = dock.metrics["stack"]
    assert stack["restored"]["psnr"] == pytest.approx(want_r["psnr"], abs=1e-9)
    assert stack["restored"]["ssim"] == pytest.approx(want_r["ssim"], abs=1e-9)
    assert stack["bicubic"]["psnr"] == pytest.approx(want_b["psnr"], abs=1e-9)
    assert stack["bicubic"]["ssim"] == pytest.approx(want_b["ssim"], abs=1e-9)
    assert f"{want_r['psnr']:.2f} dB" in dock.metrics_label.value
    assert viewer.layers["lr restored (tiny-2x)"].metadata["decrappify"]["metrics"]["restored"][
        "psnr"] == pytest.approx(want_r["psnr"])

    # current plane: follows the viewer, same numbers as metrics.py on that plane
    viewer.dims.set_current_step(0, 2)
    plane = dock.metrics["plane"]
    assert plane["index"] == (2,)
    one = metrics.evaluate(restored[2], hr[2], normalised=False)
    assert plane["restored"]["psnr"] == pytest.approx(one["psnr"], abs=1e-9)
    assert plane["restored"]["ssim"] == pytest.approx(one["ssim"], abs=1e-9)
    assert plane["bicubic"]["psnr"] == pytest.approx(
        metrics.evaluate(bic[2], hr[2], normalised=False)["psnr"], abs=1e-9)

    # lazy mode scores the plane on screen on request, with the same numbers
    dock.lazy.value = True
    dock.run()
    qtbot.waitUntil(lambda: dock.job is not None and dock.job.finished, timeout=30_000)
    assert dock.metrics["plane"]["index"] == (2,)
    assert dock.metrics["plane"]["restored"]["psnr"] == pytest.approx(one["psnr"], abs=1e-5)


def test_error_map_and_grid_toggle(make_napari_viewer, qtbot, tiny2x):
    viewer = make_napari_viewer()
    dock, lr_layer, hr_layer = _setup(viewer, 7)
    dock.ground_truth.value = hr_layer
    dock.lazy.value = False
    _wait(qtbot, dock.run())
    restored = viewer.layers["lr restored (tiny-2x)"]
    err = dock.add_error_map()
    from napari_decrappify._napari._live_lazy import LiveArray

    # computed plane by plane as viewed, in the background, never in the slot or the UI thread
    assert isinstance(err.data, LiveArray)
    want = np.abs(np.clip(restored.data / 255.0, 0, 1) - hr_layer.data / 255.0)
    np.testing.assert_allclose(np.asarray(err.data.source), want, atol=1e-6)
    settle(qtbot, err)
    z = viewer.dims.current_step[0]
    np.testing.assert_allclose(np.asarray(err.data[z]), want[z], atol=1e-6)  # what is shown
    np.testing.assert_allclose(err.scale, HR_SCALE)
    np.testing.assert_allclose(err.translate, HR_TRANSLATE)
    # it reads on its own: its colormap, opaque over the grey layers (not added to them), and
    # contrast limits from its values once the plane on screen is done: (0, 99.5th percentile)
    assert err.colormap.name == "inferno"
    assert err.blending == "translucent" and err.opacity == 1.0
    qtbot.waitUntil(lambda: err.name not in dock._contrast_pending, timeout=5_000)
    top = np.percentile(want[z], 99.5)
    assert 0 < top < 0.25  # the old fixed limits would not have fitted this map
    np.testing.assert_allclose(err.contrast_limits, (0.0, top), rtol=1e-5)

    order_before = [layer.name for layer in viewer.layers]
    dock.toggle_grid()
    assert viewer.canvas.grid.enabled
    assert [layer.name for layer in viewer.layers if layer.visible] == [
        "lr", "lr restored (tiny-2x)", "hr"]
    assert [viewer.canvas.grid.position(i, viewer.layers) for i, layer in enumerate(viewer.layers)
            if layer.visible] == [(0, 0), (0, 1), (0, 2)]
    dock.toggle_grid()
    assert not viewer.canvas.grid.enabled
    assert [layer.name for layer in viewer.layers] == order_before
    assert all(layer.visible for layer in viewer.layers)


def test_inspect_region_from_shapes(make_napari_viewer, qtbot, model_dir, tmp_path):
    from napari_decrappify._napari.restore import RestoreWidget
    from napari_decrappify.config import ArchConfig
    from napari_decrappify.models import build_model, measure_receptive_field, save_model

    # a model with its *measured* receptive field, so that a haloed crop must equal the full
    # result (a 192 px probe: plenty for the tiny encoder, and 4x cheaper than the default);
    # saved outside the listed folders: picked with "Model folder..."
    model = build_model(ArchConfig(encoder="tiny", scale=2), name="tiny-2x-rf", seed=1, measure_rf=False)
    model.config.receptive_field = measure_receptive_field(model.net, model.config.arch, size=192)
    folder = save_model(model, tmp_path / "elsewhere" / "tiny-2x-rf")
    from napari_decrappify._napari import api

    api.resolve_model(folder)  # loaded, as after a first use (loading first: tested below)
    halo = model.receptive_field + 3
    viewer = make_napari_viewer()
    lr, hr = lr_hr(8, shape=(3, 256, 256))
    units = ("nm", "nm", "nm")
    lr_layer = viewer.add_image(lr, name="lr", scale=LR_SCALE, translate=LR_TRANSLATE, units=units)
    hr_layer = viewer.add_image(hr, name="hr", scale=HR_SCALE, translate=HR_TRANSLATE, units=units)
    dock = RestoreWidget(viewer)
    assert dock.model.value != str(folder)  # only bundled models are listed before adding it
    dock.add_model_folder(folder)
    assert dock.model.value == str(folder)
    dock.image.value, dock.ground_truth.value = lr_layer, hr_layer
    dock.halo.value = halo
    viewer.dims.set_current_step(0, 1)
    # a rectangle over LR pixels y 48..79, x 50..81, drawn in world (nm) coordinates
    y0, y1, x0, x1 = 48, 80, 50, 82
    ty, tx = LR_TRANSLATE[1:]
    rect = np.array([[ty + (y0 - 0.5) * 8, tx + (x0 - 0.5) * 8],
                     [ty + (y1 - 0.5) * 8, tx + (x1 - 0.5) * 8]])
    shapes = viewer.add_shapes([rect], shape_type="rectangle", name="roi", units=units[1:])
    dock.reset_choices()
    dock.region.value = shapes
    job = dock.inspect()
    _wait(qtbot, job)
    assert job.status == "done", dock.status.value
    ins = dock.inspection
    assert ins["plane"] == (1,)
    panels = {k: viewer.layers[f"inspect: {k}"] for k in ("LR", "bicubic", "restored", "HR")}
    np.testing.assert_array_equal(panels["LR"].data, lr[1, y0:y1, x0:x1])
    np.testing.assert_array_equal(panels["HR"].data, hr[1, 2 * y0:2 * y1, 2 * x0:2 * x1])
    assert panels["restored"].data.shape == panels["bicubic"].data.shape == (64, 64)
    # with a halo >= the receptive field the crop equals the same region of a full restore
    full = tiling.restore(model, lr[1], TileConfig(tile=64, halo=halo), axes="YX")
    np.testing.assert_allclose(panels["restored"].data / 255, full[2 * y0:2 * y1, 2 * x0:2 * x1] / 255,
                               atol=2e-4)
    # scores are metrics.py's on the crops
    want = metrics.evaluate(panels["restored"].data, panels["HR"].data, normalised=False)
    assert ins["scores"]["restored"]["psnr"] == pytest.approx(want["psnr"], abs=1e-9)
    assert ins["scores"]["restored"]["ssim"] == pytest.approx(want["ssim"], abs=1e-9)
    want_b = metrics.evaluate(panels["bicubic"].data, panels["HR"].data, normalised=False)
    assert ins["scores"]["bicubic"]["psnr"] == pytest.approx(want_b["psnr"], abs=1e-9)
    assert f"{want['psnr']:.2f} dB" in dock.inspect_label.value
    # side by side, right of the image, each HR-grid panel overlaying the LR panel's footprint
    lr_right = lr_layer.data_to_world((0, 0, lr.shape[-1] - 0.5))[-1]
    lefts = [p.data_to_world((-0.5, -0.5))[-1] for p in panels.values()]
    assert lefts[0] > lr_right and lefts == sorted(lefts)
    width = (x1 - x0) * 8
    assert all(b - a > width for a, b in zip(lefts, lefts[1:], strict=False))
    np.testing.assert_allclose(panels["LR"].data_to_world((-0.5, -0.5))[-2],
                               panels["restored"].data_to_world((-0.5, -0.5))[-2])
    np.testing.assert_allclose(panels["LR"].data_to_world((-0.5, -0.5))[-2], ty + (y0 - 0.5) * 8)


def test_inspect_current_view(make_napari_viewer, qtbot, tiny2x):
    viewer = make_napari_viewer()
    dock, lr_layer, _ = _setup(viewer, 9, with_hr=False)
    viewer.reset_view()
    dock.inspect_quick.value = True
    job = dock.inspect()  # the view shows the whole image: the crop is the whole plane
    _wait(qtbot, job)
    assert job.status == "done", dock.status.value
    assert viewer.layers["inspect: restored"].data.shape == (128, 128)
    assert "inspect: HR" not in viewer.layers
    assert "no ground truth" in dock.inspect_label.value
    assert "quick" in dock.inspect_label.value
    viewer.dims.ndisplay = 3
    assert dock.inspect() is None and "2-D view" in dock.status.value


def test_bad_input_is_reported(make_napari_viewer, tiny2x):
    viewer = make_napari_viewer()
    dock, lr_layer, hr_layer = _setup(viewer, 10)
    wrong = viewer.add_image(np.zeros((3, 100, 100), np.uint8), name="wrong")
    dock.ground_truth.value = wrong
    assert dock.run() is None
    assert "shape (3, 100, 100)" in dock.status.value and "(3, 128, 128)" in dock.status.value
    dock.ground_truth.value = None
    dock.axes.value = "ZXY"
    assert dock.run() is None
    assert "must end with YX" in dock.status.value
    dock.axes.value = "ZYX"
    dock.tile.value = 48
    assert dock.run() is None
    assert "multiple of 32" in dock.status.value
    n = len(viewer.layers)
    assert dock.score("plane") is None and "restore a layer first" in dock.status.value
    assert len(viewer.layers) == n


# --------------------------------------------------------------------------- review fixes


def _gated(arr, gate, log, chunks):
    """A dask array whose chunks wait for ``gate`` (up to 5 s) when read, and log whether the
    gate was open: a chunk read by a button slot (the UI thread, while the test keeps the gate
    closed) logs False."""
    import dask.array as da

    def read(block):
        log.append(gate.wait(timeout=5))
        return block

    return da.from_array(arr, chunks=chunks).map_blocks(read, dtype=arr.dtype)


def test_run_reads_ground_truth_in_the_worker(make_napari_viewer, qtbot, tiny2x):
    import threading

    viewer = make_napari_viewer()
    gate, log = threading.Event(), []
    gate.set()  # napari reads the plane on screen when the layer is added
    lr, hr = lr_hr(13)
    lr_layer = viewer.add_image(lr, name="lr")
    hr_layer = viewer.add_image(_gated(hr, gate, log, (1, 128, 128)), name="hr")
    from napari_decrappify._napari.restore import RestoreWidget

    dock = RestoreWidget(viewer)
    dock.image.value, dock.ground_truth.value = lr_layer, hr_layer
    dock.halo.value, dock.tile.value = 8, 32
    dock.lazy.value = False
    log.clear()
    gate.clear()
    job = dock.run()  # the slot returns before any ground-truth chunk is read
    gate.set()
    _wait(qtbot, job)
    assert job.status == "done", dock.status.value
    assert log and all(log), f"{log.count(False)} ground-truth chunk(s) read by the UI thread"
    want = metrics.evaluate(viewer.layers["lr restored (tiny-2x)"].data, hr, normalised=False)
    assert dock.metrics["stack"]["restored"]["psnr"] == pytest.approx(want["psnr"], abs=1e-9)

    # the error map needs the ground truth's intensity range: read in a worker too, when no
    # scoring has read it yet (here: as if the automatic plane scoring had been cancelled)
    from napari_decrappify._napari import _compare

    dock.lazy.value = True
    _lazy(qtbot, dock)  # and the automatic plane scoring
    dock.result["gt"] = _compare.ground_truth(hr_layer.data, lr, (3, 128, 128), 2)
    assert not dock.result["gt"].prepared
    log.clear()
    gate.clear()
    job = dock.add_error_map()
    gate.set()
    _wait(qtbot, job)
    assert job.status == "done", dock.status.value
    assert log and all(log)
    assert "lr restored (tiny-2x) error" in viewer.layers


def test_inspect_reads_crops_in_the_worker(make_napari_viewer, qtbot, tiny2x):
    import threading

    viewer = make_napari_viewer()
    gate, log = threading.Event(), []
    gate.set()
    lr, hr = lr_hr(14)
    lr_layer = viewer.add_image(_gated(lr, gate, log, (1, 64, 64)), name="lr")
    hr_layer = viewer.add_image(_gated(hr, gate, log, (1, 128, 128)), name="hr")
    from napari_decrappify._napari.restore import RestoreWidget

    dock = RestoreWidget(viewer)
    dock.image.value, dock.ground_truth.value = lr_layer, hr_layer
    dock.halo.value, dock.tile.value = 8, 32
    viewer.reset_view()
    log.clear()
    gate.clear()
    job = dock.inspect()
    gate.set()
    _wait(qtbot, job)
    assert job.status == "done", dock.status.value
    assert log and all(log), f"{log.count(False)} chunk(s) read by the UI thread"
    plane = dock.inspection["plane"]
    np.testing.assert_array_equal(viewer.layers["inspect: LR"].data, lr[plane])
    np.testing.assert_array_equal(viewer.layers["inspect: HR"].data, hr[plane])
    assert dock.inspection["scores"]["restored"] is not None


def test_score_whole_lazy_stack_reports_planes_and_cancels(make_napari_viewer, qtbot, tiny2x,
                                                           monkeypatch):
    import time

    from napari_decrappify._napari.restore import RestoreWidget

    original = tiling.DeviceWorker._forward
    calls, slow = [], [False]

    def forward(self, x):
        calls.append(x.shape[0])
        if slow[0]:
            time.sleep(0.3)
        return original(self, x)

    monkeypatch.setattr(tiling.DeviceWorker, "_forward", forward)
    viewer = make_napari_viewer()
    lr, hr = lr_hr(15, shape=(6, 128, 128))
    viewer.add_image(lr, name="lr")
    viewer.add_image(hr, name="hr")
    dock = RestoreWidget(viewer)
    dock.image.value, dock.ground_truth.value = viewer.layers["lr"], viewer.layers["hr"]
    dock.lazy.value = True
    dock.halo.value, dock.tile.value = 8, 32
    _lazy(qtbot, dock)  # a lazy layer and the automatic "score current plane" job
    slow[0] = True
    n0 = len(calls)
    job = dock.score("stack")  # 6 planes x 4 tiles, about 7 s uncancelled
    qtbot.waitUntil(lambda: len(calls) > n0, timeout=30_000)
    dock.cancel()
    n_cancel = len(calls)
    _wait(qtbot, job)
    assert job.status == "cancelled"
    assert len(calls) - n_cancel <= 4  # at most the tiles of the plane being computed
    assert sum(calls[n0:]) < 6 * 4
    assert "stack" not in dock.metrics
    # uncancelled: a progress event per plane, and metrics.py's numbers
    slow[0] = False
    job = dock.score("stack")
    _wait(qtbot, job)
    assert job.status == "done", dock.status.value
    done = [e["done"] for e in job.events if e.get("event") == "scoring"]
    assert done[-1] == 6 and {e["total"] for e in job.events if e.get("event") == "scoring"} == {6}
    restored = tiling.restore(tiny2x, lr, TileConfig(tile=32, halo=8), axes="ZYX")
    want = metrics.evaluate(restored, hr, normalised=False)
    stack = dock.metrics["stack"]["restored"]
    assert stack["psnr"] == pytest.approx(want["psnr"], abs=1e-6)
    assert stack["ssim"] == pytest.approx(want["ssim"], abs=1e-6)
    assert stack["n_planes"] == want["n_planes"] == 6


def test_inspect_panels_follow_the_source_display(make_napari_viewer, qtbot, tiny2x):
    from napari_decrappify._napari.restore import RestoreWidget

    viewer = make_napari_viewer()
    a = viewer.add_image((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8),
                         name="a", scale=(8.0, 8.0), units=("nm", "nm"), colormap="gray")
    b = viewer.add_image(np.random.default_rng(1).random((64, 64)).astype(np.float32),
                         name="b", scale=(0.008, 0.008), units=("um", "um"), colormap="magma",
                         translate=(0, 5.0))
    dock = RestoreWidget(viewer)
    dock.halo.value, dock.tile.value = 8, 32
    for src in (a, b):
        dock.image.value = src
        viewer.reset_view()
        job = dock.inspect()
        _wait(qtbot, job)
        assert job.status == "done", dock.status.value
    for key in ("LR", "bicubic", "restored"):
        panel = viewer.layers[f"inspect: {key}"]
        np.testing.assert_allclose(panel.contrast_limits, b.contrast_limits)
        assert panel.colormap.name == "magma"
        assert [str(u) for u in panel.units] == ["micrometer", "micrometer"]
    np.testing.assert_allclose(viewer.layers["inspect: LR"].scale, b.scale)


def test_model_trained_elsewhere_appears_and_is_selected(make_napari_viewer, qtbot, model_dir,
                                                         tmp_path):
    from napari_decrappify._napari._workers import model_events
    from napari_decrappify._napari.restore import RestoreWidget
    from napari_decrappify._napari.train import TrainWidget
    from napari_decrappify.models import build_model, save_model
    from napari_decrappify.samples import synthetic_em
    from napari_decrappify.segment import segmentation_arch

    viewer = make_napari_viewer()
    hr = viewer.add_image(synthetic_em((4, 128, 128), seed=0), name="hr")
    restore = RestoreWidget(viewer)
    train = TrainWidget(viewer)
    elsewhere = tmp_path / "project-models"  # not a folder the docks list models from
    elsewhere.mkdir()
    train.folder.value = elsewhere
    train.hr_layers.value = [hr]
    train.scale.value, train.encoder.value, train.model_name.value = 2, "tiny", "mine"
    train.budget_unit.value, train.budget.value = "epochs", 1
    train.patch_size.value, train.batch_size.value, train.iterations.value = 32, 2, 2
    train.device.value = "cpu"
    job = train.start()
    _wait(qtbot, job, timeout=120_000)
    assert job.status == "done", train.status.value
    assert restore.model.value == str(elsewhere / "mine")
    assert "mine" in restore.status.value and "2x super-resolution" in restore.mode.value
    # a segmentation model saved (Segment dock) is not offered for restoration
    seg = build_model(segmentation_arch("tiny"), kind="segmentation", name="seg",
                      classes=["background", "object"], measure_rf=False)
    seg.config.receptive_field = 8
    save_model(seg, tmp_path / "seg")
    model_events.saved.emit(str(tmp_path / "seg"))
    assert str(tmp_path / "seg") not in restore.model.choices
    assert restore.model.value == str(elsewhere / "mine")


def test_grid_without_removed_ground_truth_or_input(make_napari_viewer, qtbot, tiny2x):
    viewer = make_napari_viewer()
    dock, lr_layer, hr_layer = _setup(viewer, 16)
    dock.ground_truth.value = hr_layer
    dock.lazy.value = False
    _wait(qtbot, dock.run())
    viewer.layers.remove(hr_layer)
    dock.toggle_grid()  # no raw ValueError: the grid shows what is left
    assert viewer.canvas.grid.enabled
    assert [layer.name for layer in viewer.layers if layer.visible] == ["lr", "lr restored (tiny-2x)"]
    assert "ground truth 'hr'" in dock.status.value and "removed" in dock.status.value
    dock.toggle_grid()
    assert not viewer.canvas.grid.enabled
    viewer.layers.remove(lr_layer)
    dock.toggle_grid()
    assert viewer.canvas.grid.enabled and viewer.canvas.grid.shape == (1, 1)
    assert "input 'lr'" in dock.status.value
    dock.toggle_grid()


def test_lazy_default_follows_the_model_unless_set_by_hand(make_napari_viewer):
    from napari_decrappify._napari.restore import RestoreWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((5000, 5000), np.uint8), name="big")  # 25 Mpix
    dock = RestoreWidget(viewer)
    denoise = next(v for v in dock.model.choices if v and v.endswith("em-denoise"))
    four = next(v for v in dock.model.choices if v and v.endswith("em-4x"))
    dock.model.value = denoise
    dock.image.value = viewer.layers["big"]
    assert not dock.lazy.value  # 25 Mpix result
    dock.model.value = four
    assert dock.lazy.value  # 400 Mpix result
    dock.model.value = denoise
    assert not dock.lazy.value
    dock.lazy.value = True  # the user's choice sticks across model changes
    dock.model.value = four
    dock.model.value = denoise
    assert dock.lazy.value


def test_rerun_replaces_the_result_layer(make_napari_viewer, qtbot, tiny2x):
    viewer = make_napari_viewer()
    dock, lr_layer, _ = _setup(viewer, 17, with_hr=False)
    dock.lazy.value = True
    first = _lazy(qtbot, dock)
    first.contrast_limits = (10.0, 200.0)  # the user's display settings
    first.visible = False
    second = _lazy(qtbot, dock)
    names = [layer.name for layer in viewer.layers]
    assert names == ["lr", "lr restored (tiny-2x)"]
    assert second is first and second.visible
    assert tuple(second.contrast_limits) == (10.0, 200.0)
    # in memory now: the lazy multiscale layer is replaced by an in-memory one, same place
    dock.lazy.value = False
    job = dock.run()
    _wait(qtbot, job)
    assert job.status == "done", dock.status.value
    assert [layer.name for layer in viewer.layers] == names
    out = viewer.layers["lr restored (tiny-2x)"]
    assert not out.multiscale and isinstance(out.data, np.ndarray)
    assert out.metadata["decrappify"]["lazy"] is False
    assert tuple(out.contrast_limits) == (10.0, 200.0)
    np.testing.assert_allclose(out.scale, HR_SCALE)
    np.testing.assert_allclose(out.translate, HR_TRANSLATE)
    assert dock.result["layer"] is out


def _recording_loads(monkeypatch, gate=None):
    """Patch models.load_model to log, per call, whether it ran in the UI (main) thread, and
    optionally to wait on ``gate`` first."""
    import threading

    from napari_decrappify import models

    original, log = models.load_model, []

    def recording(*args, **kwargs):
        log.append(threading.current_thread() is threading.main_thread())
        if gate is not None:
            gate.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", recording)
    return log


def test_model_weights_load_in_a_worker_then_restore(make_napari_viewer, qtbot, model_dir,
                                                     monkeypatch):
    from _tiny import save_tiny

    save_tiny(model_dir / "cold-2x", scale=2, preload=False)
    loads = _recording_loads(monkeypatch)
    viewer = make_napari_viewer()
    dock, _, _ = _setup(viewer, 21, with_hr=False)
    dock.model.value = str(model_dir / "cold-2x")
    dock.lazy.value = True
    job = dock.run()  # not loaded yet: the slot starts a loading job and returns
    assert job is not None and job.description == "Loading model cold-2x"
    assert "lr restored (cold-2x)" not in viewer.layers
    qtbot.waitUntil(lambda: "lr restored (cold-2x)" in viewer.layers, timeout=30_000)
    qtbot.waitUntil(lambda: dock.job.finished, timeout=30_000)
    assert loads == [False], "the model's weights were loaded in the UI thread"
    settle(qtbot, viewer.layers["lr restored (cold-2x)"])  # (Cancel stops the view's tiles)
    qtbot.wait(2 * LIVE_POLL_MS)
    assert dock.restore_button.enabled and not dock.cancel_button.enabled
    # loaded now: Restore (in memory) and Inspect start their jobs without loading again
    dock.lazy.value = False
    job = dock.run()
    assert job.description == "Restoring lr"
    _wait(qtbot, job)
    assert job.status == "done", dock.status.value
    assert dock.inspect().description == "Inspecting region"
    _wait(qtbot, dock.job)
    assert loads == [False]


def test_cancel_while_the_model_loads_adds_nothing(make_napari_viewer, qtbot, model_dir,
                                                   monkeypatch):
    import threading

    from _tiny import save_tiny

    save_tiny(model_dir / "cold-2x", scale=2, preload=False)
    gate = threading.Event()
    loads = _recording_loads(monkeypatch, gate)
    viewer = make_napari_viewer()
    dock, _, _ = _setup(viewer, 22, with_hr=False)
    dock.model.value = str(model_dir / "cold-2x")
    dock.lazy.value = False
    n_layers = len(viewer.layers)
    job = dock.run()
    qtbot.waitUntil(lambda: loads == [False], timeout=10_000)
    dock.cancel()
    gate.set()
    _wait(qtbot, job)
    assert job.status == "cancelled"
    assert dock.job is job, "a restore was started after Cancel"
    assert len(viewer.layers) == n_layers
    assert "cancelled before the model was loaded" in dock.status.value
    assert dock.restore_button.enabled and not dock.cancel_button.enabled


def test_a_model_replaced_while_loading_is_not_loaded_in_a_loop(make_napari_viewer, qtbot,
                                                                 tiny2x, monkeypatch):
    """If the weights change on disk while they load, the cache never holds the new file; the
    click still restores after one loading job (not a chain of loading jobs)."""
    from napari_decrappify._napari import api

    monkeypatch.setattr(api, "loaded_model", lambda _model: None)  # never "loaded"
    viewer = make_napari_viewer()
    dock, _, _ = _setup(viewer, 23, with_hr=False)
    dock.lazy.value = False
    first = dock.run()
    assert first.description == "Loading model tiny-2x"
    qtbot.waitUntil(lambda: first.finished, timeout=30_000)
    assert dock.job is not first and dock.job.description == "Restoring lr"
    _wait(qtbot, dock.job)
    assert dock.job.status == "done" and "lr restored (tiny-2x)" in viewer.layers
    assert dock._loaded_just_now is None


def _bump_mtime(folder) -> None:
    """A re-saved weights file with a surely different time (the cache key), whatever the
    file system's timestamp resolution."""
    import os

    from napari_decrappify.models import WEIGHTS_FILE

    wfile = folder / WEIGHTS_FILE
    t = wfile.stat().st_mtime_ns + 2_000_000_000
    os.utime(wfile, ns=(t, t))


def test_weights_replaced_while_loading_are_not_loaded_in_the_ui_thread(
        make_napari_viewer, qtbot, model_dir, monkeypatch):
    """The Train dock re-saves the chosen model folder while its weights load in a worker: the
    action goes on with the model that job loaded; it loaded the new weights in napari's UI
    thread (the cache key, the file time, had changed), waiting on other docks' loads too."""
    import threading

    from _tiny import save_tiny

    from napari_decrappify import models

    folder = model_dir / "cold-2x"
    save_tiny(folder, scale=2, preload=False)
    original, loads = models.load_model, []

    def load_and_resave(*args, **kwargs):
        loads.append(threading.current_thread() is threading.main_thread())
        model = original(*args, **kwargs)
        if len(loads) == 1:  # the worker's load: the folder is re-saved meanwhile
            save_tiny(folder, scale=2, seed=1, preload=False)
            _bump_mtime(folder)
        return model

    monkeypatch.setattr(models, "load_model", load_and_resave)
    viewer = make_napari_viewer()
    dock, _, _ = _setup(viewer, 24, with_hr=False)
    dock.model.value = str(folder)
    dock.lazy.value = True
    job = dock.run()
    assert job.description == "Loading model cold-2x"
    qtbot.waitUntil(lambda: "lr restored (cold-2x)" in viewer.layers, timeout=30_000)
    assert loads == [False], "the model's weights were loaded in the UI thread"
    old_hash = job.result.weights_hash
    meta = viewer.layers["lr restored (cold-2x)"].metadata["decrappify"]
    assert meta["weights_sha256"] == old_hash  # exactly the model the loading job returned
    assert dock._loaded_just_now is None
    _wait(qtbot, job)
    # the next click loads the new weights, in a worker again (never a stale model)
    job = dock.run()
    assert job is not None and job.description == "Loading model cold-2x"
    _wait(qtbot, job)
    qtbot.waitUntil(lambda: dock.result["model"] is job.result, timeout=30_000)
    assert loads == [False, False]
    meta = viewer.layers["lr restored (cold-2x)"].metadata["decrappify"]
    assert meta["weights_sha256"] == job.result.weights_hash != old_hash


def test_model_cache_keeps_one_version_per_folder(model_dir):
    """Re-saving a model into its folder (the Train dock does) replaces the cached weights
    instead of keeping every old version in memory; other folders stay cached."""
    from _tiny import save_tiny

    from napari_decrappify._napari import api
    from napari_decrappify.engine import registry

    other = save_tiny(model_dir / "other-2x", scale=2)
    folder = model_dir / "resaved-2x"
    first = save_tiny(folder, scale=2)
    assert api.resolve_model(folder) is first
    save_tiny(folder, scale=2, seed=1, preload=False)
    _bump_mtime(folder)
    second = api.resolve_model(folder)
    assert second is not first and second.weights_hash != first.weights_hash
    entries = [k for k in list(registry._LOADED) if k == str(folder.resolve())]
    assert len(entries) == 1, "an old version of the folder's weights is still cached"
    assert api.loaded_model(folder) is second
    assert api.loaded_model(model_dir / "other-2x") is other
