"""Restoration and segmentation networks, and their safe on-disk format.

A model is a folder with two files:

``model.json``
    schema-versioned description (:class:`ModelFile`): architecture, scale, channels, frames,
    intensity normalisation, receptive field (the tiling halo), the crappifier it was trained
    with, a fingerprint of the training data, held-out metrics and library versions.
``model.safetensors``
    the weights. Never a pickle: loading a model file cannot run code.

Networks are fastai :class:`~fastai.vision.models.unet.DynamicUnet` s on a ResNet encoder.
Two upsampling strategies exist (see :class:`~napari_decrappify.config.ArchConfig`):

``lr_grid`` (default)
    the U-Net runs on the low-resolution grid and a final pixel-shuffle stage with ICNR init
    upsamples by ``scale``: at 4x it puts 16x fewer pixels through the encoder.
``pre_upsample``
    the input is upsampled bicubically first and the U-Net refines on the HR grid, as the
    original PSSR did.

With ``residual=True`` the network predicts a correction to the bilinear upsampling of the
centre frame, so an untrained network already starts near interpolation quality.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn
from torch.nn import functional as F

from .config import MAX_HALO, ArchConfig, CrappifyConfig, NormConfig

SCHEMA_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
ZOO_DIR = Path(__file__).parent / "zoo"


class ModelFileError(ValueError):
    """A model folder that is missing, corrupt, of an unknown version, or inconsistent."""


class ModelFile(BaseModel):
    """Schema of ``model.json`` (validated on load; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    kind: Literal["restoration", "segmentation"] = "restoration"
    name: str = "unnamed"
    description: str = ""
    arch: ArchConfig = Field(default_factory=ArchConfig)
    norm: NormConfig = Field(default_factory=NormConfig)
    receptive_field: int = Field(0, ge=0, le=MAX_HALO)  # measured; the exact tiling halo
    alignment: int = Field(32, ge=1)
    # the default tiling halo: the smallest that keeps tiled output within a measured
    # tolerance of the exact output (engine.halo.measure_halo); None (older files): the
    # receptive field. How it was measured goes in halo_measurement.
    halo_px: int | None = Field(None, ge=0, le=MAX_HALO)
    halo_measurement: dict[str, Any] = Field(default_factory=dict)
    classes: list[str] = Field(default_factory=list)
    crappifier: CrappifyConfig | None = None
    pixel_size_nm: list[float] | None = None  # the HR's (Y, X): inputs are expected at x scale
    # statistics of the training inputs (napari_decrappify.domain): out-of-domain warnings
    domain: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    weights_sha256: str = ""
    weights_dtype: Literal["float32", "float16"] = "float32"

    @property
    def default_halo(self) -> int:
        """The halo the engine uses when none is given: the measured tolerance halo
        (``halo_px``) if recorded for these weights, else the receptive field (exact)."""
        # measured on other weights (a fine-tune starts from a copy of its start's config):
        # stale, so the exact halo
        measured_on = self.halo_measurement.get("weights_sha256")
        if self.halo_px is None or measured_on not in (None, self.weights_sha256):
            return self.receptive_field
        return int(self.halo_px)

    @model_validator(mode="after")
    def _alignment_fits_encoder(self):
        # tiles are cut at multiples of the alignment: it must be a multiple of the encoder's
        # stride, or the U-Net's skip connections meet feature maps of unequal size
        stride = ENCODER_STRIDE[self.arch.encoder]
        if self.alignment % stride:
            raise ValueError(f"alignment {self.alignment} is not a multiple of the {self.arch.encoder} "
                             f"encoder's stride {stride}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _relu_before_activation_field(cls, data):
        # files written before ``arch.activation`` existed were all built with ReLU; the
        # default for new models is leaky ReLU, so a missing field must not take the default
        if isinstance(data, dict) and isinstance(data.get("arch"), dict) \
                and "activation" not in data["arch"]:
            data = {**data, "arch": {**data["arch"], "activation": "relu"}}
        return data


# --------------------------------------------------------------------------- architectures


def _tiny_encoder(n_in: int) -> nn.Sequential:
    """A 4-level ResNet-style encoder with few channels: fast CPU tests and demos."""
    from fastai.layers import ConvLayer, ResBlock

    return nn.Sequential(
        ConvLayer(n_in, 16, ks=3),
        ResBlock(1, 16, 32, stride=2),
        ResBlock(1, 32, 64, stride=2),
        ResBlock(1, 64, 128, stride=2),
    )


def _resnet_encoder(name: str, n_in: int) -> nn.Sequential:
    """A randomly initialised torchvision ResNet body with ``n_in`` input channels.

    ``resnet18s`` is resnet18 cut after ``layer3`` (stride 16, 256 channels): a quarter of the
    parameters and a much smaller receptive field, which keeps tiling halos small.
    """
    from fastai.vision.learner import create_body
    from torchvision import models as tvm

    base = name.rstrip("s") if name.endswith("s") else name
    net = getattr(tvm, base)(weights=None)
    cut = -3 if name.endswith("s") else -2
    return create_body(net, n_in=n_in, pretrained=False, cut=cut)


def build_encoder(encoder: str, n_in: int) -> nn.Sequential:
    """Encoder by name: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet18s`` or ``tiny``."""
    if encoder == "tiny":
        return _tiny_encoder(n_in)
    if encoder in ("resnet18", "resnet34", "resnet50", "resnet18s"):
        return _resnet_encoder(encoder, n_in)
    raise ModelFileError(f"unknown encoder architecture {encoder!r}")


ENCODER_STRIDE = {"tiny": 8, "resnet18s": 16, "resnet18": 32, "resnet34": 32, "resnet50": 32}


LEAKY_SLOPE = 0.1


def decoder_activation(name: str) -> type[nn.Module] | Any:
    """The activation class the U-Net decoder is built with (``relu`` or ``leaky_relu``)."""
    if name == "relu":
        return nn.ReLU
    if name == "leaky_relu":
        from functools import partial

        return partial(nn.LeakyReLU, negative_slope=LEAKY_SLOPE)
    raise ModelFileError(f"unknown decoder activation {name!r}")


def pixel_shuffle_icnr(ni: int, nf: int, scale: int, blur: bool) -> nn.Module:
    """fastai's ``PixelShuffle_ICNR`` (weight-normed 1x1 conv, pixel shuffle, optional blur),
    buildable at every scale.

    fastai's ICNR init works in 2x2 sub-blocks whatever the scale: at 4x each row of a 4x4
    output block starts from its own kernel. Even scales use fastai's module as it is. Odd
    scales (3x, 5x, 7x), where fastai's init fails ("shape '[32, 9, 1, 1]' is invalid"), get
    the same layers (same state-dict keys) with ICNR done at their own scale: every s x s block
    starts as one value.

    ICNR at the full scale was tried at 4x too, and it trained worse on CREMI (resnet18s, L1,
    lr 3e-3, 600 iterations: validation 25.46 dB against 25.72 dB with fastai's init; a 10-minute
    run diverged at the peak learning rate). The bundled models were trained with fastai's init.
    """
    from fastai.layers import ConvLayer, NormType, PixelShuffle_ICNR, icnr_init

    if scale % 2 == 0:
        return PixelShuffle_ICNR(ni, nf, scale=scale, blur=blur, act_cls=None)
    conv = ConvLayer(ni, nf * scale**2, ks=1, norm_type=NormType.Weight, act_cls=None, bias_std=0)
    layers = [conv, nn.PixelShuffle(scale)]
    if blur:
        layers += [nn.ReplicationPad2d((1, 0, 1, 0)), nn.AvgPool2d(2, stride=1)]
    w = conv[0]
    with torch.no_grad():
        w.weight_v.copy_(icnr_init(w.weight_v.data, scale=scale))
        w.weight_g.copy_((w.weight_v**2).sum(dim=[1, 2, 3]).sqrt()[:, None, None, None])
    return nn.Sequential(*layers)


class RestorationNet(nn.Module):
    """DynamicUnet (+ pixel-shuffle upsampling) mapping ``frames`` LR planes to HR planes.

    Input ``(N, frames * in_channels, h, w)``; output ``(N, out_channels, h*s, w*s)``, both in
    normalised intensity units. ``h`` and ``w`` must be multiples of the encoder stride.
    """

    def __init__(self, arch: ArchConfig, head: Literal["identity", "softmax"] = "identity"):
        super().__init__()
        from fastai.layers import NormType
        from fastai.vision.models.unet import DynamicUnet

        self.arch = arch
        self.head = head
        n_in = arch.frames * arch.in_channels
        encoder = build_encoder(arch.encoder, n_in)
        norm_type = NormType.Spectral if arch.spectral_norm else None
        stride = ENCODER_STRIDE[arch.encoder]
        img_size = (stride * 4, stride * 4)
        act_cls = decoder_activation(arch.activation)
        self.upsample: nn.Module | None = None
        if arch.strategy == "lr_grid" and arch.scale > 1:
            features = arch.head_features
            self.unet = DynamicUnet(
                encoder, features, img_size, blur=arch.blur, self_attention=arch.self_attention,
                norm_type=norm_type, act_cls=act_cls,
            )
            # ICNR init (fastai's, in 2x2 sub-blocks; see pixel_shuffle_icnr) and blur: no checkerboard
            self.upsample = pixel_shuffle_icnr(features, arch.out_channels, arch.scale, arch.blur)
        else:
            self.unet = DynamicUnet(
                encoder, arch.out_channels, img_size, blur=arch.blur,
                self_attention=arch.self_attention, norm_type=norm_type, act_cls=act_cls,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arch = self.arch
        if arch.strategy == "pre_upsample" and arch.scale > 1:
            x = F.interpolate(x, scale_factor=arch.scale, mode="bicubic", align_corners=False)
        y = self.unet(x)
        if self.upsample is not None:
            y = self.upsample(y)
        if arch.residual and self.head == "identity" and arch.out_channels == arch.in_channels:
            centre = arch.frames // 2 * arch.in_channels
            base = x[:, centre : centre + arch.in_channels]
            if arch.strategy == "lr_grid" and arch.scale > 1:
                base = F.interpolate(base, scale_factor=arch.scale, mode="bilinear",
                                     align_corners=False)
            y = y + base
        if self.head == "softmax":
            y = torch.softmax(y, dim=1)
        return y


# --------------------------------------------------------------------------- model object


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
        from .normalization import resolve

        return resolve(self.config.norm, image, given)

    def normalize(self, x: np.ndarray, norm: NormConfig | None = None) -> np.ndarray:
        """Input units -> network units (float32), by ``norm`` (from :meth:`input_norm`);
        default: the model's own for a fixed range, else from ``x``'s own percentiles."""
        from .normalization import normalize

        return normalize(x, norm if norm is not None else self.input_norm(np.asarray(x)))

    def denormalize(self, y: np.ndarray, norm: NormConfig | None = None) -> np.ndarray:
        """Network units -> input units (restoration models only), by the ``norm`` the input
        was normalised with (required when the model normalises from the data)."""
        from .normalization import denormalize

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


MAX_RF_PROBE = 1536  # largest probe side (input pixels) tried before giving up with a warning


def measure_receptive_field(net: nn.Module, arch: ArchConfig, size: int | None = None,
                            mass_tol: float = 2e-6, max_size: int = MAX_RF_PROBE) -> int:
    """Effective radius, in input pixels, of the region that influences an output pixel.

    Measured, not computed from layer sizes: the gradient ``g`` of a few central output pixels
    with respect to a random input, in eval mode. The radius is the smallest ``r`` such that the
    gradient mass outside the ``(2r+1)^2`` square, ``sum |g|``, is below ``mass_tol`` per output
    pixel. To first order an input change of at most 1 (normalised units) beyond ``r`` then
    changes an output pixel by less than ``mass_tol``: a tiling halo of ``r`` gives seams far
    below 1e-4.

    The probe starts at ``size`` (default ``max(384, 16 * stride)``) and doubles, up to
    ``max_size``, while the radius reaches its edge: deep encoders (resnet34: about 450 px) see
    further than a small probe. A radius still cut by the largest probe is returned with a
    warning (it is then a lower bound). Self-attention makes this the whole input.
    """
    stride = ENCODER_STRIDE[arch.encoder]
    size = size or max(384, stride * 16)
    while True:
        r = _gradient_radius(net, arch, size, stride, mass_tol)
        if r < size // 2:
            return r
        if size * 2 > max_size:
            warnings.warn(f"the receptive field of this {arch.encoder} model reaches the edge of "
                          f"the largest probe ({size} px): it is at least {r} px; use a tiling "
                          "halo at least that large", RuntimeWarning, stacklevel=2)
            return r
        size *= 2


def dead_encoder_warning(receptive_field: int, arch: ArchConfig) -> str | None:
    """A message when a trained U-Net's measured receptive field is below its encoder's stride.

    The encoder path of a live U-Net reaches far beyond one encoder stride; a field smaller than
    that means the deep path no longer depends on the input and the network acts as its last,
    local block. Seen on CREMI 4x with resnet18s, a ReLU decoder and the L1 loss at ``lr_max``
    1e-3 to 5e-3: the last decoder block's 80 ReLU units were all off for every input within 3
    minutes (field 14 px; MS-SSIM + L1 kept 178 px; a leaky ReLU decoder keeps 176 px with L1).
    Such a model can score well, but it is not the U-Net it claims to be.
    """
    stride = ENCODER_STRIDE[arch.encoder]
    if receptive_field >= stride:
        return None
    return (f"the trained {arch.encoder} U-Net sees only {receptive_field} px around each "
            f"pixel, less than one encoder stride ({stride} px): its encoder no longer "
            "contributes and it acts as a small local filter; if that is not intended, retrain "
            + ("with --activation leaky_relu (its decoder ReLUs died)" if arch.activation == "relu"
               else "with --loss msssim_l1 or a lower --lr-max"))


def _gradient_radius(net: nn.Module, arch: ArchConfig, size: int, stride: int,
                     mass_tol: float) -> int:
    """Radius of the input square holding all but ``mass_tol`` of the central outputs'
    gradient mass, on a ``size x size`` random probe (``size // 2`` if it never does)."""
    was_training = net.training
    net.eval()
    # softmax outputs sum to 1 over classes: their summed gradient is zero. Measure on logits.
    head = getattr(net, "head", None)
    if head == "softmax":
        net.head = "identity"
    x = torch.rand(1, arch.frames * arch.in_channels, size, size, requires_grad=True)
    try:
        y = net(x)
        c = y.shape[-1] // 2
        s = arch.scale if arch.strategy == "lr_grid" else 1
        # a few output pixels around the centre: the stride phase changes the footprint
        step = max(1, s * stride // 4)
        y[0, :, c : c + s * stride : step, c].sum().backward()
    finally:
        if head is not None:
            net.head = head
        net.train(was_training)
    g = x.grad.abs().sum(dim=(0, 1)).double().numpy() / max(1, stride * s // step)
    del x, y
    # mass outside the square of radius r, for every r at once, from the 2-D cumulative sum
    centre = size // 2
    total = g.sum()
    cum = np.pad(g.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    r = np.arange(1, centre)
    lo, hi = centre - r, centre + r + 1
    inside = cum[hi, hi] - cum[lo, hi] - cum[hi, lo] + cum[lo, lo]
    ok = np.nonzero(total - inside < mass_tol)[0]
    return int(r[ok[0]]) if ok.size else centre


def library_versions() -> dict[str, str]:
    import fastai

    from . import __version__

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


# --------------------------------------------------------------------------- save / load


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


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A model folder, a bioimage.io package (``*.zip``, see :mod:`napari_decrappify.bioimageio`),
    or the name of a bundled (``zoo``) or user model."""
    p = Path(name_or_path)
    if p.is_dir() or (p.suffix.lower() == ".zip" and p.is_file()):
        return p
    name = str(name_or_path)
    # a name is one folder inside a search folder: "../../x" must not reach outside them
    if name and name == p.name and name not in (".", ".."):
        for root in model_search_dirs():
            cand = root / name
            if (cand / CONFIG_FILE).exists():
                return cand
    known = ", ".join(sorted(m["name"] for m in list_models())) or "none"
    raise ModelFileError(
        f"no model folder or bundled model named {str(name_or_path)!r} (known: {known})"
    )


def model_stamp(path: str | os.PathLike) -> tuple:
    """What changes when a model is saved or exported anew at ``path``: ``(mtime_ns, size)``
    of a package's ``*.zip``, or of a folder's ``model.json`` and weights (None for a file
    that is missing: :func:`load_model` says what is missing).

    Caches of loaded models key on it: a package re-exported at the same path (a zip has no
    weights file of its own to look at) or weights saved anew into a folder are loaded again.
    """
    p = Path(path)
    files = [p] if p.suffix.lower() == ".zip" and not p.is_dir() else [p / CONFIG_FILE,
                                                                          p / WEIGHTS_FILE]
    return tuple(_file_stamp(f) for f in files)


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def model_search_dirs() -> list[Path]:
    from platformdirs import user_data_dir

    dirs = [ZOO_DIR, Path(user_data_dir("napari-decrappify")) / "models"]
    extra = os.environ.get("DECRAPPIFY_MODELS")
    if extra:
        dirs = [Path(p) for p in extra.split(os.pathsep)] + dirs
    return dirs


def list_models() -> list[dict[str, Any]]:
    """Bundled and user models: name, kind, scale, path, metrics."""
    out = []
    for root in model_search_dirs():
        if not root.is_dir():
            continue
        for cfg in sorted(root.glob(f"*/{CONFIG_FILE}")):
            try:
                meta = ModelFile.model_validate_json(cfg.read_text())
            except (ValidationError, ValueError):
                continue
            out.append({
                "name": cfg.parent.name, "kind": meta.kind, "scale": meta.arch.scale,
                "frames": meta.arch.frames, "encoder": meta.arch.encoder,
                "path": str(cfg.parent), "bundled": root == ZOO_DIR, "metrics": meta.metrics,
            })
    return out


def read_model_config(path: Path) -> ModelFile:
    cfg_path = path / CONFIG_FILE
    if not cfg_path.exists():
        raise ModelFileError(f"{path} is not a model folder: {CONFIG_FILE} is missing")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{cfg_path} is not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ModelFileError(f"{cfg_path} must hold a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ModelFileError(
            f"{cfg_path}: unknown schema_version {version!r} (this version reads {SCHEMA_VERSION})"
        )
    try:
        return ModelFile.model_validate(raw)
    except ValidationError as e:
        # one line per field, without pydantic's help URL (the CLI prints errors as one line)
        fields = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}"
                           + (f" (got {err['input']!r})" if "input" in err
                              and not isinstance(err["input"], dict) else "")
                           for err in e.errors())
        raise ModelFileError(f"{cfg_path} does not match the model schema: {fields}") from e


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
        from .bioimageio import load_bioimageio

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
    net = RestorationNet(config.arch, head=head)
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
