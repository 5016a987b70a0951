"""The package's weights: the network traced to TorchScript, checked against the native network
before it is written."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..models import RestorationModel
from .reference import _device


def _torchscript(model: RestorationModel, xn: np.ndarray, min_size: int, path: Path) -> float:
    """Trace the network (eval mode, CPU) to ``path``; returns the largest difference from the
    native network on the test input and on one size larger (a trace that only works at the
    traced size would fail other consumers' tiles)."""
    import copy

    import torch

    net = model.net if _device(model).type == "cpu" else copy.deepcopy(model.net).cpu()
    net.eval()
    # the test input (network units), and a random one of another, non-square size
    xs = [torch.from_numpy(xn),
          torch.rand(1, xn.shape[1], min_size + model.alignment, min_size + 2 * model.alignment)]
    with torch.inference_mode(False), torch.no_grad(), model._forward_lock, warnings.catch_warnings():  # noqa: SLF001
        warnings.simplefilter("ignore")  # TracerWarnings on fastai's size checks: sizes are aligned
        traced = torch.jit.trace(net, xs[0], check_trace=False)
        worst = 0.0
        for xi in xs:
            worst = max(worst, float((traced(xi) - net(xi)).abs().max()))
    if worst > 1e-4:
        raise RuntimeError(f"the TorchScript trace of {model.name!r} differs from the network by "
                           f"{worst:.3g}: it cannot be exported as TorchScript")
    traced.save(str(path))
    return worst
