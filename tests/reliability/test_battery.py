"""The reliability battery, one test per case (napari_decrappify.bench.reliability_cases and
reliability_process): every bad input, model folder and output path is refused with one clear
line, good inputs give complete outputs, nothing the user had is changed, and interrupted or
concurrent runs end as uninterrupted ones. ``decrappify bench reliability`` counts the same."""

import pytest

from napari_decrappify.bench.reliability_cases import cases
from napari_decrappify.bench.reliability_process import process_cases
from napari_decrappify.bench.reliability_run import run_case

BATTERY = [*cases(), *process_cases()]


@pytest.mark.parametrize("case", BATTERY, ids=[c.id for c in BATTERY])
def test_case(case, tmp_path):
    result = run_case(case, tmp_path / "case")
    wanted = "ok" if case.expect == "ok" else "clear error"
    assert result["outcome"] == wanted, result


def test_the_battery_is_large_and_covers_every_command():
    ids = [c.id for c in BATTERY]
    assert len(ids) >= 200 and len(set(ids)) == len(ids)
    # every entry point that takes a model, shared by threads; every command bounded in memory
    for name in ("restore", "restore (lazy)", "lr_consistency", "segment",
                 "RestorationModel.predict_plane"):
        assert f"concurrency: 8 threads on one model through {name}" in ids, name
    for command in ("restore", "segment", "crappify", "evaluate"):
        assert any(i.startswith(f"memory: {command} ") for i in ids), command
    assert any("crafted pickle" in i for i in ids)
    for command in ("restore", "segment", "crappify", "evaluate", "train"):
        assert any(i.startswith(f"input, {command}") for i in ids), command
        assert any(i.startswith(f"output, {command}") for i in ids), command
    for group in ("model, restore", "model, segment", "model, train --resume",
                  "arguments, restore", "arguments, crappify", "interruption", "concurrency",
                  "memory"):
        assert any(i.startswith(group) for i in ids), group
