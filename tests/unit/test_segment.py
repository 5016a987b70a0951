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
    path = m.to_csv(tmp_path / "objects.csv")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("label,class_id,class,area,area_px,centroid_y,centroid_x")
    assert len(lines) == 2 and lines[1].startswith("7,2,nucleus,")


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
