"""``decrappify bench reliability`` counts the outcomes of the battery it runs."""

import json

from napari_decrappify import bench


def test_bench_reliability_counts_the_cases_it_ran(tmp_path):
    bench.load_all()
    out = tmp_path / "reliability.json"
    result = bench.run("reliability", out, select="input, crappify: empty")
    summary = result["summary"]
    assert summary["cases"] == 2  # an empty file, an empty sample range
    assert summary["clear error"] == 2 and not result["failures"]
    assert summary["traceback"] == summary["silent wrong"] == summary["data loss"] == 0
    written = json.loads(out.read_text())
    assert written["command"] == "decrappify bench reliability -o select=input, crappify: empty"
    assert len(written["results"]) == 2 and all("seconds" in r for r in written["results"])
