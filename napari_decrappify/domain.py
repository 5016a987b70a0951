"""Out-of-domain check: is this input like what the model was trained on?

At training, a model records statistics of the inputs its network saw (``model.json``:
``domain``), measured on 64 x 64 patches in normalised units, where 0 and 1 are the input's
1st and 99.8th percentiles (so intensity units do not matter):

* ``noise``: the noise level (scikit-image's wavelet ``estimate_sigma``), median over patches;
* ``slope``: the slope of the radially averaged power spectrum (log power vs log frequency,
  0.06-0.45 cycles/pixel): how much fine structure there is per pixel, which moves with the
  pixel size and the modality;
* ``quantiles``: the 5/25/50/75/95th percentiles of the intensities (histogram shape).

One acquisition is not one value: its statistics drift over the stack (on CREMI at 32 nm and
100 photons the slope goes from -0.88 to -0.48 over 25 planes). So training also records each
statistic's range over the training data (``spread``: groups of patches, each from one block of
consecutive training planes, see :func:`training_spans`) and an augmented model the range over
its drawn acquisitions (``spans``). Restoring measures the same on patches of the input (a few
planes, spread over the stack) and :func:`compare` says which fall outside the recorded range
by more than tolerances measured on CREMI (``bench trust``: silent on held-out CREMI planes,
firing on other pixel sizes, noise levels and modalities). A record without ranges (older
models) is one value, judged with the same tolerances. The pixel size itself is checked by
:mod:`napari_decrappify.pixel_size`.
"""

from __future__ import annotations

import numpy as np

from .normalization import WHOLE_PLANE_PIXELS

PATCH = 64
# tolerances beyond the recorded range, from ``decrappify bench trust`` (docs/benchmarks.md):
# held-out CREMI planes under the benchmark's noise stay within 1.03x / 0.02 / 0.010 of the
# training inputs (two noise seeds); the tolerances keep a margin of 3-5x over that and still
# fire on 2x other pixel sizes, 2.5x other photon counts, noise-free inputs and fluorescence.
# Beyond a spread they cover what the spread cannot: the input's sampling error and held-out
# planes further along a drift than any training plane (CREMI at 32 nm: 0.08 in slope past the
# training planes' range at planes 20-24)
NOISE_RATIO = 1.12  # noise level more than 1.12x or less than 1/1.12 of the training inputs'
SLOPE_DIFF = 0.25  # power-spectrum slope (log-log) differs by more than this
QUANTILE_DIFF = 0.05  # a histogram quantile moved by more than this (in 1st..99.8th spans)
FREQ = (0.06, 0.45)


def spectrum_slope(patches: list[np.ndarray]) -> float:
    """Log-log slope of the mean radially averaged power spectrum of equal-sized patches."""
    from .crappify import radial_power_spectrum

    same = [p for p in patches if p.shape == patches[0].shape]
    f, power = radial_power_spectrum(np.stack(same))
    keep = (f >= FREQ[0]) & (f <= FREQ[1]) & (power > 0)
    if keep.sum() < 3:
        return float("nan")
    return float(np.polyfit(np.log(f[keep]), np.log(power[keep]), 1)[0])


def statistics(patches: list[np.ndarray]) -> dict:
    """The domain statistics (module docstring) of 2-D patches in normalised units."""
    from skimage.restoration import estimate_sigma

    patches = [np.asarray(p, np.float64) for p in patches if p.size and np.ptp(p) > 0]
    if not patches:
        raise ValueError("no non-constant patches to measure")
    values = np.concatenate([p.ravel() for p in patches])
    return {"noise": float(np.median([estimate_sigma(p) for p in patches])),
            "slope": spectrum_slope(patches),
            "quantiles": [float(v) for v in np.percentile(values, (5, 25, 50, 75, 95))],
            "patch": PATCH, "n_patches": len(patches)}


def training_statistics(inputs, levels: tuple[float, float]) -> dict:
    """:func:`statistics` of a model's training ``inputs`` (network-unit arrays; centre plane,
    central 64 x 64), in units where the recorded ``levels`` are 0 and 1."""
    l0, l1 = levels
    patches = []
    for x in inputs:
        x = np.asarray(x, np.float64)
        x = x[x.shape[0] // 2] if x.ndim == 3 else x
        h, w = x.shape
        y0, x0 = max(0, (h - PATCH) // 2), max(0, (w - PATCH) // 2)
        patches.append((x[y0:y0 + PATCH, x0:x0 + PATCH] - l0) / (l1 - l0))
    return statistics(patches)


def training_spans(inputs, group: int) -> dict:
    """The range of :func:`training_statistics` over groups of ``group`` consecutive inputs.

    Each group is one sample of what the network saw: one block of consecutive training planes
    (the record's ``spread``: how the statistics drift over the acquisition) or one draw of an
    augmented model's acquisition (``spans``: zoom, histogram, noise, blur). Returns
    ``{"noise": [lo, hi], "slope": [lo, hi], "quantiles": [[lows], [highs]], "groups": n}``.
    Each group is measured in units of its own 1st/99.8th percentiles, as an input is at
    restore time (an offset or a contrast change alone is no shift). An input is in domain when
    its statistics fall inside the ranges (within the tolerances)."""
    from .normalization import input_levels

    groups = [inputs[k:k + group] for k in range(0, len(inputs) - group + 1, group)]
    stats = [training_statistics(g, input_levels(g)) for g in groups]
    slopes = [s["slope"] for s in stats if np.isfinite(s["slope"])]
    q = np.array([s["quantiles"] for s in stats])
    return {"noise": [min(s["noise"] for s in stats), max(s["noise"] for s in stats)],
            "slope": [min(slopes), max(slopes)] if slopes else [float("nan")] * 2,
            "quantiles": [q.min(axis=0).tolist(), q.max(axis=0).tolist()], "groups": len(stats)}


def input_statistics(image, axes: str, input_range: tuple[float, float], max_planes: int = 6,
                     per_plane: int = 48, seed: int = 0) -> dict:
    """:func:`statistics` of an input (numpy or lazy, axes ``axes``), in units where its
    ``input_range`` (its own percentiles) is 0..1: ``per_plane`` random 64 x 64 patches from
    each of up to ``max_planes`` planes spread over the stack (only the patches are read)."""
    from . import planes

    lo, hi = input_range
    span = hi - lo if hi > lo else 1.0
    h, w = image.shape[axes.index("Y")], image.shape[axes.index("X")]
    ph, pw = min(PATCH, h), min(PATCH, w)
    rng = np.random.default_rng(seed)
    # planes up to this size are read once and cut in memory: a lazy plane computed as a whole
    # (a resampled input) was computed again for each of its 48 patches
    whole = h * w <= WHOLE_PLANE_PIXELS  # normalization's bound: one rule for reading planes
    patches = []
    for k, idx in planes.walk(image.shape, axes, max_planes):
        if whole:
            plane = np.asarray(image[idx])
        for y, x in zip(rng.integers(0, h - ph + 1, per_plane), rng.integers(0, w - pw + 1, per_plane),
                        strict=True):
            ys, xs = slice(int(y), int(y) + ph), slice(int(x), int(x) + pw)
            patch = plane[ys, xs] if whole else image[planes.index(image.shape, k, axes, (ys, xs))]
            patches.append((np.asarray(patch, np.float64) - lo) / span)
    return statistics(patches)


def reference_ranges(trained: dict) -> dict:
    """The range of each statistic an input is compared with: the recorded value, widened to
    the training data's ``spread`` and an augmented model's ``spans`` where recorded (older
    records have neither: one value). ``{"noise": (lo, hi), "slope": (lo, hi), "quantiles":
    (lows, highs), "ranged": bool}``."""
    ranges = [r for r in (trained.get("spread"), trained.get("spans")) if r]
    noise = [trained["noise"]] + [v for r in ranges for v in r["noise"]]
    # a NaN slope (too few frequencies) says nothing about the range
    slope = [v for v in [trained["slope"]] + [v for r in ranges for v in r["slope"]]
             if np.isfinite(v)] or [float("nan")]
    q = np.array([trained["quantiles"]] + [row for r in ranges for row in r["quantiles"]])
    return {"noise": (min(noise), max(noise)), "slope": (min(slope), max(slope)),
            "quantiles": (q.min(axis=0), q.max(axis=0)),
            "ranged": min(noise) < max(noise) or min(slope) < max(slope)}


def compare(trained: dict, seen: dict) -> list[str]:
    """What differs between the training inputs' statistics and an input's: one short
    sentence per finding (empty: in domain). A statistic differs when it lies outside the
    training range (:func:`reference_ranges`) by more than its tolerance."""
    out = []
    if not trained or not seen:
        return out
    ref = reference_ranges(trained)
    ranged = ref["ranged"]
    noise_lo, noise_hi = ref["noise"]
    if seen["noise"] > noise_hi * NOISE_RATIO:
        r = seen["noise"] / max(noise_hi, 1e-9)
        out.append(f"noisier than the training data ({r:.2f}x its "
                   f"{'highest ' if ranged else ''}noise level)")
    elif seen["noise"] < noise_lo / NOISE_RATIO:
        r = seen["noise"] / max(noise_lo, 1e-9)
        out.append(f"less noisy than the training data ({r:.2f}x its "
                   f"{'lowest ' if ranged else ''}noise level)")
    slope_lo, slope_hi = ref["slope"]
    d = max(slope_lo - seen["slope"], seen["slope"] - slope_hi)
    if np.isfinite(d) and d > SLOPE_DIFF:
        # not "finer" or "coarser": blur under the same noise flattens the slope too
        seen_range = (f"{slope_lo:.2f}..{slope_hi:.2f}" if slope_hi > slope_lo
                      else f"{slope_lo:.2f}")
        out.append(f"another balance of fine and coarse structure (power-spectrum slope "
                   f"{seen['slope']:.2f} vs {seen_range}: another pixel size, blur, "
                   "signal-to-noise ratio or modality)")
    q_lo, q_hi = ref["quantiles"]
    sq = np.asarray(seen["quantiles"])
    q = np.maximum(q_lo - sq, sq - q_hi)
    if q.max() > QUANTILE_DIFF:
        out.append(f"another intensity distribution (a histogram quantile moved by {q.max():.2f} "
                   "of the 1st..99.8th percentile span)")
    return out


def check(model, image, axes: str, input_range: tuple[float, float] | None) -> dict:
    """The out-of-domain verdict for ``image``: ``{"in_domain", "findings", "message",
    "input", "training"}``. Models without recorded statistics are not checked."""
    trained = model.config.domain
    if not trained or input_range is None:
        return {"in_domain": None, "findings": [], "training": trained or None, "input": None,
                "message": "not checked (the model records no training statistics)"}
    seen = input_statistics(image, axes, input_range)
    findings = compare(trained, seen)
    if findings:
        msg = (f"⚠ this input looks unlike the training data of {model.name!r}: "
               + "; ".join(findings)
               + ". Results may be unreliable: check the LR consistency, and consider "
               "fine-tuning on your own HR data (decrappify train --resume "
               f"{model.name} ...)")
    else:
        msg = f"input statistics within those of the training data of {model.name!r}"
    return {"in_domain": not findings, "findings": findings, "message": msg, "input": seen,
            "training": trained}
