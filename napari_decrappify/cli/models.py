"""``decrappify models`` and ``decrappify export``: list the models, export one as a
bioimage.io package."""

from __future__ import annotations

import json

from .inputs import open_input


def cmd_models(args) -> int:
    """``decrappify models``: list the bundled and user models (``--json``: as JSON)."""
    from ..models import list_models

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
    """``decrappify export``: write a model as a bioimage.io package."""
    import numpy as np

    from ..bioimageio import export_bioimageio

    # one format so far; the option keeps room for others (e.g. ONNX) without a new command
    test_image = None
    if args.test_image:
        test_image = np.asarray(open_input(args.test_image, None).data)
    out = export_bioimageio(args.model, args.output, authors=args.author, license=args.license,
                            test_image=test_image, overwrite=args.overwrite)
    print(f"wrote {out} (bioimage.io model, spec 0.5); check it with: "
          f"bioimageio test {out}")
    return 0
