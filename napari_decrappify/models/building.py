"""New models: a randomly initialised model with its metadata (:func:`build_model`), a
multi-frame copy of a single-plane one (:func:`inflate_frames`), and the library versions a model
records (:func:`library_versions`)."""

from __future__ import annotations

import itertools
import platform

import numpy as np
import torch

from ..config import ArchConfig, NormConfig
from .model_file import ModelFile
from .networks import ENCODER_STRIDE, RestorationNet
from .receptive_field import measure_receptive_field
from .restoration_model import RestorationModel


def library_versions() -> dict[str, str]:
    import fastai

    from .. import __version__

    return {
        "napari_decrappify": __version__,
        "torch": torch.__version__,
        "fastai": fastai.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def build_model(arch: ArchConfig, *, kind: str = "restoration", name: str = "unnamed",
                norm: NormConfig | None = None, classes: list[str] | None = None,
                seed: int | None = 0, measure_rf: bool = True) -> RestorationModel:
    """Create a randomly initialised model (weights seeded) with its metadata.

    Parameters
    ----------
    arch : ArchConfig
        Architecture (encoder, strategy, scale, frames, channels).
    kind : {"restoration", "segmentation"}
        Segmentation models end in a softmax over ``out_channels`` classes.
    """
    if seed is not None:
        torch.manual_seed(seed)
    head = "softmax" if kind == "segmentation" else "identity"
    if kind == "segmentation":
        arch = arch.model_copy(update={"residual": False})
    net = RestorationNet(arch, head=head).eval()
    rf = measure_receptive_field(net, arch) if measure_rf else 0
    config = ModelFile(
        kind=kind, name=name, arch=arch, norm=norm or NormConfig(),
        receptive_field=rf, alignment=max(32, ENCODER_STRIDE[arch.encoder]),
        classes=classes or [], versions=library_versions(),
    )
    return RestorationModel(net=net, config=config)


def inflate_frames(model: RestorationModel, frames: int) -> RestorationModel:
    """A ``frames``-plane copy of a single-plane model that computes exactly what it did.

    Used to start multi-frame training (neighbouring z planes or time points as channels) from
    a trained single-plane model instead of from scratch. Every weight that reads the raw input
    (the encoder's first convolution, and the U-Net's last cross-connection, which
    concatenates the input after the decoder features) keeps its weights on the centre frame
    and gets zeros on the neighbours, so the new model ignores the neighbours until training
    teaches it to use them.

    Parameters
    ----------
    model : RestorationModel
        A restoration model with ``frames == 1``.
    frames : int
        Odd number of input planes of the new model.

    Returns
    -------
    RestorationModel
        A new model (the input model is not changed); its ``path`` is the original's.
    """
    arch = model.config.arch
    if arch.frames != 1:
        raise ValueError(f"model {model.name!r} already takes {arch.frames} frames; only a "
                         "single-frame model can be widened to more frames")
    new_arch = ArchConfig.model_validate({**arch.model_dump(), "frames": frames})  # odd, >= 1
    net = RestorationNet(new_arch, head=model.net.head).eval()
    old_state, c = model.net.state_dict(), arch.in_channels
    centre, extra = frames // 2 * c, (frames - 1) * c
    state = {}
    for key, new in net.state_dict().items():
        old = old_state[key]
        if old.shape == new.shape:
            state[key] = old.clone()
            continue
        # a tensor over the raw input's channels: they come last along every axis that grew
        # (the cross-connection concatenates [features, input]; the block after it keeps that
        # layout in its outputs, which only zero weights read afterwards)
        grown = [d for d in range(new.ndim) if new.shape[d] != old.shape[d]]
        if old.ndim != new.ndim or any(new.shape[d] - old.shape[d] != extra for d in grown):
            raise ValueError(f"cannot widen {model.name!r} to {frames} frames: weight {key} "
                             f"changes from {tuple(old.shape)} to {tuple(new.shape)}")
        widened = torch.zeros(new.shape, dtype=old.dtype)
        blocks = []  # per axis: (old slice, new slice) pairs
        for d in range(new.ndim):
            if d in grown:
                lead = old.shape[d] - c
                blocks.append([(slice(0, lead), slice(0, lead)),
                               (slice(lead, lead + c), slice(lead + centre, lead + centre + c))])
            else:
                blocks.append([(slice(None), slice(None))])
        for combo in itertools.product(*blocks):
            widened[tuple(n for _, n in combo)] = old[tuple(o for o, _ in combo)]
        state[key] = widened
    net.load_state_dict(state)
    config = model.config.model_copy(deep=True, update={"arch": new_arch})
    return RestorationModel(net=net, config=config, path=model.path)
