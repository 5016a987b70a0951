"""The Restore dock scores the bundled ``cremi-4x`` sample as ``decrappify bench quality`` does.

The sample's LR is float32 in the HR's units (0..255) beside the uint8 HR. The dock mapped
predictions by the input's own percentiles whenever the dtypes differed: bicubic 15.49 dB and
em-4x 15.45 dB on the sample, where the benchmark protocol (uint8 / 255 for all) gives
24.50 / 25.69 on the same planes with the em-4x of the time (24.66 / 25.78 on the held-out
planes 20-24).
"""

import numpy as np
import pytest
from _tiny import save_tiny

from napari_decrappify import metrics
from napari_decrappify.crappify import crop_to_multiple, from_unit, protocol_lr

pytestmark = pytest.mark.gui


@pytest.mark.network
def test_restore_dock_scores_cremi_4x_like_the_bench(make_napari_viewer, qtbot, model_dir, cremi):
    from napari_decrappify._napari import api
    from napari_decrappify._napari.restore import RestoreWidget

    save_tiny(model_dir / "tiny-4x", scale=4)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-decrappify", "cremi-4x")
    hr_layer, lr_layer = viewer.layers["CREMI HR"], viewer.layers["CREMI 4x LR"]
    dock = RestoreWidget(viewer)
    dock.image.value, dock.ground_truth.value = lr_layer, hr_layer
    dock.halo.value = 8
    dock.lazy.value = False
    job = dock.run()
    qtbot.waitUntil(lambda: job.finished, timeout=300_000)
    assert job.status == "done", dock.status.value
    restored = viewer.layers["CREMI 4x LR restored (tiny-4x)"].data
    stack = dock.metrics["stack"]

    # the bench protocol (bench.quality.protocol_pairs / score_model): HR and LR in [0, 1]
    # (uint8 / 255), Y, X cropped to a multiple of the scale, metrics.evaluate on [0, 1] data.
    # The sample seeds plane i with i where the bench draws one rng over its planes: the same
    # functions on the sample's own planes
    hr01 = crop_to_multiple(metrics.unit_range(cremi[0]), 4)
    lr01 = np.stack([protocol_lr(p, 4, noisy=True, seed=i) for i, p in enumerate(cremi[0])])
    np.testing.assert_allclose(lr_layer.data, from_unit(lr01, np.uint8), rtol=1e-6)
    bicubic = metrics.evaluate(metrics.bicubic_upsample(lr01, 4), hr01)
    # the model was given the LR in the HR's units (0..255): so is its output
    restored01 = metrics.evaluate(np.clip(restored / 255.0, 0, 1), hr01)

    assert stack["bicubic"]["n_planes"] == bicubic["n_planes"] == 24  # plane 14 is blank
    assert stack["bicubic"]["psnr"] == pytest.approx(bicubic["psnr"], abs=0.01)
    assert stack["bicubic"]["psnr"] == pytest.approx(24.50, abs=0.01)
    assert stack["bicubic"]["ssim"] == pytest.approx(bicubic["ssim"], abs=1e-4)
    assert stack["restored"]["psnr"] == pytest.approx(restored01["psnr"], abs=0.01)
    assert stack["restored"]["ssim"] == pytest.approx(restored01["ssim"], abs=1e-4)
    assert f"{bicubic['psnr']:.2f} dB" in dock.metrics_label.value
    # held-out planes 20-24: the README's bicubic row
    held = [p["psnr"] for p in stack["bicubic"]["planes"] if p["plane"] >= 20]
    assert np.mean(held) == pytest.approx(24.66, abs=0.01)

    # the scripting API and metrics.evaluate(normalised=False) give the same figures
    scores = api.score_result(restored, lr_layer.data, hr_layer, 4)
    for key in ("bicubic", "restored"):
        assert scores[key]["psnr"] == pytest.approx(stack[key]["psnr"], abs=1e-9)
    assert metrics.evaluate(restored, hr_layer.data[:, :624, :624], normalised=False,
                            lr=lr_layer.data)["psnr"] == pytest.approx(stack["restored"]["psnr"],
                                                                       abs=1e-9)

    # the error map uses the same maps (a live layer: its exact values, computed off the UI
    # thread, are its source's)
    err = dock.add_error_map()
    want = np.abs(np.clip(restored[3] / 255.0, 0, 1) - hr01[3])
    np.testing.assert_allclose(np.asarray(err.data.source[3]), want, atol=1e-6)
