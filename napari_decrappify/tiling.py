"""The lazy tiled inference engine: any image size, exact seams, bounded memory.

:func:`restore_lazy` turns an image (numpy, dask, zarr, TIFF, OME-Zarr) into a dask array
whose chunks are restored tiles: nothing is computed until a chunk is read (napari shows
only what is on screen), and :func:`napari_decrappify.io.write_ome_zarr` streams it to disk.

Geometry (per axis, on the input grid)
    The image is cut into *cores* of ``tile`` pixels (the last one may stick out of the
    image). Each core is run with ``halo`` pixels of context on both sides, in a *window*
    rounded up to a multiple of the model's alignment (32: the U-Net downsamples 5 times);
    the extra alignment pixels go on the far side. Outside the image the window is filled by
    reflection (``numpy.pad(mode="reflect")``, repeated for tiny images). The network output
    is trimmed back to the core after upscaling. All window origins are multiples of the
    alignment in the reflect-padded image, so with ``halo >=`` the receptive field the tiled
    result equals the whole plane reflect-padded by ``halo`` and run in one go
    (:func:`restore_whole`) to ~1e-6.

Concurrency
    fastai's ``DynamicUnet`` keeps skip activations in hooks on the module: two threads in one
    network corrupt each other's outputs silently. So one :class:`DeviceWorker` thread per
    (model, device) owns a private copy of the network and is the only thing that ever runs
    it; dask threads read, reflect, normalise, queue tiles and trim results. The dask graph
    holds only a small :class:`ModelRef` (registry key + model file): in this process the
    model is looked up in a registry; a dask.distributed worker loads it once from its file.

Devices
    CUDA: tiles queued by many dask threads are batched, pinned host memory and a copy stream
    overlap transfers with compute, fp16/bf16 autocast, ``torch.inference_mode``; on CUDA out
    of memory the batch (then the tile) is halved and retried, once per size, with a warning.
    CPU: fp32 and ``channels_last``, one tile at a time; bf16 only if asked (on CPUs without
    native bf16 it is ~24x slower, with it ~1.7x faster: :func:`cpu_has_native_bf16`).

Output layout
    Restoration: float32 (or the input dtype, ``TileConfig.output_dtype="input"``) in the
    input's intensity units, Y and X multiplied by ``model.scale``, same axes as the input (a
    ``C`` axis is added in front if the model has several output channels and the input has
    none). Segmentation models (scale 1, softmax head): class probabilities on a new leading
    ``C`` axis (the input's own ``C``, if any, is consumed), float32. :func:`output_axes`
    gives the axes; :func:`restore_image` returns them with the physical geometry.
"""

from __future__ import annotations

import atexit
import bisect
import copy
import dataclasses
import functools
import itertools
import math
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .config import NormConfig, TileConfig
from .io import ImageData, RestoreCancelled, check_axes, open_image, upscale_geometry
from .normalization import denormalize, describe, input_range, normalize, resolve

__all__ = [
    "AxisTiling", "DeviceWorker", "ModelRef", "RestoreCancelled", "output_axes", "reflect_index",
    "release", "restore", "restore_image", "restore_lazy", "restore_whole", "tile_axis",
    "use_scheduler",
]

ALIGN = 32


# --------------------------------------------------------------------------- geometry


def reflect_index(idx, n: int) -> np.ndarray:
    """Map indices (any integers) into ``[0, n)`` by reflection without repeating the edge,
    as ``numpy.pad(mode="reflect")`` does (repeatedly, for pads larger than the image)."""
    idx = np.asarray(idx)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def default_tile(halo: int, align: int = ALIGN) -> int:
    """The tile (input px) used when none is given: ``TileConfig().tile`` or 2 x halo if larger.

    Every window computes its tile plus a halo on each side, so small tiles waste most of the
    work: with a core of >= 2 halos at least 25% of a window is kept. Measured on CPU for em-4x
    (halo 178) on a 1024^2 plane: tile 512 ran 1.6x faster than 384 (the former 2 x halo) for
    9% more peak memory.
    """
    from .config import TileConfig

    return max(TileConfig().tile, _round_up(2 * int(halo), align))


@dataclass(frozen=True)
class AxisTiling:
    """How one image axis of ``size`` pixels is cut (all on the input grid).

    Tile ``k`` restores the core ``[k * core, min((k + 1) * core, size))`` from the window
    ``[k * core - halo, k * core - halo + window)`` (reflected outside the image).
    """

    size: int
    core: int
    halo: int
    window: int

    @property
    def n(self) -> int:
        return -(-self.size // self.core)

    def core_range(self, k: int) -> tuple[int, int]:
        return k * self.core, min((k + 1) * self.core, self.size)

    def window_start(self, k: int) -> int:
        return k * self.core - self.halo

    def source_index(self, k: int) -> np.ndarray:
        """Image indices of window ``k`` (reflected at the borders)."""
        s = self.window_start(k)
        return reflect_index(np.arange(s, s + self.window), self.size)


def tile_axis(size: int, tile: int, halo: int, align: int = ALIGN) -> AxisTiling:
    """Tiling of an axis: cores of ``tile`` pixels (less for a small image, rounded up to
    ``align``), windows of ``core + 2 * halo`` rounded up to ``align``."""
    if tile % align:
        raise ValueError(f"tile {tile} must be a multiple of {align} (the model's alignment)")
    core = min(tile, _round_up(size, align))
    return AxisTiling(size=size, core=core, halo=halo, window=_round_up(core + 2 * halo, align))


def output_axes(model, axes: str) -> str:
    """Axes of :func:`restore_lazy`'s output for an input with ``axes`` (module docstring)."""
    if model.kind == "segmentation":
        return "C" + axes.replace("C", "")
    if "C" in axes or model.out_channels == 1:
        return axes
    return "C" + axes


# --------------------------------------------------------------------------- model registry


@dataclass(frozen=True)
class ModelRef:
    """What the dask graph holds instead of the model: a registry key and the model folder
    (for processes where the key is unknown: dask.distributed workers)."""

    key: str
    path: str | None
    weights: str


_MODELS: dict[str, object] = {}
_VERSIONS: dict[int, tuple[int, str]] = {}  # id(model) -> (weights version, registry key)
_MODELS_LOCK = threading.Lock()
_TEMP_DIRS: list[str] = []


_LOADED: dict[str, tuple[tuple, object]] = {}  # model folder -> (file stamps, loaded model)
_LOADED_LOCK = threading.Lock()


def _as_model(model):
    from .models import RestorationModel

    if isinstance(model, RestorationModel):
        return model
    if isinstance(model, str | os.PathLike):
        return _load_cached(model)
    raise TypeError(f"model must be a RestorationModel, a model folder or a model name, got "
                    f"{type(model).__name__}")


def _load_cached(name_or_path):
    """The model of a folder, package or name, loaded once per path while its files are unchanged.

    Every registered model keeps a device thread and a private copy of its network: a fresh
    load per call (one call per file in a batch script) would add both each time. A folder
    whose ``model.json`` or weights changed, or a package zip exported anew at the same path
    (size or modification time, :func:`models.model_stamp`), is loaded again and the previous
    model is forgotten (its device workers stop).
    """
    from .models import load_model, model_stamp, resolve_model_path

    folder = resolve_model_path(name_or_path).resolve()
    stamp = model_stamp(folder)  # a package's zip: its own time and size
    with _LOADED_LOCK:  # held while loading: two threads asking at once share one load
        hit = _LOADED.get(str(folder))
        if hit is not None and hit[0] == stamp:
            return hit[1]
        model = load_model(folder)
        _LOADED[str(folder)] = (stamp, model)
    if hit is not None:
        _forget_model(hit[1])
    return model


def _forget_model(model) -> None:
    """Unregister a model object (its lazy results then reload it from its folder)."""
    with _MODELS_LOCK:
        seen = _VERSIONS.pop(id(model), None)
    if seen is not None:
        _forget(seen[1])


def _register(model, need_file: bool) -> ModelRef:
    """Register ``model`` in this process; with ``need_file``, make sure a model folder with
    exactly these weights exists (saving the model to a temporary folder if needed)."""
    # weights changed in place since last time (training goes on)? then re-hash: a new key gets
    # a new device worker with a fresh copy of the network, and the old one is stopped
    version = _weights_version(model)
    seen = _VERSIONS.get(id(model))
    if seen is not None and seen[0] != version:
        model._hash = None
    key = f"{model.weights_hash}-{id(model):x}"
    with _MODELS_LOCK:
        _MODELS[key] = model
        _VERSIONS[id(model)] = (version, key)
    if seen is not None and seen[1] != key:
        _forget(seen[1])
    path = str(model.path) if model.path is not None else None
    if need_file:
        recorded = (model.config.weights_sha256 or "")[:12]
        if path is None or recorded != model.weights_hash:
            from .models import save_model

            tmp = tempfile.mkdtemp(prefix="decrappify-model-")
            _TEMP_DIRS.append(tmp)
            saved = copy.copy(model)  # save_model sets .path: do not touch the caller's object
            saved.config = model.config.model_copy(deep=True)
            path = str(save_model(saved, os.path.join(tmp, model.name or "model")))
    return ModelRef(key=key, path=path, weights=model.weights_hash)


def _weights_version(model) -> int:
    """Sum of the in-place modification counters of the network's tensors: changes whenever
    an optimiser step or ``load_state_dict`` touches the weights (cheap, no hashing)."""
    return sum(t._version for t in model.net.state_dict(keep_vars=True).values())


def _forget(key: str) -> None:
    with _WORKERS_LOCK:
        stale = [k for k in _WORKERS if k[0] == key]
        workers = [_WORKERS.pop(k) for k in stale]
    for w in workers:
        w.close()
    with _MODELS_LOCK:
        _MODELS.pop(key, None)


@atexit.register
def _remove_temp_models() -> None:
    for d in _TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def _lookup(ref: ModelRef):
    model = _MODELS.get(ref.key)
    if model is not None:
        return model
    with _MODELS_LOCK:
        model = _MODELS.get(ref.key)
        if model is None:
            if ref.path is None:
                raise RuntimeError(
                    "the model of this lazy result is gone (its weights changed since, or "
                    "tiling.release() was called), or this is another process and the model has "
                    "no file: restore again; for dask.distributed, save the model "
                    "(models.save_model) or build the lazy array while the Client is active")
            from .models import load_model

            model = load_model(ref.path)
            if model.weights_hash != ref.weights:
                raise RuntimeError(f"model file {ref.path} changed since the computation was "
                                   "planned (different weights)")
            _MODELS[ref.key] = model
    return model


def release() -> None:
    """Forget registered models and stop their device workers (frees their memory)."""
    with _WORKERS_LOCK:
        workers = list(_WORKERS.values())
        _WORKERS.clear()
    for w in workers:
        w.close()
    with _MODELS_LOCK:
        _MODELS.clear()
        _VERSIONS.clear()
    with _LOADED_LOCK:
        _LOADED.clear()


# --------------------------------------------------------------------------- device worker


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` (one GPU per dask.distributed worker, round robin) or ``cpu``."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for but CUDA is not available here")
        return device
    if not torch.cuda.is_available():
        return "cpu"
    n = torch.cuda.device_count()
    try:
        from distributed import get_worker

        name = get_worker().name
        if isinstance(name, int):
            return f"cuda:{name % n}"
    except (ImportError, ValueError):
        pass
    return "cuda:0"


@functools.lru_cache(maxsize=4)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (x86 ``avx512_bf16`` or ``amx_bf16``).

    It decides what bf16 autocast costs on CPU. Measured on 2 cores: where the CPU lacks it,
    a resnet34 U-Net forward was ~24x slower in bf16 (../shared/ENVIRONMENT.md); where it has
    ``avx512_bf16``, a resnet18s U-Net training step was 1.9x faster (bf16 + ``channels_last``
    137 ms vs fp32 254 ms) and a forward 1.7x faster. Read from the flags in ``cpuinfo``
    (Linux); ``False`` elsewhere or when unreadable.
    """
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 (fp16 if unsupported) on CUDA, fp32 on CPU.

    Inference on CPU stays fp32 even where bf16 is faster (:func:`cpu_has_native_bf16`), so
    that tiled and whole-image outputs agree to 1e-4 and scores are reproducible; ask for
    ``bf16`` to trade that for speed.
    """
    import torch

    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


@dataclass
class _Item:
    x: np.ndarray  # (channels, h, w) normalised float32
    geom: tuple[int, int, int]  # (halo, core_y, core_x): lets an OOM split a tile exactly
    future: Future
    cancel: object


# the 8 symmetries of the square as (quarter turns, mirror): test-time augmentation
DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))


class DeviceWorker:
    """The one thread that runs a model on a device.

    Callers (dask threads) :meth:`submit` normalised tiles and wait on a future; the worker
    takes what is queued (up to ``batch_size`` tiles of the same shape), runs it, and hands the
    outputs back. The network is a private copy: the caller's model is never moved or changed.
    """

    def __init__(self, model, device: str = "auto", precision: str = "auto", batch_size: int = 0,
                 align: int = ALIGN, tta: bool = False):
        import torch

        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
        self.cuda = self.device.startswith("cuda")
        self.scale = model.scale
        self.align = align
        self.tta = bool(tta)
        net = _private_net(model).to(self.device)
        if not self.cuda:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.max_batch = batch_size if batch_size > 0 else (8 if self.cuda else 1)
        self.split = 0  # number of times tiles are halved (after OOM at batch 1)
        self._oom_seen: set[tuple] = set()
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        # submit's "closed?" check and its put happen under this lock, and so does close():
        # a tile can never be queued behind the stop signal (nobody would ever run it)
        self._submit_lock = threading.Lock()
        self._held: list = []  # at most one item taken from the queue but not run yet
        self.tiles = 0  # tiles run (for tests and benchmarks)
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"decrappify-device-{self.device}")
        _ALL_WORKERS.add(self)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            self._copy_stream = torch.cuda.Stream(device=self.device)
        self._thread.start()

    # -- public
    def submit(self, x: np.ndarray, geom: tuple[int, int, int] = (0, 0, 0), cancel=None) -> Future:
        """Queue one tile ``(channels, h, w)``; the future gives ``(out_channels, h*s, w*s)``."""
        fut: Future = Future()
        item = _Item(np.ascontiguousarray(x, dtype=np.float32), geom, fut, cancel)
        with self._submit_lock:
            if self._closed:
                raise RuntimeError("the device worker was closed (the model changed or was "
                                   "released): restore again")
            self._queue.put(item)
        return fut

    def run(self, x: np.ndarray, geom=(0, 0, 0), cancel=None) -> np.ndarray:
        return self.submit(x, geom, cancel).result()

    def close(self) -> None:
        """Stop the worker: tiles already queued still run, later submits raise."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)

    # -- worker thread
    def _next(self, block: bool):
        if self._held:
            return self._held.pop()
        return self._queue.get(block=block)

    def _collect(self, block: bool) -> list[_Item] | None:
        try:
            first = self._next(block)
        except queue.Empty:
            return []
        if first is None:
            return None
        items = [first]
        while len(items) < self.max_batch:
            try:
                nxt = self._next(False)
            except queue.Empty:
                break
            if nxt is None or nxt.x.shape != first.x.shape:
                # another shape (or the stop signal) goes first next round: not to the back of
                # the queue, where it would land behind the stop signal and never run
                self._held.append(nxt)
                break
            items.append(nxt)
        return items

    def _loop(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.set_device(self.device)  # streams and events below use this device
        pending = None  # a launched batch whose results are not delivered yet (CUDA overlap)
        while True:
            items = self._collect(block=pending is None)
            if items is None:
                if pending is not None:
                    self._finish(*pending)
                self._drain()
                return
            launched = None
            live = []
            for it in items:
                if it.cancel is not None and it.cancel.is_set():
                    it.future.set_exception(RestoreCancelled("restore cancelled"))
                elif it.future.set_running_or_notify_cancel():
                    live.append(it)
            if live:
                try:
                    launched = (live, self._launch(live))
                except BaseException as e:  # noqa: BLE001 - delivered to the waiting callers
                    for it in live:
                        it.future.set_exception(e)
            if pending is not None:
                self._finish(*pending)
            pending = launched

    def _drain(self) -> None:
        """After close: fail whatever is still queued, so that no caller waits forever."""
        while True:
            try:
                it = self._queue.get_nowait()
            except queue.Empty:
                return
            if it is not None and it.future.set_running_or_notify_cancel():
                it.future.set_exception(RuntimeError(
                    "the device worker was closed (the model changed or was released): restore "
                    "again"))

    def _launch(self, items: list[_Item]):
        """Start the network on a batch; returns a handle for :meth:`_finish`. On CUDA the
        upload goes through pinned memory on a copy stream and this returns before the GPU
        is done, so the next batch is prepared while this one computes."""
        import torch

        x = torch.from_numpy(np.stack([it.x for it in items]))
        if self.cuda:
            x = x.pin_memory()
            compute = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self._copy_stream):
                xd = x.to(self.device, non_blocking=True)
            compute.wait_stream(self._copy_stream)
            xd.record_stream(compute)  # allocated on the copy stream, used on the compute stream
        else:
            xd = x.contiguous(memory_format=torch.channels_last)
        y = self._forward_safe(xd, items[0].geom)
        if self.cuda:
            host = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(y, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return host, done
        return y, None

    def _finish(self, items: list[_Item], handle) -> None:
        y, done = handle
        try:
            if done is not None:
                done.synchronize()
            out = y.numpy()
        except BaseException as e:  # noqa: BLE001
            for it in items:
                it.future.set_exception(e)
            return
        self.tiles += len(items)
        for i, it in enumerate(items):
            it.future.set_result(out[i])

    def _forward(self, x):
        """One network call (tests replace this to simulate CUDA out-of-memory); with ``tta``
        the mean over the 8 rotations/flips of the tile, each mapped back (self-ensemble)."""
        import torch

        with torch.inference_mode():
            if not self.tta:
                return self._net_call(x)
            y = None
            for k, flip in DIHEDRAL:
                t = torch.rot90(x, k, dims=(-2, -1))
                t = t.flip(-1) if flip else t
                if not self.cuda:
                    t = t.contiguous(memory_format=torch.channels_last)
                r = self._net_call(t)
                r = r.flip(-1) if flip else r
                r = torch.rot90(r, -k, dims=(-2, -1))
                y = r if y is None else y + r
            return y / len(DIHEDRAL)

    def _net_call(self, x):
        import torch

        if self.precision == "fp32":
            y = self.net(x)
        else:
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            with torch.autocast(device_type="cuda" if self.cuda else "cpu", dtype=dtype):
                y = self.net(x)
        return y.float()

    def _forward_safe(self, x, geom):
        """Forward with the OOM policy: run in chunks of ``max_batch``; on out-of-memory halve
        the batch, then split tiles in halves (exactly: see :meth:`_forward_split`), once per
        size, with a warning. Reduced sizes are kept for later batches."""
        import torch

        n, step = x.shape[0], self.max_batch  # step fixed: a nested OOM may lower max_batch
        if n > step:
            return torch.cat([self._forward_safe(x[i:i + step], geom) for i in range(0, n, step)])
        try:
            if self.split == 0:
                return self._forward(x)
            return torch.cat([self._forward_split(x[i:i + 1], geom, self.split) for i in range(n)])
        except torch.OutOfMemoryError:
            self._oom(n, x, geom)  # raises when this size failed before or nothing is left to halve
            return self._forward_safe(x, geom)

    def _oom(self, n: int, x, geom) -> None:
        import torch

        size = (n, self.split)
        if size in self._oom_seen:
            raise torch.OutOfMemoryError(f"out of memory again at batch {n}, tile split "
                                         f"{self.split}: use a smaller --tile")
        self._oom_seen.add(size)
        if self.cuda:
            torch.cuda.empty_cache()
        if n > 1:
            self.max_batch = max(1, n // 2)
            warnings.warn(f"out of device memory at batch {n}: retrying with batch "
                          f"{self.max_batch}", RuntimeWarning, stacklevel=2)
            return
        halo, cy, cx = geom
        if not _can_split(cy, self.split + 1, self.align) or not _can_split(cx, self.split + 1,
                                                                             self.align):
            raise torch.OutOfMemoryError(
                f"out of memory on one {tuple(x.shape[-2:])} tile: use a smaller --tile")
        self.split += 1
        warnings.warn(f"out of device memory on one tile: retrying with tiles split in "
                      f"{2 ** self.split} x {2 ** self.split}", RuntimeWarning, stacklevel=2)

    def _forward_split(self, x, geom, depth: int):
        """Run one window ``(1, C, H, W)`` (core ``cy x cx`` at offset ``halo``) as 2 x 2
        sub-windows, each with the same halo and alignment phase, so the core of the output
        is the same as in one piece. Rows/columns outside the core are left zero."""
        import torch

        if depth == 0:
            return self._forward(x)
        halo, cy, cx = geom
        s = self.scale
        hy, hx = cy // 2, cx // 2
        wy = _round_up(hy + 2 * halo, self.align)
        wx = _round_up(hx + 2 * halo, self.align)
        out = None
        for oy, ox in itertools.product((0, hy), (0, hx)):
            sub = x[..., oy:oy + wy, ox:ox + wx]
            y = self._forward_split(sub, (halo, hy, hx), depth - 1)
            if out is None:
                out = torch.zeros((1, y.shape[1], x.shape[-2] * s, x.shape[-1] * s),
                                  dtype=y.dtype, device=y.device)
            ys, xs = (halo + oy) * s, (halo + ox) * s
            out[..., ys:ys + hy * s, xs:xs + hx * s] = y[..., halo * s:(halo + hy) * s,
                                                         halo * s:(halo + hx) * s]
        return out


def _private_net(model):
    """A copy of the model's network for the worker alone (its own hooks and buffers)."""
    import torch

    from .models import RestorationNet

    net = model.net
    if isinstance(net, RestorationNet):
        # rebuilt, not deep-copied: fastai hooks may hold non-leaf tensors that deepcopy refuses
        copy_ = RestorationNet(net.arch, head=net.head)
        with torch.no_grad():
            copy_.load_state_dict(net.state_dict())
        return copy_.eval()
    return copy.deepcopy(net).eval()


_ALL_WORKERS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _shutdown_workers() -> None:
    """Stop the device threads before the interpreter finalises: a daemon thread that has run
    torch and is still alive at exit makes the process abort ("terminate called without an
    active exception", exit code 134)."""
    workers = list(_ALL_WORKERS)
    for w in workers:
        w.close()
    for w in workers:
        w._thread.join(timeout=60)


def _can_split(core: int, depth: int, align: int) -> bool:
    return core % (align * 2**depth) == 0


_WORKERS: dict[tuple, DeviceWorker] = {}
_WORKERS_LOCK = threading.Lock()


def get_worker(ref: ModelRef, device: str = "auto", precision: str = "auto",
               batch_size: int = 0, tta: bool = False) -> DeviceWorker:
    """The device worker of a registered model in this process (created on first use)."""
    key = (ref.key, device, precision, batch_size, bool(tta))
    w = _WORKERS.get(key)
    if w is None:
        with _WORKERS_LOCK:
            w = _WORKERS.get(key)
            if w is None:
                w = DeviceWorker(_lookup(ref), device, precision, batch_size, tta=tta)
                _WORKERS[key] = w
    return w


# --------------------------------------------------------------------------- progress


@dataclass
class _Run:
    progress: object
    cancel: object
    total: int
    done: int = 0
    pixels: int = 0
    t0: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tick(self, pixels: int) -> None:
        with self.lock:
            if self.t0 is None:
                self.t0 = time.monotonic()
            self.done += 1
            self.pixels += pixels
            done, px, t0 = self.done, self.pixels, self.t0
        if self.progress is not None:
            dt = max(time.monotonic() - t0, 1e-6)
            rate = done / dt
            self.progress({"event": "tiles", "done": min(done, self.total), "total": self.total,
                           "mpix_per_s": px / dt / 1e6,
                           "eta": max(0.0, (self.total - done) / rate)})


_RUNS: dict[str, _Run] = {}


def _local_run(plan) -> _Run | None:
    from .io import _in_distributed_worker

    if plan.pid != os.getpid() or _in_distributed_worker():
        return None
    return _RUNS.get(plan.run_id)


# --------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class _Plan:
    """Everything a tile task needs (one copy in the graph, shared by all tasks)."""

    ref: ModelRef
    in_name: str
    in_axes: str
    in_shape: tuple[int, ...]
    in_chunks: tuple[tuple[int, ...], ...]
    out_axes: str
    out_dtype: str
    ty: AxisTiling
    tx: AxisTiling
    scale: int
    frames: int
    frame_axis: int | None
    kind: str
    out_channels: int
    skip_empty: bool
    device: str
    precision: str
    batch_size: int
    tta: bool
    run_id: str
    pid: int
    norm: NormConfig  # the fixed normalisation of this input (data-normalised models: resolved)
    input_range: tuple[float, float] | None  # the input's measured range (percentile models)

    def box(self, plane: dict[int, int], ky: int, kx: int):
        """Per input axis, the source indices the tile reads: an index array (Y, X, frame
        axis), a single plane index, or ``None`` (all of C)."""
        ys, xs = self.ty.source_index(ky), self.tx.source_index(kx)
        out = []
        for i, a in enumerate(self.in_axes):
            if a == "Y":
                out.append(ys)
            elif a == "X":
                out.append(xs)
            elif a == "C":
                out.append(None)
            elif i == self.frame_axis:
                k = self.frames // 2
                p = plane[i]
                out.append(reflect_index(np.arange(p - k, p + k + 1), self.in_shape[i]))
            else:
                out.append(plane[i])
        return out

    @functools.cached_property
    def bounds(self) -> tuple[np.ndarray, ...]:
        """Per input axis, the chunk boundaries ``[0, c0, c0 + c1, ..., size]``.

        Computed once per plan: recomputing them per tile made building the graph quadratic
        in the number of planes (4000 planes: ~2 s of cumsums)."""
        return tuple(np.cumsum((0,) + c) for c in self.in_chunks)

    def chunk_ranges(self, box) -> list[range]:
        """Per input axis, the input chunks that the box touches."""
        ranges = []
        for i, sel in enumerate(box):
            if sel is None:
                ranges.append(range(0, len(self.in_chunks[i])))
                continue
            lo, hi = (int(sel.min()), int(sel.max()) + 1) if isinstance(sel, np.ndarray) \
                else (int(sel), int(sel) + 1)
            edges = self._edges[i]  # Python ints: bisect is ~10x cheaper than np.searchsorted
            ranges.append(range(bisect.bisect_right(edges, lo) - 1, bisect.bisect_left(edges, hi)))
        return ranges

    @functools.cached_property
    def _edges(self) -> tuple[list[int], ...]:
        return tuple(b.tolist() for b in self.bounds)


def _split_out_index(plan: _Plan, out_idx: tuple[int, ...]):
    """Output block index -> (plane indices per input axis, ky, kx)."""
    plane: dict[int, int] = {}
    ky = kx = 0
    for a, k in zip(plan.out_axes, out_idx, strict=True):
        if a == "Y":
            ky = k
        elif a == "X":
            kx = k
        elif a != "C":
            plane[plan.in_axes.index(a)] = k
    return plane, ky, kx


def _gather(plan: _Plan, box, parts: list) -> np.ndarray:
    """Assemble the tile's source box from its input chunks, then index it (reflection):
    returns ``(frames * channels, window_y, window_x)`` in input units."""
    ranges = plan.chunk_ranges(box)
    bounds = plan.bounds
    lo = [bounds[i][r.start] for i, r in enumerate(ranges)]
    hi = [bounds[i][r.stop] for i, r in enumerate(ranges)]
    if len(parts) == 1:
        buf = np.asarray(parts[0])
    else:
        first = np.asarray(parts[0])
        buf = np.empty(tuple(h - l for l, h in zip(lo, hi, strict=True)), dtype=first.dtype)
        for chunk_idx, part in zip(itertools.product(*ranges), parts, strict=True):
            sl = tuple(slice(bounds[i][c] - lo[i], bounds[i][c + 1] - lo[i])
                       for i, c in enumerate(chunk_idx))
            buf[sl] = part
    # select: arrays (Y, X, frames) and single planes, relative to the box origin
    sel = [slice(None) if s is None else s - lo[i] for i, s in enumerate(box)]
    # numpy advanced indexing with several arrays would broadcast them: index one axis at a time
    x = buf[tuple(s if not isinstance(s, np.ndarray) else slice(None) for s in sel)]
    kept = [i for i, s in enumerate(sel) if not isinstance(s, int | np.integer)]
    for pos, i in enumerate(kept):
        if isinstance(sel[i], np.ndarray):
            x = np.take(x, sel[i], axis=pos)
    # bring to (frame, C, Y, X)
    labels = ["F" if i == plan.frame_axis else plan.in_axes[i] for i in kept]
    order = [labels.index(a) for a in ("F", "C", "Y", "X") if a in labels]
    x = np.transpose(x, order)
    return x.reshape((-1,) + x.shape[-2:])


def _tile_task(plan: _Plan, out_idx: tuple[int, ...], parts: list) -> np.ndarray:
    """dask task: restore one output block (one tile)."""
    run = _local_run(plan)
    if run is not None and run.cancel is not None and run.cancel.is_set():
        raise RestoreCancelled("restore cancelled")
    _lookup(plan.ref)  # the registered model (loaded here in a distributed worker)
    plane, ky, kx = _split_out_index(plan, out_idx)
    box = plan.box(plane, ky, kx)
    raw = _gather(plan, box, parts)
    if raw.dtype.kind in "fc" and not np.isfinite(raw).all():
        # one NaN/inf would spread over every tile whose window reaches it: a silent hole
        raise ValueError(_non_finite_message(plan, box, plane, ky, kx, raw))
    ys, ye = plan.ty.core_range(ky)
    xs, xe = plan.tx.core_range(kx)
    s, h = plan.scale, plan.ty.halo
    oh, ow = (ye - ys) * s, (xe - xs) * s
    if plan.skip_empty and (lo := raw.min()) == raw.max():
        # constant input: restoration keeps the value, segmentation says background (class 0)
        if plan.kind == "segmentation":
            y = np.zeros((plan.out_channels, oh, ow), np.float32)
            y[0] = 1.0
        else:
            y = np.full((plan.out_channels, oh, ow), float(lo), np.float32)
    else:
        x = normalize(raw, plan.norm)
        worker = get_worker(plan.ref, plan.device, plan.precision, plan.batch_size, plan.tta)
        geom = (h, plan.ty.core, plan.tx.core)
        y = worker.submit(x, geom, run.cancel if run is not None else None).result()
        y = y[:, h * s:h * s + oh, h * s:h * s + ow]
        y = denormalize(y, plan.norm) if plan.kind == "restoration" else y
    y = _cast(y, plan.out_dtype)
    if run is not None:
        run.tick(oh * ow)
    return _to_block(plan, y)


def _non_finite_message(plan: _Plan, box, plane: dict[int, int], ky: int, kx: int,
                        raw: np.ndarray) -> str:
    """Where the first NaN/inf of a tile's window is, in input coordinates."""
    f, iy, ix = (int(v) for v in np.argwhere(~np.isfinite(raw))[0])
    n_c = plan.in_shape[plan.in_axes.index("C")] if "C" in plan.in_axes else 1
    at = []
    for i, a in enumerate(plan.in_axes):
        if a == "Y":
            v = box[i][iy]
        elif a == "X":
            v = box[i][ix]
        elif a == "C":
            v = f % n_c
        elif i == plan.frame_axis:
            v = box[i][f // n_c]
        else:
            v = box[i]
        at.append(f"{a}={int(v)}")
    where = ", ".join(f"{plan.in_axes[i]}={k}" for i, k in sorted(plane.items()))
    (ys, ye), (xs, xe) = plan.ty.core_range(ky), plan.tx.core_range(kx)
    value = raw[f, iy, ix]
    return (f"the input contains NaN or inf values: {value} at {', '.join(at)} (axes "
            f"{plan.in_axes}), read for the tile {where + ', ' if where else ''}Y {ys}-{ye}, "
            f"X {xs}-{xe}; replace them (e.g. numpy.nan_to_num) before restoring or segmenting")


def _cast(y: np.ndarray, dtype: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return np.clip(np.rint(y), info.min, info.max).astype(dt)
    return y.astype(dt, copy=False)


def _to_block(plan: _Plan, y: np.ndarray) -> np.ndarray:
    """``(channels, h, w)`` -> the output block, with size-1 plane axes and C where it goes."""
    shape = []
    for a in plan.out_axes:
        shape.append(y.shape[0] if a == "C" else y.shape[1] if a == "Y" else
                     y.shape[2] if a == "X" else 1)
    if "C" in plan.out_axes:
        c = plan.out_axes.index("C")
        y = np.moveaxis(y.reshape((y.shape[0],) + (1,) * (len(plan.out_axes) - 3) + y.shape[1:]),
                        0, c)
    return y.reshape(shape)


def _distributed_active() -> bool:
    from .io import _distributed_client

    return _distributed_client() is not None


@dataclass
class _Built:
    data: object
    image: ImageData
    out_axes: str
    plan: _Plan


def _build(model, image, config: TileConfig | None, axes, progress, cancel) -> _Built:
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    config = config or TileConfig()
    model = _as_model(model)
    img = open_image(image, axes=axes)
    x = img.data
    in_axes = check_axes(img.axes, x.ndim)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        # a bool mask restored to all-True, silently: only intensities can be restored
        raise ValueError(f"cannot restore an image of dtype {x.dtype} (a mask or labels?): "
                         "give intensities (integer or float)")
    # channels
    n_in = x.shape[in_axes.index("C")] if "C" in in_axes else 1
    if n_in != model.in_channels:
        where = f"a C axis of {n_in}" if "C" in in_axes else "no C axis (1 channel)"
        raise ValueError(f"model {model.name!r} takes {model.in_channels} input channel(s) but the "
                         f"image (axes {in_axes!r}, shape {tuple(x.shape)}) has {where}")
    frame_axis = None
    if model.frames > 1:
        # neighbours come from T when there is a time series (T > 1), else from Z: a z-stack
        # stored as TCZYX with T = 1 must not give the model copies of one plane
        if "T" in in_axes and (x.shape[in_axes.index("T")] > 1 or "Z" not in in_axes):
            fa = "T"
        else:
            fa = "Z" if "Z" in in_axes else None
        if fa is None:
            raise ValueError(f"model {model.name!r} takes {model.frames} frames along T or Z but "
                             f"the image axes {in_axes!r} have neither")
        frame_axis = in_axes.index(fa)
    if model.kind == "segmentation" and model.scale != 1:
        raise ValueError("segmentation models must have scale 1")
    # tiles and halo
    align = math.lcm(ALIGN, int(model.alignment or ALIGN))
    rf = int(model.receptive_field)
    halo = rf if config.halo is None else int(config.halo)
    tile = config.tile
    if tile % align:
        raise ValueError(f"tile {tile} must be a multiple of {align} (model alignment)")
    if "tile" not in config.model_fields_set:
        tile = default_tile(halo, align)  # grows with the halo
    elif tile < halo:
        raise ValueError(f"tile {tile} is smaller than the halo {halo}: most of each tile's work "
                         f"would be thrown away; use a tile >= {_round_up(halo, align)} or a "
                         "smaller halo")
    if halo < rf:
        warnings.warn(f"halo {halo} is below the model's receptive field {rf}: seams between tiles "
                      "may be visible (differences above 1e-4)", stacklevel=3)
    ty = tile_axis(x.shape[in_axes.index("Y")], tile, halo, align)
    tx = tile_axis(x.shape[in_axes.index("X")], tile, halo, align)
    # output
    out_ax = output_axes(model, in_axes)
    s = model.scale
    if config.output_dtype == "input" and model.kind == "restoration":
        out_dtype = np.dtype(x.dtype).str
    else:
        out_dtype = np.dtype(np.float32).str
    # the whole input's percentiles (one streamed pass), unless given: every tile then maps
    # intensities alike, and a crop restores as in the whole result when given its range
    given = config.input_range if config.input_range is not None else \
        input_range(model.config.norm, x)
    norm = resolve(model.config.norm, x, given)
    ref = _register(model, need_file=_distributed_active())
    run_id = uuid.uuid4().hex
    plan = _Plan(ref=ref, in_name=x.name, in_axes=in_axes, in_shape=tuple(int(v) for v in x.shape),
                 in_chunks=tuple(tuple(int(c) for c in cs) for cs in x.chunks), out_axes=out_ax,
                 out_dtype=out_dtype, ty=ty, tx=tx, scale=s, frames=model.frames,
                 frame_axis=frame_axis, kind=model.kind, out_channels=model.out_channels,
                 skip_empty=config.skip_empty, device=config.device, precision=config.precision,
                 batch_size=config.batch_size, tta=config.tta, run_id=run_id, pid=os.getpid(),
                 norm=norm, input_range=given)
    # the normalisation and architecture too: the same weights with another norm (an edited
    # model.json) compute other tiles, and a dask cache or a resumed store must not mix them
    token = tokenize(model.weights_hash, norm.model_dump_json(),
                     model.config.arch.model_dump_json(), x.name, in_axes, out_ax, out_dtype, ty,
                     tx, model.frames, config.skip_empty, config.precision, config.tta, model.kind)
    name = f"restore-{token}"
    plan_key = f"{name}-plan"
    chunks = []
    for a in out_ax:
        if a == "C":
            chunks.append((model.out_channels,))
        elif a == "Y":
            chunks.append(tuple((ty.core_range(k)[1] - ty.core_range(k)[0]) * s for k in range(ty.n)))
        elif a == "X":
            chunks.append(tuple((tx.core_range(k)[1] - tx.core_range(k)[0]) * s for k in range(tx.n)))
        else:
            chunks.append((1,) * x.shape[in_axes.index(a)])
    layer: dict = {plan_key: plan}
    for out_idx in itertools.product(*(range(len(c)) for c in chunks)):
        plane, ky, kx = _split_out_index(plan, out_idx)
        keys = [(x.name, *ci) for ci in itertools.product(*plan.chunk_ranges(plan.box(plane, ky, kx)))]
        layer[(name, *out_idx)] = (_tile_task, plan_key, tuple(out_idx), keys)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[x])
    total = int(np.prod([len(c) for c in chunks]))
    _RUNS[run_id] = _Run(progress=progress, cancel=cancel, total=total)
    # the progress record lives as long as some graph holds the plan (the array, or anything
    # derived from it), then goes: lazy arrays dropped by napari or a script leave nothing behind
    weakref.finalize(plan, _RUNS.pop, run_id, None)
    out = da.Array(graph, name, chunks=tuple(chunks), dtype=np.dtype(out_dtype),
                   meta=np.empty((0,) * len(out_ax), dtype=np.dtype(out_dtype)))
    return _Built(data=out, image=img, out_axes=out_ax, plan=plan)


def restore_lazy(model, image, config: TileConfig | None = None, *, axes: str | None = None,
                 progress=None, cancel: threading.Event | None = None):
    """Restore (or segment) an image lazily, tile by tile.

    Parameters
    ----------
    model : RestorationModel, str or path
        A loaded model, a model folder, or the name of a bundled/user model. A folder or name
        is loaded once and reused (with its device worker) while its files are unchanged.
    image : numpy, dask or zarr array, ImageData, or a path (TIFF, Zarr, OME-Zarr)
        Files are opened lazily (:func:`napari_decrappify.io.open_image`).
    config : TileConfig, optional
        Tile size, halo (default: the model's receptive field), device, precision, batch size,
        ``skip_empty`` (constant input tiles are not run: a restoration returns the constant,
        a segmentation class 0), ``output_dtype``, ``tta`` (mean over the 8 rotations and
        flips of each tile: a little better, 8 times slower).
    axes : str, optional
        Axes of ``image`` (``"ZYX"``...); default: from the file, else guessed from ndim.
        Multi-frame models take their neighbouring frames along T when T > 1, else along Z.
    progress : callable, optional
        Called from worker threads after each tile with ``{"event": "tiles", "done",
        "total", "mpix_per_s", "eta"}`` (output megapixels per second, seconds left). Under
        dask.distributed the tiles run elsewhere and this is not called from them: use
        :func:`restore` or :func:`~napari_decrappify.io.write_ome_zarr`, which report there.
    cancel : threading.Event, optional
        When set, tiles not yet started raise :class:`RestoreCancelled`.

    Returns
    -------
    dask.array.Array
        Chunks are tiles (axes: :func:`output_axes`). Float32 in the input's units, Y and X
        multiplied by ``model.scale``; class probabilities on a leading C axis for segmentation.

    Raises
    ------
    ValueError
        Bad axes, channels or tile settings (at once); a tile whose window reads NaN or inf
        input (when that tile is computed: the message says where).
    """
    return _build(model, image, config, axes, progress, cancel).data


def restore_image(model, image, config: TileConfig | None = None, *, axes: str | None = None,
                  progress=None, cancel: threading.Event | None = None,
                  pixel_size_mismatch: str = "resample", check_domain: bool = True) -> ImageData:
    """:func:`restore_lazy` with the output's axes and physical geometry (scale, translate and
    units per :func:`napari_decrappify.io.upscale_geometry`), ready for a layer or a writer.

    The input's pixel size (from its metadata, or the geometry of an :class:`ImageData`) is
    compared with the model's (:mod:`napari_decrappify.pixel_size`): beyond 15%,
    ``pixel_size_mismatch="resample"`` resamples the input to the model's grid and the result
    to the input's grid times the scale (same field of view, same geometry as without
    resampling); ``"warn"`` restores as it is; ``"error"`` raises a ValueError. With
    ``check_domain``, a few hundred 64 x 64 patches of the input are compared with the model's
    training inputs (:mod:`napari_decrappify.domain`). The result's ``metadata`` says what was
    done and found (``pixel_size``, ``normalisation``, ``input_range``, ``domain``).
    """
    from .pixel_size import check, model_grid_shape, resample_yx

    model = _as_model(model)
    img = open_image(image, axes=axes)
    ps = check(model, img.scale, img.units, img.axes, pixel_size_mismatch)
    source = img
    if ps.action == "resample":
        iy, ix = img.axes.index("Y"), img.axes.index("X")
        yx = (img.data.shape[iy], img.data.shape[ix])
        grid = model_grid_shape(yx, ps.factor)
        order = 1 if grid[0] < yx[0] or grid[1] < yx[1] else 3
        source = dataclasses.replace(img, data=resample_yx(img.data, img.axes, grid, order))
    b = _build(model, source, config, img.axes, progress, cancel)
    data = b.data
    if ps.action == "resample":
        s = model.scale
        # bicubic up to the asked grid; linear with anti-aliasing down to it
        order = 3 if yx[0] >= grid[0] and yx[1] >= grid[1] else 1
        data = resample_yx(data, b.out_axes, (yx[0] * s, yx[1] * s), order=order)
    scale, translate = upscale_geometry(img.scale, img.translate, img.axes, model.scale)
    units = img.units
    if b.out_axes != img.axes:  # a C axis in front (and the input's C consumed)
        keep = [i for i, a in enumerate(img.axes) if a != "C"] if model.kind == "segmentation" \
            else list(range(len(img.axes)))
        scale = (1.0,) + tuple(scale[i] for i in keep)
        translate = (0.0,) + tuple(translate[i] for i in keep)
        units = ("pixel",) + tuple(units[i] for i in keep)
    return ImageData(data=data, axes=b.out_axes, scale=tuple(scale), translate=tuple(translate),
                     units=tuple(units), name=f"{img.name} restored ({model.name})",
                     metadata={"model": model.name, "weights_sha256": model.weights_hash,
                               "kind": model.kind, "halo": b.plan.ty.halo, "tile": b.plan.ty.core,
                               "normalisation": describe(model.config.norm, b.plan.input_range),
                               "input_range": b.plan.input_range,
                               "pixel_size": ps.as_dict(),
                               "domain": _domain(model, source, b.plan, check_domain)})


def _domain(model, source: ImageData, plan: _Plan, check_domain: bool) -> dict:
    """The out-of-domain verdict on what the network sees (the resampled input, if so)."""
    from .domain import check

    if not check_domain or model.kind != "restoration":
        return {"in_domain": None, "findings": [], "message": "not checked"}
    return check(model, source.data, source.axes, plan.input_range)


def restore(model, image, config: TileConfig | None = None, *, axes: str | None = None,
            progress=None, cancel: threading.Event | None = None, scheduler=None) -> np.ndarray:
    """Restore an image now: :func:`restore_lazy`, computed into a numpy array.

    ``scheduler``: None (the active dask.distributed Client if any, else threads),
    ``"threads"``, ``"sync"``, ``"local"`` (a LocalCluster for this call) or a scheduler
    address. Progress and cancel work with every scheduler.
    """
    with use_scheduler(scheduler) as client:
        built = _build(model, image, config, axes, progress, cancel)
        arr = built.data
        try:
            if client is None:
                result = arr.compute(scheduler="sync" if scheduler == "sync" else "threads")
            else:
                from .io import _compute_distributed

                persisted = client.persist(arr)
                _compute_distributed(client, persisted, _RUNS.get(built.plan.run_id), cancel,
                                     int(np.prod([c[0] for c in arr.chunks])))
                result = persisted.compute()
        finally:
            _RUNS.pop(built.plan.run_id, None)
    if cancel is not None and cancel.is_set():
        raise RestoreCancelled("restore cancelled")
    return result


@contextmanager
def use_scheduler(scheduler=None):
    """Context for running dask graphs: yields a distributed ``Client`` or None (threads).

    ``None``: the active Client, if any; ``"threads"``/``"sync"``: no Client; ``"local"``: a
    LocalCluster for the duration (one worker per GPU, else two worker processes); anything
    else: the address of a running scheduler (``tcp://host:8786``), or a ``Client``.
    """
    from .io import _distributed_client

    if scheduler is None:
        yield _distributed_client()
        return
    if scheduler in ("threads", "sync"):
        yield None
        return
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler == "local":
        import torch

        n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        cpus = os.cpu_count() or 1
        n = n_gpu or min(2, cpus)
        with LocalCluster(n_workers=n, threads_per_worker=max(1, cpus // n), processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    if not isinstance(scheduler, str) or "://" not in scheduler and ":" not in scheduler:
        raise ValueError(f"scheduler must be threads, sync, local or a scheduler address "
                         f"(tcp://host:port), got {scheduler!r}")
    try:
        client = Client(scheduler, timeout="10s")
    except OSError as e:
        raise RuntimeError(f"cannot reach the dask scheduler at {scheduler} ({e})") from e
    with client:
        yield client


# --------------------------------------------------------------------------- references


def restore_whole(model, plane: np.ndarray, halo: int) -> np.ndarray:
    """The reference that tiling must reproduce: one normalised ``(channels, h, w)`` plane,
    reflect-padded by ``halo`` (and on the far side up to the alignment), run through
    ``model.net`` in one piece (fp32, calling thread), trimmed. Returns ``(out_channels, h*s,
    w*s)`` in network units. Small images only (tests and the seams benchmark)."""
    import torch

    x = np.asarray(plane, dtype=np.float32)
    _, h, w = x.shape
    a = math.lcm(ALIGN, int(model.alignment or ALIGN))
    py = _round_up(h + 2 * halo, a) - h - halo
    px = _round_up(w + 2 * halo, a) - w - halo
    xp = np.pad(x, ((0, 0), (halo, py), (halo, px)), mode="reflect")
    s = model.scale
    with torch.inference_mode():
        device = next(model.net.parameters()).device
        y = model.net(torch.from_numpy(xp)[None].to(device)).float().cpu().numpy()[0]
    return y[:, halo * s:(halo + h) * s, halo * s:(halo + w) * s]
