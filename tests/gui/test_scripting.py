"""Scripted sessions: the napari API (add_restored, compare) from Python in a running viewer."""

import numpy as np
import pytest
from _live import settle
from _tiny import lr_hr

from napari_decrappify import metrics, tiling
from napari_decrappify.config import TileConfig

pytestmark = pytest.mark.gui


def test_add_restored_by_layer_and_model_object(make_napari_viewer, qtbot, tiny2x):
    from napari_decrappify._napari.api import add_restored

    viewer = make_napari_viewer()
    lr, _ = lr_hr(20)
    viewer.add_image(lr, name="em", scale=(40, 16, 16), translate=(0, 8, 8), units="nm")
    out = add_restored(viewer, viewer.layers["em"], tiny2x, tile=32, halo=8)
    assert out is viewer.layers["em restored (tiny-2x)"]
    assert out.data[0].shape == (3, 128, 128)  # lazy: [restored, input] multiscale
    np.testing.assert_allclose(out.scale, (40, 8, 8))
    np.testing.assert_allclose(out.translate, (0, 4, 4))  # 8 + 0.5 * 16 * (1/2 - 1)
    assert out.metadata["decrappify"]["lazy"] is True
    assert out.metadata["decrappify"]["weights_sha256"] == tiny2x.weights_hash
    want = tiling.restore(tiny2x, lr[2:], TileConfig(tile=32, halo=8), axes="ZYX")
    # restored in the background, then shown: exactly the engine's numbers
    viewer.dims.set_current_step(0, 2)
    settle(qtbot, out)
    np.testing.assert_allclose(np.asarray(out.data[0][2]), want[0], atol=1e-5)


def test_add_restored_by_names_in_memory_with_ground_truth(make_napari_viewer, tiny2x):
    from napari_decrappify._napari.api import add_restored, compare

    viewer = make_napari_viewer()
    lr, hr = lr_hr(21)
    viewer.add_image(lr, name="em", scale=(40, 8, 8))
    viewer.add_image(hr, name="hr", scale=(40, 4, 4), translate=(0, -2, -2))
    out = add_restored(viewer, "em", "tiny-2x", lazy=False, ground_truth="hr", tile=32, halo=8,
                       name="restored")
    assert isinstance(out.data, np.ndarray) and out.data.shape == hr.shape
    np.testing.assert_allclose(out.translate, viewer.layers["hr"].translate)
    scores = out.metadata["decrappify"]["metrics"]
    assert scores["restored"]["psnr"] == pytest.approx(
        metrics.evaluate(out.data, hr, normalised=False)["psnr"], abs=1e-9)
    bic = np.stack([metrics.bicubic_upsample(p, 2) for p in lr])
    assert scores["bicubic"]["ssim"] == pytest.approx(
        metrics.evaluate(bic, hr, normalised=False)["ssim"], abs=1e-9)

    compare(viewer, "em", out, "hr")
    assert viewer.canvas.grid.enabled and viewer.canvas.grid.shape == (1, 3)
    assert [layer.name for layer in viewer.layers if layer.visible] == ["em", "restored", "hr"]
    compare(viewer, None, None, None, enable=False)
    assert not viewer.canvas.grid.enabled and all(layer.visible for layer in viewer.layers)


def test_add_restored_reports_bad_input(make_napari_viewer, tiny2x):
    from napari_decrappify._napari.api import add_restored
    from napari_decrappify.models import ModelFileError

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="em")
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        add_restored(viewer, "nope", tiny2x)
    with pytest.raises(ModelFileError, match="no model folder or bundled model named 'missing'"):
        add_restored(viewer, "em", "missing")
    with pytest.raises(ValueError, match="tile"):
        add_restored(viewer, "em", tiny2x, tile=40)
    viewer.add_image(np.zeros((3, 64, 64), np.uint8), name="wrong-gt")
    with pytest.raises(ValueError, match="shape"):
        add_restored(viewer, "em", tiny2x, lazy=False, ground_truth="wrong-gt", tile=32, halo=8)
    assert [layer.name for layer in viewer.layers] == ["em", "wrong-gt"]


def test_facade_restore_on_layer_data_in_viewer(make_napari_viewer, tiny2x):
    """``napari_decrappify.restore(viewer.layers["em"].data, "tiny-2x")`` from the console."""
    import napari_decrappify as nd

    viewer = make_napari_viewer()
    lr, _ = lr_hr(22)
    viewer.add_image(lr[0], name="em")
    lazy = nd.restore(viewer.layers["em"].data, "tiny-2x", tile=32, halo=8)
    now = nd.restore(viewer.layers["em"].data, "tiny-2x", lazy=False, tile=32, halo=8)
    assert lazy.shape == now.shape == (128, 128)
    np.testing.assert_allclose(np.asarray(lazy), now, atol=1e-6)
