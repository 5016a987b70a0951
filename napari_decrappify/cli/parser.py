"""The ``decrappify`` argument parser: every command with its options and help texts.

Building it imports no command's dependencies (torch, dask ...): each command imports what it
needs when it runs, so ``decrappify --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math

from ..config import (
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
from ..pixel_size import POLICIES


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


def _geometry_arguments(parser, what: str) -> None:
    """``--pixel-size`` (Y and X at least) and ``--units`` of an image argument."""
    parser.add_argument("--pixel-size", type=_pixel_size, nargs="+", metavar="S",
                        help=f"pixel size of {what}: one value for Y and X, two (Y X), or one "
                             "per axis (default: from the file; nm unless --units says otherwise)")
    parser.add_argument("--units", nargs="+", metavar="U", help="unit per axis (or one for all)")


def build_parser() -> argparse.ArgumentParser:
    """The ``decrappify`` parser; each subcommand's ``func`` default is its ``cmd_*``."""
    # The commands are looked up on the package each time a parser is built, not imported at
    # this module's top: a patch on ``napari_decrappify.cli.cmd_X`` (tests make one) then takes
    # effect, as it did when the command line was one module.
    from . import (
        cmd_bench,
        cmd_crappify,
        cmd_demo,
        cmd_evaluate,
        cmd_export,
        cmd_models,
        cmd_restore,
        cmd_segment,
        cmd_train,
    )

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
                                            "(default: the largest that fits memory with the "
                                            "model's measured halo; 512, or 2 x halo if "
                                            "larger, with --exact or a model without one)")
    s.add_argument("--halo", type=int, help="context pixels per side (default: the model's "
                                            "measured halo_px, within 2e-3 of exact output; "
                                            "else its receptive field: exact seams)")
    s.add_argument("--exact", action="store_true",
                   help="tile with the receptive field as halo and 512 px tiles (tiled = "
                        "whole-image output to ~1e-6) instead of the model's measured halo "
                        "(within 2e-3) and tiles fitted to memory")
    s.add_argument("--border", default="image", choices=("image", "reflect"),
                   help="at the image's edges, tiles stop as the whole image run in one go "
                        "does (image, the default: faster); reflect: each edge gets the halo "
                        "reflected first (the engine's former geometry)")
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
