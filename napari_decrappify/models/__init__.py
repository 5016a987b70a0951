"""Restoration and segmentation networks, and their safe on-disk format.

A model is a folder with two files:

``model.json``
    schema-versioned description (:class:`ModelFile`): architecture, scale, channels, frames,
    intensity normalisation, receptive field (the tiling halo), the crappifier it was trained
    with, a fingerprint of the training data, held-out metrics and library versions.
``model.safetensors``
    the weights. Never a pickle: loading a model file cannot run code.

Networks are fastai :class:`~fastai.vision.models.unet.DynamicUnet` s on a ResNet encoder, on
the low-resolution grid with a final pixel-shuffle stage (``lr_grid``) or on the
bicubically upsampled input (``pre_upsample``): see :mod:`.networks`.

Modules, one concern each (import the names from here, this package, as before the split):

- :mod:`.errors`: :class:`ModelFileError`.
- :mod:`.networks`: the encoders (:func:`build_encoder`, ``ENCODER_STRIDE``), the decoder's
  activation and pixel-shuffle upsampling, :class:`RestorationNet`.
- :mod:`.model_file`: ``model.json``'s schema (:class:`ModelFile`) and its reading and checks
  (:func:`read_model_config`); the file names ``CONFIG_FILE``, ``WEIGHTS_FILE``.
- :mod:`.restoration_model`: :class:`RestorationModel` (network + metadata) and the weights'
  hash (:func:`state_dict_sha256`).
- :mod:`.receptive_field`: :func:`measure_receptive_field`, :func:`dead_encoder_warning`.
- :mod:`.building`: :func:`build_model`, :func:`inflate_frames`, :func:`library_versions`.
- :mod:`.zoo`: the bundled and user models (``ZOO_DIR``, :func:`model_search_dirs`,
  :func:`list_models`, :func:`resolve_model_path`, :func:`model_stamp`).
- :mod:`.storage`: :func:`save_model` (atomic) and :func:`load_model` (every check).

Callers import ``load_model`` from this package when they call it (tests replace it here, as
they did in models.py); the modules beside it never call it.
"""

from __future__ import annotations

# models.py's namespace had these (imported from config); code may still take them from here
from ..config import MAX_HALO, ArchConfig, CrappifyConfig, NormConfig  # noqa: F401
from .building import build_model, inflate_frames, library_versions
from .errors import ModelFileError
from .model_file import CONFIG_FILE, SCHEMA_VERSION, WEIGHTS_FILE, ModelFile, read_model_config
from .networks import (
    ENCODER_STRIDE,
    LEAKY_SLOPE,
    RestorationNet,
    _resnet_encoder,  # noqa: F401 - the names models.py had stay importable from here
    _tiny_encoder,  # noqa: F401
    build_encoder,
    decoder_activation,
    pixel_shuffle_icnr,
)
from .receptive_field import (
    MAX_RF_PROBE,
    _gradient_radius,  # noqa: F401
    dead_encoder_warning,
    measure_receptive_field,
)
from .restoration_model import RestorationModel, state_dict_sha256
from .storage import _is_empty_dir, load_model, save_model  # noqa: F401
from .zoo import (
    ZOO_DIR,
    _file_stamp,  # noqa: F401
    list_models,
    model_search_dirs,
    model_stamp,
    resolve_model_path,
)

__all__ = [
    "CONFIG_FILE", "ENCODER_STRIDE", "LEAKY_SLOPE", "MAX_RF_PROBE", "SCHEMA_VERSION",
    "WEIGHTS_FILE", "ZOO_DIR", "ModelFile", "ModelFileError", "RestorationModel", "RestorationNet",
    "build_encoder", "build_model", "dead_encoder_warning", "decoder_activation",
    "inflate_frames", "library_versions", "list_models", "load_model", "measure_receptive_field",
    "model_search_dirs", "model_stamp", "pixel_shuffle_icnr", "read_model_config",
    "resolve_model_path", "save_model", "state_dict_sha256",
]
