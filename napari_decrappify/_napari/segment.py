"""Segment: train from painted labels, predict, count."""

from __future__ import annotations

from magicgui.widgets import Container, Label


class SegmentWidget(Container):
    """Segment: train from painted labels, predict, count (its full form grows in its own issue)."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.append(Label(value="Segment: train from painted labels, predict, count."))
