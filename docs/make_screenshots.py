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


def main() -> int:
    import napari

    from napari_decrappify._napari.demo_view import add_demo_layers
    from napari_decrappify.demo import run_demo
    from napari_decrappify.models import resolve_model_path

    IMAGES.mkdir(exist_ok=True)
    result = run_demo(HERE / "_build" / "demo", "em-4x")
    viewer = napari.Viewer(title="napari-decrappify", show=True)
    viewer.window.resize(1600, 700)
    add_demo_layers(viewer, result)
    _save(viewer, "demo")
    viewer.grid.enabled = False
    for dock in ("Restore", "Crappify", "Train", "Segment"):
        widget, body = viewer.window.add_plugin_dock_widget("napari-decrappify", dock)
        if dock == "Crappify":  # it offers the first image layer (the LR): crappify the HR
            body.layer.value = viewer.layers["HR ground truth"]
        if dock == "Restore":  # the model the demo's 4x LR needs, not the first in the list
            body.model.value = str(resolve_model_path("em-4x"))
        _save(viewer, f"dock-{dock.lower()}")
        viewer.window.remove_dock_widget(widget)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
