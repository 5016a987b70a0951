"""Restore: denoise and upsample an image layer with a model."""

from __future__ import annotations

from magicgui.widgets import Container, Label


class RestoreWidget(Container):
    """Restore: denoise and upsample an image layer with a model (its full form grows in its own issue)."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.append(Label(value="Restore: denoise and upsample an image layer with a model."))
