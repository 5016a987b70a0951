"""Reliability cases that need more than one run: interruptions, two writers, many threads.

Each case runs the real command line in a child process (``python -m napari_decrappify``),
interrupts it the way a batch system, a crash or a full disk would, reruns the same command and
compares the result bit for bit with an uninterrupted run. Outcomes as in
:mod:`.reliability_run`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .reliability_run import Case, _good, _save_tiny

STACK = (12, 384, 384)  # large enough that a restore with the tiny model takes a few seconds


def _cli(argv: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "napari_decrappify", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(started, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Wait until ``started()`` (the child wrote something) or the child ended."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if started():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _zarr_chunks(store: Path) -> int:
    return sum(1 for p in store.rglob("*") if p.is_file() and "c" in p.parts[len(store.parts):-1])


def _read(path: Path) -> np.ndarray:
    from ..io import open_image

    return np.asarray(open_image(path).data)


def _in_process(argv: list[str]) -> int:
    import contextlib
    import io

    from .. import cli

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return cli.main(argv)


def _in_process_with(owner, name: str, replacement, argv: list[str]) -> tuple[int, str]:
    """Run ``decrappify argv`` in-process with ``owner.name`` replaced (a writer that finds the
    disk full), put back whatever happens: the exit code and what the command printed to stderr."""
    import contextlib
    import io

    from .. import cli

    real = getattr(owner, name)
    setattr(owner, name, replacement)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
    finally:
        setattr(owner, name, real)
    return code, err.getvalue()


def _interrupted(command: str, how: str):
    """Interrupt ``command`` (restore to Zarr, crappify to TIFF) with ``how`` (SIGTERM or
    SIGKILL) once it has written its first data, rerun it, compare with a clean run."""

    def run(d: Path) -> tuple[str, str]:
        src = _good(d, "in.tif", STACK)
        _save_tiny(d / "model")
        if command == "restore":
            out, ref = d / "out.zarr", d / "ref.zarr"
            argv = ["restore", str(d / "model"), str(src), str(out), "--device", "cpu",
                    "--quiet", "--tile", "128"]
            started = lambda: out.exists() and _zarr_chunks(out) > 0  # noqa: E731
        else:
            out, ref = d / "lr.tif", d / "ref.tif"
            argv = ["crappify", str(src), str(out), "--scale", "2", "--seed", "3", "--quiet"]
            started = lambda: any(p.name.startswith("lr") and p != out  # noqa: E731
                                  for p in d.iterdir())
        before = src.read_bytes()
        proc = _cli(argv)
        if not _wait_for(started, proc):
            proc.wait()
            return "silent wrong", f"the run ended (exit {proc.returncode}) before it could " \
                                   "be interrupted: enlarge STACK"
        proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=120)
        if "Traceback" in err:
            return "traceback", err.strip().splitlines()[-1]
        if command == "restore" and _ome_complete_to_others(out):
            return "silent wrong", "a killed store opens in other OME-Zarr readers as an image"
        if how == "SIGTERM" and [p.name for p in d.iterdir() if p.name.endswith(".part")]:
            return "silent wrong", "SIGTERM left a .part file behind"
        if out.exists():
            try:
                _read(out)
                if proc.returncode != 0:
                    return "silent wrong", "an interrupted output reads as complete"
            except ValueError:
                pass  # unfinished, and says so
        code = _in_process(argv)  # the same command again: resumes (Zarr) or redoes (TIFF)
        if code != 0:
            return "silent wrong", f"the rerun failed (exit {code})"
        ref_argv = [str(ref) if a == str(out) else a for a in argv]
        if _in_process(ref_argv) != 0:
            return "silent wrong", "the uninterrupted run failed"
        if src.read_bytes() != before:
            return "data loss", "the input changed"
        a, b = _read(out), _read(ref)
        if a.shape != b.shape or not np.array_equal(a, b):
            return "silent wrong", "the resumed result differs from an uninterrupted run"
        return "ok", f"interrupted by {how}, resumed bit-exact"
    return run


def _ome_complete_to_others(store: Path) -> bool:
    """Whether another OME-Zarr reader would take ``store`` for an image: its group's
    attributes carry ``multiscales`` (plain zarr, none of our reader's checks)."""
    import json

    meta = store / "zarr.json"
    if not meta.exists():
        return False
    attrs = json.loads(meta.read_text()).get("attributes", {})
    return "multiscales" in attrs or "multiscales" in attrs.get("ome", {})


def _changed_input_resume(d: Path) -> tuple[str, str]:
    """Kill a restore of a Zarr input, rewrite the input's chunks in place, rerun: the result
    must be that of the new input (not finished chunks of the old one mixed in)."""
    import zarr

    from ..io import write_ome_zarr

    rng = np.random.default_rng(11)
    src = d / "in.zarr"
    write_ome_zarr(src, (rng.random(STACK) * 255).astype(np.uint8), axes="ZYX")
    _save_tiny(d / "model")
    out, ref = d / "out.zarr", d / "ref.zarr"
    argv = ["restore", str(d / "model"), str(src), str(out), "--device", "cpu", "--quiet",
            "--tile", "128"]
    proc = _cli(argv)
    if not _wait_for(lambda: out.exists() and _zarr_chunks(out) > 0, proc):
        proc.wait()
        return "silent wrong", "the run ended before it could be interrupted"
    proc.kill()
    proc.wait()
    arr = zarr.open_array(str(src / "0"), mode="r+")
    arr[...] = (rng.random(STACK) * 255).astype(np.uint8)  # same shape, new data, in place
    if _in_process(argv) == 0:
        return "silent wrong", "the unfinished store was resumed on a changed input"
    if _in_process([*argv, "--overwrite"]) != 0:
        return "silent wrong", "the rerun with --overwrite failed"
    if _in_process([*argv[:3], str(ref), *argv[4:]]) != 0:
        return "silent wrong", "the run on the new input failed"
    if not np.array_equal(_read(out), _read(ref)):
        return "silent wrong", "the rerun mixed chunks of the old input into the new result"
    return "ok", ("input rewritten in place: not resumed (another computation), and with "
                  "--overwrite equal to a clean run")


def _second_run(overwrite: bool):
    """A second run on the output a first one is writing is refused at once, and the first
    finishes a complete store."""

    def run(d: Path) -> tuple[str, str]:
        src = _good(d, "in.tif", STACK)
        _save_tiny(d / "model")
        out = d / "out.zarr"
        argv = ["restore", str(d / "model"), str(src), str(out), "--device", "cpu", "--quiet",
                "--tile", "128"]
        first = _cli(argv)
        if not _wait_for(lambda: out.exists() and _zarr_chunks(out) > 0, first):
            first.wait()
            return "silent wrong", "the first writer ended before the second started"
        second = subprocess.run([sys.executable, "-m", "napari_decrappify", *argv,
                                 *(["--overwrite"] if overwrite else [])],
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        _, err = first.communicate(timeout=300)
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        if second.returncode == 0:
            return "silent wrong", "two processes wrote the same output"
        if "Traceback" in second.stderr or "Traceback" in err:
            return "traceback", (second.stderr or err).strip().splitlines()[-1]
        if first.returncode != 0:
            return "data loss", f"the first writer failed (exit {first.returncode})"
        if len(lines) != 1:
            return "unclear error", " / ".join(lines)[:200]
        data = _read(out)
        if data.shape[0] != STACK[0] or not np.isfinite(data).all():
            return "silent wrong", "the first writer's output is damaged"
        return "ok", f"the second writer was refused: {lines[0][:120]}"
    return run


def _full_disk_tiff(d: Path) -> tuple[str, str]:
    """A disk that fills up while crappify writes a TIFF: one line saying so, no file and no
    ``.part`` left, and the same command succeeds once there is space."""
    import tifffile

    src = _good(d, "in.tif", (6, 128, 128))
    out = d / "lr.tif"
    argv = ["crappify", str(src), str(out), "--scale", "2", "--quiet"]

    def filling(self, data=None, *a, **k):
        for k_plane, _ in enumerate(data):
            if k_plane == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        raise AssertionError("unreachable")

    code, stderr = _in_process_with(tifffile.TiffWriter, "write", filling, argv)
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code == 0:
        return "silent wrong", "a full disk was not reported"
    if len(lines) != 1 or "disk is full" not in lines[0]:
        return "unclear error", " / ".join(lines)[:200]
    if out.exists() or [p for p in d.iterdir() if p.name.endswith(".part")]:
        return "silent wrong", "a full disk left a file behind"
    if _in_process(argv) != 0:
        return "silent wrong", "the rerun failed"
    return "ok", "disk full while writing a TIFF: one clear line, nothing left, rerun complete"


def _full_disk_training(d: Path) -> tuple[str, str]:
    """A disk that fills up as train saves its model: one line that says where the last
    checkpoint is, and that checkpoint loads (the training is not lost)."""
    import safetensors.torch
    from safetensors import SafetensorError

    from ..models import load_model

    src = _good(d, "in.tif", (2, 64, 64))
    out, ck = d / "trained", d / "ck"
    argv = ["train", "--hr", str(src), "--scale", "2", "--out", str(out), "--encoder", "tiny",
            "--epochs", "1", "--iters", "2", "--batch", "2", "--patch", "16", "--device", "cpu",
            "--quiet", "--checkpoint-dir", str(ck)]
    real = safetensors.torch.save_file

    def filling(tensors, filename, *a, **k):
        if str(ck) not in str(filename):  # checkpoints fit; the final model does not
            raise SafetensorError("Error while serializing: IoError(No space left on device "
                                  "(os error 28))")
        return real(tensors, filename, *a, **k)

    code, stderr = _in_process_with(safetensors.torch, "save_file", filling, argv)
    lines = [line for line in stderr.splitlines()
             if line.strip() and not line.startswith("note: ")]
    if code == 0:
        return "silent wrong", "a full disk while saving was not reported"
    if "Traceback" in stderr:
        return "traceback", lines[-1][:200]
    if len(lines) != 1 or "space" not in lines[0] or str(ck) not in lines[0]:
        return "unclear error", " / ".join(lines)[:300]
    if out.exists() and (out / "model.json").exists():
        return "silent wrong", "a half-saved model folder was left as if complete"
    try:
        load_model(ck / "last")
    except Exception as e:  # noqa: BLE001 - the outcome measured
        return "data loss", f"the checkpoint does not load: {e}"
    return "ok", "disk full at the final save: one line naming the checkpoint, which loads"


# a 100 000 x 100 000 image that is all fill value: nothing to read from disk, so the memory a
# command uses is its own (the issue measured 5 GB in 25 s for crappify and evaluate)
HUGE = (100_000, 100_000)
MEMORY_LIMIT = 2.5 * 2**30


def _peak_rss(proc: subprocess.Popen, seconds: float) -> float:
    """The peak resident memory (VmHWM) of ``proc`` over ``seconds`` (or until it ends)."""
    peak, t0 = 0.0, time.monotonic()
    while time.monotonic() - t0 < seconds and proc.poll() is None:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, float(line.split()[1]) * 1024)
        time.sleep(0.1)
    return peak


def _bounded_memory(command: str):
    def run(d: Path) -> tuple[str, str]:
        import zarr

        huge = d / "huge.zarr"
        zarr.create_array(str(huge), shape=HUGE, chunks=(2048, 2048), dtype="uint8",
                          fill_value=100)
        _save_tiny(d / "model")
        _save_tiny(d / "seg", "segmentation")
        argv = {
            "restore": ["restore", str(d / "model"), str(huge), str(d / "o.zarr"), "--axes",
                        "YX", "--device", "cpu", "--quiet"],
            "segment": ["segment", str(d / "seg"), str(huge), str(d / "l.zarr"), "--axes",
                        "YX", "--device", "cpu", "--quiet"],
            "crappify": ["crappify", str(huge), str(d / "lr.zarr"), "--scale", "4", "--axes",
                         "YX", "--quiet"],
            "crappify to TIFF": ["crappify", str(huge), str(d / "lr.tif"), "--scale", "4",
                                 "--axes", "YX", "--quiet"],
            "evaluate": ["evaluate", str(huge), str(huge), "--json", str(d / "s.json")],
        }[command]
        proc = _cli(argv)
        peak = _peak_rss(proc, 20.0)
        alive = proc.poll() is None
        proc.kill()
        _, err = proc.communicate(timeout=60)
        if not alive and proc.returncode != 0:
            if "Traceback" in err:
                return "traceback", err.strip().splitlines()[-1][:200]
            lines = [line for line in err.splitlines() if line.strip()]
            return "unclear error", f"exit {proc.returncode}: {' / '.join(lines)[:200]}"
        if peak > MEMORY_LIMIT:
            return "silent wrong", f"{peak / 2**30:.2f} GiB within 20 s on a 10^10-pixel image"
        return "ok", f"peak {peak / 2**30:.2f} GiB over 20 s on a 10^10-pixel image"
    return run


def _full_disk(d: Path) -> tuple[str, str]:
    """A disk that fills up during a restore: one clear error, an unfinished store, and the
    same command resumes it bit-exact once there is space."""
    from .. import io as dio

    src = _good(d, "in.tif", (4, 256, 256))
    _save_tiny(d / "model")
    out, ref = d / "out.zarr", d / "ref.zarr"
    argv = ["restore", str(d / "model"), str(src), str(out), "--device", "cpu", "--quiet",
            "--tile", "128"]
    real, writes = dio._zarr_array, []

    class Filling:
        def __init__(self, arr):
            self.arr = arr

        def __setitem__(self, key, value):
            writes.append(1)
            if len(writes) > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.arr[key] = value

        def __getattr__(self, name):
            return getattr(self.arr, name)

    code, stderr = _in_process_with(dio, "_zarr_array", lambda *a, **k: Filling(real(*a, **k)),
                                    argv)
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code == 0:
        return "silent wrong", "a full disk was not reported"
    if len(lines) != 1 or "disk is full" not in lines[0]:
        return "unclear error", " / ".join(lines)[:200]
    try:
        _read(out)
        return "silent wrong", "the store a full disk interrupted reads as complete"
    except ValueError:
        pass
    if _in_process(argv) != 0 or _in_process([*argv[:3], str(ref), *argv[4:]]) != 0:
        return "silent wrong", "the rerun failed"
    if not np.array_equal(_read(out), _read(ref)):
        return "silent wrong", "the resumed result differs from an uninterrupted run"
    return "ok", "disk full: one clear line, resumed bit-exact"


def _threads(entry: str):
    """Several threads restoring through one model object give what one thread gives."""

    def run(d: Path) -> tuple[str, str]:
        import napari_decrappify as nd

        from ..models import load_model

        model = load_model(_save_tiny(d / "model"))
        rng = np.random.default_rng(7)
        images = [rng.random((64, 96), dtype=np.float32) for _ in range(4)]
        if entry == "restore":
            call = lambda im: np.asarray(nd.restore(im, model, lazy=False))  # noqa: E731
        elif entry == "restore (lazy)":
            call = lambda im: np.asarray(nd.restore(im, model).compute())  # noqa: E731
        elif entry == "RestorationModel.predict_plane":
            call = lambda im: np.asarray(model.predict_plane(im[None]))  # noqa: E731
        elif entry == "segment":
            model = load_model(_save_tiny(d / "seg", "segmentation"))
            call = lambda im: np.asarray(nd.segment(im, model).probabilities)  # noqa: E731
        else:
            def call(im):
                restored = np.asarray(nd.restore(im, model, lazy=False))
                return np.asarray(nd.lr_consistency(restored, im, model)["psnr"])
        expected = [call(im) for im in images]
        got, errors = [None] * 8, []

        def work(k):
            try:
                got[k] = call(images[k % 4])
            except Exception as e:  # noqa: BLE001 - the outcome measured
                errors.append(e)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        if errors:
            return "traceback", f"{type(errors[0]).__name__}: {errors[0]}"
        if any(not np.array_equal(got[k], expected[k % 4]) for k in range(8)):
            return "silent wrong", "threads sharing a model gave other results"
        return "ok", "8 threads, one model: identical to one thread"
    return run


def process_cases() -> list[Case]:
    """The interruption and concurrency cases (they run their own commands)."""
    out = []
    for command in ("restore", "crappify"):
        for how in ("SIGTERM", "SIGKILL"):
            out.append(Case("interruption", f"{command} stopped by {how}, then rerun", "ok",
                            None, custom=_interrupted(command, how)))
    out.append(Case("interruption", "restore on a disk that fills up, then rerun", "ok", None,
                    custom=_full_disk))
    out.append(Case("interruption", "restore killed, its Zarr input rewritten in place, rerun",
                    "ok", None, custom=_changed_input_resume))
    out.append(Case("interruption", "crappify to TIFF on a disk that fills up, then rerun", "ok",
                    None, custom=_full_disk_tiff))
    out.append(Case("interruption", "train on a disk that fills up at the final save", "ok",
                    None, custom=_full_disk_training))
    out.append(Case("concurrency", "a second run with --overwrite on an output being written",
                    "ok", None, custom=_second_run(overwrite=True)))
    out.append(Case("concurrency", "a second identical run on an output being written", "ok",
                    None, custom=_second_run(overwrite=False)))
    for command in ("restore", "segment", "crappify", "crappify to TIFF", "evaluate"):
        out.append(Case("memory", f"{command} of a 100000 x 100000 image stays under 2.5 GiB",
                        "ok", None, custom=_bounded_memory(command)))
    for entry in ("restore", "restore (lazy)", "lr_consistency", "segment",
                  "RestorationModel.predict_plane"):
        out.append(Case("concurrency", f"8 threads on one model through {entry}", "ok", None,
                        custom=_threads(entry)))
    return out
