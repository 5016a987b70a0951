"""``decrappify demo`` and ``decrappify bench``: the end-to-end demonstration, and the
dispatch to the benchmarks of :mod:`napari_decrappify.bench`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .errors import EXIT_NOT_BUILT
from .outputs import _not_a_folder


def cmd_demo(args) -> int:
    """``decrappify demo``: restore the real EM sample, write the results and a napari screenshot."""
    import importlib
    import os

    from ..demo import metrics_table, run_demo
    from ..io import write_text_atomic

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


def cmd_bench(args) -> int:
    """``decrappify bench``: run one benchmark (``-o KEY=VALUE`` options) and print its summary."""
    import inspect

    from .. import bench

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
