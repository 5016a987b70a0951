"""``decrappify bench trust``: how far the checks without ground truth can be trusted.

On held-out CREMI planes 20-24 (never trained on), LR inputs are made under several
degradations: the benchmark's own (4x block mean, Poisson(u * 255) / 255 + N(0, 0.01)), other
photon counts, no noise, a blurred acquisition, bicubic instead of block-mean downsampling, and
another pixel size (8x block mean: 32 nm pixels given to a 16 nm model). Each input is restored
by each model (and bicubic), then scored twice per plane: against the HR (PSNR: the truth) and
by the LR consistency (no HR: :mod:`napari_decrappify.consistency`). Besides bicubic and the
models, two broken restorations the check should expose: the first model with the fixed 0..255
intensity range it had before data-following normalisation (on this [0, 1] input: the old bug),
and an untrained network of the same architecture.

Reported: Spearman's rho between the consistency PSNR and the true PSNR over all (restorer,
degradation, plane) triples, within each input (ranking the restorers of one plane), and the
same without bicubic (which reproduces its input's noise, so it is "consistent" by
construction); and the
out-of-domain check (:mod:`napari_decrappify.domain`) per degradation and on fluorescence
samples: whether it fires (it should not on the benchmark's own degradation).
"""

from __future__ import annotations

import numpy as np

from . import benchmark

DEGRADATIONS = {
    # name: (downsampling factor, method, photons (None: no noise), blur sigma in HR pixels)
    "benchmark noise (photons 255)": (4, "mean", 255.0, 0.0),
    "photons 50": (4, "mean", 50.0, 0.0),
    "photons 1000": (4, "mean", 1000.0, 0.0),
    "no noise": (4, "mean", None, 0.0),
    "blurred (sigma 2 HR px)": (4, "mean", 255.0, 2.0),
    "bicubic downsampling": (4, "bicubic", 255.0, 0.0),
    "32 nm pixels (8x) for a 16 nm model": (8, "mean", 255.0, 0.0),
}


def degrade(hr: np.ndarray, factor: int, method: str, photons, sigma: float, seed: int = 0):
    """LR planes from [0, 1] HR planes (one generator over the planes in order)."""
    from ..crappify import blur, downsample

    rng = np.random.default_rng(seed)
    out = []
    for plane in hr:
        lr = downsample(blur(plane, sigma) if sigma else plane, factor, method)
        if photons is not None:
            lr = rng.poisson(lr.astype(np.float64) * photons) / photons + rng.normal(0, 0.01, lr.shape)
        out.append(np.clip(lr, 0, 1).astype(np.float32))
    return np.stack(out)


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@benchmark("trust")
def bench_trust(models: str = "em-4x,em-4x-z3", seed: str = "0") -> dict:
    """LR consistency vs true PSNR, and the out-of-domain check, on shifted inputs.

    Options (``-o key=value``): ``models`` (4x models, comma-separated; bicubic is always a
    restorer too), ``seed`` (noise).
    """
    from ..consistency import lr_consistency, model_degradation
    from ..crappify import crop_to_multiple, downsample
    from ..domain import check
    from ..metrics import bicubic_upsample, evaluate
    from ..models import load_model
    from ..normalization import input_range
    from ..samples import CREMI_TEST_PLANES as TEST_PLANES
    from ..samples import load_sample
    from ..tiling import restore

    hr_stack, _ = load_sample("cremi")
    hr = crop_to_multiple(hr_stack[list(TEST_PLANES)].astype(np.float32) / 255, 8)
    from ..config import NormConfig
    from ..models import build_model

    loaded = [load_model(m) for m in filter(None, models.split(","))]
    broken = {}
    if loaded:
        first = loaded[0]
        fixed = load_model(first.path)
        fixed.config.norm = NormConfig(low=0.0, high=255.0)
        fixed.config.name = f"{first.name}, fixed 0..255 range (the old bug)"
        untrained = build_model(first.config.arch, name="untrained", norm=first.config.norm,
                                seed=0, measure_rf=False)
        untrained.config.receptive_field = first.receptive_field
        broken = {fixed.config.name: fixed, "untrained network": untrained}
    rows, domain = [], []
    for name, (factor, method, photons, sigma) in DEGRADATIONS.items():
        lr = degrade(hr, factor, method, photons, sigma, int(seed))
        # the truth on the grid a 4x restoration lands on (the 8x input: half the HR's pixels)
        truth = hr if factor == 4 else downsample(hr, factor // 4, "mean")
        outputs = {"bicubic": np.clip(bicubic_upsample(lr, 4), 0, 1)}
        for label, m in broken.items():
            outputs[label] = restore(m, lr, axes="ZYX")
        for m in loaded:
            outputs[m.name] = restore(m, lr, axes="ZYX")
            d = check(m, lr, "ZYX", input_range(m.config.norm, lr))
            domain.append({"degradation": name, "model": m.name, "fires": d["in_domain"] is False,
                           "findings": d["findings"]})
        for restorer, out in outputs.items():
            deg = model_degradation(loaded[0]) if loaded else {"scale": 4, "method": "mean",
                                                               "blur_sigma": 0.0}
            true = evaluate(np.clip(out, 0, 1), truth)["planes"]
            cons = lr_consistency(out, lr, **deg)["planes"]
            for t, c in zip(true, cons, strict=True):
                rows.append({"degradation": name, "restorer": restorer,
                             "plane": TEST_PLANES[t["plane"]], "true_psnr": t["psnr"],
                             "consistency_psnr": c["psnr"], "consistency_ssim": c["ssim"]})
    for key in ("huh7", "nuclei2d", "nuclei3d"):
        data, _ = load_sample(key)
        data = np.asarray(data)
        axes = "ZYX" if data.ndim == 3 else "YX"
        for m in loaded:
            d = check(m, data, axes, input_range(m.config.norm, data))
            domain.append({"degradation": f"fluorescence sample {key}", "model": m.name,
                           "fires": d["in_domain"] is False, "findings": d["findings"]})
    overall = _spearman([r["consistency_psnr"] for r in rows], [r["true_psnr"] for r in rows])
    def within(keep) -> float | None:
        rhos = []
        for name in DEGRADATIONS:
            for plane in TEST_PLANES:
                sel = [r for r in rows if r["degradation"] == name and r["plane"] == plane
                       and keep(r)]
                if len(sel) > 2:
                    rhos.append(_spearman([r["consistency_psnr"] for r in sel],
                                          [r["true_psnr"] for r in sel]))
        return round(float(np.nanmean(rhos)), 3) if rhos else None

    no_bicubic = [r for r in rows if r["restorer"] != "bicubic"]
    by_degradation = {}
    for name in DEGRADATIONS:
        sel = [r for r in rows if r["degradation"] == name]
        by_degradation[name] = {
            restorer: {k: float(np.mean([r[k] for r in sel if r["restorer"] == restorer]))
                       for k in ("true_psnr", "consistency_psnr")}
            for restorer in dict.fromkeys(r["restorer"] for r in sel)}
    rho = {
        "spearman_rho_all": round(overall, 3),
        "spearman_rho_within_input_mean": within(lambda r: True),
        "spearman_rho_all_without_bicubic": round(_spearman(
            [r["consistency_psnr"] for r in no_bicubic], [r["true_psnr"] for r in no_bicubic]), 3),
        "spearman_rho_within_input_without_bicubic": within(lambda r: r["restorer"] != "bicubic"),
    }
    # one row per input kind: true / consistency PSNR per restorer, and whether the check fired
    summary = []
    for name in list(DEGRADATIONS) + sorted({d["degradation"] for d in domain} - set(DEGRADATIONS)):
        row = {"input": name}
        for restorer, v in by_degradation.get(name, {}).items():
            row[f"{restorer}: true / consistency dB"] = \
                f"{v['true_psnr']:.2f} / {v['consistency_psnr']:.2f}"
        for d in domain:
            if d["degradation"] == name:
                row[f"out of domain ({d['model']})"] = "fires" if d["fires"] else "silent"
        summary.append(row)
    notes = (f"Spearman's rho, consistency vs true PSNR: {rho['spearman_rho_all']} over all "
             f"(restorer, input, plane); {rho['spearman_rho_within_input_mean']} ranking the "
             f"restorers of one plane (mean over planes); without bicubic (which keeps its input's "
             f"noise, so it reproduces its input best by construction): "
             f"{rho['spearman_rho_all_without_bicubic']} and "
             f"{rho['spearman_rho_within_input_without_bicubic']}.")
    return {"protocol": __doc__.strip(), "planes": list(TEST_PLANES), "summary": summary,
            "notes": notes, "rho": rho,
            "by_degradation": by_degradation, "domain": domain, "rows": rows}
