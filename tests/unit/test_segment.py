"""Segmentation core: the sparse-label loss, instance split, measurements, object matching,
count comparison and a tiny training run (seconds)."""

import math
import threading

import numpy as np
import pytest
import torch

from napari_decrappify import segment as S
from napari_decrappify.config import ArchConfig


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize("dice_weight", [0.0, 1.0])
def test_loss_ignores_unlabelled_pixels(dice_weight):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 16, 16, generator=g)
    target = torch.randint(1, 4, (2, 16, 16), generator=g)
    target[:, :, :8] = 0  # half the pixels unlabelled
    loss_fn = S.SparseSegLoss([0.0, 1.0, 2.0, 0.5], dice_weight=dice_weight)
    base = loss_fn(logits, target)
    changed = logits.clone()
    changed[:, :, :, :8] = torch.randn(2, 4, 16, 8, generator=g) * 10
    assert float(loss_fn(changed, target)) == pytest.approx(float(base), abs=1e-6)
    # and the gradient there is exactly zero
    x = logits.clone().requires_grad_(True)
    loss_fn(x, target).backward()
    assert torch.count_nonzero(x.grad[:, :, :, :8]) == 0
    assert torch.count_nonzero(x.grad[:, :, :, 8:]) > 0
    # changing a labelled pixel does change the loss
    changed = logits.clone()
    changed[:, :, :, 12] += torch.randn(2, 4, 16, generator=g) * 5
    assert float(loss_fn(changed, target)) != pytest.approx(float(base), abs=1e-6)


def test_loss_weighted_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]]]])  # (1, 3, 1, 2)
    target = torch.tensor([[[1, 2]]])
    w = [0.0, 1.0, 4.0]
    lp = torch.log_softmax(logits, 1)[0, :, 0]
    expected = -(1.0 * lp[1, 0] + 4.0 * lp[2, 1]) / (1.0 + 4.0)
    assert float(S.SparseSegLoss(w)(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    # a fully unlabelled batch gives 0 (not NaN) and a usable gradient
    zero = S.SparseSegLoss(w, dice_weight=1.0)(logits.requires_grad_(True), torch.zeros_like(target))
    assert float(zero.detach()) == 0.0
    zero.backward()


def test_metrics_count_labelled_pixels_only():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 1.0  # predicts class 1 everywhere
    target = torch.tensor([[[1, 0], [2, 0]]])
    assert float(S.seg_accuracy(logits, target)) == pytest.approx(0.5)
    assert float(S.seg_dice(logits, target)) == pytest.approx((2 / 3 + 0) / 2)


# --------------------------------------------------------------------------- instances


def test_connected_components_count_separate_objects_exactly():
    sem = np.zeros((80, 100), np.uint8)
    sem[:] = 1  # background class everywhere
    centres = [(15, 15), (15, 50), (15, 85), (50, 20), (55, 70)]
    for cy, cx in centres:
        sem[disc(sem.shape, cy, cx, 7)] = 2
    sem[70:76, 40:46] = 3  # one square of another class
    sem[2, 2] = 2  # a one-pixel speck
    inst = S.instances(sem, "cc", classes=["background", "disc", "square"])
    assert inst.max() == 7 and len(np.unique(inst)) == 8  # 5 discs + speck + square, ids 1..7
    assert (inst[sem == 1] == 0).all()  # background is not an object
    inst = S.instances(sem, "cc", classes=["background", "disc", "square"], min_size=5)
    assert len(np.unique(inst)) - 1 == 6
    classes = S.object_classes(inst, sem)
    assert sorted(classes.values()) == [2] * 5 + [3]
    # explicit class ids override names; without names every non-zero value is an object
    assert len(np.unique(S.instances(sem, "cc", class_ids=[3]))) - 1 == 1
    assert S.instances(sem, "cc").max() == 8  # background (1) becomes one big object


def test_watershed_splits_two_touching_discs_but_not_single_ones():
    sem = np.zeros((64, 120), np.uint8)
    sem[disc(sem.shape, 32, 30, 12) | disc(sem.shape, 32, 50, 12)] = 1  # touching pair
    sem[disc(sem.shape, 32, 95, 14)] = 1  # one disc
    cc = S.instances(sem, "cc")
    ws = S.instances(sem, "watershed")
    assert cc.max() == 2
    assert len(np.unique(ws)) - 1 == 3
    # the split runs through the neck: each half holds one disc centre
    assert ws[32, 30] != ws[32, 50] and ws[32, 30] > 0 and ws[32, 50] > 0
    assert (ws > 0).sum() == (sem > 0).sum()  # no pixel lost
    # an ellipse (no neck) stays whole
    yy, xx = np.mgrid[:64, :120]
    ell = (((yy - 32) / 10.0) ** 2 + ((xx - 60) / 25.0) ** 2 <= 1).astype(np.uint8)
    assert S.instances(ell, "watershed").max() == 1


def test_instances_per_plane_with_time_axis_and_bad_input():
    sem = np.zeros((3, 32, 32), np.uint8)
    sem[:, 10:20, 10:20] = 1  # the same square in 3 frames
    assert S.instances(sem, "cc", axes="TYX").max() == 3
    assert S.instances(sem, "cc").max() == 1  # without axes: one 3-D object
    with pytest.raises(ValueError, match="integers"):
        S.instances(sem.astype(float), "cc")
    with pytest.raises(ValueError, match="unknown instance method"):
        S.instances(sem, "flood")


def _two_spheres(dz, dxy=0.1, radius=2.5, half_gap=22):
    """Two overlapping spheres (centres 2 * half_gap * dxy apart, a neck between them) and one
    sphere, sampled with z step ``dz`` and xy pixels ``dxy``: (two, one)."""
    nz = int(radius / dz) + 1
    z, y, x = np.mgrid[-nz : nz + 1, -30:31, -60:61]

    def ball(cx):
        return (z * dz) ** 2 + (y * dxy) ** 2 + ((x - cx) * dxy) ** 2 <= radius**2

    return (ball(-half_gap) | ball(half_gap)).astype(np.uint8), ball(0).astype(np.uint8)


def test_watershed_measures_physical_distance_with_pixel_size():
    # z step 20x the xy pixel: in voxel units the distance transform is flat along the neck
    two, one = _two_spheres(dz=2.0)
    assert two.shape == (5, 61, 121)
    assert S.instances(two, "watershed").max() == 1  # voxel units: the pair stays merged
    ws = S.instances(two, "watershed", pixel_size=(2.0, 0.1, 0.1))
    assert ws.max() == 2
    assert ws[2, 30, 60 - 22] != ws[2, 30, 60 + 22]  # each sphere centre in its own object
    assert (ws > 0).sum() == two.sum()
    assert S.instances(one, "watershed", pixel_size=(2.0, 0.1, 0.1)).max() == 1  # no over-split
    # only the ratios matter; one value per axis of a T stack works too (T is ignored)
    np.testing.assert_array_equal(S.instances(two, "watershed", pixel_size=(20.0, 1.0, 1.0)), ws)
    stack = np.stack([two, two])
    assert S.instances(stack, "watershed", axes="TZYX", pixel_size=(5.0, 2.0, 0.1, 0.1)).max() == 4
    # isotropic pixel sizes give exactly the default (voxel) result
    two_iso, _ = _two_spheres(dz=0.5)
    np.testing.assert_array_equal(S.instances(two_iso, "watershed", pixel_size=(0.3, 0.3, 0.3)),
                                  S.instances(two_iso, "watershed"))
    with pytest.raises(ValueError, match="pixel_size needs 3 values"):
        S.instances(two, "watershed", pixel_size=(0.1, 0.1))
    with pytest.raises(ValueError, match="positive"):
        S.instances(two, "watershed", pixel_size=(0.0, 0.1, 0.1))


def test_segment_and_compare_counts_pass_pixel_size_to_the_watershed(monkeypatch):
    two, _ = _two_spheres(dz=2.0)

    def fake_predict(model, image, **kw):  # a "prediction" that is the two spheres (class 1)
        return S.Segmentation(probabilities=None, labels=two, classes=["sphere"], axes="ZYX")

    # segment() looks predict up in its own module (the package re-exports it)
    monkeypatch.setattr(S.prediction, "predict", fake_predict)
    assert S.segment(two, "m", objects="watershed").objects.max() == 1
    assert S.segment(two, "m", objects="watershed", pixel_size=(2.0, 0.1, 0.1)).objects.max() == 2
    objects, _ = S.segment_objects("m", two, pixel_size=(2.0, 0.1, 0.1))
    assert objects.max() == 2
    res = S.compare_counts({"img": two}, S.instances(two, "watershed", pixel_size=(2, 0.1, 0.1)),
                           model="m", pixel_size=(2.0, 0.1, 0.1))
    assert res["sources"]["img"]["count"] == 2 and res["sources"]["img"]["tp"] == 2


def test_segmenting_a_file_uses_its_voxel_size_for_the_watershed(monkeypatch, tmp_path):
    # nd.segment(path, objects="watershed") split isotropically while `decrappify segment`
    # used the file's voxel size: 1 object instead of the CLI's 2 on the same file
    from napari_decrappify.io import write_tiff

    two, _ = _two_spheres(dz=2.0)
    path = tmp_path / "spheres.tif"
    write_tiff(path, two.astype(np.uint8), axes="ZYX", scale=(2.0, 0.1, 0.1),
               units=("um",) * 3)

    def fake_predict(model, image, **kw):
        return S.Segmentation(probabilities=None, labels=two, classes=["sphere"], axes="ZYX")

    # segment() looks predict up in its own module (the package re-exports it)
    monkeypatch.setattr(S.prediction, "predict", fake_predict)
    assert S.segment(str(path), "m", objects="watershed").objects.max() == 2
    assert S.segment(two, "m", objects="watershed").objects.max() == 1  # an array: isotropic


# --------------------------------------------------------------------------- measurements


def test_measure_known_disc_in_physical_units(tmp_path):
    shape = (60, 80)
    mask = disc(shape, 25, 40, 10)
    inst = mask.astype(np.int32) * 7
    image = np.where(mask, 3.0, 1.0).astype(np.float32)
    sem = mask.astype(np.uint8) * 2 + (~mask).astype(np.uint8)
    m = S.measure(inst, image, ["background", "nucleus"], pixel_size=(0.5, 0.25),
                  translate=(10.0, -2.0), semantic=sem, unit="um")
    (row,) = m.rows
    n = int(mask.sum())
    assert row["label"] == 7 and row["class"] == "nucleus" and row["class_id"] == 2
    assert row["area_px"] == n
    assert row["area"] == pytest.approx(n * 0.5 * 0.25)
    assert row["centroid_y"] == pytest.approx(25 * 0.5 + 10.0)
    assert row["centroid_x"] == pytest.approx(40 * 0.25 - 2.0)
    assert row["equivalent_diameter"] == pytest.approx(2 * math.sqrt(n * 0.125 / math.pi))
    assert abs(n - math.pi * 100) < 0.03 * math.pi * 100  # the raster disc is ~ pi r^2
    assert row["mean_intensity"] == pytest.approx(3.0)
    (summ,) = m.summary
    assert summ["class"] == "nucleus" and summ["count"] == 1
    assert summ["density"] == pytest.approx(1 / (60 * 0.5 * 80 * 0.25))
    assert summ["density_unit"] == "1/um^2"
    path = m.to_csv(tmp_path / "objects.csv")  # for people: the unit in each column's name
    lines = path.read_text().splitlines()
    assert lines[0].startswith("label,class_id,class,area_um2,pixels,centroid_y_um,centroid_x_um")
    assert len(lines) == 2 and lines[1].startswith("7,2,nucleus,")


def test_measure_classes_per_plane_when_ids_restart_per_frame():
    inst = np.zeros((2, 20, 20), np.int32)
    sem = np.ones((2, 20, 20), np.uint8)
    inst[0, 2:6, 2:6] = 1  # id 1 in frame 0 is a nucleus ...
    sem[0, 2:6, 2:6] = 2
    inst[1, 2:12, 2:12] = 1  # ... and id 1 in frame 1 a (larger) vesicle
    sem[1, 2:12, 2:12] = 3
    m = S.measure(inst, None, ["background", "nucleus", "vesicle"], semantic=sem, axes="TYX")
    assert [(r["t"], r["label"], r["class"], r["area_px"]) for r in m.rows] == [
        (0, 1, "nucleus", 16), (1, 1, "vesicle", 100)]
    assert [(s["class"], s["count"]) for s in m.summary] == [("nucleus", 1), ("vesicle", 1)]


def test_measure_without_semantic_uses_the_first_object_class():
    sem = np.ones((60, 60), np.uint8)
    sem[disc(sem.shape, 20, 20, 6) | disc(sem.shape, 40, 40, 6)] = 2
    inst = S.instances(sem, "cc", classes=["background", "nucleus"])
    m = S.measure(inst, None, ["background", "nucleus"])  # label 1 is background: not that
    assert [(r["class_id"], r["class"]) for r in m.rows] == [(2, "nucleus")] * 2
    assert [(s["class"], s["count"]) for s in m.summary] == [("nucleus", 2)]
    m = S.measure(inst, None, ["nucleus", "vesicle"])  # no background name: the first class
    assert {r["class"] for r in m.rows} == {"nucleus"}
    assert {(r["class_id"], r["class"]) for r in S.measure(inst).rows} == {(0, "none")}


def test_csv_always_has_a_header(tmp_path):
    import csv

    m = S.measure(np.zeros((10, 10), np.int32), np.zeros((10, 10)), ["background", "nucleus"])
    assert m.rows == []
    path = m.to_csv(tmp_path / "none.csv")
    assert path.read_text().splitlines() == [
        "label,class_id,class,area_px2,pixels,centroid_y_px,centroid_x_px,equivalent_diameter_px,"
        "mean_intensity"]
    with open(m.summary_csv(tmp_path / "summary.csv")) as f:
        assert [r["count"] for r in csv.DictReader(f)] == ["0"]  # nucleus: 0 objects
    assert S.write_csv([], tmp_path / "t.csv", columns=["label", "t"]).read_text().strip() == "label,t"


def test_csv_keeps_every_digit_of_stage_coordinates(tmp_path):
    import csv

    # stage coordinates in nm: 8 significant digits must survive the CSV (in µm there)
    inst = np.zeros((100, 100), np.int32)
    inst[10:13, 10:13] = 1
    inst[10:13, 14:17] = 2
    m = S.measure(inst, None, pixel_size=(65.0, 65.0), translate=(12_345_000.0, 23_456_000.0),
                  unit="nm")
    with open(m.to_csv(tmp_path / "stage.csv")) as f:
        back = list(csv.DictReader(f))
    assert [r["centroid_y_um"] for r in back] == ["12345.715", "12345.715"]
    assert [r["centroid_x_um"] for r in back] == ["23456.715", "23456.975"]
    assert [float(r["equivalent_diameter_um"]) for r in back] == [r["equivalent_diameter"] / 1000
                                                                   for r in m.rows]


def test_measure_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differs"):
        S.measure(np.zeros((4, 4), np.int32), np.zeros((4, 5)))


# --------------------------------------------------------------------------- matching


def _squares(shape, boxes):
    lab = np.zeros(shape, np.int32)
    for i, (y, x, h, w) in enumerate(boxes, start=1):
        lab[y : y + h, x : x + w] = i
    return lab


def test_match_hand_made_case():
    gt = _squares((50, 50), [(0, 0, 10, 10), (20, 0, 10, 10), (0, 30, 10, 10)])
    # A: exact copy of gt 1 (IoU 1); B: gt 2 shifted by 4 px (IoU 60/140 < 0.5);
    # C: gt 3 shifted by 2 px (IoU 80/120 > 0.5); D: nowhere near anything
    pred = _squares((50, 50), [(0, 0, 10, 10), (20, 4, 10, 10), (0, 32, 10, 10), (40, 40, 5, 5)])
    r = S.match(pred, gt, 0.5, return_pairs=True)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 1)
    assert sorted(r["pairs"]) == [(1, 1), (3, 3)]
    assert r["precision"] == pytest.approx(2 / 4)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 * 2 / (4 + 3))
    assert r["fp_rate"] == pytest.approx(0.5) and r["fn_rate"] == pytest.approx(1 / 3)
    assert r["count_error"] == 1
    assert r["mean_matched_iou"] == pytest.approx((1.0 + 80 / 120) / 2)
    # a looser threshold admits B
    assert S.match(pred, gt, 0.4)["tp"] == 3
    # centroid matching: within 3 px matches A and C, B is 4 px off
    r = S.match(pred, gt, centroid_distance=3.0)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 1)
    assert S.match(pred, gt, centroid_distance=4.5)["tp"] == 3


def test_match_is_one_to_one_below_half_iou():
    gt = _squares((20, 40), [(0, 0, 10, 10), (0, 10, 10, 10)])
    pred = _squares((20, 40), [(0, 0, 10, 20)])  # one object covering both (IoU 0.5 each)
    r = S.match(pred, gt, 0.3)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)


def test_match_maximises_the_number_of_matches_below_half_iou():
    gt = np.zeros((20, 60), np.int32)
    gt[0:10, 0:20] = 1
    gt[0:10, 20:40] = 2
    pred = np.zeros_like(gt)
    pred[0:8, 0:24] = 1  # IoU 0.690 with gt 1, 0.089 with gt 2
    pred[8:10, 0:20] = 2  # IoU 0.200 with gt 1, no overlap with gt 2
    # at 0.08 two matches exist ((1, 2) and (2, 1)): they beat one match of higher total IoU
    r = S.match(pred, gt, 0.08, return_pairs=True)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0)
    assert sorted(r["pairs"]) == [(1, 2), (2, 1)]
    assert r["mean_matched_iou"] == pytest.approx((16 / 180 + 40 / 200) / 2)
    # at 0.15 pred 1 - gt 2 is out: one match, the better one (IoU as the tiebreak)
    r = S.match(pred, gt, 0.15, return_pairs=True)
    assert r["tp"] == 1 and r["pairs"] == [(1, 1)]
    # objects that do not overlap never match, and the threshold must be a fraction
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"iou must be a threshold in \(0, 1\]"):
            S.match(pred, gt, bad)
    assert S.match(pred, gt, 1.0)["tp"] == 0
    assert S.match(gt, gt, 1.0)["tp"] == 2


def test_match_edge_cases():
    empty = np.zeros((8, 8), np.int32)
    one = empty.copy()
    one[2:4, 2:4] = 5
    assert S.match(empty, empty)["f1"] == 1.0
    r = S.match(empty, one)
    assert (r["tp"], r["fn"], r["f1"], r["recall"]) == (0, 1, 0.0, 0.0)
    r = S.match(one, empty)
    assert (r["fp"], r["precision"]) == (1, 0.0)
    with pytest.raises(ValueError, match="shape"):
        S.match(one, one[:4])
    with pytest.raises(ValueError, match="integer"):
        S.match(one.astype(float), one)


def test_compare_counts_on_instance_arrays():
    gt = _squares((40, 40), [(0, 0, 8, 8), (20, 20, 8, 8), (0, 20, 8, 8)])
    lr = _squares((40, 40), [(0, 0, 8, 8)])  # misses two
    restored = _squares((40, 40), [(0, 0, 8, 8), (20, 20, 8, 8), (30, 0, 5, 5)])  # misses one, 1 FP
    res = S.compare_counts({"LR": lr, "restored": restored, "HR": gt}, gt)
    assert res["reference_count"] == 3
    assert res["sources"]["LR"]["count"] == 1 and res["sources"]["LR"]["fn"] == 2
    assert (res["sources"]["restored"]["fn"], res["sources"]["restored"]["fp"]) == (1, 1)
    assert res["sources"]["HR"]["f1"] == 1.0
    # the reference may be one of the sources
    res = S.compare_counts({"LR": lr, "HR": gt}, "HR")
    assert res["reference"] == "HR" and res["sources"]["LR"]["recall"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="reference grid"):
        S.compare_counts({"small": lr[:20]}, gt)


# --------------------------------------------------------------------------- training


def _painted(shape=(64, 64)):
    rng = np.random.default_rng(0)
    img = rng.normal(0.1, 0.03, shape).astype(np.float32)
    centres = [(16, 16), (16, 48), (48, 20), (46, 48)]
    gt = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        d = disc(shape, cy, cx, 8)
        img[d] += 0.8
        gt[d] = i
    lab = np.zeros(shape, np.uint8)
    lab[14:18, 10:22] = 2
    lab[44:48, 44:52] = 2
    lab[30:33, 2:60] = 1
    return img, lab, gt


def _quick(**kw):
    base = dict(arch=ArchConfig(encoder="tiny", scale=1), patch_size=32, batch_size=2, epochs=1,
                iterations_per_epoch=2, device="cpu")
    base.update(kw)
    return S.SegmentConfig(**base)


def test_train_segmenter_saves_a_segmentation_model_that_predicts(tmp_path):
    from napari_decrappify.models import load_model

    img, lab, _ = _painted()
    events = []
    res = S.train_segmenter(img, lab, "background, disc", _quick(), out=tmp_path / "seg",
                            progress=events.append)
    assert res.stop_reason == "completed" and res.iterations == 2
    assert [e["event"] for e in events].count("batch") == 2 and events[-1]["event"] == "done"
    model = load_model(tmp_path / "seg")
    assert model.kind == "segmentation" and model.config.classes == ["background", "disc"]
    assert model.out_channels == 3 and model.scale == 1
    assert model.receptive_field > 8  # measured on logits (softmax outputs sum to 1)
    # its tiling halo is measured on saving (the validation plane), for these weights
    halo = model.config.halo_measurement
    assert model.default_halo == model.config.halo_px <= model.receptive_field
    assert halo["weights_sha256"] == model.config.weights_sha256 and halo["images"] == [[64, 64]]
    assert halo["max_abs_diff"][str(model.config.halo_px)] <= halo["bound"]
    tr = model.config.training
    assert tr["split"]["validation_held_out"] is False and "note" in tr["split"]
    assert len(tr["class_weights"]) == 3
    assert tr["labelled_pixels"] == {"background": int((lab == 1).sum()), "disc": int((lab == 2).sum())}
    seg = S.predict(model, img, axes="YX")
    assert seg.probabilities.shape == (3, 64, 64) and seg.labels.shape == (64, 64)
    np.testing.assert_allclose(seg.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(seg.labels, seg.probabilities.argmax(0))
    assert seg.labels.dtype == np.uint8 and seg.classes == ["background", "disc"]
    lazy = S.predict(model, img, axes="YX", lazy=True)
    np.testing.assert_allclose(np.asarray(lazy.probabilities), seg.probabilities, atol=1e-5)
    # the facade: nd.segment(image, model) with objects
    import napari_decrappify as nd

    out = nd.segment(img, model, axes="YX", objects="cc")
    assert out.objects.shape == img.shape and out.objects.dtype == np.int32


def test_train_segmenter_splits_planes_and_honours_cancel(tmp_path):
    img, lab, _ = _painted()
    stack = np.stack([img] * 4)
    labs = np.stack([lab] * 4)
    cancel = threading.Event()
    cancel.set()
    res = S.train_segmenter([stack], [labs], ["background", "disc"], _quick(epochs=3),
                            out=tmp_path / "seg", cancel=cancel)
    assert res.stop_reason == "cancelled" and res.iterations <= 1
    split = res.model.config.training["split"]
    assert split["validation_held_out"] is True
    assert split["planes_train"] == [0, 1, 2] and split["planes_valid"] == [3]
    assert (tmp_path / "seg" / "model.safetensors").exists()
    assert res.model.config.halo_px is None  # a cancelled run is saved at once, unmeasured


def test_train_segmenter_rejects_bad_labels():
    img, lab, _ = _painted()
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        S.train_segmenter(img, np.where(lab == 2, 5, lab), ["background", "disc"], _quick())
    with pytest.raises(ValueError, match="no labelled pixels for class"):
        S.train_segmenter(img, lab, ["background", "disc", "vesicle"], _quick())
    with pytest.raises(ValueError, match="must match pixel for pixel"):
        S.train_segmenter(img, lab[:32], ["background", "disc"], _quick())
    with pytest.raises(ValueError, match="unique"):
        S.train_segmenter(img, lab, ["a", "a"], _quick())
    with pytest.raises(ValueError, match="integers"):
        S.train_segmenter(img, lab + 0.5, ["background", "disc"], _quick())
    with pytest.raises(ValueError, match="patch_size"):
        S.SegmentConfig(patch_size=40)


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("minutes", math.inf),
                                          ("lr_max", -1), ("val_fraction", 1.5)])
def test_segment_config_refuses_what_train_config_refuses_with_the_same_one_line(field, value):
    """SegmentConfig used to accept these, then failed inside fastai or misbehaved; it now
    refuses them with the ValueError TrainConfig gives, one line naming the field."""
    from napari_decrappify.cli import error_message
    from napari_decrappify.config import TrainConfig

    with pytest.raises(ValueError) as segmentation:
        S.SegmentConfig(**{field: value})
    with pytest.raises(ValueError) as restoration:
        TrainConfig(**{field: value})
    line = error_message(segmentation.value)
    assert line == error_message(restoration.value)
    assert line.startswith(f"{field}: Input should be") and "\n" not in line


def test_train_segmenter_init_from_needs_the_same_classes_and_records_the_start(tmp_path):
    from napari_decrappify.models import load_model

    img, lab, _ = _painted()
    S.train_segmenter(img, lab, ["background", "disc"], _quick(), out=tmp_path / "base",
                      name="base")
    base = load_model(tmp_path / "base")
    assert base.config.metrics  # scores of the base weights
    swapped = np.where(lab == 1, 2, np.where(lab == 2, 1, 0)).astype(np.uint8)
    with pytest.raises(ValueError, match=r"remap the label values 1 -> 2, 2 -> 1"):
        S.train_segmenter(img, swapped, ["disc", "background"], _quick(), init_from=base)
    with pytest.raises(ValueError, match="its classes are"):
        S.train_segmenter(img, lab, ["background", "nucleus"], _quick(), init_from=base)
    # cancelled in its first epoch: the weights it has are scored (the old scores must not
    # linger, and the batch it trained is not thrown away)
    cancel = threading.Event()
    cancel.set()
    res = S.train_segmenter(img, lab, ["background", "disc"], _quick(), init_from=base,
                            name="finetuned", out=tmp_path / "ft", cancel=cancel)
    ft = load_model(tmp_path / "ft")
    assert res.model.name == "finetuned" and ft.name == "finetuned"
    assert set(ft.config.metrics) == {"valid_loss", "valid_accuracy", "valid_dice"}
    assert ft.config.metrics != load_model(tmp_path / "base").config.metrics
    assert ft.config.training["best_epoch_unfinished"] is True
    (start,) = ft.config.training["resumed_from"]
    assert start["weights_from"] == str(tmp_path / "base")
    assert start["command"] == "" and "history" not in start and "split" in start
    assert ft.config.training["stop_reason"] == "cancelled"
    # a second fine-tune extends the chain
    res = S.train_segmenter(img, lab, ["background", "disc"], _quick(), init_from=ft,
                            name="again", cancel=cancel)
    chain = res.model.config.training["resumed_from"]
    assert [c["weights_from"] for c in chain] == [str(tmp_path / "base"), str(tmp_path / "ft")]


def _untrained_segmenter(img):
    from napari_decrappify.data import percentile_norm
    from napari_decrappify.models import build_model

    return build_model(ArchConfig(encoder="tiny", scale=1, residual=False, out_channels=3),
                       kind="segmentation", name="untrained", norm=percentile_norm([img]),
                       classes=["background", "disc"], measure_rf=False)


def test_predict_rejects_non_finite_images():
    import dask.array as da

    img, _, _ = _painted()
    model = _untrained_segmenter(img)
    bad = img.copy()
    bad[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):  # numpy: before any tile runs
        S.predict(model, bad, axes="YX", device="cpu")
    inf = img.copy()
    inf[40, 40] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        S.predict(model, inf, axes="YX", device="cpu")
    with pytest.raises(ValueError, match="NaN or inf"):  # dask: checked on the output
        S.predict(model, da.from_array(bad, chunks=32), axes="YX", device="cpu")
    lazy = S.predict(model, da.from_array(bad, chunks=32), axes="YX", device="cpu", lazy=True)
    with pytest.raises(ValueError, match="NaN or inf"):  # lazy: when the tile is read
        np.asarray(lazy.labels)
    ok = S.predict(model, da.from_array(img, chunks=32), axes="YX", device="cpu", lazy=True)
    np.testing.assert_array_equal(np.asarray(ok.labels),
                                  S.predict(model, img, axes="YX", device="cpu").labels)


def test_predict_refuses_restoration_models(tiny_model_4x):
    with pytest.raises(ValueError, match="not a segmentation model"):
        S.predict(tiny_model_4x, np.zeros((32, 32), np.float32))


def test_patches_are_centred_on_labels_and_padded():
    img = np.random.default_rng(0).random((20, 24)).astype(np.float32)
    lab = np.zeros((20, 24), np.int16)
    lab[3, 5] = 1
    lab[15, 20] = 2
    ds = S.LabelledPatches([img], [lab], 32, length=20, seed=0)
    for i in range(20):
        x, y = ds[i]
        assert x.shape == (1, 32, 32) and y.shape == (32, 32)
        assert (y > 0).sum() >= 1  # every patch contains a labelled pixel
        assert set(np.unique(y.numpy())) <= {0, 1, 2}


# --------------------------------------------------------------------------- blinded counting study


def test_match_points_hand_made():
    r = S.match_points([[0, 0], [10, 10], [30, 30]], [[1, 1], [10, 14], [50, 50], [60, 60]], 3.0)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 3)
    assert r["f1"] == pytest.approx(2 / 7)
    # one click near two references matches only one of them
    r = S.match_points([[0, 0]], [[1, 0], [0, 1]], 2.0)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)
    assert S.match_points([], [], 3.0)["f1"] == 1.0


def test_counting_study_blinding_resume_unblind(tmp_path):
    study = S.CountingStudy.create((256, 256), ["LR-bicubic", "restored", "HR"], "HR",
                                   n_locations=3, size=64, seed=1, annotator="ann")
    assert study.n_crops == 9 and len(set(study.positions)) == 3
    assert sorted(study.order) == [(s, p) for s in range(3) for p in range(3)]
    ys = [y for y, _ in study.positions]
    assert all(0 <= y <= 192 for y in ys)
    images = {name: np.full((256, 256), i, np.float32) for i, name in
              enumerate(["LR-bicubic", "restored", "HR"])}
    # the truth at every location: 4 objects; LR misses 2 and adds 1, restored misses 1
    truth = [[10, 10], [10, 50], [50, 10], [50, 50]]
    clicks = {"HR": truth, "restored": truth[:3], "LR-bicubic": truth[:2] + [[30, 30]]}
    for _ in range(5):  # annotate five crops, save, resume, finish
        k = study.next_index()
        name, _ = study.crop_box(k)
        assert study.crop(k, images).shape == (64, 64)
        assert float(study.crop(k, images)[0, 0]) == ["LR-bicubic", "restored", "HR"].index(name)
        study.record(k, np.asarray(clicks[name]) + 0.7)  # clicks a little off: still matched
    path = study.save(tmp_path / "study.json")
    resumed = S.CountingStudy.load(path)
    assert resumed.n_done == 5 and resumed.next_index() == study.next_index()
    while (k := resumed.next_index()) is not None:
        resumed.record(k, clicks[resumed.crop_box(k)[0]])
    res = resumed.unblind()
    assert res["complete"] and res["reference"] == "HR"
    lr, rest, hr = (res["sources"][n] for n in ("LR-bicubic", "restored", "HR"))
    assert (hr["tp"], hr["fp"], hr["fn"], hr["f1"]) == (12, 0, 0, 1.0)
    assert (rest["count"], rest["fn"], rest["fp"]) == (9, 3, 0)
    assert (lr["count"], lr["tp"], lr["fn"], lr["fp"]) == (9, 6, 6, 3)
    assert lr["fn_rate"] == pytest.approx(0.5)
    # a second annotator on the same crops, in another order
    other = S.new_session(resumed, "second")
    assert other.order != resumed.order and sorted(other.order) == sorted(resumed.order)
    for k in range(other.n_crops):
        name = other.crop_box(k)[0]
        other.record(k, clicks["HR"] if name == "HR" else [])
    agree = S.annotator_agreement(resumed, other)
    assert agree["sources"]["HR"]["f1"] == 1.0
    assert agree["sources"]["restored"]["f1"] == 0.0


def test_counting_study_bad_input(tmp_path):
    with pytest.raises(ValueError, match="reference"):
        S.CountingStudy.create((64, 64), ["a", "b"], "HR")
    with pytest.raises(ValueError, match="do not fit"):
        S.CountingStudy.create((64, 64), ["a", "HR"], "HR", n_locations=5, size=32)
    study = S.CountingStudy.create((64, 64), ["a", "HR"], "HR", n_locations=1, size=32)
    with pytest.raises(ValueError, match="inside"):
        study.record(0, [[40, 3]])
    with pytest.raises(ValueError, match="missing"):
        study.crop(0, {})
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a counting study"):
        S.CountingStudy.load(tmp_path / "bad.json")


def test_measure_and_match_refuse_geometry_and_labels_they_cannot_use():
    inst = np.zeros((8, 8), np.int32)
    inst[2:4, 2:4] = 1
    with pytest.raises(ValueError, match="finite and > 0"):
        S.measure(inst, pixel_size=(0.0, 1.0))
    bad = inst.copy()
    bad[6, 6] = -3  # regionprops skipped negative ids: the object vanished from the table
    with pytest.raises(ValueError, match="must be >= 0 .* found -3"):
        S.measure(bad)
    with pytest.raises(ValueError, match="pixel_size needs 2 finite values"):
        S.match(inst, inst, centroid_distance=1.0, pixel_size=(1.0, 1.0, 1.0))
