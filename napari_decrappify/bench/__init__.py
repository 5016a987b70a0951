"""Benchmarks that write JSON: ``decrappify bench NAME`` (quality, throughput, memory, seams,
segmentation, training, trust, adaptation, generalisation, napari, reliability).

This module is the registry and the runner; each benchmark is a module of this package that
registers itself with :func:`benchmark` when :func:`load_all` imports it: ``engine``
(throughput, memory, seams), ``quality``, ``segmentation``, ``training``, ``trust``,
``adaptation``, ``generalisation``, ``napari_stalls`` (napari) and ``reliability`` (the battery
of ``reliability_run``, ``reliability_cases`` and ``reliability_process``, which
``tests/reliability`` runs case by case). The library never imports this package, the demo or
the CLI (an import-linter contract in pyproject.toml): they use the library, not the reverse.

Benchmarks are not tests: they measure speed, memory and quality and write the figures (with
the machine and library versions) to JSON; nothing here is asserted in the test suite. Figures
are ratios measured side by side in one run (tiled vs raw forward, ours vs bicubic).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable

BENCHMARKS: dict[str, Callable[..., dict]] = {}


def option_true(value: str) -> bool:
    """A yes/no benchmark option given as text (``-o tta=true``): 1, true or yes."""
    return str(value).lower() in ("1", "true", "yes")


def benchmark(name: str):
    """Register a benchmark function ``f(**options) -> dict`` under ``name``."""

    def deco(f):
        BENCHMARKS[name] = f
        return f

    return deco


def machine_info() -> dict:
    import numpy as np
    import torch

    from ..models import library_versions

    info = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "numpy": np.__version__,
    }
    info.update(library_versions())
    return info


def run(name: str, json_path: str | os.PathLike | None = None, **options) -> dict:
    """Run benchmark ``name`` and write its JSON (with machine info) to ``json_path``."""
    if name not in BENCHMARKS:
        raise NotImplementedError(f"benchmark {name!r} is not built yet")
    # the options and the command line go into the JSON: a figure must say how it was made
    command = "decrappify bench " + " ".join([name] + [f"-o {k}={v}" for k, v in options.items()])
    body = BENCHMARKS[name](**options)
    # read after the run: options such as threads= change what the machine info reports
    result = {"benchmark": name, "command": command, "options": dict(options),
              "machine": machine_info(), **body}
    if json_path is not None:
        from ..io import write_text_atomic

        write_text_atomic(json_path, json.dumps(result, indent=2))
    return result


def load_all() -> None:
    """Import the modules that define benchmarks (each registers itself with @benchmark)."""
    import importlib

    for mod in ("engine", "quality", "segmentation", "training", "trust", "adaptation",
                "generalisation", "napari_stalls", "reliability"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise
