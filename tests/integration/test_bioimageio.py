"""bioimage.io packages: what `decrappify export` writes passes bioimage.io's own test, and reads
back to the very model it came from; packages this project did not write are refused."""

import io
import warnings
import zipfile

import numpy as np
import pytest
import tifffile

from napari_decrappify.bioimageio import (
    CONFIG_KEY,
    BioimageioError,
    export_bioimageio,
    input_halo,
    min_input_size,
)
from napari_decrappify.cli import main
from napari_decrappify.config import ArchConfig, NormConfig
from napari_decrappify.models import build_model, load_model

pytestmark = pytest.mark.slow


def _test_model(path):
    """bioimageio.core's own test of a package; the failed checks' messages when it fails."""
    from bioimageio.core import test_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation, inside bioimageio.core
        summary = test_model(path)
    failed = [f"{d.name}: {'; '.join(e.msg for e in d.errors)}" for d in summary.details
              if d.status != "passed"]
    return summary.status, failed


def _rdf(path):
    import yaml

    with zipfile.ZipFile(path) as zf:
        return yaml.safe_load(zf.read("rdf.yaml")), zf


def _member(path, name):
    with zipfile.ZipFile(path) as zf:
        return zf.read(name)


@pytest.fixture(scope="module")
def em4x_zip(tmp_path_factory, cremi):
    """The bundled em-4x exported with the CLI, as a user would."""
    out = tmp_path_factory.mktemp("bioimageio") / "em-4x.zip"
    assert main(["export", "em-4x", str(out), "--format", "bioimageio",
                 "--author", "Ada Lovelace", "--author", "Alan Turing"]) == 0
    return out


def test_em4x_package_passes_bioimageio_core_test_model(em4x_zip):
    status, failed = _test_model(em4x_zip)
    assert status == "passed", failed


def test_em4x_package_describes_the_model(em4x_zip):
    model = load_model("em-4x")
    rdf, _ = _rdf(em4x_zip)
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert [a["name"] for a in rdf["authors"]] == ["Ada Lovelace", "Alan Turing"]
    assert rdf["cite"][0]["doi"] == "10.1038/s41592-021-01080-z"
    assert rdf["license"] == "CC-BY-4.0"
    assert list(rdf["weights"]) == ["torchscript"]
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    y_in, y_out = inp["axes"][2], out["axes"][2]
    # em-4x: receptive field 169 px -> halo 176 (2 x halo a multiple of the 32 px alignment)
    assert model.receptive_field == 169 and input_halo(model) == 176
    assert y_in["size"] == {"min": min_input_size(model), "step": 32} and y_in["size"]["min"] == 384
    assert y_out["halo"] == 176 * 4 and y_out["size"] == {"tensor_id": "input", "axis_id": "y"}
    assert y_in["scale"] / y_out["scale"] == 4 and y_in["unit"] == y_out["unit"] == "nanometer"
    assert inp["pad"] == {"mode": "reflect"}
    # percentile normalisation: scale_range over the sample, then the training levels
    ids = [p["id"] for p in inp["preprocessing"] if p["id"] != "ensure_dtype"]
    assert ids == ["scale_range", "scale_linear"]
    rng = next(p["kwargs"] for p in inp["preprocessing"] if p["id"] == "scale_range")
    assert (rng["min_percentile"], rng["max_percentile"]) == (1.0, 99.8)
    lin = next(p["kwargs"] for p in inp["preprocessing"] if p["id"] == "scale_linear")
    l0, l1 = model.config.norm.input_levels
    assert lin["offset"] == pytest.approx(l0) and lin["gain"] == pytest.approx(l1 - l0)
    ours = rdf["config"][CONFIG_KEY]
    assert ours["weights_sha256"] == model.config.weights_sha256
    assert {"README.md", "cover.png", ours["model_file"], ours["weights_file"]} <= \
        set(zipfile.ZipFile(em4x_zip).namelist())
    readme = _member(em4x_zip, "README.md").decode()
    assert "cannot carry" in readme and "crappifier" in readme and "10.1038/s41592-021-01080-z" in readme


def test_em4x_package_restores_a_cremi_plane_exactly_as_the_model_folder(em4x_zip, cremi, tmp_path):
    from napari_decrappify.crappify import protocol_lr, to_unit

    hr, _ = cremi
    lr = protocol_lr(to_unit(hr[22]), 4, noisy=True, seed=22)[:128, :128]
    src = tmp_path / "lr.tif"
    tifffile.imwrite(src, np.rint(lr * 255).astype(np.uint8))
    outs = {}
    for name, model in (("native", "em-4x"), ("package", str(em4x_zip))):
        outs[name] = tmp_path / f"{name}.tif"
        assert main(["restore", model, str(src), str(outs[name]), "--quiet"]) == 0
    native, package = (tifffile.imread(outs[k]) for k in ("native", "package"))
    assert native.shape == package.shape == (512, 512)
    assert float(np.abs(native.astype(np.float64) - package).max()) <= 1e-5
    assert native.std() > 1  # a real restoration, not two blank images


def test_bioimageio_core_prediction_agrees_with_the_native_engine(em4x_zip):
    """What another bioimage.io consumer computes (bioimageio.core: TorchScript, the package's
    pre/postprocessing, the halo reflect-padded) is what this library's engine computes with
    the package's halo.

    The halo and the borders must be the same: a strided U-Net is not shift-invariant, and with
    ``border="reflect"`` the engine's windows start ``halo`` pixels before the image, as
    bioimageio.core's padding does, so a 169 px halo (em-4x's receptive field) and the
    package's 176 px differ by up to 0.077 in these units (10 grey levels of 255). The
    package's output is in the input's percentile units; bioimageio.core measures the
    percentiles after padding the halo, which moves them a little (66.91..195.57 instead of
    66.96..195.56 here): hence the tolerance of 1e-3."""
    from bioimageio.core import predict
    from bioimageio.spec import load_model_description

    from napari_decrappify.config import TileConfig
    from napari_decrappify.tiling import restore_image

    x = np.load(io.BytesIO(_member(em4x_zip, "test_input.npy")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        descr = load_model_description(em4x_zip)
        theirs = np.asarray(predict(model=descr, inputs=x).members["output"].data)[0, 0]
    model = load_model("em-4x")
    ours = restore_image(model, x[0, 0], TileConfig(halo=input_halo(model), border="reflect"))
    q0, q1 = np.percentile(x, model.config.norm.input_percentiles)
    ours = (np.asarray(ours.data, dtype=np.float64) - q0) / (q1 - q0)  # -> the package's units
    assert theirs.shape == ours.shape == (4 * x.shape[-2], 4 * x.shape[-1])
    assert float(np.abs(theirs - ours).max()) < 1e-3
    gain, offset = np.polyfit(ours.ravel(), theirs.ravel(), 1)  # the percentiles' shift
    assert float(np.abs(theirs - (gain * ours + offset)).max()) < 5e-4


def _percentile_norm():
    return NormConfig(mode="percentile", low=0.0, high=255.0, input_levels=(0.2, 0.8))


@pytest.mark.parametrize("frames, norm", [(1, None), (3, "percentile")], ids=["1-frame-fixed",
                                                                                "3-frame-percentile"])
def test_tiny_models_pass_bioimageio_core_test_model(frames, norm, cremi, tmp_path):
    model = build_model(ArchConfig(encoder="tiny", scale=2, frames=frames), name="tiny",
                        norm=_percentile_norm() if norm else None, seed=0, measure_rf=False)
    model.config.receptive_field = 11  # -> halo 16 (half the alignment), smallest input 64
    out = export_bioimageio(model, tmp_path / "tiny.zip", authors=["Test Author"])
    status, failed = _test_model(out)
    assert status == "passed", failed
    rdf, _ = _rdf(out)
    channel = rdf["inputs"][0]["axes"][1]
    assert len(channel["channel_names"]) == frames  # frames on the channel axis
    y_in, y_out = rdf["inputs"][0]["axes"][2], rdf["outputs"][0]["axes"][2]
    assert y_in["size"]["min"] == 64 and y_out["halo"] == 32
    post = [p["id"] for p in rdf["outputs"][0]["postprocessing"] if p["id"] != "ensure_dtype"]
    pre = [p["id"] for p in rdf["inputs"][0]["preprocessing"] if p["id"] != "ensure_dtype"]
    assert pre == (["scale_range", "scale_linear"] if norm else [])  # fixed 0..1: identity
    assert post == (["scale_linear"] if norm else [])
    back = load_model(out)  # read back: the very weights, the same configuration
    assert back.frames == frames and back.path == out and back.config.norm == model.config.norm
    theirs, mine = back.net.state_dict(), model.net.state_dict()
    assert theirs.keys() == mine.keys() and all((theirs[k] == mine[k]).all() for k in mine)


def _foreign_package(path, config=None, kind="model"):
    import yaml

    rdf = {"format_version": "0.5.4", "type": kind, "name": "someone else's UNet",
           "config": config or {}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump(rdf))
        zf.writestr("weights.pt", b"\x80\x04not a pickle we would ever load")
    return path


def test_packages_not_exported_here_are_refused_with_one_line(tmp_path, capsys):
    foreign = _foreign_package(tmp_path / "unet.zip")
    with pytest.raises(BioimageioError, match="not one exported by napari-decrappify"):
        load_model(foreign)
    with pytest.raises(BioimageioError, match="bioimage.io dataset, not a model"):
        load_model(_foreign_package(tmp_path / "data.zip", kind="dataset"))
    with pytest.raises(BioimageioError, match="lacks 'decrappify-model.json'"):
        load_model(_foreign_package(tmp_path / "fake.zip", config={CONFIG_KEY: {
            "model_file": "decrappify-model.json", "weights_file": "w.safetensors"}}))
    bare = tmp_path / "bare.zip"
    with zipfile.ZipFile(bare, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(BioimageioError, match="not a bioimage.io package"):
        load_model(bare)
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(BioimageioError, match="not a zip file"):
        load_model(tmp_path / "text.zip")
    # the CLI says why in one line, and writes nothing
    lr = tmp_path / "lr.tif"
    tifffile.imwrite(lr, np.zeros((64, 64), np.uint8))
    assert main(["restore", str(foreign), str(lr), str(tmp_path / "out.tif")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not one exported by napari-decrappify" in err[0]
    assert not (tmp_path / "out.tif").exists()


def test_export_refuses_what_it_cannot_write(tmp_path, tiny_model_4x):
    with pytest.raises(ValueError, match="does not end in .zip"):
        export_bioimageio(tiny_model_4x, tmp_path / "model.tar")
    (tmp_path / "taken.zip").write_bytes(b"")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_bioimageio(tiny_model_4x, tmp_path / "taken.zip")
    with pytest.raises(ValueError, match="SPDX"):
        export_bioimageio(tiny_model_4x, tmp_path / "m.zip", license="whatever I like")
    seg = build_model(ArchConfig(encoder="tiny", scale=1, out_channels=3), kind="segmentation",
                      classes=["a", "b", "c"], measure_rf=False)
    with pytest.raises(ValueError, match="segmentation model"):
        export_bioimageio(seg, tmp_path / "seg.zip")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left
