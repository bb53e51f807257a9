"""Metrics against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from ssrn.metrics import (average_accuracy, classification_report, cohen_kappa, confusion_matrix,
                          overall_accuracy, per_class_accuracy)


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = 7
    t = rng.integers(0, k, 500)
    p = np.where(rng.random(500) < 0.6, t, rng.integers(0, k, 500))
    cm = confusion_matrix(t, p, k)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(t, p, labels=range(k)))
    assert overall_accuracy(cm) == pytest.approx(skm.accuracy_score(t, p))
    assert average_accuracy(cm) == pytest.approx(skm.balanced_accuracy_score(t, p))
    assert cohen_kappa(cm) == pytest.approx(skm.cohen_kappa_score(t, p))
    np.testing.assert_allclose(per_class_accuracy(cm), skm.recall_score(t, p, average=None, labels=range(k)))


def test_absent_class_and_report():
    t = np.array([0, 0, 1, 1, 1])
    p = np.array([0, 1, 1, 1, 2])
    rep = classification_report(t, p, 4, ["a", "b", "c", "d"])
    assert rep["per_class_accuracy"] == [0.5, pytest.approx(2 / 3), None, None]  # classes 2, 3: no true samples
    assert rep["aa"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert rep["oa"] == pytest.approx(0.6)
    assert rep["kappa"] == pytest.approx(skm.cohen_kappa_score(t, p))
    assert rep["confusion_matrix"][1] == [0, 2, 1, 0]


def test_length_mismatch():
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix([0, 1], [0])


def test_kappa_of_single_class_agreement_is_undefined():
    """Truth and predictions all one class (a test set of one class): chance agreement is 1 and kappa 0 / 0. It
    was 1.0; scikit-learn and the project's seed_scores give NaN."""
    from ssrn.seed_split import seed_scores

    cm = np.array([[5, 0], [0, 0]])
    assert np.isnan(cohen_kappa(cm)) and np.isnan(seed_scores(cm)["kappa"])
    with warnings.catch_warnings():  # (scikit-learn warns of the one label and of its 0 / 0)
        warnings.simplefilter("ignore")
        assert np.isnan(skm.cohen_kappa_score([1, 1, 1], [1, 1, 1]))
    assert np.isnan(classification_report([1, 1, 1], [1, 1, 1], 2)["kappa"])
    assert cohen_kappa(np.array([[5, 1], [0, 0]])) == pytest.approx(skm.cohen_kappa_score([0] * 6, [0] * 5 + [1]))


def test_confusion_matrix_infers_n_classes_from_the_largest_label():
    from ssrn.metrics import confusion_matrix
    cm = confusion_matrix([0, 2, 1], [0, 2, 2])
    assert cm.shape == (3, 3) and cm[1, 2] == 1 and cm[2, 2] == 1


@pytest.mark.parametrize("kw, message", [
    (dict(y_true=np.array([0.6, 1.6, 2.6])), r"y_true must hold whole class ids; found 0.6 among its float64"),
    (dict(y_true=np.array([0.0, 1.0, np.nan])), "y_true must hold whole class ids; found nan"),
    (dict(y_pred=np.array(["0", "1", "2"])), "y_pred must hold integer class ids; got dtype <U1"),
    (dict(y_true=(v for v in (0, 1, 2))), r"y_true must be an array of class ids .*got generator: make a list"),
    (dict(n_classes=3.0), r"n_classes must be a whole number >= 1 .*got 3.0 \(float\)"),
    (dict(n_classes="3"), r"n_classes must be a whole number >= 1 .*got '3' \(str\)"),
    (dict(n_classes=True), "n_classes must be a whole number"),
    (dict(class_names="corn,soy,wheat"), r"class_names must be a list of names .*pass a list, e.g. \['corn', 'soy',"),
    (dict(class_names=["corn"]), r"class_names has 1 names for 3 classes; expected one name per class"),
    (dict(class_names=[b"a", b"b", b"c"]), "class_names must be a list of names"),
    (dict(n_classes=None, class_names=["a", "b"]),  # (the class count came from class_names: the labels were blamed)
     r"found 0..2, but class_names names 2 classes \(labels 0..1\): give one name per class, or pass n_classes"),
    (dict(n_classes=None, class_names=["a", "b"], y_true=np.array([0, 1, -1])), r"found -1..1$"),
])
def test_report_refuses_what_it_would_misread(kw, message):
    """Fractional labels were truncated to classes, a str of names became letters, n_classes 3.0 a numpy error."""
    from ssrn.errors import OptionError

    args = dict(y_true=np.array([0, 1, 2]), y_pred=np.array([0, 1, 1]), n_classes=3) | kw
    with pytest.raises(OptionError, match=message):
        classification_report(**args)


def test_report_takes_whole_floats_numpy_counts_and_a_tuple_of_names():
    ref = classification_report(np.array([0, 1, 2]), np.array([0, 1, 1]), 3)
    rep = classification_report(np.array([0.0, 1.0, 2.0]), [0, 1, 1], np.int64(3), class_names=("a", "b", "c"))
    assert rep["class_names"] == ["a", "b", "c"] and {k: rep[k] for k in ref} == ref
