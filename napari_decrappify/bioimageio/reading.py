"""Import: :func:`load_bioimageio` reads back a package this project exported (its attached
``model.json`` and safetensors weights, checked as a model folder is; nothing in the package is
run) and refuses any other with a one-line reason; :func:`is_package` says which paths are
packages. Needs no bioimage.io package installed."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from ..models import CONFIG_FILE, WEIGHTS_FILE, RestorationModel
from .layout import CONFIG_KEY, RDF_NAMES, BioimageioError


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
    from ..models import load_model

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
