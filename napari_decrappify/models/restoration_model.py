"""The model object: a network with the metadata needed to apply it correctly
(:class:`RestorationModel`: its intensities, its whole-plane prediction), and the hash that
identifies its weights (:func:`state_dict_sha256`)."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import NormConfig
from .model_file import ModelFile


@dataclass
class RestorationModel:
    """A network plus everything needed to apply it correctly.

    Attributes
    ----------
    net : torch.nn.Module
        The network, in eval mode, on CPU unless moved.
    config : ModelFile
        The metadata written to ``model.json``.
    path : Path or None
        Folder the model was loaded from, if any.
    """

    net: nn.Module
    config: ModelFile
    path: Path | None = None
    _hash: str | None = field(default=None, repr=False)
    # fastai's U-Net keeps the encoder's activations in hooks on the module: two threads in one
    # forward pass read each other's (outputs off by up to 68 grey levels, no error)
    _forward_lock: threading.Lock = field(default_factory=threading.Lock, repr=False,
                                          compare=False)

    def __getstate__(self) -> dict:  # copies (copy.deepcopy) get a lock of their own
        state = self.__dict__.copy()
        state.pop("_forward_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._forward_lock = threading.Lock()

    # -- conveniences
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def scale(self) -> int:
        return self.config.arch.scale

    @property
    def frames(self) -> int:
        return self.config.arch.frames

    @property
    def in_channels(self) -> int:
        return self.config.arch.in_channels

    @property
    def out_channels(self) -> int:
        return self.config.arch.out_channels

    @property
    def receptive_field(self) -> int:
        """Radius (input pixels) beyond which the output no longer depends on the input."""
        return self.config.receptive_field

    @property
    def alignment(self) -> int:
        return self.config.alignment

    @property
    def default_halo(self) -> int:
        """The halo the engine uses when none is given: the measured tolerance halo
        (``halo_px`` in ``model.json``) if recorded, else the receptive field (exact)."""
        return self.config.default_halo  # (the rule lives with model.json's fields)

    @property
    def weights_hash(self) -> str:
        """sha256 of the weights (first 12 hex digits), to tag results with the exact model."""
        if self._hash is None:
            self._hash = state_dict_sha256(self.net.state_dict())[:12]
        return self._hash

    # -- intensities
    def input_norm(self, image=None, given: tuple[float, float] | None = None) -> NormConfig:
        """The fixed normalisation this model applies to ``image`` (the whole input): its own
        for a fixed-range model, else one from the input's percentiles (or ``given``, the
        input's range measured beforehand), see :mod:`napari_decrappify.normalization`."""
        from ..normalization import resolve

        return resolve(self.config.norm, image, given)

    def normalize(self, x: np.ndarray, norm: NormConfig | None = None) -> np.ndarray:
        """Input units -> network units (float32), by ``norm`` (from :meth:`input_norm`);
        default: the model's own for a fixed range, else from ``x``'s own percentiles."""
        from ..normalization import normalize

        return normalize(x, norm if norm is not None else self.input_norm(np.asarray(x)))

    def denormalize(self, y: np.ndarray, norm: NormConfig | None = None) -> np.ndarray:
        """Network units -> input units (restoration models only), by the ``norm`` the input
        was normalised with (required when the model normalises from the data)."""
        from ..normalization import denormalize

        if self.kind != "restoration":
            return y
        if norm is None:
            if self.config.norm.mode != "fixed":
                raise ValueError("this model normalises its input from the data: pass the "
                                 "input's normalisation (model.input_norm(image)) to denormalize")
            norm = self.config.norm
        return denormalize(y, norm)

    # -- evaluation
    @torch.inference_mode()
    def predict_plane(self, plane: np.ndarray) -> np.ndarray:
        """Apply the model to one whole normalised ``(C, h, w)`` array (reflect-padded to the
        encoder stride), returning ``(out_channels, h*s, w*s)``. For small images and tests;
        the tiled engine in :mod:`napari_decrappify.tiling` is the way to process big data."""
        x = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None]
        h, w = x.shape[-2:]
        a = self.alignment
        ph, pw = (-h) % a, (-w) % a
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        device = next(self.net.parameters()).device
        with self._forward_lock:  # one forward pass at a time through this module
            y = self.net(x.to(device)).float().cpu().numpy()[0]
        s = self.scale
        return y[:, : h * s, : w * s]


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()
