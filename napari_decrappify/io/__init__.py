"""Reading images lazily with their physical metadata, writing results to OME-Zarr and
OME-TIFF, and the geometry of upsampled results.

Physical space: a layer with pixel size ``s`` and origin ``t`` (centre of the first pixel),
upsampled by ``f`` (LR pixels made of ``f x f`` HR block means) has pixel size ``s / f`` and
origin ``t + 0.5 * s * (1 / f - 1)`` on Y and X; other axes are unchanged. LR, restored and HR
layers then overlay exactly.

Modules, one concern each (import the names from here, this package, as before the split):

- :mod:`.image`: :class:`ImageData`, axes (:func:`check_axes`, :func:`guess_axes`) and the
  geometry of upsampled and block-mean downsampled images (:func:`upscale_geometry`,
  :func:`downscale_geometry`).
- :mod:`.errors`: :class:`RestoreCancelled`, :class:`OutputError`.
- :mod:`.reading`: :func:`open_image` (numpy, dask, zarr, TIFF, Zarr / OME-Zarr, lazily).
- :mod:`.ngff`: the OME-NGFF metadata vocabulary (:func:`ngff_unit`, :func:`ome_attributes`).
- :mod:`.outputs`: where a result may be written and how it lands safely
  (:func:`output_lock`, :func:`write_text_atomic`, never over its own input).
- :mod:`.chunk_writing`: the resumable chunk-by-chunk write run, with its progress (rate, ETA)
  and cancel, on threads or a dask.distributed Client.
- :mod:`.ome_zarr`: :func:`write_ome_zarr` (streaming, resumable, NGFF 0.5).
- :mod:`.pyramid`: its multiscale levels (:func:`auto_levels`, :func:`pyramid_block`), written
  with each full-resolution chunk.
- :mod:`.ome_tiff`: :func:`write_tiff` (OME-TIFF, plane by plane).

``WRITE_BATCH`` and ``_zarr_array`` are read from this package at each write: replace them
here (tests shrink the batches and simulate a full disk that way).
"""

from __future__ import annotations

# tests patch os.access through ``io.os`` (a read-only location), as they did io.py's
import os  # noqa: F401

from .chunk_writing import (
    DONE_DIR,
    WRITE_BATCH,
    _zarr_array,  # noqa: F401 - replaced here by tests (a full disk)
)
from .errors import OutputError, RestoreCancelled
from .image import (
    AXES_CHARS,
    NGFF_ORDER,
    ImageData,
    check_axes,
    downscale_geometry,
    guess_axes,
    upscale_geometry,
)
from .ngff import ngff_unit, ome_attributes
from .ome_tiff import MAX_TIFF_PLANE, write_tiff
from .ome_zarr import write_ome_zarr
from .outputs import output_lock, write_text_atomic
from .pyramid import MAX_AUTO_LEVELS, MIN_LEVEL_CHUNK, auto_levels, pyramid_block
from .reading import (
    _tifffile_complaints,  # noqa: F401 - the reliability cases use it
    open_image,
)

__all__ = [
    "AXES_CHARS", "DONE_DIR", "MAX_AUTO_LEVELS", "MAX_TIFF_PLANE", "MIN_LEVEL_CHUNK",
    "NGFF_ORDER", "WRITE_BATCH", "ImageData",
    "OutputError", "RestoreCancelled", "check_axes", "downscale_geometry", "guess_axes",
    "auto_levels", "ngff_unit", "ome_attributes", "open_image", "output_lock", "pyramid_block",
    "upscale_geometry",
    "write_ome_zarr", "write_text_atomic", "write_tiff",
]
