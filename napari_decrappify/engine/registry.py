"""The model registry: the one cache of loaded models, the models a dask graph refers to, and
their device workers.

A dask graph holds only a small :class:`ModelRef` (registry key + model file): in this process
the model is looked up here (:func:`lookup`); a dask.distributed worker loads it once from its
file. :func:`load_cached` loads a model by folder, package or name once per path while its
files are unchanged (:func:`napari_decrappify.models.model_stamp`); the napari docks use the
same cache. :func:`get_worker` gives the :class:`~.device.DeviceWorker` of a registered model
on a device (one per model and settings); :func:`release` forgets everything.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass

from .device import DeviceWorker


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

_WORKERS: dict[tuple, DeviceWorker] = {}  # (key, device, precision, batch, tta) -> worker
_WORKERS_LOCK = threading.Lock()


def as_model(model):
    """A loaded model from a model object (returned as is), a model folder, a bioimage.io
    package or a bundled / user model name (:func:`load_cached`)."""
    from ..models import RestorationModel

    if isinstance(model, RestorationModel):
        return model
    if isinstance(model, str | os.PathLike):
        return load_cached(model)
    raise TypeError(f"model must be a RestorationModel, a model folder or a model name, got "
                    f"{type(model).__name__}")


def _stamped(name_or_path) -> tuple[str, tuple]:
    """The cache key of a model (its resolved path) and what says it is stale
    (:func:`models.model_stamp`: the time and size of its files)."""
    from ..models import model_stamp, resolve_model_path

    folder = resolve_model_path(name_or_path).resolve()
    return str(folder), model_stamp(folder)  # a package's zip: its own time and size


def load_cached(name_or_path, *, release_stale: bool = True):
    """The model of a folder, package or name, loaded once per path while its files are unchanged.

    The package's one cache of loaded models: the engine (a model given by name or path) and
    the napari docks (:func:`napari_decrappify._napari.api.resolve_model`) share it. Every
    registered model keeps a device thread and a private copy of its network: a fresh load per
    call (one call per file in a batch script) would add both each time. A folder whose
    ``model.json`` or weights changed, or a package zip exported anew at the same path (size or
    modification time, :func:`models.model_stamp`), is loaded again; the cache holds one
    version per path.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A model folder, a bioimage.io package (``*.zip``) or a bundled / user model name.
    release_stale : bool
        When a changed model replaces its older version in the cache, forget the old model
        object too (:func:`forget_model`: its device workers stop and its lazy results reload
        it from its folder). False only drops it from the cache: lazy results made from it
        still run (the docks' layers).

    Returns
    -------
    RestorationModel
        The loaded model. A hit is returned without waiting for another model being loaded
        in another thread; two threads asking for the same changed model share one load.
    """
    from ..models import load_model

    key, stamp = _stamped(name_or_path)
    hit = _LOADED.get(key)  # no lock: a dict read is atomic, and a load may hold it
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with _LOADED_LOCK:  # held while loading: two threads asking at once share one load
        hit = _LOADED.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        model = load_model(key)
        _LOADED[key] = (stamp, model)
    if hit is not None and release_stale:
        forget_model(hit[1])
    return model


def loaded(name_or_path):
    """The cached model of a folder, package or name if it is loaded and its files are
    unchanged, else ``None``; never loads (a dock then loads it in a worker)."""
    key, stamp = _stamped(name_or_path)
    hit = _LOADED.get(key)  # no lock: a worker may hold it while loading
    return hit[1] if hit is not None and hit[0] == stamp else None


def forget_model(model) -> None:
    """Unregister a model object (its lazy results then reload it from its folder)."""
    with _MODELS_LOCK:
        seen = _VERSIONS.pop(id(model), None)
    if seen is not None:
        _forget(seen[1])


def register(model, need_file: bool) -> ModelRef:
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
            from ..models import save_model

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


def lookup(ref: ModelRef):
    """The registered model of ``ref`` (loaded from its file in a process that lacks it)."""
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
            from ..models import load_model

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


def get_worker(ref: ModelRef, device: str = "auto", precision: str = "auto",
               batch_size: int = 0, tta: bool = False) -> DeviceWorker:
    """The device worker of a registered model in this process (created on first use)."""
    key = (ref.key, device, precision, batch_size, bool(tta))
    w = _WORKERS.get(key)
    if w is None:
        with _WORKERS_LOCK:
            w = _WORKERS.get(key)
            if w is None:
                w = DeviceWorker(lookup(ref), device, precision, batch_size, tta=tta)
                _WORKERS[key] = w
    return w
