"""The Restore dock's input defaults to the LR-looking layer, never the HR ground truth beside it;
the user's own pick then stays, whatever layers are added later."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _restore_dock(viewer):
    _, inner = viewer.window.add_plugin_dock_widget("napari-decrappify", "Restore")
    return inner


@pytest.mark.network
@pytest.mark.parametrize("dock_first", [False, True], ids=["sample-then-dock", "dock-then-sample"])
def test_bundled_sample_input_is_the_lr(make_napari_viewer, cremi, dock_first):
    viewer = make_napari_viewer()
    dock = _restore_dock(viewer) if dock_first else None
    viewer.open_sample("napari-decrappify", "cremi-4x")  # adds the HR first, then the LR
    assert [layer.name for layer in viewer.layers] == ["CREMI HR", "CREMI 4x LR"]
    dock = dock or _restore_dock(viewer)
    assert dock.image.value is viewer.layers["CREMI 4x LR"]
    assert dock.axes.value == "ZYX"
    # a result of this plugin (here its metadata only) never becomes the input
    viewer.add_image(np.zeros((25, 624, 624), np.float32), name="CREMI 4x LR restored (em-4x)",
                     scale=(40, 4, 4), metadata={"decrappify": {"model": "em-4x"}})
    assert dock.image.value is viewer.layers["CREMI 4x LR"]


def test_input_default_by_name_then_pixel_size(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="stack", scale=(4, 4), units="nm")
    dock = _restore_dock(viewer)
    assert dock.image.value is viewer.layers["stack"]  # the only one
    # no name says which: the largest pixel (in nm, whatever the units say) is the LR
    viewer.add_image(np.zeros((16, 16), np.float32), name="other", scale=(0.016, 0.016), units="um")
    assert dock.image.value is viewer.layers["other"]
    # a name that says LR wins over pixel sizes; one that says HR or ground truth loses
    viewer.add_image(np.zeros((64, 64), np.float32), name="ground truth", scale=(32, 32))
    assert dock.image.value is viewer.layers["other"]
    viewer.add_image(np.zeros((64, 64), np.float32), name="em_lr_noisy", scale=(1, 1))
    assert dock.image.value is viewer.layers["em_lr_noisy"]
    # same pixel size and no name: the smaller image
    viewer.layers.clear()
    viewer.add_image(np.zeros((64, 64), np.float32), name="a")
    viewer.add_image(np.zeros((32, 32), np.float32), name="b")
    assert dock.image.value is viewer.layers["b"]


def test_the_users_pick_stays(make_napari_viewer):
    viewer = make_napari_viewer()
    lr = viewer.add_image(np.zeros((16, 16), np.float32), name="LR", scale=(8, 8))
    hr = viewer.add_image(np.zeros((32, 32), np.float32), name="HR", scale=(4, 4))
    dock = _restore_dock(viewer)
    assert dock.image.value is lr
    dock.image.value = hr  # by hand (a denoising model on the HR, say)
    viewer.add_image(np.zeros((8, 8), np.float32), name="low res", scale=(16, 16))
    viewer.layers["low res"].name = "low res (2)"  # renamed: choices refresh
    assert dock.image.value is hr
    viewer.layers.remove(hr)  # the pick is gone: back to the default
    assert dock.image.value is viewer.layers["low res (2)"]  # LR by name, largest pixel
