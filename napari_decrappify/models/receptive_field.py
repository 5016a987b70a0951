"""The measured receptive field of a network, the exact tiling halo
(:func:`measure_receptive_field`), and the warning for a trained U-Net whose encoder no longer
contributes (:func:`dead_encoder_warning`)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..config import ArchConfig
from .networks import ENCODER_STRIDE

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
