"""Classification metrics (numpy): confusion matrix, OA, AA, Cohen's kappa, per-class accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import OptionError, is_whole

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["average_accuracy", "classification_report", "cohen_kappa", "confusion_matrix", "overall_accuracy",
           "per_class_accuracy"]


def _labels(name: str, values: ArrayLike) -> np.ndarray:
    """``values`` as a flat int64 array of class ids: integers, or floats holding whole numbers (a float label map);
    anything else (fractions, NaN, strings, a generator) refused, as the int64 cast truncated 0.6 to class 0."""
    if isinstance(values, (str, bytes)) or hasattr(values, "__next__"):
        raise OptionError(f"{name} must be an array of class ids (a numpy array, tensor or list); got "
                          f"{type(values).__name__}" + (": make a list of it first (list(...))"
                                                        if hasattr(values, "__next__") else ""))
    if hasattr(values, "detach"):  # a tensor, on any device, requiring grad or not
        values = values.detach().cpu()
    a = np.asarray(values)
    if a.dtype.kind == "f" and a.size and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        bad = a.reshape(-1)[~(np.isfinite(a) & (a == np.round(a))).reshape(-1)][0]
        raise OptionError(f"{name} must hold whole class ids; found {bad} among its {a.dtype} values: round or "
                          "cast them to integers first if that is what they mean")
    if a.size and a.dtype.kind not in "biuf":
        raise OptionError(f"{name} must hold integer class ids; got dtype {a.dtype}")
    return a.astype(np.int64).reshape(-1)


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int | None = None) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (labels 0..n_classes-1)."""
    t, p = _labels("y_true", y_true), _labels("y_pred", y_pred)
    if t.shape != p.shape:
        raise OptionError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    if n_classes is not None:
        if not is_whole(n_classes) or n_classes < 1:
            raise OptionError(f"n_classes must be a whole number >= 1 (or None: the largest label + 1); got "
                              f"{n_classes!r} ({type(n_classes).__name__})")
        n_classes = int(n_classes)
    else:
        n_classes = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise OptionError(f"labels must lie in 0..{n_classes - 1} (n_classes {n_classes}); found "
                          f"{min(t.min(), p.min())}..{max(t.max(), p.max())}")
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
    """Cohen's kappa, (po - pe) / (1 - pe); NaN where it is undefined: no samples, or chance agreement pe = 1
    (truth and predictions all one class, as a test set of one class gives), as scikit-learn and
    :func:`ssrn.seed_split.seed_scores` have it (the 1.0 returned before read as agreement beyond chance, which one
    class cannot show)."""
    cm = cm.astype(np.float64)
    n = cm.sum()
    if n == 0:
        return float("nan")
    po = np.trace(cm) / n
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / (n * n)
    return float((po - pe) / (1 - pe)) if pe != 1 else float("nan")


def classification_report(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int | None = None,
                          class_names: list[str] | None = None) -> dict[str, Any]:
    """``{"oa", "aa", "kappa", "per_class_accuracy", "confusion_matrix", "support"}`` (JSON-ready but for
    ``kappa``, NaN where undefined (one class in truth and predictions): write it as null); with
    ``class_names`` (a list of one name per class: the class count when ``n_classes`` is None) also
    ``"class_names"``. Labels are 0-based: a class map's values (1..K, 0 = nodata) lose their nodata pixels and 1
    first."""
    if class_names is not None:
        names = None if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__iter__") else \
            list(class_names)
        if names is None or not all(isinstance(n, str) for n in names):
            raise OptionError(f"class_names must be a list of names (str), one per class; got "
                              f"{repr(class_names)[:80]}" + (f": pass a list, e.g. {class_names.split(',')[:3]}"
                                                             if isinstance(class_names, str) and "," in class_names
                                                             else ""))
        class_names = names
    try:
        cm = confusion_matrix(y_true, y_pred, len(class_names) if n_classes is None and class_names else n_classes)
    except OptionError as e:
        low = min(_labels("y_true", y_true).min(initial=0), _labels("y_pred", y_pred).min(initial=0))
        if n_classes is not None or not class_names or not str(e).startswith("labels must lie") or low < 0:
            raise  # (a negative label is no class: the names are not to blame)
        raise OptionError(f"{e}, but class_names names {len(class_names)} classes (labels 0..{len(class_names) - 1}): "
                          "give one name per class, or pass n_classes; labels are 0-based (a class map's 1..K: "
                          "subtract 1)") from None
    if class_names is not None and len(class_names) != cm.shape[0]:
        raise OptionError(f"class_names has {len(class_names)} names for {cm.shape[0]} classes; expected one name "
                          "per class (0..n_classes-1)")
    pca = per_class_accuracy(cm)
    rep: dict[str, Any] = {"oa": overall_accuracy(cm), "aa": average_accuracy(cm), "kappa": cohen_kappa(cm),
                           "per_class_accuracy": [None if np.isnan(a) else float(a) for a in pca],
                           "support": cm.sum(1).tolist(), "confusion_matrix": cm.tolist()}
    if class_names is not None:
        rep["class_names"] = class_names
    return rep
