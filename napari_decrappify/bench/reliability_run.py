"""The reliability battery's cases and how one runs: what a case is (:class:`Case`,
:class:`Run`), the small files and models cases prepare, and :func:`run_case`.

The battery (bad inputs, bad model folders and output paths for every command) is the table of
:mod:`.reliability_cases` and :mod:`.reliability_process`; ``tests/reliability`` runs it (one
test per case) and ``decrappify bench reliability`` counts it. A case is a command line run
in-process against files it prepares in a fresh folder; :func:`run_case` sorts what happened
into one outcome:

* ``ok``: a good input gave an output that reads back as complete, finite, the right shape;
* ``clear error``: a bad input was refused with exit 1 (2 for usage) and one line naming it;
* ``unclear error``: refused, but with several lines or without the command's error prefix;
* ``traceback``: an exception escaped, or a traceback was printed;
* ``silent wrong``: a bad input was accepted (exit 0), a good one refused, an output that does
  not read back as what was asked, or an incomplete output that reads as complete;
* ``data loss``: a file that had to stay untouched (an input, an existing output without
  ``--overwrite``, a model) changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OUTCOMES = ("ok", "clear error", "unclear error", "traceback", "silent wrong", "data loss")
BAD_OUTCOMES = ("unclear error", "traceback", "silent wrong", "data loss")


@dataclass(frozen=True)
class Case:
    """One battery case: ``prepare(folder) -> Run``, and whether it must succeed."""

    group: str
    name: str
    expect: str  # "ok" or "error"
    prepare: Callable[[Path], Run] | None
    # a case that runs its own commands (interruptions, concurrency): folder -> (outcome, why)
    custom: Callable[[Path], tuple[str, str]] | None = None

    @property
    def id(self) -> str:
        return f"{self.group}: {self.name}"


@dataclass
class Run:
    """What a prepared case runs and checks."""

    argv: list[str]
    keep: list[Path] = field(default_factory=list)  # must be byte-identical afterwards
    output: Path | None = None  # must read back complete (ok) or not as complete (error)
    check: Callable[[Path], str | None] | None = None  # an ok output's own check: why wrong
    fresh_output: bool = True  # the output did not exist before the run
    marker: Path | None = None  # a file whose existence means a pickle was executed


# ----------------------------------------------------------------------------- fixtures


def _save_tiny(folder: Path, kind: str = "restoration") -> Path:
    from ..config import ArchConfig
    from ..models import build_model, save_model

    if kind == "segmentation":
        from ..segment import segmentation_arch

        model = build_model(segmentation_arch("tiny"), kind="segmentation", name="seg",
                            classes=["background", "blob"])
    else:
        model = build_model(ArchConfig(encoder="tiny", scale=2), name="tiny-2x", seed=0)
    save_model(model, folder)
    return folder


def _tif(path: Path, data: np.ndarray, axes: str | None = None) -> Path:
    import tifffile

    # without axes, tifffile's own shape metadata: a 1-D array reads back as 1-D
    tifffile.imwrite(path, data, **({"metadata": {"axes": axes}} if axes else {}))
    return path


def _good(folder: Path, name: str = "in.tif", shape=(2, 64, 64), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    return _tif(folder / name, (rng.random(shape) * 255).astype(np.uint8), "ZYX")


class _Payload:
    """Unpickling this creates ``marker``: a model file that executes code when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ------------------------------------------------------------------------ running a case

def _digest(path: Path) -> str | None:
    """sha256 of a file, or of a folder's files (names and bytes); None if absent."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _reads_complete(path: Path) -> str | None:
    """Why ``path`` is not a complete, finite output (None: it is)."""
    from ..io import open_image

    if path.suffix == ".json":
        def not_json(constant):  # Python reads Infinity / NaN; JSON has no such thing
            raise ValueError(f"{constant} is not JSON")
        try:
            json.loads(path.read_text(), parse_constant=not_json)
        except ValueError as e:
            return f"output JSON does not parse ({e})"
        return None
    if path.is_dir() and (path / "model.json").exists():
        from ..models import load_model

        load_model(path)
        return None
    img = open_image(path)
    data = np.asarray(img.data)
    if data.size == 0:
        return "output is empty"
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        return "output holds NaN or inf"
    if any(not np.isfinite(s) or s <= 0 for s in img.scale):
        return f"output scale {img.scale} is not physical"
    return None


def run_case(case: Case, folder: Path) -> dict:
    """Prepare ``case`` in ``folder`` (empty), run it in-process, and sort the outcome."""
    from .. import cli

    folder.mkdir(parents=True, exist_ok=True)
    if case.custom is not None:
        try:
            outcome, why = case.custom(folder)
        except Exception as e:  # noqa: BLE001 - an escaped exception is the outcome measured
            outcome, why = "traceback", f"{type(e).__name__}: {e}"
        return {"case": case.id, "expect": case.expect, "exit": None, "message": "",
                "outcome": outcome, "why": why}
    run = case.prepare(folder)
    before = {p: _digest(p) for p in run.keep}
    err, out = _io.StringIO(), _io.StringIO()
    escaped = None
    cwd = os.getcwd()
    try:
        os.chdir(folder)  # relative names ("../../etc") resolve inside the case's folder
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = cli.main(run.argv)
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 2
    except Exception as e:  # noqa: BLE001 - an escaped exception is the outcome measured
        escaped, code = e, None
    finally:
        os.chdir(cwd)
    stderr = err.getvalue()
    lines = [line for line in stderr.splitlines() if line.strip()]
    result = {"case": case.id, "expect": case.expect, "exit": code,
              "message": lines[-1] if lines else ""}
    changed = [str(p.name) for p, d in before.items() if _digest(p) != d]
    if changed:
        return {**result, "outcome": "data loss", "why": f"changed: {', '.join(changed)}"}
    if run.marker is not None and run.marker.exists():
        return {**result, "outcome": "silent wrong", "why": "a pickle was executed"}
    if escaped is not None or "Traceback" in stderr:
        why = f"{type(escaped).__name__}: {escaped}" if escaped else "traceback printed"
        return {**result, "outcome": "traceback", "why": why}
    if case.expect == "ok":
        if code != 0:
            return {**result, "outcome": "silent wrong", "why": "a good input was refused"}
        why = _reads_complete(run.output) if run.output is not None else None
        if why is None and run.check is not None:
            why = run.check(run.output)
        return {**result, "outcome": "silent wrong" if why else "ok", "why": why or ""}
    if code == 0:
        return {**result, "outcome": "silent wrong", "why": "a bad case was accepted"}
    if run.fresh_output and run.output is not None and run.output.exists():
        try:
            incomplete = _reads_complete(run.output) is not None
        except Exception:  # noqa: BLE001 - any refusal to read it back is what we want
            incomplete = True
        if not incomplete:
            return {**result, "outcome": "silent wrong",
                    "why": "a failed run left an output that reads as complete"}
        if case.group.startswith(("input", "model", "arguments")):
            # a bad input, model or argument is caught before any work: nothing to clean up
            return {**result, "outcome": "unclear error",
                    "why": f"a refused run left an unfinished {run.output.name} behind"}
    # one line "decrappify CMD: error: ..." (argparse's usage errors: its usage, then that
    # line); a "note:" the command gave before it found the problem does not blur it
    said = [line for line in lines if not line.startswith("note: ")]
    clear = (bool(said) and said[-1].startswith("decrappify") and ": error: " in said[-1]
             and (code == 2 or len(said) == 1))
    return {**result, "outcome": "clear error" if clear else "unclear error",
            "why": "" if clear else f"{len(lines)} stderr lines: " + " / ".join(lines)[:400]}
