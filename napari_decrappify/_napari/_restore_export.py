"""Restore dock, export to bioimage.io: the chosen model written as a package other tools read.

:class:`ExportMixin` is the dock's side ("Export to bioimage.io…": the file dialog, the
job, its one-line result); :func:`_export_job` is the worker, which writes the package in a
child process (:func:`_export_package`) under a hidden name and moves it into place, with a
test image cut from the input layer (:func:`_export_test_image`).

Tests replace ``_export_package`` on :mod:`.restore` (the dock's module): :func:`_export_job`
looks it up there.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..progress import Progress
from ._workers import CoreJob

# the folder of the last bioimage.io export in this session: the file dialog starts there
_EXPORT_FOLDER: list[Path] = []


class ExportMixin:
    """The Restore dock's "Export to bioimage.io…" (mixed into :class:`.restore.RestoreWidget`)."""

    def export_model(self, path=None, *, overwrite: bool = False) -> CoreJob | None:
        """Export the chosen model to a bioimage.io package (:func:`napari_decrappify.bioimageio
        .export_bioimageio`) in a worker, with the dock's progress and Cancel.

        Parameters
        ----------
        path : str or os.PathLike, optional
            The package to write (``.zip`` is added when missing). None: a file dialog asks
            (it asks before replacing a file, so its answer overwrites).
        overwrite : bool
            Replace ``path`` if it exists (else the export stops with a one-line error).

        Returns
        -------
        CoreJob or None
            The export job, or None when nothing was started (busy, no model, dialog closed).
            The dock's status line then says where the package is, or why it failed.
        """
        if self._busy():
            return None
        model = self.model.value
        if model is None:
            self._set_status("⚠ choose a model to export")
            return None
        name = Path(model).name.removesuffix(".zip")
        if path is None:
            path = self._ask_export_path(name)
            if not path:
                return None
            overwrite = True  # the dialog asked before replacing a file
        out = Path(path).expanduser()
        if out.suffix.lower() != ".zip":
            out = out.with_name(out.name + ".zip")
        _EXPORT_FOLDER[:] = [out.parent]
        authors = [a.strip() for a in str(self.export_authors.value).split(",") if a.strip()]
        source = self._export_source()
        told: dict = {}  # the worker says there what the test image is
        self._set_status(f"exporting {name} to {out} …")
        return self._start(
            _export_job, model, out, overwrite=overwrite, authors=authors, source=source,
            told=told, description=f"Exporting {name} to bioimage.io",
            on_result=lambda path: self._exported(path, told),
            on_error=self._export_failed, cancelled_text="cancelled, nothing was written",
            # Cancel answers now; the worker stops the export's process and removes its files
            abandon_on_cancel=True)

    def _export_source(self) -> _ExportSource | None:
        """What the package's test image is cut from: the input layer's plane on screen (its
        neighbours too, for a multi-frame model), read in the worker; None (a held-out CREMI
        plane) when the input is not a single-channel image."""
        layer = self.image.value
        if layer is None or getattr(layer, "rgb", False):
            return None
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        if data.ndim < 2 or data.ndim > 3:  # (a time series / channels: which plane is unclear)
            return None
        z = None
        if data.ndim == 3:
            step = self.viewer.dims.current_step
            z = int(step[-3]) if len(step) >= 3 else data.shape[0] // 2
            z = min(max(z, 0), data.shape[0] - 1)
        return _ExportSource(layer.name, data, z)

    def _ask_export_path(self, name: str) -> str:
        from qtpy.QtWidgets import QFileDialog

        start = (_EXPORT_FOLDER[0] if _EXPORT_FOLDER else Path.home()) / f"{name}.zip"
        path, _ = QFileDialog.getSaveFileName(self, "Export to bioimage.io", str(start),
                                              "bioimage.io package (*.zip)")
        return path

    def _exported(self, path, told: dict | None = None) -> None:
        test_image = (told or {}).get("test_image")
        self._set_status(f"exported to {path} (a bioimage.io package for other tools; "
                         "decrappify restore reads it as a model too)"
                         + (f"; test image: {test_image}" if test_image else ""))

    def _export_failed(self, exc: BaseException) -> None:
        """One line: bioimageio.spec's validation errors run over many."""
        from napari.utils.notifications import show_error

        line = next((t.strip() for t in str(exc).splitlines() if t.strip()), type(exc).__name__)
        if len(line) > 300:
            line = line[:297] + "…"
        self._set_status(f"⚠ export failed: {line}")
        show_error(f"Decrappify: export failed: {line}")


# --------------------------------------------------------------------------- worker functions

# the export runs in a process of its own: importing bioimageio.spec the first time froze
# napari's UI thread 0.6-0.7 s from a worker thread (pydantic builds its schemas holding the
# GIL), and a process can be stopped mid-way, which a thread running the export cannot
_EXPORT_CHILD = """
import os, signal, sys
if hasattr(os, "nice"):
    os.nice(10)  # the UI's process keeps the cores it needs on a busy machine
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # Cancel: unwind, temporary files go
from napari_decrappify.bioimageio import export_bioimageio
image = None
if len(sys.argv) > 3 and sys.argv[3]:
    import numpy as np
    image = np.load(sys.argv[3], allow_pickle=False)
authors = sys.argv[4:] or None
try:
    export_bioimageio(sys.argv[1], sys.argv[2], overwrite=True, authors=authors,
                      test_image=image)
except Exception as e:
    line = next((t.strip() for t in str(e).splitlines() if t.strip()), type(e).__name__)
    print("decrappify-export-error: " + line, file=sys.stderr)
    sys.exit(1)
"""


def _export_package(model, part: Path, cancel=None, *, test_image: Path | None = None,
                    authors=()) -> None:
    """Write the package ``part`` from ``model`` (a path) in a child process; RestoreCancelled
    when ``cancel`` is set (the child is stopped), a one-line RuntimeError when it fails.
    ``test_image``: a ``.npy`` file whose centre crop becomes the test input (None: CREMI);
    ``authors``: the package's authors (none: the login name)."""
    import subprocess
    import sys
    import threading

    from ..tiling import RestoreCancelled

    argv = [str(model), str(part), str(test_image) if test_image is not None else "",
            *authors]
    proc = subprocess.Popen([sys.executable, "-c", _EXPORT_CHILD, *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err: list[str] = []  # read while it runs: a full pipe would block the child
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            if cancel is not None and cancel.wait(0.1):
                raise RestoreCancelled("export cancelled: nothing written")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _remove_export_leftovers(part)
    reader.join(5)
    if proc.returncode != 0:
        lines = [t.strip() for t in err if t.strip()]
        mine = [t.split(": ", 1)[1] for t in lines if t.startswith("decrappify-export-error: ")]
        raise RuntimeError(mine[-1] if mine else (lines[-1] if lines else
                                                  f"the export stopped (exit {proc.returncode})"))


def _remove_export_leftovers(part: Path) -> None:
    """The export's temporary folder beside ``part`` (``export_bioimageio`` makes it there),
    when its process was killed before removing it."""
    import shutil

    for tmp in part.parent.glob(f".{part.name}.*"):
        shutil.rmtree(tmp, ignore_errors=True)


class _ExportSource(NamedTuple):
    """The input layer a package's test image is cut from (read in the worker)."""

    name: str
    data: object  # the layer's (level-0) array: numpy, dask, zarr ...
    z: int | None  # the plane on screen of a stack; None for a plane


def _export_test_image(model, source: _ExportSource | None, folder: Path, name: str):
    """Cut the package's test image from ``source`` (its centre, the smallest size the
    package's halo allows, and the model's frames around the plane on screen) into a ``.npy``
    in ``folder``; (path, what it is), or (None, why CREMI is used instead)."""
    from ..bioimageio import _given_test_input, min_input_size
    from ..engine.registry import load_cached

    cremi = "a held-out CREMI plane"
    if source is None:
        return None, f"{cremi} (the input is not a single-channel plane or stack)"
    m = load_cached(model, release_stale=False)  # (as the dock's own loads: api.resolve_model)
    if m.kind != "restoration":  # (export_bioimageio refuses it with its own message)
        return None, cremi
    size = min_input_size(m)
    shape = source.data.shape
    h, w = shape[-2:]
    if min(h, w) < size:
        return None, (f"{cremi} (the input layer {source.name!r} is {h} x {w} px; the package "
                      f"needs at least {size} x {size})")
    half = m.frames // 2
    if source.z is None:
        if m.frames > 1:
            return None, f"{cremi} (the model takes {m.frames} planes; the input is one plane)"
        lead, where = (), "its plane"
    else:
        z0 = min(max(source.z - half, 0), shape[0] - m.frames)
        if z0 < 0:
            return None, f"{cremi} (the model takes {m.frames} planes; the input has {shape[0]})"
        lead, where = (slice(z0, z0 + m.frames),), f"plane {source.z}"
    y0, x0 = (h - size) // 2, (w - size) // 2
    # only the crop is read (the layer may be lazy and larger than memory); the export's own
    # check of a given test image then decides whether it will do (NaN, frames ...)
    crop = np.asarray(source.data[(*lead, slice(y0, y0 + size), slice(x0, x0 + size))])
    try:
        checked, _ = _given_test_input(m, size, crop)  # (1, frames, size, size) float32
    except ValueError as e:
        return None, f"{cremi} (the input layer {source.name!r}: {e})"
    path = folder / f"{name}.test-image.npy"
    np.save(path, checked[0, 0] if source.z is None else checked[0], allow_pickle=False)
    return path, f"{source.name!r}, {where}, centre {size} x {size} px"


def _export_job(model, out: Path, *, overwrite: bool = False, authors=(), source=None,
                told: dict | None = None, progress=None, cancel=None) -> Path:
    """Worker side of "Export to bioimage.io…": the package is written under a hidden name
    beside ``out`` (:func:`_export_package`, in a child process) and moved into place at the
    end, so that a Cancel leaves nothing behind, and a package being replaced stays whole
    until the new one is complete. The test image is cut from ``source`` (the input layer)
    where it can be (:func:`_export_test_image`); ``told["test_image"]`` says what it is
    (read by the dock once the job has finished)."""
    import os
    import threading

    from ..tiling import RestoreCancelled
    from . import restore  # the dock's module: tests replace _export_package there

    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: choose another name (the file dialog asks before "
                              "replacing one)")
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder: give the package a file name ending in .zip")
    if progress is not None:
        progress(Progress("tracing the network, test tensors, packaging"))
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = f".{out.stem}.{os.getpid()}-{threading.get_ident()}"
    part = out.with_name(f"{stem}.part.zip")
    image, what = _export_test_image(model, source, out.parent, stem)
    if told is not None:
        told["test_image"] = what
    extra = {}
    if image is not None:
        extra["test_image"] = image
    if authors:
        extra["authors"] = tuple(authors)
    try:
        restore._export_package(model, part, cancel, **extra)
        if cancel is not None and cancel.is_set():
            raise RestoreCancelled("export cancelled: nothing written")
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
        if image is not None:
            image.unlink(missing_ok=True)
    return out


def _login_name() -> str:
    """The default author of an export: the login name (export_bioimageio's own default)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # (no login name: a container without a passwd entry)
        return ""
