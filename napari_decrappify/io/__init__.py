"""Reading images lazily with their physical metadata, writing results to OME-Zarr, and the
geometry of upsampled results.

Physical space: a layer with pixel size ``s`` and origin ``t`` (centre of the first pixel),
upsampled by ``f`` (LR pixels made of ``f x f`` HR block means) has pixel size ``s / f`` and
origin ``t + 0.5 * s * (1 / f - 1)`` on Y and X; other axes are unchanged. LR, restored and HR
layers then overlay exactly.

Writing (:func:`write_ome_zarr`) streams a dask array chunk by chunk into an OME-Zarr store
(NGFF 0.5 on Zarr 3, metadata written by the ``ome-zarr`` package), so memory stays bounded
whatever the size. The store is marked ``{"decrappify": {"complete": false}}`` until the last
chunk is written; every finished chunk leaves a marker file, so rerunning the same write after
a crash or a cancel computes only the chunks that are missing. :func:`open_image` refuses an
unfinished store unless asked. A write never goes where its lazy input is read from (the input
would be deleted before it is read).

:func:`write_tiff` writes OME-TIFF: pixel sizes with OME unit symbols and the origin as plane
positions, which :func:`open_image` reads back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.distributed import compute_distributed, distributed_client, in_distributed_worker
from ..tiff_metadata import (
    axis_origins,
    axis_sizes,
    geometry_for_axes,
    ome_unit,
    origin_for_axes,
    tiff_axes,
    unit_name,
)

AXES_CHARS = set("TCZYX")
NGFF_ORDER = "TCZYX"
WRITE_BATCH = 2048  # chunks per dask computation in write_ome_zarr
DONE_DIR = ".decrappify-done"  # inside a store being written: one empty file per finished chunk


class RestoreCancelled(RuntimeError):
    """A restore or a write was stopped through its ``cancel`` event.

    Nothing is presented as complete: a cancelled :func:`write_ome_zarr` leaves its store
    marked unfinished (rerun the same call to resume it).
    """


class OutputError(RuntimeError):
    """The output cannot be written: read-only location, disk full, permission denied."""


@dataclass
class ImageData:
    """A (lazy) image with named axes and physical metadata.

    Attributes
    ----------
    data : dask.array.Array
    axes : str
        One letter per dimension, from ``TCZYX``, ending in ``YX``.
    scale, translate : tuple of float
        Pixel size and position of the first pixel's centre, per axis.
    units : tuple of str
    """

    data: object
    axes: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[str, ...]
    name: str = "image"
    metadata: dict = field(default_factory=dict)


def check_axes(axes: str, ndim: int) -> str:
    """Validate an axes string such as ``"ZYX"`` for an array of ``ndim`` dimensions."""
    if not isinstance(axes, str):
        raise ValueError(f"axes must be a string of letters from TCZYX, got {axes!r}")
    axes = axes.upper()
    bad = set(axes) - AXES_CHARS
    if bad:
        raise ValueError(f"unknown axes {''.join(sorted(bad))!r} in {axes!r}: use letters from TCZYX")
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes!r} repeat a letter")
    if len(axes) != ndim:
        raise ValueError(f"axes {axes!r} name {len(axes)} dimensions but the image has {ndim}")
    if not axes.endswith("YX"):
        raise ValueError(f"axes {axes!r} must end with YX")
    return axes


def guess_axes(ndim: int) -> str:
    """Default axes for an array of ``ndim`` dimensions: YX, ZYX, TZYX, TCZYX."""
    if not 2 <= ndim <= 5:
        raise ValueError(f"cannot guess axes for a {ndim}-D array: pass axes explicitly")
    return "TCZYX"[5 - ndim:]


def upscale_geometry(scale, translate, axes: str, factor: int):
    """Pixel size and origin of a result upsampled by ``factor`` on Y and X (module docstring)."""
    scale = list(map(float, scale))
    translate = list(map(float, translate))
    for ax in ("Y", "X"):
        i = axes.index(ax)
        s = scale[i]
        scale[i] = s / factor
        translate[i] = translate[i] + 0.5 * s * (1.0 / factor - 1.0)
    return tuple(scale), tuple(translate)


def downscale_geometry(scale, translate, axes: str, factor: int):
    """Inverse of :func:`upscale_geometry`: the geometry of an ``factor``-times block-mean LR."""
    scale = list(map(float, scale))
    translate = list(map(float, translate))
    for ax in ("Y", "X"):
        i = axes.index(ax)
        s = scale[i] * factor
        translate[i] = translate[i] - 0.5 * s * (1.0 / factor - 1.0)
        scale[i] = s
    return tuple(scale), tuple(translate)


# --------------------------------------------------------------------------- reading


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
        elif _is_zarr_array(source):
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


def _is_zarr_array(obj) -> bool:
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
    reader = _TiffArray(str(path), tuple(arr.shape), arr.dtype)
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


class _TiffArray:
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


# --------------------------------------------------------------------------- writing


def ngff_unit(unit: str | None, axis: str) -> str | None:
    """The NGFF name of ``unit`` for an axis (``"nm"`` -> ``"nanometer"``); None when the unit
    is ``pixel``/unknown (NGFF then records no unit for that axis)."""
    from ome_zarr.axes import KNOWN_SPATIAL_UNITS, KNOWN_TEMPORAL_UNITS

    if unit is None:
        return None
    u = unit_name(unit)
    known = KNOWN_TEMPORAL_UNITS if axis == "T" else KNOWN_SPATIAL_UNITS if axis in "ZYX" else ()
    return u if u in known else None


def write_text_atomic(path, text: str) -> Path:
    """Write a whole text file or nothing: a hidden ``.NAME.XXXX.part`` beside ``path``,
    renamed over it when written (a failed write leaves no half file, and no ``.part``).

    Each call writes its own uniquely named temporary file, so concurrent writers of the same
    path (two processes saving the same JSON) do not delete or truncate each other's: the last
    rename wins and the file always holds one complete text. The file is created with mode
    ``0o644``, as a plain write would under the usual umask.
    """
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: readable by others, as it was before
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # only our own temporary file: another writer's is theirs
        raise
    return path


# what a resume check's keys mean to the person who reran the command
_SAID = {"fingerprint": "its input data or parameters", "levels": "pyramid levels"}


def _disk_full(e: OSError, path: Path) -> bool:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # a short write ("1048576 requested and 524200 written") carries no errno: full if so
    if e.errno is None and "written" in str(e):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(path.parent).free < 64 * 2**20
    return False


def _output_error(e: OSError, path: Path) -> OutputError:
    if _disk_full(e, path):
        msg = (f"the disk is full while writing {path}: free some space, then rerun the same "
               "command to resume (finished chunks are kept)")
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        msg = f"cannot write {path}: the location is read-only or not writable ({e.strerror})"
    else:
        msg = f"cannot write {path}: {e}"
    return OutputError(msg)


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zattrs", ".zgroup"))


def _remove_output(path: Path) -> None:
    """Delete an existing output (``overwrite=True``), refusing to delete a folder that is not a
    Zarr store: a mistyped OUT must not wipe a data folder."""
    if path.is_dir():
        if not _is_zarr_store(path):
            raise FileExistsError(f"{path} is a folder that is not a Zarr store: refusing to delete "
                                  "it even with overwrite; choose another output path")
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _source_paths(data) -> set[Path]:
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
        if isinstance(v, _TiffArray):
            out.add(Path(v.path))
        elif _is_zarr_array(v):
            # the whole store, not just the array: writing next to it inside the store (or
            # replacing the store) is writing into the input too
            root = getattr(v.store, "root", None)  # LocalStore; remote stores have no path here
            if root is not None:
                out.add(Path(root))
    return out


def _refuse_source_as_output(path: Path, data) -> None:
    """Refuse to write where the input of a lazy result lives: chunks are read while the
    output is written, so replacing (or writing into) the input would destroy it and leave a
    blank result marked complete."""
    out = path.resolve()
    for src in _source_paths(data):
        src = src.resolve()
        if out == src:
            how = "is"
        elif out in src.parents:
            how = "contains"
        elif src in out.parents:
            how = "lies inside"
        else:
            continue
        raise ValueError(f"output {path} {how} the input being read ({src}): the input is read "
                         "while the output is written, so this would destroy it; write to "
                         "another path (and rename afterwards if needed)")


def _check_writable(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _output_error(e, parent) from e
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: the folder {parent} is read-only or not writable")


def _canonical(axes: str) -> tuple[str, list[int]]:
    """NGFF axis order (time, channel, then space) and the permutation to get there."""
    order = sorted(range(len(axes)), key=lambda i: NGFF_ORDER.index(axes[i]))
    return "".join(axes[i] for i in order), order


@dataclass
class _WriteRun:
    progress: object
    cancel: object
    total: int
    done: int = 0
    pixels: int = 0
    t0: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tick(self, pixels: int) -> None:
        with self.lock:
            self.done += 1
            self.pixels += pixels
            done, px = self.done, self.pixels
        if self.progress is not None:
            dt = max(time.monotonic() - self.t0, 1e-9)
            rate = done / dt
            self.progress({"event": "chunks", "done": done, "total": self.total,
                           "mpix_per_s": px / dt / 1e6,
                           "eta": (self.total - done) / rate if rate > 0 else float("inf")})


_WRITE_RUNS: dict[str, _WriteRun] = {}
_ARRAYS: dict[tuple[str, str], object] = {}
_ARRAYS_LOCK = threading.Lock()


def _zarr_array(store: str, level: str):
    import zarr

    key = (store, level)
    with _ARRAYS_LOCK:
        arr = _ARRAYS.get(key)
        if arr is None:
            arr = zarr.open_array(os.path.join(store, level), mode="r+")
            _ARRAYS[key] = arr
    return arr


def _write_chunk(block, store: str, level: str, idx: tuple, chunks: tuple, run_id: str, pid: int):
    """dask task: write one chunk, then its marker (the marker never precedes the data)."""
    import numpy as np

    # progress is reported here only in the caller's process (threads); on distributed
    # workers the caller reports it as futures complete
    run = _WRITE_RUNS.get(run_id) if pid == os.getpid() and not in_distributed_worker() else None
    if run is not None and run.cancel is not None and run.cancel.is_set():
        raise RestoreCancelled("write cancelled")
    region = tuple(slice(i * c, i * c + b) for i, c, b in zip(idx, chunks, block.shape, strict=True))
    marker = os.path.join(store, DONE_DIR, level, ".".join(map(str, idx)))
    try:
        _zarr_array(store, level)[region] = block
        with open(marker, "wb"):
            pass
    except OSError as e:
        raise _output_error(e, Path(store)) from e
    if run is not None:
        run.tick(int(np.prod(block.shape)))
    return np.ones(1, dtype=np.int8)


def _store_level(data, store: Path, level: str, progress, cancel) -> None:
    """Compute and write every chunk of ``data`` that has no marker yet."""
    import uuid

    import dask.array as da
    import numpy as np
    from dask.highlevelgraph import HighLevelGraph

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
                                 run_id, pid) for n, idx in enumerate(batch)}
            graph = HighLevelGraph.from_collections(name, layer, dependencies=[data])
            out = da.Array(graph, name, chunks=((1,) * len(batch),), dtype=np.int8,
                           meta=np.empty((0,), np.int8))
            if client is None:
                out.compute(scheduler="threads")
            else:
                compute_distributed(client, out, run, cancel, int(np.prod(chunks)))
    except OSError as e:
        raise _output_error(e, store) from e
    finally:
        _WRITE_RUNS.pop(run_id, None)
    if cancel is not None and cancel.is_set():
        raise RestoreCancelled("write cancelled")


@contextlib.contextmanager
def output_lock(path):
    """Hold the exclusive writer's lock of output ``path`` (a hidden ``.NAME.lock`` beside it).

    Two writers on one output (a second run started mid-way, or ``--overwrite`` while another
    writes) destroyed each other's store; the second now stops at once with a clear error. The
    lock is the kernel's (``flock``): a killed writer releases it, so there is no stale lock to
    clear by hand, and the lock file is removed by whoever holds it last.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a folder we cannot write to: the write itself will say so
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FileExistsError(f"output {path} is being written by another process or thread: "
                                  "wait for it to finish, or stop it, then rerun") from None
        try:  # the file may have been removed by the previous holder after we opened it
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _exclusive(write):
    """Run an output writer under :func:`output_lock` of its ``path`` (its first argument)."""
    import functools

    @functools.wraps(write)
    def locked(path, *args, **kwargs):
        with output_lock(path):
            return write(path, *args, **kwargs)

    return locked


@_exclusive
def write_ome_zarr(path, data, *, axes: str | None = None, scale=None, translate=None, units=None,
                   overwrite: bool = False, progress=None, cancel=None, chunks=None,
                   name: str | None = None, levels: int = 1, fingerprint: str | None = None,
                   metadata: dict | None = None):
    """Stream a (lazy) array into an OME-Zarr store, chunk by chunk, resumably.

    Parameters
    ----------
    path : str or Path
        The store to create (a folder, conventionally ``*.ome.zarr``).
    data : dask.array.Array, numpy array or ImageData
        What to write; a dask array is computed one chunk at a time (memory stays bounded).
        With an :class:`ImageData`, its axes and geometry are the defaults.
    axes : str
        Axes of ``data`` (``"ZYX"``...). The store uses NGFF order (T, C, Z, Y, X): other
        orders are transposed (lazily) on the way.
    scale, translate, units : sequences, one entry per axis
        Physical pixel size, origin and units (``"nm"`` and ``"nanometer"`` both work; the
        exact strings are kept and read back by :func:`open_image`).
    overwrite : bool
        Replace an existing store. Without it an existing path is refused, except an
        unfinished store of the same computation and geometry, which is resumed.
    progress : callable, optional
        Called (from worker threads) with ``{"event": "chunks", "done", "total",
        "mpix_per_s", "eta"}`` after each chunk.
    cancel : threading.Event, optional
        Set it to stop promptly; raises :class:`RestoreCancelled` and leaves the store marked
        unfinished (rerun to resume).
    chunks : tuple of int, optional
        Chunk shape of the store (in ``axes`` order); default: the dask chunks of ``data``.
    name : str, optional
        Name recorded in the multiscales metadata.
    levels : int
        Resolution levels: 1 (default) writes full resolution only; each further level halves
        Y and X (2x2 mean), written after level 0 and resumable the same way.
    fingerprint : str, optional
        Identifies the computation, to decide whether an unfinished store can be resumed;
        default: the dask name of ``data`` (deterministic for file-backed inputs).
    metadata : dict, optional
        JSON-serialisable provenance stored under the ``decrappify`` attribute.

    Returns
    -------
    Path
        The store, marked complete.

    Raises
    ------
    ValueError
        ``path`` is, contains or lies inside a file or Zarr store that ``data`` reads (the
        input of a lazy result): checked before anything is removed, even with ``overwrite``.
    FileExistsError
        ``path`` exists (complete, not ours, or an unfinished write of something else, or of
        the same computation with another scale, translate or units) and ``overwrite`` is
        false.
    OutputError
        The location is read-only or the disk is full (the message says which).
    RestoreCancelled
        ``cancel`` was set.
    """
    import dask.array as da
    import numpy as np

    path = Path(path)
    if isinstance(data, ImageData):
        axes = axes or data.axes
        scale = scale if scale is not None else data.scale
        translate = translate if translate is not None else data.translate
        units = units if units is not None else data.units
        name = name or data.name
        data = data.data
    if not isinstance(data, da.Array):
        data = da.from_zarr(data) if _is_zarr_array(data) else da.asarray(data)
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    axes = check_axes(axes or guess_axes(data.ndim), data.ndim)
    n = data.ndim
    scale = tuple(float(s) for s in (scale if scale is not None else (1.0,) * n))
    translate = tuple(float(t) for t in (translate if translate is not None else (0.0,) * n))
    units = tuple(str(u) for u in (units if units is not None else ("pixel",) * n))
    for label, v in (("scale", scale), ("translate", translate), ("units", units)):
        if len(v) != n:
            raise ValueError(f"{label} has {len(v)} values for a {n}-D image with axes {axes!r}")
    if chunks is not None:
        chunks = tuple(int(c) for c in chunks)
        if len(chunks) != n or min(chunks) < 1:
            raise ValueError(f"chunks {chunks} must give one positive size per axis of {axes!r}")
        data = data.rechunk(chunks)
    # zarr needs regular chunks (all equal but the last): rechunk irregular dask chunks
    if any(len(set(c[:-1])) > 1 or (len(c) > 1 and c[-1] > c[0]) for c in data.chunks):
        data = data.rechunk(tuple(max(c) for c in data.chunks))
    fingerprint = fingerprint or data.name
    # NGFF order
    ngff_axes, order = _canonical(axes)
    if order != list(range(n)):
        data = data.transpose(order)
        scale, translate, units = ([v[i] for i in order] for v in (scale, translate, units))
    shape = tuple(int(s) for s in data.shape)
    if min(_level_shape(shape, ngff_axes, levels - 1)) < 1:
        raise ValueError(f"levels={levels} is too many for shape {shape}: Y and X halve per level")
    chunk_shape = tuple(int(c[0]) for c in data.chunks)
    dtype = np.dtype(data.dtype)
    ours = {"complete": False, "fingerprint": fingerprint, "shape": list(shape),
            "dtype": dtype.str, "chunks": list(chunk_shape), "levels": levels,
            "axes": ngff_axes, "units": list(units), **({"metadata": metadata} if metadata else {})}

    _refuse_source_as_output(path, data)  # before anything is removed
    _forget_arrays(path)
    resume = False
    if path.exists() or path.is_symlink():
        if overwrite:
            _remove_output(path)
        else:
            previous = _read_ours(path)
            if previous is None:
                raise FileExistsError(f"output {path} exists: pass overwrite=True (--overwrite) to "
                                      "replace it")
            if previous.get("complete"):
                raise FileExistsError(f"output {path} exists and is complete: pass overwrite=True "
                                      "(--overwrite) to replace it")
            differs = [k for k in ("fingerprint", "shape", "dtype", "chunks", "levels", "axes")
                       if previous.get(k) != ours[k]]
            if differs:
                raise FileExistsError(
                    f"output {path} holds an unfinished result of a different computation "
                    f"({', '.join(_SAID.get(k, k) for k in differs)} differ): pass "
                    "overwrite=True (--overwrite) to replace "
                    "it, or rerun exactly the command that started it to resume")
            # same pixels, other geometry: resuming would keep the store's old pixel size,
            # origin or units under a result marked complete
            geometry = _geometry_differences(path, previous, ngff_axes, scale, translate, units)
            if geometry:
                raise FileExistsError(
                    f"output {path} holds an unfinished result written with another geometry "
                    f"({'; '.join(geometry)}): pass overwrite=True (--overwrite) to start again "
                    "with the new geometry, or rerun with the geometry it was started with to "
                    "resume")
            resume = True
    if not resume:
        _check_writable(path)
        try:
            _create_store(path, shape, chunk_shape, dtype, levels, ngff_axes, scale, translate,
                          units, name, ours)
        except OSError as e:
            raise _output_error(e, path) from e

    level_data = data
    try:
        for level in range(levels):
            if level:
                level_data = _downsample(da.from_zarr(str(path / str(level - 1))), ngff_axes,
                                         dtype, chunk_shape)
            _store_level(level_data, path, str(level), progress, cancel)
    except ValueError:
        # the data itself is bad (NaN in a tile, ...): no rerun can resume it, since fixing the
        # input changes its fingerprint. A store this run created goes, not left unfinished;
        # an interruption (cancel, signal, full disk) keeps it to be resumed
        if not resume:
            _forget_arrays(path)
            shutil.rmtree(path, ignore_errors=True)
        raise

    import zarr

    try:
        group = zarr.open_group(str(path), mode="r+")
        attrs = group.attrs.asdict()
        pending = ome_attributes(attrs)
        # the OME metadata and "complete" in one write of zarr.json: visible together
        group.attrs.put({**{k: v for k, v in attrs.items() if k != "decrappify"},
                         "ome": pending, "decrappify": {**ours, "complete": True}})
        shutil.rmtree(path / DONE_DIR, ignore_errors=True)
    except OSError as e:
        raise _output_error(e, path) from e
    _forget_arrays(path)
    return path


def _forget_arrays(path: Path) -> None:
    with _ARRAYS_LOCK:
        for key in [k for k in _ARRAYS if k[0] == str(path)]:
            del _ARRAYS[key]


def _read_ours(path: Path) -> dict | None:
    """Our ``decrappify`` attribute of an existing store, or None if it is not ours."""
    import json

    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None
    ours = attrs.get("decrappify")
    return ours if isinstance(ours, dict) else None


def _geometry_differences(path: Path, previous: dict, axes: str, scale, translate,
                          units) -> list[str]:
    """What differs between the geometry recorded in an unfinished store (level 0 of its
    multiscales metadata, our recorded units) and the asked one, as ``"scale (...) there,
    (...) asked"`` phrases; all in NGFF axis order."""
    import json
    import math

    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
        ds = ome_attributes(attrs)["multiscales"][0]["datasets"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return [f"its multiscales metadata is unreadable (axes {axes})"]
    there = {"scale": None, "translate": None}
    for t in ds.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            there["scale"] = tuple(float(v) for v in t["scale"])
        elif t.get("type") == "translation":
            there["translate"] = tuple(float(v) for v in t["translation"])
    out = []
    for label, asked in (("scale", tuple(scale)), ("translate", tuple(translate))):
        old = there[label] if there[label] is not None else (
            (1.0,) * len(asked) if label == "scale" else (0.0,) * len(asked))
        if len(old) != len(asked) or not all(
                math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(old, asked,
                                                                              strict=True)):
            out.append(f"{label} {old} there, {asked} asked (axes {axes})")
    old_units = tuple(previous.get("units") or ())
    if old_units and tuple(unit_name(u) for u in old_units) != tuple(unit_name(u) for u in units):
        out.append(f"units {old_units} there, {tuple(units)} asked (axes {axes})")
    return out


def _level_shape(shape, axes, level):
    return tuple(s // 2**level if a in "YX" else s for s, a in zip(shape, axes, strict=True))


def _create_store(path, shape, chunk_shape, dtype, levels, axes, scale, translate, units, name,
                  ours):
    import zarr
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    # marked unfinished before any chunk exists
    group.attrs["decrappify"] = ours
    datasets = []
    for level in range(levels):
        lshape = _level_shape(shape, axes, level)
        # NGFF 0.5 requires each array's dimension_names to be the multiscales axes' names
        group.create_array(str(level), shape=lshape, chunks=chunk_shape, dtype=dtype,
                           fill_value=0, dimension_names=[a.lower() for a in axes])
        f = 2**level
        lscale = [s * f if a in "YX" else s for s, a in zip(scale, axes, strict=True)]
        ltrans = [t + 0.5 * s * (f - 1) if a in "YX" else t
                  for s, t, a in zip(scale, translate, axes, strict=True)]
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": lscale}, {"type": "translation", "translation": ltrans}]})
    ngff_axes = []
    for a, u in zip(axes, units, strict=True):
        entry = {"name": a.lower(), "type": {"T": "time", "C": "channel"}.get(a, "space")}
        unit = ngff_unit(u, a)
        if unit is not None:
            entry["unit"] = unit
        elif u not in ("pixel", "", "None") and a != "C":
            warnings.warn(f"unit {u!r} of axis {a} is not an NGFF unit: recorded only in the "
                          "decrappify attributes", stacklevel=3)
        ngff_axes.append(entry)
    write_multiscales_metadata(group, datasets, axes=ngff_axes, name=name or path.name.split(".")[0])
    # the OME metadata is kept in our own attribute until the last chunk is written: other
    # OME-Zarr readers showed a killed store as a complete image that was 77% zeros
    attrs = group.attrs.asdict()
    group.attrs.put({k: v for k, v in attrs.items() if k != "ome"}
                    | {"decrappify": {**ours, "ome": attrs["ome"]}})
    (path / DONE_DIR).mkdir(exist_ok=True)


def ome_attributes(attrs: dict) -> dict:
    """The OME-NGFF metadata of a group's attributes: ``ome`` (0.5), the attributes themselves
    (0.4), or, in an unfinished store of ours, where the writer keeps it until complete."""
    if "ome" in attrs:
        return attrs["ome"]
    pending = (attrs.get("decrappify") or {}).get("ome")
    return pending if isinstance(pending, dict) else attrs


def _downsample(src, axes: str, dtype, chunk_shape):
    """2x2 block mean on Y, X (trailing odd rows/columns dropped), in ``dtype``."""
    import dask.array as da
    import numpy as np

    factors = {i: 2 for i, a in enumerate(axes) if a in "YX"}
    out = da.coarsen(np.mean, src.astype(np.float32), factors, trim_excess=True)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = da.clip(da.round(out), info.min, info.max)
    return out.astype(dtype).rechunk(chunk_shape)


MAX_TIFF_PLANE = 2**30  # bytes of one plane that write_tiff holds in memory at most


@_exclusive
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
        Receives ``{"event": "planes", "done", "total", "eta"}`` after each plane.
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
    if isinstance(data, ImageData):
        axes = axes or data.axes
        scale = scale if scale is not None else data.scale
        translate = translate if translate is not None else data.translate
        units = units if units is not None else data.units
        data = data.data
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
    _check_writable(path)
    ngff_axes, order = _canonical(axes)
    data = data.transpose(order)
    scale, translate, units = ([v[i] for i in order] for v in (scale, translate, units))
    lead = data.shape[:-2]
    total = int(np.prod(lead)) if lead else 1
    t0 = time.monotonic()

    def planes():
        for done, idx in enumerate(np.ndindex(*lead) if lead else [()], start=1):
            if cancel is not None and cancel.is_set():
                raise RestoreCancelled("write cancelled")
            yield np.asarray(data[idx].compute(scheduler=None if distributed_client() else "threads"))
            if progress is not None:
                dt = time.monotonic() - t0
                progress({"event": "planes", "done": done, "total": total,
                          "eta": dt / done * (total - done)})

    meta = _ome_metadata(ngff_axes, tuple(int(v) for v in lead), scale, translate, units)
    part = path.with_name(path.name + ".part")
    try:
        with tifffile.TiffWriter(part, bigtiff=True, ome=True) as tw:
            tw.write(planes(), shape=data.shape, dtype=data.dtype, metadata=meta)
        part.replace(path)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise _output_error(e, path) from e
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
