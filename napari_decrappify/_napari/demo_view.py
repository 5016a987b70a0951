"""napari part of ``decrappify demo``: LR | bicubic | restored | HR side by side, screenshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..demo import AXES, UNITS, DemoResult

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
            metadata={"demo_role": key},
        ))
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (1, 4)
    viewer.canvas.grid.stride = 1
    viewer.dims.set_current_step(0, SHOW_PLANE)
    viewer.reset_view()
    return layers


def render(result: DemoResult, *, headless: bool, screenshot: Path | None = None) -> Path:
    """Open napari with the demo layers, save a screenshot, and (with a screen) keep it open."""
    import napari

    viewer = napari.Viewer(title="napari-decrappify demo", show=True)
    viewer.window.resize(1600, 620)
    add_demo_layers(viewer, result)
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    screenshot = Path(screenshot or result.out / "screenshot.png")
    img = viewer.screenshot(path=str(screenshot), canvas_only=True, flash=False)
    if np.asarray(img).std() == 0:  # hidden canvas under Xvfb renders black: use the window
        img = viewer.screenshot(path=str(screenshot), canvas_only=False, flash=False)
    if np.asarray(img).std() == 0:
        raise RuntimeError("the napari screenshot is blank (no working OpenGL on this screen?)")
    if headless:
        viewer.close()
    else:
        # with a screen the user goes on from here, with the docks at hand
        for dock in ("Restore", "Crappify", "Train", "Segment"):
            viewer.window.add_plugin_dock_widget("napari-decrappify", dock)
        napari.run()
    return screenshot
