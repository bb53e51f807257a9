"""Classification metrics (numpy): confusion matrix, OA, AA, Cohen's kappa, per-class accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import OptionError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["average_accuracy", "classification_report", "cohen_kappa", "confusion_matrix", "overall_accuracy",
           "per_class_accuracy"]


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int | None = None) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (labels 0..n_classes-1)."""
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise OptionError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    if n_classes is None:
        n_classes = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise OptionError(f"labels must lie in 0..{n_classes - 1}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def overall_accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN for a class with no true samples)."""
    support = cm.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.where(support > 0, support, 1), np.nan)


def average_accuracy(cm: np.ndarray) -> float:
    """Mean of the per-class accuracies over the classes present in the truth."""
    acc = per_class_accuracy(cm)
    return float(np.nanmean(acc)) if np.any(~np.isnan(acc)) else float("nan")


def cohen_kappa(cm: np.ndarray) -> float:
    cm = cm.astype(np.float64)
    n = cm.sum()
    if n == 0:
        return float("nan")
    po = np.trace(cm) / n
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / (n * n)
    return float((po - pe) / (1 - pe)) if pe != 1 else 1.0


def classification_report(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int | None = None,
                          class_names: list[str] | None = None) -> dict[str, Any]:
    """``{"oa", "aa", "kappa", "per_class_accuracy", "confusion_matrix", "support"}`` (JSON-ready)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    pca = per_class_accuracy(cm)
    rep: dict[str, Any] = {"oa": overall_accuracy(cm), "aa": average_accuracy(cm), "kappa": cohen_kappa(cm),
                           "per_class_accuracy": [None if np.isnan(a) else float(a) for a in pca],
                           "support": cm.sum(1).tolist(), "confusion_matrix": cm.tolist()}
    if class_names is not None:
        rep["class_names"] = list(class_names)
    return rep
