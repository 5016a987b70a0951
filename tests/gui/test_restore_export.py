"""The Restore dock's "Export to bioimage.io…": the chosen model is exported in the background
(a worker waiting on a child process, never napari's UI thread), with the dock's progress and
Cancel; the status line gives the package's path or a one-line error; Cancel and failures leave
no file behind."""

import threading
import time
import zipfile

import numpy as np
import pytest
from _stall import StallMeter

pytestmark = pytest.mark.gui


@pytest.fixture
def dock(make_napari_viewer, tiny2x):
    from napari_decrappify._napari.restore import RestoreWidget

    viewer = make_napari_viewer()
    return RestoreWidget(viewer)


def _fake_export(calls, seconds=0.3, fail=None):
    """A stand-in for the export's child process: checks it is off the UI thread, takes
    ``seconds`` (answering Cancel), then writes a small zip or fails."""
    from napari_decrappify.tiling import RestoreCancelled

    def export(model, part, cancel=None, **options):
        test_image = options.get("test_image")
        calls.append({"model": model, "part": part, "thread": threading.current_thread(),
                      "options": options,
                      "test_image": None if test_image is None else np.load(test_image)})
        if cancel is not None and cancel.wait(seconds):
            raise RestoreCancelled("export cancelled")
        if fail is not None:
            raise fail
        with zipfile.ZipFile(part, "w") as zf:
            zf.writestr("rdf.yaml", "format_version: 0.5.0\n")

    return export


def _shown(widget) -> bool:
    return not widget.native.isHidden()  # (the dock itself is not on screen in these tests)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_export_runs_in_the_background_and_reports_the_path(dock, qtbot, tmp_path, monkeypatch):
    from napari_decrappify._napari import restore

    calls = []
    monkeypatch.setattr(restore, "_export_package", _fake_export(calls))
    out = tmp_path / "pkgs" / "tiny"  # ".zip" is added
    with StallMeter() as meter:
        job = dock.export_model(out)
        assert job is not None and job.running
        assert not dock.restore_button.enabled and dock.cancel_button.enabled
        assert _shown(dock.progress) and "Exporting tiny-2x to bioimage.io" in \
            dock.progress_text.value
        assert dock.export_model(tmp_path / "again.zip") is None  # one job at a time
        assert "busy" in dock.status.value
        qtbot.waitUntil(lambda: job.finished, timeout=10_000)
    assert job.status == "done", dock.status.value
    final = tmp_path / "pkgs" / "tiny.zip"
    assert final.is_file() and job.result == final
    assert str(final) in dock.status.value and "⚠" not in dock.status.value
    assert calls[0]["thread"] is not threading.main_thread()
    assert calls[0]["model"] == dock.model.value
    assert calls[0]["part"].parent == final.parent and calls[0]["part"].name.startswith(".")
    assert _leftovers(final.parent) == []
    assert dock.restore_button.enabled and not dock.cancel_button.enabled
    assert not _shown(dock.progress)
    print(f"export (fake): longest UI stall {meter.longest_ms:.0f} ms")
    assert meter.longest_ms < 100


def test_export_cancel_and_errors_leave_nothing(dock, qtbot, tmp_path, monkeypatch):
    from napari_decrappify._napari import restore

    calls = []
    monkeypatch.setattr(restore, "_export_package", _fake_export(calls, seconds=30))
    tmp_path = tmp_path / "out"  # (the models' folder is beside it)
    tmp_path.mkdir()
    job = dock.export_model(tmp_path / "m.zip")
    qtbot.waitUntil(lambda: bool(calls), timeout=10_000)
    t0 = time.monotonic()
    dock.cancel()
    assert job.status == "cancelled" and time.monotonic() - t0 < 0.5  # answered at once
    assert "cancelled, nothing was written" in dock.status.value
    assert dock.restore_button.enabled
    qtbot.wait(300)  # the worker sees the cancel and cleans up
    assert list(tmp_path.iterdir()) == []

    # an existing package is not replaced unasked (the file dialog asks, then overwrites)
    monkeypatch.setattr(restore, "_export_package", _fake_export(calls, seconds=0.05))
    existing = tmp_path / "m.zip"
    existing.write_bytes(b"old")
    job = dock.export_model(existing)
    qtbot.waitUntil(lambda: job.finished, timeout=10_000)
    assert job.status == "failed" and existing.read_bytes() == b"old"
    assert dock.status.value.startswith("⚠ export failed:") and "exists" in dock.status.value
    job = dock.export_model(existing, overwrite=True)
    qtbot.waitUntil(lambda: job.finished, timeout=10_000)
    assert job.status == "done" and zipfile.is_zipfile(existing)

    # a failure is one line, and the package being replaced stays whole
    monkeypatch.setattr(restore, "_export_package", _fake_export(
        calls, seconds=0.05, fail=RuntimeError("3 validation errors for ModelDescr\n  a\n  b")))
    before = existing.read_bytes()
    job = dock.export_model(existing, overwrite=True)
    qtbot.waitUntil(lambda: job.finished, timeout=10_000)
    assert job.status == "failed"
    assert dock.status.value == "⚠ export failed: 3 validation errors for ModelDescr"
    assert existing.read_bytes() == before and _leftovers(tmp_path) == []


def test_export_takes_its_test_image_from_the_input_layer_and_its_authors_from_the_dock(
        dock, qtbot, tmp_path, monkeypatch):
    """The package's test image is cut from the input layer's plane on screen (not CREMI's),
    its authors come from the dock's field; the status line says which image it used."""
    from napari_decrappify._napari import restore
    from napari_decrappify.bioimageio import min_input_size
    from napari_decrappify.models import load_model

    size = min_input_size(load_model(dock.model.value))
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 60_000, (3, size + 10, size + 20)).astype(np.uint16)
    dock.viewer.add_image(stack, name="my LR")
    dock.image.value = dock.viewer.layers["my LR"]
    dock.viewer.dims.set_current_step(0, 2)
    dock.export_authors.value = "Ada Lovelace, Alan Turing"
    calls = []
    monkeypatch.setattr(restore, "_export_package", _fake_export(calls, seconds=0.05))
    job = dock.export_model(tmp_path / "mine.zip")
    qtbot.waitUntil(lambda: job.finished, timeout=30_000)
    assert job.status == "done", dock.status.value
    assert calls[0]["options"]["authors"] == ("Ada Lovelace", "Alan Turing")
    y0, x0 = 5, 10  # the centre size x size crop of plane 2 (the plane on screen)
    expected = stack[2:3, y0 : y0 + size, x0 : x0 + size].astype(np.float32)
    np.testing.assert_array_equal(calls[0]["test_image"], expected)
    assert f"test image: 'my LR', plane 2, centre {size} x {size} px" in dock.status.value
    assert _leftovers(tmp_path) == []  # the .npy went with the job

    # too small a layer: CREMI, and the status line says why
    dock.viewer.add_image(stack[:, :8, :8], name="tiny")
    dock.image.value = dock.viewer.layers["tiny"]
    job = dock.export_model(tmp_path / "mine.zip", overwrite=True)
    qtbot.waitUntil(lambda: job.finished, timeout=30_000)
    assert job.status == "done" and calls[-1]["test_image"] is None
    assert f"a held-out CREMI plane (the input layer 'tiny' is 8 x 8 px; the package needs " \
           f"at least {size} x {size})" in dock.status.value


def test_no_model_no_export(make_napari_viewer, tmp_path, monkeypatch):
    from napari_decrappify._napari.restore import RestoreWidget

    monkeypatch.setattr(RestoreWidget, "model_entries", lambda self: [])  # no model listed
    dock = RestoreWidget(make_napari_viewer())
    assert dock.model.value is None
    assert dock.export_model(tmp_path / "x.zip") is None
    assert dock.status.value == "⚠ choose a model to export"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_real_export_of_a_tiny_model_loads_back(dock, qtbot, tmp_path, tiny2x):
    """The real thing, in its child process: a package that loads back to the same weights."""
    pytest.importorskip("bioimageio.spec")
    from napari_decrappify.models import load_model

    t0 = time.monotonic()
    with StallMeter() as meter:
        job = dock.export_model(tmp_path / "tiny-2x.zip")
        qtbot.waitUntil(lambda: job.finished, timeout=300_000)
    assert job.status == "done", dock.status.value
    print(f"real export of tiny-2x: {time.monotonic() - t0:.1f} s, longest UI stall "
          f"{meter.longest_ms:.0f} ms")
    back = load_model(tmp_path / "tiny-2x.zip")
    assert back.weights_hash == tiny2x.weights_hash
    assert _leftovers(tmp_path) == []
    assert meter.longest_ms < 100
