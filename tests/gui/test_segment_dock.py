"""Segment dock end to end: paint strokes, train a tiny model for seconds in a worker, predict
into probability + class Labels layers with the image's geometry, split and measure into a table,
select an object from the table, export CSV, compare counts against ground truth."""

import csv

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SCALE, TRANSLATE = (0.5, 0.5), (10.0, 20.0)
CENTRES = [(16, 16), (16, 48), (48, 18), (46, 48)]


def _scene():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    img = rng.normal(0.1, 0.03, (64, 64)).astype(np.float32)
    gt = np.zeros((64, 64), np.int32)
    for i, (cy, cx) in enumerate(CENTRES, 1):
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= 64
        img[d] += 0.8
        gt[d] = i
    return img, gt


def _paint(layer):
    layer.brush_size = 3
    for cy, cx in CENTRES:  # a short stroke across every disc: label 2
        for x in range(cx - 5, cx + 6):
            layer.paint((cy, x), 2, refresh=False)
    for x in range(2, 62):  # background strokes: label 1
        layer.paint((32, x), 1, refresh=False)
        layer.paint((2, x), 1, refresh=False)
    layer.refresh()


def _quick(dock):
    dock.classes.value = "background, disc"
    dock.encoder.value = "tiny"
    dock.budget_unit.value = "epochs"
    dock.budget.value = 1
    dock.iterations.value = 20
    dock.patch_size.value = 32
    dock.batch_size.value = 4
    dock.device.value = "cpu"
    dock.model_name.value = "dock-seg"


def test_segment_dock_paint_train_predict_measure(make_napari_viewer, qtbot, model_dir, tmp_path):
    from napari_decrappify._napari.segment import SegmentWidget
    from napari_decrappify.models import load_model

    viewer = make_napari_viewer()
    img, gt = _scene()
    image = viewer.add_image(img, name="cells", scale=SCALE, translate=TRANSLATE, units="um")
    dock = SegmentWidget(viewer)
    dock.image.value = image
    painted = dock.new_labels_layer()
    assert tuple(painted.scale) == SCALE and tuple(painted.translate) == TRANSLATE
    assert dock.labels.value is painted
    _paint(painted)
    assert set(np.unique(painted.data)) == {0, 1, 2}
    _quick(dock)

    job = dock.start_training()
    assert job is not None and not dock.train_button.enabled and dock.cancel_button.enabled
    qtbot.waitUntil(lambda: job.finished, timeout=300_000)
    assert job.status == "done", dock.status.value
    assert dock.result.iterations == 20
    assert "saved" in dock.status.value
    model = load_model(model_dir / "dock-seg")
    assert model.kind == "segmentation" and model.config.classes == ["background", "disc"]
    assert dock.model_choice.value == str(model_dir / "dock-seg")

    job = dock.start_prediction()
    assert job is not None
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.status == "done", dock.status.value
    classes = viewer.layers["cells classes (dock-seg)"]
    assert classes.data.shape == img.shape
    assert tuple(classes.scale) == SCALE and tuple(classes.translate) == TRANSLATE
    # one probability layer per class, on the image's grid: no "class" slider
    probs = [viewer.layers[f"cells P({c}) (dock-seg)"] for c in ("background", "disc")]
    for p in probs:
        assert p.data.shape == img.shape and not p.visible
        assert tuple(p.scale) == SCALE and tuple(p.translate) == TRANSLATE
    assert viewer.dims.ndim == 2
    p_disc = np.asarray(probs[1].data)
    assert p_disc[classes.data == 2].mean() > p_disc[classes.data == 1].mean()
    assert dock.semantic.value is classes
    # predicting again updates the layers in place (no new napari layers to create)
    job = dock.start_prediction()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert viewer.layers["cells classes (dock-seg)"] is classes
    assert viewer.layers["cells P(disc) (dock-seg)"] is probs[1]

    job = dock.split_and_measure()  # in a worker
    assert job is not None and not dock.split_button.enabled
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.status == "done", dock.status.value
    objects = dock.objects_layer
    assert tuple(objects.translate) == TRANSLATE
    rows = dock.measurements.rows
    assert dock.table.rowCount() == len(rows) >= 3, dock.summary.value
    assert "disc:" in dock.summary.value
    # units for people: the layer is in µm, areas in µm², densities per µm² (or per 100 µm²)
    headers = [dock.table.horizontalHeaderItem(c).text() for c in range(dock.table.columnCount())]
    assert "area (µm²)" in headers and "diameter (µm)" in headers, headers
    assert "µm²" in dock.summary.value and "1/" not in dock.summary.value
    first = rows[0]
    assert dock.table.item(0, 0).text() == str(first["label"])
    # centroids are physical: the disc centres in world coordinates
    world_centres = [(cy * 0.5 + 10, cx * 0.5 + 20) for cy, cx in CENTRES]
    assert min(abs(first["centroid_y"] - y) + abs(first["centroid_x"] - x)
               for y, x in world_centres) < 2.0
    dock.table.selectRow(0)
    assert objects.selected_label == first["label"]
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], (first["centroid_y"], first["centroid_x"]))

    dock.csv_path.value = tmp_path / "objects.csv"
    path = dock.export_csv()
    with open(path) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (tmp_path / "objects_summary.csv").exists()

    # count comparison: a 2x LR copy (upsampled on the fly) and the HR layer vs the GT labels
    lr = img.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    lr_layer = viewer.add_image(lr, name="lr", scale=(1.0, 1.0), translate=(10.25, 20.25), units="um")
    truth = viewer.add_labels(gt, name="truth", scale=SCALE, translate=TRANSLATE, units="um")
    dock.compare_sources.value = [lr_layer, image]
    dock.reference.reset_choices()
    dock.reference.value = truth
    job = dock.start_comparison()
    assert job is not None
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.status == "done", dock.status.value
    assert dock.compare_table.rowCount() == 2
    res = dock.comparison
    assert res["reference_count"] == 4
    assert set(res["sources"]) == {"lr", "cells"}
    assert res["sources"]["cells"]["count"] == len(rows)


def test_segment_dock_refuses_bad_input(make_napari_viewer, model_dir):
    from napari_decrappify._napari.segment import SegmentWidget

    viewer = make_napari_viewer()
    img, _ = _scene()
    image = viewer.add_image(img, name="cells")
    dock = SegmentWidget(viewer)
    dock.image.value = image
    assert dock.start_training() is None
    assert "painted strokes" in dock.status.value
    wrong = viewer.add_labels(np.zeros((10, 10), np.uint8), name="wrong")
    dock.labels.reset_choices()
    dock.labels.value = wrong
    assert dock.start_training() is None
    assert "same shape" in dock.status.value
    painted = dock.new_labels_layer()
    dock.classes.value = "background, disc"
    assert dock.start_training() is None
    assert "empty" in dock.status.value
    painted.data[5:10, 5:10] = 3
    assert dock.start_training() is None
    assert "only 2 class names" in dock.status.value
    dock.classes.value = "a, a"
    assert dock.start_training() is None
    assert "unique" in dock.status.value
    assert dock.start_prediction() is None
    assert "no segmentation model" in dock.status.value
    assert dock.export_csv() is None and "split into objects first" in dock.status.value


def _done(qtbot, job):
    """Wait for a dock's job (reading the study's planes runs in a worker)."""
    assert job is not None
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.status == "done"


def test_blinded_counting_study_dock(make_napari_viewer, qtbot, tmp_path):
    from napari_decrappify._napari._counting import CLICKS_LAYER, CROP_LAYER, CountingStudyWidget

    viewer = make_napari_viewer()
    img, _ = _scene()
    hr = viewer.add_image(img, name="HR")
    restored = viewer.add_image(img + 0.01, name="restored")
    lr = viewer.add_image(img.reshape(32, 2, 32, 2).mean(axis=(1, 3)), name="LR")
    dock = CountingStudyWidget(viewer)
    dock.sources.value = [lr, restored]
    dock.reference.value = hr
    dock.locations.value = 2
    dock.size.value = 32
    dock.path.value = tmp_path / "study.json"
    _done(qtbot, dock.new_study())
    study = dock.study
    assert study is not None and study.n_crops == 6
    assert set(study.sources) == {"LR", "restored", "HR"}
    assert not hr.visible and not lr.visible  # nothing on screen gives the origin away
    assert viewer.layers[CROP_LAYER].data.shape == (32, 32)
    assert viewer.layers[CLICKS_LAYER].mode == "add"
    assert "origin hidden" in dock.status.value and "LR" not in dock.status.value

    def click():
        name = dock.study.crop_box(dock.current)[0]  # the test peeks; the annotator cannot
        pts = [[8.0, 8.0], [20.0, 20.0]] if name != "LR" else [[8.0, 8.0]]
        viewer.layers[CLICKS_LAYER].data = np.asarray(pts)
        dock.next_crop()

    for _ in range(3):
        click()
    assert (tmp_path / "study.json").exists()
    # pause: a fresh dock resumes where the study stopped
    dock2 = CountingStudyWidget(viewer)
    dock2.path.value = tmp_path / "study.json"
    _done(qtbot, dock2.resume())
    resumed = dock2.study
    assert resumed is not None and resumed.n_done == 3
    dock = dock2
    while dock.current is not None:
        click()
    assert "study complete" in dock.status.value
    assert hr.visible and lr.visible and CROP_LAYER not in viewer.layers
    res = dock.unblind()
    assert dock.table.rowCount() == 3
    assert res["sources"]["HR"]["f1"] == 1.0
    assert res["sources"]["LR"]["count"] == 2 and res["sources"]["LR"]["fn"] == 2
    assert (tmp_path / "study_results.json").exists()


@pytest.mark.parametrize("action", ["predict", "compare", "train"])
def test_segment_dock_reads_lazy_layers_in_the_worker_not_the_ui_thread(
        make_napari_viewer, qtbot, model_dir, action):
    """A lazy layer (a file opened lazily, the Restore dock's lazy result) is read where the
    job runs: its chunks were computed by the button slot in the UI thread, freezing napari
    for the whole restoration before the progress bar and Cancel existed."""
    import threading

    import dask
    import dask.array as da

    from napari_decrappify._napari.segment import SegmentWidget
    from napari_decrappify.models import build_model, save_model
    from napari_decrappify.segment import segmentation_arch

    seg = build_model(segmentation_arch("tiny"), kind="segmentation", name="seg",
                      classes=["background", "disc"], measure_rf=False)
    seg.config.receptive_field = 8
    save_model(seg, model_dir / "seg")
    img, gt = _scene()
    readers = []

    def read(block):
        readers.append(threading.current_thread().name)
        return block

    lazy = da.from_array(img, chunks=(32, 32)).map_blocks(read, dtype=img.dtype)
    viewer = make_napari_viewer()
    readers.clear()
    image = viewer.add_image(lazy, name="lazy", scale=SCALE, translate=TRANSLATE)
    dock = SegmentWidget(viewer)
    dock.image.value = image
    # synchronous dask: a chunk is computed in the thread that asks for it
    with dask.config.set(scheduler="synchronous"):
        readers.clear()
        if action == "predict":
            dock.model_choice.reset_choices()
            dock.model_choice.value = str(model_dir / "seg")
            job = dock.start_prediction()
        elif action == "compare":
            dock.model_choice.reset_choices()
            dock.model_choice.value = str(model_dir / "seg")
            dock.compare_sources.value = [image]
            dock.reference.value = viewer.add_labels(gt, name="gt", scale=SCALE,
                                                     translate=TRANSLATE)
            job = dock.start_comparison()
        else:
            _quick(dock)
            dock.iterations.value = 2
            painted = dock.new_labels_layer()
            _paint(painted)
            job = dock.start_training()
        assert job is not None, dock.status.value
        if action != "train":  # the model's weights are loaded in a worker first
            assert job.description == "Loading model seg"
            qtbot.waitUntil(lambda: job.finished, timeout=120_000)
            assert job.status == "done" and dock.job is not job, dock.status.value
            job = dock.job
        qtbot.waitUntil(lambda: job.finished, timeout=120_000)
    assert job.status == "done", (job.status, job.error)
    assert readers and "MainThread" not in readers, readers


def test_weights_replaced_while_loading_are_not_loaded_in_the_ui_thread(
        make_napari_viewer, qtbot, model_dir, monkeypatch):
    """The chosen model folder is re-saved while its weights load in a worker: Predict goes on
    with the model that job loaded; it loaded the new weights in napari's UI thread."""
    import os
    import threading

    from napari_decrappify import models
    from napari_decrappify._napari.segment import SegmentWidget
    from napari_decrappify.segment import segmentation_arch

    folder = model_dir / "seg"

    def save(seed):
        seg = models.build_model(segmentation_arch("tiny"), kind="segmentation", name="seg",
                                 classes=["background", "disc"], measure_rf=False, seed=seed)
        seg.config.receptive_field = 8
        models.save_model(seg, folder)

    save(0)
    original, loads = models.load_model, []

    def load_and_resave(*args, **kwargs):
        loads.append(threading.current_thread() is threading.main_thread())
        model = original(*args, **kwargs)
        if len(loads) == 1:  # the worker's load: the folder is re-saved meanwhile
            save(1)
            wfile = folder / models.WEIGHTS_FILE  # a surely different time: the cache key
            t = wfile.stat().st_mtime_ns + 2_000_000_000
            os.utime(wfile, ns=(t, t))
        return model

    monkeypatch.setattr(models, "load_model", load_and_resave)
    viewer = make_napari_viewer()
    img, _ = _scene()
    dock = SegmentWidget(viewer)
    dock.image.value = viewer.add_image(img, name="cells")
    dock.model_choice.reset_choices()
    dock.model_choice.value = str(folder)
    job = dock.start_prediction()
    assert job is not None and job.description == "Loading model seg", dock.status.value
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.status == "done" and dock.job is not job, dock.status.value
    assert loads == [False], "the model's weights were loaded in the UI thread"
    assert dock.model is job.result  # exactly the model the loading job returned
    qtbot.waitUntil(lambda: dock.job.finished, timeout=60_000)
    assert dock.job.status == "done", dock.status.value
    meta = viewer.layers["cells classes (seg)"].metadata["decrappify"]
    assert meta["weights_sha256"] == job.result.weights_hash
    assert dock._loaded_just_now is None


def test_segment_image_defaults_to_the_restored_result(make_napari_viewer):
    """What a biologist segments: the restored result when there is one (the newest), else the
    finest image, never a map, probability or crappified preview of this plugin; the user's own
    pick then stays whatever layers come."""
    from napari_decrappify._napari.segment import SegmentWidget

    viewer = make_napari_viewer()
    lr = viewer.add_image(np.zeros((16, 16), np.float32), name="em LR", scale=(16, 16), units="nm")
    dock = SegmentWidget(viewer)
    assert dock.image.value is lr  # the only image
    hr = viewer.add_image(np.zeros((64, 64), np.float32), name="em HR", scale=(4, 4), units="nm")
    assert dock.image.value is hr  # finer than the LR (not simply the first layer)
    # products of the plugin other than a restoration are never the default
    viewer.add_image(np.zeros((64, 64), np.float32), name="em LR restored (m) error",
                     scale=(2, 2), metadata={"decrappify": {"error_of": "x"}})
    viewer.add_image(np.zeros((64, 64), np.float32), name="em P(mito) (seg)", scale=(1, 1),
                     metadata={"decrappify": {"model": "seg", "classes": ["mito"]}})
    assert dock.image.value is hr
    restored = viewer.add_image(np.zeros((64, 64), np.float32), name="em LR restored (em-4x)",
                                scale=(4, 4), units="nm",
                                metadata={"decrappify": {"model": "em-4x", "scale": 4}})
    assert dock.image.value is restored
    viewer.layers.move(viewer.layers.index(restored), 0)  # reordered: still the restoration
    assert dock.image.value is restored
    newer = viewer.add_image(np.zeros((64, 64), np.float32), name="em LR restored (other)",
                             scale=(4, 4), metadata={"decrappify": {"model": "other"}})
    assert dock.image.value is newer  # the newest restoration
    dock.image.value = lr  # the user's pick stays
    viewer.add_image(np.zeros((64, 64), np.float32), name="again restored",
                     metadata={"decrappify": {"model": "m3"}})
    assert dock.image.value is lr
    viewer.layers.remove(lr)  # gone: back to the default
    assert dock.image.value is viewer.layers["again restored"]
    # a restoration opened from a file says so by its name only: before any other image
    viewer.layers.clear()
    viewer.add_image(np.zeros((64, 64), np.float32), name="em HR", scale=(4, 4))
    from_file = viewer.add_image(np.zeros((64, 64), np.float32), name="em_restored", scale=(4, 4))
    viewer.add_image(np.zeros((64, 64), np.float32), name="em bicubic", scale=(4, 4))
    assert dock.image.value is from_file


@pytest.mark.parametrize("radius_px, shown", [(5, "nm"), (40, "µm")])
def test_volume_measurements_read_in_um3_or_nm3(make_napari_viewer, qtbot, tmp_path, radius_px,
                                                shown):
    """A 3-D stack's objects have a volume (never an 'area') in µm³, or nm³ for objects whose
    µm³ would need an exponent (4 nm pixels: a 10 px vesicle is 40 nm, 33 510 nm³), and a
    density per µm³; the exported CSV says the same units in its column names."""
    from napari_decrappify._napari.segment import SegmentWidget

    viewer = make_napari_viewer()
    n = 4 * radius_px
    zz, yy, xx = np.mgrid[:n // 4, :n, :n]
    ball = ((zz - n // 8) * 4) ** 2 + (yy - n // 2) ** 2 + (xx - n // 2) ** 2 <= radius_px ** 2
    sem = np.where(ball, 2, 1).astype(np.uint8)
    layer = viewer.add_labels(sem, name="em classes (seg)", scale=(16, 4, 4), units="nm",
                              metadata={"classes": ["background", "object"], "axes": "ZYX"})
    dock = SegmentWidget(viewer)
    dock.semantic.value = layer
    dock.method.value = "cc"
    dock.min_size.value = 0
    job = dock.split_and_measure()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert job.status == "done", dock.status.value
    headers = [dock.table.horizontalHeaderItem(c).text() for c in range(dock.table.columnCount())]
    assert f"volume ({shown}³)" in headers and f"diameter ({shown})" in headers, headers
    assert not any("area" in h for h in headers), headers
    assert f"z ({shown})" in headers
    assert "per µm³" in dock.summary.value and "1/" not in dock.summary.value, dock.summary.value
    assert f" {shown}" in dock.summary.value
    row = dock.measurements.rows[0]
    col = headers.index(f"diameter ({shown})")
    factor = 1.0 if shown == "nm" else 1e-3
    assert float(dock.table.item(0, col).text()) == pytest.approx(
        row["equivalent_diameter"] * factor, rel=1e-3)
    assert "e-" not in dock.table.item(0, headers.index(f"volume ({shown}³)")).text()

    dock.csv_path.value = tmp_path / "objects.csv"
    with open(dock.export_csv()) as f:
        exported = next(csv.DictReader(f))
    ascii_unit = "um" if shown == "µm" else "nm"
    assert float(exported[f"equivalent_diameter_{ascii_unit}"]) == pytest.approx(
        float(dock.table.item(0, col).text()), rel=1e-3)  # the CSV's numbers are the table's
    assert f"volume_{ascii_unit}3" in exported and not any("area" in k for k in exported)
    with open(tmp_path / "objects_summary.csv") as f:
        assert "density_per_um3" in next(csv.DictReader(f))
