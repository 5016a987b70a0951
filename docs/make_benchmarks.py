"""Generate docs/benchmarks.md from the JSON that `decrappify bench ... --json` wrote.

    python -m napari_decrappify bench quality --json docs/bench/quality.json
    ...
    python docs/make_benchmarks.py

Only figures found in docs/bench/*.json are reported; nothing is typed in by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCH = HERE / "bench"


def _load(name: str) -> dict | None:
    p = BENCH / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _machine(d: dict) -> str:
    m = d.get("machine", {})
    dev = m.get("cuda") or f"CPU ({m.get('processor', '?')}, {m.get('cpu_count', '?')} cores, " \
                            f"{m.get('torch_threads', '?')} torch threads)"
    return (f"{dev}; torch {m.get('torch', '?')}, fastai {m.get('fastai', '?')}, "
            f"napari-decrappify {m.get('napari_decrappify', '?')}")


def _fmt(v, nd=3):
    if isinstance(v, float):
        # a seam of 8.9e-07 is not "0.000"
        return f"{v:.2g}" if v and abs(v) < 10 ** -nd else f"{v:.{nd}f}"
    return str(v)


def _flat(summary: dict, prefix: str = ""):
    """(key, value) rows of a summary, a nested dict's keys as ``outer.inner`` (one figure per
    row, not a JSON blob in a cell)."""
    for k, v in summary.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _generic(d: dict) -> list[str]:
    """A table of the benchmark's summary (whatever keys it has)."""
    summary = d.get("summary", {})
    lines = []
    if isinstance(summary, list) and summary and isinstance(summary[0], dict):
        keys = list(dict.fromkeys(k for row in summary for k in row))
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---|" * len(keys))
        for row in summary:
            lines.append("| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |")
    elif isinstance(summary, list) and summary:  # lines of text, already laid out
        lines += ["```"] + [str(line) for line in summary] + ["```"]
    elif isinstance(summary, dict):
        lines.append("| figure | value |")
        lines.append("|---|---|")
        for k, v in _flat(summary):
            lines.append(f"| {k} | {_fmt(v) if not isinstance(v, dict | list) else json.dumps(v)} |")
    return lines


SECTIONS = [
    ("quality", "Restoration quality vs bicubic (held-out CREMI planes 20-24)",
     "`decrappify bench quality`: the project's protocol (intensities / 255; LR = block mean "
     "by the scale, + Poisson(u * 255) / 255 + N(0, 0.01) when noisy, one seeded generator over "
     "the planes; PSNR and SSIM with data range 1 per plane), PSNR (dB) / SSIM against the "
     "clean HR, "
     "bicubic computed on the same LR in the same run."),
    ("throughput", "Throughput", "`decrappify bench throughput`: engine output megapixels/s "
     "divided by the raw network rate (same model and tile size, tensors in memory, plain loop)."),
    ("memory", "Memory", "`decrappify bench memory`: peak RSS (the child process's kernel "
     "high-water mark, VmHWM) while restoring a uint8 Zarr stack of growing size into OME-Zarr "
     "with a two-layer CNN (the network's speed is irrelevant to memory)."),
    ("memory-em4x", "Memory restoring with em-4x", "`decrappify bench memory -o model=em-4x`: "
     "the same with the bundled em-4x at the engine's default tiling (1024 px LR planes, 4x "
     "output, uint8, OME-Zarr): the bound is 1.5 GB."),
    ("seams", "Seams", "`decrappify bench seams`: max |tiled - whole-image| in fp32, network "
     "units (real EM restores to about [0, 1]), for tile/halo settings, on a mosaic of real CREMI "
     "planes at the model's input pixel size."),
    ("seams-noise", "Seams on white noise", "`decrappify bench seams -o input=noise`: the same on "
     "uniform noise over the model's whole input range, a stress test outside any training data."),
    ("training", "Training at an equal wall-clock budget (CREMI 4x with noise)",
     "`decrappify bench training`: the default recipe (`decrappify train`'s defaults: LR-grid "
     "U-Net, L1, one-cycle at 3e-3, 64 px LR patches, batch 8; the bundled models' noise range) "
     "trained for the same minutes per encoder on planes 0-17 (validation 18-19), then scored "
     "on planes 20-24 by the quality protocol beside bicubic on the same LR. The peer row is "
     "DATA.md's PSSR2 figure on the same protocol and machine kind. It is also the regression "
     "check for changes to training: a change that trains worse shows here."),
    ("training-user", "The user's default training command, 10 CPU minutes",
     "`decrappify bench training` (recipe=user, the default since the user's path diverged "
     "where the benchmark's own recipe did not): exactly `decrappify train --hr "
     "cremi_planes.tif --scale 4 --out DIR --minutes 10` on a TIFF of CREMI planes 0-17 without "
     "14, through the CLI, auto precision (bf16 on this CPU); scored on planes 20-24 as above."),
    ("training-patch128", "Training at an equal budget: larger patches, same pixels per step",
     "`decrappify bench training -o patch=128 -o batch=2`: as above, with 128 px LR patches in "
     "batches of 2 instead of 64 px patches in batches of 8."),
    ("trust", "Checks without ground truth: LR consistency and the out-of-domain warning",
     "`decrappify bench trust`: held-out CREMI planes 20-24 degraded in 7 ways (the benchmark's "
     "noise, other photon counts, no noise, blur, bicubic downsampling, another pixel size), "
     "restored by bicubic, the models and two broken restorations (the old fixed-range bug, an "
     "untrained network); true PSNR against the HR beside the LR consistency (no HR), and "
     "whether the out-of-domain check fires (also on fluorescence samples)."),
    ("adaptation", "A model for your own microscope: as it is, fine-tuned, from scratch",
     "`decrappify bench adaptation`: CREMI at 8 nm HR pixels (2x block mean) and 32 nm LR with "
     "100-photon noise stands in for another microscope (the project has no other EM it may "
     "train on); planes 0-17 are the user's HR, 20-24 the test. Fine-tuned: `decrappify train "
     "--resume em-4x`; from scratch: the same command without it; each at the same CPU minutes. "
     "The bundled model as it is goes through the pixel-size resampling."),
    ("generalisation", "Data unlike the training data: other doses, blur, histograms, pixel sizes",
     "`decrappify bench generalisation`: held-out CREMI planes 20-24 under acquisitions other "
     "than the training one (the benchmark's own, 60 photons, a blurred beam, gamma 0.6, half the "
     "contrast, 8 nm pixels with 100 photons), restored through the product's path (percentile "
     "normalisation, pixel-size policy: the 8 nm input both resampled and as it is) by the "
     "bundled em-4x, trained with augmentation over pixel size and histogram, beside the em-4x "
     "it replaced, and bicubic."),
    ("napari", "napari never freezes: inspecting a lazy result",
     "`decrappify bench napari`: a 1600 x 1000 napari window under Xvfb replays the inspection "
     "of a lazily restored CREMI LR with em-4x (first display, planes stepped through, a quick "
     "scroll, back to a seen plane) for the plain dask layer (before), the live layer (after) and "
     "an in-memory array (the floor); the UI thread's stalls (gaps of a 10 ms timer) and the "
     "seconds until the plane on screen is fully restored."),
    ("reliability", "Reliability: bad input, bad model files, interruptions, concurrency",
     "`decrappify bench reliability`: the battery of `tests/reliability` (every command against "
     "bad inputs, bad model folders, bad arguments and output paths; kill -9, SIGTERM and full "
     "disks resumed and compared bit for bit; two writers on one output; 8 threads on one model; "
     "memory on a 100 000^2 image), each case sorted into one outcome "
     "([reliability](reliability.md)). The promise: no traceback, no silent wrong result, no "
     "data loss."),
    ("segmentation", "Segmentation counts on LR, restored and HR",
     "`decrappify bench segmentation`: object counts and F1 (IoU >= 0.5) against ground-truth masks."),
]


ZOO = HERE.parent / "napari_decrappify" / "zoo"


def _zoo_section() -> list[str]:
    """The bundled models, from their own ``model.json``: how each was trained, held-out scores."""
    lines = ["## Bundled models", "",
             "From each `napari_decrappify/zoo/*/model.json`: the training runs (a resumed model "
             "lists the earlier run first), the hardware, and the held-out test scores that "
             "`decrappify bench quality` measured (CREMI planes 20-24, noisy, vs bicubic on the "
             "same LR).", "",
             "| model | scale | architecture | loss | training | test PSNR / SSIM | bicubic | gain | size |",
             "|---|---|---|---|---|---|---|---|---|"]
    commands = []
    for cfg in sorted(ZOO.glob("*/model.json")):
        d = json.loads(cfg.read_text())
        t = d.get("training", {})
        runs = list(t.get("resumed_from", [])) + [t]
        seconds = sum(r.get("seconds", 0) for r in runs)
        iters = sum(r.get("iterations", 0) for r in runs)
        test = d.get("metrics", {}).get("test")
        arch = d["arch"]
        size = sum(f.stat().st_size for f in cfg.parent.iterdir()) / 1e6
        score = gain = bic = "not measured"
        if test:
            score = f"{test['psnr']:.2f} dB / {test['ssim']:.3f}"
            bic = f"{test['bicubic_psnr']:.2f} dB / {test['bicubic_ssim']:.3f}"
            gain = (f"{test['psnr'] - test['bicubic_psnr']:+.2f} dB / "
                    f"{test['ssim'] - test['bicubic_ssim']:+.3f}")
        lines.append(
            f"| `{d['name']}` | {arch['scale']}x | {arch['encoder']}, {arch['strategy']}"
            f"{f', {frames} planes in' if (frames := arch.get('frames', 1)) > 1 else ''} | "
            f"{t.get('config', {}).get('loss', '?')} | {seconds / 60:.0f} min, {iters} iterations, "
            f"{t.get('hardware', '?')} | {score} | {bic} | {gain} | {size:.0f} MB |")
        commands += [f"* `{d['name']}`: " + " then ".join(f"`{r['command']}`" for r in runs
                                                        if r.get("command"))]
    return lines + ["", "Training commands:", ""] + commands + [""]


def main() -> int:
    out = ["# Benchmarks", "",
           "Generated by `docs/make_benchmarks.py` from `docs/bench/*.json` (written by "
           "`decrappify bench ... --json`). Figures are ratios or side-by-side comparisons measured "
           "in one run; the machine and versions are stated for each.", ""]
    found = 0
    for name, title, what in SECTIONS:
        d = _load(name)
        out += [f"## {title}", "", what, ""]
        if d is None:
            out += ["*Not measured yet.*", ""]
            continue
        found += 1
        out += [f"Machine: {_machine(d)}.", ""]
        if d.get("command"):
            out += [f"Command: `{d['command']}`", ""]
        out += _generic(d)
        for key in ("notes", "note"):
            if d.get(key):
                out += ["", str(d[key])]
        out.append("")
    out += _zoo_section()
    (HERE / "benchmarks.md").write_text("\n".join(out))
    print(f"wrote docs/benchmarks.md from {found} benchmark files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
