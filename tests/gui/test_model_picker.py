"""The one model picker of the docks (:class:`_model_picker.ModelPicker`): in every dock that
picks a model, a folder is offered once whatever the spelling of its path (resolved: a link,
``..``, the folder of a model already listed), and a model of the wrong kind is refused with a
message that names both kinds, and never listed."""

from pathlib import Path

import pytest
from _tiny import save_tiny

pytestmark = pytest.mark.gui


def _seg(path: Path) -> Path:
    from napari_decrappify.models import build_model, save_model
    from napari_decrappify.segment import segmentation_arch

    seg = build_model(segmentation_arch("tiny"), kind="segmentation", name=path.name,
                      classes=["background", "object"], measure_rf=False)
    seg.config.receptive_field = 8
    return Path(save_model(seg, path))


def _spellings(folder: Path, tmp_path: Path) -> list[str]:
    """The same folder four ways: as is, through a link, through ``..``, with a trailing /."""
    link = tmp_path / "link-to-model"
    link.symlink_to(folder, target_is_directory=True)
    return [str(folder), str(link), str(folder.parent / ".." / folder.parent.name / folder.name),
            str(folder) + "/"]


def _values(picker, folder: Path) -> list:
    return [v for v in picker.choices if v and Path(v).resolve() == folder.resolve()]


@pytest.fixture
def folders(tmp_path):
    """A restoration and a segmentation model outside the listed model folders."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    restoration = elsewhere / "mine-2x"
    save_tiny(restoration, scale=2, preload=False)
    segmentation = _seg(elsewhere / "my-seg")
    return restoration, segmentation


def test_restore_dock_picker(make_napari_viewer, tiny2x, model_dir, folders, tmp_path,
                             monkeypatch):
    from napari_decrappify._napari.restore import RestoreWidget

    restoration, segmentation = folders
    dock = RestoreWidget(make_napari_viewer())
    n = len(dock.model.choices)  # the bundled models and tiny-2x
    for spelling in _spellings(restoration, tmp_path):
        dock.add_model_folder(spelling)
        assert len(_values(dock.model, restoration)) == 1, dock.model.choices
        assert Path(dock.model.value).resolve() == restoration.resolve()
    # a listed model chosen by hand again is not listed twice
    dock.add_model_folder(model_dir / ".." / "models" / "tiny-2x")
    assert dock.model.value == str(model_dir / "tiny-2x")
    assert len(_values(dock.model, model_dir / "tiny-2x")) == 1
    assert len(dock.model.choices) == n + 1

    with pytest.raises(ValueError, match="holds a segmentation model, not a restoration model"):
        dock.add_model_folder(segmentation)
    assert _values(dock.model, segmentation) == []
    # through "Model folder…": the status line says it, the choice stays
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(segmentation))
    dock._choose_folder()
    assert dock.status.value == (f"⚠ {segmentation} holds a segmentation model, not a "
                                 "restoration model")
    assert dock.model.value == str(model_dir / "tiny-2x")
    assert _values(dock.model, segmentation) == []


def test_segment_dock_picker(make_napari_viewer, model_dir, folders, tmp_path):
    from napari_decrappify._napari.segment import SegmentWidget

    restoration, segmentation = folders
    listed = _seg(model_dir / "listed-seg")
    dock = SegmentWidget(make_napari_viewer())
    assert str(listed) in dock.model_choice.choices
    n = len(dock.model_choice.choices)
    for spelling in _spellings(segmentation, tmp_path):
        dock.model_folder.value = spelling
        assert len(_values(dock.model_choice, segmentation)) == 1, dock.model_choice.choices
        assert Path(dock.model_choice.value).resolve() == segmentation.resolve()
    dock.add_model_folder(model_dir / ".." / "models" / "listed-seg")
    assert dock.model_choice.value == str(listed)
    assert len(dock.model_choice.choices) == n + 1

    dock.model_folder.value = restoration  # the "or folder" box: said on the status line
    assert dock.status.value == (f"⚠ {restoration} holds a restoration model, not a "
                                 "segmentation model")
    assert dock.model_choice.value == str(listed)
    assert _values(dock.model_choice, restoration) == []
    with pytest.raises(ValueError, match="holds a restoration model, not a segmentation model"):
        dock.add_model_folder(restoration)


def test_train_dock_picker(make_napari_viewer, tiny2x, model_dir, folders, tmp_path):
    """'start from' offers restoration models only, each once; a model saved elsewhere is
    offered (not selected: the dock's choice stays), a segmentation model is not."""
    from napari_decrappify._napari._workers import model_events
    from napari_decrappify._napari.train import TrainWidget

    restoration, segmentation = folders
    dock = TrainWidget(make_napari_viewer())
    picker = dock.start_from
    n = len(picker.choices)  # "new network", the bundled models and tiny-2x
    assert picker.choices[0] is None and str(model_dir / "tiny-2x") in picker.choices
    listed_seg = _seg(model_dir / "listed-seg")  # in a listed folder, not a restoration model
    picker.reset_choices()
    assert _values(picker, listed_seg) == [] and len(picker.choices) == n
    for spelling in _spellings(restoration, tmp_path):
        picker.add_folder(spelling)
        assert len(_values(picker, restoration)) == 1, picker.choices
    picker.add_folder(model_dir / ".." / "models" / "tiny-2x")
    assert len(picker.choices) == n + 1
    with pytest.raises(ValueError, match="holds a segmentation model, not a restoration model"):
        picker.add_folder(segmentation)
    model_events.saved.emit(str(segmentation))  # e.g. trained in the Segment dock
    assert _values(picker, segmentation) == [] and len(picker.choices) == n + 1
