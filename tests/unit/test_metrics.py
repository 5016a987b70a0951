"""Metrics agree with their definitions and with scikit-image; bad input is refused."""

import numpy as np
import pytest

from napari_decrappify.io import downscale_geometry, upscale_geometry
from napari_decrappify.metrics import bicubic_upsample, evaluate, psnr, ssim, unit_range


def test_psnr_of_known_error():
    gt = np.zeros((32, 32))
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-9)
    assert psnr(gt + 0.01, gt) == pytest.approx(40.0, abs=1e-9)


def test_ssim_identity_and_noise(rng):
    gt = rng.random((64, 64))
    assert ssim(gt, gt) == pytest.approx(1.0)
    assert ssim(np.clip(gt + rng.normal(0, 0.2, gt.shape), 0, 1), gt) < 0.9


def test_evaluate_skips_blank_planes_and_averages(rng):
    gt = rng.random((3, 32, 32)).astype(np.float32)
    gt[1] = 0  # a blank plane, like CREMI z = 14
    pred = gt + 0.1
    res = evaluate(pred, gt)
    assert res["n_planes"] == 2 and [p["plane"] for p in res["planes"]] == [0, 2]
    # pred is clipped to [0, 1] before scoring, so the error is at most 0.1
    assert res["psnr"] >= 20.0


def test_evaluate_refuses_bad_input(rng):
    with pytest.raises(ValueError, match="differs"):
        evaluate(np.zeros((4, 4)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.full((4, 4), np.nan), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="blank"):
        evaluate(np.zeros((8, 8)), np.zeros((8, 8)))


def test_unit_range():
    assert unit_range(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    a = np.linspace(0, 1000, 1001).astype(np.uint16)
    u = unit_range(a)
    assert u.min() == 0 and u.max() == 1 and u.dtype == np.float32


def test_bicubic_matches_skimage_protocol(rng):
    from skimage.transform import resize

    lr = rng.random((2, 8, 8)).astype(np.float32)
    up = bicubic_upsample(lr, 4)
    ref = resize(lr, (2, 32, 32), order=3, mode="reflect", anti_aliasing=False)
    np.testing.assert_allclose(up, ref, atol=1e-6)


def test_geometry_lr_restored_hr_overlay():
    # HR pixels of 4 nm at origin 0; LR by 4x block mean: 16 nm pixels centred at 6 nm
    lr_scale, lr_tr = downscale_geometry((40, 4, 4), (0, 0, 0), "ZYX", 4)
    assert lr_scale == (40, 16, 16) and lr_tr == (0, 6, 6)
    up_scale, up_tr = upscale_geometry(lr_scale, lr_tr, "ZYX", 4)
    assert up_scale == (40, 4, 4) and up_tr == (0, 0, 0)
    # the LR pixel centre is the mean of the centres of the 4 HR pixels it covers
    assert lr_tr[1] == np.mean([0, 4, 8, 12])


def test_normalised_scoring_refuses_data_outside_the_unit_range(rng):
    # a restoration in input units against a uint8 ground truth scored -43.7 dB for identical
    # images: it is now an error that says how to score them
    gt = (rng.random((32, 32)) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match="normalised=False"):
        evaluate(gt.astype(np.float32), gt)
    with pytest.raises(ValueError, match=r"ground truth in \[0, 25\d\]"):
        evaluate(gt.astype(np.float32), gt.astype(np.float32))
    assert evaluate(gt.astype(np.float32), gt, normalised=False)["ssim"] == pytest.approx(1.0)
    unit = gt.astype(np.float32) / 255
    assert evaluate(unit * 1.05 - 0.02, unit)["psnr"] > 20  # a small overshoot is scored
