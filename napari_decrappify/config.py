"""Typed configuration objects shared by the CLI, the scripting API and the napari docks.

Every config is a pydantic model with ``extra="forbid"``, so that a typo in a JSON file or a
keyword argument is an error that names the field, instead of a silently ignored option.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCALES = (1, 2, 3, 4, 5, 6, 7, 8)

# The closed sets of choices, named once: the configs validate against them, and the CLI and
# the docks list them (``choices(Encoder)``), so that a new option cannot reach one and not the other.
Downsample = Literal["mean", "bilinear", "bicubic"]
Encoder = Literal["tiny", "resnet18s", "resnet18", "resnet34", "resnet50"]
Strategy = Literal["lr_grid", "pre_upsample"]
Activation = Literal["relu", "leaky_relu"]
RestorationLoss = Literal["l1", "mse", "msssim_l1", "perceptual"]
SegmentationLoss = Literal["ce", "dice_ce"]
InstanceMethod = Literal["cc", "watershed"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
OutputDtype = Literal["float32", "input"]  # restored output: float32, or the input's dtype
CrappifyDtype = Literal["float32", "uint8", "uint16", "input"]


def choices(options) -> list[str]:
    """The values of a ``Literal`` alias above, in order (for argparse and combo boxes)."""
    return list(get_args(options))


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def minutes_alone_means_no_epochs(data):
    """A training config given ``minutes`` and no ``epochs`` runs for the minutes: ``epochs``
    defaults to 1, which would otherwise end the run after one epoch, whatever the budget."""
    if isinstance(data, dict) and data.get("minutes") is not None and "epochs" not in data:
        data = {**data, "epochs": None}
    return data


def check_scale(scale) -> int:
    """Return ``scale`` as an int, or raise a ValueError that names the problem."""
    if isinstance(scale, bool) or not float(scale).is_integer():
        raise ValueError(f"scale must be an integer factor 1..8, got {scale!r}")
    scale = int(scale)
    if scale not in SCALES:
        raise ValueError(f"scale must be an integer factor 1..8, got {scale}")
    return scale


class CrappifyConfig(_Config):
    """Parameters of a degradation: HR -> simulated LR.

    Intensities are normalised to [0, 1] first (see :func:`napari_decrappify.crappify.to_unit`);
    noise levels are on that scale. Ranges ``(lo, hi)`` are sampled uniformly per sample.
    """

    scale: int = 4
    downsample: Downsample = "mean"
    blur_sigma: float | tuple[float, float] = 0.0
    photons: float | tuple[float, float] | None = 255.0
    read_noise: float | tuple[float, float] = 0.01
    salt_pepper: float | tuple[float, float] = 0.0
    clip: bool = True

    @field_validator("scale", mode="before")
    @classmethod
    def _scale(cls, v):
        return check_scale(v)

    @field_validator("blur_sigma", "read_noise", "salt_pepper", "photons")
    @classmethod
    def _non_negative(cls, v):
        if v is None:
            return v
        values = v if isinstance(v, tuple) else (v,)
        for x in values:
            if not 0 <= x < math.inf:
                raise ValueError(f"must be finite and >= 0, got {v!r}")
        if isinstance(v, tuple) and v[0] > v[1]:
            raise ValueError(f"range (lo, hi) needs lo <= hi, got {v!r}")
        return v


def _range(v, name: str, low: float, high: float) -> tuple[float, float]:
    lo, hi = (float(x) for x in v)
    if not (low <= lo <= hi <= high):
        raise ValueError(f"{name} range needs {low:g} <= LO <= HI <= {high:g}, got ({lo:g}, {hi:g})")
    return lo, hi


_AUGMENT_BOUNDS = {"zoom": (0.25, 4.0), "gamma": (0.25, 4.0), "contrast": (0.1, 10.0),
                   "brightness": (-0.5, 0.5)}


class AugmentConfig(_Config):
    """Variation of the HR during training, so a model copes with data unlike its training
    data. Each range ``(lo, hi)`` is drawn once per training sample (every frame of a sample
    shares it: one acquisition); the defaults leave the HR as it is.

    ``zoom`` rescales the HR by a factor drawn log-uniformly (2: structures twice as large in
    pixels, as at half the pixel size); ``gamma`` (log-uniform), ``contrast`` (about the
    patch mean) and ``brightness`` (an offset) act on intensities in [0, 1], clipped.
    Rotations by 90 degrees and flips are always on.
    """

    zoom: tuple[float, float] = (1.0, 1.0)
    gamma: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    brightness: tuple[float, float] = (0.0, 0.0)

    @field_validator("zoom", "gamma", "contrast", "brightness")
    @classmethod
    def _in_bounds(cls, v, info):
        return _range(v, info.field_name, *_AUGMENT_BOUNDS[info.field_name])

    @property
    def active(self) -> bool:
        """Whether any range differs from leaving the HR as it is."""
        return self != AugmentConfig()


# ``decrappify train --augment general`` and the bundled em-4x: pixel sizes about 0.5x-2x the
# training data's, other histograms (gamma, contrast, offset)
GENERAL_AUGMENT = AugmentConfig(zoom=(0.5, 2.0), gamma=(0.7, 1.4), contrast=(0.7, 1.3),
                                brightness=(-0.1, 0.1))


class ArchConfig(_Config):
    """Network architecture of a restoration or segmentation model."""

    encoder: Encoder = "resnet18s"
    strategy: Strategy = "lr_grid"
    scale: int = 4
    frames: int = 1
    in_channels: int = 1
    out_channels: int = 1
    self_attention: bool = False
    blur: bool = True
    spectral_norm: bool = False
    residual: bool = True
    # decoder activation. ReLU (fastai's default; model files written before this field) can
    # die: with the L1 loss the last decoder block of resnet18s U-Nets went all-zero within 3
    # minutes (field 14 px); leaky ReLU keeps a gradient through every unit (docs/training.md)
    activation: Activation = "leaky_relu"
    # lr_grid only: features on the LR grid that the pixel-shuffle head turns into scale^2
    # sub-pixels (at 4x: 16 sub-pixels from 32 features)
    head_features: int = Field(32, ge=8, le=512)

    @field_validator("scale", mode="before")
    @classmethod
    def _scale(cls, v):
        return check_scale(v)

    @field_validator("frames")
    @classmethod
    def _frames(cls, v):
        if v < 1 or v % 2 == 0:
            raise ValueError(f"frames must be an odd number >= 1 (centre frame is the target), got {v}")
        return v


NormMode = Literal["fixed", "percentile"]
# CSBDeep/CARE's convention: robust to a few saturated or dead pixels and to noise tails
INPUT_PERCENTILES = (1.0, 99.8)


class NormConfig(_Config):
    """Intensity normalisation stored with a model.

    ``mode="fixed"``: network input ``(x - low) / (high - low)`` whatever the data, for data whose
    absolute intensity matters (the model's units must then be the input's units).

    ``mode="percentile"`` (the field's convention, CSBDeep/N2V): the input's own
    ``input_percentiles`` (over the whole image or stack) are mapped to ``input_levels``, the
    network values those percentiles had on the model's training inputs (recorded at
    training), and the output is mapped back to the input's units by the inverse. A model
    trained on uint8 then restores uint16 or float versions of the same image to the same
    result, up to the units. ``low`` / ``high`` stay the training data's normalisation (the
    units the model was trained in; informational here).
    """

    mode: NormMode = "fixed"
    low: float = 0.0
    high: float = 1.0
    percentiles: tuple[float, float] | None = None  # how low/high were found on the training HR
    input_percentiles: tuple[float, float] = INPUT_PERCENTILES
    input_levels: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _order(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"normalisation bounds must be finite, got low={self.low}, high={self.high}")
        if not self.high > self.low:
            raise ValueError(f"normalisation needs high > low, got low={self.low}, high={self.high}")
        q0, q1 = self.input_percentiles
        if not 0 <= q0 < q1 <= 100:
            raise ValueError(f"input_percentiles need 0 <= low < high <= 100, got {self.input_percentiles}")
        if self.mode == "percentile":
            if self.input_levels is None:
                raise ValueError("percentile normalisation needs input_levels (the network values "
                                 "of the training inputs' percentiles)")
            l0, l1 = self.input_levels
            if not (math.isfinite(l0) and math.isfinite(l1) and l1 > l0):
                raise ValueError(f"input_levels need finite low < high, got {self.input_levels}")
        return self

    def for_input(self, p_low: float, p_high: float) -> NormConfig:
        """The fixed normalisation that maps an input whose percentiles are ``p_low`` and
        ``p_high`` to this model's ``input_levels`` (percentile mode; fixed mode: itself)."""
        if self.mode == "fixed":
            return self
        l0, l1 = self.input_levels
        span = (p_high - p_low) / (l1 - l0)
        low = p_low - l0 * span
        return NormConfig(low=low, high=low + span)


# fine-tuning schedule (a model to start from, no learning rate given): em-4x-z3 was fine-tuned
# from em-4x at 1e-3; a third of the from-scratch peak, a 5% warm-up (bench adaptation)
FINE_TUNE_LR_MAX = 1e-3
FINE_TUNE_PCT_START = 0.05


class TrainConfig(_Config):
    """Training run parameters (restoration)."""

    scale: int = 4
    arch: ArchConfig = Field(default_factory=ArchConfig)
    crappify: CrappifyConfig = Field(default_factory=CrappifyConfig)
    # variation of the HR (pixel size, histogram); off unless asked for (``--augment``)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: RestorationLoss = "l1"
    feature_weights: str | None = None
    # bounds checked here: 0 or inf minutes, or a 0 batch, failed deep inside fastai's
    # scheduler with a message that did not name the option
    patch_size: int = Field(64, gt=0)  # on the LR grid
    batch_size: int = Field(8, gt=0)
    epochs: int | None = Field(1, gt=0)
    minutes: float | None = Field(None, gt=0, allow_inf_nan=False)
    iterations_per_epoch: int = Field(100, gt=0)
    # CREMI 4x, resnet18s, L1, 10 CPU minutes: 3e-3 scored 0.15 dB over 1e-3 (ReLU decoder);
    # with the leaky decoder 3e-3 gives 25.58 dB with a live 176 px field (docs/training.md)
    lr_max: float = Field(3e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(1e-4, ge=0, allow_inf_nan=False)
    pct_start: float = Field(0.1, gt=0, lt=1)
    precision: Precision = "auto"
    device: str = "auto"
    seed: int = 0
    val_fraction: float = Field(0.15, gt=0, lt=1)
    train_planes: list[int] | None = None  # explicit split by plane (else: val_fraction)
    valid_planes: list[int] | None = None
    num_workers: int = 0
    # training patches at any HR pixel offset (all scale**2 LR block phases), not only on the LR grid
    any_offset: bool = False
    # "percentile": the model normalises each input from its own percentiles (any intensity
    # units); "fixed": from the training data's fixed range (absolute intensities matter)
    normalisation: NormMode = "percentile"

    @field_validator("scale", mode="before")
    @classmethod
    def _scale(cls, v):
        return check_scale(v)

    @model_validator(mode="before")
    @classmethod
    def _minutes_alone_is_a_wall_clock_run(cls, data):
        return minutes_alone_means_no_epochs(data)

    @model_validator(mode="after")
    def _explicit_split_is_whole(self):
        # one side alone used to fall back on the val_fraction split, which could train on
        # planes the user meant to hold out
        if (self.train_planes is None) != (self.valid_planes is None):
            given = "train_planes" if self.train_planes is not None else "valid_planes"
            raise ValueError(f"{given} given without "
                             f"{'valid_planes' if given == 'train_planes' else 'train_planes'}: "
                             "an explicit split needs both (planes in neither are held out)")
        return self


# bounds of the tiled engine's geometry (input pixels): a halo of 10^7 asked for a 364 TiB
# window; the deepest bundled encoder sees about 450 px, the receptive-field probe stops at 1536
MAX_HALO = 4096
MAX_TILE = 16384


class TileConfig(_Config):
    """How the tiled engine cuts an image (sizes on the input grid)."""

    # default, grown to 2 x halo for models that see further (tiling.default_tile)
    tile: int = 512
    halo: int | None = None  # None: the model's receptive field
    batch_size: int = 0  # 0: automatic (1 on CPU, fits memory on GPU)
    device: str = "auto"
    precision: Precision = "auto"
    skip_empty: bool = False
    output_dtype: OutputDtype = "float32"
    # test-time augmentation: mean of the 8 rotations/flips of each tile (8x the compute)
    tta: bool = False
    # the input intensities a data-normalised model maps to its training percentiles; None:
    # measured on the whole input (set it to restore a crop exactly as in the whole result)
    input_range: tuple[float, float] | None = None

    @field_validator("tile")
    @classmethod
    def _tile(cls, v):
        if v < 32 or v % 32 or v > MAX_TILE:
            raise ValueError(f"tile must be a multiple of 32 in 32..{MAX_TILE}, got {v}")
        return v

    @field_validator("input_range")
    @classmethod
    def _input_range(cls, v):
        if v is not None and not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[1] >= v[0]):
            raise ValueError(f"input_range needs finite low <= high, got {v!r}")
        return v

    @field_validator("halo")
    @classmethod
    def _halo(cls, v):
        if v is not None and not 0 <= v <= MAX_HALO:
            raise ValueError(f"halo must be in 0..{MAX_HALO} pixels, got {v}")
        return v
