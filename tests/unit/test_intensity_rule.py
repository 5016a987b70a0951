"""One intensity rule for every score (metrics.intensity_maps): the ground truth's range maps HR,
bicubic and restored to [0, 1]; predictions are first brought from the LR input's units into the
HR's (a float [0, 1] LR beside an integer HR is in crappify.to_unit's space).

The Restore dock mapped predictions by the *input's* own percentiles whenever LR and HR dtypes
differed: on the cremi-4x sample (float 0..255 LR beside a uint8 HR) bicubic scored 15.49 dB
instead of the protocol's 24.50, and a float [0, 1] prediction beside a uint8 ground truth
scored / 255 by ``metrics.evaluate(normalised=False)`` and ``decrappify evaluate``.
"""

import json

import numpy as np
import pytest
import tifffile

from napari_decrappify import cli, metrics
from napari_decrappify._napari import _compare
from napari_decrappify.crappify import from_unit, to_unit


def _pair(rng, dtype=np.uint8, shape=(3, 32, 32), scale=2):
    """An HR stack of ``dtype`` (a tenth to nine tenths of its range) and its block-mean LR in
    [0, 1] (float32, crappify.to_unit's units)."""
    top = 255 if dtype == np.uint8 else np.iinfo(dtype).max
    hr = rng.integers(int(0.1 * top), int(0.9 * top), shape).astype(dtype)
    z, h, w = shape
    lr01 = to_unit(hr).reshape(z, h // scale, scale, w // scale, scale).mean(axis=(2, 4))
    return hr, lr01.astype(np.float32)


def _pred01(rng, hr):
    """A prediction in [0, 1] units: the HR's to_unit plus a little noise."""
    return np.clip(to_unit(hr) + rng.normal(0, 0.03, hr.shape), 0, 1).astype(np.float32)


def test_float_0_255_input_beside_uint8_hr_is_scored_by_the_hr_range(rng):
    """The cremi-4x case: predictions are in the HR's units (0..255), mapped / 255 like it."""
    hr, lr01 = _pair(rng)
    lr = from_unit(lr01, hr.dtype)  # float32 in 0..255
    pred = from_unit(_pred01(rng, hr), hr.dtype)
    gt = _compare.ground_truth(hr, lr, hr.shape, 2)
    np.testing.assert_allclose(gt.pred_map(pred), pred / 255, atol=1e-6)
    assert gt.pred_map is gt.gt_map
    want = metrics.evaluate(pred / 255, hr / 255)  # the bench protocol on [0, 1] data
    got = _compare.score(pred, gt)
    assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-4)
    assert got["ssim"] == pytest.approx(want["ssim"], abs=1e-5)
    assert metrics.evaluate(pred, hr, normalised=False)["psnr"] == pytest.approx(got["psnr"],
                                                                                 abs=1e-9)
    # the bicubic baseline the same way
    bic = _compare.bicubic(lr, 2)
    want_b = metrics.evaluate(metrics.bicubic_upsample(lr01, 2), hr / 255)
    assert _compare.score(bic, gt)["psnr"] == pytest.approx(want_b["psnr"], abs=1e-4)
    # and the error map
    err = np.asarray(_compare.error_map(pred, gt))
    np.testing.assert_allclose(err, np.abs(np.clip(pred / 255, 0, 1) - hr / 255), atol=1e-6)


def test_float_unit_input_beside_uint8_hr_is_in_the_crappifier_units(rng):
    """A crappified input (crappify.to_unit of the HR): predictions are not / 255 again."""
    hr, lr01 = _pair(rng)
    pred = _pred01(rng, hr)
    gt = _compare.ground_truth(hr, lr01, hr.shape, 2)
    want = metrics.evaluate(pred, hr / 255)
    got = _compare.score(pred, gt)
    assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-4)
    assert got["ssim"] == pytest.approx(want["ssim"], abs=1e-5)
    # evaluate without the LR tells from the prediction; with it, from the LR: same figures
    # (it scored pred / 255 against hr / 255)
    for kwargs in ({}, {"lr": lr01}):
        res = metrics.evaluate(pred, hr, normalised=False, **kwargs)
        assert res["psnr"] == pytest.approx(got["psnr"], abs=1e-9)
    np.testing.assert_allclose(gt.pred_map(pred), pred, atol=1e-6)
    np.testing.assert_array_equal(gt.gt_map(hr), hr.astype(np.float32) / 255)
    assert metrics.prediction_units(lr01, hr.dtype) == "unit"
    # a noisy input not clipped to [0, 1] is still in unit space (the old dock took its own
    # percentiles as its range)
    noisy = (lr01 * 1.3 - 0.2 + rng.normal(0, 0.05, lr01.shape)).astype(np.float32)
    assert noisy.min() < 0 and noisy.max() <= 1.5
    assert _compare.score(pred, _compare.ground_truth(hr, noisy, hr.shape, 2)) == got
    # a restoration overshooting [0, 1] a little is still in unit space
    over = (pred * 1.04 - 0.02).astype(np.float32)
    assert metrics.evaluate(over, hr, normalised=False)["psnr"] == pytest.approx(
        metrics.evaluate(over, hr / 255)["psnr"], abs=1e-4)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_float_unit_input_beside_a_wider_integer_hr(rng, dtype):
    """uint16 / 65535, int16 / 32767 (crappify.to_unit), then the HR's percentiles."""
    hr, lr01 = _pair(rng, dtype)
    pred = _pred01(rng, hr)
    gt = _compare.ground_truth(hr, lr01, hr.shape, 2)
    top = float(np.iinfo(dtype).max)
    mode, lo, hi = metrics.reference_range(hr)
    assert mode == "percentile" and (gt.gt_map.lo, gt.gt_map.hi) == (lo, hi)
    want_map = np.clip((pred.astype(np.float64) * top - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(gt.pred_map(pred), want_map, atol=2e-6)
    want = metrics.evaluate(metrics.unit_range(pred * np.float32(top), hr), metrics.unit_range(hr))
    assert _compare.score(pred, gt)["psnr"] == pytest.approx(want["psnr"], abs=1e-3)
    assert metrics.evaluate(pred, hr, normalised=False)["psnr"] == pytest.approx(want["psnr"],
                                                                                 abs=1e-3)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_same_units_use_the_hr_map_as_they_are(rng, dtype):
    """Same dtype (and an integer LR beside any HR): no unit conversion, the HR's map for all."""
    hr, lr01 = _pair(rng, np.uint16)
    hr = (hr // 300).astype(dtype)  # 21..196: float32 in percentile mode
    lr = (from_unit(lr01, np.uint16) / 300).astype(dtype)
    pred_map, gt_map = metrics.intensity_maps(hr, lr)
    assert metrics.prediction_units(lr, hr.dtype) == "reference"
    assert pred_map is gt_map and pred_map.unit_dtype is None
    assert _compare.ground_truth(hr, lr, hr.shape, 2).prepare().pred_map is not None
    pred = hr.astype(np.float32) + rng.normal(0, 20, hr.shape).astype(np.float32)
    assert metrics.evaluate(pred, hr, normalised=False, lr=lr)["psnr"] == pytest.approx(
        _compare.score(pred, _compare.ground_truth(hr, lr, hr.shape, 2))["psnr"], abs=1e-9)


def test_numpy_and_dask_give_the_same_maps(rng):
    """A lazy input is read in slabs for its min / max, a lazy HR for its range: the maps, the
    scores and the error map equal the in-memory ones, and follow the rule."""
    import dask.array as da

    for dtype in (np.uint16, np.uint8):
        hr, lr01 = _pair(rng, dtype, shape=(4, 32, 32))
        pred = _pred01(rng, hr)
        eager = _compare.ground_truth(hr, lr01, hr.shape, 2).prepare()
        lazy = _compare.ground_truth(da.from_array(hr, chunks=(1, 32, 32)),
                                     da.from_array(lr01, chunks=(1, 16, 16)), hr.shape, 2)
        want = metrics.evaluate(metrics.unit_range(from_unit(pred, dtype), hr),
                                metrics.unit_range(hr))
        assert _compare.score(pred, eager)["psnr"] == pytest.approx(want["psnr"], abs=1e-3)
        assert _compare.score(pred, lazy) == _compare.score(pred, eager)
        np.testing.assert_array_equal(np.asarray(lazy.pred_map(da.from_array(pred))),
                                      eager.pred_map(pred))
        np.testing.assert_array_equal(np.asarray(lazy.gt_map(lazy.data)), eager.gt_map(hr))
        for g in (eager, lazy):
            assert g.pred_map.unit_dtype == np.dtype(dtype)
            assert (g.pred_map.mode, g.pred_map.lo, g.pred_map.hi) == (
                g.gt_map.mode, g.gt_map.lo, g.gt_map.hi)
        np.testing.assert_allclose(np.asarray(_compare.error_map(pred, lazy)),
                                   np.asarray(_compare.error_map(pred, eager)), atol=1e-7)
    # a lazy float input beside a float HR is not read at all (same units)
    hr = rng.random((2, 16, 16)).astype(np.float32)
    assert metrics.prediction_units(_NoReads(hr), hr.dtype) == "reference"


class _NoReads:
    def __init__(self, a):
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim

    def __getitem__(self, key):
        raise AssertionError("read")


def test_cli_evaluate_follows_the_rule(tmp_path, capsys, rng):
    """``decrappify evaluate`` scored a float [0, 1] prediction beside a uint8 HR / 255."""
    hr, _ = _pair(rng)
    pred = _pred01(rng, hr)
    tifffile.imwrite(tmp_path / "hr.tif", hr)
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    tifffile.imwrite(tmp_path / "pred255.tif", from_unit(pred, hr.dtype))
    want = metrics.evaluate(pred, hr / 255)["psnr"]
    for name in ("pred.tif", "pred255.tif"):
        assert cli.main(["evaluate", str(tmp_path / name), str(tmp_path / "hr.tif"),
                         "--json", str(tmp_path / "m.json"), "--overwrite"]) == 0
        assert json.loads((tmp_path / "m.json").read_text())["psnr"] == pytest.approx(want,
                                                                                      abs=1e-4)
    assert "unit" in capsys.readouterr().out
