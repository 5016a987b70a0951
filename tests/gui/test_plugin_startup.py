"""The plugin as napari loads it: only when a dock, the reader or the sample data is first used,
after the viewer exists (the test session imports torch first, so this runs in a fresh process)."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gui


def test_a_fresh_napari_opens_the_docks_reader_and_samples(tmp_path):
    # importing torch/fastai after the viewer loaded triton's native library and killed napari
    # (exit 139) at "Plugins > Decrappify > Restore", File > Open and File > Open Sample
    script = textwrap.dedent(f"""
        import sys
        import numpy as np, tifffile, napari
        tifffile.imwrite({str(tmp_path / "lr.tif")!r}, np.zeros((2, 64, 64), np.uint8))
        viewer = napari.Viewer(show=False)
        assert "napari_decrappify" not in sys.modules
        viewer.window.add_plugin_dock_widget("napari-decrappify", "Restore")
        viewer.open({str(tmp_path / "lr.tif")!r}, plugin="napari-decrappify")
        viewer.open_sample("napari-decrappify", "cremi-4x")
        print("layers:", [layer.name for layer in viewer.layers])
        viewer.close()
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "'lr', 'CREMI HR', 'CREMI 4x LR'" in run.stdout
