"""Command line: ``decrappify COMMAND ...`` (also ``python -m napari_decrappify COMMAND ...``).

Image arguments are TIFF or Zarr/OME-Zarr paths, or ``sample:KEY`` for a real sample data set
(``sample:cremi``), optionally with a plane range: ``sample:cremi[0:20]``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from .config import (
    FINE_TUNE_LOSS,
    FINE_TUNE_LR_MAX,
    FINE_TUNE_PCT_START,
    Activation,
    CrappifyDtype,
    Downsample,
    Encoder,
    InstanceMethod,
    NormMode,
    OutputDtype,
    Precision,
    RestorationLoss,
    SegmentationLoss,
    Strategy,
    TrainConfig,
    choices,
)
from .pixel_size import POLICIES

EXIT_NOT_BUILT = 2


def _not_built(name: str):
    def run(args) -> int:
        print(f"decrappify {name}: not built yet in this version", file=sys.stderr)
        return EXIT_NOT_BUILT

    return run


def parse_planes(text: str | None, option: str = "--train-planes") -> list[int] | None:
    """``"0-17"``, ``"0-13,15-17"`` or ``"18,19"`` -> list of plane indices."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None or (m[2] is not None and int(m[2]) < int(m[1])):
            raise ValueError(f"{option} {text!r}: expected plane numbers and ranges FIRST-LAST "
                             f"separated by commas, e.g. 0-13,15-17 or 18,19")
        out.extend(range(int(m[1]), int(m[2] if m[2] is not None else m[1]) + 1))
    return out


SAMPLE_FORM = "sample:KEY or sample:KEY[START:STOP], e.g. sample:cremi[0:20]"


def parse_sample(spec: str):
    """``"sample:KEY"`` or ``"sample:KEY[a:b]"`` -> ``(Sample, slice or None)``."""
    from .samples import SAMPLES

    text = spec[len("sample:"):]
    m = re.fullmatch(r"([^\[\]]+)(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?", text)
    if m is None:
        raise ValueError(f"bad sample argument {spec!r}: expected {SAMPLE_FORM}")
    key = m[1]
    if key not in SAMPLES:
        raise ValueError(f"unknown sample {key!r}: known samples are {', '.join(SAMPLES)}")
    sl = None
    if m[2] is not None:
        sl = slice(int(m[2]) if m[2] else None, int(m[3]) if m[3] else None)
    return SAMPLES[key], sl


def _load_sample(spec: str):
    """``(array, Sample, first plane)`` of a ``sample:KEY[a:b]`` argument."""
    from .samples import load_sample

    sample, sl = parse_sample(spec)
    data, _ = load_sample(sample.key)
    if sl is None:
        return data, sample, 0
    start, stop, _ = sl.indices(len(data))
    if stop <= start:
        raise ValueError(f"{spec}: the plane range selects no planes (the sample has "
                         f"{len(data)} planes along {sample.axes[0]})")
    return data[start:stop], sample, start


def read_input(spec: str):
    """Read an image argument into a numpy/dask array (see module docstring)."""
    import numpy as np

    if spec.startswith("sample:"):
        return _load_sample(spec)[0]
    from .io import open_image

    return np.asarray(open_image(spec).data)


def _lazy_input(spec: str):
    """An image argument as a lazy (dask) array; a sample as numpy."""
    if spec.startswith("sample:"):
        return read_input(spec)
    from .io import open_image

    return open_image(spec).data


def open_input(spec: str, axes: str | None = None, scale=None):
    """An image argument as :class:`~napari_decrappify.io.ImageData` (lazy for files), with the
    sample's axes and pixel size for ``sample:KEY``; a plane range ``[a:b]`` puts the origin
    of the first axis at ``a`` x its pixel size (``metadata["first_plane"] = a``)."""
    from .io import open_image

    if not spec.startswith("sample:"):
        return open_image(spec, axes=axes, scale=scale)
    data, sample, start = _load_sample(spec)
    scale = tuple(scale) if scale is not None else sample.scale
    image = open_image(data, axes=axes or sample.axes, scale=scale,
                       translate=_sample_origin(start, scale, data.ndim), units=sample.units,
                       name=sample.key)
    image.metadata["first_plane"] = start
    return image


def _pixel_size(text: str) -> float:
    """argparse type of ``--pixel-size``: a positive, finite length (a negative or NaN pixel
    size was taken as it was, and mirrored or broke the result's geometry)."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"a pixel size must be a positive length, got {text}")
    return value


def _count(text: str) -> int:
    """argparse type of a size in pixels that may be 0 (``--min-size``): a whole number >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _sample_origin(start: int, scale, ndim: int) -> tuple[float, ...]:
    """Origin of planes ``start:`` of a sample: ``start`` x the pixel size on the first axis."""
    first = float(start) * float(scale[0]) if len(scale) else 0.0
    return (first,) + (0.0,) * (ndim - 1)


def _with_geometry(image, pixel_size, units, *, yx_alone: bool = False):
    """``image`` with ``--pixel-size`` (one per axis; with ``yx_alone`` also one value for Y
    and X, or two for Y, X) and ``--units`` (one for all, or one per axis) applied."""
    ndim, axes = image.data.ndim, image.axes
    if pixel_size:
        scale = list(image.scale)
        if yx_alone and len(pixel_size) in (1, 2) and len(pixel_size) != ndim:
            yx = pixel_size * 2 if len(pixel_size) == 1 else pixel_size
            scale[axes.index("Y")], scale[axes.index("X")] = yx
        elif len(pixel_size) == ndim:
            scale = list(pixel_size)
        else:
            also = " or 1 for Y and X" if yx_alone else ""
            raise ValueError(f"--pixel-size needs {ndim} values (one per axis {axes}){also}, "
                             f"got {len(pixel_size)}")
        image.scale = tuple(float(v) for v in scale)
        if "first_plane" in image.metadata:  # a sample's plane range: origin in the new size
            image.translate = _sample_origin(image.metadata["first_plane"], image.scale, ndim)
    if units:
        if len(units) not in (1, ndim):
            raise ValueError(f"--units needs 1 value or {ndim} (one per axis {axes}), got {len(units)}")
        image.units = tuple(units) * (ndim if len(units) == 1 else 1)
    elif pixel_size and yx_alone:  # a pixel size in pixel units would mean nothing: nm
        image.units = tuple("nm" if a in "YX" and u in ("pixel", None) else u
                            for a, u in zip(axes, image.units, strict=True))
    return image


def _geometry_arguments(parser, what: str) -> None:
    """``--pixel-size`` (Y and X at least) and ``--units`` of an image argument."""
    parser.add_argument("--pixel-size", type=_pixel_size, nargs="+", metavar="S",
                        help=f"pixel size of {what}: one value for Y and X, two (Y X), or one "
                             "per axis (default: from the file; nm unless --units says otherwise)")
    parser.add_argument("--units", nargs="+", metavar="U", help="unit per axis (or one for all)")


def _not_a_folder(path, option: str) -> None:
    """Refuse an output file path that is an existing folder (before computing anything)."""
    if path and Path(path).is_dir():
        raise ValueError(f"{option} {path}: is a folder; give a file path")


def _json_output(path, option: str, overwrite: bool) -> None:
    """Refuse, before any work, a JSON output path that is not ``*.json`` (a typo must not
    replace an image) or that exists without ``--overwrite``."""
    if not path:
        return
    _not_a_folder(path, option)
    if Path(path).suffix.lower() != ".json":
        raise ValueError(f"{option} {path}: the file name must end in .json")
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{option} {path} exists: pass --overwrite to replace it")


def _standard_json(value):
    """``value`` with non-finite floats as ``null``: JSON has no Infinity or NaN (the PSNR of
    identical images is infinite), and other tools refuse files that contain them."""
    import math

    if isinstance(value, dict):
        return {k: _standard_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_standard_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _model_output(path, overwrite: bool) -> None:
    """Refuse, before training, an ``--out`` that cannot take the model: a file, a file name
    (``m.tif``), a folder that is not a model, or an existing model without ``--overwrite``
    (a finished run must never be thrown away at the end, nor replace a model silently)."""
    from .models import CONFIG_FILE

    out = Path(path)
    if out.suffix.lower() in (".tif", ".tiff", ".zarr", ".json", ".png", ".npy", ".h5"):
        raise ValueError(f"--out {path}: a model is a folder; give a folder name without a file "
                         "extension")
    if out.is_file():
        raise FileExistsError(f"--out {path} is a file; a model is a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / CONFIG_FILE).is_file():
            raise FileExistsError(f"--out {path} is a folder that is not a model folder (no "
                                  f"{CONFIG_FILE}); choose another output folder")
        if not overwrite:
            raise FileExistsError(f"--out {path}: a model exists there; pass --overwrite to "
                                  "replace it")


# --------------------------------------------------------------------------- commands


def _training_pixel_size(images) -> tuple[float, float] | None:
    """The HR pixel size (Y, X, nm) the model records: that of the training images (all
    alike), or None when they have none (then restore does not check inputs)."""
    from .pixel_size import image_pixel_size_nm

    sizes = [image_pixel_size_nm(im.scale, im.units, im.axes) for im in images]
    known = [s for s in sizes if s is not None]
    if not known:
        print("note: the HR images have no pixel size (give --pixel-size): the model will not "
              "check the pixel size of what it restores", file=sys.stderr)
        return None
    first = known[0]
    if len(known) != len(sizes) or any(abs(s[0] / first[0] - 1) > 0.01 or abs(s[1] / first[1] - 1) > 0.01
                                       for s in known):
        raise ValueError(f"the HR images have different pixel sizes ({sizes}): train on images "
                         "of one pixel size, or give --pixel-size")
    return first


def cmd_train(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from .config import GENERAL_AUGMENT, ArchConfig, AugmentConfig, CrappifyConfig, TrainConfig
    from .crappify import check_image
    from .train import train

    for option, values in (("--photons", args.photons), ("--read-noise", args.read_noise),
                           ("--blur", args.blur)):
        if len(values) not in (1, 2):
            raise ValueError(f"{option} takes one value or a range LO HI (two values), "
                             f"got {len(values)}: {' '.join(f'{v:g}' for v in values)}")
    if args.lr and not args.pair_hr:
        print("decrappify train: --lr needs --pair-hr (the registered HR of the pair)",
              file=sys.stderr)
        return 2
    if args.pair_hr and not args.lr:
        print("decrappify train: --pair-hr needs --lr (the real LR of the pair)", file=sys.stderr)
        return 2
    _model_output(args.out, args.overwrite)
    for spec in [*args.hr, args.lr, args.pair_hr]:
        if spec and spec.startswith("sample:"):
            parse_sample(spec)  # a malformed or unknown sample fails before any training
    init = None
    if args.resume:  # a model that cannot be fine-tuned is refused before the data is read
        from .models import load_model
        from .train import check_fine_tune_start

        init = load_model(args.resume)
        check_fine_tune_start(init, args.scale)
    photons = tuple(args.photons) if len(args.photons) == 2 else args.photons[0]
    read = tuple(args.read_noise) if len(args.read_noise) == 2 else args.read_noise[0]
    blur = tuple(args.blur) if len(args.blur) == 2 else args.blur[0]
    augment = GENERAL_AUGMENT if args.augment == "general" else AugmentConfig()
    ranges = {k: tuple(getattr(args, k)) for k in ("zoom", "gamma", "contrast", "brightness")
              if getattr(args, k) is not None}
    augment = AugmentConfig.model_validate({**augment.model_dump(), **ranges})
    if photons == 0:
        photons = None
    fine_tune = {}
    if args.resume and args.lr_max is None:
        # a fine-tune starts from trained weights: a lower peak and a short warm-up
        fine_tune = {"lr_max": FINE_TUNE_LR_MAX, "pct_start": FINE_TUNE_PCT_START}
    loss = args.loss or (FINE_TUNE_LOSS if args.resume else TrainConfig.model_fields["loss"].default)
    config = TrainConfig(
        scale=args.scale,
        arch=ArchConfig(encoder=args.encoder, strategy=args.strategy, frames=args.frames,
                        self_attention=args.self_attention, scale=args.scale,
                        head_features=args.head_features,
                        **({"activation": args.activation} if args.activation else {})),
        crappify=CrappifyConfig(scale=args.scale, photons=photons, read_noise=read,
                                blur_sigma=blur),
        augment=augment,
        loss=loss, feature_weights=args.feature_loss, patch_size=args.patch,
        batch_size=args.batch, epochs=args.epochs, minutes=args.minutes,
        iterations_per_epoch=args.iters, seed=args.seed, device=args.device,
        precision=args.precision, train_planes=parse_planes(args.train_planes),
        normalisation=args.normalisation,
        valid_planes=parse_planes(args.valid_planes, "--valid-planes"),
        **({} if args.lr_max is None else {"lr_max": args.lr_max}),
        **fine_tune,
        **({} if args.any_offset is None else {"any_offset": args.any_offset}),
    )
    opened = [_with_geometry(open_input(p), args.pixel_size, args.units, yx_alone=True)
              for p in args.hr]
    # what cannot be trained on (NaN, bool, empty) is refused before anything is said about it
    images = [check_image(np.asarray(im.data), f"HR image {spec}")
              for im, spec in zip(opened, args.hr, strict=True)]
    pixel_size = _training_pixel_size(opened)
    if args.lr_find:
        from .train import find_lr

        found = find_lr(images, config)
        print(f"learning-rate finder: valley at {found['valley']:.2e} (use --lr-max near it)")
        return 0
    pairs = None
    if args.lr:
        pairs = (read_input(args.lr), read_input(args.pair_hr))
    bar = tqdm(total=None, unit="it", disable=args.quiet)

    def progress(ev):
        if ev["event"] == "batch":
            bar.total = ev["total"]
            bar.update(1)
            bar.set_postfix(loss=f"{ev['loss']:.4f}", epoch=ev["epoch"])
        elif ev["event"] == "epoch":
            bar.write(f"epoch {ev['epoch']}: train {ev.get('train_loss', float('nan')):.4f} "
                      f"valid {ev.get('valid_loss', float('nan')):.4f} "
                      f"PSNR {ev.get('batch_psnr', float('nan')):.2f} dB "
                      f"SSIM {ev.get('batch_ssim', float('nan')):.3f}")
        elif ev["event"] == "recovered":
            back = (f"the weights of epoch {ev['back_to_epoch']}" if ev["back_to_epoch"] >= 0
                    else "the starting weights")
            bar.write(f"epoch {ev['epoch']}: training diverged (loss {ev['train_loss']:.3g}); back "
                      f"to {back}, going on at peak learning rate {ev['lr_max']:.2g}")

    command = _command(args)
    result = train(images, config, out=args.out, name=Path(args.out).name, pairs=pairs,
                   progress=progress, command=command, fp16=args.fp16, init_from=init,
                   checkpoint_dir=args.checkpoint_dir, pixel_size_nm=pixel_size)
    bar.close()
    print(f"saved {result.path} ({result.stop_reason}, {result.seconds:.0f} s, "
          f"{result.iterations} iterations)")
    if init is not None and result.model.config.training.get("best_epoch") == -1:
        print(f"no epoch scored better than {args.resume} on the validation planes: the model "
              "keeps its starting weights (train longer, or give more HR data)")
    if result.stop_reason == "diverged":  # saved (its best weights), but not a success
        print(f"decrappify train: error: {result.model.config.training['warnings'][-1]}",
              file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    import importlib
    import os

    from .demo import metrics_table, run_demo
    from .io import write_text_atomic

    t0 = time.monotonic()
    result = run_demo(args.out, args.model)
    written = ["restored.ome.zarr", "lr.tif", "metrics.json"]
    print(metrics_table(result.metrics))
    headless = args.headless or not os.environ.get("DISPLAY")
    # The CLI is the composition root: the napari view is looked up at run time so that the
    # headless core never imports napari/Qt (import-linter contract), and `--no-view` needs none.
    if not args.no_view:
        import fastai.vision.models.unet  # noqa: F401 - before any Qt/GL context (ENVIRONMENT.md trap 2)

        view = importlib.import_module("napari_decrappify._napari.demo_view")
        shot = view.render(result, headless=headless)
        print(f"[demo] screenshot: {shot}")
        written.append(Path(shot).name)
    wall = time.monotonic() - t0
    result.metrics["timings_s"]["demo_wall_s"] = round(wall, 1)
    write_text_atomic(result.out / "metrics.json", json.dumps(result.metrics, indent=2))
    print(f"[demo] wrote {result.out}/ ({', '.join(written)}) in {wall:.0f} s")
    return 0


def cmd_crappify(args) -> int:
    from tqdm import tqdm

    from .config import CrappifyConfig, check_scale
    from .crappify import crappify_file

    # the extension decides the format: out.png became a Zarr folder named out.png
    if not Path(args.out).name.lower().endswith((".tif", ".tiff", ".zarr")):
        raise ValueError(f"output {args.out} must end in .zarr (OME-Zarr) or .tif/.tiff")
    if Path(args.out).exists() and Path(args.out).resolve() == Path(args.hr).resolve():
        raise ValueError(f"output {args.out} is the input: give the LR its own path")
    config = CrappifyConfig(
        scale=check_scale(args.scale), photons=args.photons or None, read_noise=args.read_noise,
        blur_sigma=args.blur, salt_pepper=args.salt_pepper, downsample=args.downsample)
    source, pixel_size, units, axes = args.hr, args.pixel_size, args.units, args.axes
    if source.startswith("sample:"):
        # axes, pixel size, units and (for a plane range) origin of the sample
        source = open_input(args.hr, axes, pixel_size)
    bars = []  # created on the first plane, so that an early error prints no empty bar

    def progress(ev):
        if not bars:
            bars.append(tqdm(total=ev["total"], unit=ev.get("event", "chunk"),
                             disable=args.quiet))
        bars[0].update(ev["done"] - bars[0].n)

    info = crappify_file(source, args.out, config, seed=args.seed, axes=axes, pixel_size=pixel_size,
                         units=units, dtype=args.dtype, overwrite=args.overwrite, progress=progress)
    for bar in bars:
        bar.close()
    print(f"wrote {info['out']}: LR {info['shape']} {info['dtype']}, axes {info['axes']}, "
          f"pixel size {info['scale']}, origin {info['translate']} ({', '.join(info['units'])})")
    return 0


def cmd_evaluate(args) -> int:
    """Scores by :func:`metrics.evaluate`: without ``--normalised``, the package's one rule
    (:func:`metrics.intensity_maps`, as the Restore dock scores): both mapped by the ground
    truth's range, a float prediction in [0, 1] beside an integer ground truth first put back
    into the ground truth's units (``crappify.from_unit``), any other taken to be in them."""

    from .io import write_text_atomic
    from .metrics import evaluate, prediction_units

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


def cmd_restore(args) -> int:
    from tqdm import tqdm

    from .config import TileConfig
    from .io import write_ome_zarr, write_tiff
    from .models import load_model
    from .tiling import restore_image, use_scheduler

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
               "output_dtype": args.output_dtype, "tta": args.tta}
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
    from .consistency import stack_lr_consistency
    from .io import open_image, write_text_atomic

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


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def cmd_segment(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from .io import write_ome_zarr, write_tiff
    from .models import load_model
    from .segment import SegmentConfig, measure, predict, segmentation_arch, train_segmenter
    from .segment import instances as split_instances

    out = Path(args.output)
    images = [out] + [Path(p) for p in (args.semantic, args.probabilities) if p]
    named = [("OUT", args.output), ("--semantic", args.semantic),
             ("--probabilities", args.probabilities), ("--csv", args.csv)]
    seen: dict[Path, str] = {}
    for option, path in named:
        if not path:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise ValueError(f"{seen[key]} and {option} are the same path {path}: each output "
                             f"needs its own path")
        seen[key] = option
    for path in images:
        if not path.name.lower().endswith((".tif", ".tiff", ".zarr")):
            raise ValueError(f"output {path} must end in .zarr (OME-Zarr) or .tif/.tiff")
        if path.name.lower().endswith((".tif", ".tiff")) and path.is_dir():
            raise ValueError(f"output {path} is a folder: a .tif/.tiff output must be a file")
    _not_a_folder(args.csv, "--csv")
    for path in images + ([Path(args.csv)] if args.csv else []):
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"output {path} exists: pass --overwrite to replace it")
    if args.csv and not args.instances:
        args.instances = "cc"  # a per-object table needs objects
    image = _with_geometry(open_input(args.input, args.axes), args.pixel_size, args.units)
    quiet = args.quiet
    if args.train_labels:
        if not args.classes:
            raise ValueError("--train-labels needs --classes NAME,NAME (label k = k-th name)")
        labels = np.asarray(read_input(args.train_labels))
        config = SegmentConfig(arch=segmentation_arch(args.encoder),
                               loss=args.loss, minutes=args.minutes,
                               epochs=args.epochs if args.epochs or not args.minutes else None,
                               patch_size=args.patch, batch_size=args.batch, device=args.device,
                               iterations_per_epoch=args.iters,
                               seed=args.seed)
        bar = tqdm(total=None, unit="it", disable=quiet)

        def train_progress(ev):
            if ev["event"] == "batch":
                bar.total = ev["total"]
                bar.update(1)
                bar.set_postfix(loss=f"{ev['loss']:.4f}")

        result = train_segmenter(np.asarray(image.data), labels, args.classes, config,
                                 out=args.model, name=Path(args.model).name, progress=train_progress,
                                 command=_command(args))
        bar.close()
        print(f"saved segmentation model {result.path} ({result.stop_reason}, "
              f"{result.seconds:.0f} s, {result.iterations} iterations)")
        model = result.model
    else:
        model = load_model(args.model)
    if model.kind != "segmentation":
        raise ValueError(f"model {model.name!r} is a {model.kind} model, not a segmentation model")
    options = {"device": args.device}
    if args.tile is not None:
        options["tile"] = args.tile
    tiles = tqdm(total=None, unit="tile", disable=quiet)

    def progress(ev):
        if ev.get("total") is not None:
            tiles.total = ev["total"]
        tiles.n = ev.get("done", tiles.n)
        tiles.refresh()

    seg = predict(model, image, progress=progress, **options)
    tiles.close()
    labels_axes = seg.axes
    keep = [i for i, a in enumerate(image.axes) if a != "C"]
    geo = {"scale": [image.scale[i] for i in keep], "units": [image.units[i] for i in keep]}
    objects = None
    if args.instances:
        # the file's (or --pixel-size's) voxel size: the watershed measures physical distance
        objects = split_instances(seg.labels, args.instances, classes=seg.classes or None,
                                  min_size=args.min_size,
                                  axes=None if labels_axes in ("YX", "ZYX") else labels_axes,
                                  pixel_size=geo["scale"])

    def write(path, data, axes, scale, units, translate):
        if path.name.lower().endswith((".tif", ".tiff")):
            write_tiff(path, data, axes=axes, scale=scale, translate=translate, units=units,
                       overwrite=args.overwrite)
        else:
            write_ome_zarr(path, data, axes=axes, scale=scale, translate=translate, units=units,
                           overwrite=args.overwrite, labels=True,
                           metadata={"model": model.name, "weights_sha256": model.weights_hash,
                                     "classes": seg.classes, "input": args.input})

    translate = [image.translate[i] for i in keep]
    main = objects if objects is not None else seg.labels
    write(out, main, labels_axes, geo["scale"], geo["units"], translate)
    if args.semantic:
        write(Path(args.semantic), seg.labels, labels_axes, geo["scale"], geo["units"], translate)
    if args.probabilities:
        write(Path(args.probabilities), seg.probabilities, "C" + labels_axes, [1.0] + geo["scale"],
              ["pixel"] + geo["units"], [0.0] + translate)
    what = f"objects ({args.instances})" if objects is not None else "class labels"
    print(f"wrote {out}: {what} {tuple(main.shape)} {labels_axes}; classes: "
          + ", ".join(f"{k}={n}" for k, n in enumerate(seg.classes, start=1)))
    counts = np.bincount(np.asarray(seg.labels).ravel(), minlength=len(seg.classes) + 1)
    for k, name in enumerate(seg.classes, start=1):
        print(f"  {name}: {counts[k] / counts.sum():.1%} of pixels")
    if objects is not None:
        unit = geo["units"][-1]
        table = measure(objects, np.asarray(image.data) if "C" not in image.axes else None,
                        seg.classes, geo["scale"], semantic=seg.labels, translate=translate,
                        unit=unit, axes=None if labels_axes in ("YX", "ZYX") else labels_axes)
        for line in table.summary_lines():  # µm³ / nm³, per µm³: as the Segment dock says
            print(f"  {line}")
        if args.csv:
            columns, _ = table.table()
            table.to_csv(args.csv)
            print(f"wrote {args.csv}: {len(table.rows)} objects ({', '.join(columns)})")
    return 0


def _levels(text: str):
    """``--levels``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {text!r}") \
            from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def cmd_bench(args) -> int:
    import inspect

    from . import bench

    options = {}
    for kv in args.option or []:
        key, sep, value = kv.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"-o {kv!r}: expected KEY=VALUE, e.g. -o tile=256")
        options[key.strip()] = value
    _not_a_folder(args.json, "--json")
    # each benchmark module registers itself on import
    bench.load_all()
    if args.what not in bench.BENCHMARKS:
        print(f"decrappify bench {args.what}: not built yet in this version", file=sys.stderr)
        return EXIT_NOT_BUILT
    params = inspect.signature(bench.BENCHMARKS[args.what]).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        valid = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(unknown)} for bench {args.what}; valid keys: "
                             f"{', '.join(valid) or '(none)'}")
    result = bench.run(args.what, args.json, **options)
    summary = result.get("summary", {k: v for k, v in result.items() if k != "machine"})
    print(json.dumps(summary, indent=2, default=str)[:4000])
    if args.json:
        print(f"wrote {args.json}")
    return 0


def cmd_models(args) -> int:
    from .models import list_models

    models = list_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no models found")
    for m in models:
        tag = "bundled" if m["bundled"] else "user"
        metr = m["metrics"].get("test", {}) if isinstance(m["metrics"], dict) else {}
        extra = ""
        if metr:
            extra = f"  test PSNR {metr.get('psnr', float('nan')):.2f} dB"
        print(f"{m['name']:<16} {m['kind']:<13} {m['scale']}x  frames={m['frames']}  "
              f"{m['encoder']:<10} {tag}{extra}  {m['path']}")
    return 0


def cmd_export(args) -> int:
    import numpy as np

    from .bioimageio import export_bioimageio

    # one format so far; the option keeps room for others (e.g. ONNX) without a new command
    test_image = None
    if args.test_image:
        test_image = np.asarray(open_input(args.test_image, None).data)
    out = export_bioimageio(args.model, args.output, authors=args.author, license=args.license,
                            test_image=test_image, overwrite=args.overwrite)
    print(f"wrote {out} (bioimage.io model, spec 0.5); check it with: "
          f"bioimageio test {out}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="decrappify",
        description="Crappify, then decrappify: restore and segment microscopy images.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("demo", help="restore the real EM sample and write results + screenshot")
    s.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    s.add_argument("--headless", action="store_true", help="render, save and exit")
    s.add_argument("--model", default="em-4x", help="bundled model name or model folder")
    s.add_argument("--no-view", action="store_true", help="skip napari (no screenshot)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser(
        "crappify", help="degrade HR images into simulated LR (out of core)",
        description="Degrade an HR image or stack plane by plane (lazily, with dask: stacks larger "
                    "than memory are fine) and write the LR as OME-Zarr (or TIFF for *.tif).")
    s.add_argument("hr", help="HR input: TIFF, Zarr/OME-Zarr, or sample:KEY (e.g. sample:cremi)")
    s.add_argument("out", help="output: *.tif/*.tiff (small stacks) or a Zarr folder (OME-Zarr)")
    s.add_argument("--scale", type=float, required=True, help="integer downsampling factor 1..8")
    s.add_argument("--photons", type=float, default=255.0,
                   help="photon count at intensity 1 (Poisson shot noise; 0 = none; default 255)")
    s.add_argument("--read-noise", type=float, default=0.01,
                   help="Gaussian read noise std on the [0, 1] scale (default 0.01)")
    s.add_argument("--blur", type=float, default=0.0, help="Gaussian PSF sigma in HR pixels")
    s.add_argument("--salt-pepper", type=float, default=0.0, help="fraction of dead/hot pixels")
    s.add_argument("--downsample", default="mean", choices=choices(Downsample))
    s.add_argument("--axes", help="input axes, e.g. ZYX or TYX (default: from the file)")
    s.add_argument("--pixel-size", type=_pixel_size, nargs="+", metavar="S",
                   help="input pixel size per axis (default: from the file, else 1)")
    s.add_argument("--units", nargs="+", metavar="U", help="unit per axis, e.g. nm nm nm")
    s.add_argument("--dtype", default="input", choices=choices(CrappifyDtype),
                   help="output dtype: input (default: the input's dtype and intensity scale, as "
                        "a faster acquisition on the same detector would record it, so a model "
                        "trained on such data restores it), float32 in [0, 1], or uint8/uint16 "
                        "over their range")
    s.add_argument("--seed", type=int, default=0, help="plane i uses plane_rng(seed, i)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it exists (an unfinished OME-Zarr of the same command is "
                        "resumed without it)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_crappify)

    s = sub.add_parser("train", help="train a restoration model")
    s.add_argument("--hr", action="append", required=True, help="HR image(s); repeatable")
    s.add_argument("--lr", help="real LR image of a registered pair")
    s.add_argument("--pair-hr", help="real HR image of the pair")
    s.add_argument("--scale", type=int, required=True)
    s.add_argument("--out", required=True, help="model folder to write")
    budget = s.add_argument_group("budget")
    budget.add_argument("--minutes", type=float, help="wall-clock budget")
    budget.add_argument("--epochs", type=int, help="number of epochs")
    budget.add_argument("--iters", type=int, default=100, help="iterations per epoch")
    s.add_argument("--encoder", default="resnet18s",
                   choices=choices(Encoder))
    s.add_argument("--strategy", default="lr_grid", choices=choices(Strategy))
    s.add_argument("--frames", type=int, default=1)
    s.add_argument("--self-attention", action="store_true")
    s.add_argument("--head-features", type=int, default=32,
                   help="lr_grid: LR-grid features the pixel-shuffle head upsamples (default 32)")
    s.add_argument("--activation", choices=choices(Activation),
                   help="U-Net decoder activation (default: ArchConfig's); leaky_relu units "
                        "cannot die (docs/training.md)")
    s.add_argument("--loss", choices=choices(RestorationLoss),
                   help="training loss (default l1; a fine-tune with --resume: mse)")
    s.add_argument("--feature-loss", metavar="WEIGHTS_OR_SEG_MODEL_DIR",
                   help="encoder weights (safetensors) or a segmentation model folder for the "
                        "perceptual loss; implies --loss perceptual")
    s.add_argument("--patch", type=int, default=TrainConfig.model_fields["patch_size"].default,
                   help="LR patch size (default %(default)s; at 4x on images of 512 px or more "
                        "--patch 128 --batch 2 scored better: docs/training.md)")
    s.add_argument("--any-offset", dest="any_offset", action=argparse.BooleanOptionalAction,
                   help="cut training patches at any HR offset (all scale^2 LR block phases) "
                        "instead of on the LR grid only (default: TrainConfig's)")
    s.add_argument("--batch", type=int, default=TrainConfig.model_fields["batch_size"].default)
    s.add_argument("--lr-max", dest="lr_max", type=float,
                   help="peak learning rate of the one-cycle schedule (default 3e-3, the best "
                        "measured with L1; docs/training.md)")
    s.add_argument("--photons", type=float, nargs="+", default=[255.0],
                   help="photon count at intensity 1 (one value or a range LO HI; 0 = no shot noise)")
    s.add_argument("--read-noise", type=float, nargs="+", default=[0.01])
    s.add_argument("--blur", type=float, nargs="+", default=[0.0],
                   help="Gaussian PSF sigma in HR pixels (one value or a range LO HI)")
    s.add_argument("--augment", choices=["none", "general"], default="none",
                   help="vary the HR during training: general = zoom 0.5-2x (other pixel "
                        "sizes), gamma 0.7-1.4, contrast 0.7-1.3, offset +-0.1 (docs/training.md); "
                        "--zoom/--gamma/--contrast/--brightness set one range")
    for flag, what in (("--zoom", "HR rescale factor (2: as at half the pixel size)"),
                       ("--gamma", "gamma on [0, 1] intensities"),
                       ("--contrast", "contrast factor about the patch mean"),
                       ("--brightness", "offset on [0, 1] intensities")):
        s.add_argument(flag, type=float, nargs=2, metavar=("LO", "HI"),
                       help=f"augmentation: {what}, drawn per sample")
    s.add_argument("--train-planes", help="e.g. 0-13,15-17")
    s.add_argument("--valid-planes", help="e.g. 18-19")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", default="auto", choices=choices(Precision),
                   help="auto: bf16 on GPU; on CPU bf16 where the CPU has native bf16 (1.9x "
                        "faster steps), else fp32")
    s.add_argument("--fp16", action="store_true", help="store weights as float16")
    s.add_argument("--lr-find", action="store_true",
                   help="run fastai's learning-rate finder, print a suggestion and exit")
    s.add_argument("--checkpoint-dir", help="write the weights after every epoch to DIR/last")
    s.add_argument("--normalisation", "--norm", dest="normalisation", default="percentile",
                   choices=choices(NormMode),
                   help="percentile (default): the model normalises every input from its own "
                        "1st/99.8th percentiles, so any intensity units work; fixed: the "
                        "training data's fixed range, where absolute intensity matters")
    _geometry_arguments(s, "HR")
    s.add_argument("--resume", metavar="MODEL",
                   help="fine-tune: start from these weights, a bundled or user model name "
                        "(em-4x) or folder, a checkpoint, or a single-frame model to widen to "
                        "--frames (its weights on the centre plane); without --lr-max the peak "
                        "learning rate is 1e-3 with a 5%% warm-up")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing model folder --out (checked before training)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "restore", help="restore an image or stack with a model (tiled, streamed to disk)",
        description="Restore IN with MODEL tile by tile and stream the result to OUT (OME-Zarr "
                    "folder *.zarr, resumable: rerun the same command after an interruption; or "
                    "*.tif/*.tiff). Memory stays bounded whatever the input size.")
    s.add_argument("model", help="model folder, bundled/user model name (e.g. em-4x), or a "
                                 "bioimage.io package (*.zip) made by decrappify export")
    s.add_argument("input", help="TIFF, Zarr/OME-Zarr, or sample:KEY[a:b]")
    s.add_argument("output", help="output *.zarr (OME-Zarr) or *.tif/*.tiff")
    s.add_argument("--axes", help="axes of IN, e.g. ZYX (default: from the file, else by ndim)")
    s.add_argument("--tile", type=int, help="tile size on the input grid, multiple of 32 "
                                            "(default 512, or 2 x halo if larger)")
    s.add_argument("--halo", type=int, help="context pixels per side (default: the model's "
                                            "receptive field: exact seams)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--precision", default="auto", choices=choices(Precision))
    s.add_argument("--batch", type=int, default=0, help="tiles per GPU batch (0: automatic)")
    s.add_argument("--scheduler", default="threads",
                   help="threads (default), local (a dask LocalCluster) or a dask.distributed "
                        "scheduler address")
    s.add_argument("--skip-empty", action="store_true", help="do not run constant input tiles")
    s.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the 8 rotations/flips of each tile "
                        "(8x slower, usually a little better)")
    s.add_argument("--output-dtype", default="float32", choices=choices(OutputDtype))
    s.add_argument("--levels", type=_levels, default="auto", metavar="N|auto",
                   help="OME-Zarr resolution levels, each halving Y and X (default auto: a "
                        "pyramid when the output is larger than 2 x 2 chunks)")
    _geometry_arguments(s, "IN")
    s.add_argument("--report", metavar="JSON",
                   help="write what was done and found: normalisation, pixel size, the "
                        "out-of-domain check and the LR consistency (the result degraded like "
                        "the model's training LR, compared with IN)")
    s.add_argument("--pixel-size-mismatch", default="resample", choices=POLICIES,
                   help="when IN's pixel size differs from the model's by more than 15%%: "
                        "resample IN to the model's grid and the result back (default), warn "
                        "and restore as it is, or stop with an error")
    s.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser(
        "segment", help="segment organelles with a segmentation model (tiled), count objects",
        description="Segment IN with the segmentation MODEL through the tiled engine and write "
                    "the class labels (or, with --instances, the objects) to OUT (*.zarr "
                    "OME-Zarr or *.tif). With --train-labels, first train MODEL (a new model "
                    "folder) on IN from sparse labels (0 = unlabelled, k = k-th class name).")
    s.add_argument("model", help="segmentation model folder or name (written with --train-labels)")
    s.add_argument("input", help="TIFF, Zarr/OME-Zarr, or sample:KEY[a:b]")
    s.add_argument("output", help="labels output: *.zarr (OME-Zarr) or *.tif/*.tiff")
    s.add_argument("--axes", help="axes of IN, e.g. YX, ZYX, TYX (default: from the file)")
    s.add_argument("--instances", choices=choices(InstanceMethod),
                   help="split classes into objects: connected components, or watershed on the "
                        "distance transform (separates touching objects); OUT gets object ids")
    s.add_argument("--min-size", type=_count, default=0, help="drop objects smaller than N pixels")
    s.add_argument("--csv", metavar="TABLE",
                   help="write the per-object measurements as CSV: class, area in 2-D / volume "
                        "in 3-D, centroid, diameter, mean intensity, the unit in each column's "
                        "name (area_um2, volume_um3, centroid_x_um; nm for tiny objects)")
    s.add_argument("--semantic", metavar="PATH", help="also write the class labels here")
    s.add_argument("--probabilities", metavar="PATH",
                   help="also write the class probabilities (leading C axis) here")
    s.add_argument("--pixel-size", type=_pixel_size, nargs="+", metavar="S",
                   help="pixel size per axis (default: from the file, else 1)")
    s.add_argument("--units", nargs="+", metavar="U", help="unit per axis (or one for all)")
    s.add_argument("--tile", type=int, help="tile size (multiple of 32)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--quiet", action="store_true")
    train_group = s.add_argument_group("training first (optional)")
    train_group.add_argument("--train-labels", metavar="LABELS",
                             help="sparse labels for IN (0 = unlabelled): train MODEL first")
    train_group.add_argument("--classes", type=lambda v: [c.strip() for c in v.split(",")],
                             help="class names for labels 1..K, comma separated")
    train_group.add_argument("--minutes", type=float, help="training budget (wall clock)")
    train_group.add_argument("--epochs", type=int, help="training epochs (default 1 without "
                                                        "--minutes)")
    train_group.add_argument("--encoder", default="resnet18s",
                             choices=choices(Encoder))
    train_group.add_argument("--loss", default="dice_ce", choices=choices(SegmentationLoss))
    train_group.add_argument("--iters", type=int, default=50, help="iterations per epoch")
    train_group.add_argument("--patch", type=int, default=128, help="patch size (multiple of 32)")
    train_group.add_argument("--batch", type=int, default=8)
    train_group.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_segment)

    s = sub.add_parser("evaluate", help="PSNR / SSIM / NRMSE of a prediction against ground truth")
    s.add_argument("pred")
    s.add_argument("gt")
    s.add_argument("--json", help="write per-plane and mean metrics to this JSON file "
                                  "(*.json; an infinite PSNR is written as null)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    s.add_argument("--normalised", action="store_true",
                   help="inputs are already in [0, 1] (default: map both by the ground truth's "
                        "range: uint8 / 255, else its 0.1/99.9 percentiles)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("bench", help="benchmarks that write JSON")
    s.add_argument("what", choices=["quality", "throughput", "memory", "seams", "segmentation",
                                    "training", "trust", "adaptation", "generalisation",
                                    "napari", "reliability"])
    s.add_argument("--json", help="write the results to this JSON file")
    s.add_argument("--option", "-o", action="append", metavar="KEY=VALUE",
                   help="benchmark-specific option (repeatable)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser(
        "export", help="export a model as a bioimage.io package (Fiji/deepImageJ, ilastik ...)",
        description="Write a bioimage.io (spec 0.5) model package: TorchScript weights, axes with "
                    "the model's scale, alignment and halo, its normalisation, test tensors from "
                    "real CREMI data, a cover, README and the PSSR citation. `decrappify restore "
                    "OUT.zip IN OUT` reads it back. See docs/interchange.md.")
    s.add_argument("model", help="bundled model name or model folder")
    s.add_argument("output", help="package to write (*.zip)")
    s.add_argument("--format", default="bioimageio", choices=["bioimageio"],
                   help="package format (default bioimageio)")
    s.add_argument("--author", action="append", metavar="NAME",
                   help="author's full name (repeatable; default: your login name)")
    s.add_argument("--license", default="CC-BY-4.0",
                   help="SPDX licence of the weights (default CC-BY-4.0)")
    s.add_argument("--test-image", metavar="IMAGE",
                   help="image (TIFF, Zarr or sample:KEY[a:b]) whose centre crop becomes the "
                        "package's test input (default: a held-out CREMI plane)")
    s.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("models", help="list bundled and user models")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)
    return p


# config fields whose command line option has another name
_FIELD_OPTIONS = {"blur_sigma": "blur", "batch_size": "batch", "patch_size": "patch",
                  "iterations_per_epoch": "iters", "feature_weights": "feature_loss"}


def error_message(e: BaseException, options: dict[str, str] | None = None) -> str:
    """One line for an error: a pydantic ValidationError as ``--option: message`` per field
    (no URL), an OSError as ``path: reason``, anything else as its text. ``options`` maps
    argparse ``dest`` names to option strings (:func:`_option_strings`)."""
    errors = getattr(e, "errors", None)
    if callable(errors) and type(e).__name__ == "ValidationError":
        options = options or {}
        parts = []
        for err in errors():
            loc = [str(x) for x in err.get("loc", ())]
            field = loc[-1] if loc else getattr(e, "title", "value")
            option = options.get(_FIELD_OPTIONS.get(field, field)) or ".".join(loc) or field
            msg = str(err.get("msg", "invalid value"))
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            elif "input" in err:
                msg = f"{msg} (got {err['input']!r})"
            parts.append(f"{option}: {msg}")
        return "; ".join(parts)
    if isinstance(e, OSError) and e.strerror:
        where = "" if e.filename is None else str(e.filename)
        if e.filename2 is not None:
            where = f"{where} -> {e.filename2}"
        return f"{where}: {e.strerror}" if where else e.strerror
    text = str(e) or type(e).__name__
    return " ".join(text.split())  # one line


def _option_strings(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """dest -> long option string, for the options of subcommand ``command``."""
    out: dict[str, str] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse keeps them here
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:  # noqa: SLF001
            for a in action.choices[command]._actions:  # noqa: SLF001
                if a.option_strings:
                    out.setdefault(a.dest, max(a.option_strings, key=len))
    return out


def _command(args) -> str:
    """The command line that ran (recorded in models and outputs): ``main``'s own ``argv``
    when it was called with one (a script, a benchmark), else the process's."""
    return "decrappify " + shlex.join(args.argv)


def _terminated(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if getattr(args, "feature_loss", None):
        args.loss = "perceptual"
    t0 = time.monotonic()
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        # SIGTERM (a batch system's stop) unwinds like Ctrl-C: a TIFF's .part file is removed
        # and a Zarr store stays marked unfinished (rerun to resume), instead of dying mid-write
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:
        print(f"decrappify {args.command}: error: "
              f"{error_message(e, _option_strings(parser, args.command))}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if code == 0 and args.command not in ("models",):
        print(f"[{args.command}] done in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
