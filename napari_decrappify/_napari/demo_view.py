"""napari part of ``decrappify demo``: LR | bicubic | restored | HR side by side, screenshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..demo import AXES, UNITS, DemoResult
from ._layers import BLENDING

SHOW_PLANE = 22  # a held-out plane (never seen in training)


def add_demo_layers(viewer, result: DemoResult) -> list:
    """Add the four aligned layers (physical nm coordinates) and switch on a 1 x 4 grid."""
    layers = []
    for key, name, data in (
        ("lr", "LR (4x, noisy)", result.lr),
        ("bicubic", "bicubic", result.bicubic),
        ("restored", f"restored ({result.model})", result.restored),
        ("hr", "HR ground truth", result.hr),
    ):
        geo = result.geometry[key]
        layers.append(viewer.add_image(
            data, name=name, scale=geo["scale"], translate=geo["translate"], units=UNITS,
            axis_labels=tuple(AXES.lower()), contrast_limits=(0.0, 1.0), colormap="gray",
            metadata={"demo_role": key}, blending=BLENDING,
        ))
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (1, 4)
    viewer.canvas.grid.stride = 1
    viewer.dims.set_current_step(0, SHOW_PLANE)
    viewer.reset_view()
    return layers


def add_restore_dock(viewer, result: DemoResult):
    """The Restore dock as the demo leaves it: the demo's LR as input (its default: the
    LR-looking layer), the demo's model, the HR as ground truth. Returns ``(dock, widget)``
    as ``viewer.window.add_plugin_dock_widget`` does."""
    dock, body = viewer.window.add_plugin_dock_widget("napari-decrappify", "Restore")
    if result.model:
        from ..models import resolve_model_path

        try:
            path = str(resolve_model_path(result.model))
        except Exception:  # noqa: BLE001 - a model the dock cannot list: keep its default
            path = None
        if path in body.model.choices:
            body.model.value = path
    hr = next((lyr for lyr in viewer.layers if lyr.metadata.get("demo_role") == "hr"), None)
    if hr is not None:
        body.ground_truth.value = hr
    return dock, body


def render(result: DemoResult, *, headless: bool, screenshot: Path | None = None) -> Path:
    """Open napari with the demo layers and the Restore dock, save a screenshot of the window,
    and (with a screen) keep it open with the other docks."""
    import napari

    viewer = napari.Viewer(title="napari-decrappify demo", show=True)
    viewer.window.resize(1600, 800)
    add_demo_layers(viewer, result)
    add_restore_dock(viewer, result)
    from qtpy.QtWidgets import QApplication

    for _ in range(10):
        QApplication.processEvents()
    viewer.reset_view()  # the grid's cells fit the canvas left beside the dock
    for _ in range(5):
        QApplication.processEvents()
    screenshot = Path(screenshot or result.out / "screenshot.png")
    # the window, not only the canvas: the layers and the dock that made them are part of it
    # (a hidden canvas under Xvfb also renders black)
    img = viewer.screenshot(path=str(screenshot), canvas_only=False, flash=False)
    if np.asarray(img).std() == 0:
        raise RuntimeError("the napari screenshot is blank (no working OpenGL on this screen?)")
    if headless:
        viewer.close()
    else:
        # with a screen the user goes on from here, with the other docks at hand
        for dock in ("Crappify", "Train", "Segment"):
            viewer.window.add_plugin_dock_widget("napari-decrappify", dock)
        napari.run()
    return screenshot
