"""SSRN: the spectral-spatial residual network, its data pipeline, trainer and checkpoints.

Names load on first use (PEP 562): ``import ssrn`` does not import torch, so a command line built on it answers
``--help`` and usage errors at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "PRESETS": "config", "SSRNConfig": "config",
    "SSRN": "model", "count_parameters": "model",
    "CheckpointError": "errors", "load_model": "checkpoint", "save_model": "checkpoint",
    "KerasImportError": "keras", "import_keras_to_dir": "keras", "load_keras": "keras",
    "DataError": "data", "PatchDataset": "data", "load_dataset": "data", "standardize": "data",
    "classification_report": "metrics",
    "Trainer": "train", "run_training": "train",
}
_SUBMODULES = frozenset({"checkpoint", "config", "data", "devices", "errors", "keras", "metrics", "model", "train"})
__all__ = ["CheckpointError", "DataError", "KerasImportError", "PRESETS", "PatchDataset", "SSRN", "SSRNConfig",
           "Trainer", "classification_report", "count_parameters", "import_keras_to_dir", "load_dataset",
           "load_keras", "load_model", "run_training", "save_model", "standardize"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # ``ssrn.data`` without importing it first, as before the names were lazy
        return importlib.import_module(f".{name}", __name__)
    if name not in _WHERE:
        raise AttributeError(f"module 'ssrn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | _SUBMODULES)


if TYPE_CHECKING:
    from .checkpoint import load_model, save_model
    from .config import PRESETS, SSRNConfig
    from .data import DataError, PatchDataset, load_dataset, standardize
    from .errors import CheckpointError
    from .keras import KerasImportError, import_keras_to_dir, load_keras
    from .metrics import classification_report
    from .model import SSRN, count_parameters
    from .train import Trainer, run_training
