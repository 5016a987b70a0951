"""A package's tensor geometry: its halo (:func:`input_halo`), its smallest input
(:func:`min_input_size`) and its axes' pixel sizes."""

from __future__ import annotations

from ..models import RestorationModel


def input_halo(model: RestorationModel) -> int:
    """The package's halo in input pixels: the receptive field, rounded up to half the
    alignment.

    Consumers (``bioimageio.core.predict``) pad each input by the halo on both sides and feed
    the result to the network, which needs sizes in steps of the alignment: ``2 * halo`` must
    be a multiple of it (em-4x: field 169 px, halo 176 px; a 169 px halo gave 690 px inputs,
    which the U-Net's skip connections refused).
    """
    half = max(1, model.alignment // 2)
    return -(-model.receptive_field // half) * half


def min_input_size(model: RestorationModel) -> int:
    """The smallest input side (a multiple of the alignment) that the package's halo allows.

    The spec requires ``size - 2 * halo >= 1`` on the output axis at the smallest size, so the
    input must be at least ``2 * halo + 1``.
    """
    a = model.alignment
    return max(a, -(-(2 * input_halo(model) + 1) // a) * a)


def _pixel_sizes(model: RestorationModel) -> tuple[float, float, str | None]:
    """(input, output) pixel size and unit of the y/x axes: the HR pixel size when the model
    records one (nm), else unitless 1 for the output (input: ``scale``)."""
    s = model.scale
    px = model.config.pixel_size_nm
    if px and px[0] == px[1] and px[0] > 0:
        return float(px[0]) * s, float(px[0]), "nanometer"
    return float(s), 1.0, None
