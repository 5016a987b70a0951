"""The user's own data through the CLI: any intensity units, pixel sizes, and the report.

Real CREMI planes restored with the bundled em-4x (a 96 x 96 LR crop of held-out plane 20, so
each restore takes a second or two)."""

import json

import numpy as np
import pytest
import tifffile

from napari_decrappify import cli
from napari_decrappify.crappify import protocol_lr
from napari_decrappify.io import open_image, upscale_geometry, write_tiff
from napari_decrappify.metrics import bicubic_upsample, evaluate

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def pair(cremi):
    data, _ = cremi
    hr = data[20, 100:484, 100:484].astype(np.float32) / 255  # 384^2 HR, 4 nm
    lr = protocol_lr(hr, 4, noisy=True, seed=0)  # 96^2, float [0, 1] like demo-output/lr.tif
    return lr, hr


def restore(tmp_path, lr, name, *extra, px=16.0, code=0):
    src, out = tmp_path / f"{name}.tif", tmp_path / f"{name}-out.tif"
    write_tiff(src, lr, axes="YX", scale=(px, px), units=("nm", "nm"), overwrite=True)
    assert cli.main(["restore", "em-4x", str(src), str(out), "--quiet", *extra]) == code
    return out


def test_float_uint16_and_uint8_versions_restore_alike_and_beat_bicubic(pair, tmp_path):
    """The demo's own float [0, 1] lr.tif was restored to black noise (5.79 dB) by em-4x,
    whose fixed 0..255 range read it as almost black."""
    lr, hr = pair
    versions = {"float": (lr, 1.0), "uint16": (np.round(lr * 65535).astype(np.uint16), 65535.0),
                "uint8": (np.round(lr * 255).astype(np.uint8), 255.0)}
    outs = {}
    for name, (data, factor) in versions.items():
        outs[name] = np.asarray(open_image(restore(tmp_path, data, name)).data) / factor
    bic = evaluate(bicubic_upsample(lr, 4), hr)["psnr"]
    score = evaluate(outs["float"], hr)["psnr"]
    assert score > bic + 0.5, (score, bic)
    assert np.abs(outs["uint16"] - outs["float"]).max() < 2e-3
    assert np.abs(outs["uint8"] - outs["float"]).mean() < 2e-3  # uint8 rounding of the input


def test_a_pixel_size_mismatch_is_resampled_with_exact_geometry(pair, tmp_path):
    lr, _ = pair
    # em-4x was trained over 8-32 nm inputs (zoom augmentation): 8 nm is taken as it is...
    restore(tmp_path, lr, "within", "--report", str(tmp_path / "w.json"), px=8.0)
    within = json.loads((tmp_path / "w.json").read_text())["pixel_size"]
    assert within["action"] == "none" and "trained over (8-32 nm inputs)" in within["message"]
    # ...4 nm (4x finer than it expects) is resampled to its grid and back
    out = restore(tmp_path, lr, "fine", "--report", str(tmp_path / "r.json"), px=4.0)
    img = open_image(out)
    scale, translate = upscale_geometry((4.0, 4.0), (0.0, 0.0), "YX", 4)
    assert img.data.shape == (384, 384)
    assert img.scale == pytest.approx(scale) and img.translate == pytest.approx(translate)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pixel_size"]["action"] == "resample"
    assert report["pixel_size"]["factor"] == [0.25, 0.25]
    assert report["lr_consistency"]["n_planes"] == 1


def test_the_report_says_what_was_done_and_found(pair, tmp_path):
    lr, _ = pair
    restore(tmp_path, lr, "ok", "--report", str(tmp_path / "ok.json"))
    ok = json.loads((tmp_path / "ok.json").read_text())
    assert ok["pixel_size"]["action"] == "none" and "matches" in ok["pixel_size"]["message"]
    assert ok["domain"]["in_domain"] is True, ok["domain"]["findings"]
    assert "percentiles" in ok["normalisation"]
    assert 20 < ok["lr_consistency"]["psnr"] < 40
    # an existing report is not replaced without --overwrite, before any work
    restore(tmp_path, lr, "ok2", "--report", str(tmp_path / "ok.json"), code=1)
    assert not (tmp_path / "ok2-out.tif").exists()


def test_a_mismatch_can_be_an_error_or_a_warning(pair, tmp_path, capsys):
    lr, _ = pair
    restore(tmp_path, lr, "err", "--pixel-size-mismatch", "error", px=4.0, code=1)
    err = capsys.readouterr().err
    assert "input pixel size 4 nm, but 'em-4x' was trained for 16 nm inputs" in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    out = restore(tmp_path, lr, "warn", "--pixel-size-mismatch", "warn", px=4.0)
    assert "⚠" in capsys.readouterr().err
    assert tifffile.imread(out).shape == (384, 384)
