"""Writing a lazy array into an existing Zarr array chunk by chunk, resumably: the write run
(its rate/ETA: :class:`napari_decrappify.progress.RateCounter`).

:func:`write_missing_chunks` computes every chunk of one level that has no marker file yet
(``DONE_DIR/<level>/<chunk index>``) and writes it, then its marker, so a rerun after a crash
or a cancel computes only what is missing. Chunks are computed in batches of
``WRITE_BATCH`` (the scheduler's bookkeeping stays bounded), on dask's threads or on the
active dask.distributed Client (:mod:`napari_decrappify.engine.distributed`); progress
(chunks done, megapixels per second, ETA) and cancel are handled in the caller's process.

``WRITE_BATCH`` and ``_zarr_array`` are looked up on the package :mod:`napari_decrappify.io`
at each write, not here: tests and the reliability cases replace them there (small batches,
a disk that fills up), and the write must see the replacement.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..engine.distributed import compute_distributed, distributed_client, in_distributed_worker
from ..progress import RateCounter
from .errors import RestoreCancelled, output_error
from .pyramid import pyramid_block

WRITE_BATCH = 2048  # chunks per dask computation in write_ome_zarr
DONE_DIR = ".decrappify-done"  # inside a store being written: one empty file per finished chunk


class _WriteRun(RateCounter):
    """One call of :func:`write_missing_chunks`: its progress callback and cancel event, and
    the chunks and pixels written so far, from which each progress event's rate and ETA come
    (:class:`~napari_decrappify.progress.RateCounter`, its clock started with the write)."""

    def __init__(self, progress, cancel, total: int):
        super().__init__("chunks", total, progress, cancel)


_WRITE_RUNS: dict[str, _WriteRun] = {}
_ARRAYS: dict[tuple[str, str], object] = {}
_ARRAYS_LOCK = threading.Lock()


def _zarr_array(store: str, level: str):
    """Level ``level`` of ``store``, opened for writing once per process and kept (in
    ``_ARRAYS``) until :func:`forget_arrays`."""
    import zarr

    key = (store, level)
    with _ARRAYS_LOCK:
        arr = _ARRAYS.get(key)
        if arr is None:
            arr = zarr.open_array(os.path.join(store, level), mode="r+")
            _ARRAYS[key] = arr
    return arr


def _write_chunk(block, store: str, level: str, idx: tuple, chunks: tuple, run_id: str, pid: int,
                 pyramid: tuple | None = None):
    """dask task: write one chunk and, with ``pyramid = (axes, levels, labels)``, its block of
    every lower resolution level (:func:`.pyramid.pyramid_block`), then its marker (the marker
    never precedes the data)."""
    import numpy as np

    from . import _zarr_array  # the package's, where it can be replaced (module docstring)

    # progress is reported here only in the caller's process (threads); on distributed
    # workers the caller reports it as futures complete
    run = _WRITE_RUNS.get(run_id) if pid == os.getpid() and not in_distributed_worker() else None
    if run is not None and run.cancel is not None and run.cancel.is_set():
        raise RestoreCancelled("write cancelled")
    region = tuple(slice(i * c, i * c + b) for i, c, b in zip(idx, chunks, block.shape, strict=True))
    marker = os.path.join(store, DONE_DIR, level, ".".join(map(str, idx)))
    try:
        _zarr_array(store, level)[region] = block
        if pyramid is not None:
            axes, levels, labels = pyramid
            for lower in range(1, levels):
                f = 2**lower
                down = pyramid_block(block, axes, lower, labels)
                # the chunk starts on a multiple of 2**lower (the chunks are), so its block
                # lands on whole pixels of the lower level, and no two chunks share one
                where = tuple(slice(r.start // f, r.start // f + n) if a in "YX" else r
                              for r, n, a in zip(region, down.shape, axes, strict=True))
                _zarr_array(store, str(lower))[where] = down
        with open(marker, "wb"):
            pass
    except OSError as e:
        raise output_error(e, Path(store)) from e
    if run is not None:
        run.tick(int(np.prod(block.shape)))
    return np.ones(1, dtype=np.int8)


def write_missing_chunks(data, store: Path, level: str, progress, cancel,
                         pyramid: tuple | None = None) -> None:
    """Compute and write every chunk of ``data`` that has no marker yet (with ``pyramid``,
    each chunk's blocks of the lower resolution levels too: :func:`_write_chunk`)."""
    import uuid

    import dask.array as da
    import numpy as np
    from dask.highlevelgraph import HighLevelGraph

    from . import WRITE_BATCH  # the package's, where it can be replaced (module docstring)

    done_dir = store / DONE_DIR / level
    done_dir.mkdir(parents=True, exist_ok=True)
    finished = set(os.listdir(done_dir))
    chunks = tuple(c[0] for c in data.chunks)
    missing = [idx for idx in np.ndindex(*data.numblocks)
               if ".".join(map(str, idx)) not in finished]
    if not missing:
        return
    run_id = uuid.uuid4().hex
    run = _WriteRun(progress, cancel, total=len(missing))
    _WRITE_RUNS[run_id] = run
    pid = os.getpid()
    client = distributed_client()
    try:
        # in batches: the scheduler's bookkeeping (~1.5 KB per task) stays bounded whatever the
        # size of the image; batches follow the chunk order, so neighbours share input reads
        for start in range(0, len(missing), WRITE_BATCH):
            if cancel is not None and cancel.is_set():
                break
            batch = missing[start:start + WRITE_BATCH]
            name = f"write-ome-zarr-{run_id}-{start}"
            layer = {(name, n): (_write_chunk, (data.name, *idx), str(store), level, idx, chunks,
                                 run_id, pid, pyramid) for n, idx in enumerate(batch)}
            graph = HighLevelGraph.from_collections(name, layer, dependencies=[data])
            out = da.Array(graph, name, chunks=((1,) * len(batch),), dtype=np.int8,
                           meta=np.empty((0,), np.int8))
            if client is None:
                out.compute(scheduler="threads")
            else:
                compute_distributed(client, out, run, cancel, int(np.prod(chunks)))
    except OSError as e:
        raise output_error(e, store) from e
    finally:
        _WRITE_RUNS.pop(run_id, None)
    if cancel is not None and cancel.is_set():
        raise RestoreCancelled("write cancelled")


def forget_arrays(path: Path) -> None:
    """Forget this process's open arrays of the store at ``path``: it is complete, or
    about to be replaced or removed."""
    with _ARRAYS_LOCK:
        for key in [k for k in _ARRAYS if k[0] == str(path)]:
            del _ARRAYS[key]
