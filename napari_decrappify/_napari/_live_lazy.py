"""Lazy results that never block napari: cheap reads in the UI thread, tiles in the background.

A lazy restored result is a dask array whose chunks are restored tiles (:mod:`..tiling`).
Given to napari as it is, napari computes the tiles on screen in its UI thread: seconds frozen
per plane with a real model. :class:`LiveArray` wraps such an array for a layer:

* **Reads in napari's UI thread never compute.** They return the finished tiles (cached) and,
  where a tile is not finished, a placeholder: the block's bicubic preview once a background
  thread has made it (tens of milliseconds, in a thread of its own so that it never waits for a
  tile), and before that a nearest-neighbour upsampling of the input computed on the spot (a
  copy). Each such read also tells the background threads what is on screen now: those tiles
  are computed next, the one nearest the view's centre first; what was asked before and is no
  longer visible is dropped (a tile already running finishes and is cached). The background
  threads run at a lower CPU priority (:func:`_lower_priority`).
* **Reads in any other thread are exact** (a worker scoring the stack, writing OME-Zarr, an
  error map built on top; or any thread through :func:`as_dask`): the missing tiles are
  computed there, through the same cache, and a tile that another thread is computing is
  waited for, not computed twice.
* **Finished tiles are cached** (least recently used, bounded in bytes), so going back to a
  plane is instant, and a listener (:func:`bind`) refreshes the layer from the UI thread when
  tiles arrive (coalesced, at most every :data:`REFRESH_S` seconds).

The numbers are the engine's: a tile is ``source.blocks[index]`` computed by dask, exactly what
``np.asarray(source)`` or :func:`napari_decrappify.tiling.restore` gives.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

CACHE_BYTES = 512 * 2**20  # finished tiles kept per array (bytes)
PREVIEW_BYTES = 256 * 2**20  # bicubic previews kept per array (bytes)
REFRESH_S = 0.15  # at most one layer refresh per this many seconds while tiles arrive
NICE = 10  # CPU priority of the background work (Linux nice; 0 is the UI thread's)


def in_ui_thread() -> bool:
    """Whether the caller is napari's UI thread (Qt's, the process's main thread)."""
    return threading.current_thread() is threading.main_thread()


class _Lru:
    """A dict bounded in bytes, least recently used first out. Not thread-safe by itself."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.nbytes = int(max_bytes), 0
        self._items: OrderedDict = OrderedDict()

    def get(self, key):
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key, value: np.ndarray) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self._items[key] = value
        self.nbytes += value.nbytes
        while self.nbytes > self.max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self.nbytes -= dropped.nbytes

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class LiveArray:
    """A dask array made safe for napari's UI thread (module doc).

    Parameters
    ----------
    source : dask.array.Array
        The exact lazy result; its chunks are the units of work (a restored tile each).
    preview : callable, optional
        ``preview(region) -> ndarray``: a cheap approximation of the ``region`` (a tuple of
        ``(start, stop)`` per axis) in ``source``'s dtype-compatible values, computed in the
        background before the exact tiles (e.g. the bicubic upsampling of the input).
    quick : callable, optional
        The same for the UI thread, where it must cost no more than a copy (e.g. nearest-
        neighbour upsampling); zeros when not given.
    describe : str
        What the placeholder is, for status lines (``"bicubic upsampling of the input"``).
    cache_bytes : int
        Bound on the finished tiles kept.
    """

    def __init__(self, source, preview: Callable | None = None, quick: Callable | None = None,
                 *, describe: str = "", cache_bytes: int = CACHE_BYTES):
        self.source = source
        self.shape = tuple(int(s) for s in source.shape)
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))
        self.chunks = tuple(tuple(int(c) for c in cs) for cs in source.chunks)
        self.preview, self.quick, self.placeholder = preview, quick, describe
        self._edges = [list(itertools.accumulate(cs, initial=0)) for cs in self.chunks]
        self._cache = _Lru(cache_bytes)
        self._previews = _Lru(PREVIEW_BYTES)
        self._lock = threading.Lock()
        self._inflight: dict[tuple, threading.Event] = {}
        self._listeners: list[Callable[[], None]] = []
        self.wanted: list[tuple] = []  # tiles on screen, nearest the view's centre first
        self.view: tuple | None = None  # the region last read in the UI thread
        self._paused: tuple | None = None  # a region whose tiles were cancelled
        self._no_preview: set[tuple] = set()  # blocks whose preview failed (not tried again)
        self.computed = 0  # tiles computed (tests, bench)
        self.seconds = 0.0  # time spent computing them
        self.error: BaseException | None = None  # the last tile's error (shown by the dock)

    # -- array protocol (what napari and numpy use)
    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> _View:
        return _View(self, _full(self.shape))[key]

    def __array__(self, dtype=None, copy=None):
        out = self.read(_full(self.shape))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LiveArray(shape={self.shape}, dtype={self.dtype}, chunks of {self.source.name})"

    # -- state
    @property
    def idle(self) -> bool:
        """Nothing on screen left to compute (and nothing being computed for the screen)."""
        with self._lock:
            return not self.wanted

    def visible_progress(self) -> tuple[int, int]:
        """``(finished, total)`` tiles of what was last on screen."""
        with self._lock:
            if self.view is None:
                return 0, 0
            blocks = self._blocks(self.view)
            return sum(b in self._cache for b in blocks), len(blocks)

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from the background thread) when a tile or preview arrives, or
        what is wanted changes."""
        self._listeners.append(callback)

    def cancel(self) -> None:
        """Forget what is wanted, until another region is viewed (the tile already running
        still finishes and is cached)."""
        with self._lock:
            self.wanted = []
            self._paused = self.view
        self._notify()

    def finished(self, index) -> bool:
        """Whether the tile at block ``index`` is computed and cached."""
        with self._lock:
            return tuple(index) in self._cache

    # -- reading
    def read(self, region: tuple[tuple[int, int], ...], drop: tuple[int, ...] = ()) -> np.ndarray:
        """The values of ``region`` (``(start, stop)`` per axis; axes in ``drop`` have size 1
        and are removed): cheap in the UI thread (module doc), exact elsewhere."""
        if in_ui_thread():
            out = self._read_cheap(region)
        else:
            out = self._read_exact(region)
        return out.reshape([n for i, n in enumerate(out.shape) if i not in drop])

    def _blocks(self, region) -> list[tuple]:
        ranges = []
        for (lo, hi), edges in zip(region, self._edges, strict=True):
            if hi <= lo:
                return []
            ranges.append(range(bisect.bisect_right(edges, lo) - 1, bisect.bisect_left(edges, hi)))
        return list(itertools.product(*ranges))

    def _block_region(self, b) -> tuple[tuple[int, int], ...]:
        return tuple((e[k], e[k + 1]) for e, k in zip(self._edges, b, strict=True))

    def _paste(self, out, region, b, data) -> None:
        """Copy block ``b``'s ``data`` where it overlaps ``region`` into ``out``."""
        src, dst = [], []
        for (lo, hi), (blo, bhi) in zip(region, self._block_region(b), strict=True):
            a, z = max(lo, blo), min(hi, bhi)
            src.append(slice(a - blo, z - blo))
            dst.append(slice(a - lo, z - lo))
        out[tuple(dst)] = data[tuple(src)]

    def _read_cheap(self, region) -> np.ndarray:
        shape = tuple(hi - lo for lo, hi in region)
        blocks = self._blocks(region)
        with self._lock:
            ready = {b: self._cache.get(b) for b in blocks}
            missing = [b for b, v in ready.items() if v is None]
            previews = {b: self._previews.get(b) for b in missing}
        out = None
        if missing and self.quick is not None and any(v is None for v in previews.values()):
            out = np.array(self.quick(region), dtype=self.dtype, copy=True).reshape(shape)
        if out is None:
            out = np.zeros(shape, self.dtype)
        for b in blocks:
            data = ready[b] if ready[b] is not None else previews.get(b)
            if data is not None:
                self._paste(out, region, b, data)
        self._want(region, missing)
        return out

    def _want(self, region, missing: list[tuple]) -> None:
        """What is on screen now: its missing tiles replace what was wanted before, the ones
        nearest the centre of the view first."""
        centre = [(lo + hi) / 2 for lo, hi in region]

        def distance(b):
            return sum(((lo + hi) / 2 - c) ** 2 for (lo, hi), c in zip(self._block_region(b),
                                                                       centre, strict=True))

        with self._lock:
            if region == self._paused:
                missing = []  # cancelled: refreshes of the same view do not restart it
            else:
                self._paused = None
            changed = region != self.view or missing != self.wanted
            self.view = region
            self.wanted = sorted(missing, key=distance)
        if changed:
            if missing:
                _scheduler().poke(self)
            self._notify()

    def _read_exact(self, region) -> np.ndarray:
        out = np.empty(tuple(hi - lo for lo, hi in region), self.dtype)
        for b in self._blocks(region):
            self._paste(out, region, b, self.tile(b))
        return out

    # -- computing
    def tile(self, b: tuple) -> np.ndarray:
        """Block ``b`` exactly: from the cache, else computed here (or waited for when another
        thread is computing it). Never call it from the UI thread."""
        while True:
            with self._lock:
                data = self._cache.get(b)
                if data is not None:
                    return data
                running = self._inflight.get(b)
                if running is None:
                    running = self._inflight[b] = threading.Event()
                    mine = True
                else:
                    mine = False
            if not mine:
                running.wait()
                continue  # cached now (or failed there: then computed here)
            try:
                t0 = time.perf_counter()
                data = np.asarray(self.source.blocks[b].compute(scheduler="sync"))
                data = data.astype(self.dtype, copy=False)
                with self._lock:
                    self._cache.put(b, data)
                    self.computed += 1
                    self.seconds += time.perf_counter() - t0
                    if b in self.wanted:
                        self.wanted.remove(b)
                return data
            finally:
                with self._lock:
                    self._inflight.pop(b, None)
                running.set()
                self._notify()

    def _make_preview(self, b) -> bool:
        """The block's preview (background thread); False when there is none to make."""
        if self.preview is None:
            return False
        with self._lock:
            if b in self._previews or b in self._cache:
                return False
        data = np.asarray(self.preview(self._block_region(b)), dtype=self.dtype)
        with self._lock:
            self._previews.put(b, data.reshape(tuple(hi - lo for lo, hi in self._block_region(b))))
        self._notify()
        return True

    def _next(self, kind: str):
        """The next block wanted on screen that needs a ``"preview"`` or a ``"tile"``, or None."""
        with self._lock:
            if kind == "preview":
                if self.preview is None:
                    return None
                return next((b for b in self.wanted if b not in self._previews
                             and b not in self._no_preview), None)
            return next((b for b in self.wanted if b not in self._inflight), None)

    def _notify(self) -> None:
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a dead layer's listener must not stop the others
                pass


def _full(shape) -> tuple[tuple[int, int], ...]:
    return tuple((0, n) for n in shape)


class _View:
    """``live[index]`` without reading: slicing composes, ``np.asarray`` reads (napari first
    slices the field of view on every axis, then picks the plane)."""

    def __init__(self, base: LiveArray, region, drop: tuple[int, ...] = ()):
        self.base, self.region, self.drop = base, tuple(region), tuple(drop)
        self.shape = tuple(hi - lo for i, (lo, hi) in enumerate(self.region) if i not in self.drop)
        self.dtype, self.ndim = base.dtype, len(self.shape)
        self.size = int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> _View | np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        if len(key) > self.ndim or not all(isinstance(k, slice | int | np.integer) for k in key):
            return np.asarray(self)[key]  # fancy indexing: read, then index
        key = key + (slice(None),) * (self.ndim - len(key))
        region, drop = list(self.region), list(self.drop)
        kept = [i for i in range(len(region)) if i not in self.drop]
        for i, k in zip(kept, key, strict=True):
            lo, hi = region[i]
            if isinstance(k, slice):
                start, stop, step = k.indices(hi - lo)
                if step != 1:
                    return np.asarray(self)[key]
                region[i] = (lo + start, lo + max(start, stop))
            else:
                k = int(k) + (hi - lo if k < 0 else 0)
                if not 0 <= k < hi - lo:
                    raise IndexError(f"index {k} is out of bounds for size {hi - lo}")
                region[i] = (lo + k, lo + k + 1)
                drop.append(i)
        return _View(self.base, region, tuple(sorted(drop)))

    def __array__(self, dtype=None, copy=None):
        out = self.base.read(self.region, self.drop)
        return out if dtype is None else out.astype(dtype, copy=False)


class _Scheduler:
    """Two background threads for every live array, the array read most recently in the UI
    thread first: one makes the previews (tens of milliseconds each), one the tiles (seconds
    each with a real model), so that a new plane's preview never waits for a tile."""

    def __init__(self):
        self._order: list[weakref.ref] = []  # most recent last
        self._wake = threading.Condition()
        for kind in ("preview", "tile"):
            threading.Thread(target=self._loop, args=(kind,), name=f"decrappify-live-{kind}",
                             daemon=True).start()

    def poke(self, live: LiveArray) -> None:
        with self._wake:
            self._order = [r for r in self._order if r() is not None and r() is not live]
            self._order.append(weakref.ref(live))
            self._wake.notify_all()

    def _job(self, kind: str):
        with self._wake:
            refs = list(reversed(self._order))
        for ref in refs:
            live = ref()
            if live is None:
                continue
            b = live._next(kind)
            if b is not None:
                return live, b
        return None

    def _loop(self, kind: str) -> None:
        _lower_priority()
        while True:
            found = self._job(kind)
            if found is None:
                with self._wake:
                    self._wake.wait(timeout=1.0)
                continue
            live, b = found
            try:
                if kind == "preview":
                    live._make_preview(b)
                else:
                    live.tile(b)
            except Exception as e:  # noqa: BLE001 - shown by the layer's owner; never stop
                with live._lock:
                    if kind == "preview":
                        live._no_preview.add(b)  # the tile still comes
                    else:
                        live.error = e
                        if b in live.wanted:
                            live.wanted.remove(b)
                live._notify()
            del live


def _lower_priority() -> None:
    """Run this thread (and the threads it starts: the device worker and its torch threads,
    when the first tile is computed by the tile thread) at a lower CPU priority (Linux ``nice``
    :data:`NICE`): on a busy 2-core machine the network's threads otherwise take the cores
    napari's UI thread needs to repaint. Idle cores still go to them: nothing is slower when
    napari has nothing to do."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority
        pass


_SCHEDULER: _Scheduler | None = None
_SCHEDULER_LOCK = threading.Lock()


def _scheduler() -> _Scheduler:
    global _SCHEDULER
    with _SCHEDULER_LOCK:
        if _SCHEDULER is None:
            _SCHEDULER = _Scheduler()
        return _SCHEDULER


# --------------------------------------------------------------------------- placeholders


def _lr_region(region, lr_ndim: int, scale: int, margin: int):
    """The input region (and output offsets) under an output ``region``: the leading axes
    (an output C axis in front of the input's axes is dropped), Y and X divided by the scale."""
    lead = region[len(region) - lr_ndim:-2]
    (y0, y1), (x0, x1) = region[-2:]
    ly0, lx0 = y0 // scale - margin, x0 // scale - margin
    ly1, lx1 = -(-y1 // scale) + margin, -(-x1 // scale) + margin
    return lead, (ly0, ly1, lx0, lx1), (y0 - ly0 * scale, x0 - lx0 * scale)


def _read_lr(lr, lead, box) -> np.ndarray:
    """``lr`` at the leading ``lead`` ranges and the Y, X ``box``, clipped to the image and
    padded by edge replication where the box sticks out."""
    ly0, ly1, lx0, lx1 = box
    h, w = lr.shape[-2:]
    sel = tuple(slice(lo, hi) for lo, hi in lead) + (slice(max(ly0, 0), min(ly1, h)),
                                                     slice(max(lx0, 0), min(lx1, w)))
    data = np.asarray(lr[sel], dtype=np.float32)
    pad = [(0, 0)] * (data.ndim - 2) + [(max(-ly0, 0), max(ly1 - h, 0)),
                                        (max(-lx0, 0), max(lx1 - w, 0))]
    return np.pad(data, pad, mode="edge") if any(p != (0, 0) for p in pad) else data


def upsampled_input(lr, scale: int, out_ndim: int) -> tuple[Callable, Callable]:
    """``(preview, quick)`` placeholders of a restored result from its input ``lr``: the bicubic
    upsampling (``skimage`` order 3, as the scores' baseline) of the region's input with a
    margin, and the nearest-neighbour one (a copy, for the UI thread). An output with a C axis
    in front that the input lacks gets the same values in every channel."""
    extra = out_ndim - len(lr.shape)

    def shape_of(region):
        return tuple(hi - lo for lo, hi in region)

    def quick(region):
        lead, box, (oy, ox) = _lr_region(region, len(lr.shape), scale, 0)
        data = _read_lr(lr, lead, box)
        (y0, y1), (x0, x1) = region[-2:]
        iy = (np.arange(y0, y1) - y0 + oy) // scale
        ix = (np.arange(x0, x1) - x0 + ox) // scale
        out = data[..., iy[:, None], ix[None, :]]
        return np.broadcast_to(out.reshape((1,) * extra + out.shape), shape_of(region))

    def preview(region):
        from skimage.transform import resize

        margin = 3
        lead, box, (oy, ox) = _lr_region(region, len(lr.shape), scale, margin)
        data = _read_lr(lr, lead, box)
        planes = data.reshape((-1,) + data.shape[-2:])
        shape = (data.shape[-2] * scale, data.shape[-1] * scale)
        # plane by plane: a spline over the size-1 leading axes too cost ~8x (0.26 s a plane)
        up = np.stack([resize(p, shape, order=3, mode="reflect", anti_aliasing=False)
                       for p in planes]).reshape(data.shape[:-2] + shape)
        (y0, y1), (x0, x1) = region[-2:]
        out = up[..., oy:oy + y1 - y0, ox:ox + x1 - x0]
        return np.broadcast_to(out.reshape((1,) * extra + out.shape), shape_of(region))

    return preview, quick


# --------------------------------------------------------------------------- napari binding


def _unwrap(obj):
    """The object itself behind napari's ``PublicOnlyProxy``: a dock gets a proxied viewer, so
    ``layer.data`` read through it is a proxy of our own array, and our use of its private
    members warns (FutureWarning; "unavailable no earlier than 0.10.0")."""
    return getattr(obj, "__wrapped__", obj) if not isinstance(obj, np.ndarray) else obj


def bind(layer, live: LiveArray) -> None:
    """Refresh ``layer`` from the UI thread when ``live`` gets tiles or previews (coalesced to
    one refresh per :data:`REFRESH_S`). The layer is held weakly: once it is removed from the
    viewer (or shows other data), nothing more happens."""
    live = _unwrap(live)
    bridge = _bridge_class()(layer)
    live.on_change(bridge.changed.emit)  # emitted in the background thread, queued to the UI's
    live._bridges = [*getattr(live, "_bridges", []), bridge]  # live as long as the array


@functools.lru_cache(maxsize=1)
def _bridge_class():
    from qtpy.QtCore import QObject, QTimer, Signal, Slot

    class _Bridge(QObject):
        """Created in the UI thread: its slot runs there, whatever thread emits ``changed``."""

        changed = Signal()

        def __init__(self, layer):
            super().__init__()
            self.layer = weakref.ref(layer)
            self.last, self.pending = 0.0, False
            self.changed.connect(self._changed)

        @Slot()
        def _changed(self):
            if self.pending:
                return
            self.pending = True
            wait = max(0.0, REFRESH_S - (time.monotonic() - self.last))
            QTimer.singleShot(int(wait * 1000), self._refresh)

        def _refresh(self):
            self.pending = False
            layer = self.layer()
            if layer is None or live_of(layer) is None:
                return
            self.last = time.monotonic()
            layer.refresh(thumbnail=False, highlight=False, extent=False)

    return _Bridge


def live_of(layer) -> LiveArray | None:
    """The :class:`LiveArray` a layer shows (its full-resolution data), if any."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return _unwrap(data) if isinstance(data, LiveArray) else None


def as_dask(data):
    """What a worker computes from: a live array as a dask array whose chunks are its tiles,
    read exactly through its cache (tiles already on screen are not computed again, and the
    ones computed here are shown); anything else as it is."""
    if not isinstance(data, LiveArray):
        return data
    import dask.array as da

    data = _unwrap(data)
    return da.from_array(_Exact(data), chunks=data.chunks, name=f"live-{data.source.name}",
                         asarray=False, lock=False, meta=np.empty((0,) * data.ndim, data.dtype))


class _Exact:
    """A live array read exactly in any thread (for :func:`as_dask`'s chunks)."""

    def __init__(self, live: LiveArray):
        self.live, self.shape, self.dtype, self.ndim = live, live.shape, live.dtype, live.ndim

    def __getitem__(self, key) -> np.ndarray:
        view = self.live[key]
        if isinstance(view, np.ndarray):
            return view
        return self.live._read_exact(view.region).reshape(view.shape)


def view_values(live: LiveArray) -> np.ndarray | None:
    """The values of the tiles last on screen, flattened, once all of them are finished; None
    until then (or when nothing was viewed). Computes nothing: a contrast set from the data
    reads what the background threads made for the screen."""
    live = _unwrap(live)
    with live._lock:
        if live.view is None:
            return None
        tiles = [live._cache.get(b) for b in live._blocks(live.view)]
    if not tiles or any(t is None for t in tiles):
        return None
    return np.concatenate([t.ravel() for t in tiles])


def status_text(live: LiveArray) -> str:
    """``"view: 1 of 4 tiles restored (rest: bicubic ...), 2.9 s per tile"`` or ``""``."""
    done, total = live.visible_progress()
    if total == 0:
        return ""
    if live.error is not None and not live.idle:
        return f"⚠ a tile failed: {live.error}"
    if done == total:
        return f"view: all {total} tile{'s' if total > 1 else ''} restored"
    text = f"view: {done} of {total} tiles restored"
    if live.placeholder:
        text += f" (the rest shows the {live.placeholder} until then)"
    if live.computed:
        per = live.seconds / live.computed
        text += f", ~{per:.1f} s per tile, ETA {per * (total - done):.0f} s"
    return text
