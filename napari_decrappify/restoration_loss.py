"""The losses restoration trains with and the validation metrics it is scored by.

``make_loss`` turns ``TrainConfig.loss`` into a module: L1, MSE, MS-SSIM + L1, or the
perceptual loss of the fast.ai decrappify work (:class:`FeatureLoss`, features of a frozen
encoder from a local file). ``batch_psnr`` and ``batch_ssim`` are the validation columns of a
restoration run. Segmentation's counterparts live in :mod:`napari_decrappify.segment.loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .config import TrainConfig


class MSSSIML1Loss(nn.Module):
    """``alpha * (1 - MS-SSIM) + (1 - alpha) * L1`` (Zhao et al. 2017), on [0, 1] images.

    MS-SSIM needs images larger than ``(win - 1) * 16`` (5 scales); smaller patches use
    single-scale SSIM instead of failing.
    """

    def __init__(self, alpha: float = 0.84, win_size: int = 7):
        super().__init__()
        self.alpha = alpha
        self.win_size = win_size

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from pytorch_msssim import ms_ssim, ssim

        p, t = pred.float(), target.float()
        # in fp32 even inside a bf16/fp16 autocast region: its Gaussian filters are convolutions,
        # which autocast would run in 8 mantissa bits, and variances computed as
        # E[x^2] - E[x]^2 then lose everything (loss 0.196 instead of 0.054, then NaN)
        with torch.autocast(device_type=p.device.type, enabled=False):
            l1 = F.l1_loss(p, t)
            # pytorch-msssim needs sides > (win - 1) * 16 for its 5 scales; below: plain SSIM
            if min(p.shape[-2:]) > (self.win_size - 1) * 16:
                sim = ms_ssim(p, t, data_range=1.0, win_size=self.win_size, size_average=True)
            else:
                sim = ssim(p, t, data_range=1.0, win_size=self.win_size, size_average=True)
        return self.alpha * (1 - sim) + (1 - self.alpha) * l1


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    f = x.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


class FeatureLoss(nn.Module):
    """Perceptual loss of the fast.ai decrappify work: pixel L1 + feature L1 + Gram (style) terms.

    Features come from a frozen encoder whose weights the user supplies as a local
    safetensors file (no download at run time): either a torchvision ``resnet18/34`` state
    dict, or the encoder of a segmentation model folder made by this package (the
    expert-guided loss: restoration is penalised where it changes what the expert labelled).
    """

    def __init__(self, encoder: nn.Sequential, layer_ids: Sequence[int] | None = None,
                 feature_weight: float = 1.0, gram_weight: float = 5e2, pixel_weight: float = 1.0,
                 in_channels: int = 1):
        super().__init__()
        from fastai.callback.hook import hook_outputs

        encoder = encoder.eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        self.encoder = encoder
        children = list(encoder.children())
        layer_ids = layer_ids or list(range(1, len(children)))
        self.layers = [children[i] for i in layer_ids if i < len(children)]
        self.hooks = hook_outputs(self.layers, detach=False)
        self.fw, self.gw, self.pw = feature_weight, gram_weight, pixel_weight
        self.in_channels = in_channels

    def _features(self, x):
        first = next(self.encoder.parameters())
        if x.shape[1] != first.shape[1]:
            x = x.repeat(1, first.shape[1] // x.shape[1], 1, 1)
        self.encoder(x)
        return [o.clone() for o in self.hooks.stored]

    def forward(self, pred, target):
        # left under bf16 autocast on purpose (unlike MS-SSIM): measured on CREMI the loss
        # moves 2-8% but its gradient keeps direction (cosine 0.99), and the pass is 1.5x faster
        loss = self.pw * F.l1_loss(pred, target)
        f_pred = self._features(pred)
        with torch.no_grad():
            f_targ = self._features(target)
        for a, b in zip(f_pred, f_targ, strict=True):
            loss = loss + self.fw * F.l1_loss(a, b) + self.gw * F.l1_loss(gram_matrix(a), gram_matrix(b))
        return loss

    def __del__(self):
        try:
            self.hooks.remove()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def load_feature_encoder(path: str | Path) -> nn.Sequential:
    """The frozen encoder of the perceptual loss, from a local file or a model folder.

    ``path`` is a model folder of this package (its encoder is used), or a ``.safetensors``
    file with a torchvision ResNet state dict (``resnet18`` or ``resnet34`` by its keys).
    """
    from safetensors.torch import load_file
    from torchvision import models as tvm

    from .models import ModelFileError, load_model

    p = Path(path)
    if p.is_dir():
        model = load_model(p)
        return model.net.unet[0]
    if not p.exists():
        raise FileNotFoundError(f"feature-loss weights file {p} does not exist")
    try:
        state = load_file(str(p))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise ModelFileError(f"{p} is not a readable safetensors file ({e})") from e
    arch = "resnet34" if "layer3.5.conv1.weight" in state else "resnet18"
    net = getattr(tvm, arch)(weights=None)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if len(missing) > 2 or unexpected:  # fc may be absent
        raise ModelFileError(f"{p}: not a torchvision {arch} state dict "
                             f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                         net.layer3)


def make_loss(config: TrainConfig) -> nn.Module:
    if config.loss == "l1":
        return nn.L1Loss()
    if config.loss == "mse":
        # the loss PSNR measures: its optimum is the posterior mean, L1's the median
        return nn.MSELoss()
    if config.loss == "msssim_l1":
        return MSSSIML1Loss()
    if config.loss == "perceptual":
        if not config.feature_weights:
            raise ValueError("loss 'perceptual' needs feature_weights: a local weights file or "
                             "a segmentation model folder (no download at run time)")
        return FeatureLoss(load_feature_encoder(config.feature_weights))
    raise ValueError(f"unknown loss {config.loss!r}")


# --------------------------------------------------------------------------- metrics


def batch_psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean PSNR (dB) of a batch on [0, 1] images (prediction clipped)."""
    mse = ((pred.float().clamp(0, 1) - target.float()) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()


def batch_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from pytorch_msssim import ssim

    return ssim(pred.float().clamp(0, 1), target.float(), data_range=1.0, win_size=7)
