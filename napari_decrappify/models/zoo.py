"""Where models are: the bundled (``zoo``) and user model folders (:func:`model_search_dirs`,
:func:`list_models`), a name or path resolved to one (:func:`resolve_model_path`), and the stamp
that tells caches a model was saved anew (:func:`model_stamp`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import ModelFileError
from .model_file import CONFIG_FILE, WEIGHTS_FILE, ModelFile

ZOO_DIR = Path(__file__).parent.parent / "zoo"  # napari_decrappify/zoo, beside this package


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A model folder, a bioimage.io package (``*.zip``, see :mod:`napari_decrappify.bioimageio`),
    or the name of a bundled (``zoo``) or user model."""
    p = Path(name_or_path)
    if p.is_dir() or (p.suffix.lower() == ".zip" and p.is_file()):
        return p
    name = str(name_or_path)
    # a name is one folder inside a search folder: "../../x" must not reach outside them
    if name and name == p.name and name not in (".", ".."):
        for root in model_search_dirs():
            cand = root / name
            if (cand / CONFIG_FILE).exists():
                return cand
    known = ", ".join(sorted(m["name"] for m in list_models())) or "none"
    raise ModelFileError(
        f"no model folder or bundled model named {str(name_or_path)!r} (known: {known})"
    )


def model_stamp(path: str | os.PathLike) -> tuple:
    """What changes when a model is saved or exported anew at ``path``: ``(mtime_ns, size)``
    of a package's ``*.zip``, or of a folder's ``model.json`` and weights (None for a file
    that is missing: :func:`load_model` says what is missing).

    Caches of loaded models key on it: a package re-exported at the same path (a zip has no
    weights file of its own to look at) or weights saved anew into a folder are loaded again.
    """
    p = Path(path)
    files = [p] if p.suffix.lower() == ".zip" and not p.is_dir() else [p / CONFIG_FILE,
                                                                          p / WEIGHTS_FILE]
    return tuple(_file_stamp(f) for f in files)


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def model_search_dirs() -> list[Path]:
    from platformdirs import user_data_dir

    dirs = [ZOO_DIR, Path(user_data_dir("napari-decrappify")) / "models"]
    extra = os.environ.get("DECRAPPIFY_MODELS")
    if extra:
        dirs = [Path(p) for p in extra.split(os.pathsep)] + dirs
    return dirs


def list_models() -> list[dict[str, Any]]:
    """Bundled and user models: name, kind, scale, path, metrics."""
    out = []
    for root in model_search_dirs():
        if not root.is_dir():
            continue
        for cfg in sorted(root.glob(f"*/{CONFIG_FILE}")):
            try:
                meta = ModelFile.model_validate_json(cfg.read_text())
            except (ValidationError, ValueError):
                continue
            out.append({
                "name": cfg.parent.name, "kind": meta.kind, "scale": meta.arch.scale,
                "frames": meta.arch.frames, "encoder": meta.arch.encoder,
                "path": str(cfg.parent), "bundled": root == ZOO_DIR, "metrics": meta.metrics,
            })
    return out
