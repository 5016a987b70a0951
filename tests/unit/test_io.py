"""OME-Zarr writing and reading: physical metadata round trip, resume after an interruption,
cancel, refusing to overwrite, clear errors for read-only and full disks; TIFF output."""

import errno
import json
import threading

import dask
import dask.array as da
import numpy as np
import pytest

from napari_decrappify import io
from napari_decrappify.io import (
    OutputError,
    RestoreCancelled,
    check_axes,
    downscale_geometry,
    open_image,
    upscale_geometry,
    write_ome_zarr,
    write_tiff,
)


def _counting_array(shape=(3, 64, 96), chunks=(1, 32, 32), fail_after=None, name="synthetic"):
    """A lazy array whose blocks count their computations (and can 'crash' after n blocks)."""
    calls = []
    lock = threading.Lock()

    def block(block_info=None):
        loc = block_info[None]["array-location"]
        with lock:
            if fail_after is not None and len(calls) >= fail_after:
                raise RuntimeError("simulated crash")
            calls.append(tuple(a for a, _ in loc))
        z, y, x = np.meshgrid(*(np.arange(a, b) for a, b in loc), indexing="ij")
        return (z * 10000 + y * 100 + x).astype(np.float32)

    arr = da.map_blocks(block, dtype=np.float32, chunks=tuple(
        tuple(min(c, s - i) for i in range(0, s, c)) for s, c in zip(shape, chunks, strict=True)),
        name=name)
    z, y, x = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    return arr, calls, (z * 10000 + y * 100 + x).astype(np.float32)


def test_round_trip_with_physical_metadata(tmp_path):
    arr, _, expected = _counting_array()
    path = write_ome_zarr(tmp_path / "out.ome.zarr", arr, axes="ZYX", scale=(40.0, 1.0, 1.0),
                          translate=(0.0, -1.5, -1.5), units=("nm", "nm", "nm"), name="restored")
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    ms = attrs["ome"]["multiscales"][0]
    assert attrs["ome"]["version"] == "0.5"
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in ms["axes"]} == {"nanometer"}  # NGFF unit names in NGFF metadata
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [40.0, 1.0, 1.0]},
        {"type": "translation", "translation": [0.0, -1.5, -1.5]}]
    assert attrs["decrappify"]["complete"] is True
    assert not (path / io.DONE_DIR).exists()
    img = open_image(path)
    assert isinstance(img.data, da.Array) and img.data.chunks[1] == (32, 32)  # lazy, by chunk
    assert img.axes == "ZYX" and img.scale == (40.0, 1.0, 1.0)
    assert img.translate == (0.0, -1.5, -1.5) and img.units == ("nm", "nm", "nm")
    np.testing.assert_array_equal(img.data.compute(), expected)


def test_axes_are_written_in_ngff_order_and_pyramid_levels(tmp_path):
    data = np.random.default_rng(0).random((4, 2, 32, 48), dtype=np.float32)
    path = write_ome_zarr(tmp_path / "c.zarr", data, axes="ZCYX", scale=(3.0, 1.0, 2.0, 2.0),
                          units=("um", "pixel", "um", "um"), levels=2)
    img = open_image(path)
    assert img.axes == "CZYX" and img.scale == (1.0, 3.0, 2.0, 2.0)
    np.testing.assert_array_equal(img.data.compute(), data.transpose(1, 0, 2, 3))
    import zarr

    level1 = np.asarray(zarr.open_array(str(path / "1")))
    np.testing.assert_allclose(level1, data.transpose(1, 0, 2, 3).reshape(2, 4, 16, 2, 24, 2)
                               .mean(axis=(3, 5)), rtol=1e-6)
    ds = json.loads((path / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["datasets"]
    # block-mean geometry: pixel size doubles, origin moves by half an old pixel
    assert ds[1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 3.0, 4.0, 4.0]},
        {"type": "translation", "translation": [0.0, 0.0, 1.0, 1.0]}]


def test_resume_computes_only_missing_chunks(tmp_path):
    out = tmp_path / "r.ome.zarr"
    arr, calls, expected = _counting_array(fail_after=7)
    with dask.config.set(num_workers=1), pytest.raises(RuntimeError, match="simulated crash"):
        write_ome_zarr(out, arr, axes="ZYX")
    assert len(calls) == 7
    assert json.loads((out / "zarr.json").read_text())["attributes"]["decrappify"]["complete"] is False
    with pytest.raises(ValueError, match="unfinished"):
        open_image(out)
    partial = open_image(out, allow_incomplete=True)
    assert partial.data.shape == expected.shape

    arr2, calls2, _ = _counting_array()  # same computation (same dask name), fresh counter
    write_ome_zarr(out, arr2, axes="ZYX")
    assert len(calls2) == 3 * 2 * 3 - 7
    assert not set(calls2) & set(calls)
    np.testing.assert_array_equal(open_image(out).data.compute(), expected)


def test_cancel_leaves_the_store_unfinished(tmp_path):
    arr, calls, _ = _counting_array()
    cancel = threading.Event()

    def progress(ev):
        assert ev["event"] == "chunks" and ev["total"] == 18
        if ev["done"] >= 2:
            cancel.set()

    with dask.config.set(num_workers=1), pytest.raises(RestoreCancelled):
        write_ome_zarr(tmp_path / "c.zarr", arr, axes="ZYX", progress=progress, cancel=cancel)
    assert len(calls) < 18
    with pytest.raises(ValueError, match="unfinished"):
        open_image(tmp_path / "c.zarr")


def test_existing_outputs_are_refused_unless_overwrite(tmp_path):
    arr, _, _ = _counting_array()
    out = write_ome_zarr(tmp_path / "o.zarr", arr, axes="ZYX")
    with pytest.raises(FileExistsError, match="exists and is complete"):
        write_ome_zarr(out, arr, axes="ZYX")
    other = da.zeros((3, 64, 96), chunks=(1, 32, 32), dtype=np.float32)
    write_ome_zarr(out, other, axes="ZYX", overwrite=True)
    assert float(open_image(out).data.max().compute()) == 0.0
    # an unfinished store of a different computation is not resumed with other data
    arr_fail, _, _ = _counting_array(fail_after=2, name="another")
    with dask.config.set(num_workers=1), pytest.raises(RuntimeError):
        write_ome_zarr(tmp_path / "u.zarr", arr_fail, axes="ZYX")
    with pytest.raises(FileExistsError, match="different computation"):
        write_ome_zarr(tmp_path / "u.zarr", other, axes="ZYX")
    # never delete a folder that is not a Zarr store, even with overwrite
    folder = tmp_path / "data.zarr"
    folder.mkdir()
    (folder / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a Zarr store"):
        write_ome_zarr(folder, other, axes="ZYX", overwrite=True)
    assert (folder / "precious.txt").exists()


def test_read_only_location_and_full_disk_give_clear_errors(tmp_path, monkeypatch):
    arr, _, _ = _counting_array()
    monkeypatch.setattr(io.os, "access", lambda *a, **k: False)
    with pytest.raises(OutputError, match="read-only or not writable"):
        write_ome_zarr(tmp_path / "ro.zarr", arr, axes="ZYX")
    monkeypatch.undo()

    import zarr

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(zarr, "open_group", read_only)
    with pytest.raises(OutputError, match="read-only"):
        write_ome_zarr(tmp_path / "ro2.zarr", arr, axes="ZYX")
    monkeypatch.undo()

    class Full:
        def __setitem__(self, key, value):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "_zarr_array", lambda store, level: Full())
    with dask.config.set(num_workers=1), pytest.raises(OutputError, match="disk is full.*resume"):
        write_ome_zarr(tmp_path / "full.zarr", arr, axes="ZYX")
    with pytest.raises(ValueError, match="unfinished"):
        open_image(tmp_path / "full.zarr")


def test_bad_write_arguments(tmp_path):
    data = np.zeros((2, 32, 32), np.float32)
    with pytest.raises(ValueError, match="unknown axes"):
        write_ome_zarr(tmp_path / "a.zarr", data, axes="ZYQ")
    with pytest.raises(ValueError, match="scale has 2 values"):
        write_ome_zarr(tmp_path / "a.zarr", data, axes="ZYX", scale=(1.0, 1.0))
    with pytest.raises(ValueError, match="levels=7 is too many"):
        write_ome_zarr(tmp_path / "a.zarr", data, axes="ZYX", levels=7)
    assert not (tmp_path / "a.zarr").exists()


def test_tiff_output_is_atomic_and_refuses_overwrite(tmp_path):
    data = np.random.default_rng(1).random((3, 20, 30), dtype=np.float32)
    path = write_tiff(tmp_path / "o.tif", da.from_array(data, chunks=(1, 20, 30)), axes="ZYX",
                      scale=(40.0, 4.0, 4.0), units=("nm",) * 3)
    img = open_image(path)
    assert img.axes == "ZYX"
    assert img.scale == (40.0, 4.0, 4.0) and img.units == ("nanometer",) * 3
    np.testing.assert_array_equal(img.data.compute(), data)
    with pytest.raises(FileExistsError):
        write_tiff(path, data, axes="ZYX")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RestoreCancelled):
        write_tiff(tmp_path / "c.tif", data, axes="ZYX", cancel=cancel)
    assert not (tmp_path / "c.tif").exists() and not (tmp_path / "c.tif.part").exists()


def test_geometry_helpers_are_unchanged():
    s, t = upscale_geometry((40.0, 8.0, 8.0), (0.0, 0.0, 0.0), "ZYX", 4)
    assert s == (40.0, 2.0, 2.0) and t == (0.0, -3.0, -3.0)
    assert downscale_geometry(s, t, "ZYX", 4) == ((40.0, 8.0, 8.0), (0.0, 0.0, 0.0))
    assert check_axes("zyx", 3) == "ZYX"
    with pytest.raises(ValueError, match="must end with YX"):
        check_axes("YXZ", 3)


def test_large_writes_run_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "WRITE_BATCH", 5)
    arr, calls, expected = _counting_array()
    events = []
    write_ome_zarr(tmp_path / "b.zarr", arr, axes="ZYX", progress=events.append)
    assert len(calls) == 18 and sorted(e["done"] for e in events) == list(range(1, 19))
    np.testing.assert_array_equal(open_image(tmp_path / "b.zarr").data.compute(), expected)


@pytest.mark.parametrize("kind", ["imagej", "ome", "resolution", "plain"])
def test_open_image_reads_tiff_pixel_sizes(tmp_path, kind):
    """The core (CLI, scripts) sees the same pixel sizes as the napari reader."""
    import tifffile

    stack = np.arange(2 * 8 * 12, dtype=np.uint8).reshape(2, 8, 12)
    path = tmp_path / f"{kind}.tif"
    if kind == "imagej":
        tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.004, 1 / 0.005),
                         metadata={"spacing": 0.04, "unit": "um", "axes": "ZYX"})
        want = (0.04, 0.005, 0.004), ("micrometer",) * 3
    elif kind == "ome":
        tifffile.imwrite(path, stack, ome=True, metadata={
            "axes": "ZYX", "PhysicalSizeX": 4.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 5.0,
            "PhysicalSizeYUnit": "nm"})
        # Z has no size in the file: one pixel, not a made-up micrometre
        want = (1.0, 5.0, 4.0), ("pixel", "nanometer", "nanometer")
    elif kind == "resolution":
        tifffile.imwrite(path, stack, resolution=(10_000 / 0.5, 10_000 / 0.25),
                         resolutionunit="CENTIMETER")
        want = (1.0, 0.25, 0.5), ("pixel", "micrometer", "micrometer")
    else:
        tifffile.imwrite(path, stack)
        want = (1.0, 1.0, 1.0), ("pixel",) * 3
    img = open_image(path, axes="ZYX")
    np.testing.assert_allclose(img.scale, want[0], rtol=1e-6)
    assert img.units == want[1]
    override = open_image(path, axes="ZYX", scale=(2.0, 3.0, 3.0))
    assert override.scale == (2.0, 3.0, 3.0)


# --------------------------------------------------------------------------- writing over the input


def test_writing_over_the_input_is_refused_before_anything_is_removed(tmp_path):
    """A lazy result reads its input while the output is written: replacing the input store
    (``decrappify restore a.zarr a.zarr --overwrite``) destroyed it and left a blank result
    marked complete."""
    import zarr

    outer = tmp_path / "outer.zarr"
    zarr.open_group(str(outer), mode="w")
    src = write_ome_zarr(outer / "in.ome.zarr", np.arange(2 * 32 * 32, dtype=np.float32)
                         .reshape(2, 32, 32), axes="ZYX")
    img = open_image(src)
    lazy = img.data * 2 + 1  # anything computed from it
    for out, how in ((src, "is"), (outer, "contains"), (src / "0", "lies inside"),
                     (src / "sub.ome.zarr", "lies inside")):
        with pytest.raises(ValueError, match=f"{how} the input being read.*another path"):
            write_ome_zarr(out, lazy, axes="ZYX", overwrite=True)
    np.testing.assert_array_equal(open_image(src).data.compute(),
                                  np.arange(2 * 32 * 32, dtype=np.float32).reshape(2, 32, 32))
    assert not (src / "sub.ome.zarr").exists()
    # a TIFF input, and the input's folder seen through a symlink
    import tifffile

    tif = tmp_path / "in.tif"
    tifffile.imwrite(tif, np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="is the input being read"):
        write_ome_zarr(tif, open_image(tif), overwrite=True)
    assert tif.is_file()
    (tmp_path / "link.zarr").symlink_to(src)
    with pytest.raises(ValueError, match="the input being read"):
        write_ome_zarr(tmp_path / "link.zarr", lazy, axes="ZYX", overwrite=True)
    # elsewhere is fine
    out = write_ome_zarr(tmp_path / "out.ome.zarr", lazy, axes="ZYX")
    np.testing.assert_array_equal(open_image(out).data.compute(), lazy.compute())


def test_resume_refuses_a_changed_geometry(tmp_path):
    """Resuming with another pixel size, origin or unit kept the store's old geometry and
    marked it complete."""
    out = tmp_path / "g.ome.zarr"
    arr, _, expected = _counting_array(fail_after=4)
    geometry = {"scale": (1.0, 50.0, 50.0), "translate": (0.0, 2.0, 2.0), "units": ("um",) * 3}
    with dask.config.set(num_workers=1), pytest.raises(RuntimeError, match="simulated crash"):
        write_ome_zarr(out, arr, axes="ZYX", **geometry)
    for change, message in (({"scale": (1.0, 0.05, 0.05)}, r"scale \(1.0, 50.0, 50.0\) there, "
                                                            r"\(1.0, 0.05, 0.05\) asked"),
                            ({"translate": (0.0, 0.0, 0.0)}, "translate"),
                            ({"units": ("nm",) * 3}, "units")):
        arr2, calls, _ = _counting_array()
        with pytest.raises(FileExistsError, match=f"another geometry.*{message}.*overwrite"):
            write_ome_zarr(out, arr2, axes="ZYX", **{**geometry, **change})
        assert calls == []
    # the same geometry (units spelled differently) resumes
    arr3, calls3, _ = _counting_array()
    write_ome_zarr(out, arr3, axes="ZYX", **{**geometry, "units": ("micrometer",) * 3})
    assert len(calls3) == 18 - 4
    img = open_image(out)
    assert img.scale == (1.0, 50.0, 50.0) and img.translate == (0.0, 2.0, 2.0)
    np.testing.assert_array_equal(img.data.compute(), expected)


# --------------------------------------------------------------------------- TIFF axes and geometry


def test_rgb_tiff_samples_become_channels(tmp_path):
    """tifffile calls RGB samples S (axes YXS): they were taken for Z (a 100-plane stack of
    3-pixel-wide images)."""
    import tifffile

    rgb = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    img = open_image(tmp_path / "rgb.tif")
    assert img.axes == "CYX" and img.data.shape == (3, 20, 24)
    np.testing.assert_array_equal(img.data.compute(), rgb.transpose(2, 0, 1))
    # a stack of RGB pages: planes stay planes
    stack = np.random.default_rng(1).integers(0, 255, (2, 20, 24, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="rgb")
    img = open_image(tmp_path / "stack.tif")
    assert img.axes == "ZCYX" and img.data.shape == (2, 3, 20, 24)
    np.testing.assert_array_equal(img.data.compute(), stack.transpose(0, 3, 1, 2))
    # OME channels of RGB samples: one C axis (OME counts SizeC = channels x samples)
    tifffile.imwrite(tmp_path / "ome.tif", stack, photometric="rgb", ome=True,
                     metadata={"axes": "CYXS"})
    img = open_image(tmp_path / "ome.tif")
    assert img.axes == "CYX" and img.data.shape == (6, 20, 24)
    np.testing.assert_array_equal(img.data.compute(), stack.transpose(0, 3, 1, 2).reshape(6, 20, 24))


@pytest.mark.parametrize("planes", [3, 4])
def test_a_three_or_four_plane_stack_written_by_tifffile_stays_a_stack(tmp_path, planes):
    # tifffile.imwrite stores a (3 or 4, Y, X) array as planar RGB(A) samples (axes SYX): it is
    # a z-stack far more often than a colour image, and was read as one before
    import tifffile

    stack = np.random.default_rng(0).integers(0, 255, (planes, 20, 24), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    assert tifffile.TiffFile(tmp_path / "stack.tif").series[0].axes == "SYX"
    img = open_image(tmp_path / "stack.tif")
    assert img.axes == "ZYX" and img.data.shape == stack.shape


def test_tiff_axes_outside_tczyx_need_explicit_axes(tmp_path):
    import tifffile

    a = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    tifffile.imwrite(tmp_path / "angle.tif", a, metadata={"axes": "AYX"})
    with pytest.raises(ValueError, match=r"axes of .*angle.tif.*'A'.*pass axes"):
        open_image(tmp_path / "angle.tif")
    img = open_image(tmp_path / "angle.tif", axes="ZYX")
    assert img.axes == "ZYX"
    np.testing.assert_array_equal(img.data.compute(), a)


def test_tiff_round_trips_the_origin(tmp_path):
    """A restored 4x TIFF of a 40 nm image at (0, 0) has its first pixel at -15 nm: it was
    read back at 0 (write_tiff took no origin and the reader read none)."""
    scale, translate = upscale_geometry((40.0, 40.0), (0.0, 0.0), "YX", 4)
    assert translate == (-15.0, -15.0)
    path = write_tiff(tmp_path / "r.tif", np.zeros((16, 16), np.float32), axes="YX", scale=scale,
                      translate=translate, units=("nm", "nm"))
    img = open_image(path)
    assert img.scale == (10.0, 10.0) and img.translate == (-15.0, -15.0)
    assert img.units == ("nanometer", "nanometer")
    # Z positions advance by the Z pixel size; an ImageData carries its own geometry
    from napari_decrappify.io import ImageData

    data = ImageData(np.zeros((3, 2, 8, 8), np.float32), axes="ZCYX", scale=(2.0, 1.0, 0.5, 0.5),
                     translate=(10.0, 0.0, -1.0, 3.0), units=("um", "pixel", "um", "um"))
    path = write_tiff(tmp_path / "z.tif", data)
    img = open_image(path)
    assert img.axes == "CZYX" and img.scale == (1.0, 2.0, 0.5, 0.5)
    assert img.translate == (0.0, 10.0, -1.0, 3.0)
    import tifffile

    with tifffile.TiffFile(path) as t:
        xml = t.ome_metadata
    assert 'TheC="0" TheZ="2" TheT="0" PositionX="3.0" PositionXUnit="µm" PositionY="-1.0" ' \
           'PositionYUnit="µm" PositionZ="14.0"' in xml


@pytest.mark.parametrize("z0", [800.0, 0.0])
def test_a_single_plane_z_stack_tiff_keeps_its_z_axis_and_origin(tmp_path, z0):
    """Restoring plane 20 of a stack (``sample:cremi[20:21]``) writes a one-plane ZYX TIFF:
    it read back as YX, losing its z position (napari then showed it on every plane). A
    2-D image stays 2-D."""
    one = write_tiff(tmp_path / "one.tif", np.zeros((1, 8, 8), np.uint8), axes="ZYX",
                     scale=(40.0, 4.0, 4.0), translate=(z0, 2.0, 2.0), units=("nm",) * 3)
    img = open_image(one)
    assert img.axes == "ZYX" and img.data.shape == (1, 8, 8)
    assert img.scale == (40.0, 4.0, 4.0) and img.translate == (z0, 2.0, 2.0)
    flat = write_tiff(tmp_path / "flat.tif", np.zeros((8, 8), np.uint8), axes="YX",
                      scale=(4.0, 4.0), translate=(2.0, 2.0), units=("nm",) * 2)
    img = open_image(flat)
    assert img.axes == "YX" and img.data.shape == (8, 8) and img.translate == (2.0, 2.0)
    # axes named by the caller: the file's array as stored
    assert open_image(one, axes="YX").data.shape == (8, 8)


def test_tiff_origin_in_another_unit_is_converted(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "p.tif", np.zeros((8, 8), np.uint8), ome=True, metadata={
        "axes": "YX", "PhysicalSizeX": 10.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 10.0,
        "PhysicalSizeYUnit": "nm",
        "Plane": {"PositionX": [1.5], "PositionXUnit": ["µm"], "PositionY": [-2.0],
                  "PositionYUnit": ["Å"]}})
    img = open_image(tmp_path / "p.tif")
    np.testing.assert_allclose(img.translate, (-0.2, 1500.0))
    assert img.units == ("nanometer", "nanometer")


@pytest.mark.parametrize("unit,symbol,name", [("mm", "mm", "millimeter"),
                                              ("millimeter", "mm", "millimeter"),
                                              ("angstrom", "Å", "angstrom"),
                                              ("m", "m", "meter"),
                                              ("Mm", "Mm", "megameter")])
def test_tiff_units_are_written_as_ome_symbols(tmp_path, unit, symbol, name):
    """OME-XML wants unit symbols: 'millimeter' is not a valid PhysicalSizeXUnit."""
    import tifffile

    path = write_tiff(tmp_path / "u.tif", np.zeros((2, 8, 8), np.float32), axes="ZYX",
                      scale=(1.0, 0.5, 0.5), units=(unit,) * 3)
    with tifffile.TiffFile(path) as t:
        xml = t.ome_metadata
    for a in "XYZ":
        assert f'PhysicalSize{a}Unit="{symbol}"' in xml
    img = open_image(path)
    assert img.scale == (1.0, 0.5, 0.5) and img.units == (name,) * 3


def test_tiff_pixel_units_stay_pixels(tmp_path):
    """A pixel size in pixel units was written without a unit, which OME reads as µm."""
    import tifffile

    path = write_tiff(tmp_path / "px.tif", np.zeros((2, 8, 8), np.float32), axes="ZYX",
                      scale=(1.0, 0.25, 0.25), units=("pixel",) * 3)
    with tifffile.TiffFile(path) as t:
        xml = t.ome_metadata
    assert "µm" not in xml and "PhysicalSizeZ" not in xml  # 1 pixel: nothing to say
    assert 'PhysicalSizeXUnit="pixel"' in xml
    img = open_image(path)
    assert img.scale == (1.0, 0.25, 0.25) and img.units == ("pixel",) * 3
    # a unit OME cannot express is left out, with a warning, rather than read back as µm
    with pytest.warns(UserWarning, match="'furlong' of axis X has no OME-TIFF equivalent"):
        path = write_tiff(tmp_path / "f.tif", np.zeros((8, 8), np.float32), axes="YX",
                          scale=(1.0, 3.0), units=("nm", "furlong"))
    img = open_image(path)
    assert img.scale == (1.0, 1.0) and img.units == ("nanometer", "pixel")


@pytest.mark.parametrize("kw", [
    {},  # default geometry: 1 pixel, origin 0
    {"scale": (1.0, 0.5, 0.5)},  # z in pixel units, no translate
    {"scale": (1.0, 1.0, 1.0), "units": ("nm",) * 3},
    {"scale": (2.0, 0.5, 0.5), "translate": (3.0, 0.0, 0.0)},
])
def test_a_one_plane_z_stack_tiff_keeps_its_z_axis_whatever_its_geometry(tmp_path, kw):
    """write_tiff stored neither PhysicalSizeZ nor PositionZ for a one-plane ZYX stack in
    pixel units at z 0 (the defaults): tifffile squeezed the Z axis and it read back as YX."""
    data = np.arange(64, dtype=np.uint16).reshape(1, 8, 8)
    path = write_tiff(tmp_path / "one.tif", data, axes="ZYX", **kw)
    img = open_image(path)
    assert img.axes == "ZYX" and img.data.shape == (1, 8, 8)
    assert img.scale == tuple(kw.get("scale", (1.0, 1.0, 1.0)))
    assert img.translate == tuple(kw.get("translate", (0.0, 0.0, 0.0)))
    expected_units = ("nanometer",) * 3 if "units" in kw else ("pixel",) * 3
    assert img.units == expected_units
    np.testing.assert_array_equal(img.data.compute(), data)
    # one Z plane among other axes, and a Z unit OME cannot express (its size is not stored)
    img = open_image(write_tiff(tmp_path / "tz.tif", np.zeros((2, 1, 8, 8), np.uint8),
                                axes="TZYX"))
    assert img.axes == "TZYX" and img.data.shape == (2, 1, 8, 8)
    with pytest.warns(UserWarning, match="'furlong' of axis Z"):
        path = write_tiff(tmp_path / "f.tif", data, axes="ZYX", scale=(3.0, 1.0, 1.0),
                          units=("furlong", "nm", "nm"))
    img = open_image(path)
    assert img.axes == "ZYX" and img.data.shape == (1, 8, 8) and img.scale == (1.0, 1.0, 1.0)
    # a 2-D image stays 2-D
    img = open_image(write_tiff(tmp_path / "yx.tif", data[0], axes="YX"))
    assert img.axes == "YX" and img.data.shape == (8, 8)


def test_named_axes_may_name_the_one_plane_z_axis_the_reader_shows(tmp_path):
    """A one-plane stack is shown as ZYX: naming its axes 'ZYX' raised "axes 'ZYX' name 3
    dimensions but the image has 2" (the file stores 2)."""
    data = np.arange(64, dtype=np.uint16).reshape(1, 8, 8)
    path = write_tiff(tmp_path / "one.tif", data, axes="ZYX", scale=(2.0, 0.5, 0.5),
                      translate=(10.0, 1.0, 1.0), units=("nm",) * 3)
    shown = open_image(path)
    for axes in ("ZYX", "zyx"):
        img = open_image(path, axes=axes)
        assert img.axes == shown.axes == "ZYX" and img.data.shape == (1, 8, 8)
        assert img.scale == shown.scale and img.translate == shown.translate
        assert img.units == shown.units
        np.testing.assert_array_equal(img.data.compute(), data)
    # named as stored: as stored
    assert open_image(path, axes="YX").data.shape == (8, 8)
    # other mismatches keep their error
    for axes in ("TYX", "TZYX"):
        with pytest.raises(ValueError, match=f"axes '{axes}' name {len(axes)} dimensions but "
                                             "the image has 2"):
            open_image(path, axes=axes)
    # not leading: a one-plane Z among other axes, named where the reader shows it
    path = write_tiff(tmp_path / "tz.tif", np.zeros((2, 1, 8, 8), np.uint8), axes="TZYX",
                      scale=(1.0, 2.0, 0.5, 0.5))
    img = open_image(path, axes="TZYX")
    assert img.axes == "TZYX" and img.data.shape == (2, 1, 8, 8)
    assert img.scale == (1.0, 2.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="name 4 dimensions but the image has 3"):
        open_image(path, axes="ZTYX")
    # a 2-D file that places nothing in z stays 2-D, named or not
    import tifffile

    tifffile.imwrite(tmp_path / "flat.tif", data[0])
    with pytest.raises(ValueError, match="name 3 dimensions but the image has 2"):
        open_image(tmp_path / "flat.tif", axes="ZYX")


# --------------------------------------------------------------------------- text files


def test_concurrent_atomic_text_writers_of_one_path_all_succeed(tmp_path, monkeypatch):
    """write_text_atomic used one temporary name per target (``.NAME.part``): two writers of
    the same file (two processes saving the same JSON) truncated, renamed and deleted each
    other's temporary file (FileNotFoundError, torn files)."""
    import os

    path = tmp_path / "out.json"
    first, second = json.dumps({"writer": 1}), json.dumps({"writer": 2, "pad": "2" * 1000})
    real_replace = os.replace
    interleaved = []

    def replace(src, dst):
        # another writer does its whole write while this one is about to rename
        if not interleaved:
            interleaved.append(src)
            io.write_text_atomic(path, second)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)  # Path.replace goes through os.replace too
    io.write_text_atomic(path, first)
    monkeypatch.setattr(os, "replace", real_replace)
    assert interleaved and path.read_text() == first  # the last rename wins, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no .part left
    assert os.stat(path).st_mode & 0o777 == 0o644

    # a failed write removes its own temporary file only, never another writer's
    others = [tmp_path / ".out.json.part", tmp_path / ".out.json.abc123.part"]
    for other in others:
        other.write_text("another writer's")

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        io.write_text_atomic(path, second)
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_text() == first
    assert all(other.read_text() == "another writer's" for other in others)
    assert len(list(tmp_path.iterdir())) == 3
    for other in others:
        other.unlink()

    # real threads writing the same path: all succeed, one complete payload at the end
    texts = [json.dumps({"writer": i, "pad": str(i) * 200_000}) for i in range(4)]
    errors = []
    start = threading.Barrier(len(texts))

    def write(i):
        start.wait()
        for _ in range(10):
            try:
                io.write_text_atomic(path, texts[i])
            except Exception as e:  # noqa: BLE001 - any failure is the defect
                errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_text() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_ome_zarr_arrays_name_their_dimensions_as_ngff_05_requires(tmp_path):
    import json

    from napari_decrappify.io import write_ome_zarr

    stack = np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64)
    write_ome_zarr(tmp_path / "s.ome.zarr", stack, axes="ZYX", scale=(40, 4, 4), levels=2)
    group = json.loads((tmp_path / "s.ome.zarr" / "zarr.json").read_text())
    ome = group["attributes"]["ome"]
    names = [a["name"] for a in ome["multiscales"][0]["axes"]]
    assert ome["version"] == "0.5" and names == ["z", "y", "x"]
    for level in ("0", "1"):
        array = json.loads((tmp_path / "s.ome.zarr" / level / "zarr.json").read_text())
        assert array["dimension_names"] == names
    # and a maintained validator agrees (ome-zarr-models, NGFF 0.5): it rejected the store
    # before the names were written
    import zarr
    from ome_zarr_models.v05.image import Image

    image = Image.from_zarr(zarr.open_group(str(tmp_path / "s.ome.zarr"), mode="r"))
    assert [a.name for a in image.ome_attributes.multiscales[0].axes] == names


@pytest.mark.parametrize("ome", [True, False])
def test_a_zarr_input_rewritten_in_place_gets_a_new_identity(tmp_path, ome):
    # the resume check compares this identity: zarr.json's stamp alone missed rewritten chunks
    import os

    import zarr

    from napari_decrappify.io import open_image, write_ome_zarr

    stack = np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64)
    path = tmp_path / ("in.ome.zarr" if ome else "in.zarr")
    if ome:
        write_ome_zarr(path, stack, axes="ZYX", chunks=(1, 32, 32))
        array = zarr.open_array(str(path / "0"), mode="r+")
        meta = path / "zarr.json"
    else:
        array = zarr.create_array(str(path), shape=stack.shape, chunks=(1, 32, 32),
                                  dtype=stack.dtype)
        array[:] = stack
        meta = path / "zarr.json"
    before = open_image(path, axes="ZYX").data.name
    assert open_image(path, axes="ZYX").data.name == before  # the same files: the same name
    stamp = meta.stat()
    array[1, :32, :32] = 7  # one chunk rewritten in place; the metadata untouched
    os.utime(meta, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert open_image(path, axes="ZYX").data.name != before


@pytest.mark.parametrize("name", ["out.ome.zarr", "out.tif"])
def test_a_second_writer_on_one_output_stops_at_once(tmp_path, name):
    from napari_decrappify.io import output_lock, write_ome_zarr, write_tiff

    write = write_tiff if name.endswith(".tif") else write_ome_zarr
    stack = np.zeros((2, 32, 32), np.uint8)
    out = tmp_path / name
    with output_lock(out), pytest.raises(FileExistsError, match="being written by another"):
        write(out, stack, axes="ZYX", overwrite=True)
    assert not out.exists()
    write(out, stack, axes="ZYX")  # the lock is released with its holder
    assert out.exists() and not (tmp_path / f".{name}.lock").exists()


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    import signal
    import subprocess
    import sys

    from napari_decrappify.io import write_tiff

    out = tmp_path / "out.tif"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom napari_decrappify.io import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FileExistsError, match="being written"):
            write_tiff(out, np.zeros((32, 32), np.uint8), axes="YX")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / ".out.tif.lock").exists()  # left behind by the killed writer...
    write_tiff(out, np.zeros((32, 32), np.uint8), axes="YX")  # ...and not in the way
    assert out.exists() and not (tmp_path / ".out.tif.lock").exists()


def test_an_unfinished_store_is_no_image_to_other_readers(tmp_path):
    import zarr
    from ome_zarr_models.v05.image import Image

    out = tmp_path / "r.ome.zarr"
    arr, _, expected = _counting_array(fail_after=7)
    with dask.config.set(num_workers=1), pytest.raises(RuntimeError, match="simulated crash"):
        write_ome_zarr(out, arr, axes="ZYX", scale=(40, 4, 4))
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]
    assert "ome" not in attrs  # no multiscales: not an image to ome-zarr readers
    with pytest.raises(Exception):  # noqa: B017 - any refusal: pydantic's, zarr's
        Image.from_zarr(zarr.open_group(str(out), mode="r"))
    partial = open_image(out, allow_incomplete=True)  # ours still reads it, when asked
    assert partial.scale == (40.0, 4.0, 4.0)
    arr2, _, _ = _counting_array()
    write_ome_zarr(out, arr2, axes="ZYX", scale=(40, 4, 4))  # resumed: the metadata appears
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]
    assert attrs["decrappify"]["complete"] and "ome" not in attrs["decrappify"]
    Image.from_zarr(zarr.open_group(str(out), mode="r"))
    np.testing.assert_array_equal(open_image(out).data.compute(), expected)


def test_auto_levels_give_a_pyramid_only_to_outputs_of_more_than_a_few_chunks():
    from napari_decrappify.io import MAX_AUTO_LEVELS, auto_levels

    assert auto_levels((3, 1024, 1024), (1, 512, 512), "ZYX") == 2  # 2 x 2 chunks -> 1/2 too
    assert auto_levels((3, 1000, 1000), (1, 512, 512), "ZYX") == 1  # a level < one chunk
    assert auto_levels((512, 512), (512, 512), "YX") == 1
    assert auto_levels((40, 8192, 8192), (1, 512, 512), "ZYX") == 5  # chunks 512 .. 32 px
    assert auto_levels((2**17, 2**17), (2048, 2048), "YX") == MAX_AUTO_LEVELS


def test_a_pyramid_is_written_with_each_chunk_in_one_pass(tmp_path, monkeypatch):
    """levels="auto" (the default) on an output of many chunks: every lower level is the
    block mean of full resolution, written as each chunk finishes (level 0 is never read
    back), its chunks the full-resolution chunk halved; the store validates as NGFF 0.5."""
    import zarr

    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (2, 600, 700), dtype=np.uint8)
    lazy = da.from_array(data, chunks=(1, 128, 128))
    reads = []
    real_from_zarr = da.from_zarr
    monkeypatch.setattr(da, "from_zarr", lambda *a, **k: reads.append(a) or real_from_zarr(*a, **k))
    path = write_ome_zarr(tmp_path / "p.ome.zarr", lazy, axes="ZYX", scale=(40, 4, 4),
                          translate=(0, 10, 20))
    assert reads == []  # one pass: no level was computed from a stored one
    group = zarr.open_group(str(path), mode="r")
    assert sorted(group.array_keys()) == ["0", "1", "2"]  # 600 / 4 = 150 >= one 128 px chunk
    for level, f in ((1, 2), (2, 4)):
        arr = group[str(level)]
        assert arr.chunks == (1, 128 // f, 128 // f)
        h, w = 600 // f, 700 // f
        expected = np.round(data[:, : h * f, : w * f].astype(np.float32)
                            .reshape(2, h, f, w, f).mean(axis=(2, 4))).astype(np.uint8)
        np.testing.assert_array_equal(arr[...], expected)
    np.testing.assert_array_equal(group["0"][...], data)
    ms = group.attrs["ome"]["multiscales"][0]["datasets"]
    assert ms[2]["coordinateTransformations"] == [
        {"type": "scale", "scale": [40.0, 16.0, 16.0]},
        {"type": "translation", "translation": [0.0, 16.0, 26.0]}]
    assert group.attrs["decrappify"]["levels"] == 3
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(zarr.open_group(str(path), mode="r"))  # a maintained validator agrees


def test_label_pyramids_keep_labels_and_odd_chunks_are_aligned(tmp_path):
    import zarr

    labels = np.zeros((300, 260), np.uint16)
    labels[:150, :] = 7
    labels[150:, 130:] = 3
    path = write_ome_zarr(tmp_path / "l.ome.zarr", da.from_array(labels, chunks=(100, 100)),
                          axes="YX", levels=3, labels=True)
    group = zarr.open_group(str(path), mode="r")
    assert group["0"].chunks == (100, 100)  # already a multiple of 2**(3 - 1)
    np.testing.assert_array_equal(group["2"][...], labels[:300:4, :260:4][:75, :65])
    assert set(np.unique(group["1"][...])) == {0, 3, 7}  # labels, never their averages
    odd = write_ome_zarr(tmp_path / "o.ome.zarr", da.from_array(labels, chunks=(90, 90)),
                         axes="YX", levels=3)
    assert zarr.open_array(str(odd / "0")).chunks == (92, 92)  # rounded up to a multiple of 4
    assert zarr.open_array(str(odd / "2")).chunks == (23, 23)
    with pytest.raises(ValueError, match="'auto'"):
        write_ome_zarr(tmp_path / "x.ome.zarr", labels, axes="YX", levels=0)
