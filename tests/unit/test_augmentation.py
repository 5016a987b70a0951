"""Training-time variation of the HR (zoom, histogram) and the span-aware out-of-domain check."""

import numpy as np
import pytest
from pydantic import ValidationError

from napari_decrappify import domain
from napari_decrappify.augmentation import Variation
from napari_decrappify.config import GENERAL_AUGMENT, AugmentConfig, CrappifyConfig, NormConfig
from napari_decrappify.crappify import Crappifier, downsample
from napari_decrappify.data import CrappifiedPatches, make_stacks
from napari_decrappify.samples import synthetic_em

U8 = NormConfig(low=0.0, high=255.0)


def test_default_leaves_the_hr_alone_and_ranges_are_checked():
    assert not AugmentConfig().active and GENERAL_AUGMENT.active
    assert GENERAL_AUGMENT.zoom == (0.5, 2.0)
    with pytest.raises(ValidationError, match="zoom range"):
        AugmentConfig(zoom=(2.0, 0.5))
    with pytest.raises(ValidationError, match="brightness range"):
        AugmentConfig(brightness=(-0.1, 0.9))


def test_variation_geometry_and_intensities():
    rng = np.random.default_rng(0)
    zooms = [Variation.draw(GENERAL_AUGMENT, rng).zoom for _ in range(2000)]
    assert 0.5 <= min(zooms) < 0.55 and 1.9 < max(zooms) <= 2.0
    assert abs(np.median(np.log(zooms))) < 0.05  # log-uniform: as many zooms in as out
    v = Variation(zoom=2.0)
    assert v.source_size(256, 1000) == 128 and Variation(zoom=0.5).source_size(256, 300) == 300
    window = np.random.default_rng(1).random((3, 128, 128)).astype(np.float32)
    assert v.resize(window, 256).shape == (3, 256, 256)
    x = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(Variation(gamma=2.0).intensities(x), x ** 2, atol=1e-6)
    c = Variation(contrast=0.5, brightness=0.1).intensities(x)
    np.testing.assert_allclose(c, (x - 0.5) * 0.5 + 0.6, atol=1e-6)
    assert Variation().intensities(x) is x  # no variation: no copy


def _stacks():
    train, _, _ = make_stacks([synthetic_em((3, 160, 160), seed=5)], U8, train_planes=[0, 1],
                              valid_planes=[2])
    return train


def test_the_target_is_the_varied_hr_and_the_input_its_degradation():
    # no noise: the LR is exactly the block mean of the (zoomed, gamma'd) target
    crap = Crappifier(CrappifyConfig(scale=4, photons=None, read_noise=0.0))
    aug = AugmentConfig(zoom=(0.6, 1.8), gamma=(0.6, 1.6), contrast=(0.8, 1.2))
    ds = CrappifiedPatches(_stacks(), crap, patch=16, augmentation=aug)
    plain = CrappifiedPatches(_stacks(), crap, patch=16)
    for i in range(8):
        lr, hr = ds[i]
        assert lr.shape == (1, 16, 16) and hr.shape == (1, 64, 64)
        np.testing.assert_allclose(lr.numpy(), downsample(hr.numpy(), 4), atol=1e-5)
        assert 0 <= float(hr.min()) and float(hr.max()) <= 1
    # the variation changes the pairs, and the validation set (no augmentation given) is as before
    assert not np.allclose(ds[0][1].numpy(), plain[0][1].numpy())


def test_zooming_in_smooths_the_hr():
    crap = Crappifier(CrappifyConfig(scale=4, photons=None, read_noise=0.0))

    def roughness(ds):
        return np.mean([np.abs(np.diff(ds[i][1].numpy(), axis=-1)).mean() for i in range(16)])

    zoomed = CrappifiedPatches(_stacks(), crap, 16, augmentation=AugmentConfig(zoom=(2.0, 2.0)))
    shrunk = CrappifiedPatches(_stacks(), crap, 16, augmentation=AugmentConfig(zoom=(0.5, 0.5)))
    plain = CrappifiedPatches(_stacks(), crap, 16)
    assert roughness(zoomed) < 0.7 * roughness(plain) < 0.7 * roughness(shrunk)


def test_a_group_shares_one_acquisition(monkeypatch):
    crap = Crappifier(CrappifyConfig(scale=4, photons=None, read_noise=0.0))
    aug = AugmentConfig(gamma=(0.3, 3.0))
    draws = []
    original = Variation.draw

    def spy(config, rng):
        v = original(config, rng)
        draws.append(v.gamma)
        return v

    monkeypatch.setattr(Variation, "draw", staticmethod(spy))
    ds = CrappifiedPatches(_stacks(), crap, 16, augmentation=aug, fixed=True, group=4)
    for i in range(8):
        ds[i]
    assert len(set(draws[:4])) == 1 and len(set(draws[4:])) == 1 and draws[0] != draws[4]


def test_an_augmented_model_judges_inputs_against_the_span_it_saw():
    rng = np.random.default_rng(0)
    base = synthetic_em((1, 512, 512), seed=1)[0].astype(np.float64) / 255

    def inputs(noise):
        return [(base[y:y + 64, x:x + 64] + rng.normal(0, noise, (64, 64)))[None]
                for y in range(0, 448, 64) for x in range(0, 256, 64)]

    quiet, noisy = inputs(0.01), inputs(0.05)
    trained = domain.training_statistics(quiet, (0.0, 1.0))
    trained["spans"] = domain.training_spans(quiet + noisy, group=len(quiet))
    assert trained["spans"]["groups"] == 2
    lo, hi = trained["spans"]["noise"]
    assert hi > 2 * lo
    middle = domain.training_statistics(inputs(0.03), (0.0, 1.0))
    far = domain.training_statistics(inputs(0.2), (0.0, 1.0))
    same_histogram = {"quantiles": trained["quantiles"]}  # the noise alone differs
    assert not any("nois" in f for f in domain.compare(trained, {**middle, **same_histogram}))
    assert any("noisier" in f for f in domain.compare(trained, {**far, **same_histogram}))
    point = {k: v for k, v in trained.items() if k != "spans"}
    assert any("noisier" in f for f in domain.compare(point, {**middle, **same_histogram}))
