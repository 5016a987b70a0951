"""The training loss and metrics of the segmenter: cross-entropy (+ soft Dice) over labelled
pixels only (:class:`SparseSegLoss`), and accuracy / Dice on labelled pixels for validation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class SparseSegLoss(nn.Module):
    """Cross-entropy (+ optional soft Dice) over labelled pixels only.

    ``logits`` ``(N, K+1, H, W)``, ``target`` ``(N, H, W)`` with ``0`` = unlabelled: those
    pixels contribute nothing to either term (so a prediction there cannot change the loss).

    Parameters
    ----------
    weights : sequence of float, optional
        Per output channel (``K + 1``; entry 0 is unused): class weighting of the
        cross-entropy.
    dice_weight : float
        Weight of ``1 - mean soft Dice`` over the classes present (in the target or the
        prediction) on the labelled pixels of the batch. 0: cross-entropy only.
    """

    def __init__(self, weights: Sequence[float] | None = None, dice_weight: float = 0.0,
                 ignore_index: int = 0):
        super().__init__()
        w = torch.as_tensor(weights, dtype=torch.float32) if weights is not None else None
        self.register_buffer("weights", w, persistent=False)
        self.dice_weight = float(dice_weight)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        mask = target != self.ignore_index
        if not bool(mask.any()):
            return logits.sum() * 0.0
        logits = logits.float()
        w = self.weights.to(logits.device) if self.weights is not None else None
        loss = F.cross_entropy(logits, target, weight=w, ignore_index=self.ignore_index)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, mask)
        return loss


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   eps: float = 1.0) -> torch.Tensor:
    """``1 - mean_c Dice_c`` on the pixels where ``mask`` is true, classes ``1..K``."""
    n_out = logits.shape[1]
    p = torch.softmax(logits, dim=1)
    m = mask[:, None].to(p.dtype)
    onehot = F.one_hot(target.clamp_min(0), n_out).permute(0, 3, 1, 2).to(p.dtype)
    dims = (0, 2, 3)
    inter = (p * onehot * m).sum(dims)[1:]
    denom = (p * m).sum(dims)[1:] + (onehot * m).sum(dims)[1:]
    present = (onehot * m).sum(dims)[1:] > 0
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice[present].mean() if bool(present.any()) else logits.sum() * 0.0


def seg_accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of labelled pixels whose predicted class is right."""
    mask = target > 0
    if not bool(mask.any()):
        return torch.tensor(float("nan"))
    return (logits.argmax(1)[mask] == target[mask]).float().mean()


def seg_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean hard Dice over the classes present, on labelled pixels."""
    mask = target > 0
    pred = logits.argmax(1)[mask]
    t = target[mask]
    scores = []
    for c in torch.unique(t).tolist():
        a, b = pred == c, t == c
        scores.append(2 * (a & b).sum().float() / (a.sum() + b.sum()).clamp_min(1).float())
    return torch.stack(scores).mean() if scores else torch.tensor(float("nan"))
