"""What a package tells its reader: the cover (LR | restored), the README (input, output,
normalisation, what the package cannot carry) and the PSSR citation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..models import RestorationModel
from .geometry import input_halo
from .layout import ATTACHED_CONFIG

PSSR_DOI = "10.1038/s41592-021-01080-z"
PSSR_CITATION = ("Fang, L. et al. Deep learning-based point-scanning super-resolution imaging. "
                 "Nature Methods 18, 406-416 (2021)")


def _cover(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """LR (nearest-neighbour, at the output's size) | restored, side by side, 8-bit PNG."""
    from PIL import Image

    lr = x[0, x.shape[1] // 2]
    out = y[0, 0]
    s = out.shape[-1] // lr.shape[-1]
    lr_up = np.kron(lr, np.ones((s, s), np.float32))
    lo, hi = np.percentile(lr, (0.5, 99.5))
    lo_y, hi_y = np.percentile(out, (0.5, 99.5))

    def u8(a, lo, hi):
        return np.clip((a - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)

    both = np.concatenate([u8(lr_up, lo, hi), u8(out, lo_y, hi_y)], axis=1)
    img = Image.fromarray(both)
    if img.height > 512:  # a cover is a thumbnail: 1024 x 512 at most
        img = img.resize((1024, 512), Image.Resampling.LANCZOS)
    img.save(path)


def _readme(model: RestorationModel, what: str, min_size: int, trace_diff: float) -> str:
    c = model.config
    halo = input_halo(model)
    n = c.norm
    frames = (f"{model.frames} neighbouring planes (z or t) on the channel axis, centre plane in "
              f"the middle" if model.frames > 1 else "one plane (one channel)")
    if n.mode == "fixed":
        norm = (f"Input intensities are mapped by `x -> (x - {n.low:g}) / ({n.high - n.low:g})` "
                "(a fixed range: the input must be in the units the model was trained in) and the "
                "output back by the exact inverse: outputs are in the input's units.")
    else:
        q0, q1 = n.input_percentiles
        l0, l1 = n.input_levels
        norm = (
            f"napari-decrappify normalises each input from its own intensities: its {q0:g} and "
            f"{q1:g} percentiles are mapped to the network values they had on the training data "
            f"({l0:.6g} and {l1:.6g}), and the output is mapped back to the input's units by the "
            "inverse. The preprocessing here does the first half exactly (`scale_range` over "
            "channel, y and x of each sample, then `scale_linear`). The spec cannot express the "
            "inverse (a postprocessing step cannot scale *by* an input's percentile range), so "
            f"**the output is in units where the input's {q0:g} and {q1:g} percentiles are 0 and "
            f"1**: to get the input's units, compute `out * (p{q1:g} - p{q0:g}) + p{q0:g}` with "
            f"the input's own percentiles. `decrappify restore this.zip IN OUT` does this for you.")
    return f"""# {c.name}: PSSR-style restoration exported by napari-decrappify

{c.description or 'A restoration model trained with napari-decrappify.'}

A fastai U-Net ({c.arch.encoder} encoder, {c.arch.strategy} upsampling) that maps a
low-resolution, noisy image to a {model.scale}x finer, denoised one, after the point-scanning
super-resolution (PSSR) method: high-resolution images are *crappified* into realistic
low-resolution versions and the network learns to undo that.

## Input and output

- input `(batch, channel, y, x)`, float32: {frames}. y and x are `{min_size} + n * {c.alignment}`
  pixels (the smallest size the halo allows, in steps of the network's alignment).
- output `(batch, channel, y, x)`: {model.out_channels} channel(s), y and x = {model.scale} x the
  input's. The halo ({halo * model.scale} output pixels, {halo} input pixels) is the model's
  **measured receptive field** ({model.receptive_field} input pixels) rounded up to half the
  alignment: tiles overlapping by it join without seams. Image borders are reflect-padded, as
  napari-decrappify does.
- {norm}

## Test data

{what}. The test output was computed by napari-decrappify's own code (the native network, the
normalisation above); the TorchScript weights reproduce it to {trace_diff:.1g}.

## What this package cannot carry

- the **crappifier** the model was trained with (the degradation it expects its inputs to look
  like), its pixel-size range, the **out-of-domain statistics** (noise level, spectrum,
  histogram of the training inputs) that napari-decrappify checks inputs against, and the
  held-out metrics: they are in the attached `{ATTACHED_CONFIG}`, which only napari-decrappify
  reads;
- the **receptive-field measurement** itself: only its result, the halo;
- the nuances of the data-derived normalisation: napari-decrappify measures a stack's range as
  the median over its planes of each plane's percentiles, leaving out blank planes and
  widening to the full range where the percentiles coincide; here each sample is normalised
  from its own percentiles, so a crop can restore differently from the whole image it comes
  from;
- uncertainty (test-time augmentation, the LR-consistency map) and the out-of-domain warnings.

## Use it in napari-decrappify

```bash
decrappify restore this-package.zip input.tif output.ome.zarr
```

restores exactly as the model folder it was exported from (the attached weights are read;
no code from the package is run).

## Cite

{PSSR_CITATION}, doi:{PSSR_DOI}.
"""
