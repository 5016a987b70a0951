"""``decrappify bench adaptation``: a bundled model as it is, fine-tuned, or trained from scratch
for "your own microscope", at equal CPU budgets.

The project has no EM from another microscope that it may train on (docs/data.md), so "your
microscope" is CREMI at another pixel size and noise, as a user with an 8 nm instrument would
have it: HR = CREMI planes block-averaged 2x (8 nm pixels), LR = 4x block mean of that (32 nm)
with Poisson(u * ``photons``) / ``photons`` + N(0, 0.01) noise. The user's HR is planes 0-17
(not the blank 14); the held-out test is planes 20-24, scored beside bicubic on the same LR.

Each arm is the command a user types, through the CLI: fine-tuning ``decrappify train --hr
mine.tif --scale 4 --resume em-4x --minutes M --photons P --pixel-size 8`` and from scratch the
same without ``--resume``. The bundled model as it is restores through the product's pixel-size
check (it expects 16 nm inputs: the 32 nm LR is resampled to its grid and back).

Caveat: the same specimen and microscope as the bundled models' training data, at another pixel
size and noise: a kinder test than another lab's EM.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from . import benchmark


def _pairs(hr_stack, photons: float, seed: int = 0):
    """(HR at 8 nm in [0, 1], LR at 32 nm) for every plane, one generator in plane order."""
    from ..crappify import crop_to_multiple, downsample

    hr = crop_to_multiple(downsample(hr_stack.astype(np.float32) / 255, 2, "mean"), 4)
    rng = np.random.default_rng(seed)
    lr = np.stack([np.clip(rng.poisson(p.astype(np.float64) * photons) / photons
                           + rng.normal(0, 0.01, p.shape), 0, 1).astype(np.float32)
                   for p in downsample(hr, 4, "mean")])
    return hr, lr


def _score(model, lr, hr, nm: float) -> dict:
    """The restoration's test scores, as a user restores (``decrappify restore``) and with
    ``--tta`` (the mean over the 8 flips and rotations)."""
    from ..config import TileConfig
    from ..io import ImageData
    from ..metrics import evaluate
    from ..tiling import restore_image

    img = ImageData(data=lr, axes="ZYX", scale=(40.0, nm, nm), translate=(0.0, 0.0, 0.0),
                    units=("nm", "nm", "nm"))
    result = restore_image(model, img)
    res = evaluate(np.clip(np.asarray(result.data), 0, 1), hr)
    tta = evaluate(np.clip(np.asarray(restore_image(model, img, TileConfig(tta=True)).data),
                           0, 1), hr)
    return {"psnr": res["psnr"], "ssim": res["ssim"],
            "tta_psnr": tta["psnr"], "tta_ssim": tta["ssim"],
            "pixel_size": result.metadata["pixel_size"]["action"],
            "out_of_domain": result.metadata["domain"]["in_domain"] is False}


@benchmark("adaptation")
def bench_adaptation(budgets: str = "2,5,10", model: str = "em-4x", photons: str = "100",
                     out: str = "", arms: str = "fine-tuned,from scratch", lr_max: str = "") -> dict:
    """Bundled as it is vs fine-tuned vs from scratch, per budget (CPU minutes).

    Options (``-o key=value``): ``budgets`` ("2,5,10"), ``model`` (the 4x model to start
    from), ``photons`` (100), ``out`` (keep the trained models here), ``arms`` (which of
    "fine-tuned,from scratch" to train), ``lr_max`` (peak learning rate of the fine-tunes, as
    ``--lr-max``; empty: the CLI's fine-tune default, which is how the default was chosen).
    """
    import tifffile

    from .. import cli
    from ..data import blank_planes
    from ..metrics import bicubic_upsample, evaluate
    from ..models import load_model
    from ..samples import CREMI_TEST_PLANES as TEST_PLANES
    from ..samples import CREMI_TRAIN_PLANES as TRAIN_PLANES
    from ..samples import load_sample

    minutes = [float(b) for b in budgets.split(",") if b.strip()]
    chosen = [a.strip() for a in arms.split(",") if a.strip()]
    if not chosen or set(chosen) - {"fine-tuned", "from scratch"}:
        raise ValueError(f"arms={arms!r}: 'fine-tuned' and/or 'from scratch', comma-separated")
    tune = ["--resume", model] + (["--lr-max", lr_max] if lr_max else [])
    if not minutes or any(not 0 < m < 1e4 for m in minutes):
        raise ValueError(f"budgets={budgets!r}: minutes > 0, comma-separated")
    hr_stack, _ = load_sample("cremi")
    hr, lr = _pairs(hr_stack, float(photons))
    test = list(TEST_PLANES)
    bic = evaluate(np.clip(bicubic_upsample(lr[test], 4), 0, 1), hr[test])
    start = load_model(model)
    rows = [{"arm": f"{model} as it is", "minutes": 0, **_score(start, lr[test], hr[test], 32.0)}]
    keep = [p for p in TRAIN_PLANES if p not in blank_planes(hr_stack[TRAIN_PLANES])]
    with tempfile.TemporaryDirectory(prefix="decrappify-adapt-") as tmp:
        root = Path(out or tmp)
        root.mkdir(parents=True, exist_ok=True)
        tif = root / "mine-8nm.tif"  # the user's HR: float [0, 1], 8 nm, no other metadata
        tifffile.imwrite(tif, hr[keep])
        for m in minutes:
            for arm, extra in (("fine-tuned", tune), ("from scratch", [])):
                if arm not in chosen:
                    continue
                folder = root / f"{arm.replace(' ', '-')}-{m:g}min"
                argv = ["train", "--hr", str(tif), "--scale", "4", "--out", str(folder),
                        "--minutes", f"{m:g}", "--photons", photons, "--pixel-size", "8",
                        "--quiet", *extra]
                code = cli.main(argv)
                if code not in (0, 1):
                    raise RuntimeError(f"decrappify {' '.join(argv)} failed (exit {code})")
                trained = load_model(folder)
                record = trained.config.training
                rows.append({"arm": arm, "minutes": m, "iterations": record["iterations"],
                             "stop_reason": record["stop_reason"],
                             "recoveries": len(record.get("recoveries", [])),
                             "command": record["command"],
                             **_score(trained, lr[test], hr[test], 32.0)})
    for r in rows:
        r["gain_db"] = r["psnr"] - bic["psnr"]
        r["gain_ssim"] = r["ssim"] - bic["ssim"]
        r["tta_gain_db"] = r["tta_psnr"] - bic["psnr"]
    summary = [{"arm": r["arm"], "CPU minutes": r["minutes"],
                "test PSNR / SSIM": f"{r['psnr']:.2f} dB / {r['ssim']:.3f}",
                "vs bicubic": f"{r['gain_db']:+.2f} dB / {r['gain_ssim']:+.3f}",
                "with --tta": f"{r['tta_psnr']:.2f} dB / {r['tta_ssim']:.3f} "
                              f"({r['tta_gain_db']:+.2f} dB)",
                "iterations": r.get("iterations", ""),
                "out-of-domain warning": "fires" if r["out_of_domain"] else "silent"}
               for r in rows]
    summary.append({"arm": "bicubic (same LR)",
                    "test PSNR / SSIM": f"{bic['psnr']:.2f} dB / {bic['ssim']:.3f}"})
    return {"protocol": __doc__.strip(), "summary": summary, "results": rows,
            "bicubic": {"psnr": bic["psnr"], "ssim": bic["ssim"]}}
