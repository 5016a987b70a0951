"""Outputs of the command line: refuse an output path that cannot take the result before any
work is done, write JSON that other tools read, and record the command line that ran."""

from __future__ import annotations

import shlex
from pathlib import Path


def _not_a_folder(path, option: str) -> None:
    """Refuse an output file path that is an existing folder (before computing anything)."""
    if path and Path(path).is_dir():
        raise ValueError(f"{option} {path}: is a folder; give a file path")


def _json_output(path, option: str, overwrite: bool) -> None:
    """Refuse, before any work, a JSON output path that is not ``*.json`` (a typo must not
    replace an image) or that exists without ``--overwrite``."""
    if not path:
        return
    _not_a_folder(path, option)
    if Path(path).suffix.lower() != ".json":
        raise ValueError(f"{option} {path}: the file name must end in .json")
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{option} {path} exists: pass --overwrite to replace it")


def _standard_json(value):
    """``value`` with non-finite floats as ``null``: JSON has no Infinity or NaN (the PSNR of
    identical images is infinite), and other tools refuse files that contain them."""
    import math

    if isinstance(value, dict):
        return {k: _standard_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_standard_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _model_output(path, overwrite: bool) -> None:
    """Refuse, before training, an ``--out`` that cannot take the model: a file, a file name
    (``m.tif``), a folder that is not a model, or an existing model without ``--overwrite``
    (a finished run must never be thrown away at the end, nor replace a model silently)."""
    from ..models import CONFIG_FILE

    out = Path(path)
    if out.suffix.lower() in (".tif", ".tiff", ".zarr", ".json", ".png", ".npy", ".h5"):
        raise ValueError(f"--out {path}: a model is a folder; give a folder name without a file "
                         "extension")
    if out.is_file():
        raise FileExistsError(f"--out {path} is a file; a model is a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / CONFIG_FILE).is_file():
            raise FileExistsError(f"--out {path} is a folder that is not a model folder (no "
                                  f"{CONFIG_FILE}); choose another output folder")
        if not overwrite:
            raise FileExistsError(f"--out {path}: a model exists there; pass --overwrite to "
                                  "replace it")


def _command(args) -> str:
    """The command line that ran (recorded in models and outputs): ``main``'s own ``argv``
    when it was called with one (a script, a benchmark), else the process's."""
    return "decrappify " + shlex.join(args.argv)


def _halo_said(model) -> str:
    """What the user is told of a trained model's tiling halo (measured when it was saved,
    after the budget: the line says why saving took a few seconds), or "" when unmeasured."""
    halo = model.config.halo_measurement
    if model.config.halo_px is None or "seconds" not in halo:
        return ""
    return (f"; tiling halo {model.config.halo_px} px (receptive field "
            f"{model.receptive_field}), measured in {halo['seconds']:.0f} s")
