"""napari sample data: the real CREMI ssTEM volume, and a 4x LR/HR pair made from it.

The data come from :mod:`napari_decrappify.samples` (a pinned PyPI wheel, sha256-checked and
cached; no synthetic stand-in). Layers carry physical pixel sizes (nm) so that the LR overlays
the HR exactly: the LR's geometry is :func:`napari_decrappify.io.downscale_geometry` of the HR's.
"""

from __future__ import annotations

import numpy as np

from ..crappify import from_unit, protocol_lr
from ..io import downscale_geometry
from ..samples import load_sample
from ._layers import BLENDING

LR_SCALE = 4


def _hr_kwargs(sample, name: str) -> dict:
    return {
        "name": name,
        "scale": sample.scale,
        "translate": (0.0,) * len(sample.axes),
        "units": sample.units,
        "axis_labels": tuple(sample.axes.lower()),
        "contrast_limits": (0.0, 255.0),
        "blending": BLENDING,
        "metadata": {"axes": sample.axes, "sample": sample.key, "source": sample.source,
                     "licence": sample.licence},
    }


def cremi_hr() -> list[tuple]:
    """CREMI ssTEM, 25 x 625 x 625 uint8, 40 x 4 x 4 nm (z, y, x)."""
    data, sample = load_sample("cremi")
    return [(data, _hr_kwargs(sample, "CREMI HR"), "image")]


def make_lr(hr: np.ndarray, scale: int = LR_SCALE) -> np.ndarray:
    """The project's benchmark degradation (``crappify.protocol_lr``, noisy), plane ``i``
    seeded with ``i`` (as the demo does), in the HR's intensity units (float32, 0..255 for the
    uint8 HR): the Restore dock then gives the bundled models what they were trained on
    ([0, 1] restored to garbage: 5.96 dB for bicubic's 25.28)."""
    lr = np.stack([protocol_lr(p, scale, noisy=True, seed=i) for i, p in enumerate(hr)])
    return from_unit(lr, hr.dtype)


def cremi_lr_hr() -> list[tuple]:
    """A 4x LR (block mean + Poisson/read noise) and the HR it was made from, overlaid."""
    hr, sample = load_sample("cremi")
    lr = make_lr(hr, LR_SCALE)
    hr_kwargs = _hr_kwargs(sample, "CREMI HR")
    lr_scale, lr_translate = downscale_geometry(hr_kwargs["scale"], hr_kwargs["translate"],
                                                sample.axes, LR_SCALE)
    lr_kwargs = {
        **hr_kwargs,
        "name": f"CREMI {LR_SCALE}x LR",
        "scale": lr_scale,
        "translate": lr_translate,
        "contrast_limits": hr_kwargs["contrast_limits"],
        "metadata": {**hr_kwargs["metadata"],
                     "degradation": f"{LR_SCALE}x block mean, Poisson(u*255)/255 + N(0, 0.01), "
                                    "clipped; plane i seeded with i"},
    }
    return [(hr, hr_kwargs, "image"), (lr, lr_kwargs, "image")]
