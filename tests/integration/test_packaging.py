"""The wheel a user installs: the bundled models and the napari manifest are in it, and
building it raises no setuptools warning (an `include_package_data` warning meant the models'
folder was data outside any package, which setuptools announced it would leave out)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("em-2x", "em-4x", "em-4x-z3", "em-denoise")


def test_the_wheel_carries_the_bundled_models_without_setuptools_warnings(tmp_path):
    src = tmp_path / "src"  # a copy of the tracked files: the build writes build/ and egg-info
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-v",
                        "--disable-pip-version-check", "-w", str(out)],
                       capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "would be ignored" not in log and "absent from the `packages`" not in log, \
        [line for line in log.splitlines() if "arning" in line]
    wheel = next(out.glob("napari_decrappify-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "napari_decrappify/napari.yaml" in names
    for model in MODELS:
        for file in ("model.json", "model.safetensors"):
            assert f"napari_decrappify/zoo/{model}/{file}" in names, (model, file)
    assert not any(n.startswith("tests/") for n in names)
