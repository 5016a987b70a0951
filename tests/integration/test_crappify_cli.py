"""`decrappify crappify`: lazy, plane-chunked, deterministic, with the LR geometry."""

import numpy as np
import pytest
import tifffile

from napari_decrappify import cli
from napari_decrappify.config import CrappifyConfig
from napari_decrappify.crappify import Crappifier, crappify_file, plane_rng
from napari_decrappify.io import open_image
from napari_decrappify.samples import synthetic_em


@pytest.fixture
def hr_tif(tmp_path):
    hr = synthetic_em((4, 66, 64), seed=1)
    path = tmp_path / "hr.tif"
    tifffile.imwrite(path, hr, metadata={"axes": "ZYX"})
    return path, hr


def test_tiff_to_ome_zarr_matches_the_crappifier_plane_by_plane(hr_tif, tmp_path, capsys):
    path, hr = hr_tif
    out = tmp_path / "lr.zarr"
    code = cli.main(["crappify", str(path), str(out), "--scale", "2", "--photons", "100",
                     "--read-noise", "0.02", "--blur", "0.8", "--salt-pepper", "0.001",
                     "--seed", "7", "--pixel-size", "40", "4", "4", "--units", "nm", "nm", "nm",
                     "--dtype", "float32", "--quiet"])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    lr = open_image(out)
    assert lr.axes == "ZYX" and lr.data.shape == (4, 33, 32) and lr.data.dtype == np.float32
    assert lr.scale == (40, 8, 8) and lr.translate == (0, 2, 2)
    config = CrappifyConfig(scale=2, photons=100, read_noise=0.02, blur_sigma=0.8, salt_pepper=0.001)
    for z in range(4):
        expected = Crappifier(config)(hr[z], seed=plane_rng(7, (z,)))
        np.testing.assert_array_equal(np.asarray(lr.data[z]), expected)


def test_by_default_the_lr_keeps_the_inputs_dtype_and_intensity_scale(hr_tif, tmp_path):
    """Float [0, 1] was the default: restored with any model trained on uint8 data (all the
    bundled ones) it came out as garbage (5.9 dB) with exit 0. A faster acquisition on the same
    detector records the same units."""
    path, hr = hr_tif
    out = tmp_path / "lr.tif"
    assert cli.main(["crappify", str(path), str(out), "--scale", "2", "--seed", "7",
                     "--quiet"]) == 0
    lr = open_image(out)
    assert hr.dtype == np.uint8 and lr.data.dtype == np.uint8
    expected = Crappifier(CrappifyConfig(scale=2))(hr[0], seed=plane_rng(7, (0,)))
    np.testing.assert_array_equal(np.asarray(lr.data[0]), np.rint(expected * 255))


def test_result_does_not_depend_on_threads_or_batches(hr_tif, tmp_path):
    path, _ = hr_tif
    config = CrappifyConfig(scale=4, photons=50)
    a = crappify_file(path, tmp_path / "a.zarr", config, seed=3)
    # a different input chunking (numpy, whole) and plane batching through the progress path
    b = crappify_file(tifffile.imread(path), tmp_path / "b.tif", config, seed=3, axes="ZYX",
                      progress=lambda ev: None)
    np.testing.assert_array_equal(np.asarray(open_image(a["out"]).data),
                                  np.asarray(open_image(b["out"]).data))


def test_tiff_output_and_integer_dtype(hr_tif, tmp_path):
    path, hr = hr_tif
    out = tmp_path / "lr.tif"
    assert cli.main(["crappify", str(path), str(out), "--scale", "3", "--photons", "0",
                     "--read-noise", "0", "--dtype", "input", "--quiet"]) == 0
    lr = tifffile.imread(out)
    assert lr.dtype == np.uint8 and lr.shape == (4, 22, 21)
    block = hr[:, :66, :63].reshape(4, 22, 3, 21, 3).mean(axis=(2, 4))
    np.testing.assert_array_equal(lr, np.rint(block).astype(np.uint8))  # no noise: block mean


def test_4d_stack(tmp_path):
    hr = synthetic_em((2, 3, 32, 32), seed=2)
    src = tmp_path / "tz.tif"
    tifffile.imwrite(src, hr, metadata={"axes": "TZYX"})
    info = crappify_file(src, tmp_path / "lr.zarr", CrappifyConfig(scale=2), seed=1)
    assert info["axes"] == "TZYX" and info["shape"] == (2, 3, 16, 16)
    got = np.asarray(open_image(info["out"]).data)
    np.testing.assert_array_equal(got[1, 2], Crappifier(CrappifyConfig(scale=2))(
        hr[1, 2], seed=plane_rng(1, (1, 2))))


def test_overwrite_and_bad_input(hr_tif, tmp_path, capsys):
    path, _ = hr_tif
    out = tmp_path / "lr.zarr"
    args = ["crappify", str(path), str(out), "--scale", "2", "--quiet"]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(args) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite"]) == 0
    for bad, message in [(["--scale", "2.5"], "integer factor 1..8, got 2.5"),
                         (["--scale", "9"], "integer factor 1..8, got 9"),
                         (["--scale", "2", "--axes", "YXZ"], "must end with YX"),
                         (["--scale", "2", "--axes", "TZYX"], "name 4 dimensions but the image has 3"),
                         (["--scale", "128"], "integer factor")]:
        capsys.readouterr()
        code = cli.main(["crappify", str(path), str(tmp_path / "x.zarr"), *bad, "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and message in err, err
        assert not (tmp_path / "x.zarr").exists()
    capsys.readouterr()
    assert cli.main(["crappify", str(tmp_path / "missing.tif"), str(out), "--scale", "2"]) == 1
    assert "does not exist" in capsys.readouterr().err
    tiny = tmp_path / "tiny.tif"
    tifffile.imwrite(tiny, np.zeros((2, 3, 3), np.uint8))
    assert cli.main(["crappify", str(tiny), str(tmp_path / "t.zarr"), "--scale", "4"]) == 1
    assert "smaller than the scale 4" in capsys.readouterr().err


def test_interrupted_write_is_resumed_by_the_same_command(hr_tif, tmp_path):
    import threading

    from napari_decrappify.io import RestoreCancelled

    path, _ = hr_tif
    config = CrappifyConfig(scale=2, photons=30, read_noise=0.05)
    out = tmp_path / "lr.zarr"
    cancel = threading.Event()
    events = []

    def progress(ev):
        events.append(ev)
        cancel.set()  # stop after the first chunk

    with pytest.raises(RestoreCancelled):
        crappify_file(path, out, config, seed=2, progress=progress, cancel=cancel)
    assert events and events[0]["done"] < events[0]["total"]
    with pytest.raises(ValueError, match="unfinished"):
        open_image(out)  # an interrupted result never looks complete
    # another seed is another computation: not resumed into the same store
    with pytest.raises(FileExistsError, match="different computation"):
        crappify_file(path, out, config, seed=3)
    resumed = []
    crappify_file(path, out, config, seed=2, progress=resumed.append)
    assert resumed[-1]["done"] == resumed[-1]["total"]
    crappify_file(path, tmp_path / "ref.zarr", config, seed=2)
    np.testing.assert_array_equal(np.asarray(open_image(out).data),
                                  np.asarray(open_image(tmp_path / "ref.zarr").data))
