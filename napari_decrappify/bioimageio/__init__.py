"""bioimage.io model packages: export a restoration model, import one this project exported.

A `bioimage.io <https://bioimage.io>`_ model package (spec 0.5) is a zip holding ``rdf.yaml``
(the description), the weights and test tensors; Fiji/deepImageJ, ilastik, QuPath and
``bioimageio.core`` run it without this library.

Export (:func:`export_bioimageio`) writes:

- the network as **TorchScript** (traced in eval mode on CPU; the trace is checked against the
  native network on two input sizes before anything is written);
- input axes ``(batch, channel, y, x)``: a multi-frame model's frames are its channels; y/x sizes
  ``min + n * alignment``, where ``min`` is the smallest aligned size that the spec's halo
  allows; output y/x = ``scale`` x input, with a halo of the receptive field (rounded up to
  half the alignment, :func:`input_halo`) in output pixels; borders reflect-padded;
- the model's normalisation as the spec's pre/postprocessing (see :func:`_processing`);
- test input/output tensors from a real CREMI plane (held out from training), computed by
  this library's own code path (so ``bioimageio.core.test_model`` checks that the package
  reproduces the native model), a cover (LR | restored), a README, the PSSR citation, licence
  and authors;
- this project's own ``model.json`` + ``model.safetensors`` as attachments, recorded under
  ``config.napari_decrappify``: what :func:`load_bioimageio` reads back, so a package restores
  exactly like the model folder it came from (crappifier, domain statistics and all).

Import (:func:`load_bioimageio`, reached through :func:`napari_decrappify.models.load_model` for
paths ending in ``.zip``) needs no bioimage.io package installed; it accepts only packages that
this project exported and refuses anything else with a one-line reason. TorchScript is not
what it loads: the safetensors attachment is, so importing never runs code from the package.

Export needs the optional ``bioimageio.spec`` (``pip install 'napari-decrappify[bioimageio]'``).

Modules, one concern each (import the names from here, this package, as before the split):

- :mod:`.layout`: what our packages carry (``CONFIG_KEY``, the attachments' names) and
  :class:`BioimageioError`.
- :mod:`.geometry`: :func:`input_halo`, :func:`min_input_size`, the axes' pixel sizes.
- :mod:`.processing`: the normalisation as the spec's pre/postprocessing.
- :mod:`.reference`: the test input (CREMI or the given image) and its reference output.
- :mod:`.torchscript`: the traced, checked weights.
- :mod:`.documentation`: the cover, the README and the citation.
- :mod:`.export`: :func:`export_bioimageio`.
- :mod:`.reading`: :func:`load_bioimageio`, :func:`is_package`.
"""

from __future__ import annotations

# bioimageio.py's namespace had these (imported from models); code may still take them from here
from ..models import CONFIG_FILE, WEIGHTS_FILE, ModelFileError, RestorationModel  # noqa: F401
from .documentation import PSSR_CITATION, PSSR_DOI, _cover, _readme  # noqa: F401
from .export import INSTALL_HINT, export_bioimageio  # noqa: F401
from .geometry import _pixel_sizes, input_halo, min_input_size  # noqa: F401
from .layout import (  # noqa: F401
    ATTACHED_CONFIG,
    ATTACHED_WEIGHTS,
    CONFIG_KEY,
    RDF_NAMES,
    BioimageioError,
)
from .processing import _linear, _post_gain_offset, _processing  # noqa: F401
from .reading import _read_rdf, is_package, load_bioimageio  # noqa: F401
from .reference import (  # noqa: F401 - the Restore dock checks its crop with _given_test_input
    TEST_PLANE,
    _device,
    _given_test_input,
    _postprocess,
    _reference_output,
    _test_input,
)
from .torchscript import _torchscript  # noqa: F401

__all__ = ["CONFIG_KEY", "BioimageioError", "export_bioimageio", "input_halo", "is_package",
           "load_bioimageio", "min_input_size"]
