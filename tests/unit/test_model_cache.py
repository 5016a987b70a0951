"""Loaded-model caches follow the files: a bioimage.io package re-exported at the same path, or
weights saved anew into a folder, are loaded again (issue 25: a zip has no weights file of its
own, so a cache keyed on ``path/weights`` never saw a new export)."""

import os
import zipfile

import pytest

from napari_decrappify import models
from napari_decrappify.engine import registry


def _write_zip(path, payload: bytes, mtime_ns: int) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("rdf.yaml", payload)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def fake_loads(monkeypatch):
    """load_model replaced by a counter: the caches' keys are under test, not the loading."""
    loads = []

    def load(path, device="cpu"):
        loads.append(str(path))
        return object()

    monkeypatch.setattr(models, "load_model", load)
    monkeypatch.setattr(registry, "_LOADED", {})
    return loads


def test_model_stamp_of_a_zip_and_a_folder(tmp_path):
    pkg = tmp_path / "m.zip"
    _write_zip(pkg, b"a", 1_000_000_000)
    first = models.model_stamp(pkg)
    assert first == ((1_000_000_000, pkg.stat().st_size),)
    _write_zip(pkg, b"a", 2_000_000_000)  # same size, exported again later
    assert models.model_stamp(pkg) != first
    folder = tmp_path / "folder"
    folder.mkdir()
    assert models.model_stamp(folder) == (None, None)  # load_model says what is missing
    (folder / models.CONFIG_FILE).write_text("{}")
    assert models.model_stamp(folder)[0] is not None


def test_tiling_cache_reloads_a_zip_exported_again_at_the_same_path(tmp_path, fake_loads):
    pkg = tmp_path / "m.zip"
    _write_zip(pkg, b"first", 1_000_000_000)
    a = registry.load_cached(pkg)
    assert registry.load_cached(pkg) is a and len(fake_loads) == 1  # unchanged: cached
    _write_zip(pkg, b"second export", 1_000_000_000)  # same mtime, other size
    b = registry.load_cached(pkg)
    assert b is not a and len(fake_loads) == 2
    _write_zip(pkg, b"second exporT", 3_000_000_000)  # same size, later mtime
    c = registry.load_cached(pkg)
    assert c is not b and len(fake_loads) == 3
    assert list(registry._LOADED) == [str(pkg.resolve())]  # one version per path
