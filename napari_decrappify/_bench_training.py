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

from ._bench_quality import TEST_PLANES
from .bench import benchmark

TRAIN_PLANES = list(range(18))
VALID_PLANES = [18, 19]
# DATA.md's peer baseline on the same protocol (PSSR2 ResUNet, pssr 2.4.0, 600 s, 2 CPU threads)
PEER_BASELINE = {"name": "PSSR2 ResUNet (pssr 2.4.0), 600 s, DATA.md", "psnr": 25.34, "ssim": 0.692}


@benchmark("training")
def bench_training(minutes: str = "10", scale: str = "4", encoders: str = "resnet18s",
                   frames: str = "1", loss: str = "l1", lr_max: str = "", patch: str = "",
                   batch: str = "", seed: str = "0", precision: str = "auto",
                   device: str = "auto", out: str = "") -> dict:
    """Train for ``minutes`` of wall clock with the default recipe, then score held-out planes.

    Options (``-o key=value``): ``minutes`` (10, per encoder), ``scale`` (4), ``encoders``
    ("resnet18s"; several, comma-separated, train one after another at the same budget: the
    figure is their side-by-side comparison), ``frames`` (1), ``loss`` (l1), ``lr_max``,
    ``patch`` (LR px) and ``batch`` (the TrainConfig defaults: 3e-3, 64, 8), ``seed``,
    ``precision`` / ``device`` (auto), ``out`` (keep the trained models in this folder, one
    sub-folder per encoder; by default they are removed).
    """
    from ._bench_quality import protocol_pairs
    from .metrics import bicubic_upsample, evaluate
    from .samples import load_sample

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
    rows = [_train_and_score(hr_stack, lr, hr, clean_lr, bic, config, out=out)
            for config in recipes]
    return {
        "summary": summary_rows(rows, bic, scale=s),
        "protocol": {"sample": "cremi", "scale": s, "noisy": True, "train_planes": TRAIN_PLANES,
                     "valid_planes": VALID_PLANES, "test_planes": list(TEST_PLANES),
                     "minutes_per_encoder": float(minutes)},
        "bicubic": {"psnr": bic["psnr"], "ssim": bic["ssim"], "n_planes": bic["n_planes"]},
        "results": rows,
        **({"peer_baseline": PEER_BASELINE} if s == 4 else {}),
    }


def _recipe(encoder: str, *, minutes: float, scale: int, frames: int, loss: str, lr_max: str,
            patch: str, batch: str, seed: int, precision: str, device: str):
    """The default training recipe for ``encoder``, with the benchmark's overrides."""
    from .config import ArchConfig, CrappifyConfig, TrainConfig

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


def _train_and_score(hr_stack, lr, hr, clean_lr, bic, config, *, out: str) -> dict:
    from ._bench_quality import score_model
    from .train import train

    encoder = config.arch.encoder
    with tempfile.TemporaryDirectory(prefix="decrappify-bench-") as tmp:
        folder = f"{out}/{encoder}" if out else f"{tmp}/{encoder}"
        result = train([hr_stack], config, out=folder, name=f"bench-{encoder}",
                       command="decrappify bench training")
    model = result.model
    res = score_model(model, lr, hr, clean_lr=clean_lr)
    record = model.config.training
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
                     "valid_psnr": model.config.metrics.get("valid_psnr")},
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
