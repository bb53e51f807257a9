"""SSRN: the spectral-spatial residual network, its data pipeline, trainer and checkpoints.

Names and submodules load on first use (``lazy_loader``): ``import ssrn`` does not import torch, so a command
line built on it answers ``--help`` and usage errors at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, _ = lazy_loader.attach(
    __name__,
    submodules=["checkpoint", "config", "data", "devices", "dims", "errors", "keras", "lock", "metrics", "model",
                "normalise", "palette", "seed_split", "train"],
    submod_attrs={
        "checkpoint": ["load_model", "save_model"],
        "config": ["PRESETS", "SSRNConfig"],
        "data": ["DataError", "PatchDataset", "Scene", "load_dataset", "standardize"],
        "errors": ["CheckpointError", "OptionError"],
        "keras": ["KerasImportError", "import_keras_to_dir", "load_keras"],
        "metrics": ["classification_report"],
        "model": ["SSRN", "count_parameters"],
        "train": ["TrainResult", "Trainer", "run_training"],
    },
)

__all__ = ["CheckpointError", "DataError", "KerasImportError", "OptionError", "PRESETS", "PatchDataset", "SSRN",
           "SSRNConfig", "Scene", "TrainResult", "Trainer", "classification_report", "count_parameters", "import_keras_to_dir", "load_dataset",
           "load_keras", "load_model", "run_training", "save_model", "standardize"]

if TYPE_CHECKING:
    from .checkpoint import load_model, save_model
    from .config import PRESETS, SSRNConfig
    from .data import DataError, PatchDataset, Scene, load_dataset, standardize
    from .errors import CheckpointError, OptionError
    from .keras import KerasImportError, import_keras_to_dir, load_keras
    from .metrics import classification_report
    from .model import SSRN, count_parameters
    from .train import TrainResult, Trainer, run_training
