"""``decrappify bench segmentation``: object counts and F1 on LR (bicubic), restored and HR data.

Data: the real 2-D nuclei image with its ground-truth instance masks (``nuclei2d`` and
``nuclei2d-masks``, 512 x 512, 125 nuclei; 2018 Data Science Bowl via the stardist wheel).

Protocol
    * Intensities to [0, 1] by the image's 0.1/99.9 percentiles (../shared/DATA.md).
    * The image is split by rows: the top half (rows 0-255) trains everything, the bottom half
      (rows 256-511) is held out and is where the headline figures are scored. Whole-image
      figures are reported too (they include the training half).
    * Segmenter: :func:`napari_decrappify.segment.train_segmenter` on the HR top half, labels from
      the masks (1 = background, 2 = nucleus), for ``minutes`` of wall clock.
    * LR: 4x block mean + Poisson(u * 255) / 255 + N(0, 0.01), clipped
      (:func:`napari_decrappify.crappify.protocol_lr`, seeded). Sources on the HR grid:
      ``LR-bicubic`` (skimage resize, order 3), ``restored`` (a 4x restoration model through the
      tiled engine), ``HR``.
    * Restorer: ``-o restorer=PATH``, else one trained here with :func:`napari_decrappify.train.train`
      on the HR top half (cut into 128 x 128 planes; the default crappifier is this very
      degradation), L1 loss, ``restore_minutes`` of wall clock. The expert-guided variant is
      the same run with the perceptual loss whose feature encoder is the segmenter's
      (``loss="perceptual", feature_weights=<segmenter folder>``), at the same budget (minutes,
      or iterations with ``restore_epochs``: the perceptual loss costs more per iteration).
    * Every source is segmented by the same model, split into objects (``method``: watershed on
      the distance transform, or connected components; objects under ``min_size`` pixels are
      dropped) and matched one to one with the ground-truth nuclei at IoU >= 0.5.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from . import benchmark, option_true

TRAIN_ROWS = slice(0, 256)
TEST_ROWS = slice(256, 512)


def _tiles(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape
    return np.stack([a[y:y + size, x:x + size] for y in range(0, h - size + 1, size)
                     for x in range(0, w - size + 1, size)])


def _scores(objects: np.ndarray, gt: np.ndarray, rows: slice) -> dict:
    from ..segment import match

    r = match(objects[rows], gt[rows], 0.5)
    keep = ("n_pred", "n_gt", "tp", "fp", "fn", "precision", "recall", "f1", "fp_rate",
            "fn_rate", "count_error", "mean_matched_iou")
    # NaN (no matched object) becomes null: strict JSON
    return {k: (None if isinstance(v, float) and v != v else round(v, 4) if isinstance(v, float)
                else v) for k, v in r.items() if k in keep}


def _train_restorer(hr_planes: np.ndarray, minutes: float, epochs: int, out: Path, encoder: str,
                    seed: int, loss: str = "l1", feature_weights: str | None = None):
    from ..config import ArchConfig, TrainConfig
    from ..train import train

    config = TrainConfig(scale=4, arch=ArchConfig(encoder=encoder, scale=4), loss=loss,
                         feature_weights=feature_weights, patch_size=32, batch_size=8,
                         minutes=None if epochs else minutes, epochs=epochs or None,
                         iterations_per_epoch=50, seed=seed,
                         device="auto")
    res = train([hr_planes], config, out=out, name=out.name,
                command=f"bench segmentation: 4x restorer, loss {loss}")
    info = {"path": str(res.path), "loss": loss, "encoder": encoder, "seconds": round(res.seconds, 1),
            "iterations": res.iterations, "stop_reason": res.stop_reason,
            "valid_psnr": res.model.config.metrics.get("valid_psnr"),
            "trained_on": "HR top half of the same nuclei image (rows 0-255, 8 planes of 128 x 128, "
                          "7 train / 1 validation); scored on the bottom half"}
    if feature_weights:
        info["feature_weights"] = feature_weights
    return res.model, info


@benchmark("segmentation")
def bench_segmentation(minutes: str = "1.5", restore_minutes: str = "3", restorer: str = "",
                       expert: str = "true", method: str = "watershed", min_size: str = "16",
                       seed: str = "0", encoder: str = "tiny", restore_encoder: str = "tiny",
                       seg_epochs: str = "0", restore_epochs: str = "0", seg_patch: str = "64",
                       seg_activation: str = "", out: str = "") -> dict:
    """Counts, TP/FP/FN and F1 at IoU 0.5 of LR-bicubic, restored and HR vs the GT nuclei.

    Options (``-o key=value``): ``minutes`` (segmenter budget), ``restore_minutes`` (each
    restorer's budget), ``seg_epochs`` / ``restore_epochs`` (when > 0: budgets in epochs of
    25 / 50 iterations instead of minutes: equal work whatever else loads the machine),
    ``restorer`` (a 4x model folder/name: skip training one), ``seg_patch`` (segmenter patch
    side, default 64: nuclei are ~20 px across; a full-resolution U-Net step on 8 x 128^2 costs
    ~4x more),
    ``seg_activation`` (relu/leaky_relu: the segmenter's decoder activation; default the one
    ``segment.segmentation_arch`` gives every segmenter),
    ``expert`` (true/false: also train and score the expert-guided restorer), ``method``
    (watershed/cc), ``min_size``, ``seed``, ``encoder`` (segmenter), ``restore_encoder``,
    ``out`` (folder to keep the trained models; default a temporary folder).
    """
    from ..crappify import protocol_lr
    from ..metrics import bicubic_upsample, evaluate, unit_range
    from ..models import load_model
    from ..samples import load_sample
    from ..segment import SegmentConfig, instances, predict, segmentation_arch, train_segmenter
    from ..tiling import restore

    t_start = time.monotonic()
    seed_i, min_size_i = int(seed), int(min_size)
    work = Path(out) if out else Path(tempfile.mkdtemp(prefix="decrappify-bench-seg-"))
    work.mkdir(parents=True, exist_ok=True)
    raw, meta = load_sample("nuclei2d")
    gt, _ = load_sample("nuclei2d-masks")
    gt = np.asarray(gt).astype(np.int32)
    hr = unit_range(np.asarray(raw))  # [0, 1] by the 0.1/99.9 percentiles, clipped
    labels = np.where(gt > 0, 2, 1).astype(np.uint8)

    # segmenter on the HR training half, built as the CLI and the Segment dock build theirs
    seg_arch = segmentation_arch(encoder)
    if seg_activation:
        seg_arch = seg_arch.model_copy(update={"activation": seg_activation})
    seg_cfg = SegmentConfig(arch=seg_arch,
                            minutes=None if int(seg_epochs) else float(minutes),
                            epochs=int(seg_epochs) or None, patch_size=int(seg_patch), batch_size=8,
                            iterations_per_epoch=25, seed=seed_i)
    seg_res = train_segmenter(hr[TRAIN_ROWS], labels[TRAIN_ROWS], ["background", "nucleus"], seg_cfg,
                              out=work / "segmenter", name="nuclei-segmenter",
                              command="bench segmentation")
    segmenter = seg_res.model
    seg_info = {"path": str(seg_res.path), "encoder": encoder, "activation": seg_arch.activation,
                "receptive_field": segmenter.config.receptive_field,
                "seconds": round(seg_res.seconds, 1),
                "iterations": seg_res.iterations, "stop_reason": seg_res.stop_reason,
                "valid_accuracy": segmenter.config.metrics.get("valid_accuracy"),
                "valid_dice": segmenter.config.metrics.get("valid_dice"),
                "trained_on": "HR rows 0-255 with the ground-truth masks as labels "
                              "(1 = background, 2 = nucleus)"}

    # sources on the HR grid
    lr = protocol_lr(hr, 4, noisy=True, seed=seed_i)
    sources = {"LR-bicubic": np.clip(bicubic_upsample(lr, 4), 0, 1), "HR": hr}
    restorers: dict = {}
    hr_planes = _tiles(hr[TRAIN_ROWS], 128)
    if restorer:
        model = load_model(restorer)
        restorers["restored"] = {"path": str(model.path), "given": True}
    else:
        model, restorers["restored"] = _train_restorer(hr_planes, float(restore_minutes),
                                                       int(restore_epochs), work / "restorer-l1",
                                                       restore_encoder, seed_i)
    if model.scale != 4:
        raise ValueError(f"restorer {model.name!r} is {model.scale}x; this benchmark needs 4x")
    if restorer:
        # a given model works in its own units (0..255 for the bundled ones): [0, 1] in, and back
        n = model.config.norm
        out = np.asarray(restore(model, lr * (n.high - n.low) + n.low, axes="YX"))
        sources["restored"] = (out - n.low) / (n.high - n.low)
    else:  # trained here on this [0, 1] data
        sources["restored"] = np.asarray(restore(model, lr, axes="YX"))
    if option_true(expert):
        emodel, restorers["restored-expert"] = _train_restorer(
            hr_planes, float(restore_minutes), int(restore_epochs), work / "restorer-expert",
            restore_encoder, seed_i,
            loss="perceptual", feature_weights=str(seg_res.path))
        sources["restored-expert"] = np.asarray(restore(emodel, lr, axes="YX"))
        if restorer:
            restorers["restored-expert"]["note"] = ("trained here while 'restored' was given: the "
                                                    "two are not at equal budget")

    # segment every source with the same model, split, match against the GT nuclei
    order = ["LR-bicubic", "restored", "restored-expert", "HR"]
    results: dict = {"held_out_half": {}, "whole_image": {}}
    quality = {}
    other = "cc" if method == "watershed" else "watershed"
    for name in [n for n in order if n in sources]:
        img = sources[name]
        seg = predict(segmenter, img, axes="YX")
        sem = np.asarray(seg.labels)
        objs = instances(sem, method, classes=seg.classes, min_size=min_size_i)
        objs_other = instances(sem, other, classes=seg.classes, min_size=min_size_i)
        results["held_out_half"][name] = {method: _scores(objs, gt, TEST_ROWS),
                                          other: _scores(objs_other, gt, TEST_ROWS)}
        results["whole_image"][name] = {method: _scores(objs, gt, slice(None)),
                                        other: _scores(objs_other, gt, slice(None))}
        if name != "HR":
            q = evaluate(np.clip(img[TEST_ROWS], 0, 1), hr[TEST_ROWS])
            quality[name] = {"psnr": round(q["psnr"], 3), "ssim": round(q["ssim"], 4)}
        # foreground pixel agreement with the masks (semantic quality, independent of splitting)
        fg, true_fg = sem[TEST_ROWS] == 2, gt[TEST_ROWS] > 0
        results["held_out_half"][name]["foreground_iou"] = round(
            float((fg & true_fg).sum() / max(1, (fg | true_fg).sum())), 4)

    summary = []
    for name, r in results["held_out_half"].items():
        s = r[method]
        summary.append(f"{name:<16} count {s['n_pred']:>3} / {s['n_gt']} true, TP {s['tp']:>3}, "
                       f"FP {s['fp']:>3}, FN {s['fn']:>3}, F1 {s['f1']:.3f} "
                       f"(FP rate {s['fp_rate']:.3f}, missed {s['fn_rate']:.3f})"
                       + (f", PSNR {quality[name]['psnr']:.2f} dB" if name in quality else ""))
    budget = (f"{int(restore_epochs) * 50} iterations" if int(restore_epochs)
              else f"{restore_minutes} min")
    expert_cmp = None
    if "restored-expert" in results["held_out_half"]:
        a = results["held_out_half"]["restored"][method]
        b = results["held_out_half"]["restored-expert"][method]
        expert_cmp = {"without": {k: a[k] for k in ("f1", "fp_rate", "fn_rate", "n_pred")},
                      "with": {k: b[k] for k in ("f1", "fp_rate", "fn_rate", "n_pred")},
                      "budget_each": budget,
                      "iterations": {"without": restorers["restored"].get("iterations"),
                                     "with": restorers["restored-expert"].get("iterations")}}
        summary.append(f"expert-guided loss: F1 {a['f1']:.3f} -> {b['f1']:.3f}, FP rate "
                       f"{a['fp_rate']:.3f} -> {b['fp_rate']:.3f} (same budget: {budget})")
    return {
        "data": {"image": "nuclei2d", "masks": "nuclei2d-masks", "shape": list(hr.shape),
                 "n_nuclei": int(len(np.unique(gt)) - 1),
                 "n_nuclei_held_out_half": int(len(np.unique(gt[TEST_ROWS])) - 1),
                 "source": meta.source},
        "protocol": __doc__.strip(),
        "options": {"minutes": float(minutes), "restore_minutes": float(restore_minutes),
                    "seg_epochs": int(seg_epochs), "restore_epochs": int(restore_epochs),
                    "seg_patch": int(seg_patch),
                    "restorer": restorer or None, "expert": expert, "method": method,
                    "min_size": min_size_i, "seed": seed_i, "encoder": encoder,
                    "restore_encoder": restore_encoder},
        "segmenter": seg_info, "restorers": restorers, "image_quality_held_out": quality,
        "results": results, "expert_guided": expert_cmp,
        "models_folder": str(work), "wall_seconds": round(time.monotonic() - t_start, 1),
        "summary": summary,
    }
