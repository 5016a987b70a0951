"""Counting study dock: the visibility of the viewer's layers around a blinded study."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _done(qtbot, job):
    assert job is not None
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.status == "done"


def test_restarting_a_study_restores_the_original_visibility(make_napari_viewer, qtbot,
                                                             tmp_path):
    from napari_decrappify._napari._counting import CountingStudyWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    hr = viewer.add_image(rng.random((128, 128)).astype(np.float32), name="hr")
    lr = viewer.add_image(rng.random((64, 64)).astype(np.float32), name="lr")
    notes = viewer.add_shapes([[[0, 0], [10, 10]]], shape_type="rectangle", name="my notes")
    hidden = viewer.add_image(rng.random((128, 128)).astype(np.float32), name="hidden by me",
                              visible=False)
    dock = CountingStudyWidget(viewer)
    dock.sources.value = [lr]
    dock.reference.value = hr
    dock.locations.value = 1
    dock.size.value = 32
    dock.path.value = tmp_path / "study.json"
    _done(qtbot, dock.new_study())
    assert not notes.visible and not hr.visible and not lr.visible  # blinded
    _done(qtbot, dock.resume())  # Resume (or New study) pressed while a study is shown
    _done(qtbot, dock.new_study())
    while dock.current is not None:
        dock.next_crop()
    assert "study complete" in dock.status.value
    assert notes.visible and hr.visible and lr.visible
    assert not hidden.visible  # hidden before the study: stays hidden
