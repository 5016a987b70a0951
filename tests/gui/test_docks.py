"""The plugin's docks open in a napari viewer through the npe2 manifest."""

import pytest

pytestmark = pytest.mark.gui

DOCKS = ["Restore", "Crappify", "Train", "Segment"]


def test_manifest_validates():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-decrappify")
    assert {w.display_name for w in pm.contributions.widgets} >= set(DOCKS)


@pytest.mark.parametrize("dock", DOCKS)
def test_dock_opens_through_manifest(make_napari_viewer, qtbot, dock):
    viewer = make_napari_viewer()
    widget, inner = viewer.window.add_plugin_dock_widget("napari-decrappify", dock)
    # the test viewer's window is hidden: check visibility relative to it
    assert widget.isVisibleTo(viewer.window._qt_window)
    assert any(dock in name for name in viewer.window.dock_widgets)
    assert type(inner).__name__ == f"{dock}Widget"
