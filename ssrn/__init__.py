"""SSRN: the spectral-spatial residual network, its data pipeline, trainer and checkpoints."""

from .config import PRESETS, SSRNConfig
from .model import SSRN, count_parameters

__all__ = ["PRESETS", "SSRN", "SSRNConfig", "count_parameters"]
from .checkpoint import CheckpointError, load_model, save_model  # noqa: E402

__all__ += ["CheckpointError", "load_model", "save_model"]
from .keras import KerasImportError, import_keras_to_dir, load_keras  # noqa: E402

__all__ += ["KerasImportError", "import_keras_to_dir", "load_keras"]
from .data import DataError, PatchDataset, load_dataset, standardize  # noqa: E402
from .metrics import classification_report  # noqa: E402
from .train import Trainer, run_training  # noqa: E402

__all__ += ["DataError", "PatchDataset", "Trainer", "classification_report", "load_dataset", "run_training",
            "standardize"]
