"""Train: fit a restoration model on high-resolution layers."""

from __future__ import annotations

from magicgui.widgets import Container, Label


class TrainWidget(Container):
    """Train: fit a restoration model on high-resolution layers (its full form grows in its own issue)."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.append(Label(value="Train: fit a restoration model on high-resolution layers."))
