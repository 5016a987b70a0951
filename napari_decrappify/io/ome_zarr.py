"""Writing OME-Zarr: :func:`write_ome_zarr` streams a (lazy) array into a store chunk by chunk,
so memory stays bounded whatever the size, and resumably.

The store is NGFF 0.5 on Zarr 3, its metadata written by the ``ome-zarr`` package. It is
marked ``{"decrappify": {"complete": false}}`` until the last chunk is written (and its OME
metadata kept in that attribute meanwhile, so other readers do not show a half-written store
as an image); every finished chunk leaves a marker file
(:mod:`~napari_decrappify.io.chunk_writing`), so rerunning the same write after a crash or a
cancel computes only the chunks that are missing. A rerun resumes only the same computation
with the same geometry; anything else is refused unless ``overwrite``.
:func:`~napari_decrappify.io.open_image` refuses an unfinished store unless asked. A write
never goes where its lazy input is read from (the input would be deleted before it is read).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from ..tiff_metadata import unit_name
from .chunk_writing import DONE_DIR, forget_arrays, write_missing_chunks
from .errors import output_error
from .image import check_axes, guess_axes, ngff_axis_order, unpack_image
from .ngff import ngff_unit, ome_attributes
from .outputs import check_writable, exclusive_output, refuse_source_as_output, remove_output
from .pyramid import auto_levels
from .reading import is_zarr_array

# what a resume check's keys mean to the person who reran the command
_SAID = {"fingerprint": "its input data or parameters", "levels": "pyramid levels"}


@exclusive_output
def write_ome_zarr(path, data, *, axes: str | None = None, scale=None, translate=None, units=None,
                   overwrite: bool = False, progress=None, cancel=None, chunks=None,
                   name: str | None = None, levels: int | str = "auto",
                   fingerprint: str | None = None,
                   metadata: dict | None = None, labels: bool = False):
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
        Called (from worker threads) with a :class:`~napari_decrappify.progress.RateProgress`
        (read as ``{"event": "chunks", "done", "total", "mpix_per_s", "eta"}``) after each
        chunk.
    cancel : threading.Event, optional
        Set it to stop promptly; raises :class:`RestoreCancelled` and leaves the store marked
        unfinished (rerun to resume).
    chunks : tuple of int, optional
        Chunk shape of the store (in ``axes`` order); default: the dask chunks of ``data``.
    name : str, optional
        Name recorded in the multiscales metadata.
    levels : int or "auto"
        Resolution levels: 1 writes full resolution only; each further level halves Y and X
        (the mean of each 2x2, 4x4 ... block of full-resolution pixels, trailing rows and
        columns that do not fill a block dropped; integers rounded). ``"auto"`` (default): as
        many as keep every level at least one chunk across (:func:`.pyramid.auto_levels`), so
        an output of a few chunks has one level and a large one a pyramid. The lower levels are
        written with each full-resolution chunk, as it finishes, in the same pass (no second
        read of the data); their chunks are the full-resolution chunk halved per level, so the
        chunk's Y and X are rounded up to a multiple of ``2 ** (levels - 1)``.
    fingerprint : str, optional
        Identifies the computation, to decide whether an unfinished store can be resumed;
        default: the dask name of ``data`` (deterministic for file-backed inputs).
    metadata : dict, optional
        JSON-serialisable provenance stored under the ``decrappify`` attribute.
    labels : bool
        ``data`` is a label image: its lower resolution levels take each square's first pixel
        instead of the mean (:func:`.pyramid.pyramid_block`).

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
    data, axes, scale, translate, units, name = unpack_image(data, axes, scale, translate, units,
                                                            name)
    if not isinstance(data, da.Array):
        data = da.from_zarr(data) if is_zarr_array(data) else da.asarray(data)
    if levels != "auto" and (isinstance(levels, bool) or not isinstance(levels, int)
                             or levels < 1):
        raise ValueError(f"levels must be an integer >= 1 or 'auto', got {levels!r}")
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
    ngff_axes, order = ngff_axis_order(axes)
    if order != list(range(n)):
        data = data.transpose(order)
        scale, translate, units = ([v[i] for i in order] for v in (scale, translate, units))
    shape = tuple(int(s) for s in data.shape)
    if levels == "auto":
        levels = auto_levels(shape, tuple(int(c[0]) for c in data.chunks), ngff_axes)
    if min(_level_shape(shape, ngff_axes, levels - 1)) < 1:
        raise ValueError(f"levels={levels} is too many for shape {shape}: Y and X halve per level")
    if levels > 1:  # each chunk's lower-level blocks must start on whole pixels there
        step = 2 ** (levels - 1)
        aligned = tuple(min(-(-int(c[0]) // step) * step, n) if a in "YX" and n > c[0]
                        else int(c[0]) for c, n, a in zip(data.chunks, shape, ngff_axes,
                                                          strict=True))
        if aligned != tuple(int(c[0]) for c in data.chunks):
            data = data.rechunk(aligned)
    chunk_shape = tuple(int(c[0]) for c in data.chunks)
    dtype = np.dtype(data.dtype)
    ours = {"complete": False, "fingerprint": fingerprint, "shape": list(shape),
            "dtype": dtype.str, "chunks": list(chunk_shape), "levels": levels,
            "pyramid": "first pixel" if labels else "block mean",
            "axes": ngff_axes, "units": list(units), **({"metadata": metadata} if metadata else {})}

    refuse_source_as_output(path, data)  # before anything is removed
    forget_arrays(path)
    resume = False
    if path.exists() or path.is_symlink():
        if overwrite:
            remove_output(path)
        else:
            previous = _read_ours(path)
            if previous is None:
                raise FileExistsError(f"output {path} exists: pass overwrite=True (--overwrite) to "
                                      "replace it")
            if previous.get("complete"):
                raise FileExistsError(f"output {path} exists and is complete: pass overwrite=True "
                                      "(--overwrite) to replace it")
            differs = [k for k in ("fingerprint", "shape", "dtype", "chunks", "levels", "axes",
                                   "pyramid")
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
        check_writable(path)
        try:
            _create_store(path, shape, chunk_shape, dtype, levels, ngff_axes, scale, translate,
                          units, name, ours)
        except OSError as e:
            raise output_error(e, path) from e

    try:
        write_missing_chunks(data, path, "0", progress, cancel,
                             pyramid=(ngff_axes, levels, labels) if levels > 1 else None)
    except ValueError:
        # the data itself is bad (NaN in a tile, ...): no rerun can resume it, since fixing the
        # input changes its fingerprint. A store this run created goes, not left unfinished;
        # an interruption (cancel, signal, full disk) keeps it to be resumed
        if not resume:
            forget_arrays(path)
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
        raise output_error(e, path) from e
    forget_arrays(path)
    return path


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
        # a full-resolution chunk's block of this level is exactly one chunk of it
        lchunks = tuple(max(1, c // 2**level) if a in "YX" else c
                        for c, a in zip(chunk_shape, axes, strict=True))
        # NGFF 0.5 requires each array's dimension_names to be the multiscales axes' names
        group.create_array(str(level), shape=lshape, chunks=lchunks, dtype=dtype,
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
