"""hsi-engine: exact, streaming SSRN inference over full hyperspectral scenes."""

from .allocator import reuse_large_buffers
from .api import HSIAccessor, classify, classify_to_file, load_model, open_scene
from .errors import (BandMismatchError, CheckpointError, CorruptChunkError, HSIEngineError,
                     MissingSpatialDimsError, NonFiniteInputError, OutputError, SceneError, SceneTooSmallError,
                     UnnormalisedInputWarning)
from .io import as_scene
from .tiles import Tile, TilePlan, plan_tiles


def __getattr__(name: str):
    """``FusedSSRN`` / ``fold_spectral`` import torch: loaded on first use, not with the package."""
    if name in ("FusedSSRN", "fold_spectral", "fold_spatial", "patch_forward"):
        from . import fused

        return getattr(fused, name)
    raise AttributeError(f"module 'hsi_engine' has no attribute {name!r}")


__all__ = ["BandMismatchError", "CheckpointError", "CorruptChunkError", "FusedSSRN", "HSIAccessor",
           "HSIEngineError", "MissingSpatialDimsError", "NonFiniteInputError", "OutputError", "SceneError",
           "SceneTooSmallError", "Tile", "TilePlan", "as_scene", "classify", "classify_to_file", "fold_spatial",
           "fold_spectral", "load_model", "open_scene", "patch_forward", "plan_tiles", "reuse_large_buffers",
           "UnnormalisedInputWarning"]
