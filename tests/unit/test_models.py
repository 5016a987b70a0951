"""Model files: safetensors + JSON, exact round trips, and clear errors for bad files."""

import json

import numpy as np
import pytest
import torch

from napari_decrappify.config import ArchConfig
from napari_decrappify.models import (
    ModelFileError,
    build_model,
    list_models,
    load_model,
    measure_receptive_field,
    resolve_model_path,
    save_model,
    state_dict_sha256,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = build_model(ArchConfig(encoder="tiny", scale=2), name="t2", seed=1)
    # perturb BN statistics so that the round trip covers buffers, not only weights
    for m in model.net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    path = save_model(model, tmp_path_factory.mktemp("m") / "t2")
    return model, path


def _plane(seed=0, size=64):
    return np.random.default_rng(seed).random((1, size, size), dtype=np.float32)


def test_round_trip_is_bit_exact(saved):
    model, path = saved
    loaded = load_model(path)
    x = _plane()
    np.testing.assert_array_equal(model.predict_plane(x), loaded.predict_plane(x))
    assert loaded.config == model.config
    assert loaded.weights_hash == model.weights_hash


def test_predict_plane_from_many_threads_matches_one_thread(saved):
    from concurrent.futures import ThreadPoolExecutor

    model = load_model(saved[1])
    planes = [_plane(seed, size=96) for seed in range(12)]
    expected = [model.predict_plane(p) for p in planes]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(model.predict_plane, planes * 3))
    for i, y in enumerate(got):
        np.testing.assert_array_equal(y, expected[i % len(planes)])


def test_files_are_json_and_safetensors_not_pickle(saved):
    _, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((path / "model.json").read_text())
    assert meta["schema_version"] == 1 and meta["arch"]["scale"] == 2
    assert meta["receptive_field"] > 0
    head = (path / "model.safetensors").read_bytes()[:2]
    assert head != b"\x80\x04"  # not a pickle protocol header


def test_fp16_weights_halve_the_file_and_stay_close(tmp_path, saved):
    model, path32 = saved
    path16 = save_model(model, tmp_path / "half", fp16=True)
    size32 = (path32 / "model.safetensors").stat().st_size
    size16 = (path16 / "model.safetensors").stat().st_size
    assert size16 < 0.6 * size32
    x = _plane()
    assert np.abs(load_model(path16).predict_plane(x) - model.predict_plane(x)).max() < 1e-2


def _copy(path, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


def test_truncated_weights_are_reported(saved, tmp_path):
    p = _copy(saved[1], tmp_path)
    w = p / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(p)


def test_tampered_weights_fail_the_checksum(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    p = _copy(saved[1], tmp_path)
    state = load_file(str(p / "model.safetensors"))
    k = next(iter(state))
    state[k] = state[k] + 1
    save_file(state, str(p / "model.safetensors"))
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(p)


@pytest.mark.parametrize("damage, match", [
    (lambda v: v * float("nan"), "hold NaN or inf"),
    (lambda v: v.half(), "is torch.float16, but model.json says the weights are float32"),
    (lambda v: v.to(torch.int32), "is torch.int32, but model.json says"),
])
def test_weights_that_cannot_be_what_the_config_says_are_refused(saved, tmp_path, damage, match):
    # written by another tool, without a checksum: NaN weights loaded and gave all-NaN images
    from safetensors.torch import load_file, save_file

    p = _copy(saved[1], tmp_path)
    state = load_file(str(p / "model.safetensors"))
    k = next(k for k, v in state.items() if v.is_floating_point())
    state[k] = damage(state[k])
    save_file(state, str(p / "model.safetensors"))
    cfg = json.loads((p / "model.json").read_text())
    cfg["weights_sha256"] = state_dict_sha256(state)  # a checksum that matches the damage
    (p / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match=match):
        load_model(p)


def test_weights_without_a_checksum_are_refused(saved, tmp_path):
    p = _copy(saved[1], tmp_path)
    cfg = json.loads((p / "model.json").read_text())
    cfg["weights_sha256"] = ""
    (p / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="no weights_sha256"):
        load_model(p)


def test_a_model_name_stays_inside_the_search_folders(saved, tmp_path, monkeypatch):
    root = tmp_path / "models"
    root.mkdir()
    _copy(saved[1], tmp_path)  # tmp_path / "copy", beside the search folder
    monkeypatch.setenv("DECRAPPIFY_MODELS", str(root))
    assert (root / "../copy/model.json").is_file()
    with pytest.raises(ModelFileError, match="no model folder"):
        resolve_model_path("../copy")


def test_unknown_schema_version(saved, tmp_path):
    p = _copy(saved[1], tmp_path)
    meta = json.loads((p / "model.json").read_text())
    meta["schema_version"] = 99
    (p / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="schema_version 99"):
        load_model(p)


def test_unknown_architecture_and_extra_keys(saved, tmp_path):
    p = _copy(saved[1], tmp_path)
    meta = json.loads((p / "model.json").read_text())
    meta["arch"]["encoder"] = "vgg99"
    (p / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="encoder"):
        load_model(p)
    meta["arch"]["encoder"] = "tiny"
    meta["surprise"] = 1
    (p / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="surprise"):
        load_model(p)


def test_tensors_that_do_not_match_the_config(saved, tmp_path):
    p = _copy(saved[1], tmp_path)
    meta = json.loads((p / "model.json").read_text())
    meta["arch"]["frames"] = 3  # first conv would need 3 input channels
    (p / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="do not match the architecture"):
        load_model(p)


def test_missing_files_and_bad_json(tmp_path):
    with pytest.raises(ModelFileError, match="no model folder"):
        load_model(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(tmp_path / "m")


def test_save_is_atomic_on_failure(saved, tmp_path, monkeypatch):
    model, _ = saved
    target = save_model(model, tmp_path / "keep")
    before = (target / "model.safetensors").read_bytes()

    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, target)
    assert (target / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]  # no temporary folder left behind


def test_save_never_replaces_a_folder_that_is_not_a_model(saved, tmp_path):
    model, _ = saved
    data = tmp_path / "experiment"
    data.mkdir()
    (data / "precious.tif").write_bytes(b"data")
    with pytest.raises(FileExistsError, match="not a model folder"):
        save_model(model, data)
    assert (data / "precious.tif").read_bytes() == b"data"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="file that is not a model folder"):
        save_model(model, tmp_path / "afile")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (save_model(model, empty) / "model.json").is_file()  # an empty folder is fine


def test_a_failed_swap_puts_the_previous_model_back(saved, tmp_path, monkeypatch):
    from pathlib import Path

    model, _ = saved
    target = save_model(model, tmp_path / "keep")
    before = (target / "model.safetensors").read_bytes()
    rename = Path.rename

    def failing_swap(self, dest):  # the old folder moves aside, then the new one cannot move in
        if Path(dest) == target and self.name.startswith(".keep.") and not self.name.endswith("old"):
            raise OSError("rename failed")
        return rename(self, dest)

    monkeypatch.setattr(Path, "rename", failing_swap)
    with pytest.raises(OSError, match="rename failed"):
        save_model(model, target)
    assert (target / "model.safetensors").read_bytes() == before
    assert load_model(target).config.name == "t2"
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


@pytest.mark.parametrize("change, match", [
    ({"alignment": 0}, "greater than or equal to 1"),
    ({"alignment": 4}, "not a multiple of the tiny encoder's stride 8"),
    ({"receptive_field": -5}, "greater than or equal to 0"),
    ({"norm": {"low": 0.0, "high": float("inf")}}, "finite"),
])
def test_impossible_model_files_are_refused(saved, tmp_path, change, match):
    _, path = saved
    bad = _copy(path, tmp_path)
    cfg = json.loads((bad / "model.json").read_text())
    cfg.update(change)
    (bad / "model.json").write_text(json.dumps(cfg).replace("Infinity", "1e999"))
    with pytest.raises(ModelFileError, match=match):
        load_model(bad)


def test_config_validation():
    with pytest.raises(ValueError, match="scale"):
        ArchConfig(scale=3.5)
    with pytest.raises(ValueError, match="scale"):
        ArchConfig(scale=16)
    with pytest.raises(ValueError, match="frames"):
        ArchConfig(frames=2)
    with pytest.raises(ValueError, match="extra"):
        ArchConfig(encoderr="tiny")


@pytest.mark.parametrize("strategy", ["lr_grid", "pre_upsample"])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_output_shapes_and_residual_start(strategy, scale):
    model = build_model(ArchConfig(encoder="tiny", scale=scale, strategy=strategy), measure_rf=False)
    x = _plane(size=32)
    y = model.predict_plane(x)
    assert y.shape == (1, 32 * scale, 32 * scale)


def test_multiframe_input_uses_centre_frame():
    model = build_model(ArchConfig(encoder="tiny", scale=2, frames=3), measure_rf=False)
    y = model.predict_plane(np.random.default_rng(0).random((3, 32, 32), dtype=np.float32))
    assert y.shape == (1, 64, 64)


@pytest.mark.parametrize("encoder,strategy", [("tiny", "lr_grid"), ("tiny", "pre_upsample"),
                                               ("resnet18s", "lr_grid")])
def test_widening_a_single_frame_model_keeps_what_it_computes(encoder, strategy):
    """inflate_frames: the centre frame gets the old weights, neighbours zeros, so the 3-frame
    model restores any window exactly as the 1-frame model restores its centre plane."""
    from napari_decrappify.models import inflate_frames

    single = build_model(ArchConfig(encoder=encoder, scale=2, strategy=strategy), name="one",
                         measure_rf=False)
    with torch.no_grad():  # non-zero biases everywhere, so a misplaced weight would show
        for p in single.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    wide = inflate_frames(single, 3)
    assert wide.frames == 3 and single.frames == 1 and wide.name == "one"
    window = np.random.default_rng(1).random((3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(wide.predict_plane(window), single.predict_plane(window[1:2]),
                               atol=1e-5)
    # the neighbours are inputs it can learn to use: their (zero) weights get gradients
    wide.net.train()(torch.from_numpy(window)[None]).mean().backward()
    first_conv = next(p for p in wide.net.parameters() if p.ndim == 4 and p.shape[1] == 3)
    assert float(first_conv[:, 0].abs().sum()) == 0 and float(first_conv.grad[:, 0].abs().sum()) > 0
    with pytest.raises(ValueError, match="already takes 3 frames"):
        inflate_frames(wide, 5)
    with pytest.raises(ValueError, match="frames"):
        inflate_frames(single, 2)


def test_receptive_field_is_local_for_tiny_encoder():
    arch = ArchConfig(encoder="tiny", scale=2)
    model = build_model(arch, measure_rf=False)
    rf = measure_receptive_field(model.net, arch)
    assert 8 <= rf < 128


def test_receptive_field_probe_grows_until_it_holds_the_field():
    """A probe smaller than the field would cut it (the old resnet34 bug): it doubles instead."""
    arch = ArchConfig(encoder="tiny", scale=2)
    model = build_model(arch, measure_rf=False)
    full = measure_receptive_field(model.net, arch, size=256)
    assert 16 < full < 128
    assert measure_receptive_field(model.net, arch, size=32, max_size=256) == full
    with pytest.warns(RuntimeWarning, match="at least 16 px"):
        assert measure_receptive_field(model.net, arch, size=32, max_size=32) == 16


def test_list_models_finds_user_models(saved, monkeypatch):
    _, path = saved
    monkeypatch.setenv("DECRAPPIFY_MODELS", str(path.parent))
    names = {m["name"] for m in list_models()}
    assert "t2" in names


def test_segmentation_models_get_a_real_receptive_field():
    model = build_model(ArchConfig(encoder="tiny", scale=1, out_channels=3), kind="segmentation")
    assert model.receptive_field > 8  # measured on logits, not on softmax outputs that sum to 1
    y = model.predict_plane(_plane(size=32))
    np.testing.assert_allclose(y.sum(axis=0), 1.0, atol=1e-5)  # the head is softmax again


def test_dead_encoder_warning_flags_a_field_below_one_encoder_stride():
    from napari_decrappify.models import dead_encoder_warning

    arch = ArchConfig(encoder="resnet18s", scale=4)
    # resnet18s (stride 16): a live em-4x measures 178 px; L1 at lr 3e-3 gave 14 px
    assert dead_encoder_warning(178, arch) is None
    message = dead_encoder_warning(14, arch)
    assert "14 px" in message and "encoder no longer contributes" in message
    assert "--lr-max" in message  # leaky decoder: the advice is the loss or learning rate
    relu = dead_encoder_warning(14, ArchConfig(encoder="resnet18s", scale=4, activation="relu"))
    assert "--activation leaky_relu" in relu
    assert dead_encoder_warning(8, ArchConfig(encoder="tiny")) is None  # tiny: stride 8


def _encoder_grad_with_decoder_biases(activation: str, bias: float) -> float:
    """Gradient reaching the encoder when every decoder conv bias is ``bias`` (very negative:
    each decoder ReLU unit is off for every input, as in a U-Net whose decoder has died)."""
    model = build_model(ArchConfig(encoder="tiny", scale=2, activation=activation),
                        measure_rf=False, seed=0)
    net = model.net.train()
    for block in list(net.unet.layers)[3:-3]:  # middle conv and decoder blocks, not the head
        for mod in block.modules():
            if isinstance(mod, torch.nn.Conv2d) and mod.bias is not None:
                torch.nn.init.constant_(mod.bias, bias)
    net(torch.rand(2, 1, 32, 32)).abs().mean().backward()
    encoder = net.unet.layers[0]
    return float(sum(p.grad.abs().sum() for p in encoder.parameters() if p.grad is not None))


def test_leaky_decoder_keeps_a_gradient_where_relu_dies():
    assert _encoder_grad_with_decoder_biases("relu", 0.0) > 0
    assert _encoder_grad_with_decoder_biases("relu", -100.0) == 0.0  # dead: nothing trains it
    assert _encoder_grad_with_decoder_biases("leaky_relu", -100.0) > 0


def test_activation_round_trips_and_old_files_mean_relu(tmp_path):
    model = build_model(ArchConfig(encoder="tiny", scale=2, activation="leaky_relu"),
                        name="leaky", measure_rf=False, seed=3)
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in model.net.modules())
    path = save_model(model, tmp_path / "leaky")
    loaded = load_model(path)
    assert loaded.config.arch.activation == "leaky_relu"
    x = _plane(size=32)
    np.testing.assert_array_equal(loaded.predict_plane(x), model.predict_plane(x))
    # a model file written before the field existed: ReLU, as it was trained
    cfg = json.loads((path / "model.json").read_text())
    del cfg["arch"]["activation"]
    (path / "model.json").write_text(json.dumps(cfg))
    assert load_model(path).config.arch.activation == "relu"
    with pytest.raises(ValueError, match="activation"):
        ArchConfig(activation="gelu")


def test_head_features_round_trip_and_old_files_mean_32(tmp_path):
    """The LR-grid head width is part of the architecture: saved, rebuilt, and 32 (the only
    width before the field) for files that do not state it."""
    model = build_model(ArchConfig(encoder="tiny", scale=4, head_features=64), name="h64",
                        measure_rf=False, seed=2)
    assert model.net.upsample is not None
    conv = next(m for m in model.net.upsample.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.in_channels == 64 and conv.out_channels == 16  # 4x: 16 sub-pixels
    path = save_model(model, tmp_path / "h64")
    x = _plane(size=32)
    np.testing.assert_array_equal(load_model(path).predict_plane(x), model.predict_plane(x))
    cfg = json.loads((path / "model.json").read_text())
    assert cfg["arch"]["head_features"] == 64
    del cfg["arch"]["head_features"]
    (path / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError):  # now read as 32 features: the tensors do not fit
        load_model(path)
    assert ArchConfig().head_features == 32
    with pytest.raises(ValueError, match="head_features"):
        ArchConfig(head_features=4)


def test_new_restorers_default_to_leaky_segmenters_keep_relu():
    from napari_decrappify.segment import SegmentConfig

    assert ArchConfig().activation == "leaky_relu"
    assert SegmentConfig().arch.activation == "relu"


def test_bundled_models_are_small_load_and_record_their_held_out_scores():
    """Every zoo model: <= 40 MB on disk, loads (weights checked against model.json), and
    carries the training command and its held-out test scores above bicubic."""
    from napari_decrappify.models import ZOO_DIR

    folders = sorted(p.parent for p in ZOO_DIR.glob("*/model.json"))
    assert {f.name for f in folders} >= {"em-4x", "em-2x", "em-denoise", "em-4x-z3"}
    for folder in folders:
        assert sum(f.stat().st_size for f in folder.iterdir()) <= 40e6, folder.name
        model = load_model(folder)
        test = model.config.metrics["test"]
        assert test["planes"] == [20, 21, 22, 23, 24] and test["noisy"] is True
        assert test["psnr"] > test["bicubic_psnr"] and test["ssim"] > test["bicubic_ssim"]
        assert model.config.training["command"].startswith("decrappify train")
        assert model.config.receptive_field > 100  # a live U-Net, not its last block alone
    z3 = load_model("em-4x-z3")
    assert z3.frames == 3 and z3.scale == 4
    assert z3.config.training["resumed_from"][-1]["widened_from_frames"] == 1


@pytest.mark.parametrize("scale", [2, 3, 4, 5, 6, 7, 8])
def test_pixel_shuffle_head_builds_at_every_scale_with_icnr_init(scale):
    """fastai's PixelShuffle_ICNR initialises in 2x2 sub-blocks whatever the scale: 3x, 5x, 7x
    models failed to build ("shape '[32, 9, 1, 1]' is invalid"). Even scales keep fastai's init
    exactly (ICNR at the full 4x scale trained worse: models.pixel_shuffle_icnr); odd scales
    start as nearest-neighbour upsampling."""
    from fastai.layers import PixelShuffle_ICNR

    from napari_decrappify.models import pixel_shuffle_icnr

    torch.manual_seed(3)
    head = pixel_shuffle_icnr(8, 1, scale, blur=True)
    x = torch.randn(1, 8, 5, 5)
    if scale % 2 == 0:  # fastai's module, weights and all (the bundled models' training)
        torch.manual_seed(3)
        ref = PixelShuffle_ICNR(8, 1, scale=scale, blur=True, act_cls=None)
        assert set(head.state_dict()) == set(ref.state_dict())
        for k, v in ref.state_dict().items():
            assert torch.equal(head.state_dict()[k], v), k
        assert torch.equal(head(x), ref(x))
        if scale == 4:  # as the docstring says: each row of a 4x4 block is one value
            y = torch.nn.Sequential(*list(head)[:2])(x).detach()[0, 0].reshape(5, 4, 5, 4)
            assert float((y - y[..., :1]).abs().max()) < 1e-5
            assert float((y[:, 1:] - y[:, :1]).abs().max()) > 0.1
    else:
        y = torch.nn.Sequential(*list(head)[:2])(x).detach()[0, 0].reshape(5, scale, 5, scale)
        assert float((y - y[:, :1, :, :1]).abs().max()) < 1e-5  # s x s blocks of one value
    build_model(ArchConfig(encoder="tiny", scale=scale), measure_rf=False)


def test_a_full_disk_while_saving_is_one_clear_error(saved, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="could not write the model to .*No space left"):
        save_model(saved[0], tmp_path / "m")
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))
