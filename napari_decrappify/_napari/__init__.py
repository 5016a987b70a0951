"""Everything napari and Qt: docks, workers, reader/writer, sample data. The core never imports this."""

# torch / torchvision / fastai must be imported before any Qt/GL context exists: importing them
# later can load triton's native library after the viewer is up and crash the process
# (../shared/ENVIRONMENT.md, trap 2). napari imports a plugin only when one of its docks, its
# reader or its sample data is first used, i.e. after the viewer exists: then triton is kept
# out (torch takes it as not installed; torch.compile is not used inside napari), which
# stopped "Plugins > Decrappify > Restore" in a fresh napari from killing it (exit 139).
import sys as _sys


def _keep_triton_out_once_qt_is_up() -> None:
    if "triton" in _sys.modules:
        return  # loaded before the viewer: harmless
    # look only at Qt bindings already loaded: this package's __init__ stays free of Qt imports
    for binding in ("PyQt5", "PyQt6", "PySide2", "PySide6"):
        widgets = _sys.modules.get(f"{binding}.QtWidgets")
        if widgets is not None and widgets.QApplication.instance() is not None:
            _sys.modules["triton"] = None  # makes ``import triton`` raise ImportError
            return


_keep_triton_out_once_qt_is_up()

import fastai.vision.models.unet  # noqa: E402, F401
import torch  # noqa: E402, F401
import torchvision  # noqa: E402, F401
