"""hsi-engine: exact, streaming SSRN inference over full hyperspectral scenes.

``import hsi_engine`` registers the ``.hsi`` xarray accessor and nothing heavier; the other names load on first
use (PEP 562), so the ``hsi-engine`` command answers ``--help`` at once and takes Ctrl-C from its first moment.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .accessor import HSIAccessor

_WHERE = {
    "reuse_large_buffers": "allocator",
    "classify": "api", "classify_to_file": "api", "load_model": "api", "open_scene": "api",
    "BandMismatchError": "errors", "CheckpointError": "errors", "CorruptChunkError": "errors",
    "HSIEngineError": "errors", "MissingSpatialDimsError": "errors", "NonFiniteInputError": "errors",
    "OutputError": "errors", "SceneError": "errors", "SceneTooSmallError": "errors",
    "UnnormalisedInputWarning": "errors",
    "as_scene": "io",
    "Tile": "tiles", "TilePlan": "tiles", "plan_tiles": "tiles",
    "FusedSSRN": "fused", "fold_spectral": "fused", "fold_spatial": "fused", "patch_forward": "fused",
}
_SUBMODULES = frozenset({"accessor", "allocator", "api", "blocks", "cli", "cluster", "dask_client", "demo", "errors",
                         "fused", "integrity", "io", "lock", "logs", "normalise", "render", "resume", "runner",
                         "tiles", "writers"})
__all__ = ["BandMismatchError", "CheckpointError", "CorruptChunkError", "FusedSSRN", "HSIAccessor", "HSIEngineError",
           "MissingSpatialDimsError", "NonFiniteInputError", "OutputError", "SceneError", "SceneTooSmallError", "Tile",
           "TilePlan", "UnnormalisedInputWarning", "as_scene", "classify", "classify_to_file", "fold_spatial",
           "fold_spectral", "load_model", "open_scene", "patch_forward", "plan_tiles", "reuse_large_buffers"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # ``hsi_engine.api`` without importing it first, as before the names were lazy
        return importlib.import_module(f".{name}", __name__)
    if name not in _WHERE:
        raise AttributeError(f"module 'hsi_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | _SUBMODULES)


if TYPE_CHECKING:
    from .allocator import reuse_large_buffers
    from .api import classify, classify_to_file, load_model, open_scene
    from .errors import (BandMismatchError, CheckpointError, CorruptChunkError, HSIEngineError,
                         MissingSpatialDimsError, NonFiniteInputError, OutputError, SceneError, SceneTooSmallError,
                         UnnormalisedInputWarning)
    from .fused import FusedSSRN, fold_spatial, fold_spectral, patch_forward
    from .io import as_scene
    from .tiles import Tile, TilePlan, plan_tiles
