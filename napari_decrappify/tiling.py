"""Former home of the tiled inference engine, kept so that ``from napari_decrappify.tiling
import restore_lazy`` and friends keep working: the engine now lives in
:mod:`napari_decrappify.engine`, one module per concern (geometry, registry, device, graph,
restore, distributed). This module only re-exports its public names.

Patching a name here (``mock.patch("napari_decrappify.tiling.X")``) does not change what the
engine calls: patch the module that defines it.
"""

from __future__ import annotations

# the configs and image type the module imported: scripts and tests import them from here too
from .config import NormConfig, TileConfig  # noqa: F401
from .engine.device import (
    DIHEDRAL,
    DeviceWorker,
    cpu_has_native_bf16,
    resolve_device,
    resolve_precision,
)
from .engine.distributed import use_scheduler
from .engine.geometry import ALIGN, AxisTiling, default_tile, output_axes, reflect_index, tile_axis
from .engine.registry import ModelRef, get_worker, load_cached, release
from .engine.registry import as_model as _as_model  # noqa: F401 - segment.prediction uses it
from .engine.restore import restore, restore_image, restore_lazy, restore_whole
from .io import ImageData, RestoreCancelled  # noqa: F401

__all__ = [
    "ALIGN", "DIHEDRAL", "AxisTiling", "DeviceWorker", "ModelRef", "RestoreCancelled",
    "cpu_has_native_bf16", "default_tile", "get_worker", "load_cached", "output_axes",
    "reflect_index", "release", "resolve_device", "resolve_precision", "restore",
    "restore_image", "restore_lazy", "restore_whole", "tile_axis", "use_scheduler",
]
