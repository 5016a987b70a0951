"""Crappify: preview a degradation of a high-resolution layer."""

from __future__ import annotations

from magicgui.widgets import Container, Label


class CrappifyWidget(Container):
    """Crappify: preview a degradation of a high-resolution layer (its full form grows in its own issue)."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.append(Label(value="Crappify: preview a degradation of a high-resolution layer."))
