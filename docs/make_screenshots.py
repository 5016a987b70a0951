"""Produce the screenshots of the docs from the real CREMI sample (no hand-made images).

    xvfb-run -a python docs/make_screenshots.py      # or `make docs`

Writes docs/images/demo.png (LR | bicubic | restored | HR, the demo's view) and one image per
dock with the real data loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fastai.vision.models.unet  # noqa: F401 - before any Qt/GL context (ENVIRONMENT.md trap 2)
import numpy as np

HERE = Path(__file__).parent
IMAGES = HERE / "images"


def _save(viewer, name: str) -> Path:
    from qtpy.QtWidgets import QApplication

    for _ in range(10):
        QApplication.processEvents()
    path = IMAGES / f"{name}.png"
    img = viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    if np.asarray(img).std() == 0:
        raise RuntimeError(f"screenshot {name} is blank")
    print(f"wrote {path}")
    return path


def _close_toasts(viewer) -> None:
    """Close napari's notification toasts: they cover the canvas in a still image."""
    from qtpy.QtWidgets import QWidget

    for w in viewer.window._qt_window.findChildren(QWidget):  # noqa: SLF001 - napari's toasts
        if type(w).__name__ == "NapariQtNotification":
            w.close()


def your_data() -> int:
    """docs/images/your-data-restore.png: the Restore dock after restoring "your own" EM: CREMI
    held-out planes 20-21 at 8 nm (32 nm LR, float [0, 1], 100 photons), with their HR."""
    import time

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_decrappify.bench.generalisation import scenario_pair
    from napari_decrappify.models import resolve_model_path
    from napari_decrappify.samples import load_sample

    IMAGES.mkdir(exist_ok=True)
    stack, _ = load_sample("cremi")
    hr, lr, nm = scenario_pair(stack, "8 nm pixels, photons 100")
    hr, lr = hr[:2], lr[:2]
    viewer = napari.Viewer(title="napari-decrappify", show=True)
    viewer.window.resize(1600, 1000)
    viewer.add_image(hr, name="my HR (8 nm)", scale=(40, nm, nm), units=("nm", "nm", "nm"),
                     translate=(800, 0, 0))
    lr_layer = viewer.add_image(lr, name="my LR (32 nm)", scale=(40, nm * 4, nm * 4),
                                units=("nm", "nm", "nm"),
                                translate=(800, 1.5 * nm, 1.5 * nm))
    _, body = viewer.window.add_plugin_dock_widget("napari-decrappify", "Restore")
    body.image.value = lr_layer
    body.model.value = str(resolve_model_path("em-4x"))
    body.ground_truth.value = viewer.layers["my HR (8 nm)"]
    body.lazy.value = False
    body.run()
    deadline = time.monotonic() + 600
    # the restore runs in workers (input measured, then restored, then scored): wait for the
    # scores, which come last
    while "restored" not in body.metrics_label.value or "dB" not in body.metrics_label.value:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the restore did not finish: {body.status.value}")
    for _ in range(100):
        QApplication.processEvents()
        time.sleep(0.01)
    viewer.layers.selection.active = viewer.layers[-1]
    _close_toasts(viewer)
    _save(viewer, "your-data-restore")
    viewer.close()
    return 0


def main() -> int:
    if sys.argv[1:] == ["your-data"]:
        return your_data()
    import napari

    from napari_decrappify._napari.demo_view import add_demo_layers, add_restore_dock
    from napari_decrappify.demo import run_demo

    IMAGES.mkdir(exist_ok=True)
    result = run_demo(HERE / "_build" / "demo", "em-4x")
    viewer = napari.Viewer(title="napari-decrappify", show=True)
    viewer.window.resize(1600, 700)
    add_demo_layers(viewer, result)
    _close_toasts(viewer)
    _save(viewer, "demo")
    # the docks at the size the layout is checked at (tests/gui/test_docks.py), one at a time,
    # on the restored plane zoomed to fill the canvas
    viewer.canvas.grid.enabled = False
    viewer.layers["HR ground truth"].visible = False  # the restored plane shows, not the HR on top
    viewer.window.resize(1600, 1000)
    for dock in ("Restore", "Crappify", "Train", "Segment"):
        if dock == "Restore":  # the demo's model and ground truth; the input is the LR
            widget, body = add_restore_dock(viewer, result)
        else:
            widget, body = viewer.window.add_plugin_dock_widget("napari-decrappify", dock)
        if dock == "Crappify":  # it offers the first image layer (the LR): crappify the HR
            body.layer.value = viewer.layers["HR ground truth"]
        viewer.layers.selection.active = viewer.layers[f"restored ({result.model})"]
        viewer.reset_view()
        _close_toasts(viewer)
        _save(viewer, f"dock-{dock.lower()}")
        viewer.window.remove_dock_widget(widget)
        for layer in [lyr for lyr in viewer.layers  # Crappify's preview: not in the next shots
                      if "crappify" in (lyr.metadata.get("decrappify") or {})]:
            viewer.layers.remove(layer)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
