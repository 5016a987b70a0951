"""``decrappify restore`` (with its ``--report``) and ``decrappify evaluate``: restore an image
with a model, and score a result against ground truth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .inputs import _lazy_input, _with_geometry, open_input
from .outputs import _command, _json_default, _json_output, _not_a_folder, _standard_json


def cmd_restore(args) -> int:
    """``decrappify restore``: restore an image with a model, tiled, streamed to OME-Zarr or TIFF."""
    from tqdm import tqdm

    from ..config import TileConfig
    from ..engine.memory import return_freed_blocks
    from ..io import write_ome_zarr, write_tiff
    from ..models import load_model
    from ..tiling import restore_image, use_scheduler

    return_freed_blocks()  # this process exists to restore: a lower peak (engine.memory)
    out = Path(args.output)
    name = out.name.lower()
    is_tiff = name.endswith((".tif", ".tiff"))
    if not is_tiff and not name.endswith(".zarr"):
        raise ValueError(f"output {out} must end in .zarr (OME-Zarr) or .tif/.tiff")
    if is_tiff and out.is_dir():
        raise ValueError(f"output {out} is a folder: a .tif/.tiff output must be a file")
    if is_tiff and out.exists() and not args.overwrite:  # zarr: write_ome_zarr decides (resume)
        raise FileExistsError(f"output {out} exists: pass --overwrite to replace it")
    if out.exists() and out.resolve() == Path(args.input).resolve():
        raise ValueError(f"output {out} is the input: give the result its own path")
    if args.report:
        _not_a_folder(args.report, "--report")
        if Path(args.report).exists() and not args.overwrite:
            raise FileExistsError(f"--report {args.report} exists: pass --overwrite to replace it")
        if Path(args.report).resolve() in (out.resolve(), Path(args.input).resolve()):
            raise ValueError(f"--report {args.report} is the input or the output: give it its own path")
    options = {"halo": args.halo, "device": args.device, "precision": args.precision,
               "batch_size": args.batch, "skip_empty": args.skip_empty,
               "output_dtype": args.output_dtype, "tta": args.tta, "exact": args.exact,
               "border": args.border}
    if args.tile is not None:  # unset: TileConfig may grow the default tile to fit the halo
        options["tile"] = args.tile
    config = TileConfig(**options)
    image = _with_geometry(open_input(args.input, args.axes), args.pixel_size, args.units,
                           yx_alone=True)
    model = load_model(args.model)
    if model.kind != "restoration":
        raise ValueError(f"model {model.name!r} is a {model.kind} model: use decrappify segment")
    bars = []  # created on the first event: a refused output prints no empty bar

    def progress(ev):
        if not bars:
            bars.append(tqdm(total=ev.get("total"), unit="tile", disable=args.quiet,
                             dynamic_ncols=True))
        bar = bars[0]
        if ev.get("total") is not None and bar.total != ev["total"]:
            bar.total = ev["total"]
        bar.unit = ev.get("event", "tile").rstrip("s")
        bar.n = ev["done"]
        if "mpix_per_s" in ev:
            bar.set_postfix_str(f"{ev['mpix_per_s']:.2f} MP/s", refresh=False)
        bar.refresh()

    with use_scheduler(args.scheduler):
        result = restore_image(model, image, config, pixel_size_mismatch=args.pixel_size_mismatch)
        if not args.quiet:
            print(f"restoring {image.name} {tuple(image.data.shape)} {image.axes} -> "
                  f"{tuple(result.data.shape)} {result.axes} with {model.name} "
                  f"({model.scale}x, halo {result.metadata['halo']}, tile {result.metadata['tile']})",
                  file=sys.stderr)
            print(f"pixel size: {result.metadata['pixel_size']['message']}", file=sys.stderr)
            print(f"intensities: {result.metadata['normalisation']}", file=sys.stderr)
            print(f"domain: {result.metadata['domain']['message']}", file=sys.stderr)
        else:  # warnings are printed even when quiet
            for key in ("pixel_size", "domain"):
                if result.metadata[key]["message"].startswith("⚠"):
                    print(result.metadata[key]["message"], file=sys.stderr)
        try:
            if is_tiff:
                write_tiff(out, result.data, axes=result.axes, scale=result.scale,
                           translate=result.translate, units=result.units,
                           overwrite=args.overwrite, progress=progress)
            else:
                meta = {"model": model.name, "weights_sha256": model.weights_hash,
                        "input": args.input, "command": _command(args)}
                write_ome_zarr(out, result, overwrite=args.overwrite, progress=progress,
                               levels=args.levels, metadata=meta)
        finally:
            for bar in bars:
                bar.close()
    if not args.quiet:
        print(f"wrote {out}: {tuple(result.data.shape)} {result.axes} {result.data.dtype}, "
              f"pixel size {result.scale}, origin {result.translate} ({', '.join(result.units)})")
    if args.report:
        _write_report(args, model, image, out, result)
    return 0


def _write_report(args, model, image, out: Path, result) -> None:
    """``--report``: what restore did and found, and the LR consistency of the written result
    (read back plane by plane) with its input."""
    from ..consistency import stack_lr_consistency
    from ..io import open_image, write_text_atomic

    if model.scale > 1 and result.axes == image.axes:
        written = open_image(out).data
        consistency = stack_lr_consistency(model, written, image.data, image.axes)
    else:
        consistency = None
    meta = result.metadata
    report = {"input": args.input, "output": str(out), "model": model.name,
              "weights_sha256": model.weights_hash, "scale": model.scale,
              "normalisation": meta["normalisation"], "input_range": meta["input_range"],
              "pixel_size": meta["pixel_size"], "domain": meta["domain"],
              "lr_consistency": consistency}
    write_text_atomic(args.report, json.dumps(report, indent=2, allow_nan=False,
                                              default=_json_default))
    if consistency is not None and not args.quiet:
        print(f"LR consistency (result degraded by the model's {consistency['degradation']['method']} "
              f"{model.scale}x vs the input): PSNR {consistency['psnr']:.2f} dB, SSIM "
              f"{consistency['ssim']:.3f} over {consistency['n_planes']} planes; report {args.report}")


def cmd_evaluate(args) -> int:
    """Scores by :func:`metrics.evaluate`: without ``--normalised``, the package's one rule
    (:func:`metrics.intensity_maps`, as the Restore dock scores): both mapped by the ground
    truth's range, a float prediction in [0, 1] beside an integer ground truth first put back
    into the ground truth's units (``crappify.from_unit``), any other taken to be in them."""

    from ..io import write_text_atomic
    from ..metrics import evaluate, prediction_units

    _json_output(args.json, "--json", args.overwrite)
    # lazy: scored plane by plane (large planes tile by tile), never read whole
    pred, gt = _lazy_input(args.pred), _lazy_input(args.gt)
    res = evaluate(pred, gt, normalised=args.normalised)
    if not args.normalised and prediction_units(pred, gt.dtype) == "unit":
        print(f"the prediction is float in [0, 1] and the ground truth {gt.dtype}: the prediction "
              f"is taken as in [0, 1] units (crappify.to_unit of {gt.dtype}) and scaled back")
    for row in res["planes"]:
        print(f"plane {row['plane']:>4}: PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}  "
              f"NRMSE {row['nrmse']:.4f}")
    print(f"mean over {res['n_planes']} non-blank planes: PSNR {res['psnr']:.2f} dB  "
          f"SSIM {res['ssim']:.4f}  NRMSE {res['nrmse']:.4f}")
    if args.json:
        write_text_atomic(args.json, json.dumps(_standard_json(res), indent=2, allow_nan=False,
                                                default=_json_default))
    return 0
