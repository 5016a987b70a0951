"""A model on disk, safely: :func:`save_model` writes ``model.json`` + ``model.safetensors``
atomically; :func:`load_model` reads them back with every check (never a pickle; missing,
corrupt or truncated weights, a wrong sha256, dtype or architecture, NaN weights: one
:class:`ModelFileError` each)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import ModelFileError
from .lean_unet import supported as lean_supported
from .model_file import CONFIG_FILE, SCHEMA_VERSION, WEIGHTS_FILE, read_model_config
from .networks import RestorationNet
from .restoration_model import RestorationModel, state_dict_sha256
from .zoo import resolve_model_path


def save_model(model: RestorationModel, path: str | os.PathLike, *, fp16: bool = False,
               overwrite: bool = True) -> Path:
    """Write ``model.json`` + ``model.safetensors`` atomically into folder ``path``.

    The files go to a temporary folder beside ``path`` which is then renamed, so a crash never
    leaves a half-written model where a complete one is expected.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"model folder {path} exists (pass overwrite=True to replace it)")
    # overwrite replaces a model, never an arbitrary folder or file given by mistake as --out
    if path.exists() and not (path / CONFIG_FILE).is_file() and not _is_empty_dir(path):
        kind = "folder" if path.is_dir() else "file"
        raise FileExistsError(f"{path} is a {kind} that is not a model folder (no {CONFIG_FILE}): "
                              "refusing to replace it; choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    dtype = "float32"
    if fp16:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
        dtype = "float16"
    model.config.weights_sha256 = state_dict_sha256(state)
    model.config.weights_dtype = dtype
    if model.config.halo_px is not None and "weights_sha256" not in model.config.halo_measurement:
        # measured on the weights in memory (engine.halo.measure_halo): these weights
        model.config.halo_measurement["weights_sha256"] = model.config.weights_sha256
    model._hash = None
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"schema_version": str(SCHEMA_VERSION)})
        (tmp / CONFIG_FILE).write_text(model.config.model_dump_json(indent=2))
        # mkdtemp creates private (0700) folders; a model folder is ordinary shared data
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            if old.exists() and not path.exists():  # put the previous model back
                old.rename(path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if type(e).__name__ == "SafetensorError":  # a full disk, as safetensors reports it
            raise OSError(f"could not write the model to {path} ({e}): free some space and save "
                          "again") from e
        raise
    model.path = path
    return path


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
               ) -> RestorationModel:
    """Load a model folder (or bundled model by name) safely: no pickle, everything checked.

    A path ending in ``.zip`` is read as a bioimage.io package exported by this project
    (:func:`napari_decrappify.bioimageio.load_bioimageio`); other packages are refused.

    Raises
    ------
    ModelFileError
        Missing files, corrupt/truncated weights, unknown schema version or architecture,
        tensors that do not match the architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if Path(name_or_path).suffix.lower() == ".zip":  # a bioimage.io package this project exported
        from ..bioimageio import load_bioimageio

        return load_bioimageio(name_or_path, device=device)
    path = resolve_model_path(name_or_path)
    config = read_model_config(path)
    wpath = path / WEIGHTS_FILE
    if not wpath.exists():
        pickles = sorted(p.name for p in path.glob("*.pt*") if p.suffix in (".pt", ".pth"))
        hint = (f" ({', '.join(pickles)} is a PyTorch pickle, which is never loaded: pickles "
                "can run code)") if pickles else ""
        raise ModelFileError(f"{path}: weights file {WEIGHTS_FILE} is missing{hint}")
    with open(wpath, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte header length, then its JSON header ("{"); a pickle (protocol
    # >= 2) starts with 0x80, torch.save's zip with "PK"
    if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise ModelFileError(f"{wpath} is a pickle (torch.save), not safetensors: it is never "
                             "loaded, since unpickling can run code")
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{wpath} is corrupt or truncated ({e})") from e
    if not config.weights_sha256:
        # save_model always writes it: without it a flipped byte in the weights loads silently
        raise ModelFileError(f"{path / CONFIG_FILE}: no weights_sha256, so the weights cannot be "
                             "checked; re-save the model with napari_decrappify.models.save_model")
    if state_dict_sha256(state) != config.weights_sha256:
        raise ModelFileError(f"{wpath}: weights do not match the sha256 recorded in {CONFIG_FILE}")
    head = "softmax" if config.kind == "segmentation" else "identity"
    # the same network without fastai where it can (models.lean_unet): a restoring process
    # then never imports fastai or torchvision (~310 MB); training rebuilds fastai's
    net = RestorationNet(config.arch, head=head, lean=lean_supported(config.arch))
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ModelFileError(
            f"{wpath}: tensors do not match the architecture in {CONFIG_FILE} "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of wrong shape"
            f"{': e.g. ' + (missing + unexpected + wrong)[0]})"
        )
    stored = getattr(torch, config.weights_dtype)
    kinds = [k for k in expected if expected[k].is_floating_point() != state[k].is_floating_point()
             or (state[k].is_floating_point() and state[k].dtype != stored)]
    if kinds:
        raise ModelFileError(f"{wpath}: tensor {kinds[0]} is {state[kinds[0]].dtype}, but "
                             f"{CONFIG_FILE} says the weights are {config.weights_dtype}")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:  # NaN weights (a diverged run saved by other tools) would give all-NaN images
        raise ModelFileError(f"{wpath}: {len(broken)} tensors hold NaN or inf values "
                             f"(e.g. {broken[0]}): the weights are unusable")
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    net.eval().to(device)
    return RestorationModel(net=net, config=config, path=path)
