"""The tiled engine: geometry, exact seams, reflect borders, skip-empty, layouts, concurrency,
cancel, out-of-memory fallback and bad input. Tiny random models and small images."""

import pickle
import threading
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import torch

from napari_decrappify.config import ArchConfig, TileConfig
from napari_decrappify.io import upscale_geometry
from napari_decrappify.models import build_model, save_model
from napari_decrappify.tiling import (
    DeviceWorker,
    RestoreCancelled,
    output_axes,
    reflect_index,
    restore,
    restore_image,
    restore_lazy,
    restore_whole,
    tile_axis,
)


def _model(**arch):
    """A tiny model built without measuring its receptive field (fast); callers set halos."""
    kind = arch.pop("kind", "restoration")
    m = build_model(ArchConfig(encoder="tiny", **arch), kind=kind, seed=0, measure_rf=False)
    m.config.receptive_field = 48
    return m


@pytest.fixture(scope="module")
def model1x():
    return _model(scale=1)


def _whole(model, image, halo):
    """Reference per plane (last two axes), in input units."""
    planes = image.reshape((-1,) + image.shape[-2:])
    out = [model.denormalize(restore_whole(model, model.normalize(p)[None], halo))[0] for p in planes]
    return np.stack(out).reshape(image.shape[:-2] + out[0].shape)


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("n", [1, 2, 3, 7, 32])
def test_reflect_index_is_numpy_reflect_padding(n):
    pad = 3 * n + 5  # larger than the image: repeated reflection
    x = np.arange(n)
    expected = np.pad(x, pad, mode="reflect")
    np.testing.assert_array_equal(reflect_index(np.arange(-pad, n + pad), n), expected)


@pytest.mark.parametrize("size,tile,halo", [(300, 64, 41), (64, 64, 0), (10, 256, 48), (257, 128, 13)])
def test_tile_axis_covers_the_image_with_aligned_windows(size, tile, halo):
    t = tile_axis(size, tile, halo)
    assert t.core % 32 == 0 and t.window % 32 == 0
    assert t.window >= t.core + 2 * halo
    covered = np.zeros(size, int)
    for k in range(t.n):
        a, b = t.core_range(k)
        covered[a:b] += 1
        assert t.window_start(k) + halo == a  # halo of context before the core
        assert (t.window_start(k) + halo) % 32 == 0  # window origin aligned in the padded image
        idx = t.source_index(k)
        assert idx.min() >= 0 and idx.max() < size
    np.testing.assert_array_equal(covered, 1)
    if size < tile:
        assert t.core == -(-size // 32) * 32  # small image: one small tile, not a huge one


def test_tile_must_be_aligned():
    with pytest.raises(ValueError, match="multiple of 32"):
        TileConfig(tile=100)
    with pytest.raises(ValueError, match="multiple of 64"):
        tile_axis(100, 96, 0, align=64)


# --------------------------------------------------------------------------- exactness


def test_tiled_equals_whole_image_when_halo_covers_receptive_field(tiny_model_4x):
    m = tiny_model_4x
    rf = m.receptive_field
    assert rf > 0
    img = np.random.default_rng(1).random((70, 90), dtype=np.float32)
    out = restore(m, img, TileConfig(tile=64, halo=rf), axes="YX")  # 2 x 2 tiles
    ref = _whole(m, img, rf)
    assert out.shape == (280, 360) and out.dtype == np.float32
    assert np.abs(out - ref).max() <= 1e-4
    # with no halo the seams are real: the comparison above can fail
    with pytest.warns(UserWarning, match="receptive field"):
        bad = restore(m, img, TileConfig(tile=64, halo=0), axes="YX")
    assert np.abs(bad - _whole(m, img, 0)).max() > 1e-2


def _dihedral(a, k, flip):
    a = np.rot90(a, k, axes=(-2, -1))
    return a[..., ::-1] if flip else a


def test_test_time_augmentation_is_the_mean_of_the_8_symmetries_and_tiles_exactly(
        tiny_model_4x, monkeypatch):
    m = tiny_model_4x
    # sizes where every window (and the padded whole image) is a multiple of the alignment, so
    # that rotating a window keeps the encoder's pooling grid on the same pixels
    rf = -(-m.receptive_field // 16) * 16
    img = np.random.default_rng(2).random((64, 128), dtype=np.float32)
    calls = []
    original = DeviceWorker._net_call
    monkeypatch.setattr(DeviceWorker, "_net_call", lambda self, x: calls.append(1) or original(self, x))
    out = restore(m, img, TileConfig(tile=64, halo=rf, tta=True), axes="YX")  # 1 x 2 tiles
    assert len(calls) == 2 * 8
    # reference: each symmetry of the whole image restored, mapped back, averaged
    ref = np.mean([_dihedral(_dihedral(_whole(m, np.ascontiguousarray(_dihedral(img, k, f)), rf),
                                       0, f), -k, False)
                   for f in (False, True) for k in range(4)], axis=0)
    assert out.shape == (256, 512)
    assert np.abs(out - ref).max() <= 1e-4
    plain = restore(m, img, TileConfig(tile=64, halo=rf), axes="YX")
    assert np.abs(out - plain).max() > 1e-3  # a random network is not symmetric: TTA changed it


def test_reflect_borders_for_an_image_smaller_than_the_halo(model1x):
    img = np.random.default_rng(2).random((20, 13), dtype=np.float32)
    out = restore(model1x, img, TileConfig(tile=64, halo=48), axes="YX")
    assert out.shape == (20, 13)
    np.testing.assert_allclose(out, _whole(model1x, img, 48), atol=1e-5)


# --------------------------------------------------------------------------- layouts


def test_output_geometry_scale_and_lazy_chunks(tiny_model_4x):
    m = tiny_model_4x
    img = da.from_array(np.random.default_rng(3).random((3, 40, 72), dtype=np.float32),
                        chunks=(1, 40, 40))
    res = restore_image(m, img, TileConfig(tile=64, halo=m.receptive_field), axes="ZYX")
    assert res.axes == "ZYX" and res.data.shape == (3, 160, 288)
    assert res.data.chunks == ((1, 1, 1), (160,), (256, 32))
    scale, translate = upscale_geometry((1.0,) * 3, (0.0,) * 3, "ZYX", 4)
    assert res.scale == scale and res.translate == translate
    assert res.translate[1] == pytest.approx(-0.375)  # 0.5 * 1 * (1/4 - 1)


def test_only_what_is_read_is_computed(model1x, monkeypatch):
    calls = []
    orig = DeviceWorker.submit
    monkeypatch.setattr(DeviceWorker, "submit",
                        lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    img = np.random.default_rng(4).random((4, 64, 64), dtype=np.float32)
    lazy = restore_lazy(model1x, img, TileConfig(tile=64, halo=48), axes="ZYX")
    assert calls == []  # nothing computed when building
    plane = lazy[2, :32, :32].compute()
    assert len(calls) == 1
    np.testing.assert_allclose(plane, _whole(model1x, img[2], 48)[:32, :32], atol=1e-5)


def test_input_dtype_output_and_skip_empty(model1x, monkeypatch):
    calls = []
    orig = DeviceWorker.submit
    monkeypatch.setattr(DeviceWorker, "submit",
                        lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    img = np.zeros((128, 128), np.uint8)
    img[:, 96:] = np.random.default_rng(5).integers(0, 255, (128, 32))
    model1x.config.norm.high = 255.0
    try:
        with pytest.warns(UserWarning, match="receptive field"):
            cfg = TileConfig(tile=32, halo=8, skip_empty=True, output_dtype="input")
            out = restore(model1x, img, cfg, axes="YX")
        skipped_calls = len(calls)
        with pytest.warns(UserWarning, match="receptive field"):
            full = restore(model1x, img, TileConfig(tile=32, halo=8, output_dtype="input"), axes="YX")
    finally:
        model1x.config.norm.high = 1.0
    assert out.dtype == np.uint8
    # constant windows (halo included) were not run and kept their value
    assert skipped_calls == 8  # of 16 tiles: those whose window (core + halo) is all zeros
    assert (out[:, :64] == 0).all()
    np.testing.assert_array_equal(out[:, 64:], full[:, 64:])  # the rest is untouched


def test_segmentation_probabilities_on_a_leading_class_axis():
    seg = _model(scale=1, out_channels=3, kind="segmentation")
    img = np.random.default_rng(6).random((2, 40, 40), dtype=np.float32)
    assert output_axes(seg, "ZYX") == "CZYX"
    res = restore_image(seg, img, TileConfig(tile=64, halo=48), axes="ZYX")
    p = np.asarray(res.data)
    assert res.axes == "CZYX" and p.shape == (3, 2, 40, 40)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)
    ref = seg.denormalize(restore_whole(seg, seg.normalize(img[1])[None], 48))
    np.testing.assert_allclose(p[:, 1], ref, atol=1e-5)
    assert res.scale[0] == 1.0 and res.units[0] == "pixel"


def test_multichannel_input_and_channel_mismatch():
    m2 = _model(scale=2, in_channels=2, out_channels=2)
    img = np.random.default_rng(7).random((2, 40, 50), dtype=np.float32)
    out = restore(m2, img, TileConfig(tile=64, halo=48), axes="CYX")
    assert out.shape == (2, 80, 100)
    np.testing.assert_allclose(out, m2.denormalize(restore_whole(m2, m2.normalize(img), 48)), atol=1e-5)
    with pytest.raises(ValueError, match="2 input channel"):
        restore_lazy(m2, img[0], axes="YX")
    with pytest.raises(ValueError, match="C axis of 3"):
        restore_lazy(m2, np.zeros((3, 32, 32), np.float32), axes="CYX")


def test_multiframe_window_along_t_reflected_at_the_ends():
    m3 = _model(scale=2, frames=3)
    img = np.random.default_rng(8).random((4, 36, 36), dtype=np.float32)
    out = restore(m3, img, TileConfig(tile=64, halo=48), axes="TYX")
    assert out.shape == (4, 72, 72)
    for t, window in [(0, [1, 0, 1]), (2, [1, 2, 3]), (3, [2, 3, 2])]:
        ref = m3.denormalize(restore_whole(m3, m3.normalize(img[window]), 48))[0]
        np.testing.assert_allclose(out[t], ref, atol=1e-5)
    with pytest.raises(ValueError, match="along T or Z"):
        restore_lazy(m3, img[0], axes="YX")


# --------------------------------------------------------------------------- concurrency


def test_many_dask_threads_give_the_serial_result(model1x):
    img = np.random.default_rng(9).random((6, 64, 96), dtype=np.float32)
    cfg = TileConfig(tile=64, halo=48)
    lazy = restore_lazy(model1x, img, cfg, axes="ZYX")
    serial = lazy.compute(scheduler="sync")
    with dask.config.set(num_workers=8):
        threaded = restore_lazy(model1x, img, cfg, axes="ZYX").compute(scheduler="threads")
    np.testing.assert_array_equal(threaded, serial)
    np.testing.assert_allclose(serial, _whole(model1x, img, 48), atol=1e-5)


def test_the_model_is_not_captured_in_the_graph(model1x):
    lazy = restore_lazy(model1x, np.zeros((64, 64), np.float32), TileConfig(tile=64, halo=48),
                        axes="YX")
    graph = dict(lazy.__dask_graph__())
    blob = pickle.dumps(graph)
    weights = sum(p.numel() * 4 for p in model1x.net.parameters())
    assert len(blob) < weights / 10
    assert b"RestorationNet" not in blob


def test_progress_events_and_cancel(model1x):
    img = np.random.default_rng(10).random((4, 64, 128), dtype=np.float32)
    events = []
    restore(model1x, img, TileConfig(tile=64, halo=48), axes="ZYX", progress=events.append)
    assert sorted(e["done"] for e in events) == list(range(1, 9))
    assert all(e["event"] == "tiles" and e["total"] == 8 for e in events)
    last = max(events, key=lambda e: e["done"])
    assert last["eta"] == 0 and last["mpix_per_s"] > 0

    cancel = threading.Event()
    seen = []

    def stop_after_two(ev):
        seen.append(ev)
        if ev["done"] >= 2:
            cancel.set()

    with dask.config.set(num_workers=1), pytest.raises(RestoreCancelled):
        restore(model1x, img, TileConfig(tile=64, halo=48), axes="ZYX", progress=stop_after_two,
                cancel=cancel)
    assert 2 <= len(seen) < 8


def test_lazy_progress_record_lives_as_long_as_its_graph(model1x):
    """A lazy result keeps reporting while anything derived from it exists, then leaves no
    record behind (napari and scripts drop lazy arrays without telling us)."""
    import gc

    from napari_decrappify import tiling

    before = set(tiling._RUNS)
    events = []
    lazy = restore_lazy(model1x, np.zeros((2, 64, 64), np.float32), TileConfig(tile=64, halo=48),
                        axes="ZYX", progress=events.append)
    plane = lazy[1]  # derived array: the original can go
    del lazy
    gc.collect()
    assert len(set(tiling._RUNS) - before) == 1
    plane.compute()
    assert [e["done"] for e in events] == [1]
    del plane
    gc.collect()
    assert set(tiling._RUNS) - before == set()


def test_out_of_memory_halves_batch_then_splits_tiles_exactly(model1x, monkeypatch):
    m = model1x
    halo, s = 48, model1x.scale
    worker = DeviceWorker(m, device="cpu", batch_size=4)
    try:
        real = worker._forward
        x = torch.from_numpy(np.random.default_rng(11).random((4, 1, 224, 224), dtype=np.float32))
        expected = torch.cat([real(x[i:i + 1]) for i in range(4)])

        def fake(t):
            if t.shape[0] > 1 or t.shape[-1] > 160:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(t)

        monkeypatch.setattr(worker, "_forward", fake)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            y = worker._forward_safe(x, (halo, 128, 128))
        messages = [str(i.message) for i in w]
        assert any("batch 4" in s for s in messages) and any("batch 2" in s for s in messages)
        assert any("split" in s for s in messages)
        assert worker.max_batch == 1 and worker.split == 1
        core = (slice(None), slice(None), slice(halo * s, (halo + 128) * s),
                slice(halo * s, (halo + 128) * s))
        assert torch.abs(y[core] - expected[core]).max() <= 1e-4

        def always(t):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        monkeypatch.setattr(worker, "_forward", always)
        with pytest.raises(torch.OutOfMemoryError, match="smaller --tile"), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            worker._forward_safe(x[:1, :, :96, :96], (16, 64, 64))
    finally:
        worker.close()


# --------------------------------------------------------------------------- inputs


def test_model_and_image_by_path(tmp_path, model1x):
    import tifffile

    path = save_model(model1x, tmp_path / "m1")
    img = np.random.default_rng(12).random((2, 40, 40), dtype=np.float32)
    tifffile.imwrite(tmp_path / "in.tif", img, metadata={"axes": "ZYX"})
    out = restore(str(path), tmp_path / "in.tif", TileConfig(tile=64, halo=48))
    np.testing.assert_allclose(out, _whole(model1x, img, 48), atol=1e-5)


def test_bad_input_is_refused_clearly(model1x):
    img = np.zeros((40, 40), np.float32)
    with pytest.raises(ValueError, match="unknown axes 'Q'"):
        restore_lazy(model1x, img, axes="QX")
    with pytest.raises(ValueError, match="name 3 dimensions"):
        restore_lazy(model1x, img, axes="ZYX")
    with pytest.raises(ValueError, match="smaller than the halo"):
        restore_lazy(model1x, img, TileConfig(tile=32, halo=48), axes="YX")
    with pytest.raises(ValueError, match="empty"):
        restore_lazy(model1x, np.zeros((0, 40), np.float32), axes="YX")
    with pytest.raises(TypeError, match="RestorationModel"):
        restore_lazy(42, img, axes="YX")
    # the default tile grows to fit a large halo instead of failing
    lazy = restore_lazy(model1x, img, TileConfig(halo=300), axes="YX")
    assert lazy.chunks == ((40,), (40,))


def test_default_tile_is_512_or_two_halos(model1x):
    from napari_decrappify.tiling import default_tile

    assert default_tile(16) == 512
    assert default_tile(178) == 512  # em-4x: 35% of each window kept, not 27% at 2 x halo
    assert default_tile(300) == 608
    img = np.zeros((1100, 40), np.float32)
    assert restore_lazy(model1x, img, axes="YX").chunks == ((512, 512, 76), (40,))
    assert restore_lazy(model1x, img, TileConfig(halo=300), axes="YX").chunks == ((608, 492), (40,))


@pytest.mark.gpu
def test_cuda_batches_in_half_precision_close_to_fp32(tiny_model_4x):
    m = tiny_model_4x
    img = np.random.default_rng(13).random((8, 64, 64), dtype=np.float32)
    ref = restore(m, img, TileConfig(tile=64, device="cpu", precision="fp32"), axes="ZYX")
    with dask.config.set(num_workers=8):
        out = restore(m, img, TileConfig(tile=64, device="cuda", precision="auto", batch_size=4),
                      axes="ZYX")
    assert np.abs(out - ref).max() < 2e-2
    fp32 = restore(m, img, TileConfig(tile=64, device="cuda", precision="fp32"), axes="ZYX")
    assert np.abs(fp32 - ref).max() < 1e-3


def test_weights_changed_in_place_are_picked_up():
    m = _model(scale=1)
    img = np.random.default_rng(14).random((64, 64), dtype=np.float32)
    cfg = TileConfig(tile=64, halo=48)
    before = restore(m, img, cfg, axes="YX")
    first_hash = m.weights_hash
    with torch.no_grad():
        for p in m.net.parameters():
            p.mul_(1.1)  # as an optimiser step would (in place)
    after = restore(m, img, cfg, axes="YX")
    assert m.weights_hash != first_hash
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, _whole(m, img, 48), atol=1e-5)
