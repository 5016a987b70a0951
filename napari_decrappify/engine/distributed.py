"""dask.distributed helpers of the engine and of the writers: which Client is active, whether
this code runs inside a distributed worker, running a graph on a Client with progress and
cancel in the caller's process, and choosing a scheduler for a call (:func:`use_scheduler`).

``distributed`` is never imported here unless the caller already did (or asks for a cluster):
a threads-only run does not pay for it. Nothing here imports the rest of the package at import
time, so :mod:`napari_decrappify.io` can use these helpers too.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager


def distributed_client():
    """The active dask.distributed Client, if any (without importing distributed otherwise)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def in_distributed_worker() -> bool:
    """Whether this code runs in a dask.distributed worker (where the caller's progress
    callbacks and cancel events cannot be reached)."""
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def compute_distributed(client, out, run, cancel, pixels_per_block: int = 0) -> None:
    """Run ``out`` on a distributed Client, reporting progress and honouring ``cancel`` here in
    the caller's process (the tasks run elsewhere and cannot reach the callbacks)."""
    from distributed import as_completed, futures_of

    from ..io import RestoreCancelled

    futures = futures_of(client.persist(out))
    seq = as_completed(futures)
    done = 0
    try:
        while done < len(futures):
            if cancel is not None and cancel.is_set():
                raise RestoreCancelled("cancelled")
            if not seq.has_ready():
                time.sleep(0.02)
                continue
            for f in seq.next_batch(block=False):
                if f.status == "error":
                    f.result()  # re-raises the task's exception here
                done += 1
                if run is not None:
                    run.tick(pixels_per_block)
    except BaseException:
        client.cancel(futures)
        raise


@contextmanager
def use_scheduler(scheduler=None):
    """Context for running dask graphs: yields a distributed ``Client`` or None (threads).

    ``None``: the active Client, if any; ``"threads"``/``"sync"``: no Client; ``"local"``: a
    LocalCluster for the duration (one worker per GPU, else two worker processes); anything
    else: the address of a running scheduler (``tcp://host:8786``), or a ``Client``.
    """
    if scheduler is None:
        yield distributed_client()
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

