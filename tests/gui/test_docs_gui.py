"""The napari snippets of docs/ run too: napari.Viewer is the test viewer, napari.run a no-op."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SNIPPETS = [(p.name, code) for p in sorted(DOCS.glob("*.md")) for code in FENCE.findall(p.read_text())
            if "napari.Viewer(" in code and "# docs: skip-run" not in code]


def test_there_are_napari_snippets():
    assert SNIPPETS


@pytest.mark.parametrize("page,code", SNIPPETS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(SNIPPETS)])
def test_napari_snippet_runs(page, code, make_napari_viewer, monkeypatch, cremi, tiny_model_dir):
    import napari

    viewers = []

    def viewer_factory(*args, **kwargs):
        viewers.append(make_napari_viewer())
        return viewers[-1]

    monkeypatch.setattr(napari, "Viewer", viewer_factory)
    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    monkeypatch.setenv("DECRAPPIFY_MODELS", str(tiny_model_dir))
    exec(compile(code, page, "exec"), {"__name__": "__docs__"})  # noqa: S102
    assert viewers and len(viewers[0].layers) >= 1
