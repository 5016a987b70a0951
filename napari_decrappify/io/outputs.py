"""Where a result may be written, and how it lands there safely, whatever the format.

- :func:`output_lock` (and the :func:`exclusive_output` decorator of the writers): one writer
  per output at a time, so that two runs on one output never destroy each other's store.
- :func:`refuse_source_as_output`: a lazy result is never written where its input is read
  from (the input would be deleted or overwritten before it is read).
- :func:`remove_output`: ``overwrite`` deletes a previous result, never a folder that is not a
  Zarr store (a mistyped path must not wipe a data folder).
- :func:`check_writable`: a read-only location is said before anything is computed.
- :func:`write_text_atomic`: a small text file (JSON reports, ...) is written whole or not at
  all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .errors import OutputError, output_error
from .reading import source_paths


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


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zattrs", ".zgroup"))


def remove_output(path: Path) -> None:
    """Delete an existing output (``overwrite=True``), refusing to delete a folder that is not a
    Zarr store: a mistyped OUT must not wipe a data folder."""
    if path.is_dir():
        if not _is_zarr_store(path):
            raise FileExistsError(f"{path} is a folder that is not a Zarr store: refusing to delete "
                                  "it even with overwrite; choose another output path")
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def refuse_source_as_output(path: Path, data) -> None:
    """Refuse to write where the input of a lazy result lives: chunks are read while the
    output is written, so replacing (or writing into) the input would destroy it and leave a
    blank result marked complete."""
    out = path.resolve()
    for src in source_paths(data):
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


def check_writable(path: Path) -> None:
    """Create the folder of ``path`` if needed; an :class:`OutputError` if it cannot be written
    to (said before anything is computed)."""
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise output_error(e, parent) from e
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: the folder {parent} is read-only or not writable")


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


def exclusive_output(write):
    """Run an output writer under :func:`output_lock` of its ``path`` (its first argument)."""
    import functools

    @functools.wraps(write)
    def locked(path, *args, **kwargs):
        with output_lock(path):
            return write(path, *args, **kwargs)

    return locked
