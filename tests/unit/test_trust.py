"""Checks without ground truth: LR consistency and the out-of-domain warning."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_decrappify.config import ArchConfig, NormConfig, TileConfig
from napari_decrappify.consistency import lr_consistency, model_lr_consistency
from napari_decrappify.domain import compare, input_statistics, statistics
from napari_decrappify.models import build_model
from napari_decrappify.samples import synthetic_em
from napari_decrappify.tiling import restore_image


@pytest.fixture(scope="module")
def lr():
    return synthetic_em((2, 64, 64), seed=4).astype(np.float32)


def test_a_restoration_that_reproduces_its_input_scores_high_and_a_shifted_one_low(lr):
    faithful = np.kron(lr, np.ones((1, 4, 4), np.float32))  # block mean gives lr back exactly
    rng = np.random.default_rng(0)
    good = lr_consistency(faithful + rng.normal(0, 1, faithful.shape), lr, 4)
    shifted = lr_consistency(np.roll(faithful, 12, axis=-1), lr, 4, with_map=True)
    assert good["psnr"] > 45 and good["ssim"] > 0.95 and good["n_planes"] == 2
    assert shifted["psnr"] < good["psnr"] - 15
    assert shifted["map"].shape == lr.shape and 0 <= shifted["map"].min() <= shifted["map"].max() <= 1
    with pytest.raises(ValueError, match="not the LR"):
        lr_consistency(faithful[..., :-4], lr, 4)


def test_units_do_not_change_the_consistency(lr):
    up = np.kron(lr, np.ones((1, 2, 2), np.float32)) + 3.0  # a biased restoration
    a = lr_consistency(up, lr, 2)["psnr"]
    b = lr_consistency(up * 257, (lr * 257).astype(np.float32), 2)["psnr"]
    assert a == pytest.approx(b, abs=1e-3)


def test_the_models_own_degradation_is_used(lr):
    m = build_model(ArchConfig(encoder="tiny", scale=2), seed=0, measure_rf=False)
    m.config.crappifier = None
    up = np.kron(lr, np.ones((1, 2, 2), np.float32))
    assert model_lr_consistency(m, up, lr)["degradation"] == {"scale": 2, "method": "mean",
                                                              "blur_sigma": 0.0}


def _noisy(seed, sigma):
    rng = np.random.default_rng(seed)
    em = synthetic_em((3, 192, 192), seed=seed).astype(np.float64) / 255
    return em + rng.normal(0, sigma, em.shape)


def test_the_domain_check_is_silent_on_like_data_and_names_what_differs():
    trained = input_statistics(_noisy(0, 0.05), "ZYX", (0.0, 1.0))
    assert compare(trained, input_statistics(_noisy(1, 0.05), "ZYX", (0.0, 1.0))) == []
    noisier = compare(trained, input_statistics(_noisy(1, 0.2), "ZYX", (0.0, 1.0)))
    assert any("noisier" in f for f in noisier)
    # twice smaller pixels (structures twice as large), the same noise
    zoomed = ndi.zoom(_noisy(1, 0.0), (1, 2, 2), order=1)[:, :192, :192]
    zoomed += np.random.default_rng(2).normal(0, 0.05, zoomed.shape)
    assert any("power-spectrum slope" in f
               for f in compare(trained, input_statistics(zoomed, "ZYX", (0.0, 1.0))))
    shifted = compare(trained, input_statistics(_noisy(1, 0.05) ** 3, "ZYX", (0.0, 1.0)))
    assert any("intensity distribution" in f for f in shifted)
    with pytest.raises(ValueError, match="non-constant"):
        statistics([np.zeros((64, 64))])


def test_restore_image_reports_the_domain_check(lr):
    m = build_model(ArchConfig(encoder="tiny", scale=2),
                    norm=NormConfig(mode="percentile", low=0, high=255, input_levels=(0.2, 0.8)),
                    seed=0, measure_rf=False)
    meta = restore_image(m, lr, TileConfig(tile=64, halo=16), axes="ZYX").metadata
    assert meta["domain"]["in_domain"] is None and "not checked" in meta["domain"]["message"]
    m.config.domain = input_statistics(lr, "ZYX", meta["input_range"])
    meta = restore_image(m, lr, TileConfig(tile=64, halo=16), axes="ZYX").metadata
    assert meta["domain"]["in_domain"] is True
    flat = np.full_like(lr, lr.mean()) + np.random.default_rng(0).normal(0, 1, lr.shape)
    meta = restore_image(m, flat.astype(np.float32), TileConfig(tile=64, halo=16), axes="ZYX").metadata
    assert meta["domain"]["in_domain"] is False and meta["domain"]["message"].startswith("⚠")
