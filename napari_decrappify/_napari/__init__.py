"""Everything napari and Qt: docks, workers, reader/writer, sample data. The core never imports this."""

# torch / torchvision / fastai must be imported before any Qt/GL context exists: importing them
# later can load triton's native library after the viewer is up and crash the process
# (../shared/ENVIRONMENT.md, trap 2).
import fastai.vision.models.unet  # noqa: F401
import torch  # noqa: F401
import torchvision  # noqa: F401
