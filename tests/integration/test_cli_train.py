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
                     "--batch", "4", "--quiet"])
    assert code == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"]["scale"] == 2 and meta["training"]["iterations"] > 0
    assert meta["training"]["data_fingerprint"]
    model = load_model(out)
    y = model.predict_plane(model.normalize(hr[0, ::2, ::2])[None])
    assert y.shape == (1, 128, 128) and np.isfinite(y).all()
    monkeypatch.setenv("DECRAPPIFY_MODELS", str(tmp_path))
    assert cli.main(["models"]) == 0
    assert "m " in capsys.readouterr().out
