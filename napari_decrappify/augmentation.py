"""Training-time variation of the HR: other pixel sizes and other histograms.

A model trained on one microscope's data learns its pixel size and its histogram as much as its
structures. Drawing, per training sample, a zoom (the HR rescaled, as at another pixel size), a
gamma, a contrast and an offset (:class:`~napari_decrappify.config.AugmentConfig`) before the
crappifier degrades it teaches the network to restore data that differs in those ways. Rotations
and flips are :func:`napari_decrappify.data.augment`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import AugmentConfig


def _log_uniform(lo: float, hi: float, rng: np.random.Generator) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)


def _uniform(lo: float, hi: float, rng: np.random.Generator) -> float:
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


@dataclass(frozen=True)
class Variation:
    """One sample's draw from an :class:`AugmentConfig`."""

    zoom: float = 1.0
    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0

    @classmethod
    def draw(cls, config: AugmentConfig, rng: np.random.Generator) -> Variation:
        return cls(zoom=_log_uniform(*config.zoom, rng), gamma=_log_uniform(*config.gamma, rng),
                   contrast=_uniform(*config.contrast, rng),
                   brightness=_uniform(*config.brightness, rng))

    def source_size(self, size: int, available: int) -> int:
        """HR pixels to cut so that, zoomed, they give ``size`` pixels (at most ``available``:
        a zoom out wider than the image is reduced to what the image has)."""
        return int(min(available, max(2, round(size / self.zoom))))

    def resize(self, window: np.ndarray, size: int) -> np.ndarray:
        """``window`` (frames, h, w) resampled to (frames, size, size): bilinear, antialiased
        when shrinking (a larger pixel integrates its area, as a coarser scan would)."""
        if window.shape[-2:] == (size, size):
            return window
        t = torch.from_numpy(np.ascontiguousarray(window, np.float32))[None]
        out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=window.shape[-1] > size)
        return out[0].numpy()

    def intensities(self, unit: np.ndarray) -> np.ndarray:
        """Gamma, then contrast about the mean, then the offset, on [0, 1] intensities, clipped
        back to [0, 1] (where the crappifier's noise levels are defined)."""
        if (self.gamma, self.contrast, self.brightness) == (1.0, 1.0, 0.0):
            return unit
        x = np.clip(unit, 0.0, 1.0) ** self.gamma
        mean = float(x.mean())
        x = (x - mean) * self.contrast + mean + self.brightness
        return np.clip(x, 0.0, 1.0).astype(np.float32)
