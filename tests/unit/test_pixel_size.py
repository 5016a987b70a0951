"""Pixel size: read from the image, compared with the model's, resampled with exact geometry."""

import warnings

import numpy as np
import pytest

from napari_decrappify.config import ArchConfig, NormConfig, TileConfig
from napari_decrappify.io import ImageData, open_image, upscale_geometry
from napari_decrappify.models import build_model
from napari_decrappify.pixel_size import check, image_pixel_size_nm, resample_yx, to_nm
from napari_decrappify.samples import synthetic_em
from napari_decrappify.tiling import restore, restore_image

CFG = TileConfig(tile=64, halo=16)


@pytest.fixture(scope="module")
def model():
    m = build_model(ArchConfig(encoder="tiny", scale=2), name="tiny-8nm",
                    norm=NormConfig(mode="percentile", low=0, high=255, input_levels=(0.2, 0.8)),
                    seed=0, measure_rf=False)
    m.config.pixel_size_nm = [4.0, 4.0]  # HR 4 nm: it expects 8 nm inputs
    return m


def image(data, px, unit="nm", translate=(0.0, 0.0)):
    return ImageData(data=data, axes="YX", scale=(px, px), translate=translate, units=(unit, unit))


def test_units_are_read_as_nanometres():
    assert to_nm(0.008, "µm") == pytest.approx(8) and to_nm(8, "nanometer") == 8
    assert to_nm(80, "angstrom") == pytest.approx(8) and to_nm(3, "pixel") is None
    assert image_pixel_size_nm((40, 0.004, 0.004), ("nm", "um", "micrometer"), "ZYX") == \
        pytest.approx((4, 4))
    assert image_pixel_size_nm((1, 1), ("pixel", "pixel"), "YX") is None


def test_matching_unknown_and_mismatched_pixel_sizes(model):
    assert check(model, (8.5, 8.5), ("nm", "nm"), "YX").action == "none"  # within 15%
    unknown = check(model, (1, 1), ("pixel", "pixel"), "YX")
    assert unknown.action == "none" and "no pixel size" in unknown.message
    two = check(model, (4, 4), ("nm", "nm"), "YX")
    assert two.action == "resample" and two.factor == (0.5, 0.5) and "8 nm" in two.message
    assert check(model, (4, 4), ("nm", "nm"), "YX", "warn").action == "warn"
    with pytest.raises(ValueError, match="trained for 8 nm inputs"):
        check(model, (16, 16), ("nm", "nm"), "YX", "error")


def test_a_model_trained_over_pixel_sizes_takes_those_as_they_are(model):
    import copy

    augmented = copy.copy(model)
    augmented.config = model.config.model_copy(deep=True)
    augmented.config.training = {"config": {"augment": {"zoom": [0.5, 2.0]}}}
    for px in (4.0, 16.0, 12.0):  # 0.5x, 2x and 1.5x the 8 nm it expects: all within the span
        seen = check(augmented, (px, px), ("nm", "nm"), "YX")
        assert seen.action == "none" and "trained over (4-16 nm inputs)" in seen.message
    assert check(augmented, (40, 40), ("nm", "nm"), "YX").action == "resample"  # 5x: beyond it
    assert check(model, (16, 16), ("nm", "nm"), "YX").action == "resample"  # no span recorded


def test_a_2x_finer_input_is_resampled_to_the_model_and_back_with_exact_geometry(model):
    """4 nm input to an 8 nm model: restored on the model's grid, the result on the 2 nm grid
    the user asked for, covering exactly the input's field of view."""
    em = synthetic_em((1, 128, 128), seed=2)[0]
    px, t = 4.0, (100.0, -50.0)
    out = restore_image(model, image(em, px, translate=t), CFG)
    assert out.metadata["pixel_size"]["action"] == "resample"
    assert out.data.shape == (256, 256)
    scale, translate = upscale_geometry((px, px), t, "YX", 2)
    assert out.scale == scale == (2.0, 2.0) and out.translate == pytest.approx(translate)
    # field of view: first/last pixel edges of input and output coincide
    for i in range(2):
        assert out.translate[i] - out.scale[i] / 2 == pytest.approx(t[i] - px / 2)
        assert out.translate[i] + (out.data.shape[i] - 0.5) * out.scale[i] == \
            pytest.approx(t[i] + (em.shape[i] - 0.5) * px)
    # what it computed: resample to 64^2 (8 nm), restore 2x (128^2 at 4 nm), resample to 256^2
    on_grid = np.asarray(resample_yx(em, "YX", (64, 64), order=1))
    manual = np.asarray(resample_yx(restore(model, on_grid, CFG, axes="YX"), "YX", (256, 256), 3))
    got = np.asarray(out.data)
    assert np.abs(got - manual).max() < 1e-3 * (manual.max() - manual.min())
    # and not what the unresampled input gives
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        as_is = np.asarray(restore_image(model, image(em, px), CFG,
                                         pixel_size_mismatch="warn").data)
    assert np.abs(as_is - got).mean() > 1.0


def test_a_coarser_input_is_upsampled_for_the_model(model):
    em = synthetic_em((1, 64, 64), seed=2)[0]
    out = restore_image(model, image(em, 16.0), CFG)  # 16 nm into an 8 nm model
    assert out.metadata["pixel_size"]["factor"] == (2.0, 2.0)
    assert out.data.shape == (128, 128) and out.scale == (8.0, 8.0)
    assert np.isfinite(np.asarray(out.data)).all()


def test_a_tiff_with_a_pixel_size_is_checked(model, tmp_path):
    from napari_decrappify.io import write_tiff

    em = synthetic_em((2, 64, 64), seed=2)
    write_tiff(tmp_path / "em.tif", em, axes="ZYX", scale=(40, 0.008, 0.008),
               units=("nm", "micrometer", "micrometer"))
    img = open_image(tmp_path / "em.tif")
    assert image_pixel_size_nm(img.scale, img.units, img.axes) == pytest.approx((8, 8))
    assert restore_image(model, img, CFG).metadata["pixel_size"]["action"] == "none"
    with pytest.raises(ValueError, match="input pixel size 16 nm"):
        restore_image(model, open_image(tmp_path / "em.tif", scale=(40, 16, 16),
                                        units=("nm", "nm", "nm")), CFG, pixel_size_mismatch="error")
