"""``decrappify bench throughput|memory|seams``: the tiled engine's speed, memory and exactness.

throughput
    Engine output megapixels/s (threads scheduler, dask input in memory, result gathered)
    divided by the raw network rate: the engine's own network copy called in a plain loop on
    tensors already in memory, one window of the same size per tile, counting the same useful
    (core) output pixels. So the ratio is the engine's overhead (reading, reflecting,
    normalising, queueing, trimming, assembling); the price of the halo is reported apart
    (``useful_output_efficiency`` = output pixels / window pixels computed). Also: the engine
    vs a naive loop without dask (cut the windows, run, trim, write into a numpy array), and
    the engine's former default (receptive-field halo, 512 px tiles, reflected borders:
    ``TileConfig(exact=True, border="reflect")``) in the same run. Runs are interleaved and
    repeated; the best time of each is compared (the machine may be shared).
memory
    Peak RSS (the kernel's high-water mark ``VmHWM`` of the child's own address space, so no
    spike between samples is missed and nothing of the parent counts) while a child process
    restores a uint8 Zarr stack of each size and streams the result to
    OME-Zarr. The input is generated chunk by chunk on disk, never in RAM. The default model is
    ``conv`` (a two-layer CNN): the network's speed is irrelevant to memory and a tiny U-Net
    would need hours for 4 GB on a 2-core CPU; ``-o model=tiny`` uses the tiny U-Net.
seams
    Max abs difference, in network units (the fp32 output of the network, where real data
    lies in about [0, 1]), between tiled and whole-image output (the whole plane run in one
    go, extended to the alignment) for several tile/halo settings, per encoder; plus a fine
    halo scan on one interior window to find the smallest halo that gives <= 1e-4, next to the
    measured receptive field. The input (``-o input=``) is ``cremi`` by default: a mosaic of
    real CREMI planes, mean-downsampled by the model's scale with the DATA.md noise (what the
    bundled models see), or ``noise``: uniform white noise over the model's input range, a
    stress test far outside any training distribution (``output_abs_max`` shows how far the
    outputs stray from [0, 1]; fp32 round-off grows with them).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..tiling import reflect_index
from . import benchmark


def _set_threads(threads) -> None:
    import torch

    if threads not in (None, "", "0", 0):
        torch.set_num_threads(int(threads))


def _get_model(spec: str, scale: int, seed: int = 0):
    """``tiny``/``resnet18s``/... (random weights, receptive field measured), ``conv``, or a
    model folder / bundled model name."""
    from ..config import ArchConfig
    from ..models import ENCODER_STRIDE, build_model, load_model

    if spec == "conv":
        return conv_model()
    if spec in ENCODER_STRIDE:
        return build_model(ArchConfig(encoder=spec, scale=scale), name=f"{spec}-{scale}x", seed=seed)
    return load_model(spec)


def conv_model(scale: int = 1, norm_high: float = 255.0):
    """A minimal restoration model (two 3x3 convolutions, receptive field 2): for memory
    measurements where the network's cost is beside the point."""
    import torch
    from torch import nn

    from ..config import ArchConfig, NormConfig
    from ..models import ModelFile, RestorationModel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1)).eval()
    config = ModelFile(name="conv", arch=ArchConfig(encoder="tiny", scale=scale),
                       norm=NormConfig(low=0.0, high=norm_high), receptive_field=2, alignment=32)
    return RestorationModel(net=net, config=config)


# --------------------------------------------------------------------------- throughput


@benchmark("throughput")
def bench_throughput(model: str = "em-4x", scale: str = "4", tile: str = "", halo: str = "",
                     size: str = "1024", planes: str = "2", repeats: str = "3",
                     device: str = "auto", precision: str = "auto", threads: str = "") -> dict:
    """Engine vs raw network vs naive loop, and the engine's default tiling before and after
    the tolerance halo (module docstring). Options: ``model`` (a model folder/name, e.g.
    em-4x, or an encoder name for random weights), ``scale`` (for random weights), ``tile``
    and ``halo`` (default: the engine's choice), ``size`` (LR plane side), ``planes``,
    ``repeats``, ``device``, ``precision``, ``threads`` (torch intra-op threads)."""
    import torch

    from ..config import TileConfig
    from ..engine.geometry import useful_fraction
    from ..engine.graph import RUNS, build
    from ..tiling import DeviceWorker, default_tile, restore_lazy

    _set_threads(threads)
    m = _get_model(model, int(scale))
    size, n_planes, reps = int(size), int(planes), int(repeats)
    options = {"device": device, "precision": precision}
    if halo != "":
        options["halo"] = int(halo)
    if tile:
        options["tile"] = int(tile)
    cfg = TileConfig(**options)
    rf = int(m.receptive_field)
    # the engine's default before the tolerance halo: the receptive field, 512 px (or 2 x
    # halo), and a reflected halo around the image
    before = TileConfig(tile=default_tile(rf), halo=rf, exact=True, border="reflect",
                        **_without_geometry(options))
    s = m.scale
    out_mp = n_planes * (size * s) ** 2 / 1e6
    rng = np.random.default_rng(0)
    n = m.config.norm
    img = (rng.random((n_planes, size, size), dtype=np.float32) * (n.high - n.low) + n.low)

    def plan_of(config):
        built = build(m, img, config, "ZYX", None, None)
        RUNS.pop(built.plan.run_id, None)
        return built.plan.ty, built.plan.tx

    ty, tx = plan_of(cfg)
    by, bx = plan_of(before)
    h = ty.halo
    n_tiles = n_planes * ty.n * tx.n

    worker = DeviceWorker(m, device=device, precision=precision)
    shapes = [(ty.window_length(ky), tx.window_length(kx)) for ky in range(ty.n)
              for kx in range(tx.n)]
    inputs = {}
    for shape in set(shapes):
        x = torch.from_numpy(rng.random((1, m.in_channels * m.frames) + shape, dtype=np.float32))
        inputs[shape] = x.to(worker.device) if worker.cuda else \
            x.contiguous(memory_format=torch.channels_last)

    def raw() -> float:
        t0 = time.perf_counter()
        for _ in range(n_planes):
            for shape in shapes:
                y = worker._forward(inputs[shape])
        if worker.cuda:
            torch.cuda.synchronize()
        del y
        return time.perf_counter() - t0

    def engine_with(config):
        def run() -> float:
            t0 = time.perf_counter()
            restore_lazy(m, img, config, axes="ZYX").compute(scheduler="threads")
            return time.perf_counter() - t0
        return run

    def naive() -> float:
        t0 = time.perf_counter()
        out = np.empty((n_planes, size * s, size * s), np.float32)
        norm = m.input_norm(img)  # the stack's own mapping (percentile models), as the engine's
        for p in range(n_planes):
            plane = m.normalize(img[p], norm)
            for ky in range(ty.n):
                for kx in range(tx.n):
                    win = torch.from_numpy(np.ascontiguousarray(
                        plane[np.ix_(ty.source_index(ky), tx.source_index(kx))][None, None]))
                    win = win.to(worker.device) if worker.cuda else \
                        win.contiguous(memory_format=torch.channels_last)
                    yy = worker._forward(win)[0, 0].cpu().numpy()
                    (a, b), (c, d) = ty.core_range(ky), tx.core_range(kx)
                    oy, ox = ty.core_offset(ky) * s, tx.core_offset(kx) * s
                    out[p, a * s:b * s, c * s:d * s] = m.denormalize(
                        yy[oy:oy + (b - a) * s, ox:ox + (d - c) * s], norm)
        return time.perf_counter() - t0

    runs = (("raw", raw), ("engine", engine_with(cfg)), ("naive", naive),
            ("engine_default_before", engine_with(before)))
    # warm-up (device worker creation, allocator, cudnn autotune)
    restore_lazy(m, img[:1], cfg, axes="ZYX").compute(scheduler="threads")
    restore_lazy(m, img[:1], before, axes="ZYX").compute(scheduler="threads")
    raw()
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    for _ in range(reps):
        for name, fn in runs:
            times[name].append(fn())
    worker.close()
    best = {k: min(v) for k, v in times.items()}
    rate = {k: out_mp / v for k, v in best.items()}
    useful = useful_fraction(ty, tx)
    summary = {
        "ratio_engine_vs_raw": rate["engine"] / rate["raw"],
        "ratio_engine_vs_naive": rate["engine"] / rate["naive"],
        "engine_mpix_per_s": rate["engine"], "raw_mpix_per_s": rate["raw"],
        "naive_mpix_per_s": rate["naive"],
        "raw_network_mpix_per_s_full_windows": rate["raw"] / useful,
        "useful_output_efficiency": useful,
        "default_before": _tiling_row(by, bx, rate["engine_default_before"]),
        "default_after" if not (tile or halo) else "engine_as_asked":
            _tiling_row(ty, tx, rate["engine"]),
        "speedup_vs_default_before": rate["engine"] / rate["engine_default_before"],
        "device": worker.device, "precision": worker.precision,
        "target_ratio": 0.85,
    }
    return {"summary": summary, "model": m.name, "scale": s, "receptive_field": rf,
            "default_halo": m.default_halo, "tile": [ty.core, tx.core], "halo": h,
            "window": [ty.window, tx.window], "plane": [size, size], "planes": n_planes,
            "tiles": n_tiles, "output_mpix": out_mp, "seconds": times,
            "median_seconds": {k: float(np.median(v)) for k, v in times.items()}}


def _without_geometry(options: dict) -> dict:
    """The options other than tile and halo (device, precision)."""
    return {k: v for k, v in options.items() if k not in ("tile", "halo")}


def _tiling_row(ty, tx, mpix_per_s: float) -> dict:
    from ..engine.geometry import useful_fraction

    return {"tile": [ty.core, tx.core], "halo": ty.halo, "window": [ty.window, tx.window],
            "tiles_per_plane": ty.n * tx.n, "useful_output_efficiency": useful_fraction(ty, tx),
            "output_mpix_per_s": mpix_per_s}


# --------------------------------------------------------------------------- memory


def _make_input(path: Path, planes: int, side: int, chunk: int) -> None:
    """A uint8 (planes, side, side) Zarr stack written chunk by chunk (never whole in RAM)."""
    import dask.array as da

    noise = np.random.default_rng(0).integers(0, 40, (chunk, chunk), dtype=np.uint8)

    def block(block_info=None):
        (z0, z1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        yy, xx = np.mgrid[y0:y1, x0:x1]
        base = (96 + 60 * np.sin(yy / 37.0 + z0) * np.cos(xx / 23.0)).astype(np.uint8)
        return (base + noise[: y1 - y0, : x1 - x0])[None]

    arr = da.map_blocks(block, dtype=np.uint8, chunks=((1,) * planes, (chunk,) * (side // chunk),
                                                       (chunk,) * (side // chunk)))
    arr.to_zarr(str(path), overwrite=True)


def _memory_child(args_json: str) -> None:
    """Child process of the memory benchmark: restore the Zarr input into OME-Zarr."""
    import psutil

    a = json.loads(args_json)
    from ..config import TileConfig
    from ..engine.memory import return_freed_blocks
    from ..io import write_ome_zarr
    from ..tiling import restore_image

    return_freed_blocks()  # as `decrappify restore` does
    _set_threads(a.get("threads"))
    m = conv_model() if a["model"] == "conv" else _get_model(a["model"], 1)
    if a["model"] != "conv":
        m.config.norm.high = 255.0
    proc = psutil.Process()
    baseline = proc.memory_info().rss
    # tile 0: the engine's own choice (with a tolerance halo: the largest that fits memory)
    options = {"output_dtype": a["output_dtype"], "exact": a.get("exact", False)}
    cfg = TileConfig(tile=a["tile"], **options) if a["tile"] else TileConfig(**options)
    t0 = time.perf_counter()
    img = restore_image(m, a["input"], cfg, axes="ZYX")
    if a["sink"] == "zarr":
        write_ome_zarr(a["output"], img, overwrite=True)
    else:
        import dask.array as da

        da.map_blocks(lambda b: np.zeros((1,) * b.ndim, np.int8), img.data, dtype=np.int8,
                      chunks=tuple((1,) * len(c) for c in img.data.chunks)).sum().compute(
            scheduler="threads")
    print(json.dumps({"seconds": time.perf_counter() - t0, "baseline_rss": baseline,
                      "tile": img.metadata["tile"], "halo": img.metadata["halo"],
                      "peak_rss": _peak_rss_bytes(),
                      "shape": list(img.data.shape), "tiles": int(np.prod(img.data.numblocks))}))


def _peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes: ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss``: after ``fork``/``vfork`` + ``exec`` Linux carries the parent's
    high-water mark into the child's ``ru_maxrss``, so a child started from a big process
    (pytest with torch loaded) would report the parent's size. ``VmHWM`` belongs to the
    child's own address space. Falls back to ``ru_maxrss`` where ``/proc`` is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS: bytes, Linux: kB


@benchmark("memory")
def bench_memory(sizes_gb: str = "1,4", model: str = "conv", tile: str = "256", side: str = "2048",
                 chunk: str = "512", sink: str = "zarr", output_dtype: str = "input",
                 dir: str = "", threads: str = "", exact: str = "") -> dict:  # noqa: A002
    """Peak RSS restoring uint8 Zarr stacks of ``sizes_gb`` GB (module docstring). Options:
    ``sizes_gb`` ("1,4"; "0.25,1" is quicker), ``model`` (conv, tiny, or a model folder or
    name, e.g. em-4x), ``tile`` (empty: the engine's choice), ``side`` (plane side),
    ``chunk`` (input Zarr chunk side), ``sink`` (zarr: write OME-Zarr; none: compute and
    discard), ``output_dtype`` (input: uint8 output; float32), ``dir`` (scratch folder,
    default a temp folder), ``threads``, ``exact`` (true: the receptive-field halo)."""
    side_i, chunk_i = int(side), int(chunk)
    scratch = Path(dir) if dir else Path(tempfile.mkdtemp(prefix="decrappify-bench-memory-"))
    scratch.mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        for gb in (float(g) for g in sizes_gb.split(",")):
            planes = max(1, round(gb * 1e9 / side_i**2))
            inp, out = scratch / f"in-{gb}.zarr", scratch / f"out-{gb}.ome.zarr"
            t0 = time.perf_counter()
            _make_input(inp, planes, side_i, chunk_i)
            gen_s = time.perf_counter() - t0
            args = {"input": str(inp), "output": str(out), "model": model,
                    "tile": int(tile) if tile else 0,
                    "sink": sink, "output_dtype": output_dtype, "threads": threads,
                    "exact": exact.lower() in ("1", "true", "yes")}
            cmd = [sys.executable, "-c", "import sys; from napari_decrappify.bench.engine import "
                   "_memory_child; _memory_child(sys.argv[1])", json.dumps(args)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"memory benchmark child failed:\n{stderr[-3000:]}")
            child = json.loads(stdout.strip().splitlines()[-1])
            input_bytes = planes * side_i**2
            runs.append({
                "input_gb": input_bytes / 1e9, "input_shape": [planes, side_i, side_i],
                "output_shape": child["shape"], "tiles": child["tiles"],
                "tile": child["tile"], "halo": child["halo"],
                "peak_rss_mb": child["peak_rss"] / 2**20,
                "baseline_rss_mb": child["baseline_rss"] / 2**20,
                "peak_above_baseline_mb": (child["peak_rss"] - child["baseline_rss"]) / 2**20,
                "restore_seconds": child["seconds"], "input_generation_seconds": gen_s,
                "input_mpix_per_s": input_bytes / 1e6 / child["seconds"],
            })
            shutil.rmtree(inp, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if not dir:
            shutil.rmtree(scratch, ignore_errors=True)
    peaks = [r["peak_rss_mb"] for r in runs]
    summary = {
        "peak_rss_mb": {f"{r['input_gb']:.2f}GB": round(r["peak_rss_mb"], 1) for r in runs},
        "largest_over_smallest": peaks[-1] / peaks[0] if peaks else None,
        "below_1_5_GB": all(p < 1.5 * 1024 for p in peaks),
        "flat_within_10_percent": bool(peaks) and max(peaks) / min(peaks) <= 1.10,
        "model": model, "sink": sink,
    }
    return {"summary": summary, "runs": runs}


# --------------------------------------------------------------------------- seams


def _tiled_vs_whole(m, img, tile: int, halo: int) -> tuple[float, float]:
    """(max |tiled - whole|, max |whole|) in network units: the engine denormalises its
    output, so it is normalised back (exact up to one fp32 rounding) before comparing."""
    import warnings

    from ..config import TileConfig
    from ..tiling import restore, restore_whole

    norm = m.input_norm(img)  # the engine's mapping of this image (percentile models)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiled = m.normalize(restore(m, img, TileConfig(tile=tile, halo=halo), axes="YX"), norm)
    whole = restore_whole(m, m.normalize(img, norm)[None])[0]
    return float(np.abs(tiled - whole).max()), float(np.abs(whole).max())


def _tiled_vs_exact(m, img, tile: int, halo: int | None) -> float:
    """max |tiled - exact| in network units: tiled with ``halo`` (None: the engine's default,
    the model's tolerance halo if it has one) against the whole plane at the receptive field
    (what ``exact`` mode reproduces to ~1e-6)."""
    import warnings

    from ..config import TileConfig
    from ..tiling import restore, restore_whole

    cfg = TileConfig(tile=tile) if halo is None else TileConfig(tile=tile, halo=halo)
    norm = m.input_norm(img)  # the engine's mapping of this image (percentile models)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiled = m.normalize(restore(m, img, cfg, axes="YX"), norm)
    whole = restore_whole(m, m.normalize(img, norm)[None])[0]
    return float(np.abs(tiled - whole).max())


@functools.lru_cache(maxsize=4)
def _cremi_lr(scale: int) -> np.ndarray:
    """Every CREMI plane as noisy LR in [0, 1] (DATA.md protocol), read-only: built once per
    scale, where each of a run's six seam inputs used to reload and degrade the stack."""
    from ..samples import load_sample
    from .quality import protocol_pairs

    stack, _ = load_sample("cremi")
    lr, _ = protocol_pairs(stack, scale, noisy=True, planes=range(len(stack)))
    lr.flags.writeable = False
    return lr


def seam_input(m, side: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A ``side`` x ``side`` plane in the model's input units: ``cremi`` (a mosaic of real
    CREMI planes at the model's input pixel size, noisy as in DATA.md) or ``noise``."""
    n = m.config.norm
    if kind == "noise":
        return (rng.random((side, side), dtype=np.float32) * (n.high - n.low) + n.low)
    if kind != "cremi":
        raise ValueError(f"seams input must be 'cremi' or 'noise', not {kind!r}")
    lr = _cremi_lr(m.scale)
    k = -(-side // lr.shape[1])
    order = rng.permutation(len(lr))
    rows = [np.concatenate([lr[order[(i * k + j) % len(lr)]] for j in range(k)], axis=1)
            for i in range(k)]
    unit = np.concatenate(rows, axis=0)[:side, :side]
    return (unit * (n.high - n.low) + n.low).astype(np.float32)


def _window_scan(m, img, halos: list[int], core: int = 64) -> dict[int, float]:
    """For each halo: one interior window (the engine's: the core with the halo each side,
    aligned from the image's origin) vs the whole plane: the seam error of an interior tile,
    at a fraction of the cost of a full tiling (one whole-plane run for every halo)."""
    import torch

    from ..engine.geometry import cut_window, round_up
    from ..tiling import ALIGN, restore_whole

    x = m.normalize(img)
    s = m.scale
    c0 = (img.shape[0] - core) // 2 // ALIGN * ALIGN
    ref = restore_whole(m, x[None])[0][c0 * s:(c0 + core) * s, c0 * s:(c0 + core) * s]
    out = {}
    for h in halos:
        # the window the engine gives a core at c0
        start, stop = cut_window(c0, c0 + core, h, round_up(img.shape[0], ALIGN), ALIGN)
        idx = reflect_index(np.arange(start, stop), img.shape[0])
        win = x[np.ix_(idx, idx)]
        with torch.inference_mode():
            y = m.net(torch.from_numpy(np.ascontiguousarray(win))[None, None]).float().numpy()[0, 0]
        o = (c0 - start) * s
        out[h] = float(np.abs(y[o:o + core * s, o:o + core * s] - ref).max())
    return out


@benchmark("seams")
def bench_seams(encoders: str = "tiny,resnet18s", scale: str = "4", step: str = "8",
                threads: str = "", input: str = "cremi") -> dict:
    """Tiled vs whole-image max abs difference (module docstring). Options: ``encoders``
    (comma list: tiny, resnet18s, resnet18, resnet34, resnet50, or model folders), ``scale``,
    ``step`` (halo scan step), ``threads``, ``input`` (``cremi`` or ``noise``)."""
    from ..models import ENCODER_STRIDE
    from ..tiling import ALIGN

    _set_threads(threads)
    results = {}
    for enc in encoders.split(","):
        t0 = time.perf_counter()
        m = _get_model(enc, int(scale))
        rf = int(m.receptive_field)
        rng = np.random.default_rng(0)
        settings = []
        for h in sorted({0, 16, rf // 2, rf, rf + 16}):
            tile = max(64, -(-h // ALIGN) * ALIGN)
            side = 2 * tile + 37  # 3 x 3 tiles, the last ones partial
            img = seam_input(m, side, input, rng)
            diff, scale_ = _tiled_vs_whole(m, img, tile, h)
            settings.append({"tile": tile, "halo": h, "image": [side, side], "max_abs_diff": diff,
                             "output_abs_max": scale_,
                             "halo_ge_rf": h >= rf, "meets_1e-4": diff <= 1e-4})
        # the default (tolerance) halo and exact mode, against the exact output, in 64 px
        # tiles (many seams) on another mosaic of real planes
        default = int(m.default_halo)
        tile = max(64, -(-max(default, rf) // ALIGN) * ALIGN)
        img = seam_input(m, 2 * tile + 37, input, rng)
        default_check = {"default_halo": default, "tile": tile, "image": [2 * tile + 37] * 2,
                         "max_diff_default": _tiled_vs_exact(m, img, tile, None),
                         "max_diff_exact": _tiled_vs_exact(m, img, tile, rf)}
        halos = list(range(0, rf + 2 * int(step) + 1, int(step)))
        side = 64 + 2 * (max(halos) + 4 * ALIGN)
        scan = _window_scan(m, seam_input(m, side, input, rng), halos)
        needed = next((h for h in halos if all(scan[g] <= 1e-4 for g in halos if g >= h)), None)
        saturated = rf >= max(384, ENCODER_STRIDE.get(m.config.arch.encoder, 32) * 16) // 2
        results[m.name] = {"encoder": m.config.arch.encoder, "receptive_field": rf,
                           "receptive_field_at_measurement_cap": saturated,
                           "settings": settings, "halo_scan": {str(k): v for k, v in scan.items()},
                           "halo_needed_for_1e-4": needed, "default_vs_exact": default_check,
                           "seconds": time.perf_counter() - t0}
    summary = {name: {"receptive_field": r["receptive_field"],
                      "halo_needed_for_1e-4": r["halo_needed_for_1e-4"],
                      "max_diff_halo_ge_rf": max(s["max_abs_diff"] for s in r["settings"]
                                                 if s["halo_ge_rf"]),
                      "max_diff_halo_0": next(s["max_abs_diff"] for s in r["settings"]
                                              if s["halo"] == 0),
                      "default_halo": r["default_vs_exact"]["default_halo"],
                      "max_diff_default_vs_exact": r["default_vs_exact"]["max_diff_default"],
                      "max_diff_exact_mode": r["default_vs_exact"]["max_diff_exact"]}
               for name, r in results.items()}
    summary["default_meets_2e-3"] = all(r["default_vs_exact"]["max_diff_default"] <= 2e-3
                                        for r in results.values())
    summary["exact_meets_1e-4"] = all(r["default_vs_exact"]["max_diff_exact"] <= 1e-4
                                      for r in results.values())
    summary["target"] = "max abs diff <= 1e-4 (network units) whenever halo >= receptive field"
    summary["input"] = input
    summary["all_meet_target"] = all(s["meets_1e-4"] for r in results.values()
                                     for s in r["settings"] if s["halo_ge_rf"])
    return {"summary": summary, "encoders": results,
            "note": f"fp32 on {'CUDA' if _cuda() else 'CPU'}; input {input}; differences and "
                    "output_abs_max in network units"}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()

