"""Property-based tests (hypothesis) of the readers and the tiling geometry: for any image the
strategies draw, what is written reads back the same, the tiles cut every axis exactly once, and
tiled restoration equals whole-image restoration."""

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays, from_dtype

from napari_decrappify.io import open_image, write_ome_zarr
from napari_decrappify.tiling import ALIGN, TileConfig, restore, restore_whole, tile_axis

DTYPES = st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64])
SHAPES = st.one_of(st.tuples(st.integers(1, 40), st.integers(1, 40)),
                   st.tuples(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40)))
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def images(draw):
    dtype, shape = draw(DTYPES), draw(SHAPES)
    finite = dict(allow_nan=False, allow_infinity=False) if np.dtype(dtype).kind == "f" else {}
    return draw(arrays(dtype, shape, elements=from_dtype(np.dtype(dtype), **finite)))


@SETTINGS
@given(image=images(), pixel=st.floats(0.5, 50.0))
def test_a_tiff_reads_back_as_written(tmp_path, image, pixel):
    axes = "YX" if image.ndim == 2 else "ZYX"
    path = tmp_path / "img.tif"
    sizes = {"PhysicalSizeX": pixel, "PhysicalSizeXUnit": "nm",
             "PhysicalSizeY": pixel, "PhysicalSizeYUnit": "nm"}
    tifffile.imwrite(path, image, ome=True, photometric="minisblack",
                     metadata={"axes": axes, **sizes})
    back = open_image(path)
    if image.ndim == 3 and image.shape[0] == 1:
        # OME-XML cannot tell one Z plane from a 2-D image (SizeZ is 1 for both): read as YX
        image, axes = image[0], "YX"
    assert back.axes == axes
    np.testing.assert_allclose(back.scale[-2:], (pixel, pixel), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.data), image)


@SETTINGS
@given(image=images(), pixel=st.floats(0.5, 50.0), origin=st.floats(-1e3, 1e3))
def test_an_ome_zarr_reads_back_as_written_with_its_geometry(tmp_path, image, pixel, origin):
    axes = "YX" if image.ndim == 2 else "ZYX"
    scale = (pixel,) * image.ndim
    translate = (origin,) * image.ndim
    path = tmp_path / f"img{np.random.default_rng().integers(1 << 30)}.zarr"
    write_ome_zarr(path, image, axes=axes, scale=scale, translate=translate,
                   units=("nanometer",) * image.ndim)
    back = open_image(path)
    assert back.axes == axes
    np.testing.assert_allclose(back.scale, scale)
    np.testing.assert_allclose(back.translate, translate)
    np.testing.assert_array_equal(np.asarray(back.data), image)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 5000), tile=st.integers(1, 40).map(lambda k: k * ALIGN),
       halo=st.integers(0, 200))
def test_tiles_cut_an_axis_exactly_once(size, tile, halo):
    t = tile_axis(size, tile, halo, reflect=True)  # TileConfig(border="reflect")
    covered = np.zeros(size, int)
    for k in range(t.n):
        a, b = t.core_range(k)
        assert a < b
        covered[a:b] += 1
        src = t.source_index(k)
        assert len(src) == t.window and t.window % ALIGN == 0
        assert src.min() >= 0 and src.max() < size  # reflected inside the image
        # the window holds the core and its halo on both sides (before reflection)
        assert t.window_start(k) <= a - halo and t.window_start(k) + t.window >= b + halo
    assert (covered == 1).all()


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 5000), tile=st.integers(1, 40).map(lambda k: k * ALIGN),
       halo=st.integers(0, 200))
def test_windows_inside_the_image_give_each_core_its_halo(size, tile, halo):
    t = tile_axis(size, tile, halo)  # the default: windows stop at the image's edges
    covered = np.zeros(size, int)
    for k in range(t.n):
        a, b = t.core_range(k)
        covered[a:b] += 1
        start, stop = t.window_range(k)
        assert start % ALIGN == 0 and stop % ALIGN == 0 and t.window_length(k) <= t.window
        assert 0 <= start <= a and stop <= -(-size // ALIGN) * ALIGN
        # the halo before and after the core, unless the image ends first
        assert start <= a - halo or start == 0
        assert stop >= b + halo or stop >= size
        src = t.source_index(k)
        assert src.min() >= 0 and src.max() < size
    assert (covered == 1).all()
    assert t.computed == sum(t.window_length(k) for k in range(t.n))


@pytest.fixture(scope="module")
def tiny():
    from napari_decrappify.config import ArchConfig
    from napari_decrappify.models import build_model

    return build_model(ArchConfig(encoder="tiny", scale=2), name="tiny-2x", seed=0)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(8, 150), w=st.integers(8, 150), seed=st.integers(0, 1000))
def test_tiled_restoration_equals_whole_image(tiny, h, w, seed):
    rf = tiny.receptive_field
    img = np.random.default_rng(seed).random((h, w), dtype=np.float32)
    out = restore(tiny, img, TileConfig(tile=64, halo=rf), axes="YX")
    ref = tiny.denormalize(restore_whole(tiny, tiny.normalize(img)[None]))[0]
    assert out.shape == (2 * h, 2 * w)
    assert np.abs(out - ref).max() <= 1e-4
