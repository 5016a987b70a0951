"""The tiled engine: geometry, exact seams, reflect borders, skip-empty, layouts, concurrency,
cancel, out-of-memory fallback and bad input. Tiny random models and small images."""

import itertools
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


def _whole(model, image):
    """Reference per plane (last two axes), in input units."""
    planes = image.reshape((-1,) + image.shape[-2:])
    out = [model.denormalize(restore_whole(model, model.normalize(p)[None]))[0] for p in planes]
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
    t = tile_axis(size, tile, halo, reflect=True)  # TileConfig(border="reflect")
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


@pytest.mark.parametrize("size,tile,halo", [(300, 64, 41), (64, 64, 0), (10, 256, 48), (257, 128, 13),
                                            (1024, 512, 105)])
def test_windows_stop_at_the_image_edges_and_sit_on_its_pooling_grid(size, tile, halo):
    t = tile_axis(size, tile, halo)  # the default: border="image"
    covered = np.zeros(size, int)
    for k in range(t.n):
        a, b = t.core_range(k)
        covered[a:b] += 1
        start, stop = t.window_range(k)
        assert start % 32 == 0 and stop % 32 == 0  # on the whole plane's pooling grid
        assert start == max(0, a - halo) // 32 * 32 and 0 <= start  # nothing before the image
        assert stop == min(-(-size // 32) * 32, -(-(b + halo) // 32) * 32)  # nor past it
        assert t.core_offset(k) == a - start
        idx = t.source_index(k)
        assert len(idx) == stop - start and idx.min() >= 0 and idx.max() < size
    np.testing.assert_array_equal(covered, 1)
    if size == 1024:  # two windows of 640 px: 80% of the computed pixels are kept
        assert [t.window_range(k) for k in range(t.n)] == [(0, 640), (384, 1024)]
        assert t.computed == 1280


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
    ref = _whole(m, img)
    assert out.shape == (280, 360) and out.dtype == np.float32
    assert np.abs(out - ref).max() <= 1e-4
    # with no halo the seams are real: the comparison above can fail
    with pytest.warns(UserWarning, match="receptive field"):
        bad = restore(m, img, TileConfig(tile=64, halo=0), axes="YX")
    assert np.abs(bad - _whole(m, img)).max() > 1e-2


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
    ref = np.mean([_dihedral(_dihedral(_whole(m, np.ascontiguousarray(_dihedral(img, k, f))),
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
    np.testing.assert_allclose(out, _whole(model1x, img), atol=1e-5)


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
    np.testing.assert_allclose(plane, _whole(model1x, img[2])[:32, :32], atol=1e-5)


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
    ref = seg.denormalize(restore_whole(seg, seg.normalize(img[1])[None]))
    np.testing.assert_allclose(p[:, 1], ref, atol=1e-5)
    assert res.scale[0] == 1.0 and res.units[0] == "pixel"


def test_multichannel_input_and_channel_mismatch():
    m2 = _model(scale=2, in_channels=2, out_channels=2)
    img = np.random.default_rng(7).random((2, 40, 50), dtype=np.float32)
    out = restore(m2, img, TileConfig(tile=64, halo=48), axes="CYX")
    assert out.shape == (2, 80, 100)
    np.testing.assert_allclose(out, m2.denormalize(restore_whole(m2, m2.normalize(img))), atol=1e-5)
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
        ref = m3.denormalize(restore_whole(m3, m3.normalize(img[window])))[0]
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
    np.testing.assert_allclose(serial, _whole(model1x, img), atol=1e-5)


def test_the_model_is_not_captured_in_the_graph(model1x):
    lazy = restore_lazy(model1x, np.zeros((64, 64), np.float32), TileConfig(tile=64, halo=48),
                        axes="YX")
    graph = dict(lazy.__dask_graph__())
    blob = pickle.dumps(graph)
    weights = sum(p.numel() * 4 for p in model1x.net.parameters())
    assert len(blob) < weights / 10
    assert b"RestorationNet" not in blob


def test_graph_name_changes_with_the_normalisation_not_only_the_weights():
    # same weights, another norm (an edited model.json): other tiles, so another dask name,
    # or a dask cache / a resumed OME-Zarr would mix the two
    import copy

    from napari_decrappify.config import NormConfig

    a = _model(scale=1)
    b = copy.deepcopy(a)
    b.config.norm = NormConfig(low=0.0, high=1000.0)
    assert a.weights_hash == b.weights_hash
    image = np.zeros((64, 64), np.float32)
    names = [restore_lazy(m, image, TileConfig(tile=64, halo=48), axes="YX").name for m in (a, a, b)]
    assert names[0] == names[1] != names[2]


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

    from napari_decrappify.engine import graph

    before = set(graph.RUNS)
    events = []
    lazy = restore_lazy(model1x, np.zeros((2, 64, 64), np.float32), TileConfig(tile=64, halo=48),
                        axes="ZYX", progress=events.append)
    plane = lazy[1]  # derived array: the original can go
    del lazy
    gc.collect()
    assert len(set(graph.RUNS) - before) == 1
    plane.compute()
    assert [e["done"] for e in events] == [1]
    del plane
    gc.collect()
    assert set(graph.RUNS) - before == set()


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
    np.testing.assert_allclose(out, _whole(model1x, img), atol=1e-5)


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
    np.testing.assert_allclose(after, _whole(m, img), atol=1e-5)


# --------------------------------------------------------------------------- review fixes


def test_multiframe_neighbours_come_from_z_when_t_has_size_1():
    """A z-stack stored as TCZYX with T = 1 gave the model three copies of one plane."""
    m3 = _model(scale=2, frames=3)
    img = np.random.default_rng(15).random((3, 36, 36), dtype=np.float32)
    cfg = TileConfig(tile=64, halo=48)
    out = restore(m3, img[None, None], cfg, axes="TCZYX")[0, 0]
    np.testing.assert_allclose(out, restore(m3, img, cfg, axes="ZYX"), atol=1e-6)
    for z, window in [(0, [1, 0, 1]), (1, [0, 1, 2]), (2, [1, 2, 1])]:
        ref = m3.denormalize(restore_whole(m3, m3.normalize(img[window])))[0]
        np.testing.assert_allclose(out[z], ref, atol=1e-5)
    copies = m3.denormalize(restore_whole(m3, m3.normalize(img[[1, 1, 1]])))[0]
    assert np.abs(out[1] - copies).max() > 1e-3  # the old result differs: the test can fail
    # a real time series still takes its neighbours from T
    tz = np.random.default_rng(16).random((3, 2, 36, 36), dtype=np.float32)
    out = restore(m3, tz, cfg, axes="TZYX")
    ref = m3.denormalize(restore_whole(m3, m3.normalize(tz[[0, 1, 2], 1])))[0]
    np.testing.assert_allclose(out[1, 1], ref, atol=1e-5)


def _device_threads():
    return sum(t.name.startswith("decrappify-device") and t.is_alive()
               for t in threading.enumerate())


def test_restoring_by_path_loads_once_and_keeps_one_worker(tmp_path, model1x):
    """Each call with a model folder loaded a new model whose registry entry, device thread
    and network copy were kept forever (6 calls: 6 threads)."""
    from napari_decrappify.engine import registry

    path = save_model(model1x, tmp_path / "m")
    img = np.random.default_rng(17).random((64, 64), dtype=np.float32)
    cfg = TileConfig(tile=64, halo=48)
    workers, models, threads = set(registry._WORKERS), set(registry._MODELS), _device_threads()
    outs = [restore(str(path), img, cfg, axes="YX") for _ in range(4)]
    outs.append(restore_lazy(path, img, cfg, axes="YX").compute())  # a Path, lazily
    assert len(set(registry._WORKERS) - workers) == 1
    assert len(set(registry._MODELS) - models) == 1
    assert _device_threads() <= threads + 1  # (threads of earlier tests may still be ending)
    for out in outs:
        np.testing.assert_array_equal(out, outs[0])
    # the folder is saved again with other weights: loaded again, the old worker stopped
    changed = _model(scale=1)
    with torch.no_grad():
        for p in changed.net.parameters():
            p.mul_(1.1)
    save_model(changed, path)
    (old_key,) = set(registry._MODELS) - models
    after = restore(str(path), img, cfg, axes="YX")
    np.testing.assert_allclose(after, _whole(changed, img), atol=1e-5)
    assert np.abs(after - outs[0]).max() > 1e-3
    assert old_key not in registry._MODELS and not any(k[0] == old_key for k in registry._WORKERS)
    assert len(set(registry._WORKERS) - workers) == 1


def test_a_tile_submitted_while_the_worker_closes_is_never_left_waiting(model1x, monkeypatch):
    """submit() checked "closed?" then queued: a close() in between put the stop signal first
    and the tile's caller waited forever. The window is widened by a slow queue."""
    import queue
    import time
    import types
    from concurrent.futures import TimeoutError as FutureTimeout

    from napari_decrappify.engine import device

    entered = threading.Event()

    class SlowQueue(queue.Queue):
        def put(self, item, *a, **k):
            if item is not None:
                entered.set()
                time.sleep(0.3)  # between submit()'s check and its put: close() runs here
            super().put(item, *a, **k)

    monkeypatch.setattr(device, "queue", types.SimpleNamespace(Queue=SlowQueue,
                                                               Empty=queue.Empty))
    worker = DeviceWorker(model1x, "cpu")
    result = {}

    def caller():
        fut = worker.submit(np.zeros((1, 64, 64), np.float32))
        try:
            result["out"] = fut.result(timeout=20)
        except FutureTimeout:
            result["out"] = "never completed"

    t = threading.Thread(target=caller)
    t.start()
    assert entered.wait(10)
    worker.close()
    t.join()
    assert getattr(result["out"], "shape", result["out"]) == (1, 64, 64)
    with pytest.raises(RuntimeError, match="device worker was closed"):
        worker.submit(np.zeros((1, 64, 64), np.float32))
    worker._thread.join(20)
    assert not worker._thread.is_alive()


def test_a_tile_of_another_shape_queued_before_close_still_runs(model1x):
    """Tiles of another shape than the batch went back to the end of the queue, behind the
    stop signal, and failed although they were queued before close()."""
    worker = DeviceWorker(model1x, "cpu", batch_size=4)
    gate = threading.Event()
    real = worker._forward

    def held(x):
        gate.wait(20)
        return real(x)

    worker._forward = held
    first = worker.submit(np.zeros((1, 64, 64), np.float32))  # the worker blocks on this one
    a = worker.submit(np.zeros((1, 64, 64), np.float32))
    b = worker.submit(np.zeros((1, 96, 96), np.float32))
    worker.close()
    gate.set()
    assert first.result(20).shape == a.result(20).shape == (1, 64, 64)
    assert b.result(20).shape == (1, 96, 96)


def test_non_finite_input_is_refused_naming_where():
    """One NaN pixel gave a silent NaN square (every tile whose window reaches it)."""
    seg = _model(scale=1, out_channels=2, kind="segmentation")
    m = _model(scale=1)
    img = np.random.default_rng(18).random((2, 64, 96), dtype=np.float32)
    img[1, 10, 70] = np.nan
    cfg = TileConfig(tile=64, halo=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # halo below the receptive field: fine here
        for model in (m, seg):
            # both tiles of plane 1 read it (the halo of the first reaches X=70)
            with pytest.raises(ValueError, match=r"NaN or inf values: nan at Z=1, Y=10, X=70 "
                                                 r"\(axes ZYX\), read for the tile Z=1, Y 0-64, "
                                                 r"X (0-64|64-96).*nan_to_num"):
                restore(model, da.from_array(img, chunks=(1, 32, 32)), cfg, axes="ZYX")
        lazy = restore_lazy(m, img, cfg, axes="ZYX")
        assert np.isfinite(lazy[0].compute()).all()  # tiles that do not read it still work
        inf = img.copy()
        inf[1, 10, 70] = 0
        inf[0, 40, 5] = -np.inf
        with pytest.raises(ValueError, match="-inf at Z=0, Y=40, X=5"):
            restore(m, inf, cfg, axes="ZYX")
        # a multi-frame model reads the neighbouring plane: the message names that plane
        m3 = _model(scale=1, frames=3)
        with pytest.raises(ValueError, match=r"nan at Z=1, Y=10, X=70 .*tile Z=0,"):
            restore_lazy(m3, img, cfg, axes="ZYX")[0].compute()


def test_graph_building_looks_chunks_up_once_per_plan(model1x, monkeypatch):
    """The chunk boundaries were recomputed (cumsum over all chunks) for every tile: building
    the graph was quadratic in the number of planes (4000 planes: 2 s)."""
    from napari_decrappify.engine import graph

    calls = []
    real = np.cumsum
    monkeypatch.setattr(graph.np, "cumsum", lambda *a, **k: calls.append(1) or real(*a, **k))

    def cumsums(planes):
        calls.clear()
        x = da.zeros((planes, 64, 64), chunks=(1, 64, 64), dtype=np.float32)
        restore_lazy(model1x, x, TileConfig(tile=64, halo=48), axes="ZYX")
        return len(calls)

    assert cumsums(200) == cumsums(50)  # not per tile
    monkeypatch.undo()
    # and the lookups are right: irregular chunks, reflected windows, frames near the ends
    img = np.random.default_rng(19).random((5, 70, 90), dtype=np.float32)
    x = da.from_array(img, chunks=((2, 1, 2), (30, 40), (17, 50, 23)))
    m3 = _model(scale=1, frames=3)
    m3.config.receptive_field = 16  # exactness is not the point here: small tiles, many chunks
    plan = graph.build(m3, x, TileConfig(tile=32, halo=16), "ZYX", None, None).plan
    for z, ky, kx in itertools.product(range(5), range(plan.ty.n), range(plan.tx.n)):
        box = plan.box({0: z}, ky, kx)
        ranges = plan.chunk_ranges(box)
        for i, sel in enumerate(box):
            edges = np.cumsum((0,) + plan.in_chunks[i])
            want = {int(np.searchsorted(edges, v, side="right")) - 1 for v in np.atleast_1d(sel)}
            assert set(ranges[i]) == want  # exactly the chunks holding the indices read
    out = restore(m3, x, TileConfig(tile=32, halo=16), axes="ZYX")
    np.testing.assert_allclose(out, restore(m3, img, TileConfig(tile=32, halo=16), axes="ZYX"),
                               atol=1e-6)


def test_restoring_a_store_into_itself_is_refused_and_the_input_kept(tmp_path, model1x):
    """``write_ome_zarr(path, restore_image(model, path), overwrite=True)`` (``decrappify
    restore a.zarr a.zarr --overwrite``) deleted the input before its chunks were read and
    wrote a blank image marked complete."""
    from napari_decrappify.io import open_image, write_ome_zarr

    img = np.random.default_rng(20).random((2, 64, 64), dtype=np.float32)
    src = write_ome_zarr(tmp_path / "in.ome.zarr", img, axes="ZYX")
    result = restore_image(model1x, src, TileConfig(tile=64, halo=48))
    with pytest.raises(ValueError, match="is the input being read"):
        write_ome_zarr(src, result, overwrite=True)
    np.testing.assert_array_equal(open_image(src).data.compute(), img)
    out = write_ome_zarr(tmp_path / "out.ome.zarr", result)
    np.testing.assert_allclose(open_image(out).data.compute(), _whole(model1x, img), atol=1e-5)
