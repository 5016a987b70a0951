"""What the Restore dock measures and checks, and where: the input's intensity range in a worker
(once per layer; a lazy restore reads no data in napari's UI thread, and Inspect region uses the
whole layer's range), the pixel size (resampled through the model's grid, exact geometry), the
out-of-domain warning, and the LR consistency line and map (no ground truth needed)."""

import os
import re
import threading
import traceback

import numpy as np
import pytest
from _tiny import lr_hr

from napari_decrappify import consistency, normalization, tiling
from napari_decrappify.config import TileConfig

pytestmark = pytest.mark.gui

CONSISTENCY_LINE = re.compile(r"LR consistency: (\d+\.\d{2}) dB / (0\.\d{3})")


def _model(folder, *, scale: int = 2, pixel_size=None, domain=None, seed: int = 0):
    """A tiny random model normalised from the data (as the bundled ones are), saved in
    ``folder`` and loaded into the docks' cache."""
    from napari_decrappify._napari import api
    from napari_decrappify.config import ArchConfig, NormConfig
    from napari_decrappify.models import build_model, save_model

    model = build_model(ArchConfig(encoder="tiny", scale=scale), name=folder.name, seed=seed,
                        measure_rf=False,
                        norm=NormConfig(mode="percentile", input_levels=(0.05, 0.95)))
    model.config.receptive_field = 8
    model.config.pixel_size_nm = pixel_size
    model.config.domain = domain or {}
    save_model(model, folder)
    return api.resolve_model(folder)


def _dock(viewer, layer, model):
    from napari_decrappify._napari.restore import RestoreWidget

    dock = RestoreWidget(viewer)
    dock.model.value = str(model.path)
    dock.image.value = layer
    dock.halo.value, dock.tile.value = 8, 32
    return dock


def _idle(qtbot, dock, timeout=60_000):
    qtbot.waitUntil(lambda: dock.job is not None and dock.job.finished, timeout=timeout)


def _restore(qtbot, dock, lazy: bool):
    dock.lazy.value = lazy
    job = dock.run()
    assert job is not None, dock.status.value
    _idle(qtbot, dock)
    assert job.status == "done", dock.status.value
    return dock.result["layer"]


class _Recording:
    """Layer data (an array-like, not numpy) that logs every read this package's code makes in
    napari's UI (main) thread. napari's own display reads (a plane on screen) are not logged:
    those run through napari's code."""

    _ours = os.path.dirname(tiling.__file__) + os.sep

    def __init__(self, a):
        import napari

        self._napari = os.path.dirname(napari.__file__) + os.sep
        self._a = a
        self.shape, self.dtype, self.ndim, self.size = a.shape, a.dtype, a.ndim, a.size
        self.ui_reads: list = []
        self.reads = 0

    def _log(self, key) -> None:
        self.reads += 1
        if threading.current_thread() is not threading.main_thread():
            return
        files = [f.filename for f in traceback.extract_stack()]
        if any(f.startswith(self._napari) for f in files):
            return  # napari showing the layer
        ours = [f"{os.path.basename(f.filename)}:{f.lineno}" for f in traceback.extract_stack()
                if f.filename.startswith(self._ours)]
        if ours:
            self.ui_reads.append((key, ours))

    def __getitem__(self, key):
        self._log(key)
        return self._a[key]

    def __array__(self, dtype=None, copy=None):
        self._log("all")
        return np.asarray(self._a, dtype=dtype)

    def __len__(self):
        return len(self._a)


@pytest.fixture
def sync_dask():
    """dask computes in the calling thread (not in its pool): a read that a call in the UI
    thread causes through a dask graph is made in the UI thread too, and is logged."""
    import dask

    with dask.config.set(scheduler="sync"):
        yield


def test_lazy_restore_reads_nothing_in_the_ui_thread_and_inspect_uses_the_whole_range(
        make_napari_viewer, qtbot, model_dir, monkeypatch, sync_dask):
    calls = []
    original = normalization.input_range

    def counting(norm, image):
        calls.append(threading.current_thread() is threading.main_thread())
        return original(norm, image)

    monkeypatch.setattr(normalization, "input_range", counting)
    model = _model(model_dir / "pct-2x")
    lr = lr_hr(31, shape=(3, 128, 128))[0]
    lr[0] //= 3  # a dark plane: its own percentiles are not the stack's
    data = _Recording(lr)
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, name="lr", contrast_limits=(0, 255))
    dock = _dock(viewer, layer, model)
    assert dock.lazy.value  # not numpy: lazy by default

    lazy = _restore(qtbot, dock, lazy=True)
    assert data.reads > 0  # the worker measured the input...
    assert data.ui_reads == [], f"read in the UI thread: {data.ui_reads[:3]}"  # ...not the UI
    assert calls == [False]
    assert lazy.multiscale and lazy.data[0].shape == (3, 128, 128)
    whole = dock.result["checks"]["input_range"]
    assert whole == pytest.approx(original(model.config.norm, lr))
    assert "percentiles" in dock.info.value
    # the lazy result is the in-memory one (the same range; measured once for both)
    lazy_pixels = np.asarray(lazy.data[0].source)  # the exact lazy result (not what is shown)
    full = _restore(qtbot, dock, lazy=False).data
    assert calls == [False], "the input range was measured again"
    np.testing.assert_allclose(lazy_pixels, full, atol=1e-5)
    assert data.ui_reads == []

    # Inspect region on the dark plane: normalised by the whole layer's range (not the
    # plane's own), so it gives the full result's pixels again
    plane_range = original(model.config.norm, lr[0])
    assert abs(plane_range[1] - whole[1]) > 10
    viewer.dims.set_current_step(0, 0)
    viewer.reset_view()  # the view shows the whole plane: the crop is the plane
    job = dock.inspect()
    _idle(qtbot, dock)
    assert job.status == "done", dock.status.value
    assert dock.inspection["plane"] == (0,)
    np.testing.assert_allclose(viewer.layers["inspect: restored"].data, full[0], atol=1e-4)
    assert calls == [False]
    assert data.ui_reads == []


def test_input_at_twice_the_model_pixel_size_is_resampled_with_exact_geometry(
        make_napari_viewer, qtbot, model_dir):
    from napari_decrappify import io

    model = _model(model_dir / "px-2x", pixel_size=[4.0, 4.0])  # HR 4 nm: 8 nm inputs
    lr = lr_hr(32, shape=(1, 128, 128))[0][0]  # 64 x 64
    viewer = make_napari_viewer()
    layer = viewer.add_image(lr, name="lr16", scale=(16.0, 16.0), translate=(100.0, 50.0),
                             units=("nm", "nm"))
    dock = _dock(viewer, layer, model)
    assert "16 nm" in dock.pixel_note.value and "8 nm" in dock.pixel_note.value

    out = _restore(qtbot, dock, lazy=False)
    assert out.data.shape == (128, 128)  # the input's grid times the scale, not the model's grid's
    np.testing.assert_allclose(out.scale, (8.0, 8.0))
    np.testing.assert_allclose(out.translate, (96.0, 46.0))  # io.upscale_geometry of the input
    np.testing.assert_allclose(out.data_to_world((-0.5, -0.5)), layer.data_to_world((-0.5, -0.5)))
    assert "resampled" in dock.status.value and "2.00x" in dock.status.value
    assert "resampled to the model's grid" in dock.info.value
    assert out.metadata["decrappify"]["checks"]["pixel_size"]["action"] == "resample"
    # the engine's restore_image: the same pixels and geometry
    want = tiling.restore_image(model, io.ImageData(lr, "YX", (16.0, 16.0), (100.0, 50.0),
                                                    ("nm", "nm")),
                                TileConfig(tile=32, halo=8), check_domain=False)
    np.testing.assert_allclose(out.scale, want.scale)
    np.testing.assert_allclose(out.translate, want.translate)
    np.testing.assert_allclose(out.data, np.asarray(want.data), atol=1e-3)
    # lazy: the same result, and the same geometry
    lazy = _restore(qtbot, dock, lazy=True)
    assert lazy.data[0].shape == (128, 128)
    np.testing.assert_allclose(lazy.scale, (8.0, 8.0))
    np.testing.assert_allclose(np.asarray(lazy.data[0].source), np.asarray(want.data), atol=1e-3)

    # "warn": restored as it is, with a visible warning; "error": refused
    dock.pixel_policy.value = "warn"
    out = _restore(qtbot, dock, lazy=False)
    assert out.data.shape == (128, 128)
    assert "⚠" in dock.info.value and "warning" in dock.status.value
    np.testing.assert_allclose(out.data, tiling.restore(model, lr, TileConfig(tile=32, halo=8)),
                               atol=1e-4)
    dock.pixel_policy.value = "error"
    assert "⚠" in dock.pixel_note.value
    n = len(viewer.layers)
    assert dock.run() is None
    assert "trained for 8 nm" in dock.status.value and len(viewer.layers) == n
    # the pixel size field overrides the layer's: 8 nm matches the model
    dock.pixel_size.value = 8.0
    assert "matches" in dock.pixel_note.value
    _restore(qtbot, dock, lazy=False)
    assert "matches" in dock.info.value and "resampled" not in dock.status.value


def test_uint8_uint16_and_float_versions_restore_alike(make_napari_viewer, qtbot, model_dir):
    model = _model(model_dir / "pct-2x")
    lr8 = lr_hr(33, shape=(2, 128, 128))[0]
    versions = {"u8": (lr8, 1.0), "u16": (lr8.astype(np.uint16) * 257, 257.0),
                "f01": ((lr8 / 255.0).astype(np.float32), 1 / 255)}
    viewer = make_napari_viewer()
    dock = None
    out = {}
    for name, (data, unit) in versions.items():
        layer = viewer.add_image(data, name=name)
        if dock is None:
            dock = _dock(viewer, layer, model)
        dock.image.value = layer
        out[name] = _restore(qtbot, dock, lazy=False).data / unit
        assert "percentiles" in dock.info.value
    np.testing.assert_allclose(out["u16"], out["u8"], atol=2e-3)
    np.testing.assert_allclose(out["f01"], out["u8"], atol=2e-3)
    assert np.ptp(out["u8"]) > 1  # not trivially equal


def test_lr_consistency_line_and_map(make_napari_viewer, qtbot, model_dir):
    model = _model(model_dir / "pct-2x")
    lr = lr_hr(34, shape=(3, 128, 128))[0]
    viewer = make_napari_viewer()
    layer = viewer.add_image(lr, name="lr", scale=(40.0, 8.0, 8.0), translate=(0.0, 100.0, 50.0),
                             units=("nm", "nm", "nm"))
    dock = _dock(viewer, layer, model)
    assert dock.ground_truth.value is None  # no ground truth needed

    restored = _restore(qtbot, dock, lazy=False).data
    want = consistency.stack_lr_consistency(model, restored, lr, "ZYX")
    viewer.dims.set_current_step(0, 1)
    m = CONSISTENCY_LINE.search(dock.consistency_label.value)
    assert m, dock.consistency_label.value
    assert float(m.group(1)) == pytest.approx(want["planes"][1]["psnr"], abs=0.006)
    assert float(m.group(2)) == pytest.approx(want["planes"][1]["ssim"], abs=6e-4)
    assert f"stack: {want['psnr']:.2f} dB" in dock.consistency_label.value
    assert dock.consistency["stack"]["psnr"] == pytest.approx(want["psnr"], abs=1e-6)

    # the map: on the input's grid, with the input layer's geometry
    cmap = dock.add_consistency_map()
    assert cmap.name == "lr restored (pct-2x) LR consistency"
    assert cmap.data.shape == lr.shape
    np.testing.assert_allclose(cmap.scale, layer.scale)
    np.testing.assert_allclose(cmap.translate, layer.translate)
    one = consistency.model_lr_consistency(model, restored[1], lr[1], with_map=True)
    np.testing.assert_allclose(np.asarray(cmap.data[1]), one["map"], atol=1e-6)

    # lazy: the current plane on request, computed in a worker
    _restore(qtbot, dock, lazy=True)
    assert "Check consistency" in dock.consistency_label.value
    assert not CONSISTENCY_LINE.search(dock.consistency_label.value)
    job = dock.check_consistency()
    _idle(qtbot, dock)
    assert job.status == "done", dock.status.value
    m = CONSISTENCY_LINE.search(dock.consistency_label.value)
    assert m and "plane [1]" in dock.consistency_label.value
    assert float(m.group(1)) == pytest.approx(want["planes"][1]["psnr"], abs=0.006)
    viewer.dims.set_current_step(0, 2)  # another plane: checked again on request
    assert not CONSISTENCY_LINE.search(dock.consistency_label.value)


def test_out_of_domain_input_shows_a_warning(make_napari_viewer, qtbot, model_dir):
    from napari_decrappify import domain
    from napari_decrappify._napari.restore import WARN_COLOR

    lr = lr_hr(35, shape=(2, 128, 128))[0]
    norm = _model(model_dir / "probe").config.norm
    stats = domain.input_statistics(lr, "ZYX", normalization.input_range(norm, lr))
    model = _model(model_dir / "em-2x", domain=stats)  # "trained" on inputs like lr
    viewer = make_napari_viewer()
    layer = viewer.add_image(lr, name="em")
    dock = _dock(viewer, layer, model)
    dock.model.value = str(model.path)
    _restore(qtbot, dock, lazy=False)
    assert "within" in dock.info.value and "⚠" not in dock.info.value

    noise = (np.random.default_rng(0).random((2, 64, 64)) * 255).astype(np.uint8)
    dock.image.value = viewer.add_image(noise, name="noise")
    _restore(qtbot, dock, lazy=True)
    assert "⚠ this input looks unlike the training data" in dock.info.value
    assert WARN_COLOR in dock.info.value  # shown in colour
    assert "warning" in dock.status.value
    # the whole message wraps (never cut) and is the tooltip too
    assert dock.info.native.wordWrap()
    assert "unlike the training data" in dock.info.tooltip
    assert dock.result["layer"].metadata["decrappify"]["checks"]["domain"]["in_domain"] is False
