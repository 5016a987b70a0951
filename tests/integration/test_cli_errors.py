"""The command line refuses bad arguments with one clear line (no traceback) before computing or
writing anything, and a ``sample:KEY[a:b]`` plane range keeps its physical origin."""

import dataclasses
import json

import numpy as np
import pytest
import tifffile

from napari_decrappify import cli


def _fails(capsys, argv, *needles, code=1):
    """Run the CLI in-process: exit ``code``, one stderr line, naming every needle."""
    assert cli.main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "https://" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def tiny_sample(monkeypatch):
    """``sample:tinyem``: a 6 x 64 x 64 stack with CREMI's geometry (40 x 4 x 4 nm), offline."""
    from napari_decrappify import samples

    sample = dataclasses.replace(samples.SAMPLES["cremi"], key="tinyem", shape=(6, 64, 64))
    data = samples.synthetic_em((6, 64, 64), seed=1)
    real = samples.load_sample
    monkeypatch.setitem(samples.SAMPLES, "tinyem", sample)
    monkeypatch.setattr(samples, "load_sample",
                        lambda key="cremi": (data, sample) if key == "tinyem" else real(key))
    return sample


@pytest.fixture(scope="module")
def seg_model_dir(tmp_path_factory):
    from napari_decrappify.models import build_model, save_model
    from napari_decrappify.segment import segmentation_arch

    path = tmp_path_factory.mktemp("seg") / "seg"
    save_model(build_model(segmentation_arch("tiny"), kind="segmentation", name="seg",
                           classes=["background", "blob"]), path)
    return path


@pytest.fixture
def img(tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    return path


# ------------------------------------------------------------------ 1. sample plane range origin


def test_restore_sample_range_keeps_first_axis_origin(tmp_path, tiny_model_dir, tiny_sample):
    from napari_decrappify.io import open_image

    model = tiny_model_dir / "tiny-2x"
    assert cli.main(["restore", str(model), "sample:tinyem", str(tmp_path / "all.zarr"),
                     "--device", "cpu", "--quiet"]) == 0
    assert cli.main(["restore", str(model), "sample:tinyem[2:4]", str(tmp_path / "part.zarr"),
                     "--device", "cpu", "--quiet"]) == 0
    whole, part = open_image(tmp_path / "all.zarr"), open_image(tmp_path / "part.zarr")
    assert part.data.shape[0] == 2 and part.axes == "ZYX"
    assert part.translate[0] == pytest.approx(2 * 40.0)
    assert part.translate[1:] == whole.translate[1:]  # y, x origin as for the whole sample
    assert part.scale == whole.scale
    np.testing.assert_allclose(np.asarray(part.data), np.asarray(whole.data)[2:4], atol=1e-5)


def test_crappify_sample_range_keeps_first_axis_origin(tmp_path, tiny_sample, capsys):
    from napari_decrappify.io import open_image

    assert cli.main(["crappify", "sample:tinyem[3:5]", str(tmp_path / "a.tif"), "--scale", "2",
                     "--quiet"]) == 0
    lr = open_image(tmp_path / "a.tif")
    assert lr.axes == "ZYX" and lr.data.shape == (2, 32, 32)
    assert lr.translate[0] == pytest.approx(3 * 40.0) and lr.scale[0] == 40.0
    assert "origin (120.0," in capsys.readouterr().out
    # a negative start counts from the end; --pixel-size gives the plane spacing of the origin
    assert cli.main(["crappify", "sample:tinyem[-2:]", str(tmp_path / "b.zarr"), "--scale", "2",
                     "--pixel-size", "30", "4", "4", "--quiet"]) == 0
    lr = open_image(tmp_path / "b.zarr")
    assert lr.data.shape[0] == 2 and lr.translate[0] == pytest.approx(4 * 30.0)


def test_segment_sample_range_keeps_first_axis_origin(tmp_path, tiny_sample, seg_model_dir):
    from napari_decrappify.io import open_image

    assert cli.main(["segment", str(seg_model_dir), "sample:tinyem[1:3]", str(tmp_path / "s.zarr"),
                     "--device", "cpu", "--quiet"]) == 0
    labels = open_image(tmp_path / "s.zarr")
    assert labels.data.shape[0] == 2 and labels.translate[0] == pytest.approx(40.0)
    assert cli.main(["segment", str(seg_model_dir), "sample:tinyem[1:3]", str(tmp_path / "p.zarr"),
                     "--pixel-size", "50", "4", "4", "--device", "cpu", "--quiet"]) == 0
    assert open_image(tmp_path / "p.zarr").translate[0] == pytest.approx(50.0)


# ------------------------------------------------------------------ 2, 3. train arguments


@pytest.mark.parametrize("option", ["--photons", "--read-noise"])
def test_train_refuses_more_than_two_noise_values(tmp_path, capsys, option):
    hr = tmp_path / "hr.tif"
    tifffile.imwrite(hr, np.zeros((2, 64, 64), np.uint8))
    out = tmp_path / "m"
    _fails(capsys, ["train", "--hr", hr, "--scale", "2", "--out", out, "--encoder", "tiny",
                    "--epochs", "1", "--iters", "1", "--patch", "32", "--batch", "2", "--quiet",
                    option, "0.1", "0.2", "0.3"], option, "one value or a range", "got 3")
    assert not out.exists()


def test_train_pair_hr_needs_lr(tmp_path, capsys):
    hr = tmp_path / "hr.tif"
    tifffile.imwrite(hr, np.zeros((2, 64, 64), np.uint8))
    out = tmp_path / "m"
    _fails(capsys, ["train", "--hr", hr, "--pair-hr", hr, "--scale", "2", "--out", out,
                    "--encoder", "tiny", "--epochs", "1", "--iters", "1", "--patch", "32",
                    "--batch", "2", "--quiet"], "--pair-hr needs --lr", code=2)
    assert not out.exists()


# ------------------------------------------------------------------ 4, 5. sample keys, malformed


def test_unknown_sample_lists_known_keys(tmp_path, capsys):
    line = _fails(capsys, ["restore", tmp_path / "m", "sample:nosuch", tmp_path / "o.tif"],
                  "unknown sample 'nosuch'", "cremi", "nuclei2d")
    assert "KeyError" not in line
    _fails(capsys, ["evaluate", "sample:nosuch", "sample:cremi"], "unknown sample 'nosuch'")
    _fails(capsys, ["crappify", "sample:nosuch[0:2]", tmp_path / "c.tif", "--scale", "2"],
           "unknown sample 'nosuch'", "cremi")
    assert not (tmp_path / "c.tif").exists()


@pytest.mark.parametrize("spec", ["sample:cremi[5]", "sample:cremi[a:b]", "sample:cremi[1:2",
                                  "sample:cremi[0:4:2]"])
def test_malformed_sample_range_says_the_form(capsys, spec):
    _fails(capsys, ["evaluate", spec, spec], spec, "expected sample:KEY or sample:KEY[START:STOP]")


def test_empty_sample_range_is_refused(tmp_path, tiny_sample, capsys):
    _fails(capsys, ["crappify", "sample:tinyem[4:2]", tmp_path / "c.tif", "--scale", "2"],
           "selects no planes", "6 planes")
    assert not (tmp_path / "c.tif").exists()


@pytest.mark.parametrize("option,value", [("--train-planes", "a-b"), ("--valid-planes", "3-1"),
                                          ("--train-planes", "0-2-4"), ("--valid-planes", "1,")])
def test_malformed_plane_list_says_the_form(tmp_path, capsys, option, value):
    _fails(capsys, ["train", "--hr", tmp_path / "hr.tif", "--scale", "2",
                    "--out", tmp_path / "m", option, value],
           option, repr(value), "e.g. 0-13,15-17 or 18,19")
    assert cli.parse_planes("0-2, 5,7-8") == [0, 1, 2, 5, 7, 8]


def test_bench_option_needs_key_value(capsys):
    _fails(capsys, ["bench", "seams", "-o", "foo"], "'foo'", "expected KEY=VALUE")
    _fails(capsys, ["bench", "seams", "-o", "=1"], "expected KEY=VALUE")


# ------------------------------------------------------------------ 6. bench option keys


def test_bench_unknown_option_lists_valid_keys(tmp_path, capsys):
    _fails(capsys, ["bench", "seams", "-o", "bogus=1", "--json", tmp_path / "b.json"],
           "unknown option bogus", "bench seams", "valid keys:", "encoders", "step")
    _fails(capsys, ["bench", "throughput", "-o", "tile=64", "-o", "nope=1", "-o", "nah=2"],
           "unknown options nope, nah", "tile")
    assert not (tmp_path / "b.json").exists()


# ------------------------------------------------------------------ 7. OS errors, folder targets


def test_evaluate_json_folder_is_refused_before_computing(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    # the inputs do not even exist: the target is checked first
    _fails(capsys, ["evaluate", tmp_path / "no.tif", tmp_path / "no.tif", "--json", folder],
           "--json", "is a folder")
    gt = (np.random.default_rng(0).random((2, 32, 32)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    _fails(capsys, ["evaluate", tmp_path / "gt.tif", tmp_path / "gt.tif", "--json", folder],
           "--json", "is a folder")
    assert list(folder.iterdir()) == []


def test_segment_csv_folder_is_refused_before_computing(tmp_path, capsys, seg_model_dir, img):
    folder = tmp_path / "table"
    folder.mkdir()
    _fails(capsys, ["segment", tmp_path / "nomodel", tmp_path / "no.tif", tmp_path / "o.tif",
                    "--csv", folder, "--overwrite"], "--csv", "is a folder")
    _fails(capsys, ["segment", seg_model_dir, img, tmp_path / "o.tif", "--csv", folder,
                    "--overwrite", "--device", "cpu"], "--csv", "is a folder")
    assert not (tmp_path / "o.tif").exists() and list(folder.iterdir()) == []


def test_tiff_output_that_is_a_folder_is_refused(tmp_path, capsys, seg_model_dir, img):
    (tmp_path / "dir.tif").mkdir()
    _fails(capsys, ["restore", tmp_path / "nomodel", img, tmp_path / "dir.tif", "--overwrite"],
           "dir.tif is a folder")
    _fails(capsys, ["segment", seg_model_dir, img, tmp_path / "dir.tif", "--overwrite"],
           "dir.tif is a folder")


def test_other_os_errors_are_one_line(monkeypatch, capsys):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/somewhere/models")

    monkeypatch.setattr(cli, "cmd_models", denied)
    _fails(capsys, ["models"], "decrappify models: error: /somewhere/models: Permission denied")


# ------------------------------------------------------------------ 8. pydantic validation


@pytest.mark.parametrize("argv,needle", [
    (["restore", "m", "in.tif", "out.tif", "--tile", "50"], "--tile: tile must be a multiple of 32"),
    (["restore", "m", "in.tif", "out.tif", "--halo", "-3"], "--halo: halo must be in 0..4096 pixels"),
    (["crappify", "in.tif", "out.tif", "--scale", "2", "--blur", "-1"], "--blur: must be finite"),
])
def test_validation_errors_are_one_line_naming_the_option(tmp_path, capsys, argv, needle):
    line = _fails(capsys, [tmp_path / a if a.endswith(".tif") else a for a in argv], needle)
    assert "validation error" not in line and "For further information" not in line
    assert not (tmp_path / "out.tif").exists()


def test_error_message_formats_non_value_errors():
    from pydantic import BaseModel, Field, ValidationError

    class Opts(BaseModel):
        batch_size: int = Field(ge=1)
        other: int = 0

    with pytest.raises(ValidationError) as info:
        Opts(batch_size=0, other="x")
    msg = cli.error_message(info.value, {"batch": "--batch"})
    assert "\n" not in msg
    assert msg.startswith("--batch: Input should be greater than or equal to 1 (got 0); other: ")


# ------------------------------------------------------------------ 9. duplicate segment outputs


@pytest.mark.parametrize("extra", [["--semantic", "dup.tif"], ["--csv", "dup.tif"],
                                   ["--probabilities", "sub/../dup.tif"]])
def test_segment_refuses_the_same_path_twice(tmp_path, capsys, seg_model_dir, img, extra,
                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fails(capsys, ["segment", seg_model_dir, img, "dup.tif", *extra, "--device", "cpu"],
           "OUT and " + extra[0], "same path", "dup.tif")
    assert not (tmp_path / "dup.tif").exists()
    _fails(capsys, ["segment", seg_model_dir, img, "o.tif", "--semantic", "s.tif",
                    "--probabilities", str(tmp_path / "s.tif")],
           "--semantic and --probabilities are the same path")
    assert list(tmp_path.glob("*.tif")) == [img]


# ------------------------------------------------------------------ 10. demo


def _fake_demo(monkeypatch, out):
    from napari_decrappify import demo

    row = {"psnr": 30.0, "ssim": 0.9, "n_planes": 5}
    metrics = {k: {"bicubic": row, "restored": row} for k in ("held_out", "all_planes")}
    metrics["timings_s"] = {}

    def run_demo(path, model_name):
        out.mkdir(parents=True, exist_ok=True)
        z = np.zeros((1, 4, 4), np.float32)
        return demo.DemoResult(out=out, lr=z, bicubic=z, restored=z, hr=z, geometry={},
                               metrics=metrics, model=model_name)

    monkeypatch.setattr(demo, "run_demo", run_demo)


def test_demo_no_view_lists_only_what_it_wrote(tmp_path, monkeypatch, capsys):
    out = tmp_path / "d"
    _fake_demo(monkeypatch, out)
    assert cli.main(["demo", "--out", str(out), "--no-view"]) == 0
    wrote = [line for line in capsys.readouterr().out.splitlines() if "[demo] wrote" in line]
    assert len(wrote) == 1
    assert "metrics.json" in wrote[0] and "screenshot" not in wrote[0]
    assert json.loads((out / "metrics.json").read_text())["timings_s"]["demo_wall_s"] >= 0


def test_demo_refuses_a_segmentation_model_before_writing(tmp_path, capsys, seg_model_dir):
    out = tmp_path / "d"
    _fails(capsys, ["demo", "--model", seg_model_dir, "--out", out, "--no-view"],
           "segmentation model", "needs a restoration model")
    assert not out.exists()


def test_demo_unknown_model_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "d"
    _fails(capsys, ["demo", "--model", tmp_path / "nosuch", "--out", out, "--no-view"], "nosuch")
    assert not out.exists()


# ------------------------------------------------------------------ output paths checked first


def test_evaluate_json_never_replaces_another_file_and_writes_standard_json(tmp_path, capsys):
    gt = (np.random.default_rng(0).random((2, 32, 32)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    precious = tmp_path / "precious.tif"
    tifffile.imwrite(precious, gt)
    before = precious.read_bytes()
    _fails(capsys, ["evaluate", tmp_path / "gt.tif", tmp_path / "gt.tif", "--json", precious],
           "--json", "must end in .json")
    assert precious.read_bytes() == before
    scores = tmp_path / "scores.json"
    # identical images: an infinite PSNR, written as null (JSON has no Infinity)
    assert cli.main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "gt.tif"),
                     "--json", str(scores)]) == 0
    text = scores.read_text()
    assert "Infinity" not in text and json.loads(text)["psnr"] is None
    capsys.readouterr()
    _fails(capsys, ["evaluate", tmp_path / "gt.tif", tmp_path / "gt.tif", "--json", scores],
           "exists", "--overwrite")
    assert cli.main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "gt.tif"),
                     "--json", str(scores), "--overwrite"]) == 0


@pytest.mark.parametrize("target", ["file.tif", "a-file", "other-folder", "model"])
def test_train_checks_its_output_before_training(tmp_path, capsys, target):
    hr = tmp_path / "hr.tif"
    tifffile.imwrite(hr, np.zeros((2, 64, 64), np.uint8))
    (tmp_path / "a-file").write_text("keep me")
    (tmp_path / "other-folder").mkdir()
    (tmp_path / "other-folder" / "notes.txt").write_text("keep me")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{}")
    expected = {"file.tif": "a model is a folder", "a-file": "is a file",
                "other-folder": "not a model folder", "model": "--overwrite"}[target]
    # the HR is all zeros: training would fail, so a refusal proves the check came first
    _fails(capsys, ["train", "--hr", hr, "--scale", "2", "--out", tmp_path / target,
                    "--encoder", "tiny", "--epochs", "1", "--iters", "1", "--quiet"],
           "--out", expected)
    assert (tmp_path / "a-file").read_text() == "keep me"
    assert (tmp_path / "other-folder" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "model" / "model.json").read_text() == "{}"


def test_absurd_halo_or_receptive_field_is_a_clear_error(tmp_path, capsys, tiny_model_dir, img):
    model_dir = tiny_model_dir / "tiny-2x"
    out = tmp_path / "o.tif"
    _fails(capsys, ["restore", model_dir, img, out, "--halo", "10000000", "--quiet"],
           "halo must be in 0..4096")
    assert not out.exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    meta = json.loads((broken / "model.json").read_text())
    meta["receptive_field"] = 10_000_000
    (broken / "model.json").write_text(json.dumps(meta))
    _fails(capsys, ["restore", broken, img, out, "--quiet"], "receptive_field")
    assert not out.exists()


def test_outputs_are_never_the_input_and_the_extension_decides_the_format(tmp_path, capsys,
                                                                         tiny_model_dir, img):
    before = img.read_bytes()
    model = tiny_model_dir / "tiny-2x"
    _fails(capsys, ["restore", model, img, img, "--overwrite", "--quiet"], "is the input")
    _fails(capsys, ["crappify", img, img, "--scale", "2", "--overwrite", "--quiet"], "is the input")
    assert img.read_bytes() == before
    _fails(capsys, ["crappify", img, tmp_path / "out.png", "--scale", "2", "--quiet"],
           "must end in .zarr")
    assert not (tmp_path / "out.png").exists()


def test_a_mask_is_not_restored(tmp_path, capsys, tiny_model_dir):
    mask = tmp_path / "mask.tif"
    tifffile.imwrite(mask, np.random.default_rng(0).random((64, 64)) > 0.5)
    _fails(capsys, ["restore", tiny_model_dir / "tiny-2x", mask, tmp_path / "o.tif", "--quiet"],
           "dtype bool")
    assert not (tmp_path / "o.tif").exists()


def test_a_restore_prints_no_third_party_warnings(tmp_path, tiny_model_dir, img):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "napari_decrappify", "restore",
                          str(tiny_model_dir / "tiny-2x"), str(img), str(tmp_path / "o.tif"),
                          "--device", "cpu", "--quiet"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr and "warnings.warn" not in run.stderr, run.stderr


def test_sigterm_mid_write_leaves_no_part_file(tmp_path, tiny_model_dir):
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "big.tif"
    tifffile.imwrite(src, (np.random.default_rng(0).random((60, 256, 256)) * 255).astype(np.uint8),
                     metadata={"axes": "ZYX"})
    out = tmp_path / "o.tif"
    part = tmp_path / "o.tif.part"
    run = subprocess.Popen([sys.executable, "-m", "napari_decrappify", "restore",
                            str(tiny_model_dir / "tiny-2x"), str(src), str(out), "--device", "cpu",
                            "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not part.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert part.exists(), "the write never started"
        run.send_signal(signal.SIGTERM)
        err = run.communicate(timeout=60)[1]
    finally:
        run.kill()
    assert run.returncode == 130 and "interrupted" in err, err
    assert not part.exists() and not out.exists()
