"""``decrappify bench training``: train under a fixed wall-clock budget, score on held-out planes.

The equal-budget protocol of ../shared/DATA.md ("peer baseline"): CREMI ssTEM 4x with noise,
train planes 0-17 (the blank plane 14 is skipped), validation 18-19, test 20-24 scored by
``bench quality``'s protocol beside bicubic on the same noisy LR. The recipe is this package's
default (:class:`~napari_decrappify.config.TrainConfig`: resnet18s on the LR grid, L1, one-cycle
at 3e-3, 64 px LR patches, batch 8) with the bundled models' noise range, so the benchmark
answers "what does ``decrappify train`` give in M minutes on this machine?".

It is also the regression check for anything that changes training (initialisation, data,
losses, precision): a unit test cannot see that a change trains 0.3 dB worse, or diverges at the
peak learning rate after 400 iterations, and this benchmark does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

from ..samples import CREMI_TEST_PLANES as TEST_PLANES
from ..samples import CREMI_TRAIN_PLANES as TRAIN_PLANES
from ..samples import CREMI_VALID_PLANES as VALID_PLANES
from . import benchmark

# DATA.md's peer baseline on the same protocol (PSSR2 ResUNet, pssr 2.4.0, 600 s, 2 CPU threads)
PEER_BASELINE = {"name": "PSSR2 ResUNet (pssr 2.4.0), 600 s, DATA.md", "psnr": 25.34, "ssim": 0.692}


@benchmark("training")
def bench_training(minutes: str = "10", scale: str = "4", encoders: str = "resnet18s",
                   frames: str = "1", loss: str = "l1", lr_max: str = "", patch: str = "",
                   batch: str = "", seed: str = "0", precision: str = "auto",
                   device: str = "auto", out: str = "", recipe: str = "user") -> dict:
    """Train for ``minutes`` of wall clock with the default recipe, then score held-out planes.

    ``recipe=user`` (default): exactly the command a user types, through the CLI, on a TIFF of
    CREMI planes 0-17 without the blank plane 14 (uint8, no metadata): ``decrappify train --hr
    cremi_planes.tif --scale S --out DIR --minutes M`` (plus ``--encoder`` and the options
    given here); its own validation split, noise and iterations per epoch. ``recipe=bundled``:
    the bundled models' recipe through the API (planes 18-19 for validation, the noise range
    180-360 photons / 0.005-0.015 read noise, 200 iterations per epoch).

    Options (``-o key=value``): ``minutes`` (10, per encoder), ``scale`` (4), ``encoders``
    ("resnet18s"; several, comma-separated, train one after another at the same budget: the
    figure is their side-by-side comparison), ``frames`` (1), ``loss`` (l1), ``lr_max``,
    ``patch`` (LR px) and ``batch`` (the TrainConfig defaults: 3e-3, 64, 8), ``seed``,
    ``precision`` / ``device`` (auto), ``out`` (keep the trained models in this folder, one
    sub-folder per encoder; by default they are removed).
    """
    from ..metrics import bicubic_upsample, evaluate
    from ..samples import load_sample
    from .quality import protocol_pairs

    s = int(scale)
    # every recipe is checked before the first one trains: a typo in the second encoder threw
    # away the first one's whole budget
    recipes = [_recipe(e, minutes=float(minutes), scale=s, frames=int(frames), loss=loss,
                       lr_max=lr_max, patch=patch, batch=batch, seed=int(seed),
                       precision=precision, device=device)
               for e in filter(None, (x.strip() for x in encoders.split(",")))]
    if not recipes:
        raise ValueError(f"encoders={encoders!r} names no encoder (e.g. -o encoders=resnet18s)")
    hr_stack, _meta = load_sample("cremi")
    lr, hr = protocol_pairs(hr_stack, s, True)
    clean_lr, _ = protocol_pairs(hr_stack, s, False)
    bic = evaluate(bicubic_upsample(lr, s), hr)
    if recipe not in ("user", "bundled"):
        raise ValueError(f"recipe={recipe!r}: user or bundled")
    train_fn = _train_user_command if recipe == "user" else _train_api
    options = {"lr_max": lr_max, "patch": patch, "batch": batch, "seed": seed,
               "precision": precision, "device": device, "loss": loss, "frames": frames}
    rows = [_train_and_score(hr_stack, lr, hr, clean_lr, bic, config, out=out,
                             train_fn=lambda folder, c=config: train_fn(hr_stack, c, folder, options))
            for config in recipes]
    return {
        "summary": summary_rows(rows, bic, scale=s),
        "protocol": {"sample": "cremi", "scale": s, "noisy": True, "recipe": recipe,
                     "train_planes": TRAIN_PLANES,
                     "valid_planes": VALID_PLANES, "test_planes": list(TEST_PLANES),
                     "minutes_per_encoder": float(minutes)},
        "bicubic": {"psnr": bic["psnr"], "ssim": bic["ssim"], "n_planes": bic["n_planes"]},
        "results": rows,
        **({"peer_baseline": PEER_BASELINE} if s == 4 else {}),
    }


def _recipe(encoder: str, *, minutes: float, scale: int, frames: int, loss: str, lr_max: str,
            patch: str, batch: str, seed: int, precision: str, device: str):
    """The default training recipe for ``encoder``, with the benchmark's overrides."""
    from ..config import ArchConfig, CrappifyConfig, TrainConfig

    return TrainConfig(
        scale=scale, arch=ArchConfig(encoder=encoder, scale=scale, frames=frames),
        # the bundled models' noise range, which brackets the test noise (255 photons, 0.01)
        crappify=CrappifyConfig(scale=scale, photons=(180.0, 360.0), read_noise=(0.005, 0.015)),
        loss=loss, minutes=minutes, epochs=None, iterations_per_epoch=200,
        seed=seed, precision=precision, device=device,
        train_planes=TRAIN_PLANES, valid_planes=VALID_PLANES,
        **({"lr_max": float(lr_max)} if lr_max else {}),
        **({"patch_size": int(patch)} if patch else {}),
        **({"batch_size": int(batch)} if batch else {}),
    )


def _train_api(hr_stack, config, folder: str, options: dict):
    """The bundled models' recipe through :func:`napari_decrappify.train.train`."""
    from ..train import train

    return train([hr_stack], config, out=folder, name=f"bench-{config.arch.encoder}",
                 command="decrappify bench training").model


def _train_user_command(hr_stack, config, folder: str, options: dict):
    """``decrappify train`` exactly as a user types it, on a TIFF of planes 0-17 (not 14)."""
    import numpy as np
    import tifffile

    from .. import cli
    from ..data import blank_planes
    from ..models import load_model

    planes = [p for p in TRAIN_PLANES if p not in blank_planes(hr_stack[TRAIN_PLANES])]
    tif = Path(f"{folder}.hr.tif")
    tif.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(tif, np.ascontiguousarray(hr_stack[planes]))
    argv = ["train", "--hr", str(tif), "--scale", str(config.scale), "--out", folder,
            "--minutes", f"{config.minutes:g}", "--encoder", config.arch.encoder, "--quiet"]
    for key, flag in (("lr_max", "--lr-max"), ("patch", "--patch"), ("batch", "--batch"),
                      ("loss", "--loss"), ("frames", "--frames"), ("seed", "--seed"),
                      ("precision", "--precision"), ("device", "--device")):
        default = {"loss": "l1", "frames": "1", "seed": "0", "precision": "auto",
                   "device": "auto"}.get(key, "")
        if options.get(key) not in (None, "", default):
            argv += [flag, str(options[key])]
    code = cli.main(argv)
    if code not in (0, 1):  # 1: diverged for good, its best weights saved (reported)
        raise RuntimeError(f"decrappify {' '.join(argv)} failed (exit {code})")
    return load_model(folder)


def _train_and_score(hr_stack, lr, hr, clean_lr, bic, config, *, out: str, train_fn) -> dict:
    from .quality import score_model

    encoder = config.arch.encoder
    with tempfile.TemporaryDirectory(prefix="decrappify-bench-") as tmp:
        folder = f"{out}/{encoder}" if out else f"{tmp}/{encoder}"
        model = train_fn(folder)
    record = model.config.training  # the run's record, whichever way it trained
    result = SimpleNamespace(seconds=record["seconds"], iterations=record["iterations"],
                             stop_reason=record["stop_reason"])

    res = score_model(model, lr, hr, clean_lr=clean_lr)
    gain = (res["psnr"] - bic["psnr"], res["ssim"] - bic["ssim"])
    return {
        "encoder": encoder,
        "recipe": config.model_dump(mode="json"),
        "training": {"seconds": result.seconds, "iterations": result.iterations,
                     "seconds_per_iteration": result.seconds / max(result.iterations, 1),
                     "epochs": record.get("epochs_run"), "best_epoch": record.get("best_epoch"),
                     "stop_reason": result.stop_reason, "hardware": record.get("hardware"),
                     "precision": record.get("precision"),
                     "parameters": sum(p.numel() for p in model.net.parameters()),
                     "valid_psnr": model.config.metrics.get("valid_psnr"),
                     "recoveries": record.get("recoveries", []),
                     "command": record.get("command")},
        "model": {"psnr": res["psnr"], "ssim": res["ssim"], "lr_psnr": res["lr_psnr"],
                  "seconds_per_plane": res["seconds_per_plane"],
                  # numbered as in the sample (20..24), not 0..4 in the test stack
                  "per_plane": [{**p, "plane": TEST_PLANES[p["plane"]]} for p in res["planes"]]},
        "gain_over_bicubic": {"psnr_db": gain[0], "ssim": gain[1]},
    }


def summary_rows(rows: list[dict], bic: dict, scale: int = 4) -> list[dict]:
    """One table row per encoder, then bicubic and (at 4x, the scale it was measured at)
    DATA.md's peer baseline for reference."""
    out = []
    for r in rows:
        t, m, g = r["training"], r["model"], r["gain_over_bicubic"]
        out.append({
            "model": f"{r['encoder']} ({t['parameters'] / 1e6:.1f} M parameters), "
                     f"patch {r['recipe']['patch_size']}, batch {r['recipe']['batch_size']}",
            "iterations": t["iterations"], "s / iteration": round(t["seconds_per_iteration"], 3),
            "stopped": t["stop_reason"],
            "test PSNR / SSIM": f"{m['psnr']:.2f} dB / {m['ssim']:.3f}",
            "vs bicubic": f"{g['psnr_db']:+.2f} dB / {g['ssim']:+.3f}",
            "LR-grid PSNR": f"{m['lr_psnr']:.2f} dB"})
    out.append({"model": "bicubic (same LR)",
                "test PSNR / SSIM": f"{bic['psnr']:.2f} dB / {bic['ssim']:.3f}"})
    if scale == 4:
        out.append({"model": PEER_BASELINE["name"], "test PSNR / SSIM":
                    f"{PEER_BASELINE['psnr']:.2f} dB / {PEER_BASELINE['ssim']:.3f}"})
    return out
