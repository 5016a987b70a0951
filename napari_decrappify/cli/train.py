"""``decrappify train`` and ``decrappify crappify``: make training data, train a restoration
model (or fine-tune one with ``--resume``)."""

from __future__ import annotations

import sys
from pathlib import Path

from .inputs import _with_geometry, open_input, parse_planes, parse_sample, read_input
from .outputs import _command, _halo_said, _model_output


def _training_pixel_size(images) -> tuple[float, float] | None:
    """The HR pixel size (Y, X, nm) the model records: that of the training images (all
    alike), or None when they have none (then restore does not check inputs)."""
    from ..pixel_size import image_pixel_size_nm

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
    """``decrappify train``: train a restoration model on HR images (simulated LR, or a real LR/HR pair)."""
    import numpy as np
    from tqdm import tqdm

    from ..config import GENERAL_AUGMENT, ArchConfig, AugmentConfig, CrappifyConfig, TrainConfig
    from ..crappify import check_image
    from ..train import train

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
        from ..models import load_model
        from ..train import check_fine_tune_start

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
    config = TrainConfig(
        scale=args.scale,
        arch=ArchConfig(encoder=args.encoder, strategy=args.strategy, frames=args.frames,
                        self_attention=args.self_attention, scale=args.scale,
                        head_features=args.head_features,
                        **({"activation": args.activation} if args.activation else {})),
        crappify=CrappifyConfig(scale=args.scale, photons=photons, read_noise=read,
                                blur_sigma=blur),
        augment=augment,
        # no --loss / --lr-max on a --resume: the fine-tune schedule (TrainConfig.for_fine_tune)
        **({"loss": args.loss} if args.loss else {}),
        feature_weights=args.feature_loss, patch_size=args.patch,
        batch_size=args.batch, epochs=args.epochs, minutes=args.minutes,
        iterations_per_epoch=args.iters, seed=args.seed, device=args.device,
        precision=args.precision, train_planes=parse_planes(args.train_planes),
        normalisation=args.normalisation,
        valid_planes=parse_planes(args.valid_planes, "--valid-planes"),
        **({} if args.lr_max is None else {"lr_max": args.lr_max}),
        **({} if args.any_offset is None else {"any_offset": args.any_offset}),
    )
    opened = [_with_geometry(open_input(p), args.pixel_size, args.units, yx_alone=True)
              for p in args.hr]
    # what cannot be trained on (NaN, bool, empty) is refused before anything is said about it
    images = [check_image(np.asarray(im.data), f"HR image {spec}")
              for im, spec in zip(opened, args.hr, strict=True)]
    pixel_size = _training_pixel_size(opened)
    if args.lr_find:
        from ..train import find_lr

        found = find_lr(images, config, init_from=init)
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
          f"{result.iterations} iterations){_halo_said(result.model)}")
    if init is not None and result.model.config.training.get("best_epoch") == -1:
        print(f"no epoch scored better than {args.resume} on the validation planes: the model "
              "keeps its starting weights (train longer, or give more HR data)")
    if result.stop_reason == "diverged":  # saved (its best weights), but not a success
        print(f"decrappify train: error: {result.model.config.training['warnings'][-1]}",
              file=sys.stderr)
        return 1
    return 0


def cmd_crappify(args) -> int:
    """``decrappify crappify``: degrade an HR image or stack into simulated LR, plane by plane."""
    from tqdm import tqdm

    from ..config import CrappifyConfig, check_scale
    from ..crappify import crappify_file

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
