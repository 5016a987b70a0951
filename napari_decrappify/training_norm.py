"""The intensities of training data: the model's normalisation and the crappifier's scale.

:func:`percentile_norm` chooses the normalisation a model is trained with (and stores, so that
inference uses exactly the training intensities). :class:`UnitSpace` maps between it and the
[0, 1] scale the crappifier's noise levels are defined on
(:func:`napari_decrappify.intensity_scale.to_unit` of the HR's dtype), so that training sees the
noise the Crappify dock shows for the same settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import NormConfig
from .intensity_scale import check_image, intensity_range


def percentile_norm(images: Sequence[np.ndarray], percentiles=(0.1, 99.9)) -> NormConfig:
    """Normalisation for training data: uint8 -> [0, 255]; other dtypes -> global percentiles.

    Stored with the model so that inference uses exactly the training intensities.
    """
    images = [check_image(im, "training image") for im in images]  # NaN is not "constant"
    kinds = {intensity_range(np.asarray(im).dtype) for im in images}
    if len(kinds) > 1:
        dtypes = sorted({str(np.asarray(im).dtype) for im in images})
        raise ValueError(f"the training images have different dtypes ({', '.join(dtypes)}): their "
                         "intensities are on different scales; convert them to one dtype first")
    first = np.asarray(images[0])
    if first.dtype == np.uint8:
        return NormConfig(low=0.0, high=255.0)
    sample = np.concatenate([np.asarray(im, dtype=np.float32).ravel()[::7] for im in images])
    lo, hi = np.percentile(sample, percentiles)
    if not hi > lo:
        raise ValueError("the training images are constant: nothing to learn from")
    return NormConfig(low=float(lo), high=float(hi), percentiles=tuple(percentiles))


@dataclass(frozen=True)
class UnitSpace:
    """Between the model's normalisation and the [0, 1] scale the crappifier's noise is
    defined on (:func:`napari_decrappify.crappify.to_unit` of the HR's dtype).

    Training planes are normalised by their percentiles, but ``photons`` and ``read_noise``
    mean what the Crappify dock, ``decrappify crappify`` and ``crappify.fit`` make of them: on
    the dtype's range. Without this, a uint16 image using a tenth of its range would be trained
    with about 10x less relative noise than the Crappify dock shows for the same settings.
    """

    norm: NormConfig
    unit: tuple[float, float]  # the intensities to_unit maps to 0 and 1

    @classmethod
    def of(cls, norm: NormConfig, dtype) -> UnitSpace:
        unit = intensity_range(dtype)
        dtype = np.dtype(dtype)
        wide = np.issubdtype(dtype, np.integer) and dtype.itemsize > 2
        if wide or (not np.issubdtype(dtype, np.integer) and not 0 <= norm.low < norm.high <= 1):
            # float data beyond [0, 1] has no scale of its own (to_unit would clip it to 1),
            # nor has int32 (2^31 is no detector's full scale): noise levels are relative to
            # its normalised range, as they always were for such floats
            unit = (norm.low, norm.high)
        return cls(norm, unit)

    @property
    def identity(self) -> bool:
        return (self.norm.low, self.norm.high) == self.unit

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        n, (u0, u1) = self.norm, self.unit
        return ((x * (n.high - n.low) + n.low - u0) / (u1 - u0)).astype(np.float32)

    def from_unit(self, x: np.ndarray) -> np.ndarray:
        n, (u0, u1) = self.norm, self.unit
        return ((x * (u1 - u0) + u0 - n.low) / (n.high - n.low)).astype(np.float32)
