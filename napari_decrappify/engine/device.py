"""The device worker: the one thread that runs a model's network on a device.

fastai's ``DynamicUnet`` keeps skip activations in hooks on the module: two threads in one
network corrupt each other's outputs silently. So one :class:`DeviceWorker` thread per (model,
device) owns a private copy of the network and is the only thing that ever runs it; dask
threads read, reflect, normalise, queue tiles and trim results.

CUDA: tiles queued by many dask threads are batched, pinned host memory and a copy stream
overlap transfers with compute, fp16/bf16 autocast, ``torch.inference_mode``; on CUDA out of
memory the batch (then the tile) is halved and retried, once per size, with a warning. CPU:
fp32 and ``channels_last``, one tile at a time; bf16 only if asked (on CPUs without native
bf16 it is ~24x slower, with it ~1.7x faster: :func:`cpu_has_native_bf16`).

Which worker serves which model is the registry's business
(:func:`napari_decrappify.engine.registry.get_worker`).
"""

from __future__ import annotations

import atexit
import copy
import functools
import itertools
import queue
import threading
import warnings
import weakref
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ..io import RestoreCancelled
from .geometry import ALIGN, can_split, cut_window


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
    geom: tuple[int, ...]  # (halo, core_y, core_x, offset_y, offset_x): lets an OOM split a tile
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
    def submit(self, x: np.ndarray, geom: tuple[int, ...] = (0, 0, 0), cancel=None) -> Future:
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
        if not can_split(cy, self.split + 1, self.align) or not can_split(cx, self.split + 1,
                                                                             self.align):
            raise torch.OutOfMemoryError(
                f"out of memory on one {tuple(x.shape[-2:])} tile: use a smaller --tile")
        self.split += 1
        warnings.warn(f"out of device memory on one tile: retrying with tiles split in "
                      f"{2 ** self.split} x {2 ** self.split}", RuntimeWarning, stacklevel=2)

    def _forward_split(self, x, geom, depth: int):
        """Run one window ``(1, C, H, W)`` as 2 x 2 sub-windows: each half of the core with
        ``halo`` px of context inside this window, aligned from its origin (the window's
        origin is aligned in the image), so the core of the output is the same as in one
        piece. ``geom``: ``(halo, core_y, core_x[, offset_y, offset_x])``, the core at
        ``offset`` in the window (default ``halo``). Pixels outside the core are left zero."""
        import torch

        if depth == 0:
            return self._forward(x)
        halo, cy, cx = geom[:3]
        oy, ox = geom[3:5] if len(geom) >= 5 else (halo, halo)
        s = self.scale
        out = None
        for (y0, y1), (x0, x1) in itertools.product(_halves(oy, cy), _halves(ox, cx)):
            # as the engine cuts windows at the image's edges, at this window's edges
            wy0, wy1 = cut_window(y0, y1, halo, x.shape[-2], self.align)
            wx0, wx1 = cut_window(x0, x1, halo, x.shape[-1], self.align)
            sub = x[..., wy0:wy1, wx0:wx1]
            y = self._forward_split(sub, (halo, y1 - y0, x1 - x0, y0 - wy0, x0 - wx0), depth - 1)
            if out is None:
                out = torch.zeros((1, y.shape[1], x.shape[-2] * s, x.shape[-1] * s),
                                  dtype=y.dtype, device=y.device)
            out[..., y0 * s:y1 * s, x0 * s:x1 * s] = y[..., (y0 - wy0) * s:(y1 - wy0) * s,
                                                       (x0 - wx0) * s:(x1 - wx0) * s]
        return out


def _halves(offset: int, core: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The two halves of a core ``[offset, offset + core)``."""
    mid = offset + core // 2
    return (offset, mid), (mid, offset + core)


def _private_net(model):
    """A copy of the model's network for the worker alone (its own hooks and buffers)."""
    import torch

    from ..models import RestorationNet

    net = model.net
    if isinstance(net, RestorationNet):
        # rebuilt, not deep-copied: fastai hooks may hold non-leaf tensors that deepcopy refuses
        copy_ = RestorationNet(net.arch, head=net.head, lean=net.lean)
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

