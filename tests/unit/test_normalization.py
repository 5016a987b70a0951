"""Input normalisation that follows the data: any intensity units restore alike."""

import dask.array as da
import numpy as np
import pytest
from pydantic import ValidationError

from napari_decrappify.config import ArchConfig, NormConfig, TileConfig, TrainConfig
from napari_decrappify.models import build_model
from napari_decrappify.normalization import input_range, measure_percentiles, resolve
from napari_decrappify.samples import synthetic_em
from napari_decrappify.tiling import restore, restore_image
from napari_decrappify.train import train

PCT = NormConfig(mode="percentile", low=0, high=255, input_levels=(0.2, 0.8))


@pytest.fixture(scope="module")
def model():
    return build_model(ArchConfig(encoder="tiny", scale=2), name="tiny-pct", norm=PCT, seed=0,
                       measure_rf=False)


@pytest.fixture(scope="module")
def em():
    return synthetic_em((2, 64, 64), seed=3)


def test_uint8_uint16_and_float_versions_of_one_image_restore_alike(model, em):
    """The bug: a model with a fixed 0..255 range turned a float [0, 1] image into noise."""
    cfg = TileConfig(tile=64, halo=16)
    ref = restore(model, em, cfg, axes="ZYX")
    versions = {"uint16": (em.astype(np.uint16) * 257, 257.0),
                "float [0, 1]": (em.astype(np.float32) / 255, 1 / 255),
                "float 0..255": (em.astype(np.float32), 1.0),
                "float, offset": (em.astype(np.float32) * 3 + 1000, 3.0)}
    span = float(ref.max() - ref.min())
    for name, (data, factor) in versions.items():
        out = restore(model, data, cfg, axes="ZYX")
        offset = 1000 if "offset" in name else 0
        back = (out - offset) / factor
        assert np.abs(back - ref).max() < 1e-4 * span, name


def test_a_fixed_range_model_applies_its_own_range_whatever_the_input(em):
    fixed = build_model(ArchConfig(encoder="tiny", scale=2), norm=NormConfig(low=0, high=255),
                        seed=0, measure_rf=False)
    assert resolve(fixed.config.norm, em) is fixed.config.norm
    a = restore(fixed, em, TileConfig(tile=64, halo=16), axes="ZYX")
    b = restore(fixed, em.astype(np.float32) / 255, TileConfig(tile=64, halo=16), axes="ZYX")
    assert np.abs(a / 255 - b).max() > 1e-3  # absolute intensities: not rescaled


def test_the_inputs_percentiles_map_to_the_models_levels(model, em):
    lo, hi = np.median([np.percentile(p, (1, 99.8)) for p in em], axis=0)  # per plane
    norm = resolve(PCT, em)
    assert (lo - norm.low) / (norm.high - norm.low) == pytest.approx(0.2)
    assert (hi - norm.low) / (norm.high - norm.low) == pytest.approx(0.8)
    meta = restore_image(model, em, TileConfig(tile=64, halo=16), axes="ZYX").metadata
    assert meta["input_range"] == pytest.approx((lo, hi))
    assert "1 and 99.8 percentiles" in meta["normalisation"]


def test_a_crop_given_the_whole_inputs_range_restores_with_it(model, em):
    crop = em[:, :32, :32]
    whole = restore_image(model, em, TileConfig(tile=64, halo=16), axes="ZYX").metadata
    own = restore_image(model, crop, TileConfig(tile=64, halo=16), axes="ZYX").metadata
    given = restore_image(model, crop, TileConfig(tile=64, halo=16,
                                                  input_range=whole["input_range"]),
                          axes="ZYX").metadata
    assert given["input_range"] == pytest.approx(whole["input_range"])
    assert own["input_range"] != pytest.approx(whole["input_range"])


def test_lazy_inputs_are_measured_in_bounded_reads_like_numpy(em):
    f = em.astype(np.float32) / 255 + np.linspace(0, 1e-3, em.size, dtype=np.float32).reshape(em.shape)
    lazy = da.from_array(f, chunks=(1, 32, 32))
    assert measure_percentiles(lazy, (1, 99.8)) == pytest.approx(
        tuple(np.percentile(f, (1, 99.8))), abs=2e-6)


def test_sparse_and_constant_images_still_restore(model):
    sparse = np.zeros((64, 64), np.uint16)
    sparse[10, 10] = 1000  # 1st and 99.8th percentiles both 0: the full range is used
    assert input_range(PCT, sparse) == (0.0, 1000.0)
    out = restore(model, np.full((64, 64), 7, np.uint8), TileConfig(tile=64, halo=16), axes="YX")
    assert np.isfinite(out).all()


def test_bad_normalisation_configs_are_refused():
    with pytest.raises(ValidationError, match="input_levels"):
        NormConfig(mode="percentile")
    with pytest.raises(ValidationError, match="input_levels"):
        NormConfig(mode="percentile", input_levels=(0.5, 0.5))
    with pytest.raises(ValidationError, match="input_percentiles"):
        NormConfig(input_percentiles=(99, 1))
    with pytest.raises(ValidationError, match="input_range"):
        TileConfig(input_range=(2.0, float("nan")))
    with pytest.raises(ValueError, match="boolean"):
        measure_percentiles(np.zeros((4, 4), bool), (1, 99))


def test_an_old_model_file_without_a_mode_keeps_its_fixed_range():
    assert NormConfig.model_validate({"low": 0, "high": 255, "percentiles": None}).mode == "fixed"


def test_training_records_the_networks_input_levels():
    hr = synthetic_em((4, 96, 96), seed=1)
    cfg = TrainConfig(scale=2, arch=ArchConfig(encoder="tiny"), patch_size=32, batch_size=2,
                      epochs=1, iterations_per_epoch=2)
    res = train([hr], cfg)
    norm = res.model.config.norm
    assert norm.mode == "percentile" and (norm.low, norm.high) == (0, 255)
    lo, hi = norm.input_levels
    # the crappified LR in network units: near the HR's own percentiles / 255, the top one
    # raised by the shot noise of the bright pixels (Poisson(255))
    p_lo, p_hi = np.percentile(hr, (1, 99.8)) / 255
    assert abs(lo - p_lo) < 0.05 and p_hi - 0.02 < hi < p_hi + 0.2
    fixed = train([hr], cfg.model_copy(update={"normalisation": "fixed"}))
    assert fixed.model.config.norm.mode == "fixed"


def test_a_blank_plane_does_not_move_a_stacks_range(em):
    """CREMI's plane 14 is all zeros: over the whole stack it moved the 1st percentile from
    ~74 to 0 and em-4x fell below bicubic on every plane."""
    stack = np.concatenate([em, np.zeros_like(em[:1]), em])
    assert input_range(PCT, stack) == pytest.approx(input_range(PCT, em))
    per_plane = [np.percentile(p, (1, 99.8)) for p in em]
    assert input_range(PCT, em) == pytest.approx(tuple(np.median(per_plane, axis=0)))
    assert input_range(PCT, np.zeros((3, 8, 8), np.uint8)) == (0.0, 0.0)
