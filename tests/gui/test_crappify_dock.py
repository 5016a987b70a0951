"""The Crappify dock: live preview of the current plane (data, scale, translate) and saving
pairs; the real-data sample menu entries overlay LR and HR."""

import numpy as np
import pytest

from napari_decrappify.config import CrappifyConfig
from napari_decrappify.crappify import Crappifier, plane_rng
from napari_decrappify.io import downscale_geometry, open_image
from napari_decrappify.samples import synthetic_em

pytestmark = pytest.mark.gui


def edges(layer):
    """World coordinates of the outer pixel edges (napari's extent is pixel centres)."""
    scale = np.asarray(layer.scale)
    return layer.extent.world + np.array([[-0.5], [0.5]]) * scale


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    from napari_decrappify._napari.crappify import CrappifyWidget

    viewer = make_napari_viewer()
    hr = synthetic_em((3, 64, 64), seed=1)
    layer = viewer.add_image(hr, name="em", scale=(40, 4, 4), translate=(0, 10, 20),
                             units=("nm", "nm", "nm"), contrast_limits=(0, 255))
    widget = CrappifyWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Crappify")
    widget.live.value = False
    # the dock picked the layer with live preview on: let that first preview finish
    qtbot.waitUntil(lambda: widget._preview_worker is None, timeout=10000)
    viewer.dims.set_current_step(0, 1)  # z = 40 nm: plane 1
    yield viewer, widget, layer, hr, qtbot
    widget.live.value = False
    qtbot.waitUntil(lambda: widget._preview_worker is None and widget._save_job is None,
                    timeout=10000)


def _set(widget, scale=2, photons=100.0, read=0.02, blur=0.5, sp=0.001, method="mean", seed=5):
    widget.scale.value = scale
    widget.photons.value = photons
    widget.read_noise.value = read
    widget.blur.value = blur
    widget.salt_pepper.value = sp
    widget.downsample.value = method
    widget.seed.value = seed


def test_preview_layer_data_scale_and_translate(dock):
    viewer, widget, layer, hr, qtbot = dock
    assert widget.layer.value is layer
    _set(widget)
    assert widget.read_noise.value == pytest.approx(0.02) and widget.salt_pepper.value == 0.001
    assert widget.preview() is not None
    # (the worker may finish before a signal could be waited on: wait for its effect)
    qtbot.waitUntil(lambda: widget._preview_worker is None and "em crappified" in viewer.layers,
                    timeout=10000)
    out = viewer.layers["em crappified"]
    config = CrappifyConfig(scale=2, photons=100, read_noise=0.02, blur_sigma=0.5,
                            salt_pepper=0.001, downsample="mean")
    expected = Crappifier(config)(hr[1], seed=plane_rng(5, (1,)))
    assert out.data.shape == (1, 32, 32)
    # in the HR's intensity units (uint8 here: 0..255), so that it shares the HR's contrast and
    # a model trained on uint8 data restores it
    np.testing.assert_allclose(out.data[0], expected * 255, rtol=1e-6)
    # Y, X: the LR geometry of the HR layer; Z: the previewed plane's position
    lr_scale, lr_translate = downscale_geometry((40, 4, 4), (0, 10, 20), "ZYX", 2)
    np.testing.assert_allclose(out.scale, lr_scale)
    np.testing.assert_allclose(out.translate, (40.0, lr_translate[1], lr_translate[2]))
    assert tuple(out.translate[1:]) == (12.0, 22.0)
    assert [str(u) for u in out.units] == ["nanometer"] * 3
    # LR pixel (0, 0) covers HR pixels 0..1: both layers span the same world extent
    np.testing.assert_allclose(edges(out)[:, 1:], edges(layer)[:, 1:])
    np.testing.assert_allclose(edges(out)[:, 1:], [[8, 18], [264, 274]])
    np.testing.assert_allclose(out.contrast_limits, (0, 255))
    assert out.metadata["decrappify"]["plane"] == [1]


def test_live_preview_follows_parameters_and_plane(dock):
    viewer, widget, layer, hr, qtbot = dock
    _set(widget, scale=4, photons=0.0, read=0.0, blur=0.0, sp=0.0)
    widget.live.value = True
    qtbot.waitUntil(lambda: "em crappified" in viewer.layers
                    and viewer.layers["em crappified"].data.shape == (1, 16, 16), timeout=10000)
    out = viewer.layers["em crappified"]
    clean = hr[1].reshape(16, 4, 16, 4).mean(axis=(1, 3))  # in the HR's units (uint8)
    qtbot.waitUntil(lambda: np.allclose(out.data[0], clean, atol=1e-3), timeout=10000)
    viewer.dims.set_current_step(0, 2)
    clean2 = hr[2].reshape(16, 4, 16, 4).mean(axis=(1, 3))
    qtbot.waitUntil(lambda: np.allclose(out.data[0], clean2, atol=1e-3), timeout=10000)
    assert out.translate[0] == 80.0
    widget.read_noise.value = 0.05  # a parameter change re-runs the preview
    qtbot.waitUntil(lambda: not np.allclose(out.data[0], clean2, atol=0.2), timeout=10000)
    assert len([lyr for lyr in viewer.layers if lyr.name.endswith("crappified")]) == 1


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_save_pairs_and_read_them_back(dock, tmp_path, fmt):
    viewer, widget, layer, hr, qtbot = dock
    _set(widget, scale=2, seed=9)
    widget.folder.value = tmp_path
    widget.format.value = fmt
    job = widget.save_pairs()
    assert job is not None and not widget.save_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: widget._save_job is None, timeout=20000)
    assert job.status == "done" and widget.last_pairs is not None
    assert "saved em_lr" in widget.status.value
    assert widget.save_button.enabled and not widget.cancel_button.enabled
    ext = "tif" if fmt == "tif" else "zarr"
    lr = open_image(tmp_path / f"em_lr.{ext}")
    hr_back = open_image(tmp_path / f"em_hr.{ext}")
    np.testing.assert_array_equal(np.asarray(hr_back.data), hr)
    assert lr.data.shape == (3, 32, 32)
    config = widget.config()
    for z in range(3):  # in the HR's units (uint8: 0..255)
        np.testing.assert_allclose(np.asarray(lr.data[z]),
                                   Crappifier(config)(hr[z], seed=plane_rng(9, (z,))) * 255,
                                   rtol=1e-6)
    if fmt == "zarr":
        assert lr.scale == (40, 8, 8) and lr.translate == (0, 12, 22)
        assert hr_back.scale == (40, 4, 4) and hr_back.translate == (0, 10, 20)
    assert (tmp_path / "em.json").exists()
    # saving again without "overwrite" is refused with a message, nothing replaced
    assert widget.save_pairs() is None
    assert "exists" in widget.status.value and "overwrite" in widget.status.value
    widget.overwrite.value = True
    widget.seed.value = 10
    assert widget.save_pairs() is not None
    qtbot.waitUntil(lambda: widget._save_job is None, timeout=20000)
    assert "saved" in widget.status.value
    np.testing.assert_allclose(np.asarray(open_image(tmp_path / f"em_lr.{ext}").data[0]),
                               Crappifier(config)(hr[0], seed=plane_rng(10, (0,))) * 255, rtol=1e-6)


def test_errors_go_to_the_status_line(dock):
    viewer, widget, layer, hr, qtbot = dock
    widget.layer.value = None
    assert widget.preview() is None and "choose an HR image layer" in widget.status.value
    widget.layer.value = layer
    widget.scale.value = 8
    viewer.add_image(np.zeros((4, 4), np.uint8), name="tiny")
    widget.layer.value = viewer.layers["tiny"]
    assert widget.preview() is not None
    qtbot.waitUntil(lambda: widget._preview_worker is None, timeout=10000)
    assert "smaller than the scale 8" in widget.status.value
    assert "tiny crappified" not in viewer.layers


def test_dock_opens_from_the_manifest_and_is_removed_cleanly(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_em((3, 64, 64)), name="em")
    dock_widget, inner = viewer.window.add_plugin_dock_widget("napari-decrappify", "Crappify")
    assert type(inner).__name__ == "CrappifyWidget" and inner.layer.value.name == "em"
    qtbot.waitUntil(lambda: "em crappified" in viewer.layers, timeout=10000)  # live preview
    qtbot.waitUntil(lambda: inner._preview_worker is None, timeout=10000)
    viewer.window.remove_dock_widget(dock_widget)
    before = viewer.layers["em crappified"].data.copy()
    viewer.dims.set_current_step(0, 1)  # a removed dock no longer reacts to the viewer
    assert inner._preview_worker is None
    np.testing.assert_array_equal(viewer.layers["em crappified"].data, before)
    viewer.add_image(np.zeros((8, 8)), name="later")


@pytest.mark.network
def test_sample_data_lr_overlays_hr(make_napari_viewer, cremi):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-decrappify", "cremi-4x")
    hr, lr = viewer.layers["CREMI HR"], viewer.layers["CREMI 4x LR"]
    assert hr.data.shape == (25, 625, 625) and lr.data.shape == (25, 156, 156)
    np.testing.assert_allclose(hr.scale, (40, 4, 4))
    np.testing.assert_allclose(lr.scale, (40, 16, 16))
    np.testing.assert_allclose(lr.translate, (0, 6, 6))
    assert [str(u) for u in lr.units] == ["nanometer"] * 3
    # the LR covers exactly the HR's first 624 x 624 pixels (625 is not a multiple of 4)
    np.testing.assert_allclose(edges(lr)[0, 1:], edges(hr)[0, 1:])
    np.testing.assert_allclose(edges(lr)[1, 1:], edges(hr)[1, 1:] - 4)
    from napari_decrappify.crappify import protocol_lr

    # in the HR's units (0..255), which the bundled models restore
    np.testing.assert_allclose(lr.data[3], protocol_lr(cremi[0][3], 4, noisy=True, seed=3) * 255,
                               rtol=1e-6)
    assert tuple(lr.contrast_limits) == tuple(hr.contrast_limits) == (0, 255)
    viewer.open_sample("napari-decrappify", "cremi")
    assert len([lyr for lyr in viewer.layers if lyr.name.startswith("CREMI HR")]) == 2


def test_cancel_saving_leaves_nothing(dock, tmp_path):
    import time

    import dask.array as da

    viewer, widget, layer, hr, qtbot = dock

    def slow(block):
        time.sleep(0.05)
        return block

    slow_hr = da.from_array(synthetic_em((40, 32, 32)), chunks=(1, 32, 32)).map_blocks(slow)
    viewer.add_image(slow_hr, name="slow", contrast_limits=(0, 255))
    widget.layer.value = viewer.layers["slow"]
    widget.scale.value = 2
    widget.folder.value = tmp_path
    widget.format.value = "zarr"
    job = widget.save_pairs()
    assert job is not None
    widget.cancel()
    qtbot.waitUntil(lambda: widget._save_job is None, timeout=20000)
    assert job.status == "cancelled" and "cancelled" in widget.status.value
    assert list(tmp_path.iterdir()) == []
    assert widget.save_button.enabled and not widget.cancel_button.enabled


def test_pairs_go_next_to_the_hr_file_or_to_the_folder_chosen(make_napari_viewer, tmp_path,
                                                              monkeypatch):
    """Never the working directory: next to the HR's file when it has one; else the folder the
    user chose last in this session; else the home folder."""
    from pathlib import Path

    import tifffile

    from napari_decrappify._napari import crappify

    monkeypatch.setattr(crappify, "_CHOSEN_FOLDER", [])
    monkeypatch.chdir(tmp_path)  # napari started here: not where pairs go
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tifffile.imwrite(data_dir / "hr.tif", np.zeros((2, 64, 64), np.uint8))
    viewer = make_napari_viewer()
    empty = crappify.CrappifyWidget(viewer)  # no layer yet, nothing chosen: home
    empty.live.value = False
    assert empty.folder.value == Path.home()
    viewer.open(data_dir / "hr.tif", plugin="napari-decrappify")
    hr = viewer.layers[-1]
    widget = crappify.CrappifyWidget(viewer)
    widget.live.value = False
    assert widget.layer.value is hr and widget.folder.value == data_dir
    viewer.add_image(np.zeros((64, 64), np.uint8), name="other")  # no file, nothing chosen
    widget.layer.value = viewer.layers["other"]
    assert widget.folder.value == Path.home()
    widget.folder.value = tmp_path / "pairs"  # the user's choice, for layers without a file
    viewer.add_image(np.zeros((64, 64), np.uint8), name="third")  # layers added: kept
    assert widget.folder.value == tmp_path / "pairs"
    widget.layer.value = hr  # a layer with a file: next to it
    assert widget.folder.value == data_dir
    widget.layer.value = viewer.layers["third"]
    assert widget.folder.value == tmp_path / "pairs"
    fresh = crappify.CrappifyWidget(viewer)  # a new dock in the session
    fresh.live.value = False
    fresh.layer.value = viewer.layers["other"]
    assert fresh.folder.value == tmp_path / "pairs"
    assert Path.cwd() not in (widget.folder.value, fresh.folder.value, empty.folder.value)
