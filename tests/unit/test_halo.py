"""The tolerance halo and the engine's tile choice: the default halo measured on real data and
recorded in the model, the largest tile that fits memory, ``exact`` mode, and older model files
without the record."""

import json
import shutil
import warnings

import numpy as np
import pytest

from napari_decrappify.config import ArchConfig, TileConfig
from napari_decrappify.engine.geometry import (
    balanced_tile,
    default_tile,
    fit_tiles,
    tile_axis,
    useful_fraction,
)
from napari_decrappify.engine.halo import (
    EXACT_TOLERANCE,
    HALO_TOLERANCE,
    candidate_halos,
    measure_halo,
    record_halo,
)
from napari_decrappify.engine.memory import forward_cost, max_window_pixels, memory_budget
from napari_decrappify.models import ZOO_DIR, build_model, load_model, save_model
from napari_decrappify.tiling import restore, restore_image, restore_whole

# --------------------------------------------------------------------------- geometry


def test_balanced_tiles_avoid_a_sliver():
    assert balanced_tile(1024, 1024) == 1024
    assert balanced_tile(1100, 1024) == 576  # 2 x 576, not 1024 + a 76 px tile
    assert balanced_tile(100, 1024) == 128
    assert balanced_tile(5000, 64) == 64


@pytest.mark.parametrize("halo", [9, 41, 73])
@pytest.mark.parametrize("size", [1024, 2048, 3000])
def test_fitted_tiles_keep_at_least_70_percent_of_the_work(halo, size):
    # a window budget of 1184^2 px (em-4x on CPU fits ~1200^2): most of each window is core
    ty, tx = fit_tiles(size, size, halo, 1184 ** 2)
    ay, ax = tile_axis(size, ty, halo), tile_axis(size, tx, halo)
    assert ay.window * ax.window <= 1184 ** 2
    assert useful_fraction(ay, ax) >= 0.70
    # the receptive-field halo at the former default tile and geometry (reflected borders)
    # keeps a third
    old = tile_axis(1024, default_tile(169), 169, reflect=True)
    assert useful_fraction(old, old) == pytest.approx(0.351, abs=1e-3)


def test_fitted_tiles_give_a_narrow_axis_budget_to_the_other():
    ty, tx = fit_tiles(100, 10_000, 41, 1024 ** 2)
    wy, wx = tile_axis(100, ty, 41).window, tile_axis(10_000, tx, 41).window
    assert ty == 128 and wy * wx <= 1024 ** 2 and tx > 1024


def test_fitted_tiles_compute_the_fewest_pixels_that_fit():
    # a 1024 px plane, halo 105 (em-4x): 1 x 2 windows of 1024 x 640 px keep 80% of the work,
    # 2 x 2 windows of 640 px 64%; the larger window is taken when it fits the budget
    assert fit_tiles(1024, 1024, 105, 864 ** 2) == (1024, 512)
    ay, ax = tile_axis(1024, 1024, 105), tile_axis(1024, 512, 105)
    assert (ay.window, ax.window) == (1024, 640)
    assert useful_fraction(ay, ax) == pytest.approx(0.8)
    assert fit_tiles(1024, 1024, 105, 736 ** 2) == (512, 512)


# --------------------------------------------------------------------------- memory


def test_forward_cost_grows_with_the_window_and_bounds_the_tile():
    model = build_model(ArchConfig(encoder="tiny", scale=2), seed=0, measure_rf=False)
    fixed, per_pixel = forward_cost(model)
    assert per_pixel > 4 * 4  # more than the input and the 2x output in fp32
    px = max_window_pixels(model, "cpu")
    assert fixed + per_pixel * px <= memory_budget("cpu") * 1.0001


# --------------------------------------------------------------------------- the measurement


@pytest.fixture(scope="module")
def tiny2x():
    model = build_model(ArchConfig(encoder="tiny", scale=2), seed=0, measure_rf=False)
    model.config.receptive_field = 40
    return model


def test_measure_halo_picks_an_aligned_halo_within_tolerance(tiny2x, rng):
    assert candidate_halos(tiny2x) == [32, 40]  # multiples of 32 below the receptive field, rf
    # large enough that a halo of 40 (64 once aligned) leaves windows short of the edges
    planes = [rng.random((256, 256), dtype=np.float32) for _ in range(2)]
    result = measure_halo(tiny2x, planes, source="noise")
    m = result["halo_measurement"]
    assert result["halo_px"] in (32, 40) and m["receptive_field"] == 40
    assert set(m["max_abs_diff"]) == {"32", "40"} and m["max_abs_diff"]["40"] <= EXACT_TOLERANCE
    if result["halo_px"] == 32:
        assert m["max_abs_diff"]["32"] <= m["bound"]
    else:
        assert m["max_abs_diff"]["32"] > m["bound"]


def test_a_recorded_halo_is_stamped_on_save_and_stale_ones_are_ignored(tiny2x, tmp_path, rng):
    model = build_model(ArchConfig(encoder="tiny", scale=2), seed=0, measure_rf=False)
    model.config.receptive_field = 40
    record_halo(model, [rng.random((96, 96), dtype=np.float32)])
    model.config.halo_px = 8  # as if measured so (the stamp logic is what is tested here)
    assert model.default_halo == 8  # measured on the weights in memory
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.halo_measurement["weights_sha256"] == loaded.config.weights_sha256
    assert loaded.default_halo == 8
    # a fine-tune copies its start's config: other weights, so the receptive field again
    loaded.config.weights_sha256 = "0" * 64
    assert loaded.default_halo == 40


# --------------------------------------------------------------------------- bundled models


def _units(model, y, norm_image):
    """Engine output back to network units (the image's own percentile mapping)."""
    from napari_decrappify.normalization import input_range, normalize, resolve

    norm = resolve(model.config.norm, norm_image, input_range(model.config.norm, norm_image))
    return normalize(np.asarray(y, dtype=np.float32), norm)


@pytest.fixture(scope="module")
def em2x_plane(cremi):
    from napari_decrappify.bench.quality import protocol_pairs

    hr, _ = cremi
    lr, _ = protocol_pairs(hr, 2, noisy=True, planes=(22,), seed=3)  # a test plane, unseen
    return (lr[0, :288, :288] * 255).astype(np.float32)


def test_bundled_models_record_a_measured_halo_below_the_receptive_field():
    for name in ("em-2x", "em-4x", "em-4x-z3", "em-denoise"):
        doc = json.loads((ZOO_DIR / name / "model.json").read_text())
        m = doc["halo_measurement"]
        assert doc["halo_px"] < doc["receptive_field"], name
        assert doc["halo_px"] % doc["alignment"] == 0, name  # windows sit on the pooling grid
        assert m["weights_sha256"] == doc["weights_sha256"] and m["tolerance"] == HALO_TOLERANCE
        assert m["max_abs_diff"][str(doc["halo_px"])] <= m["bound"], name


def test_default_halo_keeps_seams_within_half_a_grey_level_on_a_real_plane(em2x_plane):
    model = load_model("em-2x")
    rf = model.receptive_field
    assert model.default_halo < rf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the measured halo is the default: no seam warning
        img = restore_image(model, em2x_plane, TileConfig(tile=128), check_domain=False)
    assert img.metadata["halo"] == model.default_halo
    tiled = _units(model, img.data, em2x_plane)
    norm_in = _units(model, em2x_plane, em2x_plane)
    whole = restore_whole(model, norm_in[None])[0]  # the exact output
    assert float(np.abs(tiled - whole).max()) <= HALO_TOLERANCE
    # exact mode: the receptive field, as before
    exact = restore(model, em2x_plane, TileConfig(tile=192, exact=True))
    assert float(np.abs(_units(model, exact, em2x_plane) - whole).max()) <= EXACT_TOLERANCE


def test_default_tile_is_fitted_only_with_a_tolerance_halo(em2x_plane):
    model = load_model("em-2x")
    plane = np.tile(em2x_plane, (2, 2))  # 576 px: one 576 px tile fits em-2x's budget
    fitted = restore_image(model, plane, check_domain=False)
    assert fitted.metadata["tile"] == 576 and fitted.metadata["halo"] == model.default_halo
    exact = restore_image(model, plane, TileConfig(exact=True), check_domain=False)
    assert exact.metadata["tile"] == 512 and exact.metadata["halo"] == model.receptive_field


def test_a_model_file_without_the_halo_fields_loads_and_uses_the_receptive_field(tmp_path,
                                                                                  em2x_plane):
    folder = tmp_path / "old-em-2x"
    shutil.copytree(ZOO_DIR / "em-2x", folder)
    doc = json.loads((folder / "model.json").read_text())
    for key in ("halo_px", "halo_measurement"):
        doc.pop(key)
    (folder / "model.json").write_text(json.dumps(doc, indent=2))
    model = load_model(folder)
    assert model.config.halo_px is None and model.default_halo == model.receptive_field
    img = restore_image(model, em2x_plane, check_domain=False)
    assert img.metadata["halo"] == model.receptive_field and img.metadata["tile"] == 288
    same = restore(load_model("em-2x"), em2x_plane, TileConfig(exact=True))
    np.testing.assert_allclose(np.asarray(img.data), same, atol=1e-4)
