"""``decrappify bench quality``: restoration quality vs bicubic on held-out real EM planes.

Protocol of ../shared/DATA.md: CREMI ssTEM, [0, 1] intensities (uint8 / 255), Y/X cropped to a
multiple of the scale, LR = block mean by the scale; "noisy" adds ``Poisson(u * 255) / 255 +
N(0, 0.01)`` with one ``default_rng(seed)`` drawn over the test planes in order, clipped. PSNR and
SSIM (``data_range=1``) per plane against the clean HR, averaged over the non-blank test planes.
The bicubic baseline is computed in the same run on the same LR. A multi-frame model (``frames``
> 1, neighbouring z planes as channels) takes its neighbours from the same noisy test stack,
reflected at its ends (plane 20 sees 21 on both sides), so it never sees a training plane.

Two diagnostics say where the remaining error is (noisy rows, scale > 1): ``bicubic_clean_lr``
is bicubic on the *noise-free* LR (what perfect denoising followed by bicubic would score), and
``lr_psnr`` is the PSNR, on the LR grid against the noise-free LR, of the noisy input (bicubic
row) and of the block mean of the model's output (model row): how much noise the model removed.
"""

from __future__ import annotations

import time

import numpy as np

from ..crappify import crop_to_multiple, protocol_lr
from ..metrics import bicubic_upsample, evaluate, unit_range
from ..samples import CREMI_TEST_PLANES as TEST_PLANES  # the held-out planes 20-24
from . import benchmark, option_true

# the bundled models scored per scale (a scale may have several: one row each)
DEFAULT_MODELS = {1: ("em-denoise",), 2: ("em-2x",), 4: ("em-4x", "em-4x-z3")}


def protocol_pairs(hr_stack: np.ndarray, scale: int, noisy: bool, planes=TEST_PLANES,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR) test stacks in [0, 1] by the DATA.md protocol (one rng over the planes in order):
    uint8 / 255, other dtypes by the stack's global 0.1/99.9 percentiles, clipped. Each plane is
    degraded by :func:`~napari_decrappify.crappify.protocol_lr`."""
    rng = np.random.default_rng(seed)
    # not to_unit: a uint16 stack using a tenth of its range would land in [0, 0.1], where the
    # Poisson(u * 255) noise and data_range=1 lose their meaning (bicubic 35.7 dB for 20.6)
    hr = crop_to_multiple(unit_range(hr_stack[list(planes)], reference=hr_stack), scale)
    # one generator passed on from plane to plane: the noise of the whole test stack is one
    # draw in plane order, as the published figures were made (not one seed per plane)
    return np.stack([protocol_lr(plane, scale, noisy, rng) for plane in hr]), hr


def score_model(model, lr: np.ndarray, hr: np.ndarray, tile_options: dict | None = None,
                clean_lr: np.ndarray | None = None) -> dict:
    """Restore ``lr`` (in [0, 1]) with ``model`` through the tiled engine and score vs ``hr``.

    With ``clean_lr`` (the noise-free LR), ``lr_psnr`` is also returned: the block mean of the
    output against it, i.e. how well the model removed the noise on the LR grid.
    """
    from ..config import TileConfig
    from ..tiling import restore

    # the model normalises its input; [0, 1] data is put back in the model's input units first
    n = model.config.norm
    lr_units = lr * (n.high - n.low) + n.low
    t0 = time.perf_counter()
    out = restore(model, lr_units, TileConfig(**(tile_options or {})), axes="ZYX")
    seconds = time.perf_counter() - t0
    pred = (np.asarray(out) - n.low) / (n.high - n.low)
    res = evaluate(pred, hr)
    res["seconds_per_plane"] = seconds / len(lr)
    if clean_lr is not None:
        res["lr_psnr"] = _lr_psnr(pred, clean_lr, model.scale)
    return res


def _lr_psnr(image: np.ndarray, clean_lr: np.ndarray, scale: int) -> float:
    """Mean per-plane PSNR of ``image`` brought to the LR grid (block mean) vs ``clean_lr``."""
    from ..crappify import downsample
    from ..metrics import psnr

    if image.shape[-1] != clean_lr.shape[-1]:
        image = np.stack([downsample(np.asarray(p, np.float32), scale, "mean") for p in image])
    return float(np.mean([psnr(p, c) for p, c in zip(image, clean_lr, strict=True)
                          if c.std() > 0]))


@benchmark("quality")
def bench_quality(scales: str = "1,2,4", noisy: str = "true", models: str = "", seed: str = "0",
                  sample: str = "cremi", tta: str = "false", precision: str = "auto") -> dict:
    """Model vs bicubic PSNR/SSIM on held-out planes, per scale, side by side.

    Options (``-o key=value``): ``scales`` ("1,2,4"), ``noisy`` (true/false/both), ``models``
    ("4=em-4x,4=/path/to/model,2=em-2x": which models restore which scale, one row each;
    defaults to the bundled em-denoise / em-2x / em-4x and em-4x-z3), ``seed``, ``tta`` (true:
    the model with test-time augmentation as well; both are reported), ``precision`` (auto:
    fp32 on CPU, bf16/fp16 on CUDA; ``bf16`` measures what the faster CPU inference costs).
    """
    from ..models import ModelFileError, load_model
    from ..samples import load_sample

    hr_stack, meta = load_sample(sample)
    chosen = {k: list(v) for k, v in DEFAULT_MODELS.items()}
    given: dict[int, list[str]] = {}
    for part in filter(None, models.split(",")):
        k, v = part.split("=", 1)
        given.setdefault(int(k), []).append(v)
    chosen.update(given)  # "4=a,4=b": both restore 4x, in place of the defaults for 4x
    noise_modes = {"true": [True], "false": [False], "both": [False, True]}[noisy.lower()]
    rows = []
    for scale in [int(s) for s in scales.split(",")]:
        for is_noisy in noise_modes:
            if scale == 1 and not is_noisy:
                continue  # nothing to restore
            lr, hr = protocol_pairs(hr_stack, scale, is_noisy, seed=int(seed))
            bic = evaluate(bicubic_upsample(lr, scale), hr)
            bic_row = {"psnr": bic["psnr"], "ssim": bic["ssim"], "n_planes": bic["n_planes"]}
            clean_lr = None
            if is_noisy and scale > 1:
                clean_lr, _ = protocol_pairs(hr_stack, scale, False)
                headroom = evaluate(bicubic_upsample(clean_lr, scale), hr)
                bic_row["bicubic_clean_lr"] = {"psnr": headroom["psnr"], "ssim": headroom["ssim"]}
                bic_row["lr_psnr"] = _lr_psnr(lr, clean_lr, scale)
            for name in chosen.get(scale) or [None]:
                row = {"scale": scale, "noisy": is_noisy, "planes": list(TEST_PLANES),
                       "bicubic": dict(bic_row)}
                rows.append(row)
                try:
                    model = load_model(name) if name else None
                except ModelFileError as e:
                    model = None
                    row["model_error"] = str(e).splitlines()[0]
                if model is None:
                    continue
                if model.scale != scale:
                    raise ValueError(f"model {name} is {model.scale}x, asked to restore {scale}x")
                # a multi-frame model takes its neighbours from the same noisy test stack
                # (reflected at its ends): it never sees a training or validation plane
                res = score_model(model, lr, hr, {"precision": precision}, clean_lr=clean_lr)
                row["model"] = {"name": model.name, "hash": model.weights_hash,
                                "frames": model.frames, "precision": precision,
                                "psnr": res["psnr"], "ssim": res["ssim"],
                                "seconds_per_plane": res["seconds_per_plane"],
                                # numbered as in the sample (20..24), not 0..4 in the test stack
                                "per_plane": [{**p, "plane": TEST_PLANES[p["plane"]]}
                                              for p in res["planes"]]}
                if "lr_psnr" in res:
                    row["model"]["lr_psnr"] = res["lr_psnr"]
                row["gain"] = {"psnr_db": res["psnr"] - bic["psnr"],
                               "ssim": res["ssim"] - bic["ssim"]}
                if option_true(tta):
                    res = score_model(model, lr, hr, {"tta": True, "precision": precision})
                    row["model_tta"] = {"psnr": res["psnr"], "ssim": res["ssim"],
                                        "seconds_per_plane": res["seconds_per_plane"]}
    summary = [
        {k: v for k, v in {
            "scale": r["scale"], "noisy": r["noisy"],
            "bicubic": f"{r['bicubic']['psnr']:.2f} dB / {r['bicubic']['ssim']:.3f}",
            "model": (f"{r['model']['name']}{_frames(r['model'])}: {r['model']['psnr']:.2f} dB / "
                      f"{r['model']['ssim']:.3f}" if "model" in r else
                      r.get("model_error", "no model for this scale")),
            "gain": (f"{r['gain']['psnr_db']:+.2f} dB / {r['gain']['ssim']:+.3f}" if "gain" in r else None),
            "model + TTA": (f"{r['model_tta']['psnr']:.2f} dB / {r['model_tta']['ssim']:.3f} "
                            f"({r['model_tta']['psnr'] - r['bicubic']['psnr']:+.2f} dB)"
                            if "model_tta" in r else None),
            "bicubic on noise-free LR": (
                f"{r['bicubic']['bicubic_clean_lr']['psnr']:.2f} dB / "
                f"{r['bicubic']['bicubic_clean_lr']['ssim']:.3f}"
                if "bicubic_clean_lr" in r["bicubic"] else None),
            "LR-grid PSNR vs noise-free LR (input -> model)": (
                f"{r['bicubic']['lr_psnr']:.2f} -> {r['model']['lr_psnr']:.2f} dB"
                if "lr_psnr" in r.get("model", {}) else None),
        }.items() if v is not None}
        for r in rows
    ]
    return {"sample": sample, "pixel_size_nm": list(meta.pixel_size_nm), "protocol": __doc__.strip(),
            "results": rows, "summary": summary}


def _frames(model_row: dict) -> str:
    f = model_row.get("frames", 1)
    return f" ({f} planes in)" if f > 1 else ""
