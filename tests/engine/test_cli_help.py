"""Every option of every command says what it does in --help (classify's --device, --backend and --precision
showed only their choices: no default, no meaning, nothing on fallbacks or approximation)."""

from __future__ import annotations

import argparse

import pytest

from hsi_engine.cli import build_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_option_has_help(command):
    undocumented = [a.option_strings[0] for a in _subparsers()[command]._actions
                    if a.option_strings and a.help in (None, "") and a.dest != "help"]
    assert undocumented == [], f"hsi-engine {command}: options without help: {undocumented}"


def test_classify_help_names_the_fallbacks_and_the_exact_precision():
    text = _subparsers()["classify"].format_help()
    assert "eager, with one warning, where there is no CUDA or Triton" in " ".join(text.split())
    assert "float32 (default: the patch-mode network's map, exactly)" in " ".join(text.split())


def test_verbose_after_a_command_points_to_its_spelling(capsys):
    """`classify ... --verbose` read only 'unrecognized arguments: --verbose': the command's own is -v."""
    from hsi_engine.cli import main

    with pytest.raises(SystemExit):
        main(["info", "x.tif", "--verbose"])
    assert "--verbose: did you mean -v (or hsi-engine --verbose COMMAND ...)?" in capsys.readouterr().err


def test_python_dash_m_runs_the_command(tmp_path):
    """``python -m hsi_engine`` is the command (a venv whose bin/ is not on PATH has no ``hsi-engine``): its version,
    and an error's one line and exit status, as the script gives them."""
    import subprocess
    import sys

    from hsi_engine import __version__

    done = subprocess.run([sys.executable, "-m", "hsi_engine", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, f"hsi-engine {__version__}")
    missing = tmp_path / "nowhere.zarr"
    failed = subprocess.run([sys.executable, "-m", "hsi_engine", "info", str(missing)], capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert str(missing) in failed.stderr
