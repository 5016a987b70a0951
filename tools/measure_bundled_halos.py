"""Measure the tolerance halo of each bundled model and record it in its ``model.json``.

:func:`napari_decrappify.engine.halo.measure_halo` on the CREMI validation planes 18 and 19
(never trained on; the test planes 20-24 stay unseen), degraded as the models see them (the
DATA.md protocol: block mean by the scale, Poisson + read noise, seed 0), in the model's input
units, centre-cropped to 160 x 160 LR px (em-4x's whole LR plane; 64 px tiles: 9 tiles, 4
seams, per plane and halo). A multi-frame model gets the planes 17-20 as one stack (its neighbours). Only
``halo_px`` and ``halo_measurement`` are written, after ``alignment``; every other key, and the
weights, stay as they are. Run from the repository root::

    .venv/bin/python tools/measure_bundled_halos.py [em-4x ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from napari_decrappify.bench.quality import protocol_pairs
from napari_decrappify.engine.halo import TRAINED_CROP, centre_crop, measure_halo
from napari_decrappify.models import ModelFile, load_model
from napari_decrappify.samples import load_sample

ZOO = Path(__file__).resolve().parents[1] / "napari_decrappify" / "zoo"
VALIDATION_PLANES = (18, 19)


CROP = TRAINED_CROP  # LR px per side (160): em-4x's whole plane (156); larger LR planes are
# centre-cropped, as a trained model's measurement is


def _centre(a: np.ndarray) -> np.ndarray:
    return centre_crop(a, CROP)


def measurement_images(model, stack: np.ndarray) -> list[np.ndarray]:
    n = model.config.norm
    if model.frames > 1:
        lr, _ = protocol_pairs(stack, model.scale, noisy=True, planes=range(17, 21))
        return [_centre(lr * (n.high - n.low) + n.low).astype(np.float32)]
    lr, _ = protocol_pairs(stack, model.scale, noisy=True, planes=VALIDATION_PLANES)
    return [_centre(p * (n.high - n.low) + n.low).astype(np.float32) for p in lr]


def record(folder: Path, stack: np.ndarray) -> dict:
    path = folder / "model.json"
    doc = json.loads(path.read_text())
    model = load_model(folder)
    planes = "17-20 (one stack)" if model.frames > 1 else "18, 19"
    planes += f", LR centre {CROP} x {CROP} px"
    result = measure_halo(model, measurement_images(model, stack),
                          source=f"CREMI planes {planes} (validation), DATA.md noisy LR, seed 0")
    result["halo_measurement"]["weights_sha256"] = doc["weights_sha256"]
    out = {}
    for k, v in doc.items():
        if k in ("halo_px", "halo_measurement"):
            continue
        out[k] = v
        if k == "alignment":
            out.update(result)
    ModelFile.model_validate(out)  # the schema takes it
    path.write_text(json.dumps(out, indent=2) + "\n")  # as convert_bundled_models.py writes
    load_model(folder)  # still loads, weights unchanged
    return result


def main(names: list[str]) -> None:
    stack, _ = load_sample("cremi")
    for folder in sorted(ZOO.iterdir()):
        if names and folder.name not in names:
            continue
        r = record(folder, stack)
        errs = {h: "not run" if e is None else f"{e:.1e}"
                for h, e in r["halo_measurement"]["max_abs_diff"].items()}
        print(f"{folder.name}: halo {r['halo_px']} (receptive field "
              f"{r['halo_measurement']['receptive_field']}); max abs diff by halo {errs}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
