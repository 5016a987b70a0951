"""No deprecated napari (or Qt binding) API on the docks' paths: a restore, the scores, the error
map and the grid (``compare``) in the Restore dock emit no DeprecationWarning / FutureWarning
from our code, and the GUI runs on the binding that ``make`` installs (PyQt6)."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from _live import settle
from _tiny import lr_hr

import napari_decrappify

pytestmark = pytest.mark.gui

OURS = str(Path(napari_decrappify.__file__).parent)


def test_the_gui_runs_on_pyqt6():
    import qtpy

    # PyQt5 (deprecated by napari 0.9: a popup on every start) must not come back through a
    # dependency or an old venv (tools/bootstrap.sh removes it)
    assert qtpy.API_NAME == "PyQt6", qtpy.API_NAME


def _ours(w: warnings.WarningMessage) -> bool:
    """A deprecation that our code triggered: napari's deprecations point at their caller
    (stacklevel), so the file is ours; or one that names napari's API in its message."""
    if not issubclass(w.category, DeprecationWarning | FutureWarning):
        return False
    return str(w.filename).startswith(OURS) or "napari" in str(w.message).lower()


def test_restore_scores_error_map_and_grid_use_no_deprecated_napari_api(
        make_napari_viewer, qtbot, tiny2x):
    from napari_decrappify._napari.api import compare

    viewer = make_napari_viewer()
    lr, hr = lr_hr(31)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, dock = viewer.window.add_plugin_dock_widget("napari-decrappify", "Restore")
        lr_layer = viewer.add_image(lr, name="lr", scale=(40, 8, 8), units="nm")
        hr_layer = viewer.add_image(hr, name="hr", scale=(40, 4, 4), translate=(0, -2, -2), units="nm")
        assert dock.image.value is lr_layer  # the default input: the LR, not the HR
        dock.ground_truth.value = hr_layer
        dock.halo.value, dock.tile.value = 8, 32
        for lazy in (False, True):
            dock.lazy.value = lazy
            job = dock.run()
            assert job is not None, dock.status.value
            qtbot.waitUntil(lambda: dock.job is not None and dock.job.finished, timeout=60_000)
            assert dock.job.status == "done", dock.status.value
        settle(qtbot, dock.result["layer"])
        err = dock.add_error_map()
        settle(qtbot, err)
        qtbot.waitUntil(lambda: err.name not in dock._contrast_pending, timeout=5_000)
        dock.toggle_grid()
        assert viewer.canvas.grid.enabled
        dock.toggle_grid()
        compare(viewer, lr_layer, dock.result["layer"], hr_layer)
        assert viewer.canvas.grid.shape == (1, 3)
        compare(viewer, None, None, None, enable=False)
        assert not viewer.canvas.grid.enabled
        viewer.dims.set_current_step(0, 1)
        qtbot.wait(300)
    bad = [f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}" for w in caught if _ours(w)]
    assert not bad, "\n".join(bad)
    assert np.isfinite(err.contrast_limits).all()
