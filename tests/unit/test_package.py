"""The package is headless and its CLI is honest about what is not built yet."""

import subprocess
import sys

import pytest

from napari_decrappify import cli


def test_import_is_headless():
    code = ("import napari_decrappify, napari_decrappify.cli, napari_decrappify.models, sys; "
            "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'magicgui') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_every_design_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ["demo", "crappify", "train", "restore", "segment", "evaluate", "bench", "models"]:
        assert name in out


def test_python_dash_m_runs():
    r = subprocess.run([sys.executable, "-m", "napari_decrappify", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "restore" in r.stdout


def test_unbuilt_commands_exit_2_with_one_line(capsys):
    parser = cli.build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():
        func = action.get_default("func")
        if getattr(func, "__name__", "") == "run":  # a _not_built placeholder
            assert func(None) == cli.EXIT_NOT_BUILT
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "not built yet" in err[0]


def test_parse_planes():
    assert cli.parse_planes("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert cli.parse_planes(None) is None
