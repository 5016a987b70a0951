"""The headless facade: ``import napari_decrappify`` is light, and its functions are the core's."""

import subprocess
import sys
import threading

import numpy as np
import pytest

import napari_decrappify as nd
from napari_decrappify import tiling
from napari_decrappify.config import ArchConfig, TileConfig


@pytest.fixture(scope="module")
def tiny2x():
    from napari_decrappify.models import build_model

    model = build_model(ArchConfig(encoder="tiny", scale=2), name="tiny-2x", seed=0, measure_rf=False)
    model.config.receptive_field = 8
    return model


def test_import_is_light():
    code = ("import sys, napari_decrappify as nd; "
            "heavy = [m for m in ('torch', 'fastai', 'dask', 'napari', 'qtpy', 'skimage') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names():
    from napari_decrappify import crappify, metrics, models, train

    assert set(nd.__all__) >= {"restore", "load_model", "train", "crappify", "evaluate"}
    assert nd.load_model is models.load_model
    assert nd.evaluate is metrics.evaluate
    # `train` and `crappify` are submodules *and* facade functions: calling the module calls it
    assert callable(nd.train) and nd.train is train and nd.train.TrainConfig is not None
    assert callable(nd.crappify) and nd.crappify is crappify
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nd.nope  # noqa: B018


def test_crappify_facade_is_crappify_function():
    from napari_decrappify.crappify import crappify

    hr = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(nd.crappify(hr, scale=2, seed=3), crappify(hr, scale=2, seed=3))


def test_train_facade_calls_train(monkeypatch):
    from napari_decrappify import train as train_module

    seen = {}

    def fake(hr_images, config=None, **kwargs):
        seen.update(n=len(hr_images), config=config, **kwargs)
        return "result"

    monkeypatch.setattr(train_module, "train", fake)
    assert nd.train([np.zeros((8, 8))], "cfg", out="x") == "result"
    assert seen == {"n": 1, "config": "cfg", "out": "x"}


def test_restore_lazy_and_in_memory_match_engine(tiny2x):
    image = (np.random.default_rng(1).random((2, 48, 40)) * 255).astype(np.uint8)
    lazy = nd.restore(image, tiny2x, axes="ZYX", tile=32, halo=8)
    assert lazy.shape == (2, 96, 80) and lazy.dtype == np.float32
    assert not isinstance(lazy, np.ndarray)  # dask, nothing computed yet
    now = nd.restore(image, tiny2x, axes="ZYX", lazy=False, tile=32, halo=8)
    assert isinstance(now, np.ndarray)
    want = tiling.restore(tiny2x, image, TileConfig(tile=32, halo=8), axes="ZYX")
    np.testing.assert_allclose(now, want, atol=1e-6)
    np.testing.assert_allclose(np.asarray(lazy), want, atol=1e-6)


def test_restore_progress_cancel_and_paths(tiny2x, tmp_path):
    import tifffile

    from napari_decrappify.models import save_model

    image = (np.random.default_rng(2).random((64, 64)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", image)
    save_model(tiny2x, tmp_path / "model")
    events = []
    out = nd.restore(tmp_path / "in.tif", tmp_path / "model", lazy=False, tile=32, halo=8,
                     progress=events.append)
    assert out.shape == (128, 128)
    assert events[-1]["event"] == "tiles" and events[-1]["done"] == events[-1]["total"] == 4
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(tiling.RestoreCancelled):
        nd.restore(image, tiny2x, lazy=False, tile=32, halo=8, cancel=cancel)


def test_restore_rejects_bad_options(tiny2x):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="tile must be a multiple of 32"):
        nd.restore(np.zeros((32, 32)), tiny2x, tile=40)
    with pytest.raises(ValidationError, match="tilesize"):
        nd.restore(np.zeros((32, 32)), tiny2x, tilesize=32)
    with pytest.raises(ValueError, match="must end with YX"):
        nd.restore(np.zeros((2, 32, 32)), tiny2x, axes="YXZ")


def test_check_input_and_lr_consistency_facade():
    import numpy as np

    import napari_decrappify as nd
    from napari_decrappify.config import ArchConfig, NormConfig
    from napari_decrappify.models import build_model
    from napari_decrappify.samples import synthetic_em

    m = build_model(ArchConfig(encoder="tiny", scale=2), seed=0, measure_rf=False,
                    norm=NormConfig(mode="percentile", low=0, high=255, input_levels=(0.2, 0.8)))
    m.config.pixel_size_nm = [4.0, 4.0]
    em = synthetic_em((1, 64, 64), seed=0)[0]
    report = nd.check_input(em, m, axes="YX")
    assert set(report) == {"normalisation", "input_range", "pixel_size", "domain"}
    assert report["pixel_size"]["action"] == "none"  # no pixel size: assumed, and said
    restored = nd.restore(em, m, axes="YX", lazy=False, tile=64, halo=16)
    res = nd.lr_consistency(restored, em, m, with_map=True)
    assert np.isfinite(res["psnr"]) and res["map"].shape == em.shape
