"""``decrappify bench generalisation``: 4x models on held-out EM that does not look like their
training data, beside bicubic.

The project may train only on CREMI (docs/data.md), so the cross-domain check is built from
CREMI planes 20-24, which no model trains, tunes or selects on, under acquisitions other than the
training one: the benchmark's own (4x block mean, Poisson(u * 255) / 255 + N(0, 0.01)), a low
dose (60 photons), a blurred beam (Gaussian PSF, sigma 1.5 HR pixels), another histogram (HR
intensities ** 0.6: a brighter, flatter detector response; scored against that HR), half the
contrast (HR * 0.5 + 0.25, same photons: half the signal-to-noise ratio), and another pixel size
(HR = 2x block mean, 8 nm; LR 32 nm; 100 photons: ``bench adaptation``'s data). The 8 nm input is
restored under both pixel-size policies: ``resample`` (the default: the input is resampled to the
model's 16 nm grid and the result back to 8 nm, unless the model was trained over pixel sizes
that include 32 nm inputs, when it is used as it is) and ``warn`` (as it is).

Every input goes through :func:`napari_decrappify.tiling.restore_image` with its pixel size, as
the dock and the CLI restore it (percentile normalisation, domain check); the output is clipped
to [0, 1] and scored per plane (PSNR, SSIM, ``data_range=1``) against the scenario's HR.
"""

from __future__ import annotations

import numpy as np

from . import benchmark

# name: (HR transform, downsampling factor of the 4 nm HR before the 4x, photons, blur sigma)
SCENARIOS = {
    "CREMI, benchmark noise (photons 255)": ("none", 1, 255.0, 0.0),
    "low dose (photons 60)": ("none", 1, 60.0, 0.0),
    "blurred (PSF sigma 1.5 HR px)": ("none", 1, 255.0, 1.5),
    "another histogram (gamma 0.6)": ("gamma", 1, 255.0, 0.0),
    "half contrast": ("contrast", 1, 255.0, 0.0),
    "8 nm pixels, photons 100": ("none", 2, 100.0, 0.0),
}


def scenario_pair(hr_stack: np.ndarray, name: str, seed: int = 0):
    """(HR, LR, HR pixel size in nm) of one scenario on held-out CREMI planes, in [0, 1]."""
    from ..crappify import crop_to_multiple, downsample
    from ..samples import CREMI_TEST_PLANES as TEST_PLANES
    from .trust import degrade

    transform, factor, photons, sigma = SCENARIOS[name]
    hr = hr_stack[list(TEST_PLANES)].astype(np.float32) / 255
    if factor > 1:
        hr = downsample(hr, factor, "mean")
    hr = crop_to_multiple(hr, 4)
    if transform == "gamma":
        hr = (hr ** 0.6).astype(np.float32)
    elif transform == "contrast":
        hr = (hr * 0.5 + 0.25).astype(np.float32)
    lr = degrade(hr, 4, "mean", photons, sigma, seed=seed)
    return hr, lr, 4.0 * factor


def _restore(model, lr, nm_lr: float, policy: str):
    from ..io import ImageData
    from ..tiling import restore_image

    image = ImageData(data=lr, axes="ZYX", scale=(40.0, nm_lr, nm_lr), translate=(0.0, 0.0, 0.0),
                      units=("nm", "nm", "nm"))
    result = restore_image(model, image, pixel_size_mismatch=policy)
    return np.clip(np.asarray(result.data), 0, 1), result.metadata


@benchmark("generalisation")
def bench_generalisation(models: str = "em-4x", seed: str = "0") -> dict:
    """Gain over bicubic of 4x models on shifted acquisitions of held-out CREMI planes.

    Options (``-o key=value``): ``models`` (comma-separated names or folders; e.g. the bundled
    em-4x beside an earlier one), ``seed`` (noise).
    """
    from ..metrics import bicubic_upsample, evaluate
    from ..models import load_model
    from ..samples import load_sample

    hr_stack, _ = load_sample("cremi")
    loaded = [(spec.strip(), load_model(spec.strip())) for spec in models.split(",") if spec.strip()]
    rows = []
    for name in SCENARIOS:
        hr, lr, nm = scenario_pair(hr_stack, name, int(seed))
        bic = evaluate(np.clip(bicubic_upsample(lr, 4), 0, 1), hr)
        rows.append({"scenario": name, "restorer": "bicubic", "psnr": bic["psnr"],
                     "ssim": bic["ssim"], "gain_db": 0.0, "gain_ssim": 0.0})
        policies = ("resample", "warn") if nm != 4.0 else ("resample",)
        for spec, model in loaded:
            for policy in policies:
                out, meta = _restore(model, lr, nm * 4, policy)
                res = evaluate(out, hr)
                # what the policy did: a model trained over pixel sizes takes this one as it is
                how = {"resample": "resampled", "warn": "as it is", "none": "as it is"}[
                    meta["pixel_size"]["action"]]
                label = spec if len(policies) == 1 else f"{spec} (policy {policy}: {how})"
                rows.append({"scenario": name, "restorer": label, "model": spec,
                             "policy": policy, "psnr": res["psnr"], "ssim": res["ssim"],
                             "gain_db": res["psnr"] - bic["psnr"],
                             "gain_ssim": res["ssim"] - bic["ssim"],
                             "out_of_domain": meta["domain"]["in_domain"] is False,
                             "findings": meta["domain"].get("findings", [])})
    summary = [{"scenario": r["scenario"], "restorer": r["restorer"],
                "PSNR / SSIM": f"{r['psnr']:.2f} dB / {r['ssim']:.3f}",
                "vs bicubic": "" if r["restorer"] == "bicubic"
                else f"{r['gain_db']:+.2f} dB / {r['gain_ssim']:+.3f}",
                "out-of-domain warning": "" if r["restorer"] == "bicubic"
                else ("fires" if r["out_of_domain"] else "silent")}
               for r in rows]
    training = {spec: {"command": (m.config.training or {}).get("command"),
                       "augment": ((m.config.training or {}).get("config") or {}).get("augment")}
                for spec, m in loaded}
    return {"protocol": __doc__.strip(), "summary": summary, "results": rows,
            "models": training}
