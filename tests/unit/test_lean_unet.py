"""The fastai-free network a restoring process builds (models.lean_unet): the same network as
fastai's DynamicUnet, to the bit, with the same weights; its banded tail; and a process that
only restores never imports fastai or torchvision."""

import subprocess
import sys

import pytest
import torch

from napari_decrappify.config import ArchConfig
from napari_decrappify.models import load_model
from napari_decrappify.models.lean_unet import supported
from napari_decrappify.models.networks import RestorationNet, trainable

ARCHS = [
    dict(encoder="resnet18s", scale=4, activation="leaky_relu", blur=True),
    dict(encoder="resnet18", scale=2, activation="relu", blur=False),
    dict(encoder="resnet34", scale=3),
    dict(encoder="resnet50", scale=2, strategy="pre_upsample"),
    dict(encoder="resnet18s", scale=1, frames=3),
]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(str(v) for v in a.values()))
@pytest.mark.parametrize("head", ["identity", "softmax"])
def test_lean_network_is_fastais_to_the_bit(arch, head):
    arch = ArchConfig(**arch, out_channels=3 if head == "softmax" else 1)
    torch.manual_seed(0)
    fastai_net = RestorationNet(arch, head=head).eval()
    lean = RestorationNet(arch, head=head, lean=True).eval()
    lean.load_state_dict(fastai_net.state_dict(), strict=True)  # the same keys and shapes
    x = torch.rand(2, arch.frames * arch.in_channels, 64, 96)
    with torch.no_grad():
        assert torch.equal(fastai_net(x), lean(x))


def test_unsupported_architectures_are_left_to_fastai():
    assert supported(ArchConfig(encoder="resnet18s"))
    assert not supported(ArchConfig(encoder="tiny"))
    assert not supported(ArchConfig(encoder="resnet18s", self_attention=True))
    with pytest.raises(ValueError, match="lean=False"):
        RestorationNet(ArchConfig(encoder="tiny"), lean=True)


def test_a_large_window_runs_its_tail_in_bands_with_the_same_result(monkeypatch):
    from napari_decrappify.models import networks

    model = load_model("em-4x")
    net = model.net
    assert net.lean  # a bundled model loads without fastai
    # bands of at most 2**14 input px: 21 of the last block's 64 rows here (2**18 in use)
    monkeypatch.setattr(networks, "BAND_PX", 2**14)
    x = torch.rand(1, 1, 256, 192)
    with torch.no_grad():  # gradients on: the whole tail in one piece
        whole = net._finish(x, net.unet.run(x))
    calls, tail = [], net.unet._tail
    monkeypatch.setattr(net.unet, "_tail", lambda *a: calls.append(a[0].shape[-2]) or tail(*a))
    with torch.inference_mode():
        banded = net(x)
        assert calls == [20, 24, 24, 20]  # 64 rows in 4 bands of 16, 4 rows of context a side
        unbanded = net.unet.run(x, net._finish, band_px=0)
    assert banded.shape == whole.shape == (1, 1, 4 * 256, 4 * 192)
    assert torch.equal(unbanded, whole)
    assert float((banded - whole).abs().max()) <= 1e-5


def test_training_gets_fastais_network_with_the_same_weights():
    model = load_model("em-2x")
    net = trainable(model.net)
    assert not net.lean and type(net.unet).__name__ == "DynamicUnet"
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), model.net(x))


def test_restoring_imports_neither_fastai_nor_torchvision():
    code = ("import sys, numpy as np\n"
            "from napari_decrappify.tiling import restore\n"
            "y = restore('em-4x', np.full((64, 64), 100, np.uint8), axes='YX')\n"
            "assert y.shape == (256, 256)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastai', 'torchvision'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
