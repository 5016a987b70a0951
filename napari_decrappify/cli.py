"""Command line: ``decrappify COMMAND ...`` (also ``python -m napari_decrappify COMMAND ...``).

Image arguments are TIFF or Zarr/OME-Zarr paths, or ``sample:KEY`` for a real sample data set
(``sample:cremi``), optionally with a plane range: ``sample:cremi[0:20]``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

EXIT_NOT_BUILT = 2


def _not_built(name: str):
    def run(args) -> int:
        print(f"decrappify {name}: not built yet in this version", file=sys.stderr)
        return EXIT_NOT_BUILT

    return run


def parse_planes(text: str | None) -> list[int] | None:
    """``"0-17"``, ``"0-13,15-17"`` or ``"18,19"`` -> list of plane indices."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def read_input(spec: str):
    """Read an image argument into a numpy/dask array (see module docstring)."""
    import numpy as np

    if spec.startswith("sample:"):
        from .samples import load_sample

        key = spec[len("sample:"):]
        sl = None
        if "[" in key:
            key, rng = key.rstrip("]").split("[")
            a, b = rng.split(":")
            sl = slice(int(a) if a else None, int(b) if b else None)
        data, _ = load_sample(key)
        return data[sl] if sl is not None else data
    from .io import open_image

    return np.asarray(open_image(spec).data)


# --------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from tqdm import tqdm

    from .config import ArchConfig, CrappifyConfig, TrainConfig
    from .train import train

    photons = tuple(args.photons) if len(args.photons) == 2 else args.photons[0]
    read = tuple(args.read_noise) if len(args.read_noise) == 2 else args.read_noise[0]
    if photons == 0:
        photons = None
    config = TrainConfig(
        scale=args.scale,
        arch=ArchConfig(encoder=args.encoder, strategy=args.strategy, frames=args.frames,
                        self_attention=args.self_attention, scale=args.scale),
        crappify=CrappifyConfig(scale=args.scale, photons=photons, read_noise=read,
                                blur_sigma=args.blur),
        loss=args.loss, feature_weights=args.feature_loss, patch_size=args.patch,
        batch_size=args.batch, epochs=args.epochs, minutes=args.minutes,
        iterations_per_epoch=args.iters, lr_max=args.lr_max, seed=args.seed, device=args.device,
        precision=args.precision, train_planes=parse_planes(args.train_planes),
        valid_planes=parse_planes(args.valid_planes),
    )
    images = [read_input(p) for p in args.hr]
    pairs = None
    if args.lr:
        if not args.pair_hr:
            print("decrappify train: --lr needs --pair-hr (the registered HR of the pair)",
                  file=sys.stderr)
            return 2
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

    command = "decrappify " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = train(images, config, out=args.out, name=Path(args.out).name, pairs=pairs,
                   progress=progress, command=command, fp16=args.fp16)
    bar.close()
    print(f"saved {result.path} ({result.stop_reason}, {result.seconds:.0f} s, "
          f"{result.iterations} iterations)")
    return 0


def cmd_bench(args) -> int:
    from . import bench

    # each benchmark module registers itself on import
    bench.load_all()
    if args.what not in bench.BENCHMARKS:
        print(f"decrappify bench {args.what}: not built yet in this version", file=sys.stderr)
        return EXIT_NOT_BUILT
    options = dict(kv.split("=", 1) for kv in (args.option or []))
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
    s.set_defaults(func=_not_built("demo"))

    s = sub.add_parser("crappify", help="degrade HR images into simulated LR (out of core)")
    s.add_argument("hr")
    s.add_argument("out")
    s.add_argument("--scale", type=float, default=4)
    s.set_defaults(func=_not_built("crappify"))

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
                   choices=["tiny", "resnet18s", "resnet18", "resnet34", "resnet50"])
    s.add_argument("--strategy", default="lr_grid", choices=["lr_grid", "pre_upsample"])
    s.add_argument("--frames", type=int, default=1)
    s.add_argument("--self-attention", action="store_true")
    s.add_argument("--loss", default="l1", choices=["l1", "msssim_l1", "perceptual"])
    s.add_argument("--feature-loss", metavar="WEIGHTS_OR_SEG_MODEL_DIR",
                   help="encoder weights (safetensors) or a segmentation model folder for the "
                        "perceptual loss; implies --loss perceptual")
    s.add_argument("--patch", type=int, default=64, help="LR patch size")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--lr-max", dest="lr_max", type=float, default=1e-3)
    s.add_argument("--photons", type=float, nargs="+", default=[255.0],
                   help="photon count at intensity 1 (one value or a range LO HI; 0 = no shot noise)")
    s.add_argument("--read-noise", type=float, nargs="+", default=[0.01])
    s.add_argument("--blur", type=float, default=0.0)
    s.add_argument("--train-planes", help="e.g. 0-13,15-17")
    s.add_argument("--valid-planes", help="e.g. 18-19")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    s.add_argument("--fp16", action="store_true", help="store weights as float16")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("restore", help="restore an image or stack with a model (tiled, lazy)")
    s.add_argument("model")
    s.add_argument("input")
    s.add_argument("output")
    s.set_defaults(func=_not_built("restore"))

    s = sub.add_parser("segment", help="segment organelles with a segmentation model")
    s.add_argument("model")
    s.add_argument("input")
    s.add_argument("output")
    s.set_defaults(func=_not_built("segment"))

    s = sub.add_parser("evaluate", help="PSNR / SSIM / NRMSE of a prediction against ground truth")
    s.add_argument("pred")
    s.add_argument("gt")
    s.add_argument("--json")
    s.set_defaults(func=_not_built("evaluate"))

    s = sub.add_parser("bench", help="benchmarks that write JSON")
    s.add_argument("what", choices=["quality", "throughput", "memory", "seams", "segmentation"])
    s.add_argument("--json", help="write the results to this JSON file")
    s.add_argument("--option", "-o", action="append", metavar="KEY=VALUE",
                   help="benchmark-specific option (repeatable)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("models", help="list bundled and user models")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "feature_loss", None):
        args.loss = "perceptual"
    t0 = time.monotonic()
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"decrappify {args.command}: error: {e}", file=sys.stderr)
        return 1
    if code == 0 and args.command not in ("models",):
        print(f"[{args.command}] done in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
