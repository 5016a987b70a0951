"""npe2 reader: TIFF stacks and OME-Zarr stores, opened lazily (dask) with physical metadata.

Pixel sizes, origins and units come from :func:`napari_decrappify.io.open_image`: the OME-Zarr
``multiscales`` metadata, or for TIFF OME-XML (``PhysicalSizeX`` ...) or ImageJ tags
(``XResolution``, ``spacing``, ``unit``), so the CLI, scripts and napari agree. OME-Zarr
stores with several resolution levels open as a multiscale layer: napari then only reads the
tiles on screen at the resolution the zoom needs.
"""

from __future__ import annotations

from pathlib import Path

from .. import io
from ._layers import image_tuple

TIFF_SUFFIXES = (".tif", ".tiff")


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zattrs", ".zarray",
                                                                 ".zgroup"))


def get_reader(path):
    """Return :func:`read` for a TIFF file or a Zarr / OME-Zarr folder, else ``None``."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES and p.is_file():
        return read
    if _is_zarr(p):
        return read
    return None


def read(path):
    """Read ``path`` into a list with one lazy image ``LayerDataTuple``."""
    if isinstance(path, list | tuple):
        path = path[0]
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES:
        return [image_tuple(io.open_image(p))]
    image = io.open_image(p)
    levels = _zarr_levels(p)
    if len(levels) > 1:
        _, kwargs, kind = image_tuple(image, multiscale=True)
        return [(levels, kwargs, kind)]
    return [image_tuple(image)]


def _zarr_levels(path: Path) -> list:
    """All resolution levels of an OME-Zarr image (one entry for a plain array)."""
    import dask.array as da
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return [da.from_zarr(node)]
    attrs = dict(node.attrs)
    ms = io.ome_attributes(attrs).get("multiscales") or []
    if not ms:
        return []
    return [da.from_zarr(node[ds["path"]]) for ds in ms[0]["datasets"]]
