"""Every code example in docs/ runs (python blocks in one namespace per page, bash blocks in a
shell), so the documentation never rots. Blocks fenced as ```text or ```console are output."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)
PAGES = sorted(p for p in DOCS.glob("*.md") if FENCE.search(p.read_text()))


def test_docs_have_examples():
    assert PAGES, "no executable examples found in docs/"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, DECRAPPIFY_MODELS=str(tiny_model_dir), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    namespace: dict = {"__name__": "__docs__"}
    for lang, code in FENCE.findall(page.read_text()):
        if "napari.Viewer(" in code or "# docs: skip-run" in code:
            continue  # GUI snippets run in tests/gui/test_docs_gui.py (needs a screen)
        if lang == "python":
            monkeypatch.setenv("DECRAPPIFY_MODELS", str(tiny_model_dir))
            exec(compile(code, f"{page.name}", "exec"), namespace)  # noqa: S102
        else:
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"{page.name} bash block failed:\n{code}\n{r.stdout}\n{r.stderr}"
