"""hsi-engine: exact, streaming SSRN inference over full hyperspectral scenes.

``import hsi_engine`` registers the ``.hsi`` (and rioxarray's ``.rio``) xarray accessors (importing xarray and
rioxarray: about a second) and nothing heavier; the other names and the submodules (torch among them) load on first
use (``lazy_loader``), so the ``hsi-engine`` command answers ``--help`` without loading torch, and takes Ctrl-C as
an interruption once those imports are done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lazy_loader

from .accessor import HSIAccessor


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hsi-engine")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


_lazy_getattr, _lazy_dir, _ = lazy_loader.attach(
    __name__,
    submodules=["accessor", "allocator", "api", "blocks", "cli", "cluster", "commit_journal", "cube", "dask_client",
                "demo", "envi", "errors", "fused", "georef", "geotiff", "integrity", "io", "lock", "logs", "map_info",
                "model_info", "normalise", "output_space", "outputs", "owned", "products", "render", "resume", "runner",
                "scene_checks", "scene_identity", "stores", "tiles", "training", "wavelengths", "whole", "writers"],
    submod_attrs={
        "accessor": ["HSIAccessor"],
        "allocator": ["reuse_large_buffers"],
        "api": ["classify", "classify_to_file", "load_model", "open_scene"],
        "errors": ["BandMismatchError", "CheckpointError", "ClusterUsageError", "CorruptChunkError", "HSIEngineError",
                   "IrregularGridError", "MissingSpatialDimsError", "NonFiniteInputError", "OptionError", "OutputError",
                   "SceneError", "SceneNotFoundError", "SceneTooSmallError", "UnnormalisedInputWarning",
                   "WorkerEnvironmentError", "WorkerLostError"],
        "fused": ["FusedSSRN", "fold_spatial", "fold_spectral", "patch_forward"],
        "io": ["as_scene"],
        "tiles": ["Tile", "TilePlan", "plan_tiles"],
        "training": ["load_labelled_raster", "train"],
    },
)

__all__ = ["BandMismatchError", "CheckpointError", "ClusterUsageError", "CorruptChunkError", "FusedSSRN",
           "HSIAccessor", "HSIEngineError", "IrregularGridError", "MissingSpatialDimsError", "NonFiniteInputError",
           "OptionError", "OutputError", "SceneError", "SceneNotFoundError", "SceneTooSmallError", "Tile", "TilePlan",
           "UnnormalisedInputWarning", "WorkerEnvironmentError", "WorkerLostError", "as_scene", "classify",
           "classify_to_file", "fold_spatial", "fold_spectral", "load_labelled_raster", "load_model", "open_scene",
           "patch_forward", "plan_tiles", "reuse_large_buffers", "train"]



def __getattr__(name: str) -> Any:
    if name == "__version__":  # on first use: the metadata lookup costs ~50 ms of every import otherwise
        return _version()
    return _lazy_getattr(name)


def __dir__() -> list[str]:
    return [*_lazy_dir(), "__version__"]


if TYPE_CHECKING:
    __version__: str
    from .allocator import reuse_large_buffers
    from .api import classify, classify_to_file, load_model, open_scene
    from .errors import (BandMismatchError, CheckpointError, ClusterUsageError, CorruptChunkError, HSIEngineError,
                         IrregularGridError, MissingSpatialDimsError, NonFiniteInputError, OptionError, OutputError,
                         SceneError, SceneNotFoundError, SceneTooSmallError, UnnormalisedInputWarning,
                         WorkerEnvironmentError, WorkerLostError)
    from .fused import FusedSSRN, fold_spatial, fold_spectral, patch_forward
    from .io import as_scene
    from .tiles import Tile, TilePlan, plan_tiles
    from .training import load_labelled_raster, train
