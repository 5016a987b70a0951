"""What a package of ours carries that others do not: this project's own model files, attached
and named under ``config.napari_decrappify`` (:data:`CONFIG_KEY`), the names a package's
description may have, and the error a package that cannot be read back raises
(:class:`BioimageioError`)."""

from __future__ import annotations

from ..models import ModelFileError

CONFIG_KEY = "napari_decrappify"  # our section of the package's ``config``
ATTACHED_CONFIG = "decrappify-model.json"
ATTACHED_WEIGHTS = "decrappify-model.safetensors"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


class BioimageioError(ModelFileError):
    """A bioimage.io package that this project cannot read back."""
