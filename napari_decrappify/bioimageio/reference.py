"""A package's test tensors: the test input (a held-out CREMI plane degraded like the model's
LR, or the user's own image) and the reference output this library computes from it, which
``bioimageio.core.test_model`` then checks the package against."""

from __future__ import annotations

import numpy as np

from ..models import RestorationModel
from .processing import _post_gain_offset

TEST_PLANE = 22  # a CREMI plane held out from the bundled models' training (planes 20-24)


def _given_test_input(model: RestorationModel, size: int, image) -> tuple[np.ndarray, str]:
    """The centre ``size x size`` crop of the user's ``image`` (its middle plane(s)), as given."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"the test image must be a plane (Y, X) or a stack (Z, Y, X), not "
                         f"{a.ndim}-D")
    half = model.frames // 2
    if a.shape[0] < model.frames:
        raise ValueError(f"model {model.name!r} takes {model.frames} planes: the test image has "
                         f"{a.shape[0]}")
    c = a.shape[0] // 2
    a = a[c - half : c + half + 1]
    h, w = a.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"the test image is {h} x {w} px; the package's halo needs at least "
                         f"{size} x {size} (twice the receptive field, aligned)")
    if not np.isfinite(a).all():
        raise ValueError("the test image contains NaN or inf values")
    y0, x0 = (h - size) // 2, (w - size) // 2
    return (np.ascontiguousarray(a[None, :, y0 : y0 + size, x0 : x0 + size]),
            f"The given test image, centre crop {size} x {size}")


def _test_input(model: RestorationModel, size: int, image=None) -> tuple[np.ndarray, str]:
    """A ``(1, frames, size, size)`` float32 crop of real CREMI data in the model's input
    units (or of ``image``, see :func:`_given_test_input`), and one line saying what it is.

    The LR is the project's benchmark degradation (block mean by ``scale`` + shot/read noise)
    of held-out plane(s) around :data:`TEST_PLANE`; where that LR is smaller than ``size``
    (CREMI planes are 625 px: a 4x LR is 156 px, the halo asks for more) the factor is lowered
    until the crop fits, and the README says so.
    """
    from ..crappify import protocol_lr, to_unit
    from ..samples import load_sample

    if image is not None:
        return _given_test_input(model, size, image)
    hr, _ = load_sample("cremi")
    f = model.scale
    while f > 1 and hr.shape[-1] // f < size:
        f -= 1
    if hr.shape[-1] // f < size:
        raise ValueError(f"the model needs test inputs of at least {size} px, more than a CREMI "
                         f"plane ({hr.shape[-1]} px) holds")
    half = model.frames // 2
    planes = range(TEST_PLANE - half, TEST_PLANE + half + 1)
    lr = np.stack([protocol_lr(to_unit(hr[z]), f, noisy=True, seed=z) for z in planes])
    h, w = lr.shape[-2:]
    y0, x0 = (h - size) // 2, (w - size) // 2
    lr = lr[:, y0 : y0 + size, x0 : x0 + size]
    n = model.config.norm  # [0, 1] -> the units the model was trained in (uint8 EM: 0..255)
    x = (lr * (n.high - n.low) + n.low).astype(np.float32)[None]
    what = (f"CREMI ssTEM plane{'s' if half else ''} {planes[0]}"
            + (f"-{planes[-1]}" if half else "")
            + f" (held out from training), {f}x block mean + Poisson/read noise, centre crop "
            + f"{size} x {size}")
    if f != model.scale:
        what += f" (degraded {f}x, not {model.scale}x: a {model.scale}x LR of the 625 px plane " \
                f"is smaller than the {size} px the halo requires)"
    return x, what


def _reference_output(model: RestorationModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the package's pipeline must produce on ``x``, computed by this library: the
    native network on the input normalised as the spec's preprocessing does (percentiles of the
    whole sample, all frames jointly), mapped back as its postprocessing does."""
    import torch

    norm = model.config.norm
    if norm.mode == "fixed":
        fixed = norm
    else:
        q0, q1 = norm.input_percentiles
        lo, hi = np.percentile(x, (q0, q1))  # numpy's "linear", as bioimageio.core's
        fixed = model.input_norm(given=(float(lo), float(hi)))
    xn = model.normalize(x, fixed)
    with torch.inference_mode(), model._forward_lock:  # noqa: SLF001 - the module's own lock
        y = model.net(torch.from_numpy(xn).to(_device(model))).float().cpu().numpy()
    return _postprocess(model, y), xn


def _postprocess(model: RestorationModel, y: np.ndarray) -> np.ndarray:
    gain, offset = _post_gain_offset(model)
    return (y * gain + offset).astype(np.float32)


def _device(model: RestorationModel):
    return next(model.net.parameters()).device
