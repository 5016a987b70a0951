"""The plugin's reader (TIFF, OME-Zarr: lazy, with physical metadata) and writer (OME-Zarr)."""

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_decrappify import io
from napari_decrappify._napari._reader import get_reader, read
from napari_decrappify._napari._writer import write_ome_zarr
from napari_decrappify.tiff_metadata import tiff_geometry, unit_name

pytestmark = pytest.mark.gui


@pytest.fixture
def stack():
    return (np.random.default_rng(0).random((3, 32, 48)) * 255).astype(np.uint8)


def test_get_reader_accepts_tiff_and_zarr_only(tmp_path, stack):
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, stack)
    io.write_ome_zarr(tmp_path / "b.ome.zarr", stack, axes="ZYX")
    (tmp_path / "c.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    assert get_reader(str(tif)) is read
    assert get_reader(str(tmp_path / "b.ome.zarr")) is read
    assert get_reader(str(tmp_path / "c.txt")) is None
    assert get_reader(str(tmp_path / "folder")) is None
    assert get_reader([str(tif), str(tif)]) is None


def test_imagej_tiff_opens_lazily_with_pixel_sizes(tmp_path, stack):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"spacing": 0.04, "unit": "um", "axes": "ZYX"})
    [(data, kwargs, kind)] = read(str(path))
    assert kind == "image" and isinstance(data, da.Array)
    np.testing.assert_array_equal(np.asarray(data), stack)
    np.testing.assert_allclose(kwargs["scale"], (0.04, 0.004, 0.004))
    assert kwargs["units"] == ("micrometer",) * 3
    assert kwargs["axis_labels"] == ("z", "y", "x")


def test_ome_tiff_pixel_sizes(tmp_path, stack):
    path = tmp_path / "ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 4.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 4.0,
        "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 40.0, "PhysicalSizeZUnit": "nm"})
    scale, units = tiff_geometry(path, "ZYX")
    assert scale == (40.0, 4.0, 4.0) and units == ("nanometer",) * 3


def test_plain_tiff_without_sizes_is_in_pixels(tmp_path, stack):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, stack)
    [(_, kwargs, _)] = read(str(path))
    assert kwargs["scale"] == (1.0, 1.0, 1.0) and kwargs["units"] == ("pixel",) * 3
    assert unit_name("\u00b5m") == unit_name("um") == "micrometer"


def test_writer_round_trip_keeps_geometry(make_napari_viewer, tmp_path, stack):
    viewer = make_napari_viewer()
    layer = viewer.add_image(stack, name="em", scale=(40, 4, 4), translate=(0, 98, 48),
                             units=("nm", "nm", "nm"), metadata={"axes": "ZYX"})
    data, meta, _ = layer.as_layer_data_tuple()
    [written] = write_ome_zarr(str(tmp_path / "em"), data, meta)
    assert written.endswith("em.ome.zarr")
    [(back, kwargs, _)] = read(written)
    assert isinstance(back, da.Array)
    np.testing.assert_array_equal(np.asarray(back), stack)
    np.testing.assert_allclose(kwargs["scale"], (40, 4, 4))
    np.testing.assert_allclose(kwargs["translate"], (0, 98, 48))
    assert [str(u) for u in kwargs["units"]] == ["nanometer"] * 3
    import zarr
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(zarr.open_group(written, mode="r"))  # NGFF 0.5 to a maintained validator
    # through napari's own open/save with this plugin
    viewer.layers.save(str(tmp_path / "saved.ome.zarr"), selected=False, plugin="napari-decrappify")
    [opened] = viewer.open(str(tmp_path / "saved.ome.zarr"), plugin="napari-decrappify")
    np.testing.assert_allclose(opened.scale, layer.scale)
    np.testing.assert_allclose(opened.translate, layer.translate)
    assert [str(u) for u in opened.units] == ["nanometer"] * 3
    np.testing.assert_array_equal(np.asarray(opened.data), stack)


def test_multilevel_ome_zarr_opens_multiscale(tmp_path):
    big = (np.random.default_rng(1).random((2, 64, 64)) * 255).astype(np.uint8)
    io.write_ome_zarr(tmp_path / "ms.ome.zarr", big, axes="ZYX", scale=(40, 4, 4), levels=2)
    [(levels, kwargs, _)] = read(str(tmp_path / "ms.ome.zarr"))
    assert kwargs["multiscale"] is True
    assert [lv.shape for lv in levels] == [(2, 64, 64), (2, 32, 32)]
    np.testing.assert_allclose(kwargs["scale"], (40, 4, 4))


def test_unfinished_store_is_refused_with_a_clear_message(tmp_path, stack):
    import threading

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(io.RestoreCancelled):
        io.write_ome_zarr(tmp_path / "half.ome.zarr", da.from_array(stack, chunks=(1, 32, 48)),
                          axes="ZYX", cancel=cancel)
    with pytest.raises(ValueError, match="unfinished"):
        read(str(tmp_path / "half.ome.zarr"))
