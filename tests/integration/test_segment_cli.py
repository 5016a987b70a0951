"""End to end: ``decrappify segment`` trains from sparse labels, segments, splits objects, writes
labels (TIFF / OME-Zarr with the input's geometry) and the per-object CSV (areas in µm² in 2-D,
volumes in µm³ in 3-D, densities per µm² / µm³: the unit in each column's name)."""

import csv

import numpy as np
import pytest
import tifffile

from napari_decrappify import cli


def _data(tmp_path):
    rng = np.random.default_rng(0)
    shape = (64, 96)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = rng.normal(20, 3, shape)
    gt = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate([(16, 16), (16, 60), (46, 30), (46, 76)], 1):
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= 64
        img[d] += 150
        gt[d] = i
    lab = np.zeros(shape, np.uint8)
    lab[gt > 0] = 2  # dense labels: every disc pixel ...
    lab[30:33, :] = 1  # ... and a stripe of background
    lab[:3, :] = 1
    tifffile.imwrite(tmp_path / "img.tif", np.clip(img, 0, 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "lab.tif", lab)
    return gt


def test_cli_segment_trains_segments_counts_and_writes(tmp_path, capsys):
    from napari_decrappify.io import open_image
    from napari_decrappify.models import load_model
    from napari_decrappify.segment import match

    gt = _data(tmp_path)
    model_dir = tmp_path / "seg"
    code = cli.main(["segment", str(model_dir), str(tmp_path / "img.tif"), str(tmp_path / "obj.tif"),
                     "--train-labels", str(tmp_path / "lab.tif"), "--classes", "background,disc",
                     "--encoder", "tiny", "--epochs", "3", "--iters", "10", "--patch", "32",
                     "--batch", "4", "--device", "cpu", "--instances", "cc", "--min-size", "10",
                     "--csv", str(tmp_path / "objects.csv"), "--quiet"])
    assert code == 0
    model = load_model(model_dir)
    assert model.kind == "segmentation" and model.config.classes == ["background", "disc"]
    objects = tifffile.imread(tmp_path / "obj.tif")
    assert objects.shape == gt.shape
    stats = match(objects.astype(np.int32), gt)
    assert stats["tp"] >= 3, stats  # 30 iterations of a tiny model on four bright discs
    with open(tmp_path / "objects.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == stats["n_pred"]
    assert {r["class"] for r in rows} == {"disc"}
    assert "area_px2" in rows[0] and "area" not in rows[0]  # no pixel size: px², said so
    out = capsys.readouterr().out
    assert "saved segmentation model" in out and "objects" in out
    assert " per 10 000 px², mean area " in out

    # units for people (as the Segment dock): a 2-D image's objects have an area in µm² ...
    code = cli.main(["segment", str(model_dir), str(tmp_path / "img.tif"), str(tmp_path / "o2.tif"),
                     "--pixel-size", "16", "16", "--units", "nm", "--instances", "cc",
                     "--csv", str(tmp_path / "o2.csv"), "--device", "cpu", "--quiet"])
    assert code == 0
    with open(tmp_path / "o2.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[3:7] == ["area_um2", "pixels", "centroid_y_um", "centroid_x_um"]
    assert float(rows[0]["area_um2"]) == pytest.approx(int(rows[0]["pixels"]) * 0.016**2)
    out = capsys.readouterr().out
    assert "disc: " in out and " per µm², mean area " in out and " µm², mean diameter " in out
    assert "1/nanometer" not in out and "^" not in out  # (tmp paths may hold "1/")

    # ... and a 3-D stack's a volume in µm³, the density per µm³ (was "area" and 1/nanometer^3)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([tifffile.imread(tmp_path / "img.tif")] * 4))
    code = cli.main(["segment", str(model_dir), str(tmp_path / "stack.tif"), str(tmp_path / "o3.tif"),
                     "--axes", "ZYX", "--pixel-size", "40", "16", "16", "--units", "nm",
                     "--instances", "cc", "--csv", str(tmp_path / "o3.csv"), "--device", "cpu",
                     "--quiet"])
    assert code == 0
    with open(tmp_path / "o3.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[3:5] == ["volume_um3", "voxels"]
    assert "centroid_z_um" in reader.fieldnames and not any("area" in h for h in reader.fieldnames)
    assert float(rows[0]["volume_um3"]) == pytest.approx(int(rows[0]["voxels"]) * 0.04 * 0.016**2)
    out = capsys.readouterr().out
    assert " per µm³, mean volume " in out and " µm³, mean diameter " in out
    assert "area" not in out.split("disc: ")[-1] and "1/nanometer" not in out

    # the saved model, OME-Zarr output with physical pixel size, class labels and probabilities
    code = cli.main(["segment", str(model_dir), str(tmp_path / "img.tif"), str(tmp_path / "lab.zarr"),
                     "--pixel-size", "0.5", "0.25", "--units", "um", "--probabilities",
                     str(tmp_path / "prob.zarr"), "--device", "cpu", "--quiet"])
    assert code == 0
    labels = open_image(tmp_path / "lab.zarr")
    assert labels.axes == "YX" and labels.scale == (0.5, 0.25) and labels.units == ("um", "um")
    sem = np.asarray(labels.data)
    assert set(np.unique(sem)) <= {0, 1, 2}
    prob = open_image(tmp_path / "prob.zarr")
    assert prob.axes == "CYX" and prob.data.shape == (3, *gt.shape)
    np.testing.assert_array_equal(np.asarray(prob.data).argmax(0), sem)
    # both stores are NGFF 0.5 to a maintained validator; the labels' lower levels (if any)
    # would hold labels, not their averages
    import zarr
    from ome_zarr_models.v05.image import Image

    for store in ("lab.zarr", "prob.zarr"):
        Image.from_zarr(zarr.open_group(str(tmp_path / store), mode="r"))
    assert zarr.open_group(str(tmp_path / "lab.zarr"), mode="r").attrs["decrappify"][
        "pyramid"] == "first pixel"


def test_cli_segment_errors(tmp_path, capsys, tiny_model_dir):
    _data(tmp_path)
    (tmp_path / "exists.tif").write_bytes(b"")
    assert cli.main(["segment", str(tiny_model_dir / "tiny-4x"), str(tmp_path / "img.tif"),
                     str(tmp_path / "exists.tif")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["segment", str(tiny_model_dir / "tiny-4x"), str(tmp_path / "img.tif"),
                     str(tmp_path / "o.tif")]) == 1
    assert "not a segmentation model" in capsys.readouterr().err
    assert cli.main(["segment", str(tmp_path / "new"), str(tmp_path / "img.tif"),
                     str(tmp_path / "o.tif"), "--train-labels", str(tmp_path / "lab.tif")]) == 1
    assert "--classes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["segment", "m", "in.tif", "out.tif", "--instances", "flood"])
