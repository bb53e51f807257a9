"""How the scale checks' refusals are seen: as the error the command line makes of the warning, and as its stderr."""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest

import hsi_engine
from hsi_engine import UnnormalisedInputWarning


def refused(scene, model, match: str) -> str:
    """The UnnormalisedInputWarning ``classify`` gives, as the command line sees it (an error, raised before any
    tile is computed); its message."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)
        with pytest.raises(UnnormalisedInputWarning, match=match) as e:
            hsi_engine.classify(scene, model, progress=False)
    return str(e.value)


def cli(args: list[str]) -> tuple[int, str]:
    """``hsi-engine ARGS`` in this process: its exit status and stderr."""
    from hsi_engine.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, err.getvalue()
