"""End to end: train a tiny model from the CLI, list it, load it back."""

import json

import numpy as np
import tifffile

from napari_decrappify import cli
from napari_decrappify.models import load_model
from napari_decrappify.samples import synthetic_em


def test_cli_train_writes_a_loadable_model(tmp_path, monkeypatch, capsys):
    hr = synthetic_em((5, 128, 128), seed=3)
    tifffile.imwrite(tmp_path / "hr.tif", hr)
    out = tmp_path / "m"
    code = cli.main(["train", "--hr", str(tmp_path / "hr.tif"), "--scale", "2", "--out", str(out),
                     "--epochs", "2", "--iters", "5", "--encoder", "tiny", "--patch", "32",
                     "--batch", "4", "--any-offset", "--quiet"])
    assert code == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["config"]["any_offset"] is True
    assert meta["arch"]["scale"] == 2 and meta["training"]["iterations"] > 0
    assert meta["training"]["data_fingerprint"]
    # the halo measured on saving is said (why saving took a few seconds after the budget)
    said = capsys.readouterr().out
    assert f"tiling halo {meta['halo_px']} px (receptive field {meta['receptive_field']})" in said
    model = load_model(out)
    y = model.predict_plane(model.normalize(hr[0, ::2, ::2])[None])
    assert y.shape == (1, 128, 128) and np.isfinite(y).all()
    monkeypatch.setenv("DECRAPPIFY_MODELS", str(tmp_path))
    assert cli.main(["models"]) == 0
    assert "m " in capsys.readouterr().out


def test_cli_train_records_the_augmentation_and_its_domain_span(tmp_path):
    hr = synthetic_em((5, 128, 128), seed=3)
    tifffile.imwrite(tmp_path / "hr.tif", hr)
    out = tmp_path / "m"
    code = cli.main(["train", "--hr", str(tmp_path / "hr.tif"), "--scale", "2", "--out", str(out),
                     "--epochs", "1", "--iters", "3", "--encoder", "tiny", "--patch", "32",
                     "--batch", "4", "--augment", "general", "--zoom", "0.8", "1.25",
                     "--blur", "0", "1", "--quiet"])
    assert code == 0
    meta = json.loads((out / "model.json").read_text())
    config = meta["training"]["config"]
    assert config["augment"] == {"zoom": [0.8, 1.25], "gamma": [0.7, 1.4],
                                 "contrast": [0.7, 1.3], "brightness": [-0.1, 0.1]}
    assert config["crappify"]["blur_sigma"] == [0.0, 1.0]
    spans = meta["domain"]["spans"]
    assert spans["groups"] == 16 and spans["noise"][0] < meta["domain"]["noise"] * 1.5
    assert spans["slope"][0] <= spans["slope"][1]
    # every model also records the spread over its training planes (4 planes: 8 groups, cycled)
    spread = meta["domain"]["spread"]
    assert spread["groups"] == 8 and spread["noise"][0] <= spread["noise"][1]


def test_cli_evaluate_writes_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gt = (rng.random((2, 32, 32)) * 255).astype(np.uint8)
    pred = np.clip(gt.astype(int) + 5, 0, 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    assert cli.main(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif"),
                     "--json", str(tmp_path / "m.json")]) == 0
    res = json.loads((tmp_path / "m.json").read_text())
    from napari_decrappify.metrics import psnr

    expected = np.mean([psnr(p / 255, g / 255) for p, g in zip(pred, gt, strict=True)])
    assert res["n_planes"] == 2 and abs(res["psnr"] - expected) < 1e-6
    assert "mean over 2" in capsys.readouterr().out
