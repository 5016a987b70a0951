"""The docks' model cache (:func:`napari_decrappify._napari.api.resolve_model`) loads a
bioimage.io package re-exported at the same path again, keyed on (resolved path, time and size
of its files), and keeps one version per path."""

import os
import zipfile

import pytest

pytestmark = pytest.mark.gui


def _write_zip(path, payload: bytes, mtime_ns: int) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("rdf.yaml", payload)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_resolve_model_reloads_a_zip_exported_again(tmp_path, monkeypatch):
    from napari_decrappify import models
    from napari_decrappify._napari import api
    from napari_decrappify.engine import registry

    loads = []
    monkeypatch.setattr(models, "load_model", lambda p, device="cpu": loads.append(p) or object())
    monkeypatch.setattr(registry, "_LOADED", {})
    pkg = tmp_path / "sub" / ".." / "m.zip"  # keyed on the resolved path
    (tmp_path / "sub").mkdir()
    _write_zip(pkg, b"first", 1_000_000_000)
    a = api.resolve_model(pkg)
    assert api.resolve_model(tmp_path / "m.zip") is a and len(loads) == 1
    assert api.loaded_model(pkg) is a
    _write_zip(pkg, b"second", 2_000_000_000)
    assert api.loaded_model(pkg) is None  # the dock loads the new export in a worker
    b = api.resolve_model(pkg)
    assert b is not a and len(loads) == 2
    assert len(registry._LOADED) == 1  # the old export is not kept in memory
