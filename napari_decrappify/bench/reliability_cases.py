"""The reliability battery's table: bad inputs, bad model folders and output paths for every
command (the cases run in one process; those that need several are in
:mod:`.reliability_process`). What a case is, and the outcomes a run is sorted into, are in
:mod:`.reliability_run`.

The cases are built from small tables (inputs x commands, model folders x commands, output paths
x commands), so adding a bad input tests it against every command that reads one.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .reliability_run import Case, Run, _good, _Payload, _save_tiny, _tif

# ------------------------------------------------------------------------- bad inputs

def _bad_inputs() -> dict[str, Callable[[Path], Path | str]]:
    def raw(name: str, content: bytes):
        def make(d: Path) -> Path:
            (d / name).write_bytes(content)
            return d / name
        return make

    def array(data_fn, axes=None, name="bad.tif"):
        return lambda d: _tif(d / name, data_fn(), axes)

    def truncated(d: Path) -> Path:
        good = _good(d, "whole.tif", (2, 128, 128))
        p = d / "bad.tif"
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        return p

    def folder_named_tif(d: Path) -> Path:
        (d / "bad.tif").mkdir()
        return d / "bad.tif"

    def empty_zarr(d: Path) -> Path:
        (d / "bad.zarr").mkdir()
        (d / "bad.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
        return d / "bad.zarr"

    def unfinished_zarr(d: Path) -> Path:
        import threading

        import dask.array as da

        from ..io import write_ome_zarr

        p = d / "bad.zarr"
        cancel = threading.Event()
        cancel.set()  # cancelled before its first chunk: a store marked unfinished
        with contextlib.suppress(Exception):
            write_ome_zarr(p, da.zeros((2, 64, 64), chunks=(1, 64, 64), dtype="f4"), axes="ZYX",
                           cancel=cancel)
        return p

    def nan(shape=(2, 64, 64), frac=0.01):
        def make():
            a = np.random.default_rng(1).random(shape).astype(np.float32)
            a.flat[:: max(1, int(1 / frac))] = np.nan
            return a
        return make

    return {
        "missing file": lambda d: d / "nowhere.tif",
        "empty file": raw("bad.tif", b""),
        "text named .tif": raw("bad.tif", b"not an image\n" * 20),
        "random bytes named .tif": raw("bad.tif", np.random.default_rng(2).bytes(4096)),
        "truncated TIFF": truncated,
        "a folder named .tif": folder_named_tif,
        "unknown extension": raw("bad.xyz", b"\0" * 64),
        "NaN pixels": array(nan(), "ZYX"),
        "all NaN": array(lambda: np.full((2, 64, 64), np.nan, np.float32), "ZYX"),
        "infinite pixels": array(lambda: np.where(np.eye(64, dtype=bool), np.inf,
                                                  1.0).astype(np.float32)[None], "ZYX"),
        "boolean image": array(lambda: np.random.default_rng(3).random((2, 64, 64)) > 0.5, "ZYX"),
        "complex image": array(lambda: np.ones((2, 64, 64), np.complex64), "ZYX"),
        "1-D array": array(lambda: np.arange(64, dtype=np.float32)),
        "zero-sized plane": array(lambda: np.zeros((0, 64), np.float32)),
        "6-D array": array(lambda: np.zeros((2, 1, 2, 1, 32, 32), np.uint8)),
        "Zarr group without arrays": empty_zarr,
        "unfinished OME-Zarr": unfinished_zarr,
        "unknown sample": lambda d: "sample:nosuchsample",
        "empty sample range": lambda d: "sample:cremi[5:2]",
    }


def _good_inputs() -> dict[str, Callable[[Path], Path]]:
    rng = np.random.default_rng(4)
    base = rng.random((2, 64, 64))
    return {
        "uint8": lambda d: _tif(d / "in.tif", (base * 255).astype(np.uint8), "ZYX"),
        "uint16": lambda d: _tif(d / "in.tif", (base * 60000).astype(np.uint16), "ZYX"),
        "float32 in 0..1": lambda d: _tif(d / "in.tif", base.astype(np.float32), "ZYX"),
        "float64 negative": lambda d: _tif(d / "in.tif", base * 10 - 5, "ZYX"),
        "int16": lambda d: _tif(d / "in.tif", (base * 3000 - 1500).astype(np.int16), "ZYX"),
        "one 2-D plane": lambda d: _tif(d / "in.tif", (base[0] * 255).astype(np.uint8)),
        "constant image": lambda d: _tif(d / "in.tif", np.full((2, 64, 64), 7, np.uint8), "ZYX"),
        # counts of a detector far below the dtype's range (read noise is not 0.01 of 2^31)
        "int32 counts": lambda d: _tif(d / "in.tif", (base * 181000).astype(np.int32), "ZYX"),
    }


def _shape_of(src: str) -> tuple[int, ...]:
    """The shape of a good input (a 2-D plane is scored against a 2-D plane); (2, 64, 64)
    for anything that does not read."""
    import tifffile

    from ..io import _tifffile_complaints

    try:
        with _tifffile_complaints():  # a damaged file's complaint is the command's to report
            shape = tifffile.imread(src).shape
    except Exception:  # noqa: BLE001 - a bad input: any companion will do
        return (2, 64, 64)
    return shape if len(shape) in (2, 3) and min(shape) > 0 else (2, 64, 64)


def _command(name: str, d: Path, src, out: Path | None = None) -> Run:
    """The command line of ``name`` reading ``src``; its output in ``d``."""
    src = str(src)
    if name == "restore":
        out = out or d / "out.zarr"
        return Run(["restore", str(d / "model"), src, str(out), "--device", "cpu", "--quiet"],
                   output=out)
    if name == "segment":
        out = out or d / "labels.tif"
        return Run(["segment", str(d / "seg"), src, str(out), "--device", "cpu", "--quiet"],
                   output=out)
    if name == "crappify":
        out = out or d / "lr.tif"
        return Run(["crappify", src, str(out), "--scale", "2", "--quiet"], output=out)
    if name.startswith("evaluate"):
        shape = _shape_of(src)
    if name == "evaluate (prediction)":
        gt = _good(d, "gt.tif", shape)
        out = out or d / "scores.json"
        return Run(["evaluate", src, str(gt), "--json", str(out)], output=out, keep=[gt])
    if name == "evaluate (ground truth)":
        pred = _good(d, "pred.tif", shape, seed=5)
        out = out or d / "scores.json"
        return Run(["evaluate", str(pred), src, "--json", str(out)], output=out, keep=[pred])
    if name == "train":
        out = out or d / "trained"
        return Run(["train", "--hr", src, "--scale", "2", "--out", str(out), "--encoder", "tiny",
                    "--epochs", "1", "--iters", "2", "--batch", "2", "--patch", "16",
                    "--device", "cpu", "--quiet"], output=out)
    raise KeyError(name)


INPUT_COMMANDS = ("restore", "segment", "crappify", "evaluate (prediction)",
                  "evaluate (ground truth)", "train")


def _same_intensities(src: Path):
    """An ok crappify output's check: its mean is the input's (noise and a block mean keep it),
    within a tenth of the input's range, in the input's units."""
    def check(out: Path) -> str | None:
        from ..io import open_image

        a = np.asarray(open_image(src).data, np.float64)
        b = np.asarray(open_image(out).data, np.float64)
        tol = 0.1 * max(float(a.max() - a.min()), abs(float(a.mean())), 1e-6)
        if abs(b.mean() - a.mean()) > tol:
            return f"output mean {b.mean():.4g} is not the input's {a.mean():.4g} (units lost)"
        return None
    return check


def _input_case(command: str, label: str, make, expect: str) -> Case:
    def prepare(d: Path) -> Run:
        _save_tiny(d / "model")
        _save_tiny(d / "seg", "segmentation")
        src = make(d)
        run = _command(command, d, src)
        if isinstance(src, Path) and src.exists():
            run.keep.append(src)
            if command == "crappify":
                run.check = _same_intensities(src)
        return run
    return Case(f"input, {command}", label, expect, prepare)


# ------------------------------------------------------------------------ bad arguments

def _bad_arguments() -> list[tuple[str, str, list[str]]]:
    """(command, label, extra arguments) that must be refused before any work."""
    return [
        ("restore", "halo of ten million pixels", ["--halo", "10000000"]),
        ("restore", "tile of a billion pixels", ["--tile", "1000000000"]),
        ("restore", "tile of zero", ["--tile", "0"]),
        ("restore", "negative pixel size", ["--pixel-size", "-4"]),
        ("restore", "pixel sizes for axes it has not", ["--pixel-size", "4", "4", "4", "4"]),
        ("restore", "unknown axes", ["--axes", "QYX"]),
        ("restore", "zero pyramid levels", ["--levels", "0"]),
        ("segment", "negative minimum size", ["--min-size", "-3"]),
        ("segment", "tile of zero", ["--tile", "0"]),
        ("crappify", "scale 0", ["--scale", "0"]),
        ("crappify", "scale larger than the image", ["--scale", "1000"]),
        ("crappify", "negative photons", ["--photons", "-5"]),
        ("crappify", "NaN read noise", ["--read-noise", "nan"]),
        ("crappify", "negative blur", ["--blur", "-1"]),
        ("train", "zero minutes", ["--minutes", "0"]),
        ("train", "patch larger than the image", ["--patch", "100000"]),
        ("train", "scale 1000", ["--scale", "1000"]),
    ]


def _argument_case(command: str, label: str, extra: list[str]) -> Case:
    def prepare(d: Path) -> Run:
        _save_tiny(d / "model")
        _save_tiny(d / "seg", "segmentation")
        src = _good(d)
        run = _command(command, d, src)
        if command in ("crappify", "train") and extra[0] == "--scale":
            k = run.argv.index("--scale")
            run.argv[k:k + 2] = extra  # replaces the command's own --scale
        else:
            run.argv += extra
        run.keep.append(src)
        return run
    return Case(f"arguments, {command}", label, "error", prepare)


# ---------------------------------------------------------------------- bad model folders

def _bad_models() -> dict[str, Callable[[Path, str], Path | str]]:
    """Model folder breakages: ``make(folder, kind) -> model argument``."""
    from ..models import CONFIG_FILE, WEIGHTS_FILE

    def edit_json(fn):
        def make(d: Path, kind: str) -> Path:
            p = _save_tiny(d / "m", kind)
            cfg = json.loads((p / CONFIG_FILE).read_text())
            fn(cfg)
            (p / CONFIG_FILE).write_text(json.dumps(cfg))
            return p
        return make

    def write(name: str, content: Callable[[Path], bytes]):
        def make(d: Path, kind: str) -> Path:
            p = _save_tiny(d / "m", kind)
            (p / name).write_bytes(content(p / name))
            return p
        return make

    def remove(name: str):
        def make(d: Path, kind: str) -> Path:
            p = _save_tiny(d / "m", kind)
            (p / name).unlink()
            return p
        return make

    def pickled(d: Path, kind: str) -> Path:
        # the weights file replaced by a pickle that creates a file when it is unpickled
        p = _save_tiny(d / "m", kind)
        payload = pickle.dumps({"state_dict": _Payload(d / "EXECUTED")})
        (p / WEIGHTS_FILE).write_bytes(payload)
        (p / "model.pth").write_bytes(payload)
        return p

    def pth_only(d: Path, kind: str) -> Path:
        p = _save_tiny(d / "m", kind)
        (p / WEIGHTS_FILE).unlink()
        (p / "model.pth").write_bytes(pickle.dumps(_Payload(d / "EXECUTED")))
        return p

    def other_kind(d: Path, kind: str) -> Path:
        return _save_tiny(d / "m", "restoration" if kind == "segmentation" else "segmentation")

    def flip_a_weight(path: Path) -> bytes:
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF  # a tensor value, not the header: the checksum must catch it
        return bytes(data)

    return {
        "no such model name": lambda d, kind: "no-such-model-xyz",
        "name escaping the model folder": lambda d, kind: "../../etc",
        "an empty folder": lambda d, kind: (d / "m").mkdir() or d / "m",
        "model.json missing": remove(CONFIG_FILE),
        "weights missing": remove(WEIGHTS_FILE),
        "model.json not JSON": write(CONFIG_FILE, lambda p: b"{not json"),
        "model.json a list": write(CONFIG_FILE, lambda p: b"[1, 2]"),
        "model.json unknown key": edit_json(lambda c: c.update(surprise=1)),
        "model.json unknown encoder": edit_json(lambda c: c["arch"].update(encoder="vgg99")),
        "model.json absurd scale": edit_json(lambda c: c["arch"].update(scale=1000)),
        "model.json negative receptive field": edit_json(
            lambda c: c.update(receptive_field=-5)),
        "model.json receptive field of ten million": edit_json(
            lambda c: c.update(receptive_field=10_000_000)),
        "checksum removed": edit_json(lambda c: c.update(weights_sha256="")),
        "checksum of other weights": edit_json(lambda c: c.update(weights_sha256="0" * 64)),
        "weights truncated": write(WEIGHTS_FILE, lambda p: p.read_bytes()[:100]),
        "weights random bytes": write(WEIGHTS_FILE, lambda p: np.random.default_rng(6).bytes(512)),
        "a weight flipped": write(WEIGHTS_FILE, flip_a_weight),
        "weights a crafted pickle": pickled,
        "only a pickled model.pth": pth_only,
        "a model of the other kind": other_kind,
    }


MODEL_COMMANDS = ("restore", "segment", "train --resume")


def _model_case(command: str, label: str, make) -> Case:
    def prepare(d: Path) -> Run:
        kind = "segmentation" if command == "segment" else "restoration"
        model = make(d, kind)
        src = _good(d)
        if command == "train --resume":
            out = d / "trained"
            run = Run(["train", "--hr", str(src), "--scale", "2", "--out", str(out),
                       "--resume", str(model), "--epochs", "1", "--iters", "2", "--batch", "2",
                       "--patch", "16", "--device", "cpu", "--quiet"], output=out)
        else:
            tool = "restore" if command == "restore" else "segment"
            out = d / ("out.zarr" if tool == "restore" else "labels.tif")
            run = Run([tool, str(model), str(src), str(out), "--device", "cpu", "--quiet"],
                      output=out)
        run.keep.append(src)
        if isinstance(model, Path) and model.exists():
            run.keep.append(model)
        run.marker = d / "EXECUTED"
        return run
    return Case(f"model, {command}", label, "error", prepare)


# --------------------------------------------------------------------------- output paths

OUTPUT_COMMANDS = ("restore", "segment", "crappify", "evaluate (prediction)", "train")


def _output_cases() -> list[Case]:
    ext = {"restore": "out.zarr", "segment": "labels.tif", "crappify": "lr.tif",
           "evaluate (prediction)": "scores.json", "train": "trained"}
    wrong_ext = {"restore": "out.png", "segment": "labels.png", "crappify": "lr.jpg",
                 "evaluate (prediction)": "scores.txt", "train": "trained.tif"}
    cases = []
    for command in OUTPUT_COMMANDS:
        def exists(d, command=command):
            src = _good(d)
            run = _command(command, d, src)
            if command == "restore":
                from ..io import write_ome_zarr

                write_ome_zarr(run.output, np.ones((2, 128, 128), np.float32), axes="ZYX")
            elif command == "train":
                _save_tiny(run.output)
            else:
                run.output.write_bytes(b"precious")
            run.keep += [src, run.output]
            run.fresh_output = False
            return run

        def same_as_input(d, command=command):
            src = _good(d, ext[command] if command != "train" else "in.tif")
            run = _command(command, d, src, out=src)
            run.keep.append(src)
            run.fresh_output = False
            return run

        def output_a_folder(d, command=command):
            src = _good(d)
            out = d / ext[command]
            out.mkdir()
            (out / "notes.txt").write_text("mine")
            run = _command(command, d, src, out=out)
            run.keep += [src, out]
            run.fresh_output = False
            return run

        def missing_parent(d, command=command):
            src = _good(d)
            run = _command(command, d, src, out=d / "no" / "such" / "dir" / ext[command])
            run.keep.append(src)
            return run

        def same_as_input_overwrite(d, command=command):
            run = same_as_input(d)
            run.argv.append("--overwrite")
            return run

        for label, fn in (("output exists (no --overwrite)", exists),
                          ("output is the input", same_as_input),
                          ("output is the input, with --overwrite", same_as_input_overwrite),
                          ("output is a folder of the user's", output_a_folder)):
            if command == "train" and label.startswith("output is the input"):
                continue
            if command == "restore" and label == "output is a folder of the user's":
                continue  # covered by "output exists" (a store) and by io's tests
            cases.append(Case(f"output, {command}", label, "error",
                              lambda d, fn=fn: _with_models(d, fn)))
        cases.append(Case(f"output, {command}", "output in a folder that does not exist", "ok",
                          lambda d, fn=missing_parent: _with_models(d, fn)))
        if command == "evaluate (prediction)":
            def identical(d):
                src = _good(d)
                gt = _good(d, "gt.tif")  # the same pixels: an infinite PSNR
                out = d / "scores.json"
                return Run(["evaluate", str(src), str(gt), "--json", str(out)], output=out,
                           keep=[src, gt])
            cases.append(Case("output, evaluate (prediction)",
                              "scores of identical images (infinite PSNR) are standard JSON",
                              "ok", lambda d, fn=identical: _with_models(d, fn)))
        if command in wrong_ext:
            def wrong(d, command=command):
                src = _good(d)
                run = _command(command, d, src, out=d / wrong_ext[command])
                run.keep.append(src)
                return run
            cases.append(Case(f"output, {command}", "an extension it cannot write", "error",
                              lambda d, fn=wrong: _with_models(d, fn)))
    return cases


def _with_models(d: Path, fn) -> Run:
    _save_tiny(d / "model")
    _save_tiny(d / "seg", "segmentation")
    return fn(d)


# ---------------------------------------------------------------------------- the table

def cases() -> list[Case]:
    """Every case of the battery (cheap to build: nothing is prepared until a case runs)."""
    out = []
    for command in INPUT_COMMANDS:
        for label, make in _bad_inputs().items():
            out.append(_input_case(command, label, make, "error"))
        for label, make in _good_inputs().items():
            if command == "train" and label == "constant image":
                continue  # nothing to learn from: refused, tested as a bad input below
            # crappify's noise levels are fractions of full scale: a float image outside
            # [0, 1] has none, and is refused with what to do (divide by its maximum)
            # and a blank ground truth has nothing to score (blank planes are skipped)
            # (int32's 2^31 neither: its noise levels have no full scale; without noise it is
            # crappified, and training puts noise on the data's normalised range)
            refused = ((command, label) in (("crappify", "float64 negative"),
                                            ("crappify", "int32 counts"))
                       or (command, label) == ("evaluate (ground truth)", "constant image"))
            out.append(_input_case(command, label, make, "error" if refused else "ok"))
    out.append(_input_case("train", "constant image", _good_inputs()["constant image"], "error"))
    for command in MODEL_COMMANDS:
        for label, make in _bad_models().items():
            if command == "segment" and label == "model.json absurd scale":
                continue  # a segmentation model has no scale
            out.append(_model_case(command, label, make))
    out.extend(_output_cases())
    out.extend(_argument_case(*a) for a in _bad_arguments())
    return out
