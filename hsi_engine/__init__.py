"""hsi-engine: exact, streaming SSRN inference over full hyperspectral scenes."""

from .errors import (BandMismatchError, CheckpointError, CorruptChunkError, HSIEngineError,
                     MissingSpatialDimsError, NonFiniteInputError, OutputError, SceneError, SceneTooSmallError)

__all__ = ["BandMismatchError", "CheckpointError", "CorruptChunkError", "HSIEngineError", "MissingSpatialDimsError",
           "NonFiniteInputError", "OutputError", "SceneError", "SceneTooSmallError"]
