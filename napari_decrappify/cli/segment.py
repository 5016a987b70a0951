"""``decrappify segment``: segment organelles (training the model first with ``--train-labels``),
split the classes into objects, measure and count them."""

from __future__ import annotations

from pathlib import Path

from .inputs import _with_geometry, open_input, read_input
from .outputs import _command, _halo_said, _not_a_folder


def cmd_segment(args) -> int:
    """``decrappify segment``: segment (after training, with ``--train-labels``), split and count objects."""
    import numpy as np
    from tqdm import tqdm

    from ..io import write_ome_zarr, write_tiff
    from ..models import load_model
    from ..segment import SegmentConfig, measure, predict, segmentation_arch, train_segmenter
    from ..segment import instances as split_instances

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
              f"{result.seconds:.0f} s, {result.iterations} iterations)"
              f"{_halo_said(result.model)}")
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
