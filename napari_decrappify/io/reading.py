"""Opening images lazily with their physical metadata: numpy, dask and zarr arrays, TIFF files
(through tifffile's zarr store, never read whole) and Zarr / OME-Zarr stores
(:func:`open_image`), and the files a lazy array reads (:func:`source_paths`).

A file-backed array gets a deterministic dask name from what the file holds (same file, same
name; changed file, new name), so that rerunning a write recognises its own unfinished
output. A damaged or truncated TIFF is refused with the file's name instead of being read
short, and an OME-Zarr store that :func:`~napari_decrappify.io.write_ome_zarr` has not
finished is refused unless asked for.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

import numpy as np

from ..tiff_metadata import axis_origins, axis_sizes, geometry_for_axes, origin_for_axes, tiff_axes
from .image import ImageData, check_axes, guess_axes
from .ngff import ome_attributes


def open_image(source, axes: str | None = None, scale=None, translate=None, units=None,
               name: str | None = None, *, allow_incomplete: bool = False) -> ImageData:
    """Open a numpy / dask / zarr array, a TIFF file or a Zarr / OME-Zarr store lazily.

    TIFF files are read through tifffile's zarr store (no full read), with the pixel sizes and
    units their OME-XML, ImageJ or resolution tags record and the origin of OME-XML plane
    positions (:mod:`napari_decrappify.tiff_metadata`). RGB(A) TIFFs are read channel-first:
    their samples become a ``C`` axis (tifffile ``YXS`` -> ``CYX``), and ``axes``, if given,
    names the dimensions in that order. OME-Zarr metadata (axes, pixel sizes, translations,
    units) is used when present. ``scale``/``translate``/``units`` given here override what the
    file says.

    Parameters
    ----------
    allow_incomplete : bool
        Open a store that :func:`write_ome_zarr` has not finished (cancelled, crashed or still
        running). By default that is an error: unwritten chunks read as zeros.
    """
    import dask.array as da

    meta_scale = meta_translate = meta_units = None
    metadata: dict = {}
    if isinstance(source, ImageData):
        return open_image(source.data, axes or source.axes,
                          scale if scale is not None else source.scale,
                          translate if translate is not None else source.translate,
                          units if units is not None else source.units, name or source.name)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        name = name or path.name.split(".")[0]
        if path.suffix.lower() in (".tif", ".tiff"):
            data, tif_axes, tif_sizes, tif_origins, flat_z = _open_tiff(
                path, named=axes is not None)
            if flat_z is not None and (axes is None or (
                    isinstance(axes, str) and len(axes) == data.ndim + 1
                    and axes[flat_z].upper() == "Z")):
                # one plane placed in z (a z pixel size or plane PositionZ, e.g. write_tiff of
                # a ZYX stack with a single plane): tifffile squeezes its Z axis away, and the
                # z origin with it; it stays a one-plane Z axis, so it overlays the stack it
                # came from. Named axes get it too when they name it where it is shown
                # ("ZYX" for a file shown as ZYX); named as stored ("YX"), the file is as stored
                data = data[(slice(None),) * flat_z + (None,)]
                tif_axes = tif_axes[:flat_z] + "Z" + tif_axes[flat_z:]
            axes = check_axes(axes or tif_axes or guess_axes(data.ndim), data.ndim)
            meta_scale, meta_units = geometry_for_axes(tif_sizes, axes)
            meta_translate = origin_for_axes(tif_origins, axes)
        elif path.is_dir():
            data, zaxes, meta_scale, meta_translate, meta_units, metadata = _open_zarr(
                path, allow_incomplete)
            axes = axes or zaxes
        else:
            raise ValueError(f"cannot read {path}: expected a .tif/.tiff file or a Zarr folder")
    else:
        if isinstance(source, da.Array):
            data = source
        elif is_zarr_array(source):
            data = da.from_zarr(source)
        else:
            data = da.asarray(source)
        name = name or "image"
    if data.size == 0:
        raise ValueError(f"input {name!r} is empty (shape {data.shape})")
    axes = check_axes(axes or guess_axes(data.ndim), data.ndim)
    n = data.ndim
    scale = tuple(float(s) for s in (scale if scale is not None else meta_scale or (1.0,) * n))
    translate = tuple(float(t) for t in (translate if translate is not None
                                         else meta_translate or (0.0,) * n))
    units = tuple(units if units is not None else meta_units or ("pixel",) * n)
    for label, v in (("scale", scale), ("translate", translate), ("units", units)):
        if len(v) != n:
            raise ValueError(f"{label} has {len(v)} values for a {n}-D image")
    return ImageData(data=data, axes=axes, scale=scale, translate=translate, units=units,
                     name=name, metadata=metadata)


def is_zarr_array(obj) -> bool:
    """Whether ``obj`` is a zarr array (read lazily through ``dask.array.from_zarr``)."""
    try:
        import zarr
    except ImportError:  # pragma: no cover - zarr is a dependency
        return False
    return isinstance(obj, zarr.Array)


def _file_token(path: Path, *extra) -> str:
    """A deterministic dask name for a file-backed array: same file, same name (so a rerun of a
    write can recognise its own unfinished output), changed file, new name."""
    from dask.base import tokenize

    p = path.resolve()
    probe = p / "zarr.json" if p.is_dir() and (p / "zarr.json").exists() else p
    st = probe.stat()
    return tokenize(str(p), st.st_mtime_ns, st.st_size, *extra)


def _zarr_token(path: Path, array: str = "", *extra) -> str:
    """A dask name for a Zarr array from what it holds: every file of the array (its chunks
    and metadata) with its size and modification time. ``zarr.json``'s own stamp alone missed
    chunks rewritten in place, and a resumed restore then mixed old and new input (max
    difference 311 grey levels). Listing a 100 000-chunk array takes a fraction of a second,
    far less than reading it."""
    import os

    from dask.base import tokenize

    root = (path / array).resolve() if array else path.resolve()
    entries = []
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    st = e.stat()
                    entries.append((os.path.relpath(e.path, root), st.st_size, st.st_mtime_ns))
    entries.sort()
    return tokenize(str(path.resolve()), array, entries, *extra)


def _open_tiff(path: Path, named: bool = False):
    """A TIFF's first series (level 0) as a lazy dask array with Y, X last, its ``TCZYX`` axes
    (None when the file does not say), its pixel sizes and origins per axis letter, and where a
    one-plane Z axis that tifffile squeezed away belongs (an index into those axes; None when
    the file places no single plane in z).

    ``named``: the caller names the axes itself, so axis codes we cannot map are not an error
    (the array is then returned as stored).
    """
    import dask.array as da
    import tifffile
    import zarr

    try:
        with _tifffile_complaints() as complaints:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                file_axes = series.axes
                sizes = axis_sizes(tif)
                origins = axis_origins(tif)
            damage = [c for c in complaints if any(w in c.lower() for w in _DAMAGE_WORDS)]
            if not damage:
                store = tifffile.imread(path, aszarr=True)
                arr = zarr.open(store, mode="r")
                if hasattr(arr, "keys") and not hasattr(arr, "shape"):  # multiscale: level 0
                    arr = arr["0"]
    except (tifffile.TiffFileError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a readable TIFF file ({e})") from e
    if damage:
        # tifffile reads past a damaged page table with a logged warning, and returns the
        # pages before it: a truncated stack would be restored short, without a word
        raise ValueError(f"{path} is truncated or damaged ({damage[0]})")
    tif_axes, order = None, tuple(range(len(arr.shape)))
    if len(file_axes) == len(arr.shape):  # else tifffile's axes do not describe the array
        try:
            tif_axes, order = tiff_axes(file_axes)
        except ValueError as e:
            if not named:
                raise ValueError(f"cannot tell the axes of {path}: {e}; pass axes (--axes) "
                                 f"naming each of its {len(file_axes)} dimensions as stored"
                                 ) from e
    name = "tiff-" + _file_token(path, arr.shape, str(arr.dtype))
    reader = TiffArray(str(path), tuple(arr.shape), arr.dtype)
    reader._arr = arr  # this process already has it open
    data = da.from_array(reader, chunks=arr.chunks, name=name, asarray=True,
                         meta=np.empty((0,) * len(arr.shape), arr.dtype))
    if order != tuple(range(len(order))):
        data = data.transpose(order)  # RGB samples (last in the file) become a leading C axis
    if tif_axes is not None and len(tif_axes) == data.ndim - 1:
        # channels and samples (OME SizeC counts both): one C axis, channel-major
        c = tif_axes.index("C")
        data = data.reshape(data.shape[:c] + (data.shape[c] * data.shape[c + 1],)
                            + data.shape[c + 2:])
    flat_z = None
    if (tif_axes is not None and "Z" not in tif_axes and "Y" in tif_axes
            and ("Z" in origins or "Z" in sizes)):
        flat_z = tif_axes.index("Y")  # a z size or position, no Z axis: one plane (open_image)
    return data, tif_axes, sizes, origins, flat_z


# what tifffile logs about a broken page table or strip (other complaints, e.g. about
# metadata it cannot parse, do not make the pixels unreadable)
_DAMAGE_WORDS = ("invalid page offset", "truncat", "corrupt", "invalid offset")


class _CollectComplaints:
    """A filter on tifffile's logger: a record logged in a thread that is collecting
    (:func:`_tifffile_complaints`) goes to that thread's list instead of the terminal. Per
    thread, so a damaged file read in one thread never fails a good one read in another, and
    nothing is switched on or off under a reader in another thread."""

    local = threading.local()

    def filter(self, record) -> bool:
        found = getattr(self.local, "found", None)
        if found is None:
            return True
        # "<tifffile.TiffPages @8> invalid page offset 33040": the object's repr is noise
        found.append(re.sub(r"^<[^>]*>\s*", "", record.getMessage().strip()))
        return False


_COMPLAINTS = _CollectComplaints()


@contextlib.contextmanager
def _tifffile_complaints():
    """Collect (and keep off the terminal) what tifffile logs, in this thread, about a damaged
    file."""
    import logging

    logger = logging.getLogger("tifffile")
    if _COMPLAINTS not in logger.filters:
        logger.addFilter(_COMPLAINTS)
    found: list[str] = []
    outer = getattr(_COMPLAINTS.local, "found", None)
    _COMPLAINTS.local.found = found
    try:
        yield found
    finally:
        _COMPLAINTS.local.found = outer


class TiffArray:
    """Lazy, picklable view of a TIFF's first series (level 0) through tifffile's zarr store.

    The open store holds a file handle and a lock, which cannot travel to dask.distributed
    workers: this object carries only the path and reopens the file in each process.
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype):
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.ndim = len(shape)
        self._arr = None
        self._lock = threading.Lock()

    def _open(self):
        if self._arr is None:
            import tifffile
            import zarr

            with self._lock:
                if self._arr is None:
                    node = zarr.open(tifffile.imread(self.path, aszarr=True), mode="r")
                    self._arr = node["0"] if not hasattr(node, "shape") else node
        return self._arr

    def __getitem__(self, key):
        try:
            return np.asarray(self._open()[key])
        except (ValueError, OSError, KeyError, IndexError) as e:
            # a truncated or damaged file opens (its header is intact) and fails only here,
            # in tifffile's words ("corrupted strip cannot be reshaped ..."): name the file
            raise ValueError(f"{self.path} is corrupt or truncated: part of its pixel data "
                             f"cannot be read ({e})") from e

    def __getstate__(self):
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype.str}

    def __setstate__(self, state):
        self.__init__(state["path"], tuple(state["shape"]), state["dtype"])


def _open_zarr(path: Path, allow_incomplete: bool = False):
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:  # noqa: BLE001 - zarr raises several types
        raise ValueError(f"{path} is not a readable Zarr store ({e})") from e
    if hasattr(node, "shape"):
        name = "zarr-" + _zarr_token(path, "", node.shape, str(node.dtype))
        return da.from_zarr(node, name=name), None, None, None, None, {}
    attrs = dict(node.attrs)
    ours = attrs.get("decrappify") or {}
    if ours and not ours.get("complete", False) and not allow_incomplete:
        raise ValueError(
            f"{path} is an unfinished result (its write was cancelled or interrupted): rerun the "
            "same command to resume it, or pass allow_incomplete=True to look at it anyway")
    ome = ome_attributes(attrs)
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise ValueError(f"{path} is a Zarr group without OME multiscales metadata")
    ms = multiscales[0]
    ds = ms["datasets"][0]
    axes = "".join(a["name"].upper() if isinstance(a, dict) else a.upper() for a in ms["axes"])
    units = tuple((a.get("unit") or "pixel") if isinstance(a, dict) else "pixel"
                  for a in ms["axes"])
    if ours.get("units") and len(ours["units"]) == len(units):
        units = tuple(ours["units"])  # exactly what the writer was given ("nm", not "nanometer")
    scale = translate = None
    for t in ds.get("coordinateTransformations", []):
        if t["type"] == "scale":
            scale = tuple(t["scale"])
        elif t["type"] == "translation":
            translate = tuple(t["translation"])
    arr = node[ds["path"]]
    # the group's own zarr.json (geometry) too
    name = "ome-zarr-" + _zarr_token(path, ds["path"], _file_token(path), arr.shape,
                                     str(arr.dtype))
    data = da.from_zarr(arr, name=name)
    return data, axes, scale, translate, units, ours


def source_paths(data) -> set[Path]:
    """The files and Zarr stores a lazy array reads (TIFFs and Zarr stores on local disk).

    dask keeps each array made by ``from_array``/``from_zarr`` (:func:`open_image`, or the
    user's own) in a one-key graph layer named ``original-...``: those few layers are looked
    at, never the (possibly huge) task layers. Sources inlined into tasks, or arrays already
    persisted on a distributed cluster, are not seen.
    """
    graph = data.__dask_graph__()
    layers = getattr(graph, "layers", None)
    if layers is not None:
        values = [v for name, layer in layers.items() if str(name).startswith("original-")
                  for v in layer.values()]
    else:
        values = [v for k, v in graph.items() if isinstance(k, str) and k.startswith("original-")]
    out = set()
    for v in values:
        if isinstance(v, TiffArray):
            out.add(Path(v.path))
        elif is_zarr_array(v):
            # the whole store, not just the array: writing next to it inside the store (or
            # replacing the store) is writing into the input too
            root = getattr(v.store, "root", None)  # LocalStore; remote stores have no path here
            if root is not None:
                out.add(Path(root))
    return out
