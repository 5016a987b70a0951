"""Metrics agree with their definitions and with scikit-image; bad input is refused."""

import numpy as np
import pytest

from napari_decrappify.io import downscale_geometry, upscale_geometry
from napari_decrappify.metrics import bicubic_upsample, evaluate, psnr, ssim, unit_range


def test_psnr_of_known_error():
    gt = np.zeros((32, 32))
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-9)
    assert psnr(gt + 0.01, gt) == pytest.approx(40.0, abs=1e-9)


def test_ssim_identity_and_noise(rng):
    gt = rng.random((64, 64))
    assert ssim(gt, gt) == pytest.approx(1.0)
    assert ssim(np.clip(gt + rng.normal(0, 0.2, gt.shape), 0, 1), gt) < 0.9


def test_evaluate_skips_blank_planes_and_averages(rng):
    gt = rng.random((3, 32, 32)).astype(np.float32)
    gt[1] = 0  # a blank plane, like CREMI z = 14
    pred = gt + 0.1
    res = evaluate(pred, gt)
    assert res["n_planes"] == 2 and [p["plane"] for p in res["planes"]] == [0, 2]
    # pred is clipped to [0, 1] before scoring, so the error is at most 0.1
    assert res["psnr"] >= 20.0


def test_evaluate_refuses_bad_input(rng):
    with pytest.raises(ValueError, match="differs"):
        evaluate(np.zeros((4, 4)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.full((4, 4), np.nan), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="blank"):
        evaluate(np.zeros((8, 8)), np.zeros((8, 8)))


def test_unit_range():
    assert unit_range(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    a = np.linspace(0, 1000, 1001).astype(np.uint16)
    u = unit_range(a)
    assert u.min() == 0 and u.max() == 1 and u.dtype == np.float32


class _PlaneByPlane:
    """An array-like that hands out one plane at a time and fails if read whole, like a
    ground truth larger than memory would."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim

    def __getitem__(self, i):
        assert isinstance(i, int), f"read {i!r}: more than one plane"
        return self.a[i]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was read")


@pytest.fixture
def one_plane_reads(monkeypatch):
    """Lazy references streamed one plane at a time (by default, slabs of ~4M values)."""
    from napari_decrappify import metrics

    monkeypatch.setattr(metrics, "STREAM_VALUES", 1)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.int32])
def test_reference_range_of_lazy_data_plane_by_plane_matches_numpy(rng, dtype, one_plane_reads):
    """A lazy ground truth's intensity range is streamed plane by plane: percentiles exact for
    integers up to 16 bits, within (max - min) / 2**20 otherwise. (It was read whole.)"""
    import dask.array as da

    from napari_decrappify.metrics import reference_range

    if np.issubdtype(dtype, np.floating):
        a = (rng.gamma(2.0, 300.0, (6, 40, 50)) - 50).astype(dtype)
    else:
        lo = 0 if dtype == np.uint16 else -3000
        a = rng.integers(lo, 20000, (6, 40, 50)).astype(dtype)
    want = reference_range(a)
    assert want[0] == "percentile"
    np.testing.assert_allclose(want[1:], np.percentile(a, (0.1, 99.9)), rtol=1e-12)
    tol = 0.0 if dtype in (np.uint16, np.int16) else float(a.max() - a.min()) / 2**20
    for lazy in (_PlaneByPlane(a), da.from_array(a, chunks=(1, 20, 25))):
        got = reference_range(lazy)
        assert got[0] == "percentile"
        np.testing.assert_allclose(got[1:], want[1:], rtol=0, atol=tol + 1e-9)
    # float data in [0, 1] and uint8 are recognised without percentiles; empty is an error
    assert reference_range(_PlaneByPlane(rng.random((3, 4, 4)).astype(np.float32)))[0] == "unit"
    assert reference_range(_PlaneByPlane(np.zeros((3, 4, 4), np.uint8)))[0] == "uint8"
    with pytest.raises(ValueError, match="empty"):
        reference_range(_PlaneByPlane(np.zeros((0, 4, 4), np.uint16)))


def test_unit_range_values_unchanged_by_the_range_split(rng):
    """unit_range maps in float64 then casts to float32, as it did before reference_range."""
    a = rng.integers(0, 4000, (2, 16, 16)).astype(np.uint16)
    lo, hi = np.percentile(a, (0.1, 99.9))
    old = np.clip((a.astype(np.float32) - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)
    assert np.array_equal(unit_range(a), old)


def test_bicubic_matches_skimage_protocol(rng):
    from skimage.transform import resize

    lr = rng.random((2, 8, 8)).astype(np.float32)
    up = bicubic_upsample(lr, 4)
    ref = resize(lr, (2, 32, 32), order=3, mode="reflect", anti_aliasing=False)
    np.testing.assert_allclose(up, ref, atol=1e-6)


def test_geometry_lr_restored_hr_overlay():
    # HR pixels of 4 nm at origin 0; LR by 4x block mean: 16 nm pixels centred at 6 nm
    lr_scale, lr_tr = downscale_geometry((40, 4, 4), (0, 0, 0), "ZYX", 4)
    assert lr_scale == (40, 16, 16) and lr_tr == (0, 6, 6)
    up_scale, up_tr = upscale_geometry(lr_scale, lr_tr, "ZYX", 4)
    assert up_scale == (40, 4, 4) and up_tr == (0, 0, 0)
    # the LR pixel centre is the mean of the centres of the 4 HR pixels it covers
    assert lr_tr[1] == np.mean([0, 4, 8, 12])


def test_normalised_scoring_refuses_data_outside_the_unit_range(rng):
    # a restoration in input units against a uint8 ground truth scored -43.7 dB for identical
    # images: it is now an error that says how to score them
    gt = (rng.random((32, 32)) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match="normalised=False"):
        evaluate(gt.astype(np.float32), gt)
    with pytest.raises(ValueError, match=r"ground truth in \[0, 25\d\]"):
        evaluate(gt.astype(np.float32), gt.astype(np.float32))
    assert evaluate(gt.astype(np.float32), gt, normalised=False)["ssim"] == pytest.approx(1.0)
    unit = gt.astype(np.float32) / 255
    assert evaluate(unit * 1.05 - 0.02, unit)["psnr"] > 20  # a small overshoot is scored


def test_ground_truth_intensity_maps_of_a_lazy_stack_match_in_memory(rng, one_plane_reads):
    """The Restore dock's ground-truth scoring reads a lazy uint16 HR plane by plane for its
    range (it read the whole stack into memory) and scores exactly as with the array."""
    import dask.array as da

    from napari_decrappify._napari import _compare

    hr = rng.integers(100, 5000, (3, 32, 32)).astype(np.uint16)
    lr = hr.reshape(3, 16, 2, 16, 2).mean(axis=(2, 4)).astype(np.uint16)
    pred = rng.normal(2500, 800, (3, 32, 32)).astype(np.float32)
    eager = _compare.ground_truth(hr, lr, (3, 32, 32), 2).prepare()
    lazy = _compare.ground_truth(_PlaneByPlane(hr), lr, (3, 32, 32), 2).prepare()
    assert (lazy.gt_map.lo, lazy.gt_map.hi) == (eager.gt_map.lo, eager.gt_map.hi)
    assert lazy.pred_map is lazy.gt_map  # same dtype as the input: the HR's range for both
    want = _compare.score(pred, eager)
    assert _compare.score(pred, _compare.ground_truth(da.from_array(hr, chunks=(1, 32, 32)), lr,
                                                      (3, 32, 32), 2))["psnr"] == want["psnr"]
    np.testing.assert_array_equal(lazy.gt_map(hr), unit_range(hr))


class _OnePlaneReads(_PlaneByPlane):
    """Slices of at most one plane, each recorded in ``reads``. Module level: dask may copy
    the array it wraps, and a copied local class would record into a copied list."""

    reads: list = []

    def __getitem__(self, key):
        out = self.a[key]
        assert out.ndim < 3 or out.shape[0] <= 1, f"read {key!r}: more than one plane"
        if out.size:
            type(self).reads.append(key)
        return out


def test_error_map_wraps_a_lazy_ground_truth_without_reading_it(rng, one_plane_reads):
    """The Error map button read a ground truth that is lazy but not dask (a zarr or h5py
    array) whole, with np.asarray, in napari's UI thread; it now reads the planes shown."""
    import dask.array as da

    from napari_decrappify._napari import _compare

    hr = rng.integers(100, 5000, (3, 32, 32)).astype(np.uint16)
    lr = hr.reshape(3, 16, 2, 16, 2).mean(axis=(2, 4)).astype(np.uint16)
    pred = rng.normal(2500, 800, (3, 32, 32)).astype(np.float32)
    gt = _compare.ground_truth(_OnePlaneReads(hr), lr, (3, 32, 32), 2).prepare()
    _OnePlaneReads.reads.clear()
    err = _compare.error_map(pred, gt)
    assert isinstance(err, da.Array) and not _OnePlaneReads.reads
    np.testing.assert_allclose(err[1].compute(), np.abs(gt.pred_map(pred[1]) - gt.gt_map(hr[1])),
                               rtol=1e-6)
    assert len(_OnePlaneReads.reads) == 1


class _ChunkedReads:
    """A zarr-like 2-D array (``chunks`` of ints) that records the rows of every read."""

    def __init__(self, a, chunks):
        self.a, self.shape, self.dtype, self.ndim, self.chunks = a, a.shape, a.dtype, a.ndim, chunks
        self.reads = []

    def __getitem__(self, key):
        k = key if isinstance(key, slice) else slice(key, key + 1)
        self.reads.append(range(*k.indices(self.shape[0])))
        return self.a[key]


def test_a_lazy_2d_reference_is_read_in_chunk_aligned_slabs(rng, monkeypatch):
    """A 2-D lazy ground truth was read one row at a time: one dask computation, and one
    decompression of every chunk it crosses, per row (9 s for a 1024 x 1024 float zarr)."""
    from napari_decrappify import metrics

    a = rng.normal(100, 20, (64, 64)).astype(np.float32)
    lazy = _ChunkedReads(a, (4, 64))
    got = metrics.reference_range(lazy)
    assert len(lazy.reads) == 2  # min/max pass and histogram pass, each one read
    np.testing.assert_allclose(got[1:], np.percentile(a, (0.1, 99.9)), atol=float(np.ptp(a)) / 2**20)
    monkeypatch.setattr(metrics, "STREAM_VALUES", 300)  # 4.7 rows: rounded to the 4-row chunks
    lazy.reads.clear()
    assert metrics.reference_range(lazy) == got
    assert all(len(r) == 4 and r.start % 4 == 0 for r in lazy.reads) and len(lazy.reads) == 32
    # a chunk far larger than the budget is not read whole: memory first
    monkeypatch.setattr(metrics, "STREAM_VALUES", 32)  # a chunk is 8x that
    lazy.reads.clear()
    assert metrics.reference_range(lazy) == got
    assert {len(r) for r in lazy.reads} == {1}


def test_reference_range_of_constant_and_non_finite_data(rng):
    """A constant lazy float or uint32 image got a range 1.0 wide (a made-up bin width); NaN or
    inf gave numpy (nan, nan) and, lazily, a bincount error that did not name the problem."""
    import dask.array as da

    from napari_decrappify.metrics import reference_range

    for a in (np.full((3, 8, 8), 5.0, np.float32), np.full((3, 8, 8), 7, np.uint32)):
        v = float(a.flat[0])
        assert reference_range(a) == reference_range(da.from_array(a)) == ("percentile", v, v)
    for bad in (np.nan, np.inf):
        a = rng.normal(100, 20, (3, 8, 8)).astype(np.float32)
        a[1, 2, 3] = bad
        for ref in (a, da.from_array(a, chunks=(1, 8, 8))):
            with pytest.raises(ValueError, match="NaN or inf"):
                reference_range(ref)


def test_apply_range_keeps_the_precision_of_offset_data():
    """float64 / int32 data far from zero was cast to float32 before the offset was taken away:
    1e8 + k mapped to three levels instead of a ramp."""
    from napari_decrappify.metrics import apply_range

    ramp = np.arange(16) / 15
    for a in (1e8 + np.arange(16, dtype=np.float64), (20_000_000 + np.arange(16)).astype(np.int32)):
        out = apply_range(a, "percentile", float(a[0]), float(a[-1]))
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ramp, atol=1e-6)


def test_a_large_plane_is_scored_tile_by_tile_like_a_whole_plane(monkeypatch):
    """A 100 000^2 plane read whole for scoring took 13 GiB: planes over 4 tiles are scored
    tile by tile (dask input read by regions), with the whole plane's figures."""
    import dask.array as da

    import napari_decrappify.metrics as metrics

    rng = np.random.default_rng(0)
    gt = (rng.random((2, 90, 70)) * 255).astype(np.uint8)
    pred = np.clip(gt + rng.normal(0, 20, gt.shape), 0, 255).astype(np.float32)
    whole = metrics.evaluate(pred, gt, normalised=False)
    monkeypatch.setattr(metrics, "SCORE_TILE", 16)
    tiled = metrics.evaluate(da.from_array(pred, chunks=(1, 33, 29)),
                             da.from_array(gt, chunks=(1, 33, 29)), normalised=False)
    for a, b in zip(whole["planes"], tiled["planes"], strict=True):
        for key in ("psnr", "ssim", "nrmse"):
            assert abs(a[key] - b[key]) < 1e-9, key
    bad = pred.copy()
    bad[1, 50, 50] = np.nan
    with pytest.raises(ValueError, match="prediction contains NaN"):
        metrics.evaluate(da.from_array(bad), da.from_array(gt), normalised=False)
