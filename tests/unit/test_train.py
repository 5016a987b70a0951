"""Training engine: losses on known inputs, progress events, cancel, budget, checkpoints."""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_decrappify.config import ArchConfig, TrainConfig
from napari_decrappify.models import build_model, load_model
from napari_decrappify.samples import synthetic_em
from napari_decrappify.train import (
    FeatureLoss,
    MSSSIML1Loss,
    batch_psnr,
    gram_matrix,
    make_loss,
    train,
    training_precision,
)


@pytest.fixture(scope="module")
def hr():
    return synthetic_em((6, 128, 128), seed=1)


def tiny_config(**kw):
    base = dict(scale=2, arch=ArchConfig(encoder="tiny"), patch_size=32, batch_size=4, epochs=3,
                iterations_per_epoch=6)
    base.update(kw)
    return TrainConfig(**base)


def test_l1_mse_and_msssim_losses_on_known_inputs():
    x = torch.rand(2, 1, 64, 64)
    assert make_loss(tiny_config())(x, x).item() == 0
    assert make_loss(tiny_config())(x, x + 0.1).item() == pytest.approx(0.1, abs=1e-6)
    mse = make_loss(tiny_config(loss="mse"))
    assert mse(x, x + 0.1).item() == pytest.approx(0.01, abs=1e-6)
    y = 0.8 * x  # inside [0, 1], where batch_psnr does not clip
    assert mse(y, y + 0.1).item() == pytest.approx(10 ** (-batch_psnr(y + 0.1, y).item() / 10),
                                                   rel=1e-3)  # the error PSNR measures
    ms = MSSSIML1Loss()
    assert ms(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert ms(x, torch.rand(2, 1, 64, 64)).item() > 0.3
    big = torch.rand(1, 1, 200, 200)
    assert ms(big, big).item() == pytest.approx(0.0, abs=1e-5)  # 5-scale branch


def test_msssim_loss_is_computed_in_fp32_inside_a_bf16_autocast():
    """CPU bf16 training autocasts the loss: MS-SSIM's filters must not run in bf16 (it
    gave 0.196 for 0.054 on this input, and NaN losses in training)."""
    torch.manual_seed(0)
    target = torch.rand(2, 1, 256, 256)
    pred = (target + 0.1 * torch.randn_like(target)).requires_grad_()
    loss = MSSSIML1Loss()
    fp32 = loss(pred, target).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(pred, target)
    assert mixed.item() == pytest.approx(fp32, rel=1e-5)
    mixed.backward()
    assert torch.isfinite(pred.grad).all()


def test_perceptual_loss_under_bf16_autocast_keeps_its_gradient_direction(tmp_path):
    """Unlike MS-SSIM, the perceptual loss is left in bf16 on purpose (its encoder pass is 1.5x
    faster): measured on CREMI, the loss moves by 2-8% but the gradient keeps its direction
    (cosine 0.99 to fp32). Guard that it stays finite and aligned."""
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    torch.manual_seed(0)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18(weights=None).state_dict().items()}, str(path))
    loss = make_loss(tiny_config(loss="perceptual", feature_weights=str(path)))
    target = torch.rand(2, 1, 64, 64)
    noisy = target + 0.1 * torch.randn_like(target)
    grads = []
    for precision in ("fp32", "bf16"):
        pred = noisy.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            value = loss(pred, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(pred.grad).all()
        grads.append(pred.grad.flatten())
    assert F.cosine_similarity(grads[0], grads[1], dim=0).item() > 0.95


def test_batch_psnr_matches_formula():
    a = torch.zeros(1, 1, 8, 8)
    b = torch.full((1, 1, 8, 8), 0.1)
    assert batch_psnr(b, a).item() == pytest.approx(20.0, abs=1e-4)


def test_gram_matrix_and_feature_loss():
    f = torch.ones(1, 2, 3, 3)
    np.testing.assert_allclose(gram_matrix(f).numpy(), np.full((1, 2, 2), 1 / 2), rtol=1e-6)
    encoder = build_model(ArchConfig(encoder="tiny", scale=1), measure_rf=False).net.unet[0]
    loss = FeatureLoss(encoder)
    x = torch.rand(2, 1, 32, 32)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, torch.rand(2, 1, 32, 32)).item() > 0


def test_perceptual_loss_needs_local_weights_and_reads_a_file(tmp_path):
    with pytest.raises(ValueError, match="feature_weights"):
        make_loss(tiny_config(loss="perceptual"))
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18(weights=None).state_dict().items()}, str(path))
    loss = make_loss(tiny_config(loss="perceptual", feature_weights=str(path)))
    x = torch.rand(1, 1, 64, 64)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(FileNotFoundError):
        make_loss(tiny_config(loss="perceptual", feature_weights=str(tmp_path / "missing.safetensors")))


def test_tiny_training_lowers_validation_loss_and_reports_progress(hr, tmp_path):
    events = []
    result = train([hr], tiny_config(epochs=3), progress=events.append, out=tmp_path / "m",
                   checkpoint_dir=tmp_path / "ckpt")
    losses = [h["valid_loss"] for h in result.history]
    assert len(losses) == 3
    assert min(losses[1:]) < losses[0]
    kinds = {e["event"] for e in events}
    assert {"batch", "epoch", "done"} <= kinds
    batch = next(e for e in events if e["event"] == "batch")
    assert {"epoch", "batch", "loss", "eta", "total"} <= set(batch)
    epoch = next(e for e in events if e["event"] == "epoch")
    assert {"batch_psnr", "batch_ssim", "valid_loss"} <= set(epoch)
    assert result.stop_reason == "completed" and result.iterations == 18
    meta = load_model(tmp_path / "m").config
    assert meta.training["iterations"] == 18 and meta.metrics["valid_psnr"] > 0
    assert meta.training["split"]["planes_valid"] == [[5]]
    assert (tmp_path / "ckpt" / "last" / "model.safetensors").exists()
    # a checkpoint is a complete model folder: a receptive field for the tiling halo (0 gave
    # seams), its crappifier, and the run's record so far (a resumed run lists it)
    ckpt = load_model(tmp_path / "ckpt" / "last").config
    assert ckpt.receptive_field > 0 and ckpt.crappifier is not None
    assert ckpt.training["stop_reason"] == "in progress" and len(ckpt.training["history"]) == 3
    assert ckpt.training["split"] == meta.training["split"]
    # resume from the checkpoint
    again = train([hr], tiny_config(epochs=1), init_from=load_model(tmp_path / "ckpt" / "last"))
    assert again.history[0]["valid_loss"] < losses[0]
    earlier = again.model.config.training["resumed_from"][0]
    assert earlier["weights_from"].endswith("last") and earlier["iterations"] > 0


def test_a_multi_frame_run_starts_from_a_single_frame_model(hr, tmp_path):
    """init_from a 1-frame model with frames=3 widens it; the new model has its own name and
    none of the old model's scores (they were measured on other weights)."""
    first = train([hr], tiny_config(), out=tmp_path / "one", name="one").model
    first.config.metrics["test"] = {"psnr": 99.0}
    config = tiny_config(epochs=1, arch=ArchConfig(encoder="tiny", frames=3))
    result = train([hr], config, out=tmp_path / "three", name="three", init_from=first,
                   checkpoint_dir=tmp_path / "ckpt")  # checkpoints must not rewrite the record
    saved = load_model(tmp_path / "three")
    assert saved.frames == 3 and saved.name == "three"
    assert "test" not in saved.config.metrics and saved.config.metrics["valid_psnr"] > 0
    record = saved.config.training["resumed_from"][-1]
    assert record["widened_from_frames"] == 1 and record["weights_from"].endswith("one")
    # it starts from what the 1-frame model learnt: ahead of a fresh 3-frame network
    fresh = train([hr], config)
    assert result.history[0]["valid_loss"] < fresh.history[0]["valid_loss"]
    five = tiny_config(epochs=1, arch=ArchConfig(encoder="tiny", frames=5))
    with pytest.raises(ValueError, match="only 1 can be widened"):
        train([hr], five, init_from=saved)


def test_a_trained_model_records_its_tolerance_halo_and_a_fine_tune_its_own(hr, tmp_path):
    """Training measures the tolerance halo on its validation planes (without it a trained model
    restored with the slower exact halo); a fine-tune measures its own weights (its start's
    measurement is stale); a cancelled run is saved at once, unmeasured."""
    train([hr], tiny_config(epochs=1), out=tmp_path / "m")
    first = load_model(tmp_path / "m")
    m = first.config
    assert m.halo_px is not None and m.halo_measurement["weights_sha256"] == m.weights_sha256
    assert first.default_halo == m.halo_px <= m.receptive_field
    assert m.halo_measurement["images"] == [[64, 64]]  # validation plane 5, LR of 128 px
    assert m.halo_measurement["max_abs_diff"][str(m.halo_px)] <= m.halo_measurement["bound"]
    assert "validation plane" in m.halo_measurement["source"]
    measured_on = m.weights_sha256  # (a fine-tune trains the start model's own object)
    with torch.no_grad():  # other weights than measured, whether or not an epoch beats them
        next(first.net.parameters()).add_(1e-3)
    train([hr], tiny_config(epochs=1), init_from=first, out=tmp_path / "tuned")
    tuned = load_model(tmp_path / "tuned").config
    assert tuned.weights_sha256 != measured_on
    assert tuned.halo_measurement["weights_sha256"] == tuned.weights_sha256
    assert tuned.default_halo == tuned.halo_px
    cancel = threading.Event()
    cancel.set()
    train([hr], tiny_config(epochs=1), cancel=cancel, out=tmp_path / "cancelled")
    assert load_model(tmp_path / "cancelled").config.halo_px is None


def test_fine_tuning_keeps_the_models_architecture_and_refuses_another_scale(hr, tmp_path):
    """Whatever architecture the run's config names, fine-tuning trains the given model's
    network (and records that); a model of another scale is refused before any work."""
    first = train([hr], tiny_config(epochs=1)).model
    asked = tiny_config(epochs=1, arch=ArchConfig(encoder="resnet18s", activation="relu"))
    result = train([hr], asked, init_from=first, out=tmp_path / "tuned")
    saved = load_model(tmp_path / "tuned")
    assert saved.config.arch.encoder == "tiny" and saved.config.arch.activation == "leaky_relu"
    assert saved.config.training["config"]["arch"]["encoder"] == "tiny"
    assert result.history and saved.config.training["resumed_from"]
    with pytest.raises(ValueError, match="for 4x: it restores 2x"):
        train([hr], tiny_config(scale=4), init_from=saved)


def test_cancel_from_another_thread_stops_between_batches_and_keeps_weights(hr, tmp_path):
    cancel = threading.Event()
    seen = []

    def progress(e):
        seen.append(e)
        if e["event"] == "batch" and e["iteration"] == 8:  # mid-way through the second epoch
            threading.Thread(target=cancel.set).start()

    result = train([hr], tiny_config(epochs=50), progress=progress, cancel=cancel, out=tmp_path / "c")
    assert result.stop_reason == "cancelled"
    batches = [e for e in seen if e["event"] == "batch"]
    assert len(batches) <= 10  # stopped within a batch or two of the request
    assert [e["epoch"] for e in seen if e["event"] == "epoch"] == [0]
    assert load_model(tmp_path / "c").config.training["stop_reason"] == "cancelled"


def test_cancel_during_validation_stops_within_a_validation_batch(hr, tmp_path):
    """Cancel answered only after the epoch's whole validation and a second, full scoring of
    the unfinished epoch (~19 s in the Train dock): now the validation batch at hand ends it,
    and the best scored epoch is kept without scoring again."""
    cancel = threading.Event()
    seen, valid_batches = [], []
    config = tiny_config(epochs=50, batch_size=2, iterations_per_epoch=3)  # 16 validation batches

    def progress(e):
        seen.append(e)
        if e["event"] == "batch" and e["iteration"] == 6:  # the second epoch's validation is next
            cancel.set()

    def count(module, _inputs, _output):
        if cancel.is_set() and not module.training:
            valid_batches.append(1)

    from napari_decrappify import train as train_mod

    real_build = train_mod.build_model

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.net.register_forward_hook(count)
        return model

    train_mod.build_model = build
    try:
        result = train([hr], config, progress=progress, cancel=cancel, out=tmp_path / "v")
    finally:
        train_mod.build_model = real_build
    assert result.stop_reason == "cancelled"
    assert [e["epoch"] for e in seen if e["event"] == "epoch"] == [0]  # epoch 1 not scored
    assert len(valid_batches) <= 1, len(valid_batches)  # not the 16 of a whole validation
    saved = load_model(tmp_path / "v").config
    assert saved.training["best_epoch"] == 0 and "best_epoch_unfinished" not in saved.training


class _BlowsUp(torch.nn.Module):
    """L1 that, from training batch ``after`` on, is multiplied by ``factor`` (NaN: poisons the
    weights); validation (no grad) stays plain L1."""

    def __init__(self, after: int, factor: float):
        super().__init__()
        self.after, self.factor, self.batches = after, factor, 0

    def forward(self, pred, target):
        loss = torch.nn.functional.l1_loss(pred, target)
        if torch.is_grad_enabled():
            self.batches += 1
            if self.batches > self.after:
                return loss * self.factor
        return loss


@pytest.mark.parametrize("factor", [float("nan"), 1e4])
def test_a_run_that_keeps_diverging_stops_after_its_recoveries_and_keeps_its_best_weights(
        hr, tmp_path, monkeypatch, factor):
    """NaN losses are seen within a few batches, a loss blown up 10^4x at the end of its epoch.
    Each time the run goes back to its best weights at a third of the learning rate; when that
    fails MAX_RECOVERIES times it stops: the best (finite) weights are saved and the record
    says diverged and why, without spending the rest of the budget."""
    import math

    from napari_decrappify.train import MAX_RECOVERIES, NONFINITE_BATCHES

    monkeypatch.setattr("napari_decrappify.train.make_loss", lambda config: _BlowsUp(12, factor))
    seen = []
    with pytest.warns(RuntimeWarning, match=f"diverged at epoch .* after {MAX_RECOVERIES} "
                                            "recoveries.*--lr-max 3.3e-05"):
        result = train([hr], tiny_config(epochs=30, lr_max=1e-3), progress=seen.append,
                       out=tmp_path / "d")
    assert result.stop_reason == "diverged"
    recovered = [e for e in seen if e["event"] == "recovered"]
    assert [r["lr_max"] for r in recovered] == pytest.approx([1e-3 / 3, 1e-3 / 9, 1e-3 / 27])
    assert all(r["back_to_epoch"] in (0, 1) for r in recovered)
    batches = [e for e in seen if e["event"] == "batch"]
    if math.isnan(factor):  # 6 batches per epoch: stopped inside epoch 2, then each fit at once
        assert len(batches) == 12 + NONFINITE_BATCHES * (1 + MAX_RECOVERIES)
        assert [h["epoch"] for h in result.history] == [0, 1]
    else:  # the whole epoch 2, then one epoch per recovery
        assert len(batches) == 18 + 6 * MAX_RECOVERIES
        assert [h["epoch"] for h in result.history] == list(range(3 + MAX_RECOVERIES))
    saved = load_model(tmp_path / "d")
    assert saved.config.training["best_epoch"] in (0, 1)
    assert len(saved.config.training["recoveries"]) == MAX_RECOVERIES
    assert "diverged" in saved.config.training["warnings"][0]
    assert all(torch.isfinite(t).all() for t in saved.net.state_dict().values())


class _BlowsUpFor(_BlowsUp):
    """L1 blown up 10^4x for training batches ``after + 1 .. until`` only: a transient."""

    def __init__(self, after: int, until: int):
        super().__init__(after, 1e4)
        self.until = until

    def forward(self, pred, target):
        loss = torch.nn.functional.l1_loss(pred, target)
        if torch.is_grad_enabled():
            self.batches += 1
            if self.after < self.batches <= self.until:
                return loss * self.factor
        return loss


def test_a_divergence_is_recovered_from_and_the_run_goes_on(hr, tmp_path, monkeypatch):
    """The default command diverged at epoch 1 in bf16 and stopped after 75 s of a 10-minute
    budget, exit 0, with an epoch-0 model below bicubic. Now: back to the best weights, a third
    of the peak rate, and the rest of the run; no warning, the record says what happened."""
    import warnings

    monkeypatch.setattr("napari_decrappify.train.make_loss", lambda config: _BlowsUpFor(12, 18))
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train([hr], tiny_config(epochs=6, lr_max=1e-3), progress=seen.append,
                       out=tmp_path / "r")
    assert not [w for w in caught if "diverged" in str(w.message)]
    assert result.stop_reason == "completed"
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3, 4, 5]  # 3 epochs after epoch 2
    assert result.history[2]["train_loss"] > 100 > result.history[-1]["train_loss"]
    recovered = [e for e in seen if e["event"] == "recovered"]
    assert len(recovered) == 1 and recovered[0]["epoch"] == 2
    assert recovered[0]["lr_max"] == pytest.approx(1e-3 / 3)
    assert result.iterations == 36
    record = load_model(tmp_path / "r").config.training
    assert record["stop_reason"] == "completed" and record["recoveries"][0]["back_to_epoch"] in (0, 1)
    assert "warnings" not in record


def test_a_run_diverging_before_its_first_epoch_keeps_the_weights_it_started_from(
        hr, tmp_path, monkeypatch):
    start = train([hr], tiny_config(epochs=1)).model
    weights = {k: v.clone() for k, v in start.net.state_dict().items()}
    monkeypatch.setattr("napari_decrappify.train.make_loss",
                        lambda config: _BlowsUp(1, float("nan")))
    with pytest.warns(RuntimeWarning, match="kept the weights it started from"):
        result = train([hr], tiny_config(epochs=30), init_from=start, out=tmp_path / "d")
    assert result.stop_reason == "diverged" and result.history == []
    saved = load_model(tmp_path / "d").net.state_dict()
    assert all(torch.equal(saved[k], weights[k]) for k in weights)  # not the NaN ones


def test_a_fine_tune_no_epoch_of_which_beats_its_start_keeps_the_start(hr, tmp_path):
    """The start is scored on the validation planes as epoch -1: one step at a ruinous learning
    rate scores far worse, so the fine-tuned model is the start, bit for bit, and says so."""
    start = train([hr], tiny_config(epochs=1)).model
    weights = {k: v.clone() for k, v in start.net.state_dict().items()}
    result = train([hr], tiny_config(epochs=1, iterations_per_epoch=1, lr_max=50.0, pct_start=0.5),
                   init_from=start, out=tmp_path / "kept")
    saved = load_model(tmp_path / "kept")
    assert len(result.history) == 1  # the epoch was scored (NaN here) ...
    assert saved.config.training["best_epoch"] == -1  # ... and lost to the start
    metrics = saved.config.metrics  # the kept start's scores, not the lost epoch's NaN
    assert np.isfinite(metrics["valid_loss"]) and np.isfinite(metrics["valid_psnr"])
    assert all(torch.equal(saved.net.state_dict()[k], weights[k].float()) for k in weights)


def test_the_api_fine_tunes_with_the_schedule_the_cli_and_dock_use(hr):
    """``train(init_from=...)`` takes the fine-tune schedule for what the config leaves unset,
    as ``--resume`` and the dock's *start from* do; what is set explicitly is kept."""
    from napari_decrappify.config import FINE_TUNE_LOSS, FINE_TUNE_LR_MAX, FINE_TUNE_PCT_START

    tuned = TrainConfig().for_fine_tune()
    assert (tuned.lr_max, tuned.pct_start, tuned.loss) == (
        FINE_TUNE_LR_MAX, FINE_TUNE_PCT_START, FINE_TUNE_LOSS)
    mine = TrainConfig(lr_max=5e-4, loss="l1").for_fine_tune()
    assert (mine.lr_max, mine.pct_start, mine.loss) == (5e-4, FINE_TUNE_PCT_START, "l1")
    start = train([hr], tiny_config(epochs=1)).model
    assert start.config.training["config"]["lr_max"] == TrainConfig().lr_max  # from scratch
    record = train([hr], tiny_config(epochs=1), init_from=start).model.config.training["config"]
    assert (record["lr_max"], record["pct_start"], record["loss"]) == (
        FINE_TUNE_LR_MAX, FINE_TUNE_PCT_START, FINE_TUNE_LOSS)


def test_a_fine_tune_maps_new_data_as_its_start_model_does(hr, tmp_path):
    """Another intensity scale (the HR x 7 + 100, float): the fine-tune's inputs land on the
    start's input levels instead of the new data's own percentiles (which handed the start's
    weights another contrast, and left the fine-tuned em-4x below em-4x as it was)."""
    start = train([hr], tiny_config(epochs=1)).model
    scaled = hr.astype(np.float32) * 7 + 100
    tuned = train([scaled], tiny_config(epochs=1), init_from=start, out=tmp_path / "t").model
    assert tuned.config.norm.input_levels == pytest.approx(start.config.norm.input_levels,
                                                           abs=0.02)
    fresh = train([scaled], tiny_config(epochs=1)).model
    # without a start, the data's own percentiles decide (the levels move with the noise)
    own = np.percentile(scaled.ravel()[::7], (0.1, 99.9))  # percentile_norm's sample
    assert (fresh.config.norm.low, fresh.config.norm.high) == pytest.approx(tuple(own), rel=1e-5)


@pytest.mark.parametrize("asked, native, expected", [
    ("auto", True, "bf16"), ("auto", False, "fp32"), ("fp32", True, "fp32"),
    ("bf16", False, "bf16"), ("fp16", True, "bf16"),  # CPU fp16 autocast is slow: bf16
])
def test_cpu_training_precision(monkeypatch, asked, native, expected):
    monkeypatch.setattr("napari_decrappify.tiling.cpu_has_native_bf16", lambda: native)
    assert training_precision(asked, torch.device("cpu")) == expected


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from napari_decrappify.tiling import cpu_has_native_bf16

    for k, (flags, expected) in enumerate([("fpu avx2 avx512f avx512_bf16 sse", True),
                                           ("fpu avx2 amx_bf16", True),
                                           ("fpu avx2 avx512f", False)]):
        fake = tmp_path / f"cpuinfo{k}"
        fake.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_has_native_bf16(str(fake)) is expected
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_training_autocasts_bf16_in_channels_last_and_saves_plain_weights(hr, tmp_path,
                                                                               precision):
    """fastai's own MixedPrecision only autocasts CUDA: on CPU our callback must really run
    the forward in bf16 (and fp32 must stay fp32), with NHWC batches; the saved weights are
    ordinary contiguous tensors, and no autocast is left on after a cancelled run."""
    model = build_model(ArchConfig(encoder="tiny", scale=2), name="m", seed=0, measure_rf=False)
    seen = []
    first_conv = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda mod, inp, out: seen.append(
        (out.dtype, inp[0].is_contiguous(memory_format=torch.channels_last))))
    cancel = threading.Event()

    def progress(e):
        if e["event"] == "batch" and e["iteration"] == 8:
            cancel.set()

    result = train([hr], tiny_config(epochs=5, precision=precision), init_from=model,
                   out=tmp_path / "m", progress=progress, cancel=cancel)
    assert result.stop_reason == "cancelled"
    fitting = seen[:8]  # training and validation batches (later: the fp32 receptive-field probe)
    assert {d for d, _ in fitting} == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert all(nhwc for _, nhwc in fitting)
    assert not torch.is_autocast_enabled("cpu")
    saved = load_model(tmp_path / "m")
    assert saved.config.training["precision"] == precision
    assert all(p.is_contiguous() for p in saved.net.state_dict().values())
    assert all(p.is_contiguous() for p in result.model.net.parameters())


def test_wall_clock_budget(hr):
    events = []
    result = train([hr], tiny_config(epochs=None, minutes=0.05), progress=events.append)
    assert result.stop_reason == "budget"
    assert result.seconds < 0.05 * 60 + 10
    # the ETA counts down to the deadline (it was 10x the budget: n_epoch is an upper bound)
    batches = [e for e in events if e["event"] == "batch"]
    assert all(e["eta"] <= 0.05 * 60 for e in batches)
    assert batches[-1]["total"] < 2 * batches[-1]["iteration"] + 10


def test_a_minutes_budget_alone_is_a_wall_clock_run():
    # epochs defaults to 1: TrainConfig(minutes=M) used to stop after one epoch as "completed"
    assert TrainConfig(minutes=2).epochs is None
    assert TrainConfig(minutes=2, epochs=3).epochs == 3 and TrainConfig().epochs == 1
    from napari_decrappify.segment import SegmentConfig

    assert SegmentConfig(minutes=2).epochs is None


def test_a_run_stopped_in_its_first_epoch_keeps_what_it_trained(hr, tmp_path):
    """Cancel (or a budget) before the first epoch ended returned the random starting weights:
    the unfinished epoch is now scored and kept when it is the best, and the record says so."""
    from napari_decrappify.models import build_model

    cancel = threading.Event()

    def progress(e):
        if e["event"] == "batch" and e["iteration"] == 12:
            cancel.set()

    config = tiny_config(epochs=1, iterations_per_epoch=500)
    result = train([hr], config, progress=progress, cancel=cancel, out=tmp_path / "early")
    assert result.stop_reason == "cancelled" and result.history == []
    start = build_model(config.arch.model_copy(update={"scale": 2}), seed=config.seed,
                        measure_rf=False).net.state_dict()
    trained = result.model.net.state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start if "weight" in k)
    saved = load_model(tmp_path / "early").config
    assert saved.training["best_epoch_unfinished"] is True and saved.training["best_epoch"] == 0
    assert saved.metrics["valid_psnr"] > 0


def test_the_budget_estimate_leaves_batchnorm_statistics_alone():
    from types import SimpleNamespace

    from napari_decrappify.train import _epochs_for_budget

    model = build_model(ArchConfig(encoder="tiny", scale=1), measure_rf=False).net.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = (torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    learn = SimpleNamespace(model=model, dls=SimpleNamespace(train=[batch]),
                            loss_func=torch.nn.functional.l1_loss)
    _epochs_for_budget(learn, tiny_config(minutes=1, epochs=None), torch.device("cpu"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_model_whose_encoder_died_is_saved_with_a_warning(hr, tmp_path, monkeypatch):
    import napari_decrappify.train as train_module

    monkeypatch.setattr(train_module, "measure_receptive_field", lambda net, arch: 3)
    with pytest.warns(RuntimeWarning, match="encoder no longer contributes"):
        train([hr], tiny_config(epochs=1, iterations_per_epoch=2), out=tmp_path / "dead")
    model = load_model(tmp_path / "dead")
    assert model.receptive_field == 3
    assert "3 px" in model.config.training["warnings"][0]


def test_bad_training_input(hr):
    with pytest.raises(ValueError, match="no HR images"):
        train([], tiny_config())
    with pytest.raises(ValueError, match="constant"):
        train([np.zeros((4, 64, 64), np.uint16)], tiny_config())
    with pytest.raises(ValueError, match="smaller than one HR patch"):
        train([hr[:, :40, :40]], tiny_config())


def test_training_with_a_real_pair_mixed_in(hr):
    from napari_decrappify.crappify import protocol_lr

    lr = np.stack([(protocol_lr(p, 2, noisy=True, seed=i) * 255).astype(np.uint8)
                   for i, p in enumerate(hr)])
    result = train([hr], tiny_config(epochs=1), pairs=(lr, hr))
    assert result.iterations == (6 * 4 + 6 * 4 // 4) // 4  # crappified + a quarter real pairs
    assert np.isfinite(result.history[0]["valid_loss"])


def test_lr_find_suggests_a_learning_rate(hr):
    from napari_decrappify.train import find_lr

    found = find_lr([hr], tiny_config(), num_it=12)
    assert 1e-6 <= found["valley"] <= 1e-1
    assert len(found["lrs"]) == len(found["losses"]) >= 5
    assert found["lrs"] == sorted(found["lrs"])  # an increasing sweep


def test_lr_find_for_a_fine_tune_probes_the_start_weights_and_leaves_them(hr):
    """``--lr-find --resume``: the sweep starts from the start model (its first losses are a
    trained network's, well below a new one's), on a copy: the start's weights are unchanged."""
    from napari_decrappify.train import find_lr

    start = train([hr], tiny_config(epochs=4)).model
    weights = {k: v.clone() for k, v in start.net.state_dict().items()}
    tuned = find_lr([hr], tiny_config(), num_it=12, init_from=start)
    new = find_lr([hr], tiny_config(), num_it=12)
    assert tuned["losses"][0] < 0.5 * new["losses"][0]
    assert all(torch.equal(start.net.state_dict()[k], weights[k]) for k in weights)


@pytest.mark.parametrize("field, value", [("minutes", 0), ("minutes", float("inf")),
                                          ("minutes", float("nan")), ("epochs", 0),
                                          ("batch_size", 0), ("patch_size", -64),
                                          ("iterations_per_epoch", 0), ("lr_max", 0.0),
                                          ("pct_start", 1.0)])
def test_train_config_refuses_budgets_and_sizes_that_cannot_train(field, value):
    """These failed deep inside fastai (e.g. "max(): Expected reduction dim" for minutes <= 0,
    "cannot convert float NaN to integer" for inf) instead of naming the option."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        TrainConfig(**{field: value})
