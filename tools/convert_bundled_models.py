"""Convert the bundled models (trained on CREMI uint8 with a fixed 0..255 range) to
data-following normalisation and record their pixel size and training-input statistics
(the out-of-domain check's reference), without retraining.

For each model, the network inputs it was trained on are rebuilt exactly as its training run
built them (its recorded TrainConfig: planes, crappifier, patch size, frames), and their 1st /
99.8th percentiles in network units are recorded as ``norm.input_levels`` with
``norm.mode = "percentile"``; ``pixel_size_nm`` becomes CREMI's HR pixel size (Y, X). The
weights are untouched (their sha256 stays). Run from the repository root::

    .venv/bin/python tools/convert_bundled_models.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_decrappify.config import NormConfig, TrainConfig
from napari_decrappify.samples import load_sample
from napari_decrappify.train import _crappified_datasets

ZOO = Path(__file__).resolve().parents[1] / "napari_decrappify" / "zoo"


def convert(folder: Path, hr: np.ndarray, pixel_size_nm: list[float]) -> dict:
    path = folder / "model.json"
    doc = json.loads(path.read_text())
    config = TrainConfig.model_validate({**doc["training"]["config"], "normalisation": "percentile"})
    arch = config.arch.model_copy(update={"scale": config.scale})
    norm, *_, domain = _crappified_datasets([hr], config, arch, 0, 8, 8)
    old = NormConfig.model_validate(doc["norm"])
    if (norm.low, norm.high) != (old.low, old.high):
        raise SystemExit(f"{folder.name}: training range {norm.low}..{norm.high} differs from the "
                         f"model's {old.low}..{old.high}")
    doc["norm"] = json.loads(norm.model_dump_json())
    doc["pixel_size_nm"] = pixel_size_nm
    doc = {**{k: v for k, v in doc.items() if k != "training" and k != "metrics" and k != "versions"
              and k != "weights_sha256" and k != "weights_dtype"},
           "domain": domain, **{k: doc[k] for k in ("training", "metrics", "versions",
                                                    "weights_sha256", "weights_dtype") if k in doc}}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return {"model": folder.name, "input_levels": norm.input_levels, "domain": domain}


def main() -> None:
    hr, meta = load_sample("cremi")
    pixel_size = [float(v) for v in meta.pixel_size_nm[-2:]]  # Y, X of the HR (z: 40 nm)
    for folder in sorted(p for p in ZOO.iterdir() if (p / "model.json").is_file()):
        print(convert(folder, hr, pixel_size))


if __name__ == "__main__":
    main()
