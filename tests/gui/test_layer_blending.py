"""The layers this plugin adds read well in napari's layer controls: their blending is
``translucent`` (``additive`` for the hidden class probabilities), never napari's
``translucent_no_depth`` default; and hidden probability layers add no stray "class" slider."""

from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.gui


def _blend_combo_text(viewer, layer) -> str:
    from qtpy.QtWidgets import QComboBox

    viewer.layers.selection.active = layer
    controls = viewer.window._qt_viewer.controls.widgets[layer]
    for combo in controls.findChildren(QComboBox):
        items = [combo.itemText(i) for i in range(combo.count())]
        if "additive" in items:
            return combo.currentText()
    raise AssertionError("no blending combo box in the layer controls")


def test_opened_and_restored_layers_are_translucent(make_napari_viewer, tmp_path, tiny_model_4x):
    from napari_decrappify._napari._layers import restored_layer_kwargs

    tifffile.imwrite(tmp_path / "em.tif", np.zeros((2, 32, 32), np.uint8))
    viewer = make_napari_viewer()
    viewer.open(tmp_path / "em.tif", plugin="napari-decrappify")
    em = viewer.layers["em"]
    assert em.blending == "translucent"
    assert _blend_combo_text(viewer, em) == "translucent"
    kwargs = restored_layer_kwargs(em, tiny_model_4x, "ZYX")
    restored = viewer.add_image(np.zeros((2, 128, 128), np.float32), **kwargs)
    assert _blend_combo_text(viewer, restored) == "translucent"
    plain = viewer.add_image(np.zeros((32, 32), np.float32))  # napari's own default, for contrast
    assert plain.blending == "translucent_no_depth"


def test_sample_layers_are_translucent(cremi):
    from napari_decrappify._napari import _sample_data

    for _, kwargs, kind in _sample_data.cremi_lr_hr():
        assert kind == "image" and kwargs["blending"] == "translucent"


def test_hidden_probabilities_add_no_class_slider(make_napari_viewer):
    """One probability layer per class, on the image's grid (a layer with a class axis added a
    "class" slider, even hidden); additive, so that shown over the grey image it reads."""
    from napari_decrappify._napari.segment import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 32, 32), np.float32), name="em", scale=(40, 4, 4), units="nm")
    dock = SegmentWidget(viewer)
    rng = np.random.default_rng(0)
    probs = rng.random((3, 4, 32, 32)).astype(np.float32)
    seg = SimpleNamespace(classes=["background", "mito"], probabilities=probs,
                          labels=probs.argmax(0).astype(np.uint8))
    model = SimpleNamespace(name="seg", weights_hash="0" * 64)
    dock._predicted(seg, {"scale": (40.0, 4.0, 4.0), "translate": (0.0, 0.0, 0.0),
                          "units": ("nm",) * 3, "axes": "ZYX", "source": "em", "model": model})
    layers = [viewer.layers[f"em P({c}) (seg)"] for c in ("background", "mito")]
    assert viewer.dims.ndim == 3  # z, y, x: no class axis
    assert [layer.data.shape for layer in layers] == [(4, 32, 32)] * 2
    assert all(not layer.visible and layer.blending == "additive" for layer in layers)
    assert viewer.layers["em classes (seg)"].blending == "translucent"
    labels = [str(a) for a in viewer.dims.axis_labels]
    assert "class" not in labels, labels
