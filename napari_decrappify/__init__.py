"""napari-decrappify: crappify, then decrappify.

Headless API (no napari or Qt is imported by this package's core)::

    import napari_decrappify as nd
    model = nd.load_model("em-4x")
    restored = nd.restore(image, model, axes="ZYX")      # lazy dask array
    hr = nd.restore(image, model, axes="ZYX", lazy=False, tile=256)   # numpy array
    lr = nd.crappify(hr_stack, scale=4, seed=0)
    result = nd.train([hr_stack], config, out="my-4x")
    scores = nd.evaluate(restored_plane, ground_truth_plane, normalised=False)  # in input units
    report = nd.check_input(image, model, axes="ZYX")  # intensities, pixel size, out of domain?
    fidelity = nd.lr_consistency(restored, image, model)  # no ground truth needed
    seg = nd.segment(image, "my-segmenter", axes="YX", objects="watershed")  # labels + objects

In a running napari (console, notebook, script), ``napari_decrappify._napari.api`` adds
results as layers: ``add_restored(viewer, viewer.layers["em"], "em-4x")``.

The facade imports nothing heavy until a function is used, so ``import napari_decrappify``
stays fast.
"""

import sys as _sys
import types as _types
import warnings as _warnings

# Two deprecations that fastai triggers inside torch (its layers are decorated with
# torch.jit.script; its PixelShuffle_ICNR weight-norms a conv) and that no user can act on:
# they printed on every CLI run and in the napari console. Only these messages, only from torch.
_warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                         category=FutureWarning, module=r"torch\.jit")
_warnings.filterwarnings("ignore", message=r"`torch\.nn\.utils\.weight_norm` is deprecated",
                         category=FutureWarning, module=r"torch\.nn\.utils")

__version__ = "0.1.0"

__all__ = ["__version__", "check_input", "crappify", "evaluate", "load_model", "lr_consistency",
           "restore", "segment", "train"]

# facade name -> (submodule, attribute), imported on first use (PEP 562)
_LAZY = {
    "load_model": ("models", "load_model"),
    "evaluate": ("metrics", "evaluate"),
}
# Facade names that are also submodule names (``napari_decrappify.train`` is a module AND
# the function ``train.train``). Importing a submodule sets it as a package attribute,
# replacing any function of that name, so instead the submodule itself is made callable:
# ``nd.train(...)`` calls ``napari_decrappify.train.train(...)`` and ``nd.train.TrainConfig``-style
# attribute access keeps working whichever import happened first.
_CALLABLE_SUBMODULES = {"train", "crappify", "segment"}


class _CallableModule(_types.ModuleType):
    """A submodule that is also the facade function of the same name."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(_types.ModuleType):
    def __setattr__(self, name, value):
        # the import system sets each loaded submodule on its parent package: catch it there
        if name in _CALLABLE_SUBMODULES and type(value) is _types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    if name in _CALLABLE_SUBMODULES:
        importlib.import_module(f".{name}", __name__)  # sets (and converts) the attribute
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


def restore(image, model, axes=None, lazy=True, *, progress=None, cancel=None, **tile_options):
    """Restore (denoise / upsample) an image with a model.

    Parameters
    ----------
    image : array-like or path
        numpy, dask or zarr array, or a TIFF file / Zarr / OME-Zarr folder (opened lazily).
    model : RestorationModel, str or path
        A loaded model, a model folder, or the name of a bundled or user model (``"em-4x"``).
    axes : str, optional
        One letter per dimension from ``TCZYX`` ending in ``YX`` (``"ZYX"``); guessed from the
        number of dimensions (or read from the file) when omitted.
    lazy : bool
        True: return a dask array whose tiles are computed when read. False: compute now and
        return a numpy array.
    progress, cancel : optional
        A callable receiving progress events (:class:`~napari_decrappify.progress.RateProgress`,
        read as dicts: ``{"event": "tiles", "done", "total", "mpix_per_s", "eta"}``, from
        worker threads), and a ``threading.Event`` that stops the computation (raising
        :class:`~napari_decrappify.io.RestoreCancelled`).
    **tile_options
        Fields of :class:`~napari_decrappify.config.TileConfig`: ``tile``, ``halo``,
        ``batch_size``, ``device``, ``precision``, ``skip_empty``, ``output_dtype``,
        ``tta``.

    Returns
    -------
    dask.array.Array or numpy.ndarray
        Float32 in the input's intensity units, Y and X scaled by ``model.scale``.
    """
    from . import tiling
    from .config import TileConfig

    config = TileConfig(**tile_options)
    if lazy:
        return tiling.restore_lazy(model, image, config, axes=axes, progress=progress, cancel=cancel)
    return tiling.restore(model, image, config, axes=axes, progress=progress, cancel=cancel)


def check_input(image, model, axes=None, *, pixel_size_mismatch="resample") -> dict:
    """What restoring ``image`` with ``model`` would do, and whether it fits, without restoring.

    Returns
    -------
    dict
        ``normalisation`` (one line), ``input_range`` (the input intensities mapped to the
        model's training percentiles), ``pixel_size`` (the input's and the model's, and the
        action: ``none``, ``resample`` or ``warn``; a ``message``), ``domain`` (the
        out-of-domain check: ``in_domain``, ``findings``, ``message``). Reads the input's
        intensity range and a few hundred small patches; a mismatch under
        ``pixel_size_mismatch="error"`` raises a ValueError.
    """
    from .tiling import restore_image

    meta = restore_image(model, image, axes=axes, pixel_size_mismatch=pixel_size_mismatch).metadata
    return {k: meta[k] for k in ("normalisation", "input_range", "pixel_size", "domain")}


def lr_consistency(restored, lr, model, *, with_map: bool = False) -> dict:
    """How well ``restored`` reproduces its input ``lr`` once degraded like ``model``'s
    training LR (no noise): PSNR / SSIM per plane and mean, and optionally the error map on
    the LR grid. A check without ground truth: see :mod:`napari_decrappify.consistency` for
    what it can and cannot catch."""
    import numpy as np

    from .consistency import model_lr_consistency
    from .models import load_model

    if not hasattr(model, "config"):
        model = load_model(model)
    return model_lr_consistency(model, np.asarray(restored), np.asarray(lr), with_map=with_map)


_sys.modules[__name__].__class__ = _Package
