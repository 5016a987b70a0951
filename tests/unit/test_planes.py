"""The shared walk over the 2-D planes of an image."""

import numpy as np

from napari_decrappify import planes


def test_walk_visits_each_plane_once_in_order_whatever_the_axes():
    image = np.arange(2 * 3 * 4 * 5).reshape(2, 4, 3, 5)  # T, Y, Z, X
    seen = [image[idx] for _, idx in planes.walk(image.shape, "TYZX")]
    assert planes.count(image.shape, "TYZX") == 6 and len(seen) == 6
    expected = [image[t, :, z, :] for t in range(2) for z in range(3)]
    for got, want in zip(seen, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_picks_spread_evenly_and_keep_the_ends():
    assert list(planes.picks(5)) == [0, 1, 2, 3, 4]
    chosen = planes.picks(1000, 4)
    assert list(chosen) == [0, 333, 666, 999]
    assert [k for k, _ in planes.walk((10, 8, 8), max_planes=3)] == [0, 4, 9]  # 4.5 rounds to 4


def test_index_cuts_a_window_of_one_plane():
    image = np.arange(3 * 8 * 8).reshape(3, 8, 8)
    idx = planes.index(image.shape, 2, "ZYX", (slice(2, 4), slice(0, 3)))
    np.testing.assert_array_equal(image[idx], image[2, 2:4, 0:3])
    assert planes.count((8, 8)) == 1 and planes.index((8, 8), 0) == (slice(None), slice(None))
