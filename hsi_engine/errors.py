"""One error hierarchy: every message says what was found, what was expected, and the fix."""

from __future__ import annotations

from typing import Any

# the base lives with the model: the trainer's errors are ours
from ssrn.errors import CheckpointError, HSIEngineError, OptionError, OutputError, reduce_not_found


class SceneError(HSIEngineError, ValueError):
    """A scene that cannot be read or is not shaped like a hyperspectral cube."""


class SceneNotFoundError(SceneError, FileNotFoundError):
    """A scene path (or the binary its header names) that does not exist; a ``FileNotFoundError`` too."""

    __reduce__ = reduce_not_found  # (a task's error crosses back from a dask worker as itself)


class MissingSpatialDimsError(SceneError):
    """A DataArray without the (band, y, x) dimensions."""


class BandMismatchError(HSIEngineError, ValueError):
    """The scene's band count (or wavelengths) differs from the model's."""


class SceneTooSmallError(HSIEngineError, ValueError):
    """A scene without pixels (0 rows or columns): nothing to classify."""


class NonFiniteInputError(HSIEngineError, ValueError):
    """NaN or inf in the scene and no nodata policy given."""


class IrregularGridError(SceneError):
    """A scene's x or y coordinates are not evenly spaced: no affine transform places its map."""


class CorruptChunkError(SceneError):
    """A zarr chunk that is missing or cannot be decoded."""


class ClusterUsageError(OptionError):
    """Contradictory or invalid cluster options (``workers`` and ``scheduler`` together, ``workers < 1``, a
    malformed scheduler address)."""


class WorkerLostError(HSIEngineError, RuntimeError):
    """A tile's task took down every worker that ran it (the scheduler's ``allowed-failures``), nearly always by
    running out of memory; the run's partial store keeps the tiles written."""


class WorkerEnvironmentError(HSIEngineError, RuntimeError):
    """A worker of a dask cluster that cannot compute this run's tiles as the driver would: it cannot import
    hsi_engine (or torch), runs another hsi-engine (version or map version), has no CUDA device for
    ``device='cuda'``, or does not see the scene or the output at the driver's paths (no shared filesystem). It
    names the worker and the fix; a cluster run refuses such workers before any tile runs."""


class UnnormalisedInputWarning(UserWarning, HSIEngineError):
    """The scene is not on the scale the model was trained on, so the map will be meaningless: its values are
    30x or more off the model's per-band statistics (reflectance 0-1 against a model trained on x 10000), or lie
    a median of several training standard deviations from its means (other units, another sensor), or keep the
    training data's spectral shape off by a power of ten (x 1000 against x 10000), it declares
    band scales/offsets other than the training scene's, a CF-packed scene was handed over still packed, or a
    model without per-band mean/std meets raw integers. A warning in Python; the command line turns it into an
    error (a pipeline sees only the exit status) where the cause is plain, not for the distance alone (a cloud
    over the sampled centre reads that way too)."""


def _user_frame() -> tuple[Any, int]:
    """The first frame outside this package (the user's line) above the caller of this module's function, and how
    many frames up it lies from that caller (its ``stacklevel``); ``(None, n)`` past the top of the stack."""
    import os
    import sys

    pkg = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(2), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return frame, level


def user_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` called from hsi_engine that points at the first caller outside the
    package (the user's line), however many of its own frames lie between (the cluster path adds some)."""
    return _user_frame()[1]


def warn_each_call(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` at the user's line, shown by every call that deserves it (filters still apply: ``once``,
    ``ignore``, ``error``): Python's default shows a message once per line of code until the filters change, so of a
    service's overlapping calls on several unnormalised scenes one was said and the others' maps went unflagged."""
    import warnings

    frame, _ = _user_frame()
    if frame is None:
        warnings.warn(message, category, stacklevel=2)
        return
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__"), registry=None)


__all__ = ["BandMismatchError", "CheckpointError", "ClusterUsageError", "CorruptChunkError", "HSIEngineError",
           "IrregularGridError", "MissingSpatialDimsError", "NonFiniteInputError", "OptionError", "OutputError",
           "SceneError", "SceneNotFoundError", "SceneTooSmallError", "UnnormalisedInputWarning",
           "WorkerEnvironmentError", "WorkerLostError"]
