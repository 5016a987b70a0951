"""Writing OME-TIFF: :func:`write_tiff` writes a (lazy) array one plane at a time (bounded
memory), with its pixel sizes in OME unit symbols and its origin as plane positions, which
:func:`~napari_decrappify.io.open_image` reads back. The file is written under a ``.part``
name and renamed when complete: a cancelled or failed write never leaves a file that looks
finished. Not resumable: OME-Zarr (:mod:`~napari_decrappify.io.ome_zarr`) is, for big results.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..engine.distributed import distributed_client
from ..progress import RateCounter
from ..tiff_metadata import ome_unit, unit_name
from .errors import RestoreCancelled, output_error
from .image import check_axes, ngff_axis_order, unpack_image
from .outputs import check_writable, exclusive_output

MAX_TIFF_PLANE = 2**30  # bytes of one plane that write_tiff holds in memory at most


@exclusive_output
def write_tiff(path, data, *, axes: str | None = None, scale=None, translate=None, units=None,
               overwrite: bool = False, progress=None, cancel=None) -> Path:
    """Write a (lazy) array to an OME-TIFF one plane at a time (bounded memory).

    The file is written as ``path + ".part"`` and renamed when complete, so a cancelled or
    failed write never leaves a file that looks finished. Not resumable: use OME-Zarr for big
    results.

    Parameters
    ----------
    path : str or Path
        The ``.tif`` file to create.
    data : dask.array.Array, numpy array or ImageData
        What to write (planes are computed one at a time). With an :class:`ImageData`, its
        axes and geometry are the defaults.
    axes : str
        Axes of ``data`` (``"ZYX"``...); written in OME order (T, C, Z, Y, X).
    scale, translate, units : sequences, one entry per axis, optional
        Pixel size (OME ``PhysicalSizeX/Y/Z``, ``TimeIncrement`` for T), origin (OME ``Plane
        PositionX/Y/Z``: each plane's position, read back by :func:`open_image` as the
        translate; the origin in time is not stored) and units (written as OME symbols:
        ``"nm"``, ``"µm"``, ``"Å"``...). A pixel size in ``pixel`` units is stored with the
        OME unit ``pixel`` (omitted when it is 1, except on a one-plane Z axis, which would
        otherwise read back as a 2-D image): OME's default would read it as micrometres.
        A unit with no OME equivalent is not stored (with a warning).
    overwrite : bool
        Replace an existing file.
    progress : callable, optional
        Receives a :class:`~napari_decrappify.progress.RateProgress` after each plane (read as
        ``{"event": "planes", "done", "total", "mpix_per_s", "eta"}``).
    cancel : threading.Event, optional
        Set it to stop; raises :class:`RestoreCancelled` and leaves no file.

    Returns
    -------
    Path
        The written file.
    """
    import dask.array as da
    import numpy as np
    import tifffile

    path = Path(path)
    data, axes, scale, translate, units, _ = unpack_image(data, axes, scale, translate, units)
    if not isinstance(data, da.Array):
        data = da.asarray(data)
    if axes is None:
        raise ValueError("write_tiff needs the axes of the data (axes='ZYX'...)")
    axes = check_axes(axes, data.ndim)
    n = data.ndim
    scale = [float(v) for v in (scale if scale is not None else (1.0,) * n)]
    translate = [float(v) for v in (translate if translate is not None else (0.0,) * n)]
    units = [str(u) for u in (units if units is not None else ("pixel",) * n)]
    for label, v in (("scale", scale), ("translate", translate), ("units", units)):
        if len(v) != n:
            raise ValueError(f"{label} has {len(v)} values for a {n}-D image with axes {axes!r}")
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"output {path} exists: pass overwrite=True (--overwrite) to replace it")
        if path.is_dir():
            raise FileExistsError(f"output {path} is a folder: refusing to replace it with a TIFF")
    plane_bytes = int(np.prod(data.shape[-2:], dtype=np.int64)) * np.dtype(data.dtype).itemsize
    if plane_bytes > MAX_TIFF_PLANE:
        # a TIFF is written a whole plane at a time: memory would follow the plane's size
        raise ValueError(f"one plane of {path.name} would take {plane_bytes / 2**30:.1f} GiB in "
                         "memory as a TIFF is written (plane by plane): write an OME-Zarr "
                         "(.zarr) instead, which is written chunk by chunk")
    check_writable(path)
    ngff_axes, order = ngff_axis_order(axes)
    data = data.transpose(order)
    scale, translate, units = ([v[i] for i in order] for v in (scale, translate, units))
    lead = data.shape[:-2]
    total = int(np.prod(lead)) if lead else 1
    counter = RateCounter("planes", total, progress, cancel)
    plane_pixels = int(np.prod(data.shape[-2:], dtype=np.int64))

    def planes():
        for idx in np.ndindex(*lead) if lead else [()]:
            if cancel is not None and cancel.is_set():
                raise RestoreCancelled("write cancelled")
            yield np.asarray(data[idx].compute(scheduler=None if distributed_client() else "threads"))
            counter.tick(plane_pixels)

    meta = _ome_metadata(ngff_axes, tuple(int(v) for v in lead), scale, translate, units)
    part = path.with_name(path.name + ".part")
    try:
        with tifffile.TiffWriter(part, bigtiff=True, ome=True) as tw:
            tw.write(planes(), shape=data.shape, dtype=data.dtype, metadata=meta)
        part.replace(path)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise output_error(e, path) from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path


def _ome_metadata(axes: str, lead: tuple[int, ...], scale, translate, units) -> dict:
    """tifffile's OME metadata for an image with ``axes`` in OME order (planes: the ``lead``
    axes, row-major, as tifffile writes them): pixel sizes, time increment and, when the
    origin is not 0, every plane's position (Z advances by the Z pixel size).

    A Z axis of one plane always has its ``PhysicalSizeZ`` (1 pixel when there is nothing
    else to say): tifffile squeezes that axis away, and the z size is what tells
    :func:`open_image` to restore it."""
    meta: dict = {"axes": axes}
    symbols = {}
    one_z = "Z" in axes and lead[axes.index("Z")] == 1
    for a, s, u in zip(axes, scale, units, strict=True):
        if a not in "TZYX":
            continue
        sym = ome_unit(u, a)
        if sym is None:
            if unit_name(u) != "pixel":
                warnings.warn(f"unit {u!r} of axis {a} has no OME-TIFF equivalent: its pixel size "
                              "and origin are not stored (use OME-Zarr to keep them)",
                              stacklevel=3)
            if a == "Z" and one_z:
                # the reader's default (1 pixel), written only to keep the axis
                meta["PhysicalSizeZ"], meta["PhysicalSizeZUnit"] = 1.0, "pixel"
            continue
        symbols[a] = sym
        if sym == "pixel" and s == 1.0 and not (a == "Z" and one_z):
            continue  # nothing to say: a reader's default is 1 pixel
        key = "TimeIncrement" if a == "T" else f"PhysicalSize{a}"
        meta[key], meta[f"{key}Unit"] = s, sym
    origin = {a: t for a, t in zip(axes, translate, strict=True) if a in "ZYX" and a in symbols}
    if any(origin.values()):
        nplanes = int(np.prod(lead)) if lead else 1
        z_at = axes.index("Z") if "Z" in axes else None
        plane = {}
        for a, t in origin.items():
            if a == "Z" and z_at is not None:
                sz = scale[z_at]
                values = [t + sz * int(np.unravel_index(p, lead)[z_at]) for p in range(nplanes)]
            else:
                values = [t] * nplanes
            plane[f"Position{a}"] = values
            plane[f"Position{a}Unit"] = [symbols[a]] * nplanes
        meta["Plane"] = plane
    return meta
