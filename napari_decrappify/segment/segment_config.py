"""What a segmentation run is set up with: the segmenter architecture
(:func:`segmentation_arch`), the training options (:class:`SegmentConfig`) and the type of the
progress callbacks that training, prediction and count comparison take."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ..config import ArchConfig, BaseTrainConfig, LearningRate, PositiveInt, SegmentationLoss

ProgressFn = Callable[[Mapping[str, Any]], None]  # receives napari_decrappify.progress events


def segmentation_arch(encoder: str = "resnet18s") -> ArchConfig:
    """The segmentation U-Net: on the image grid, no residual path, ReLU decoder.

    Unlike L1 restoration, the cross-entropy + Dice segmenter's ReLU decoder stays alive
    (``decrappify bench segmentation -o seg_epochs=8``: field 57 px, at most 7 of 128 channels of
    a layer never positive), and a leaky decoder scored the same (HR F1 0.758 vs 0.768, one
    object apart), so ReLU stays.
    """
    return ArchConfig(encoder=encoder, scale=1, residual=False, activation="relu")


class SegmentConfig(BaseTrainConfig):
    """Segmentation training parameters.

    ``loss``: ``"ce"`` (weighted cross-entropy on labelled pixels) or ``"dice_ce"`` (that plus
    ``dice_weight`` times a soft Dice loss on labelled pixels: an overlap loss that helps thin
    and rare structures). ``class_weights``: ``"balanced"`` (inverse frequency of each class in
    the sampled training patches, clipped to ``max_class_weight``), ``"none"``, or one weight
    per class ``1..K``. Patches are centred on labelled pixels, drawing the class uniformly,
    so sparse strokes are all used. ``patch_size`` is in image pixels; a budget is ``epochs``
    and/or ``minutes`` (wall clock) as for restoration. The options both share (batch, budget,
    schedule, split, device) have restoration's bounds: see
    :class:`napari_decrappify.config.BaseTrainConfig`.
    """

    _dump_order: ClassVar[tuple[str, ...]] = (
        "arch", "loss", "dice_weight", "class_weights", "max_class_weight", "patch_size",
        "batch_size", "epochs", "minutes", "iterations_per_epoch", "lr_max", "weight_decay",
        "pct_start", "intensity_jitter", "precision", "device", "seed", "val_fraction",
        "num_workers")

    arch: ArchConfig = Field(default_factory=segmentation_arch)
    loss: SegmentationLoss = "dice_ce"
    dice_weight: float = 1.0
    class_weights: Literal["balanced", "none"] | list[float] = "balanced"
    max_class_weight: float = 10.0
    # segmentation's own defaults of shared options (their bounds stay BaseTrainConfig's)
    patch_size: PositiveInt = 128
    iterations_per_epoch: PositiveInt = 50
    lr_max: LearningRate = 1e-3
    intensity_jitter: float = 0.1  # random gain/offset (normalised units) per training patch

    @field_validator("patch_size")
    @classmethod
    def _patch(cls, v):
        if v < 32 or v % 32:
            raise ValueError(f"patch_size must be a multiple of 32 and >= 32, got {v}")
        return v

    @field_validator("max_class_weight")
    @classmethod
    def _maxw(cls, v):
        if not v >= 1:
            raise ValueError(f"max_class_weight must be >= 1, got {v}")
        return v
