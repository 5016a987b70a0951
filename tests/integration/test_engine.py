"""The engine end to end: dask.distributed with 2 worker processes gives the threaded result,
and ``decrappify restore`` streams TIFF -> OME-Zarr with the right geometry."""

import json

import numpy as np
import pytest
import tifffile
import torch

from napari_decrappify import cli, tiling
from napari_decrappify.config import ArchConfig, TileConfig
from napari_decrappify.io import open_image, upscale_geometry, write_ome_zarr
from napari_decrappify.models import build_model, save_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = build_model(ArchConfig(encoder="tiny", scale=2), name="tiny-2x", seed=3, measure_rf=False)
    model.config.receptive_field = 48
    path = save_model(model, tmp_path_factory.mktemp("models") / "tiny-2x")
    return model, path


def _loaded_models():
    from napari_decrappify.engine import registry

    return len(registry._MODELS)


def test_distributed_local_cluster_matches_threads(saved_model, tmp_path):
    distributed = pytest.importorskip("distributed")
    model, path = saved_model
    img = np.random.default_rng(0).random((4, 64, 96), dtype=np.float32)
    cfg = TileConfig(tile=64, halo=48)
    # distributed workers run torch with one intra-op thread (dask sets OMP_NUM_THREADS=1);
    # a different thread count changes float summation order (~2e-7), so compare like with like
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        threaded = tiling.restore(model, img, cfg, axes="ZYX", scheduler="threads")
    finally:
        torch.set_num_threads(n_threads)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        events = []
        # by model folder and TIFF path: each worker process loads the model once from its
        # file and reads the TIFF itself (no open file handle travels in the graph)
        tifffile.imwrite(tmp_path / "in.tif", img, metadata={"axes": "ZYX"})
        out = tiling.restore(str(path), tmp_path / "in.tif", cfg, scheduler=cluster.scheduler_address,
                             progress=events.append)
        np.testing.assert_array_equal(out, threaded)
        assert max(e["done"] for e in events) == 8 and events[0]["total"] == 8
        with distributed.Client(cluster) as client:
            loaded = client.run(_loaded_models)
            assert all(n <= 1 for n in loaded.values()) and sum(loaded.values()) >= 1
            # an unsaved in-memory model is saved to a temporary folder for the workers, and a
            # streamed write under the client reports progress from this process
            fresh = build_model(ArchConfig(encoder="tiny", scale=2), seed=3, measure_rf=False)
            res = tiling.restore_image(fresh, img, cfg, axes="ZYX")
            chunks = []
            write_ome_zarr(tmp_path / "d.ome.zarr", res, progress=chunks.append)
        assert max(e["done"] for e in chunks) == 8
        np.testing.assert_array_equal(open_image(tmp_path / "d.ome.zarr").data.compute(), threaded)


def test_cli_restore_tiff_to_ome_zarr(saved_model, tmp_path, capsys):
    model, path = saved_model
    img = (np.random.default_rng(1).random((3, 50, 70)) * 200).astype(np.uint8)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, img, metadata={"axes": "ZYX"})
    out = tmp_path / "out.ome.zarr"
    args = ["restore", str(path), str(src), str(out), "--tile", "64", "--halo", "48", "--quiet"]
    assert cli.main(args) == 0
    res = open_image(out)
    assert res.axes == "ZYX" and res.data.shape == (3, 100, 140) and res.data.dtype == np.float32
    scale, translate = upscale_geometry((1.0,) * 3, (0.0,) * 3, "ZYX", 2)
    assert res.scale == scale and res.translate == translate
    expected = tiling.restore(model, img, TileConfig(tile=64, halo=48), axes="ZYX")
    # 2e-6: the CLI's model runs on its own device thread, with the process's thread count;
    # `model`'s worker started under test_distributed's one thread, and convolutions split
    # their sums by thread (seen: 15 float32 ulps on one pixel of 42000, 2.3e-4 of 214)
    np.testing.assert_allclose(res.data.compute(), expected, rtol=2e-6, atol=1e-5)
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["decrappify"]
    assert attrs["complete"] and attrs["metadata"]["weights_sha256"] == model.weights_hash
    import zarr
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(zarr.open_group(str(out), mode="r"))  # a maintained NGFF 0.5 validator

    capsys.readouterr()
    assert cli.main(args) == 1  # exists: refused, not clobbered
    assert "exists" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite", "--output-dtype", "input"]) == 0
    assert open_image(out).data.dtype == np.uint8

    assert cli.main(["restore", str(path), str(src), str(tmp_path / "o.tif"), "--tile", "64",
                     "--halo", "48", "--quiet"]) == 0
    # 2e-6: as above (the CLI's model on its own device thread)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "o.tif"), expected, rtol=2e-6, atol=1e-5)

    capsys.readouterr()
    assert cli.main(["restore", str(path), str(src), str(tmp_path / "x.zarr"), "--axes", "ZQX"]) == 1
    assert "unknown axes" in capsys.readouterr().err
    assert cli.main(["restore", str(path), str(src), str(tmp_path / "x.zarr"), "--tile", "32",
                     "--halo", "48"]) == 1
    assert "smaller than the halo" in capsys.readouterr().err
    assert cli.main(["restore", str(path), str(src), str(tmp_path / "x.png")]) == 1
    assert not (tmp_path / "x.zarr").exists()


def test_cli_resumes_an_interrupted_restore_computing_only_missing_tiles(saved_model, tmp_path,
                                                                          monkeypatch):
    import threading

    import dask

    from napari_decrappify.models import load_model
    from napari_decrappify.tiling import DeviceWorker, RestoreCancelled

    _, path = saved_model
    img = np.random.default_rng(2).random((4, 64, 128), dtype=np.float32)  # 8 tiles
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, img, metadata={"axes": "ZYX"})
    out = tmp_path / "r.ome.zarr"
    calls = []
    orig = DeviceWorker.submit
    monkeypatch.setattr(DeviceWorker, "submit",
                        lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    # the first run is stopped after 3 chunks (as a crash or Ctrl-C would)
    cancel = threading.Event()
    res = tiling.restore_image(load_model(path), open_image(src), TileConfig(tile=64, halo=48))

    def stop(ev):
        if ev["done"] >= 3:
            cancel.set()

    with dask.config.set(num_workers=1), pytest.raises(RestoreCancelled):
        write_ome_zarr(out, res, progress=stop, cancel=cancel)
    first = len(calls)
    assert 3 <= first < 8
    with pytest.raises(ValueError, match="unfinished"):
        open_image(out)
    # the same command again, without --overwrite: resumes
    assert cli.main(["restore", str(path), str(src), str(out), "--tile", "64", "--halo", "48",
                     "--quiet"]) == 0
    assert len(calls) - first == 8 - 3  # only the missing tiles were computed
    expected = tiling.restore(load_model(path), img, TileConfig(tile=64, halo=48), axes="ZYX")
    np.testing.assert_allclose(open_image(out).data.compute(), expected, atol=1e-6)
