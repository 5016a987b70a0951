"""The main job end to end, headless part: real EM -> crappified 4x LR -> restored -> metrics.

``decrappify demo`` runs this, then renders napari (see ``_napari/demo_view.py``) with
LR | bicubic | restored | HR side by side and saves a screenshot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .crappify import crop_to_multiple, protocol_lr, to_unit
from .io import downscale_geometry, upscale_geometry
from .metrics import bicubic_upsample, evaluate

AXES = "ZYX"
UNITS = ("nanometer",) * 3


@dataclass
class DemoResult:
    """Arrays (in [0, 1]) and geometry of the four layers, plus metrics and timings."""

    out: Path
    lr: np.ndarray
    bicubic: np.ndarray
    restored: object  # dask array read back from the written OME-Zarr
    hr: np.ndarray
    geometry: dict
    metrics: dict
    timings: dict = field(default_factory=dict)
    model: str = ""


def run_demo(out: str | Path = "demo-output", model_name: str = "em-4x", *, overwrite: bool = True,
             log: Callable[[str], None] = print) -> DemoResult:
    """Crappify the real CREMI ssTEM sample 4x with noise, restore it with ``model_name`` through
    the tiled engine (streamed to OME-Zarr), and score bicubic and restored against the HR.

    Writes ``out/restored.ome.zarr``, ``out/lr.tif`` and ``out/metrics.json``.
    """
    from .io import open_image, write_ome_zarr, write_tiff
    from .models import load_model
    from .samples import CREMI_TEST_PLANES, load_sample
    from .tiling import restore_lazy

    t0 = time.perf_counter()
    # the model first: a wrong name or kind fails before anything is written
    model = load_model(model_name)
    if model.kind != "restoration":
        raise ValueError(f"model {model.name!r} is a {model.kind} model: the demo needs a "
                         f"restoration model (e.g. em-4x)")
    out = Path(out)
    timings = {}
    hr_raw, sample = load_sample("cremi")
    out.mkdir(parents=True, exist_ok=True)
    scale = model.scale
    hr = crop_to_multiple(to_unit(hr_raw), scale)
    lr = np.stack([protocol_lr(p, scale, noisy=True, seed=i) for i, p in enumerate(hr)])
    timings["load_and_crappify_s"] = time.perf_counter() - t0
    log(f"[demo] {sample.title}: HR {hr.shape}, LR {lr.shape} ({scale}x block mean + Poisson/read noise)")

    hr_scale = tuple(sample.pixel_size_nm)
    hr_translate = (0.0, 0.0, 0.0)
    lr_scale, lr_translate = downscale_geometry(hr_scale, hr_translate, AXES, scale)
    up_scale, up_translate = upscale_geometry(lr_scale, lr_translate, AXES, scale)

    t0 = time.perf_counter()
    n = model.config.norm
    lazy = restore_lazy(model, lr * (n.high - n.low) + n.low, axes=AXES)
    store = out / "restored.ome.zarr"
    last = [0.0]

    def progress(ev):
        now = time.monotonic()
        if ev.get("event") in ("tiles", "chunks") and (now - last[0] > 5 or ev["done"] == ev["total"]):
            last[0] = now
            log(f"[demo] restored {ev['done']}/{ev['total']} {ev['event']}")

    write_ome_zarr(store, lazy, axes=AXES, scale=up_scale, translate=up_translate, units=UNITS,
                   overwrite=overwrite, progress=progress, name=f"restored ({model.name})")
    timings["restore_s"] = time.perf_counter() - t0
    restored_img = open_image(store)
    # [0, 1] like the other layers (lazy: napari reads the store as it displays it)
    restored_lazy = (restored_img.data - n.low) / (n.high - n.low)
    restored = np.asarray(restored_lazy)

    t0 = time.perf_counter()
    bicubic = bicubic_upsample(lr, scale)
    timings["bicubic_s"] = time.perf_counter() - t0
    test = list(CREMI_TEST_PLANES)
    metrics = {
        "model": {"name": model.name, "weights_sha256": model.weights_hash, "scale": scale},
        "data": {"sample": sample.key, "source": sample.source, "pixel_size_nm": list(hr_scale),
                 "hr_shape": list(hr.shape), "lr_shape": list(lr.shape),
                 "degradation": f"{scale}x block mean, Poisson(u*255)/255 + N(0, 0.01), seed = plane index"},
        "held_out_planes": test,
        "all_planes": {"bicubic": _short(evaluate(bicubic, hr)), "restored": _short(evaluate(restored, hr))},
        "held_out": {"bicubic": _short(evaluate(bicubic[test], hr[test])),
                     "restored": _short(evaluate(restored[test], hr[test]))},
    }
    metrics["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # an OME-TIFF with its pixel size and origin: opened beside restored.ome.zarr, it overlays
    write_tiff(out / "lr.tif", lr.astype(np.float32), axes=AXES, scale=lr_scale,
               translate=lr_translate, units=UNITS, overwrite=True)
    geometry = {
        "lr": {"scale": lr_scale, "translate": lr_translate},
        "bicubic": {"scale": hr_scale, "translate": hr_translate},
        "restored": {"scale": up_scale, "translate": up_translate},
        "hr": {"scale": hr_scale, "translate": hr_translate},
    }
    return DemoResult(out=out, lr=lr, bicubic=bicubic, restored=restored_lazy, hr=hr,
                      geometry=geometry, metrics=metrics, timings=timings, model=model.name)


def _short(res: dict) -> dict:
    return {"psnr": round(res["psnr"], 3), "ssim": round(res["ssim"], 4), "n_planes": res["n_planes"]}


def metrics_table(metrics: dict) -> str:
    """The short table ``make demo`` prints."""
    lines = [f"{'planes':<22}{'method':<12}{'PSNR (dB)':>10}{'SSIM':>8}"]
    for key, label in (("held_out", "held-out (20-24)"), ("all_planes", "all non-blank")):
        for method in ("bicubic", "restored"):
            r = metrics[key][method]
            lines.append(f"{label:<22}{method:<12}{r['psnr']:>10.2f}{r['ssim']:>8.3f}")
    return "\n".join(lines)
