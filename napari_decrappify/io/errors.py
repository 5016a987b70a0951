"""The errors that reading and writing raise on their own: a cancelled restore or write
(:class:`RestoreCancelled`) and an output that cannot be written (:class:`OutputError`), with
:func:`output_error`, which turns an ``OSError`` met while writing into a message that says
what to do (free space and rerun, choose a writable place).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path

from ..progress import Cancelled


class RestoreCancelled(Cancelled, RuntimeError):
    """A restore or a write was stopped through its ``cancel`` event.

    A :class:`~napari_decrappify.progress.Cancelled` (the core's cancellations), and a
    ``RuntimeError`` as it always was (scripts catch it as one).

    Nothing is presented as complete: a cancelled :func:`~napari_decrappify.io.write_ome_zarr`
    leaves its store marked unfinished (rerun the same call to resume it).
    """


class OutputError(RuntimeError):
    """The output cannot be written: read-only location, disk full, permission denied."""


def _disk_full(e: OSError, path: Path) -> bool:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # a short write ("1048576 requested and 524200 written") carries no errno: full if so
    if e.errno is None and "written" in str(e):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(path.parent).free < 64 * 2**20
    return False


def output_error(e: OSError, path: Path) -> OutputError:
    """The :class:`OutputError` for ``e``, met while writing ``path``: a full disk, a read-only
    location or another failure, each said so."""
    if _disk_full(e, path):
        msg = (f"the disk is full while writing {path}: free some space, then rerun the same "
               "command to resume (finished chunks are kept)")
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        msg = f"cannot write {path}: the location is read-only or not writable ({e.strerror})"
    else:
        msg = f"cannot write {path}: {e}"
    return OutputError(msg)
