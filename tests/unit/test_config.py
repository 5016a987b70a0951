"""The training configs of restoration and segmentation share one validated base (issue 26)."""

import json
import math
from importlib import resources

import pytest
from pydantic import ValidationError

from napari_decrappify.config import BaseTrainConfig, PositiveInt, TrainConfig
from napari_decrappify.segment import SegmentConfig

CONFIGS = [TrainConfig, SegmentConfig]

# the key order of model_dump / the model.json ``training`` record before the base class existed
TRAIN_KEYS = ["scale", "arch", "crappify", "augment", "loss", "feature_weights", "patch_size",
              "batch_size", "epochs", "minutes", "iterations_per_epoch", "lr_max", "weight_decay",
              "pct_start", "precision", "device", "seed", "val_fraction", "train_planes",
              "valid_planes", "num_workers", "any_offset", "normalisation"]
SEGMENT_KEYS = ["arch", "loss", "dice_weight", "class_weights", "max_class_weight", "patch_size",
                "batch_size", "epochs", "minutes", "iterations_per_epoch", "lr_max",
                "weight_decay", "pct_start", "intensity_jitter", "precision", "device", "seed",
                "val_fraction", "num_workers"]

BAD = [("batch_size", 0), ("minutes", math.inf), ("minutes", math.nan), ("minutes", 0),
       ("epochs", 0), ("iterations_per_epoch", 0), ("lr_max", -1), ("lr_max", math.inf),
       ("weight_decay", -1e-4), ("pct_start", 1.0), ("val_fraction", 1.5), ("val_fraction", 0),
       ("patch_size", -64), ("num_workers", -1)]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("field, value", BAD)
def test_both_configs_refuse_what_cannot_train_with_one_line_naming_the_field(cls, field, value):
    """SegmentConfig accepted these (batch 0, inf minutes, lr_max -1, val_fraction 1.5), which
    failed deep inside fastai or silently misbehaved; now it refuses them as TrainConfig does."""
    with pytest.raises(ValidationError) as info:
        cls(**{field: value})
    (error,) = info.value.errors()
    assert error["loc"] == (field,)
    assert error["msg"].startswith("Input should be") and "\n" not in error["msg"]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_shared_fields_have_the_base_bounds(cls):
    base = BaseTrainConfig.model_fields
    for name, field in base.items():
        assert cls.model_fields[name].metadata == field.metadata, name
        assert cls.model_fields[name].annotation == field.annotation, name


def test_each_config_keeps_its_own_defaults():
    t, s = TrainConfig(), SegmentConfig()
    assert (t.patch_size, t.iterations_per_epoch, t.lr_max) == (64, 100, 3e-3)
    assert (s.patch_size, s.iterations_per_epoch, s.lr_max) == (128, 50, 1e-3)
    for c in (t, s):
        assert (c.batch_size, c.epochs, c.minutes, c.weight_decay, c.pct_start,
                c.val_fraction, c.num_workers, c.seed) == (8, 1, None, 1e-4, 0.1, 0.15, 0, 0)
    # the CLI and the docks read the defaults from model_fields
    assert TrainConfig.model_fields["lr_max"].default == 3e-3
    assert SegmentConfig.model_fields["patch_size"].default == 128
    # minutes alone is a wall-clock run for both (base class validator)
    assert TrainConfig(minutes=2).epochs is None and SegmentConfig(minutes=2).epochs is None


@pytest.mark.parametrize("cls, keys", [(TrainConfig, TRAIN_KEYS), (SegmentConfig, SEGMENT_KEYS)],
                         ids=["TrainConfig", "SegmentConfig"])
@pytest.mark.parametrize("kwargs", [{}, {"minutes": 3, "batch_size": 2, "val_fraction": 0.3}])
def test_dump_keeps_its_keys_and_order_and_round_trips(cls, keys, kwargs):
    config = cls(**kwargs)
    assert list(config.model_dump()) == keys
    assert list(json.loads(config.model_dump_json())) == keys
    assert cls.model_validate(config.model_dump()) == config
    assert cls.model_validate_json(config.model_dump_json()) == config
    # include / exclude still select keys
    assert list(config.model_dump(include={"lr_max", "patch_size"})) == ["patch_size", "lr_max"]
    assert "seed" not in config.model_dump(exclude={"seed"})


def test_bundled_training_records_still_load_and_em4x_dumps_to_its_record():
    zoo = resources.files("napari_decrappify") / "zoo"
    for name in ("em-2x", "em-4x", "em-4x-z3", "em-denoise"):
        record = json.loads((zoo / name / "model.json").read_text())["training"]["config"]
        config = TrainConfig.model_validate(record)
        if name == "em-4x":  # written by the current fields: same text, key order included
            assert json.loads(config.model_dump_json()) == record
            assert list(json.loads(config.model_dump_json())) == list(record)


def test_a_subclass_cannot_drop_the_shared_bounds():
    # redeclaring a field with a plain type would replace its constraints: refused at definition
    with pytest.raises(TypeError, match="batch_size must keep BaseTrainConfig's type and bounds"):
        class Loose(BaseTrainConfig):
            batch_size: int = 4

    class Ok(BaseTrainConfig):  # another default, same bounds
        batch_size: PositiveInt = 4

    assert Ok().batch_size == 4
    with pytest.raises(ValidationError, match="greater than 0"):
        Ok(batch_size=0)
