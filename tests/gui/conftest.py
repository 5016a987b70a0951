"""Fixtures shared by the GUI tests: a private model folder, and a tiny 2x model in it."""

import pytest
from _tiny import save_tiny


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    """An empty folder that the docks list models from (``DECRAPPIFY_MODELS``)."""
    d = tmp_path / "models"
    d.mkdir()
    monkeypatch.setenv("DECRAPPIFY_MODELS", str(d))
    return d


@pytest.fixture
def tiny2x(model_dir):
    """A tiny random 2x restoration model saved in ``model_dir``."""
    return save_tiny(model_dir / "tiny-2x", scale=2)
