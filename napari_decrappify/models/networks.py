"""The networks: fastai :class:`~fastai.vision.models.unet.DynamicUnet` s on a ResNet encoder
(:func:`build_encoder`, :class:`RestorationNet`).

Two upsampling strategies exist (see :class:`~napari_decrappify.config.ArchConfig`):

``lr_grid`` (default)
    the U-Net runs on the low-resolution grid and a final pixel-shuffle stage with ICNR init
    upsamples by ``scale`` (:func:`pixel_shuffle_icnr`): at 4x it puts 16x fewer pixels through
    the encoder.
``pre_upsample``
    the input is upsampled bicubically first and the U-Net refines on the HR grid, as the
    original PSSR did.

With ``residual=True`` the network predicts a correction to the bilinear upsampling of the
centre frame, so an untrained network already starts near interpolation quality.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ArchConfig
from .errors import ModelFileError


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


# input pixels per band of the U-Net's full-resolution tail when restoring with a lean net
# (models.lean_unet.LeanUnet.run): 1024 x 640 px em-4x windows run in 3 bands
BAND_PX = 2**18
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

    def __init__(self, arch: ArchConfig, head: Literal["identity", "softmax"] = "identity",
                 lean: bool = False):
        super().__init__()
        self.arch = arch
        self.head = head
        # the same network without importing fastai (models.lean_unet): for restoring
        self.lean = bool(lean)
        if self.lean:
            self._build_lean()
            return
        from fastai.layers import NormType
        from fastai.vision.models.unet import DynamicUnet

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

    def _build_lean(self) -> None:
        from . import lean_unet

        arch = self.arch
        if not lean_unet.supported(arch):
            raise ValueError(f"no fastai-free build of {arch.encoder} with self-attention or "
                             "spectral norm: build it with lean=False")
        n_in = arch.frames * arch.in_channels
        img_size = ENCODER_STRIDE[arch.encoder] * 4
        act = decoder_activation(arch.activation)
        encoder = lean_unet.resnet_body(arch.encoder, n_in)
        self.upsample = None
        if arch.strategy == "lr_grid" and arch.scale > 1:
            self.unet = lean_unet.LeanUnet(encoder, n_in, arch.head_features, img_size,
                                           arch.blur, act)
            self.upsample = lean_unet.pixel_shuffle(arch.head_features, arch.out_channels,
                                                    arch.scale, arch.blur, weight_norm=True)
        else:
            self.unet = lean_unet.LeanUnet(encoder, n_in, arch.out_channels, img_size,
                                           arch.blur, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arch = self.arch
        if arch.strategy == "pre_upsample" and arch.scale > 1:
            x = F.interpolate(x, scale_factor=arch.scale, mode="bicubic", align_corners=False)
        if self.lean and not torch.is_grad_enabled():  # restoring: the tail in bands
            return self.unet.run(x, self._finish, band_px=BAND_PX)
        return self._finish(x, self.unet(x))

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """After the U-Net: upsampling, the residual base, the softmax head."""
        arch = self.arch
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


def trainable(net: nn.Module) -> nn.Module:
    """``net`` as training builds it: a network loaded for restoring without fastai
    (``lean``, :mod:`.lean_unet`) is rebuilt with fastai's modules and the same weights."""
    if not getattr(net, "lean", False):
        return net
    fastai_net = RestorationNet(net.arch, head=net.head)
    fastai_net.load_state_dict(net.state_dict())
    device = next(net.parameters()).device
    return fastai_net.to(device).train(net.training)
