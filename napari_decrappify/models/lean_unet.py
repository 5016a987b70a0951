"""fastai's U-Net on a ResNet body, rebuilt from torch alone, for restoring.

:class:`~napari_decrappify.models.networks.RestorationNet` builds fastai's ``DynamicUnet`` on a
torchvision ResNet body (``create_body``). Importing fastai and torchvision for that costs a
restoring process about 310 MB of its memory (measured: ``import torch`` 507 MB of RSS, with
fastai's unet module 817 MB), a fifth of the engine's 1.5 GB bound on CPU. These modules are
the same network: the same layers in the same order, the same state-dict keys and the same
arithmetic (tested equal to fastai's for each bundled model), so model files load into either.
:func:`~napari_decrappify.models.load_model` builds this one where it can (:func:`supported`:
ResNet encoders, no self-attention, no spectral norm); training builds fastai's (its Learner
and losses expect it) and loads the same weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

# torchvision's ResNet layouts: blocks per stage, and whether a stage's block is a bottleneck
BAND_MARGIN = 4  # rows of context per band, on the last U-Net block's input grid (LeanUnet.run)
RESNETS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
           "resnet50": ((3, 4, 6, 3), True)}


def supported(arch) -> bool:
    """Whether :class:`LeanUnet` builds this architecture (else fastai's DynamicUnet)."""
    return (arch.encoder.rstrip("s") in RESNETS and not arch.self_attention
            and not arch.spectral_norm)


class ConvLayer(nn.Sequential):
    """fastai's ``ConvLayer`` without normalisation: a convolution with bias, then ``act``."""

    def __init__(self, ni: int, nf: int, ks: int = 3, act: Callable[[], nn.Module] | None = None):
        layers: list[nn.Module] = [nn.Conv2d(ni, nf, ks, padding=(ks - 1) // 2)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class WeightNormConv(nn.Module):
    """A 1 x 1 convolution under ``torch.nn.utils.weight_norm`` (``weight_g``, ``weight_v``)."""

    def __init__(self, ni: int, nf: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(nf, 1, 1, 1))
        self.weight_v = nn.Parameter(torch.zeros(nf, ni, 1, 1))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return F.conv2d(x, torch._weight_norm(self.weight_v, self.weight_g, 0), self.bias)


def pixel_shuffle(ni: int, nf: int, scale: int, blur: bool, act=None,
                  weight_norm: bool = False) -> nn.Sequential:
    """fastai's ``PixelShuffle_ICNR``: a 1 x 1 convolution to ``nf * scale**2`` channels, the
    shuffle, and with ``blur`` a one-pixel replicated shift averaged out (no checkerboard)."""
    conv = nn.Sequential(WeightNormConv(ni, nf * scale**2)) if weight_norm else \
        ConvLayer(ni, nf * scale**2, ks=1, act=act)
    layers = [conv, nn.PixelShuffle(scale)]
    if blur:
        layers += [nn.ReplicationPad2d((1, 0, 1, 0)), nn.AvgPool2d(2, stride=1)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block (same attribute names)."""

    expansion = 1

    def __init__(self, ni: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(ni, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(ni, planes, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck block (v1.5: the stride on the 3 x 3 convolution)."""

    expansion = 4

    def __init__(self, ni: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(ni, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(ni, out, stride)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def _downsample(ni: int, nf: int, stride: int) -> nn.Module | None:
    if stride == 1 and ni == nf:
        return None
    return nn.Sequential(nn.Conv2d(ni, nf, 1, stride, bias=False), nn.BatchNorm2d(nf))


def resnet_body(encoder: str, n_in: int) -> nn.Sequential:
    """fastai's ``create_body`` of a torchvision ResNet: the stem with ``n_in`` input channels
    and the stages up to ``layer4`` (``resnet18s``: up to ``layer3``)."""
    blocks, bottleneck = RESNETS[encoder.rstrip("s")]
    block = Bottleneck if bottleneck else BasicBlock
    layers: list[nn.Module] = [nn.Conv2d(n_in, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    ni = 64
    stages = 3 if encoder.endswith("s") else 4
    for i, (n, planes) in enumerate(zip(blocks[:stages], (64, 128, 256, 512), strict=False)):
        stage = []
        for j in range(n):
            stage.append(block(ni, planes, 2 if (j == 0 and i > 0) else 1))
            ni = planes * block.expansion
        layers.append(nn.Sequential(*stage))
    return nn.Sequential(*layers)


class UnetBlock(nn.Module):
    """fastai's ``UnetBlock`` without normalisation in the decoder: upsample, concatenate the
    encoder's features (batch-normed), two convolutions."""

    def __init__(self, up_in_c: int, x_in_c: int, final_div: bool, blur: bool, act):
        super().__init__()
        self.shuf = pixel_shuffle(up_in_c, up_in_c // 2, 2, blur, act=act)
        self.bn = nn.BatchNorm2d(x_in_c)
        ni = up_in_c // 2 + x_in_c
        nf = ni if final_div else ni // 2
        self.conv1 = ConvLayer(ni, nf, act=act)
        self.conv2 = ConvLayer(nf, nf, act=act)
        self.relu = act()

    def forward(self, up_in, skip):
        up = self.shuf(up_in)
        if up.shape[-2:] != skip.shape[-2:]:
            up = F.interpolate(up, skip.shape[-2:], mode="nearest")
        return self.conv2(self.conv1(self.relu(torch.cat([up, self.bn(skip)], dim=1))))


class ResBlock(nn.Module):
    """fastai's ``ResBlock(1, ni, ni)`` without normalisation (its identity path is empty)."""

    def __init__(self, ni: int, act):
        super().__init__()
        self.convpath = nn.Sequential(ConvLayer(ni, ni, act=act), ConvLayer(ni, ni))
        self.idpath = nn.Sequential()
        self.act = act()

    def forward(self, x):
        return self.act(self.convpath(x) + self.idpath(x))


class LeanUnet(nn.Module):
    """fastai's ``DynamicUnet(encoder, n_out, img_size, blur=blur, act_cls=act)`` (defaults
    otherwise: no self-attention, no norm in the decoder, the last cross connection), with
    ``layers`` at the same indices (parameter-free placeholders where fastai has
    ``ResizeToOrig``, ``MergeLayer`` and ``ToTensorBase``)."""

    def __init__(self, encoder: nn.Sequential, n_in: int, n_out: int, img_size: int, blur: bool,
                 act):
        super().__init__()
        with torch.no_grad():  # the shapes each encoder stage gives, as fastai's model_sizes
            x = torch.zeros(1, n_in, img_size, img_size)
            sizes = []
            for child in encoder:
                x = child(x)
                sizes.append(x.shape)
        changes = [i for i in range(len(sizes) - 1) if sizes[i][-1] != sizes[i + 1][-1]]
        self.skips = list(reversed(changes))
        ni = sizes[-1][1]
        middle = nn.Sequential(ConvLayer(ni, ni * 2, act=act), ConvLayer(ni * 2, ni, act=act))
        layers: list[nn.Module] = [encoder, nn.BatchNorm2d(ni), nn.ReLU(), middle]
        up_c = ni
        for i, idx in enumerate(self.skips):
            final = i == len(self.skips) - 1
            block = UnetBlock(up_c, sizes[idx][1], final_div=not final, blur=blur, act=act)
            layers.append(block)
            up_c = block.conv2[0].out_channels
        self.final_shuffle = sizes[0][-1] != img_size  # the stem downsamples: back to full size
        if self.final_shuffle:
            layers.append(pixel_shuffle(up_c, up_c, 2, blur=False, act=act))
        layers += [nn.Identity(), nn.Identity()]  # ResizeToOrig, MergeLayer(dense=True)
        up_c += n_in
        layers += [ResBlock(up_c, act), ConvLayer(up_c, n_out, ks=1), nn.Identity()]
        self.layers = nn.ModuleList(layers)

    def __getitem__(self, i: int) -> nn.Module:
        return self.layers[i]

    def forward(self, x):
        return self.run(x)

    def run(self, x, finish=None, band_px: int = 0):
        """The U-Net on ``x``, then ``finish(x, y)`` (what the caller does with its output).

        With ``band_px`` (restoring: no gradients), the last block and every layer after it,
        ``finish`` included, run in bands of rows of about ``band_px`` input pixels, each with
        :data:`BAND_MARGIN` rows of context on the last block's input grid (the band path sees
        less than 3), so the result is the whole run's to float rounding. Those layers work at
        the input's full resolution with the most channels: a 1024 x 640 em-4x window's
        activations peak at 678 MB in one piece, 310 MB in bands of 2**18 px.
        """
        finish = finish or (lambda _x, y: y)
        encoder = self.layers[0]
        features = {}
        h = x
        for i, child in enumerate(encoder):
            h = child(h)
            if i in self.skips:
                features[i] = h
        h = self.layers[3](self.layers[2](self.layers[1](h)))
        for k, idx in enumerate(self.skips[:-1]):
            h = self.layers[4 + k](h, features.pop(idx))
        skip = features.pop(self.skips[-1])
        rows = h.shape[-2]
        per_row = (x.shape[-2] // rows) * x.shape[-1]  # input pixels per row of h
        band = max(1, band_px // max(1, per_row)) if band_px else rows
        if rows <= band + 2 * BAND_MARGIN:
            return finish(x, self._tail(h, skip, x))
        band = -(-rows // -(-rows // band))  # as many bands, all about equal
        fx, fs = x.shape[-2] // rows, skip.shape[-2] // rows
        parts = []
        for a in range(0, rows, band):
            b = min(rows, a + band)
            a0, b0 = max(0, a - BAND_MARGIN), min(rows, b + BAND_MARGIN)
            xb = x[..., a0 * fx:b0 * fx, :]
            yb = finish(xb, self._tail(h[..., a0:b0, :], skip[..., a0 * fs:b0 * fs, :], xb))
            s = yb.shape[-2] // (b0 - a0)  # output rows per row of h
            parts.append(yb[..., (a - a0) * s:(b - a0) * s, :])
        return torch.cat(parts, dim=-2)

    def _tail(self, h, skip, x):
        """The last block and the layers after it."""
        k = 3 + len(self.skips)
        h = self.layers[k](h, skip)
        k += 1
        if self.final_shuffle:
            h = self.layers[k](h)
            k += 1
        if h.shape[-2:] != x.shape[-2:]:  # ResizeToOrig
            h = F.interpolate(h, x.shape[-2:], mode="nearest")
        h = torch.cat([h, x], dim=1)  # MergeLayer(dense=True)
        return self.layers[k + 3](self.layers[k + 2](h))
