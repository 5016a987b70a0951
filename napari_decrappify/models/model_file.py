"""``model.json``: its schema (:class:`ModelFile`, schema-versioned, unknown keys refused) and
how it is read and checked (:func:`read_model_config`), with the names of a model folder's two
files (:data:`CONFIG_FILE`, :data:`WEIGHTS_FILE`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import MAX_HALO, ArchConfig, CrappifyConfig, NormConfig
from .errors import ModelFileError
from .networks import ENCODER_STRIDE

SCHEMA_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"


class ModelFile(BaseModel):
    """Schema of ``model.json`` (validated on load; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    kind: Literal["restoration", "segmentation"] = "restoration"
    name: str = "unnamed"
    description: str = ""
    arch: ArchConfig = Field(default_factory=ArchConfig)
    norm: NormConfig = Field(default_factory=NormConfig)
    receptive_field: int = Field(0, ge=0, le=MAX_HALO)  # measured; the exact tiling halo
    alignment: int = Field(32, ge=1)
    # the default tiling halo: the smallest that keeps tiled output within a measured
    # tolerance of the exact output (engine.halo.measure_halo); None (older files): the
    # receptive field. How it was measured goes in halo_measurement.
    halo_px: int | None = Field(None, ge=0, le=MAX_HALO)
    halo_measurement: dict[str, Any] = Field(default_factory=dict)
    classes: list[str] = Field(default_factory=list)
    crappifier: CrappifyConfig | None = None
    pixel_size_nm: list[float] | None = None  # the HR's (Y, X): inputs are expected at x scale
    # statistics of the training inputs (napari_decrappify.domain): out-of-domain warnings
    domain: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    weights_sha256: str = ""
    weights_dtype: Literal["float32", "float16"] = "float32"

    @property
    def default_halo(self) -> int:
        """The halo the engine uses when none is given: the measured tolerance halo
        (``halo_px``) if recorded for these weights, else the receptive field (exact)."""
        # measured on other weights (a fine-tune starts from a copy of its start's config):
        # stale, so the exact halo
        measured_on = self.halo_measurement.get("weights_sha256")
        if self.halo_px is None or measured_on not in (None, self.weights_sha256):
            return self.receptive_field
        return int(self.halo_px)

    @model_validator(mode="after")
    def _alignment_fits_encoder(self):
        # tiles are cut at multiples of the alignment: it must be a multiple of the encoder's
        # stride, or the U-Net's skip connections meet feature maps of unequal size
        stride = ENCODER_STRIDE[self.arch.encoder]
        if self.alignment % stride:
            raise ValueError(f"alignment {self.alignment} is not a multiple of the {self.arch.encoder} "
                             f"encoder's stride {stride}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _relu_before_activation_field(cls, data):
        # files written before ``arch.activation`` existed were all built with ReLU; the
        # default for new models is leaky ReLU, so a missing field must not take the default
        if isinstance(data, dict) and isinstance(data.get("arch"), dict) \
                and "activation" not in data["arch"]:
            data = {**data, "arch": {**data["arch"], "activation": "relu"}}
        return data


def read_model_config(path: Path) -> ModelFile:
    cfg_path = path / CONFIG_FILE
    if not cfg_path.exists():
        raise ModelFileError(f"{path} is not a model folder: {CONFIG_FILE} is missing")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{cfg_path} is not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ModelFileError(f"{cfg_path} must hold a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ModelFileError(
            f"{cfg_path}: unknown schema_version {version!r} (this version reads {SCHEMA_VERSION})"
        )
    try:
        return ModelFile.model_validate(raw)
    except ValidationError as e:
        # one line per field, without pydantic's help URL (the CLI prints errors as one line)
        fields = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}"
                           + (f" (got {err['input']!r})" if "input" in err
                              and not isinstance(err["input"], dict) else "")
                           for err in e.errors())
        raise ModelFileError(f"{cfg_path} does not match the model schema: {fields}") from e
