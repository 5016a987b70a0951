"""Typed configuration objects shared by the CLI, the scripting API and the napari docks.

Every config is a pydantic model with ``extra="forbid"``, so that a typo in a JSON file or a
keyword argument is an error that names the field, instead of a silently ignored option.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

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
# ... and the loss PSNR measures (no loss given). Chosen on the validation planes 18-19 of 8 nm
# CREMI at 100 photons, 300 iterations from em-4x: mse 22.50 dB / 0.379, l1 22.27 / 0.398,
# l1 at 3e-4 22.29 / 0.395, em-4x as it was 22.38 / 0.359: an L1 fine-tune traded PSNR for SSIM
# and ended below its start (the posterior mean, not the median, is what restores a noisy
# input best in mean-square terms)
FINE_TUNE_LOSS = "mse"


# The bounds of the training options that restoration and segmentation share live in these
# types, not in the fields: a subclass that gives a field another default redeclares it, and
# pydantic drops the constraints of a plain ``Field(...)`` it replaces, but not those of the
# type. A 0 or inf budget, or a 0 batch, used to fail deep inside fastai's scheduler with a
# message that did not name the option.
PositiveInt = Annotated[int, Field(gt=0)]
Epochs = Annotated[int | None, Field(gt=0)]
Minutes = Annotated[float | None, Field(gt=0, allow_inf_nan=False)]
LearningRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
WeightDecay = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, lt=1)]  # open interval: neither end is usable
Workers = Annotated[int, Field(ge=0)]  # torch's DataLoader refuses negative counts


class BaseTrainConfig(_Config):
    """The training options restoration (:class:`TrainConfig`) and segmentation
    (:class:`napari_decrappify.segment.SegmentConfig`) share, with one set of bounds.

    A subclass may give a field another default by redeclaring it with the same type (e.g.
    ``lr_max: LearningRate = 1e-3``); a redeclaration that changes the bounds is refused when
    the subclass is defined, so both kinds of training refuse the same values.

    Attributes
    ----------
    patch_size : int
        Training patch side in pixels (restoration: on the LR grid); > 0.
    batch_size : int
        Patches per step; > 0.
    epochs : int or None
        Epochs to train; > 0. None with ``minutes``: as many as fit in the minutes.
    minutes : float or None
        Wall-clock budget; finite and > 0. Given without ``epochs``, ``epochs`` is None.
    iterations_per_epoch : int
        Steps per epoch; > 0.
    lr_max : float
        Peak learning rate of the one-cycle schedule; finite and > 0.
    weight_decay : float
        Finite and >= 0.
    pct_start : float
        Fraction of the schedule spent warming up; in (0, 1).
    precision, device : str
        ``"auto"`` or a choice of :data:`Precision`; a torch device name or ``"auto"``.
    seed : int
        Seed of the split, the patch sampling and the initial weights.
    val_fraction : float
        Fraction of the data held out for validation; in (0, 1).
    num_workers : int
        DataLoader worker processes; >= 0.
    """

    patch_size: PositiveInt = 64
    batch_size: PositiveInt = 8
    epochs: Epochs = 1
    minutes: Minutes = None
    iterations_per_epoch: PositiveInt = 100
    # the defaults are restoration's (SegmentConfig sets its own). CREMI 4x, resnet18s, L1, 10
    # CPU minutes: 3e-3 scored 0.15 dB over 1e-3 (ReLU decoder); with the leaky decoder 3e-3
    # gives 25.58 dB with a live 176 px field (docs/training.md)
    lr_max: LearningRate = 3e-3
    weight_decay: WeightDecay = 1e-4
    pct_start: Fraction = 0.1
    precision: Precision = "auto"
    device: str = "auto"
    seed: int = 0
    val_fraction: Fraction = 0.15
    num_workers: Workers = 0

    # The fields in the order a subclass serialises them (``model_dump``, the ``training``
    # record of model.json): pydantic lists a base class's fields first, which would reorder
    # the records written before this class existed. Empty: pydantic's order.
    _dump_order: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs):
        super().__pydantic_init_subclass__(**kwargs)
        base = BaseTrainConfig.model_fields
        for name, field in cls.model_fields.items():
            # a redeclared field with a plain type would silently lose its bounds
            if name in base and (field.annotation != base[name].annotation
                                 or field.metadata != base[name].metadata):
                raise TypeError(f"{cls.__name__}.{name} must keep BaseTrainConfig's type and "
                                "bounds (redeclare it with the same type to change its default)")
        if cls._dump_order and set(cls._dump_order) != set(cls.model_fields):
            raise TypeError(f"{cls.__name__}._dump_order must list each field once")

    @model_validator(mode="before")
    @classmethod
    def _minutes_alone_is_a_wall_clock_run(cls, data):
        return minutes_alone_means_no_epochs(data)

    @model_serializer(mode="wrap")
    def _in_dump_order(self, handler):
        data = handler(self)
        order = type(self)._dump_order
        if not order or not isinstance(data, dict):
            return data
        # keys left out by ``include`` / ``exclude`` stay out
        return {k: data[k] for k in order if k in data}


class TrainConfig(BaseTrainConfig):
    """Training run parameters (restoration); the bounds of the shared options are
    :class:`BaseTrainConfig`'s."""

    _dump_order: ClassVar[tuple[str, ...]] = (
        "scale", "arch", "crappify", "augment", "loss", "feature_weights", "patch_size",
        "batch_size", "epochs", "minutes", "iterations_per_epoch", "lr_max", "weight_decay",
        "pct_start", "precision", "device", "seed", "val_fraction", "train_planes",
        "valid_planes", "num_workers", "any_offset", "normalisation")

    scale: int = 4
    arch: ArchConfig = Field(default_factory=ArchConfig)
    crappify: CrappifyConfig = Field(default_factory=CrappifyConfig)
    # variation of the HR (pixel size, histogram); off unless asked for (``--augment``)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: RestorationLoss = "l1"
    feature_weights: str | None = None
    # patch_size (on the LR grid), batch, budget, schedule, device, seed, val_fraction and
    # num_workers: BaseTrainConfig, whose defaults are restoration's
    train_planes: list[int] | None = None  # explicit split by plane (else: val_fraction)
    valid_planes: list[int] | None = None
    # training patches at any HR pixel offset (all scale**2 LR block phases), not only on the LR grid
    any_offset: bool = False
    # "percentile": the model normalises each input from its own percentiles (any intensity
    # units); "fixed": from the training data's fixed range (absolute intensities matter)
    normalisation: NormMode = "percentile"

    @field_validator("scale", mode="before")
    @classmethod
    def _scale(cls, v):
        return check_scale(v)

    def for_fine_tune(self) -> TrainConfig:
        """This config with the fine-tune schedule for every option not given explicitly.

        A run that starts from trained weights (``init_from``, ``--resume``, the Train dock's
        *start from*) takes :data:`FINE_TUNE_LR_MAX`, :data:`FINE_TUNE_PCT_START` and
        :data:`FINE_TUNE_LOSS` unless its ``lr_max``, ``pct_start`` or ``loss`` was set: the
        API, the CLI and the dock share this one rule (the API used to fine-tune with the
        from-scratch peak rate and loss).
        """
        tuned = {"lr_max": FINE_TUNE_LR_MAX, "pct_start": FINE_TUNE_PCT_START,
                 "loss": FINE_TUNE_LOSS}
        update = {k: v for k, v in tuned.items() if k not in self.model_fields_set}
        return self.model_copy(update=update) if update else self

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
    # None: the model's measured tolerance halo (model.json halo_px) if it has one, else its
    # receptive field; with a tolerance halo and no tile given, the engine picks the tile
    halo: int | None = None
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
    # the receptive-field halo (tiled = whole-image output to ~1e-6) and the fixed default
    # tile, as before halo_px existed, instead of the faster tolerance halo
    exact: bool = False
    # "image": tiles at an edge of the image stop there, as the whole image run in one go
    # does (the faster default: no context outside the image is computed); "reflect": each
    # edge gets `halo` px of reflected context first (the engine's former geometry)
    border: Literal["image", "reflect"] = "image"

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
