"""What a tile costs in memory, and the largest tile window that fits the engine's bound.

A network's activations grow with the window's pixels: the peak of one forward pass is about
``fixed + per_pixel * window**2``. Both are measured once per model by running two small
probe windows under a dispatch mode that tracks every tensor the network allocates (the live
bytes, their peak), so any architecture is covered without a table of constants. The bound:

- CPU: the process's peak RSS should stay under :data:`CPU_PEAK_RSS_BOUND` (1.5 GB) while a
  stack is restored and streamed to disk. Python, torch and the model already take ~0.6 GB
  (measured: torch 0.51 GB; a restoring process does not import fastai, 0.31 GB more:
  :mod:`napari_decrappify.models.lean_unet`), and the dask threads hold a few windows and
  output tiles besides the one in the network, so one forward pass gets
  :data:`CPU_NETWORK_BUDGET`. The budget is a constant, not the free memory of the moment:
  the same command must cut the same tiles (a resumed OME-Zarr write needs the same chunks).
  It never goes below what the engine's former default window (512 px core, receptive-field
  halo) cost, so the default never gets slower than it was: for a model whose own window is
  above the budget (em-4x: ~1.1 kB per input pixel, 0.8 GB for its former 864 px window) the
  RSS bound cannot be kept at that size, and the former size is used.
- CUDA: a batch of windows must fit in half the free device memory.
"""

from __future__ import annotations

import math
import threading
import weakref

CPU_PEAK_RSS_BOUND = 1.5e9  # bytes: the engine's target for the restoring process (CPU)
CPU_NETWORK_BUDGET = 448 * 2**20  # bytes for one forward pass on CPU (module docstring)
GPU_FREE_FRACTION = 0.5  # of the free device memory, for one batch
PROBE_SIDES = (128, 256)  # probe windows (input px; multiples of every alignment used)

_cache: dict[tuple, tuple[float, float]] = {}
_lock = threading.Lock()


class _LiveBytes:
    """Counts the bytes of the tensors the wrapped code allocates and still holds (by
    storage, so views and in-place results are not counted twice), and their peak."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._track(out)
                return out

        self.mode = Mode()
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors holding it]
        self.now = self.peak = 0

    def _track(self, out) -> None:
        import torch
        from torch.utils._pytree import tree_leaves

        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:
                continue
            entry = self.live.get(key)
            if entry is None:
                entry = self.live[key] = [storage.nbytes(), 0]
                self.now += entry[0]
                self.peak = max(self.peak, self.now)
            entry[1] += 1
            weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.now -= entry[0]
            del self.live[key]


def _probe_peak(net, channels: int, side: int) -> int:
    """Peak bytes allocated by one fp32 CPU forward pass on a ``side`` x ``side`` window."""
    import torch

    x = torch.zeros((1, channels, side, side))
    tracker = _LiveBytes()
    with torch.inference_mode(), tracker.mode:
        y = net(x)
    del y
    return tracker.peak


def forward_cost(model) -> tuple[float, float]:
    """``(fixed, per_pixel)`` bytes of one fp32 forward pass: ``fixed + per_pixel * pixels``
    of the input window (measured once per model: module docstring)."""
    from .device import _private_net

    key = (model.weights_hash, model.config.arch.model_dump_json(), model.kind)
    with _lock:
        if key in _cache:
            return _cache[key]
    net = _private_net(model).cpu().float().eval()
    channels = model.in_channels * model.frames
    a, b = PROBE_SIDES
    pa, pb = _probe_peak(net, channels, a), _probe_peak(net, channels, b)
    per_pixel = max((pb - pa) / (b * b - a * a), pb / (b * b) / 2)
    fixed = max(0.0, pb - per_pixel * b * b)
    with _lock:
        _cache[key] = (fixed, per_pixel)
    return fixed, per_pixel


def memory_budget(device: str, batch: int = 1) -> float:
    """Bytes one window's forward pass may take on ``device`` (``"cpu"`` or ``"cuda:N"``)."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return GPU_FREE_FRACTION * free / max(1, batch)
    return float(CPU_NETWORK_BUDGET)


def max_window_pixels(model, device: str, batch: int = 1, floor_px: float = 0.0) -> float:
    """The most input-window pixels one tile may have on ``device``: the forward pass's
    estimated peak (:func:`forward_cost`) within :func:`memory_budget`, and at least
    ``floor_px`` on CPU (the former default window: module docstring)."""
    fixed, per_pixel = forward_cost(model)
    px = max(0.0, memory_budget(device, batch) - fixed) / max(per_pixel, 1e-9)
    return px if device.startswith("cuda") else max(px, float(floor_px))


def max_window_side(model, device: str, batch: int = 1) -> int:
    """:func:`max_window_pixels` as the side of a square window."""
    return int(math.isqrt(int(max_window_pixels(model, device, batch))))


HEAP_MMAP_THRESHOLD = 8 * 2**20  # bytes: blocks from this size on are returned when freed


def return_freed_blocks() -> bool:
    """Have glibc give freed blocks of :data:`HEAP_MMAP_THRESHOLD` or more back to the system.

    glibc serves blocks under its mmap threshold from its heaps, and raises that threshold (up
    to 32 MB) each time a larger block is freed, so the engine's 1-32 MB buffers (features,
    tiles, chunks) end up in heaps that fragment and stay: measured restoring 1024 px planes
    with em-4x on CPU, peak RSS 1589 MB by default, 1322 MB with the threshold fixed at 8 MB,
    at the same speed. Process-wide, so the CLI's restoring commands and the memory benchmark
    call it, not the library (a napari session keeps glibc's defaults). Returns whether it
    applied (glibc only)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3  # glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, HEAP_MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
