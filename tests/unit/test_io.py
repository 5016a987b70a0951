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
