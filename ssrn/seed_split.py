"""The seed's own Indian Pines split, rebuilt from its code, and the seed's way of scoring it.

The seed (zilongzhong/SSRN) publishes its Indian Pines weights (``models/Indian_best_RES_3D_SS4_10_1.hdf5``)
without the pixels it trained on, but its scripts draw the split from a fixed seed: ``SSRN_IN.py`` (training)
and ``Load_Models/Load_IN.py`` (the evaluation that wrote ``records/IN_test_SS_10.txt``) both call
``np.random.seed(1334)`` and then ``sampling(VALIDATION_SPLIT=0.8, gt)``, which returns the training pixels and
the "test" pixels; the last ``VAL_SIZE = 1025`` of the latter are its validation set and the rest its test set.
:func:`seed_split` repeats those draws with numpy's legacy MT19937 generator (what ``np.random.seed`` seeds), so
it gives the same pixels: 2,055 train, 1,025 validation, 7,169 test on the Indian Pines ground truth.

:func:`seed_scores` computes the figures the seed records. Its ``Load_IN.py`` calls
``metrics.confusion_matrix(pred, gt)`` with the predictions first, so the rows of its matrix are predicted
classes and its per-class "accuracy" (``AA_andEachClassAccuracy``: diagonal over row sums, NaN as 0) is the
precision of each class, not the recall that this project's AA averages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .data import Split
from .metrics import overall_accuracy
from .errors import OptionError

__all__ = ["SEED_IN_RECORD", "SEED_RNG_SEED", "SEED_VAL_SIZE", "SEED_VAL_TEST_FRACTION", "seed_sampling",
           "seed_scores", "seed_split"]

SEED_RNG_SEED = 1334  # SSRN_IN.py / Load_IN.py: seeds = [1334]; np.random.seed(seeds[index_iter])
SEED_VAL_TEST_FRACTION = 0.8  # VALIDATION_SPLIT: 20% training, 80% validation and test
SEED_VAL_SIZE = 1025  # VAL_SIZE: the last 1025 of sampling()'s "test" indices validate, the rest test

# zilongzhong/SSRN records/IN_test_SS_10.txt (commit e8e05763af0019900c83325e33ba62994813441e), written by
# Load_Models/Load_IN.py for the released weights on the split above: OA, AA (the seed's, precision-based), kappa.
SEED_IN_RECORD = {"oa": 0.99442042125819496, "aa": 0.9143692315194627, "kappa": 0.99364341791175592}


# Follows zilongzhong/SSRN SSRN_IN.py and Load_Models/Load_IN.py, function sampling(proptionVal, groundTruth).
def seed_sampling(proportion_val: float, labels: np.ndarray, rng: np.random.RandomState) -> tuple[list, list]:
    """The seed's ``sampling(proptionVal, groundTruth)`` (SSRN_IN.py and Load_Models/Load_IN.py), drawing from
    ``rng``: per class 1..max label, its pixels in raster order, shuffled; the last ``int(proportion_val * n)``
    go to "test", the others to train; then both lists are shuffled. Returns ``(train, test)`` as lists of flat
    indices into the row-major scene, in the seed's order. The draws must match the seed's one for one, so the
    steps below (Python lists, legacy ``shuffle``, the same slicing) follow its code line by line."""
    gt = np.asarray(labels).ravel()
    train: dict[int, list] = {}
    test: dict[int, list] = {}
    m = int(gt.max())
    for i in range(m):
        indices = np.flatnonzero(gt == i + 1).tolist()  # = [j for j, x in enumerate(gt.tolist()) if x == i + 1]
        rng.shuffle(indices)
        nb_val = int(proportion_val * len(indices))
        train[i] = indices[:-nb_val]  # as in the seed, nb_val == 0 would put the whole class in "test"
        test[i] = indices[-nb_val:]
    train_indices: list = []
    test_indices: list = []
    for i in range(m):
        train_indices += train[i]
        test_indices += test[i]
    rng.shuffle(train_indices)
    rng.shuffle(test_indices)
    return train_indices, test_indices


def seed_split(labels: np.ndarray, seed: int = SEED_RNG_SEED, proportion_val: float = SEED_VAL_TEST_FRACTION,
               val_size: int = SEED_VAL_SIZE) -> Split:
    """The seed's train / validation / test pixels of a (y, x) label map (0 = unlabelled), as its SSRN_IN.py
    and Load_IN.py draw them: ``np.random.seed(seed)``, ``sampling(proportion_val, gt)``, validation =
    ``test_indices[-val_size:]``, test = ``test_indices[:-val_size]``.

    The generator is a private ``np.random.RandomState(seed)`` (the same MT19937 stream ``np.random.seed`` sets),
    so numpy's global state is left alone. The index arrays keep the seed's order."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise OptionError(f"labels must be a (y, x) map, got shape {labels.shape}")
    tr, te = seed_sampling(proportion_val, labels, np.random.RandomState(seed))
    if not 0 < val_size < len(te):
        raise OptionError(f"val_size {val_size} must be positive and below the {len(te)} validation + test pixels")
    arr = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
    return Split(tuple(labels.shape), arr(tr), arr(te[-val_size:]), arr(te[:-val_size]),
                 {"method": "seed_sampling", "seed": seed, "proportion_val": proportion_val, "val_size": val_size,
                  "source": "zilongzhong/SSRN SSRN_IN.py, Load_Models/Load_IN.py: sampling()"})


def seed_scores(cm: np.ndarray) -> dict[str, Any]:
    """OA, AA and kappa as the seed's Load_IN.py reports them, from this project's confusion matrix
    ``cm[true, predicted]`` (``ssrn.metrics.confusion_matrix``).

    The seed's ``confusion_matrix(pred, gt)`` is ``cm.T`` restricted to the classes that occur in the truth or
    the predictions (sklearn's default labels); its per-class figure is diagonal / row sum = correct / predicted
    as that class, i.e. precision, with 0 for a class never predicted. ``aa`` is their mean; ``per_class`` lists
    them (None for a class absent from both, which sklearn leaves out)."""
    cm = np.asarray(cm, dtype=np.float64)
    present = (cm.sum(0) + cm.sum(1)) > 0
    predicted = cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.nan_to_num(np.diag(cm) / predicted)
    n = cm.sum()
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / (n * n)
    kappa = (overall_accuracy(cm) - pe) / (1 - pe) if pe != 1 else float("nan")  # undefined: sklearn's NaN
    return {"oa": overall_accuracy(cm), "aa": float(prec[present].mean()), "kappa": float(kappa),
            "per_class": [float(p) if k else None for p, k in zip(prec, present)]}
