"""The model's normalisation as the spec's pre- and postprocessing steps (``scale_range``,
``scale_linear``), and what the spec cannot express of it."""

from __future__ import annotations

from ..models import RestorationModel


def _post_gain_offset(model: RestorationModel) -> tuple[float, float]:
    """The postprocessing ``scale_linear`` (network units -> output units)."""
    n = model.config.norm
    if n.mode == "fixed":  # the exact inverse: outputs in the input's units
        return float(n.high - n.low), float(n.low)
    l0, l1 = n.input_levels  # the input's percentiles become 0 and 1
    return 1.0 / (l1 - l0), -l0 / (l1 - l0)


def _processing(model: RestorationModel):
    """The spec's pre/postprocessing for the model's normalisation.

    ``fixed``: ``x -> (x - low) / (high - low)`` and its exact inverse (``scale_linear``).
    ``percentile``: ``scale_range`` maps the input's own percentiles (``input_percentiles``, all
    frames jointly) to 0 and 1, then ``scale_linear`` to the network values they had in
    training (``input_levels``). The inverse needs the input's percentiles *in the output's
    postprocessing*, which the spec cannot express (its ``scale_range`` only maps a tensor *to*
    a reference's percentile range): the output is left in those percentile units (the
    input's 1st / 99.8th percentiles at 0 / 1), and the README says how to map it back.
    """
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        ScaleLinearDescr,
        ScaleLinearKwargs,
        ScaleRangeDescr,
        ScaleRangeKwargs,
    )

    n = model.config.norm
    if n.mode == "fixed":
        span = float(n.high - n.low)
        pre = _linear(1.0 / span, -n.low / span)
    else:
        q0, q1 = n.input_percentiles
        l0, l1 = n.input_levels
        pre = [
            ScaleRangeDescr(kwargs=ScaleRangeKwargs(
                axes=[AxisId("channel"), AxisId("y"), AxisId("x")],
                min_percentile=float(q0), max_percentile=float(q1))),
            ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=float(l1 - l0), offset=float(l0))),
        ]
    gain, offset = _post_gain_offset(model)
    return pre, _linear(gain, offset)


def _linear(gain: float, offset: float) -> list:
    """A ``scale_linear`` step, or none for the identity (which the spec refuses)."""
    from bioimageio.spec.model.v0_5 import ScaleLinearDescr, ScaleLinearKwargs

    if gain == 1.0 and offset == 0.0:
        return []
    return [ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=gain, offset=offset))]
