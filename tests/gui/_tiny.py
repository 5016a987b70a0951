"""Helpers shared by the GUI tests of the Restore / Train docks and the scripting API."""

import numpy as np


def save_tiny(path, scale: int = 2, name: str | None = None, receptive_field: int = 8, seed: int = 0,
              preload: bool = True):
    """Save a tiny random restoration model to ``path`` and return it (loaded back).

    The receptive field is set instead of measured (measuring takes seconds on a busy CPU); the
    tests pass matching halos explicitly, so the engine's seam guarantees are not what is tested
    here (tests/unit/test_tiling.py covers them).

    ``preload`` puts it in the docks' model cache, as if it had been used before, so that a
    dock's Restore runs at once; without it, the dock first loads the weights in a worker job
    (tested in test_restore_dock.py).
    """
    from napari_decrappify._napari import api
    from napari_decrappify.config import ArchConfig
    from napari_decrappify.models import build_model, save_model

    model = build_model(ArchConfig(encoder="tiny", scale=scale), name=name or path.name, seed=seed,
                        measure_rf=False)
    model.config.receptive_field = receptive_field
    save_model(model, path)
    return api.resolve_model(path) if preload else None


def lr_hr(seed: int, shape=(3, 128, 128), scale: int = 2):
    """A synthetic EM-like HR stack (uint8) and its block-mean LR (uint8), distinct per seed."""
    from napari_decrappify.samples import synthetic_em

    hr = synthetic_em(shape, seed=seed)
    z, h, w = hr.shape
    lr = hr.reshape(z, h // scale, scale, w // scale, scale).mean(axis=(2, 4))
    return np.rint(lr).astype(np.uint8), hr
