"""The seed's Indian Pines split, rebuilt from its code (``ssrn.seed_split``), and its record reproduced.

The counts and set checks use the ground truth shipped with hsi-engine. The record check scores the seed's
released weights (the data directory's copy, else the one shipped in tests/data) with the engine on the seed's
test pixels and compares with zilongzhong/SSRN ``records/IN_test_SS_10.txt``; when a copy of that file is in the
data directory (``seed_ssrn/IN_test_SS_10.txt`` or ``seed_ssrn/records/IN_test_SS_10.txt``) its figures are
read from it, else from the copy of its numbers in ``ssrn.seed_split.SEED_IN_RECORD``.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ssrn.data import shipped_indian_pines
from ssrn.metrics import confusion_matrix
from ssrn.seed_split import SEED_IN_RECORD, seed_scores, seed_split

IN_FILE = "Indian_best_RES_3D_SS4_10_1.hdf5"
RECORD = "IN_test_SS_10.txt"


@pytest.fixture(scope="module")
def gt() -> np.ndarray:
    return shipped_indian_pines()[1]


def test_seed_split_counts_and_sets(gt: np.ndarray) -> None:
    s = seed_split(gt)
    assert (s.train.size, s.val.size, s.test.size) == (2055, 1025, 7169)
    parts = [set(s.train.tolist()), set(s.val.tolist()), set(s.test.tolist())]
    assert sum(len(p) for p in parts) == 2055 + 1025 + 7169  # no repeats within a set
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(np.flatnonzero(gt.reshape(-1) > 0).tolist())  # every labelled pixel, once
    m = s.masks()
    assert m["train"].shape == gt.shape and int(m["train"].sum() + m["val"].sum() + m["test"].sum()) == 10249
    # per class, the training share is the seed's n - int(0.8 n)
    per_class = np.bincount(gt.reshape(-1)[s.train], minlength=17)[1:]
    sizes = np.bincount(gt.reshape(-1), minlength=17)[1:]
    assert per_class.tolist() == [n - int(0.8 * n) for n in sizes.tolist()]


def test_seed_split_is_deterministic_and_leaves_global_rng_alone(gt: np.ndarray) -> None:
    np.random.seed(7)
    before = np.random.random(3)
    np.random.seed(7)
    a = seed_split(gt)
    b = seed_split(gt.copy())
    after = np.random.random(3)
    for k in ("train", "val", "test"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k  # same pixels in the same order
    assert np.array_equal(before, after)
    c = seed_split(gt, seed=1335)
    assert c.test.size == 7169 and not np.array_equal(c.test, a.test)


def test_seed_split_refuses_bad_input(gt: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(y, x\) map"):
        seed_split(gt.reshape(-1))
    with pytest.raises(ValueError, match="val_size"):
        seed_split(gt, val_size=8194)


def test_seed_scores_is_the_seeds_precision_formula() -> None:
    """cm[true, pred]: class 0 twice right, once predicted as 1; class 1 once right; class 2 absent everywhere."""
    cm = np.array([[2, 1, 0], [0, 1, 0], [0, 0, 0]])
    r = seed_scores(cm)
    assert r["oa"] == pytest.approx(0.75)
    assert r["per_class"] == [1.0, 0.5, None]  # precision: class 1 is predicted twice, right once
    assert r["aa"] == pytest.approx(0.75)
    po, pe = 0.75, (2 * 3 + 2 * 1) / 16
    assert r["kappa"] == pytest.approx((po - pe) / (1 - pe))


def _parse_record(text: str) -> dict[str, float]:
    """OA / AA / kappa of the first iteration in the seed's modelStatsRecord text."""
    return {k: float(re.search(rf"^{name}s, mean_{name} .*?:\[([0-9.]+)\]", text, re.M).group(1))
            for k, name in (("oa", "OA"), ("aa", "AA"), ("kappa", "KAPPA"))}


def test_record_figures_are_the_published_ones() -> None:
    """The first three lines of zilongzhong/SSRN records/IN_test_SS_10.txt, as published."""
    text = ("KAPPAs, mean_KAPPA \u00b1 std_KAPPA for each iteration are:[0.99364341791175592]"
            "0.993643417912 \u00b1 0.0\n"
            "OAs, mean_OA \u00b1 std_OA for each iteration are:[0.99442042125819496]0.994420421258 \u00b1 0.0\n"
            "AAs, mean_AA \u00b1 std_AA for each iteration are:[0.9143692315194627]0.914369231519 \u00b1 0.0\n")
    assert _parse_record(text) == SEED_IN_RECORD


@pytest.fixture(scope="module")
def seed_weights(request) -> Path:
    """The seed's released IN weights: the data directory's copy, else the one shipped in tests/data (always there:
    missing, the test fails rather than skips)."""
    return request.getfixturevalue("seed_ssrn_dir") / IN_FILE  # tests/conftest.py


@pytest.fixture(scope="module")
def record(request) -> tuple[dict[str, float], str]:
    """The record's OA / AA / kappa: read from a copy of the file in the data directory when there is one."""
    try:
        shared = request.getfixturevalue("data_dir")  # tests/conftest.py: skips when there is no data directory
    except pytest.skip.Exception:
        shared = None
    for p in ([shared / "seed_ssrn" / RECORD, shared / "seed_ssrn" / "records" / RECORD] if shared else []):
        if p.is_file():
            got = _parse_record(p.read_text())
            assert got == SEED_IN_RECORD, f"{p} differs from ssrn.seed_split.SEED_IN_RECORD"
            return got, str(p)
    return SEED_IN_RECORD, "ssrn.seed_split.SEED_IN_RECORD (no copy of the record file in the data directory)"


def test_seed_model_on_seed_test_split_reproduces_its_record(seed_weights: Path, record) -> None:
    """The engine's map of the imported seed model, scored as the seed's Load_IN.py scores it on the rebuilt
    test split, gives the record's OA, AA and kappa to 1e-12 (about 10 s on a 2-core CPU)."""
    import hsi_engine
    from ssrn.keras import import_keras_to_dir

    record, source = record
    da, labels = shipped_indian_pines()
    with tempfile.TemporaryDirectory() as tmp:
        model = hsi_engine.load_model(import_keras_to_dir(seed_weights, Path(tmp) / "seed", dataset="indian_pines"))
    pred = np.asarray(hsi_engine.classify(da, model, device="cpu", progress=False).values).astype(np.int64)
    test = seed_split(labels).test
    cm = confusion_matrix(labels.reshape(-1)[test] - 1, pred.reshape(-1)[test] - 1, n_classes=16)
    got = seed_scores(cm)
    for k in ("oa", "aa", "kappa"):
        assert abs(got[k] - record[k]) < 1e-12, (k, got[k], record[k], source)
