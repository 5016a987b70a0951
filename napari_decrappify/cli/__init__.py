"""Command line: ``decrappify COMMAND ...`` (also ``python -m napari_decrappify COMMAND ...``).

Image arguments are TIFF or Zarr/OME-Zarr paths, or ``sample:KEY`` for a real sample data set
(``sample:cremi``), optionally with a plane range: ``sample:cremi[0:20]``.

The modules of this package, one per concern:

* :mod:`.dispatch`: :func:`main`, the entry point (``decrappify = napari_decrappify.cli:main``);
* :mod:`.parser`: :func:`build_parser`, every command's options and help;
* :mod:`.errors`: exit codes and one-line error messages;
* :mod:`.inputs`: image arguments (files, ``sample:KEY[a:b]``), pixel size and units, plane lists;
* :mod:`.outputs`: output paths refused before any work, JSON, the command line recorded;
* the commands: :mod:`.train` (train, crappify), :mod:`.restore` (restore, evaluate),
  :mod:`.segment`, :mod:`.models` (models, export), :mod:`.demo_bench` (demo, bench).

Every name is importable from here as when the command line was one module
(``from napari_decrappify.cli import main``). The parser looks its ``cmd_*`` functions up here
when it is built, so that a patch on ``napari_decrappify.cli.cmd_X`` reaches the command line.
Heavy dependencies (torch, dask, tifffile ...) are imported by each command when it runs.
"""

from __future__ import annotations

# The private helpers of the one-module command line stay importable from here too: ``X as X``
# marks a re-export.
from .demo_bench import cmd_bench, cmd_demo
from .dispatch import _terminated as _terminated
from .dispatch import main
from .errors import _FIELD_OPTIONS as _FIELD_OPTIONS
from .errors import EXIT_NOT_BUILT, error_message
from .errors import _not_built as _not_built
from .errors import _option_strings as _option_strings
from .inputs import SAMPLE_FORM, open_input, parse_planes, parse_sample, read_input
from .inputs import _lazy_input as _lazy_input
from .inputs import _load_sample as _load_sample
from .inputs import _sample_origin as _sample_origin
from .inputs import _with_geometry as _with_geometry
from .models import cmd_export, cmd_models
from .outputs import _command as _command
from .outputs import _json_default as _json_default
from .outputs import _json_output as _json_output
from .outputs import _model_output as _model_output
from .outputs import _not_a_folder as _not_a_folder
from .outputs import _standard_json as _standard_json
from .parser import _count as _count
from .parser import _geometry_arguments as _geometry_arguments
from .parser import _pixel_size as _pixel_size
from .parser import build_parser
from .restore import _write_report as _write_report
from .restore import cmd_evaluate, cmd_restore
from .segment import cmd_segment
from .train import _training_pixel_size as _training_pixel_size
from .train import cmd_crappify, cmd_train

__all__ = [
    "EXIT_NOT_BUILT",
    "SAMPLE_FORM",
    "build_parser",
    "cmd_bench",
    "cmd_crappify",
    "cmd_demo",
    "cmd_evaluate",
    "cmd_export",
    "cmd_models",
    "cmd_restore",
    "cmd_segment",
    "cmd_train",
    "error_message",
    "main",
    "open_input",
    "parse_planes",
    "parse_sample",
    "read_input",
]
