"""Training data: blank planes and patches, split by plane, multi-frame windows, augmentation,
real pairs, DataLoaders, and writing stacks / pairs."""

import json

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_decrappify.config import CrappifyConfig, NormConfig, TrainConfig
from napari_decrappify.crappify import Crappifier, downsample, plane_rng
from napari_decrappify.data import (
    BLANK_STD,
    CrappifiedPatches,
    PairedPatches,
    PlaneStack,
    UnitSpace,
    _reflect_index,
    as_planes,
    augment,
    blank_planes,
    check_pair,
    fingerprint,
    make_dataloaders,
    make_stacks,
    percentile_norm,
    save_stack,
    split_planes,
    write_pairs,
)
from napari_decrappify.io import open_image
from napari_decrappify.samples import synthetic_em

U8 = NormConfig(low=0, high=255)
CLEAN = Crappifier.from_options(scale=2, photons=None, read_noise=0.0)  # LR = exact block mean


def labelled_planes(n=6, size=64):
    """Planes whose brightness identifies them: plane i has mean ~ 20 + 30 i (uint8)."""
    em = synthetic_em((n, size, size), seed=2).astype(np.float64)
    planes = [(em[i] - em[i].mean()) * 0.08 + 20 + 30 * i for i in range(n)]
    return np.clip(np.stack(planes), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- normalisation, planes


def test_percentile_norm():
    assert percentile_norm([np.zeros((4, 4), np.uint8)]) == U8
    im = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    norm = percentile_norm([im])
    assert norm.low == pytest.approx(10, abs=5) and norm.high == pytest.approx(9989, abs=5)
    with pytest.raises(ValueError, match="constant"):
        percentile_norm([np.full((8, 8), 3.0)])


def test_percentile_norm_refuses_images_of_different_dtypes():
    # the first image's dtype used to decide: a uint16 stack after a uint8 one was normalised
    # to a maximum of 183
    with pytest.raises(ValueError, match="different dtypes .*uint16, uint8"):
        percentile_norm([np.zeros((8, 8), np.uint8), np.arange(64, dtype=np.uint16).reshape(8, 8)])
    assert percentile_norm([np.zeros((8, 8), np.float32), np.ones((8, 8))]).high == 1.0


def test_as_planes_along_any_axis():
    stack = np.zeros((2, 3, 16, 16))
    stack[1, 2] = 1
    assert as_planes(stack).shape == (6, 16, 16) and as_planes(stack)[5].max() == 1
    swapped = as_planes(stack, axis=1)  # planes ordered by axis 1 first
    assert swapped.shape == (6, 16, 16) and swapped[5].max() == 1 and swapped[4].max() == 0
    assert as_planes(np.zeros((16, 16))).shape == (1, 16, 16)


def test_blank_planes_are_skipped():
    hr = labelled_planes()
    hr[2] = 0
    hr[4] = 77
    assert blank_planes(hr.astype(np.float32) / 255) == [2, 4]
    train, valid, info = make_stacks([hr], U8, val_fraction=0.25)
    assert info["blank"] == [[2, 4]]
    used = set(train[0].indices) | set(valid[0].indices)
    assert used == {0, 1, 3, 5}


def test_all_blank_images_are_refused():
    with pytest.raises(ValueError, match="HR stack 0 .* is constant"):
        make_stacks([np.zeros((3, 32, 32), np.uint8)], U8)


def test_one_2d_image_is_split_by_rows():
    hr = (np.random.default_rng(0).random((100, 40)) * 255).astype(np.uint8)
    train, valid, info = make_stacks([hr], U8, val_fraction=0.15, min_rows=32)
    # the bottom 20% would be 20 rows, less than one 32-row patch: the cut makes room for one
    assert info["rows_valid"] == [68, 100]
    assert train[0].planes.shape == (1, 68, 40) and valid[0].planes.shape == (1, 32, 40)
    np.testing.assert_array_equal(train[0].planes[0], hr[:68] / np.float32(255))
    with pytest.raises(ValueError, match="too small to split"):
        make_stacks([hr[:50]], U8, min_rows=32)


def test_split_by_plane_is_contiguous_and_disjoint():
    tr, va = split_planes(20, 0.15, exclude=[14])
    assert va == [17, 18, 19] and 14 not in tr and not set(tr) & set(va)
    with pytest.raises(ValueError, match="at least 2 non-blank planes"):
        split_planes(3, exclude=[0, 1])


def test_split_keeps_a_training_plane_whatever_the_fraction():
    assert split_planes(4, 0.98) == ([0], [1, 2, 3])


def test_one_sided_explicit_split_is_refused():
    # --train-planes alone used to fall back on the 15% split and train on held-out planes
    hr = labelled_planes()
    with pytest.raises(ValueError, match="needs both train_planes and valid_planes"):
        make_stacks([hr], U8, train_planes=[0, 1, 2])
    with pytest.raises(ValueError, match="valid_planes given without train_planes"):
        TrainConfig(valid_planes=[4])
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)


def test_explicit_split_checks():
    hr = labelled_planes()
    with pytest.raises(ValueError, match=r"planes \[2\] are in both"):
        make_stacks([hr], U8, train_planes=[0, 1, 2], valid_planes=[2, 3])
    with pytest.raises(ValueError, match="outside 0..5"):
        make_stacks([hr], U8, train_planes=[0, 9], valid_planes=[3])
    train, valid, _ = make_stacks([hr], U8, train_planes=[0, 1, 2], valid_planes=[4, 5])
    assert train[0].indices == [0, 1, 2] and valid[0].indices == [4, 5]


def test_validation_never_sees_training_planes():
    hr = labelled_planes(n=6)
    train, valid, _ = make_stacks([hr], U8, train_planes=[0, 1, 2, 3], valid_planes=[4, 5])
    levels = (20 + 30 * np.arange(6)) / 255

    def plane_of(patch):
        return int(np.argmin(np.abs(levels - float(patch.mean()))))

    for stacks, allowed in ((valid, {4, 5}), (train, {0, 1, 2, 3})):
        for fixed in (True, False):
            ds = CrappifiedPatches(stacks, CLEAN, patch=8, length=40, seed=1, fixed=fixed)
            seen = {plane_of(ds[i][1]) for i in range(len(ds))}
            assert seen <= allowed, (seen, allowed)
    # every validation plane is visited
    ds = CrappifiedPatches(valid, CLEAN, patch=8, length=40, seed=1, fixed=True)
    assert {plane_of(ds[i][1]) for i in range(40)} == {4, 5}


def test_fingerprint_depends_on_the_data():
    a = synthetic_em((2, 32, 32))
    b = a.copy()
    b[0, 0, 0] ^= 1
    assert fingerprint([a]) == fingerprint([a.copy()]) != fingerprint([b])
    assert fingerprint([a]) != fingerprint([a.astype(np.uint16)])


# --------------------------------------------------------------------------- patches


def test_crappified_patch_geometry_and_blank_patches_skipped():
    hr = synthetic_em((2, 96, 96), seed=4)
    hr[:, :, :48] = 0  # the left half of every plane is empty
    train, _, _ = make_stacks([hr], U8, train_planes=[0], valid_planes=[1])
    ds = CrappifiedPatches(train, CLEAN, patch=16, length=60, seed=0, fixed=True)
    for i in range(len(ds)):
        lr, target = ds[i]
        assert lr.shape == (1, 16, 16) and target.shape == (1, 32, 32)
        assert lr.dtype == target.dtype == torch.float32
        assert float(target.std()) > 2 * BLANK_STD  # never an empty patch
        # the LR is the block mean of the HR target (no noise): registered exactly
        np.testing.assert_allclose(lr[0].numpy(), downsample(target[0].numpy(), 2), atol=1e-6)


def test_noise_levels_mean_the_same_in_training_as_in_the_crappify_dock():
    """Training normalises a uint16 stack by its percentiles, but photons / read noise are on
    the dtype's range (to_unit), as in the Crappify dock and crappify.fit: the training LR's
    noise, in camera counts, is what Crappifier gives on the raw image (it was 6x smaller)."""
    rng = np.random.default_rng(0)
    hr = rng.integers(20_000, 30_000, (3, 64, 64)).astype(np.uint16)  # a sixth of the range
    norm = percentile_norm([hr])
    train, _, _ = make_stacks([hr], norm, train_planes=[0, 1], valid_planes=[2])
    noisy = Crappifier.from_options(scale=2, photons=None, read_noise=0.01)
    counts = []
    for crap in (noisy, CLEAN):
        ds = CrappifiedPatches(train, crap, patch=32, length=1, fixed=True,
                               unit_space=UnitSpace.of(norm, hr.dtype))
        counts.append(ds[0][0].numpy() * (norm.high - norm.low) + norm.low)
    assert np.std(counts[0] - counts[1]) == pytest.approx(0.01 * 65535, rel=0.05)
    # the conversion is exact both ways, and no conversion at all for uint8 data
    space = UnitSpace.of(norm, hr.dtype)
    x = rng.random((4, 4), dtype=np.float32)
    np.testing.assert_allclose(space.from_unit(space.to_unit(x)), x, atol=1e-5)
    assert UnitSpace.of(U8, np.uint8).identity


def test_float_training_data_beyond_the_unit_range_is_not_clipped():
    # float images in 0..255 (a processed TIFF) have no dtype scale: crappifying them on
    # [0, 1] would clip every pixel to 1, so their noise stays relative to the normalised range
    hr = synthetic_em((3, 64, 64), seed=2).astype(np.float32)  # 0..255 floats
    norm = percentile_norm([hr])
    space = UnitSpace.of(norm, hr.dtype)
    assert space.identity
    train, _, _ = make_stacks([hr], norm, train_planes=[0, 1], valid_planes=[2])
    lr, target = CrappifiedPatches(train, CLEAN, patch=16, length=1, fixed=True,
                                   unit_space=space)[0]
    np.testing.assert_allclose(lr[0].numpy(), downsample(target[0].numpy(), 2), atol=1e-5)
    assert UnitSpace.of(NormConfig(low=0.01, high=0.9), np.float32).unit == (0.0, 1.0)


def test_frames_of_one_sample_share_one_acquisition_setting():
    # ranges are drawn once per sample, not per frame: neighbouring frames of a live
    # acquisition have one noise level, not three
    hr = np.repeat(synthetic_em((1, 64, 64), seed=3), 4, axis=0)
    train, _, _ = make_stacks([hr], U8, train_planes=[0, 1, 2], valid_planes=[3])
    crap = Crappifier.from_options(scale=1, photons=None, read_noise=(0.001, 0.2))
    ds = CrappifiedPatches(train, crap, patch=64, frames=3, length=6, fixed=True)
    levels = []
    for i in range(len(ds)):
        lr, target = ds[i]
        noise = (lr - target).reshape(3, -1).std(dim=1).numpy()
        np.testing.assert_allclose(noise, noise.mean(), rtol=0.1)
        levels.append(noise.mean())
    assert max(levels) > 2 * min(levels)  # while samples do differ


def test_fixed_patches_repeat_and_training_patches_change_per_epoch():
    train, _, _ = make_stacks([synthetic_em((3, 64, 64))], U8, train_planes=[0, 1], valid_planes=[2])
    crap = Crappifier.from_options(scale=2, photons=100)
    fixed = CrappifiedPatches(train, crap, patch=8, length=4, seed=0, fixed=True)
    np.testing.assert_array_equal(fixed[1][0], fixed[1][0])
    ds = CrappifiedPatches(train, crap, patch=8, length=4, seed=0)
    first = ds[1][1].clone()
    np.testing.assert_array_equal(ds[1][1], first)
    ds.epoch = 1
    assert not torch.equal(ds[1][1], first)


@pytest.mark.parametrize("any_offset, fixed, phases", [
    (False, False, {(0, 0)}),  # on the LR grid: one of the 16 ways to group HR pixels at 4x
    (True, False, {(py, px) for py in range(4) for px in range(4)}),  # all of them
    (True, True, {(0, 0)}),  # validation stays on the LR grid
])
def test_training_patches_at_any_offset_use_every_lr_block_phase(monkeypatch, any_offset, fixed,
                                                                   phases):
    # each HR pixel's value says where it sits in its 4 x 4 block of the full-image LR grid
    y, x = np.mgrid[:64, :64]
    plane = (10 + 40 * (y % 4) + 10 * (x % 4)).astype(np.uint8)
    train, _, _ = make_stacks([np.stack([plane] * 3)], U8, train_planes=[0, 1], valid_planes=[2])
    monkeypatch.setattr("napari_decrappify.data.augment", lambda arrays, rng: arrays)
    clean4 = Crappifier.from_options(scale=4, photons=None, read_noise=0.0)
    ds = CrappifiedPatches(train, clean4, patch=4, length=300, seed=3, fixed=fixed,
                           any_offset=any_offset)
    seen = set()
    for i in range(len(ds)):
        lr, target = ds[i]
        corner = round(float(target[0, 0, 0]) * 255) - 10
        seen.add((corner // 40, corner % 40 // 10))
        # whatever the offset, the LR is the block mean of its own HR target
        np.testing.assert_allclose(lr[0].numpy(), downsample(target[0].numpy(), 4), atol=1e-6)
    assert seen == phases


def test_patch_larger_than_image_is_refused():
    train, _, _ = make_stacks([synthetic_em((3, 40, 40))], U8)
    with pytest.raises(ValueError, match=r"smaller than one HR patch \(64 x 64\)"):
        CrappifiedPatches(train, CLEAN, patch=32)


# --------------------------------------------------------------------------- multi-frame windows


@given(j=st.integers(-50, 50), n=st.integers(1, 12))
def test_reflect_index_stays_inside_and_mirrors(j, n):
    k = _reflect_index(j, n)
    assert 0 <= k < n
    if 0 <= j < n:
        assert k == j
    if n > 1 and -n < j < 0:
        assert k == -j


def test_window_centre_and_reflection_at_the_ends():
    planes = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 4, 4), np.float32)
    stack = PlaneStack(planes, list(range(5)))
    assert stack.window(2, 3)[:, 0, 0].tolist() == [1, 2, 3]
    assert stack.window(0, 3)[:, 0, 0].tolist() == [1, 0, 1]
    assert stack.window(4, 5)[:, 0, 0].tolist() == [2, 3, 4, 3, 2]


def test_split_windows_never_reach_into_another_split():
    """Train 0-4 (3 blank), validation 5-6, 7-9 held out: multi-frame windows reflect at
    every plane that is not their own split's, so no validation or test plane leaks in."""
    texture = (np.indices((4, 4)).sum(0) % 2 * 0.1).astype(np.float32)  # 0 at pixel (0, 0)
    planes = np.arange(10, dtype=np.float32)[:, None, None] + texture
    planes[3] = 0.5  # blank
    train, valid, info = make_stacks([planes], NormConfig(low=0.0, high=1.0),
                                     train_planes=[0, 1, 2, 3, 4], valid_planes=[5, 6])
    assert info["blank"] == [[3]]
    tr, va = train[0], valid[0]

    def centre_values(stack, i, frames):
        return stack.window(i, frames)[:, 0, 0].tolist()

    assert centre_values(tr, 1, 3) == [0, 1, 2]
    assert centre_values(tr, 2, 3) == [1, 2, 1]  # plane 3 is blank: reflected
    assert centre_values(tr, 4, 5) == [4, 4, 4, 4, 4]  # alone between blank 3 and validation 5
    assert centre_values(va, 6, 5) == [6, 5, 6, 5, 6]  # never the held-out plane 7
    assert centre_values(va, 5, 3) == [6, 5, 6]
    with pytest.raises(ValueError, match="not one of this split"):
        tr.window(3, 3)


def test_multi_frame_patches_target_the_centre_frame():
    hr = labelled_planes(n=5)
    train, _, _ = make_stacks([hr], U8, train_planes=[0, 1, 2, 3], valid_planes=[4])
    ds = CrappifiedPatches(train, CLEAN, patch=8, frames=3, length=30, seed=0, fixed=True)
    levels = (20 + 30 * np.arange(5)) / 255
    for i in range(len(ds)):
        lr, target = ds[i]
        assert lr.shape == (3, 8, 8) and target.shape == (1, 16, 16)
        # channel 1 (centre) is the LR of the target; the others are its neighbours, reflected
        # at the ends of the training planes 0-3 (plane 4 validates: never a neighbour)
        np.testing.assert_allclose(lr[1].numpy(), downsample(target[0].numpy(), 2), atol=1e-6)
        centre = int(np.argmin(np.abs(levels - float(target.mean()))))
        prev_, next_ = (int(np.argmin(np.abs(levels - float(lr[c].mean())))) for c in (0, 2))
        assert {prev_, next_} == {abs(centre - 1), centre + 1 if centre < 3 else 2}


# --------------------------------------------------------------------------- augmentation


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_augmentation_applies_the_same_transform_to_lr_and_hr(seed):
    lr = np.random.default_rng(seed % 1000).random((2, 6, 6)).astype(np.float32)
    hr = np.kron(lr[:1], np.ones((3, 3), np.float32))  # HR = LR upsampled 3x: registered
    lr_a, hr_a = augment([lr, hr], np.random.default_rng(seed))
    np.testing.assert_array_equal(hr_a, np.kron(lr_a[:1], np.ones((3, 3), np.float32)))
    assert lr_a.flags.c_contiguous and hr_a.flags.c_contiguous


def test_augmentation_reaches_all_eight_symmetries():
    a = np.arange(16).reshape(1, 4, 4)
    seen = {augment([a], np.random.default_rng(s))[0].tobytes() for s in range(200)}
    assert len(seen) == 8


# --------------------------------------------------------------------------- real pairs


def test_paired_patches_geometry_with_augmentation():
    hr = synthetic_em((3, 64, 64), seed=5)
    lr = (downsample(hr, 2) * 255).astype(np.float32)  # exact block mean, same units as hr
    ds = PairedPatches(lr, hr, 2, patch=12, length=30, seed=0, norm=U8, lr_norm=U8)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (1, 12, 12) and y.shape == (1, 24, 24) and x.dtype == torch.float32
        np.testing.assert_allclose(x[0].numpy(), downsample(y[0].numpy(), 2), atol=1e-5)


def test_paired_patches_normalise_each_side_and_take_frames():
    hr = synthetic_em((4, 64, 64), seed=5)
    lr = (downsample(hr, 2) * 4000 + 100).astype(np.uint16)  # another detector: other units
    ds = PairedPatches(lr, hr, 2, patch=16, frames=3, length=8, fixed=True)
    assert ds.norm == U8 and ds.lr_norm.low > 90
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y.shape == (1, 32, 32)
    assert -0.1 < float(x.min()) and float(x.max()) < 1.1
    assert -0.1 < float(y.min()) and float(y.max()) < 1.1


def test_paired_windows_skip_blank_planes_and_stay_on_the_given_planes():
    hr = labelled_planes(n=6)
    hr[2] = 0  # blank
    lr = downsample(hr, 2)
    ds = PairedPatches(lr, hr, 2, patch=16, frames=3, length=60, planes=[0, 1, 2, 3, 4],
                       norm=U8, lr_norm=NormConfig(low=0, high=1))
    means = {round(20 + 30 * i) for i in range(6)}
    centres, neighbours = set(), set()
    for i in range(len(ds)):
        x, y = ds[i]
        level = lambda a: min(means, key=lambda m: abs(m - float(a.mean()) * 255))  # noqa: E731
        centres.add(level(y))
        neighbours |= {level(frame) for frame in x}
    # plane 5 (not given) is never a centre nor a neighbour; blank plane 2 is neither
    assert centres == {20, 50, 110, 140} and neighbours == {20, 50, 110, 140}
    with pytest.raises(ValueError, match="outside 0..5"):
        PairedPatches(lr, hr, 2, patch=16, planes=[7])


def test_four_d_stacks_take_their_frames_along_the_frame_axis():
    # plane (t, z) holds 10 t + z + 1: frames along T (axis 0) must keep z, and never jump to
    # another z at the ends (flattening made Z the neighbours and crossed blocks)
    t, z = np.mgrid[:3, :4]
    texture = 100 * (np.indices((8, 8)).sum(axis=0) % 2)  # planes must not be blank
    stack = ((10 * t + z + 1)[..., None, None] + texture).astype(np.uint8)
    train, valid, _ = make_stacks([stack], U8, axis=0, train_planes=[0, 1], valid_planes=[2])
    assert len(train) == len(valid) == 4  # one stack along T per z
    for zi, stack_z in enumerate(train):
        for centre in (0, 1):
            window = np.rint(stack_z.window(centre, 3)[:, 0, 0] * 255).astype(int)  # texture 0 here
            assert {v % 10 for v in window} == {zi + 1}  # same z
            assert window[1] == 10 * centre + zi + 1


@pytest.mark.parametrize("lr_shape, hr_shape, scale, match", [
    ((2, 32, 32), (2, 64, 60), 2, "do not match scale 2"),
    ((2, 32, 32), (2, 64, 64), 3, "do not match scale 3"),
    ((3, 32, 32), (2, 64, 64), 2, "LR has 3 planes but HR has 2"),
    ((2, 32, 32), (2, 64, 64), 1.5, "integer factor"),
])
def test_pairs_that_do_not_match_the_scale(lr_shape, hr_shape, scale, match):
    with pytest.raises(ValueError, match=match):
        check_pair(np.ones(lr_shape, np.float32), np.ones(hr_shape, np.float32), scale)


def test_check_pair_crops_a_remainder():
    lr, hr = check_pair(np.ones((32, 32)), np.ones((65, 65)), 2)
    assert lr.shape == (1, 32, 32) and hr.shape == (1, 64, 64)


def test_pairs_smaller_than_a_patch_or_blank():
    hr = synthetic_em((2, 32, 32))
    with pytest.raises(ValueError, match=r"smaller than one patch \(32 x 32\)"):
        PairedPatches(downsample(hr, 2), hr, 2, patch=32)
    with pytest.raises(ValueError, match="blank"):
        PairedPatches(downsample(hr, 2), np.zeros_like(hr), 2, patch=8, norm=U8)
    with pytest.raises(ValueError, match="NaN"):
        PairedPatches(np.full((16, 16), np.nan), hr[0], 2, patch=8)


# --------------------------------------------------------------------------- DataLoaders


def test_dataloaders_yield_the_right_shapes():
    train, valid, _ = make_stacks([synthetic_em((5, 64, 64))], U8, train_planes=[0, 1, 2],
                                  valid_planes=[3, 4])
    crap = Crappifier.from_options(scale=4, photons=255)
    tr = CrappifiedPatches(train, crap, patch=8, frames=3, length=12, seed=0)
    va = CrappifiedPatches(valid, crap, patch=8, frames=3, length=6, seed=1, fixed=True)
    dls = make_dataloaders(tr, va, batch_size=4, device="cpu")
    x, y = dls.train.one_batch()
    assert tuple(x.shape) == (4, 3, 8, 8) and tuple(y.shape) == (4, 1, 32, 32)
    assert x.dtype == y.dtype == torch.float32
    assert len(dls.train) == 3 and len(dls.valid) == 2  # drop_last only for training
    xv, yv = next(iter(dls.valid))
    assert tuple(xv.shape) == (4, 3, 8, 8)


# --------------------------------------------------------------------------- writing


def _ome_sizes(path) -> dict:
    import re

    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    return {a: float(v) for a, v in re.findall(r'PhysicalSize([XYZ])="([0-9.]+)"', xml)}


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_save_stack_round_trip_with_geometry(tmp_path, suffix):
    data = synthetic_em((3, 32, 40))
    path = tmp_path / f"x{suffix}"
    events = []
    save_stack(path, data, "ZYX", (40, 4, 4), (0, 2, 2), ("nm",) * 3, progress=events.append)
    assert events[-1]["done"] == events[-1]["total"]
    img = open_image(path)
    np.testing.assert_array_equal(np.asarray(img.data), data)
    assert img.axes == "ZYX"
    # both formats keep the origin (OME-TIFF: as plane positions), so pairs overlay
    assert img.scale == (40, 4, 4) and img.translate == (0, 2, 2)
    assert img.units in (("nm",) * 3, ("nanometer",) * 3)
    if suffix != ".zarr":
        assert _ome_sizes(path) == {"Z": 40.0, "Y": 4.0, "X": 4.0}
    with pytest.raises(FileExistsError, match="exists"):
        save_stack(path, data, "ZYX")
    save_stack(path, data[:2], "ZYX", overwrite=True)
    assert np.asarray(open_image(path).data).shape == (2, 32, 40)


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_write_pairs(tmp_path, fmt):
    hr = synthetic_em((3, 66, 65))
    config = CrappifyConfig(scale=2, photons=100, read_noise=0.02)
    events = []
    result = write_pairs(hr, tmp_path, config, seed=5, axes="ZYX", scale=(40, 4, 4),
                         translate=(0, 10, 20), units=("nm",) * 3, fmt=fmt, name="em",
                         progress=events.append)
    assert events[-1] == {"event": "pairs", "stage": "hr", "done": 6, "total": 6}
    assert [e["stage"] for e in events].index("hr") > 0
    lr, hr_back = open_image(result["lr"]), open_image(result["hr"])
    assert lr.data.shape == result["lr_shape"] == (3, 33, 32)
    assert hr_back.data.shape == (3, 66, 64)
    np.testing.assert_array_equal(np.asarray(hr_back.data), hr[:, :66, :64])
    expected = Crappifier(config)(hr[2, :66, :64], seed=plane_rng(5, (2,)))
    # in the HR's units (uint8: 0..255), so that models trained on such data restore it
    assert hr.dtype == np.uint8
    np.testing.assert_allclose(np.asarray(lr.data[2]), expected * 255, rtol=1e-6)
    meta = json.loads((tmp_path / "em.json").read_text())
    assert meta["lr"]["scale"] == [40, 8, 8] and meta["lr"]["translate"] == [0, 12, 22]
    assert meta["crappify"]["photons"] == 100 and meta["seed"] == 5
    assert meta["lr"]["range"] == [0.0, 255.0]
    if fmt == "zarr":
        assert lr.scale == (40, 8, 8) and lr.translate == (0, 12, 22)
    else:
        assert _ome_sizes(result["lr"]) == {"Z": 40.0, "Y": 8.0, "X": 8.0}
    with pytest.raises(FileExistsError, match="em_lr"):
        write_pairs(hr, tmp_path, config, fmt=fmt, name="em")
    assert (tmp_path / "em.json").exists()  # a refused call deletes nothing


def test_write_pairs_cancelled_in_the_hr_stage_removes_everything(tmp_path):
    import threading

    cancel = threading.Event()

    def progress(ev):
        if ev["stage"] == "hr":
            cancel.set()

    from napari_decrappify.io import RestoreCancelled

    with pytest.raises(RestoreCancelled):
        write_pairs(synthetic_em((6, 32, 32)), tmp_path, CrappifyConfig(scale=2), name="p",
                    fmt="zarr", progress=progress, cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_write_pairs_bad_format(tmp_path):
    with pytest.raises(ValueError, match="unknown pair format 'png'"):
        write_pairs(np.zeros((8, 8)), tmp_path, CrappifyConfig(scale=2), fmt="png")


def test_tiff_written_by_save_stack_is_shaped(tmp_path):
    save_stack(tmp_path / "a.tif", np.zeros((2, 3, 8, 8), np.float32), "TZYX")
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        assert tif.series[0].shape == (2, 3, 8, 8) and tif.series[0].axes == "TZYX"
