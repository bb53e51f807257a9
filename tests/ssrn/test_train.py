"""A short real training run on a crop of the shipped Indian Pines scene, and the model directory it writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import ssrn
from ssrn import data as D
from ssrn.train import Trainer, predict, run_training

CLASSES = (2, 8, 10, 11, 14)  # Corn-notill, Hay-windrowed, Soybean-notill, Soybean-mintill, Woods


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """A 48 x 48 crop of the real scene holding five classes (others set to unlabelled), as our .h5 form."""
    da, labels = D.shipped_indian_pines()
    cube = da.values[:, 16:64, 88:136]
    lab = labels[16:64, 88:136].copy()
    keep = np.isin(lab, CLASSES)
    lab[~keep] = 0
    for new, old in enumerate(CLASSES, 1):
        lab[lab == old] = new
    p = tmp_path_factory.mktemp("crop") / "in_crop.h5"
    with h5py.File(p, "w") as f:
        f["cube"] = cube
        f["labels"] = lab
        f["wavelength"] = da.coords["wavelength"].values
    return p, cube, lab


def test_short_training_beats_majority_baseline(crop, tmp_path):
    path, cube, lab = crop
    out = tmp_path / "model"
    import random

    def seed_all():
        random.seed(999)
        np.random.seed(999)
        torch.manual_seed(999)

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed_all()
    expected = draws()
    seed_all()
    rep = run_training(str(path), out, epochs=4, batch_size=16, per_class=25, val_fraction=0.05, seed=0,
                       device="cpu", patch=5, optimizer="adamw", lr=1e-3, command="pytest")
    assert draws() == expected  # the caller's global streams, not reseeded to the run's seed=0
    counts = np.bincount(lab[lab > 0])[1:]
    test_counts = np.array(rep["support"])
    majority = test_counts.max() / test_counts.sum()
    assert test_counts.sum() == rep["split"]["n_test"]
    print("short training: OA", rep["oa"], "majority baseline", majority, "train s", rep["train_time_s"])
    assert rep["oa"] > 2 * majority, (rep["oa"], majority)
    assert rep["kappa"] > 0.4
    assert rep["epochs_run"] == 4 and 1 <= rep["best_epoch"] <= 4
    for key in ("oa", "aa", "kappa", "per_class_accuracy", "confusion_matrix", "train_time_s", "test_time_s",
                "device", "seed", "split", "epochs_run"):
        assert key in rep
    # the model directory: weights + meta the engine and the demo need
    m = ssrn.load_model(out)
    meta = m.meta
    assert len(meta["mean"]) == len(meta["std"]) == 200
    assert meta["mean"][0] == pytest.approx(cube[0].astype(np.float64).mean())
    np.testing.assert_array_equal(meta["mean"], cube.astype(np.float64).mean(axis=(1, 2)))  # float64, every band
    np.testing.assert_array_equal(meta["std"], cube.astype(np.float64).std(axis=(1, 2)))
    assert meta["command"] == "pytest" and meta["report"]["oa"] == rep["oa"]
    assert len(meta["wavelengths"]) == 200
    masks = D.split_masks_from_meta(meta)
    assert int(masks["train"].sum()) == 25 * len(counts) and masks["train"].shape == lab.shape
    assert not (masks["train"] & masks["val"]).any()
    assert (lab[masks["train"]] > 0).all()
    # the saved weights give the reported test predictions
    normed, _, _ = D.standardize(cube)
    test_idx = np.flatnonzero(((lab > 0) & ~masks["train"] & ~masks["val"]).ravel())
    pred, _ = predict(m, D.PatchDataset(normed, lab, test_idx, 5))
    oa = float((pred == lab.ravel()[test_idx] - 1).mean())
    assert oa == pytest.approx(rep["oa"], abs=1e-9)


def test_trainer_keeps_best_val_weights_and_early_stops(crop):
    _, cube, lab = crop
    normed, _, _ = D.standardize(cube[:40])
    s = D.per_class_split(lab, 8, 0.05, seed=1)
    cfg = ssrn.SSRNConfig(bands=40, classes=5, patch=5, variant="spc")
    torch.manual_seed(0)
    model = ssrn.SSRN(cfg)
    val = D.PatchDataset(normed, lab, s.val, 5)
    t = Trainer(model, epochs=5, lr=0.05, patience=1, seed=0, optimizer="adamw", schedule="cosine",
                progress=False)  # a wild lr: val loss soon stops improving
    res = t.fit(D.PatchDataset(normed, lab, s.train, 5), val)
    assert res.epochs_run <= 5
    if res.stopped_early:
        assert res.epochs_run - res.best_epoch == 1
    _, vl = predict(model, val)
    assert vl == pytest.approx(res.best_val_loss, rel=1e-4)



def test_early_stop_ends_at_the_patience_and_restores_the_best_epoch(crop):
    """Validation pixels labelled against their training labels (class c as c + 1): training makes their loss
    worse from the first epoch on, so the run stops ``patience`` epochs after epoch 1 and keeps epoch 1's weights
    (the check above passed without either: its run never stopped early and its best epoch was its last)."""
    _, cube, lab = crop
    normed, _, _ = D.standardize(cube[:40])
    s = D.per_class_split(lab, 8, 0.05, seed=1)
    against = lab.copy()
    against[lab > 0] = lab[lab > 0] % 5 + 1
    torch.manual_seed(0)
    model = ssrn.SSRN(ssrn.SSRNConfig(bands=40, classes=5, patch=5, variant="spc"))
    val = D.PatchDataset(normed, against, s.train, 5)
    t = Trainer(model, epochs=8, lr=1e-3, patience=2, seed=0, optimizer="adamw", progress=False)
    res = t.fit(D.PatchDataset(normed, lab, s.train, 5), val)
    assert res.stopped_early and res.best_epoch == 1 and res.epochs_run == 3, res.history
    losses = [r["val_loss"] for r in res.history]
    assert losses[1] > losses[0] and losses[2] > losses[0]
    _, vl = predict(model, val)
    assert vl == pytest.approx(res.best_val_loss, rel=1e-4) and vl < losses[-1]

@pytest.mark.parametrize("optimizer, given, used", [("adamw", None, 1e-2), ("adamw", 0.0, 0.0), ("adamw", 3e-4, 3e-4),
                                                   ("rmsprop", None, 0.0), ("rmsprop", 1e-3, 1e-3)])
def test_trainer_weight_decay_is_the_one_given(optimizer, given, used):
    """An explicit ``weight_decay=0`` turns AdamW's decay off (it was taken for 'not given' and became 1e-2)."""
    model = ssrn.SSRN(ssrn.SSRNConfig(bands=12, classes=3, patch=5, variant="spc"))
    kw = {} if given is None else {"weight_decay": given}
    t = Trainer(model, optimizer=optimizer, epochs=1, progress=False, **kw)
    assert t.optimizer.param_groups[0]["weight_decay"] == used


@pytest.mark.parametrize("given", ["path", "state_dict"])
def test_trainer_refuses_what_is_not_a_model(tmp_path, given):
    """``Trainer(path)`` raised a bare AttributeError on ``.to``."""
    from ssrn.errors import HSIEngineError, OptionTypeError

    model = ssrn.SSRN(ssrn.SSRNConfig(bands=12, classes=3, patch=5, variant="spc"))
    arg = ssrn.save_model(model, tmp_path / "m") if given == "path" else model.state_dict()
    with pytest.raises(OptionTypeError, match=r"Trainer takes an ssrn.SSRN model; got .*(ssrn.load_model\(path\)|"
                                              r"load_state_dict).*") as e:
        Trainer(arg, epochs=1, progress=False)
    assert isinstance(e.value, HSIEngineError)
    if given == "path":
        assert "to train a new model on a dataset, call ssrn.run_training(dataset, out)" in str(e.value)


def test_fit_restores_cudnn_flags(crop):
    """fit runs cuDNN deterministic and leaves the process's flags as they were: a classify in the same notebook
    after training kept benchmark=False, deterministic=True for good."""
    _, cube, lab = crop
    normed, _, _ = D.standardize(cube[:12])
    s = D.per_class_split(lab, 4, 0.05, seed=1)
    cudnn = torch.backends.cudnn
    before = cudnn.benchmark, cudnn.deterministic
    seen = []
    try:
        cudnn.benchmark, cudnn.deterministic = True, False
        model = ssrn.SSRN(ssrn.SSRNConfig(bands=12, classes=5, patch=5, variant="spc"))
        t = Trainer(model, epochs=1, progress=False,
                    on_improve=lambda m, r: seen.append((cudnn.benchmark, cudnn.deterministic)))
        t.fit(D.PatchDataset(normed, lab, s.train, 5), D.PatchDataset(normed, lab, s.val, 5))
        assert seen and seen[0] == (False, True)  # deterministic while it trained
        assert (cudnn.benchmark, cudnn.deterministic) == (True, False)
    finally:
        cudnn.benchmark, cudnn.deterministic = before


def test_fit_leaves_the_callers_random_streams_where_they_were(crop):
    """Trainer.fit (public, as run_training) reseeded Python's, numpy's and torch's global generators for good."""
    import random

    _, cube, lab = crop
    normed, _, _ = D.standardize(cube[:12])
    s = D.per_class_split(lab, 4, 0.05, seed=1)
    model = ssrn.SSRN(ssrn.SSRNConfig(bands=12, classes=5, patch=5, variant="spc"))
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    expected = random.random(), np.random.random(), torch.rand(1).item()
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    Trainer(model, epochs=1, progress=False, seed=3).fit(D.PatchDataset(normed, lab, s.train, 5))
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected


def test_dense_prediction_equals_patch_mode(crop):
    _, cube, lab = crop
    normed, _, _ = D.standardize(cube)
    torch.manual_seed(3)
    m = ssrn.SSRN(ssrn.SSRNConfig(bands=200, classes=5, patch=7)).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
    idx = np.flatnonzero(lab.ravel() > 0)[::7]
    ds = D.PatchDataset(normed, lab, idx, 7)
    a, la = predict(m, ds, dense=False)
    b, lb = predict(m, ds, dense=True)
    np.testing.assert_array_equal(a, b)
    assert la == pytest.approx(lb, rel=1e-5)


def test_training_is_deterministic_for_a_seed(crop):
    _, cube, lab = crop
    normed, _, _ = D.standardize(cube[:20])
    s = D.per_class_split(lab, 6, 0.05, seed=0)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)  # the Trainer reseeds: initial weights come from the same model copy below
        model = ssrn.SSRN(ssrn.SSRNConfig(bands=20, classes=5, patch=5))
        Trainer(model, epochs=2, seed=7, progress=False).fit(D.PatchDataset(normed, lab, s.train, 5),
                                                             D.PatchDataset(normed, lab, s.val, 5))
        outs.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in outs[0]:
        torch.testing.assert_close(outs[0][k], outs[1][k], rtol=0, atol=0)


def test_balanced_class_weights_follow_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    from ssrn.train import class_weights

    labels = np.array([0] * 50 + [1] * 7 + [3] * 3)  # class 2 absent from the training labels
    w = class_weights(labels, 4, "balanced")
    ref = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=labels)
    np.testing.assert_allclose(w.numpy()[[0, 1, 3]], ref, rtol=1e-6)
    assert w[2] == 0
    assert class_weights(labels, 4, None) is None and class_weights(labels, 4, "none") is None
    with pytest.raises(ValueError, match="balanced"):
        class_weights(labels, 4, "inverse")


def test_balanced_loss_changes_training_and_is_recorded(crop, tmp_path):
    """The weighted loss reaches the optimiser (different weights than the seed's loss) and the report says so."""
    path, _, _ = crop
    common = dict(data_dir=None, epochs=1, batch_size=16, train_fraction=0.2, val_fraction=0.1, seed=0,
                  device="cpu", patch=5, variant="spc")
    plain = run_training(str(path), tmp_path / "plain", **common)
    weighted = run_training(str(path), tmp_path / "weighted", class_weight="balanced", **common)
    assert plain["class_weight"] is None and weighted["class_weight"] == "balanced"
    # the best epoch is chosen on the loss the run minimises: the weighted one (it was the unweighted val loss)
    assert (plain["selected_on"], plain["selection_class_weight"]) == ("val_loss", None)
    assert (weighted["selected_on"], weighted["selection_class_weight"]) == ("val_loss", "balanced")
    assert plain["confusion_matrix_layout"].startswith("rows: true class 1..K; columns: predicted class 1..K")
    a = ssrn.load_model(tmp_path / "plain").state_dict()
    b = ssrn.load_model(tmp_path / "weighted").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


# --------------------------------------------------------------------------------------------------
# arguments checked before the data is read (a bad one must not cost a training run), and what a run records

@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if run_training gets as far as reading the data."""
    import ssrn.train as T

    def refuse(*a, **k):
        raise AssertionError("run_training read the data before refusing a bad argument")
    monkeypatch.setattr(T, "load_dataset", refuse)


@pytest.mark.parametrize("kw, message", [
    (dict(epochs=0), r"epochs \(--epochs\) must be >= 1, got 0"),
    (dict(epochs=-3), "epochs .* must be >= 1"),
    (dict(batch_size=0), r"batch_size \(--batch-size\) must be >= 2"),
    (dict(batch_size=1), r"batch_size \(--batch-size\) must be >= 2 \(BatchNorm needs two samples per batch"),
    (dict(lr=0.0), r"lr \(--lr\) must be > 0, got 0.0"),
    (dict(lr=-1.0), "lr .* must be > 0"),
    (dict(patience=0), r"patience \(--patience\) must be >= 1"),
    (dict(max_minutes=0.0), r"max_minutes \(--max-minutes\) must be > 0"),
    (dict(per_class=0), r"per_class \(--per-class\) must be >= 1, got 0"),
    (dict(train_fraction=1.5), r"train fraction \(--train-fraction\) must be in \(0, 1\), got 1.5"),
    (dict(val_fraction=-0.1), r"validation fraction \(--val-fraction\) must be in \[0, 1\), got -0.1"),
    (dict(train_fraction=0.95, val_fraction=0.1), r"train fraction 0.95 \+ validation fraction 0.1 = 1.05 leaves no "
                                                  "test pixels"),
    (dict(train_fraction=0.95), r"validation fraction 0.1 \(the indian_pines protocol's default\) = 1.05"),
    (dict(split="blocks", per_class=5), "--per-class applies to the random split only"),
    (dict(per_class=5, train_fraction=0.2), "--per-class and --train-fraction both set the training pixels"),
    (dict(device="bogus"), "device 'bogus' is not a torch device name; expected cpu, cuda or cuda:N"),
    # options that passed these checks and failed after the training (lost), or that a truthy string turned on
    (dict(train_fraction="0.2"), (r"train fraction \(--train-fraction\) must be a number \(or None\), got '0.2' "
                                  r"\(str\): a string .* convert it first")),
    (dict(save_progress_every_s="0"), r"save_progress_every_s must be a number, got '0' \(str\)"),
    (dict(save_progress_every_s=-1), r"save_progress_every_s must be >= 0"),
    (dict(lr=torch.tensor(1e-3)), r"lr \(--lr\) must be a number, got tensor"),
    (dict(amp="no"), "amp must be True or False; got str 'no'"),
    (dict(overwrite="no"), "overwrite must be True or False; got str 'no'"),
    (dict(data_dir=b".."), r"data_dir must be a path \(a str or pathlib.Path\) or None; got bytes: decode it"),
])
def test_bad_options_are_refused_before_reading_data(tmp_path, no_data, kw, message):
    from ssrn.train import TrainOptionError

    with pytest.raises(TrainOptionError, match=message):
        run_training("indian_pines", tmp_path / "m", **kw)
    assert list(tmp_path.iterdir()) == []


def test_cuda_asked_for_but_not_there(tmp_path, no_data, monkeypatch):
    from ssrn.train import TrainOptionError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # (set, it is named instead)
    with pytest.raises(TrainOptionError, match="sees no CUDA device: use cpu"):
        run_training("indian_pines", tmp_path / "m", device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(TrainOptionError, match=r"sees 1 CUDA device\(s\): cuda:0 to cuda:0"):
        run_training("indian_pines", tmp_path / "m", device="cuda:1")


def test_bad_output_is_refused_before_reading_data(tmp_path, no_data, monkeypatch):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "data.txt").write_text("important")
    with pytest.raises(ssrn.CheckpointError, match="afile is a file, not a directory"):
        run_training("indian_pines", tmp_path / "afile" / "sub")
    with pytest.raises(ssrn.CheckpointError, match="not a model directory"):
        run_training("indian_pines", tmp_path / "proj", overwrite=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ssrn.CheckpointError, match=r"^\. \(.*\) exists and is not a model directory") as e:
        run_training("indian_pines", ".")
    assert f"({tmp_path.resolve()})" in str(e.value)
    assert (tmp_path / "proj" / "data.txt").read_text() == "important"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "proj"]


def test_make_split_refuses_options_that_cannot_both_apply(crop):
    from ssrn.train import TrainOptionError, make_split

    scene = D.load_dataset(str(crop[0]))
    with pytest.raises(TrainOptionError, match="random split only"):
        make_split(scene, "blocks", per_class=5, patch=5)
    with pytest.raises(TrainOptionError, match="give one of them"):
        make_split(scene, "random", train_fraction=0.3, per_class=5)


def test_scene_with_too_few_bands_is_a_data_error(tmp_path):
    p = tmp_path / "thin.npz"
    rng = np.random.default_rng(0)
    np.savez(p, cube=rng.normal(size=(5, 12, 12)).astype(np.float32), labels=rng.integers(0, 3, (12, 12)))
    with pytest.raises(D.DataError, match=r"thin.npz: an SSRN cannot be built for this scene \(5 bands, 2 classes\)"):
        run_training(str(p), tmp_path / "m", epochs=1, patch=5, device="cpu")
    assert not (tmp_path / "m").exists()


def test_progress_saves_replace_the_runs_own_output_and_amp_records_what_ran(crop, tmp_path, caplog):
    """Saving the best model at every improvement (progress interval 0) rewrites ``out`` without --overwrite;
    a second run into it needs overwrite; --amp on CPU is recorded as not used, with one log line."""
    path, _, _ = crop
    out = tmp_path / "m"
    common = dict(epochs=2, batch_size=16, per_class=4, val_fraction=0.05, device="cpu", patch=5, variant="spc",
                  save_progress_every_s=0.0)
    with caplog.at_level("INFO", logger="ssrn.train"):
        rep = run_training(str(path), out, amp=True, **common)
    assert rep["amp"] is False and ssrn.load_model(out).meta["report"]["amp"] is False
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "--amp (bfloat16 autocast) applies on CUDA only: training on cpu in float32"]
    assert sum("saved progress" in r.getMessage() for r in caplog.records) >= 1
    assert ssrn.load_model(out).meta["report"]["status"] == "done"
    with pytest.raises(ssrn.CheckpointError, match="existing model directory; pass --overwrite"):
        run_training(str(path), out, **common)
    # --overwrite over a finished model saves no progress over it (a Ctrl-C after a progress save had left a
    # half-trained model in place of the good one), and still replaces it at the end
    caplog.clear()
    with caplog.at_level("INFO", logger="ssrn.train"):
        rep2 = run_training(str(path), out, overwrite=True, seed=1, **common)
    assert not any("saved progress" in r.getMessage() for r in caplog.records)
    assert any("progress is not saved over it" in r.getMessage() for r in caplog.records)
    assert ssrn.load_model(out).meta["report"]["seed"] == 1 and rep2["status"] == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_progress_save_loads_with_a_warning(crop, tmp_path):
    """A model directory holding a progress save (a stopped run's) classified without a word: it says so."""
    import json

    path, _, _ = crop
    out = tmp_path / "m"
    run_training(str(path), out, epochs=1, batch_size=16, per_class=4, val_fraction=0.05, device="cpu", patch=5,
                 variant="spc")
    doc = json.loads((out / "model.json").read_text())
    doc["meta"]["report"].update(status="training", epochs_run=3, epochs=200)
    (out / "model.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match=r"holds a training run's progress save \(epoch 3 of 200") as caught:
        ssrn.load_model(out)
    import hsi_engine

    with pytest.warns(UserWarning, match="progress save") as again:
        hsi_engine.load_model(out)
    # the user's line, not the line in hsi_engine.load_model that called the loader: Python's once-per-location
    # filter had shown it for the first unfinished model of a session and never again
    assert {w.filename for w in caught.list + again.list} == {__file__}, [w.filename for w in again.list]


def test_a_class_without_test_pixels_is_named(tmp_path, caplog):
    """A class of one pixel under per_class went wholly to training: AA averaged the other classes without a
    word. It is named in a warning and in the report's split."""
    rng = np.random.default_rng(0)
    labels = np.zeros((12, 12), int)
    labels[:6] = 1
    labels[6:] = 2
    labels[0, 0] = 3
    np.savez(tmp_path / "s.npz", cube=rng.normal(size=(12, 12, 12)).astype(np.float32), labels=labels)
    with caplog.at_level("WARNING", logger="ssrn.train"):
        rep = run_training(str(tmp_path / "s.npz"), tmp_path / "m", epochs=1, batch_size=16, per_class=5,
                           val_fraction=0.0, device="cpu", patch=5, variant="spc")
    assert rep["split"]["classes_absent_from_test"] == ["class 3"]
    assert any("classes ['class 3'] have no test pixel" in r.getMessage() for r in caplog.records)
    # no validation pixels: the best epoch is chosen on the training loss, recorded as that (it stood as val_loss)
    assert rep["selected_on"] == "train_loss" and rep["best_val_loss"] is None
    assert [h["val_loss"] for h in rep["history"]] == [None] and "val_acc" not in rep["history"][0]


def test_a_class_without_validation_pixels_is_named_and_exotic_numbers_train(tmp_path, caplog):
    """A 3-pixel class at --train-fraction 0.7 got no validation pixel, silently (stratified_split's docstring
    promised one). Fraction, Decimal and numpy options passed the checks and failed model.json's save after the
    training, or random.seed (np.int64): they are plain numbers in the report now."""
    import json
    from decimal import Decimal
    from fractions import Fraction

    labels = np.zeros((8, 8), int)
    labels[:4], labels[4:] = 1, 2
    labels[0, :3] = 3
    with caplog.at_level("WARNING", logger="ssrn.train"):
        rep = run_training(_npz_scene(tmp_path / "s.npz", labels, bands=12), tmp_path / "m", epochs=1, device="cpu",
                           patch=5, variant="spc", batch_size=64, train_fraction=Fraction(7, 10),
                           val_fraction=Decimal("0.1"),
                           seed=np.int64(0), max_minutes=Fraction(1, 2), lr=np.float32(1e-3))
    assert rep["split"]["classes_absent_from_val"] == ["class 3"]
    assert any("classes ['class 3'] have no validation pixel" in r.getMessage() for r in caplog.records)
    assert (rep["split"]["train_fraction"], rep["max_minutes"], rep["seed"]) == (0.7, 0.5, 0)
    saved = json.loads((tmp_path / "m" / "model.json").read_text())["meta"]["report"]
    assert saved["split"]["val_fraction"] == 0.1 and type(saved["lr"]) is float


def test_stratified_split_docstring_holds():
    labels = np.zeros((10, 10), np.int64)
    labels[0, :3], labels[5, :] = 1, 2
    counts = [[c[0] for c in D.stratified_split(labels, tf, vf, 0).counts(labels, 2).values()]
              for tf, vf in ((0.2, 0.1), (0.7, 0.1), (0.9, 0.05))]
    assert counts == [[1, 1, 1], [2, 0, 1], [3, 0, 0]]


def test_check_train_options_gives_plain_numbers_and_seeding_takes_numpy_integers():
    import random
    from decimal import Decimal
    from fractions import Fraction

    from ssrn.train import check_train_options, seed_everything

    o = check_train_options(epochs=np.int64(2), batch_size=np.int32(16), lr=Fraction(3, 10000), patience=None,
                            max_minutes=Fraction(1, 2), train_fraction=Decimal("0.2"), val_fraction=np.float32(0.1),
                            seed=np.uint8(3), save_progress_every_s=0)
    assert {k: type(v) for k, v in o.items() if v is not None} == {
        "epochs": int, "batch_size": int, "seed": int, "lr": float, "max_minutes": float, "train_fraction": float,
        "val_fraction": float, "save_progress_every_s": float}
    draws = []
    for seed in (np.int64(3), 3):
        seed_everything(seed, deterministic=False)  # np.int64: random.seed's bare TypeError
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]


def test_predict_weighs_its_loss_as_the_training_does():
    """The validation loss that picks the best epoch was unweighted under --class-weight balanced."""
    import torch.nn.functional as F

    from ssrn.train import class_weights

    rng = np.random.default_rng(0)
    normed = rng.normal(size=(12, 8, 8)).astype(np.float32)
    labels = rng.integers(1, 4, (8, 8))
    labels[:, :6] = 1  # class 1 dominates: its weight is small
    data = D.PatchDataset(normed, labels, np.arange(64), 5)
    torch.manual_seed(0)
    model = ssrn.SSRN(ssrn.SSRNConfig(bands=12, classes=3, kernel=3, patch=5, variant="spc")).eval()
    w = class_weights(data.labels.numpy(), 3, "balanced")
    with torch.no_grad():
        logits = model(data.batch(np.arange(64)))
    _, plain = predict(model, data, batch_size=10)
    _, weighted = predict(model, data, batch_size=10, weight=w)
    assert plain == pytest.approx(float(F.cross_entropy(logits, data.labels)), rel=1e-5)
    assert weighted == pytest.approx(float(F.cross_entropy(logits, data.labels, weight=w)), rel=1e-5)
    assert weighted != pytest.approx(plain, rel=1e-3)


def test_a_class_without_training_pixels_is_warned_about(tmp_path, caplog):
    """A block split that put a small class wholly in validation and test said so only at INFO level, inside
    the split's line, though the model then has an output no training pixel ever raised."""
    labels = np.zeros((30, 30), int)
    labels[:, :15], labels[:, 15:], labels[25:, 25:] = 1, 2, 3
    scene = _npz_scene(tmp_path / "s.npz", labels)
    with caplog.at_level("WARNING", logger="ssrn.train"):
        rep = run_training(scene, tmp_path / "m", epochs=1, device="cpu", patch=5, variant="spc", split="blocks",
                           train_fraction=0.4, val_fraction=0.2, seed=1)
    assert rep["split"]["classes_absent_from_train"] == ["class 3"]
    assert any("classes ['class 3'] have no training pixel" in r.getMessage() for r in caplog.records)


def _npz_scene(path, labels, bands=24, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, cube=rng.normal(size=(bands, labels.shape[0], labels.shape[1])).astype(np.float32),
             labels=labels)
    return str(path)


def test_labels_of_more_classes_than_a_map_holds_are_refused_before_training(tmp_path):
    """300 classes trained a model the engine then refused ('at most 255 classes ... retrain')."""
    scene = _npz_scene(tmp_path / "s.npz", (np.arange(400).reshape(20, 20) % 300) + 1)
    with pytest.raises(D.DataError, match="the labels have 300 classes; class maps are uint8"):
        run_training(scene, tmp_path / "m", epochs=1, device="cpu", patch=5)
    assert not (tmp_path / "m").exists()


def test_a_block_split_without_training_pixels_is_refused(tmp_path):
    """A scene too small for the blocks of --split blocks put every block in test: the untrained network was
    saved as a finished model (loss 0.0000 in every epoch)."""
    labels = np.zeros((16, 16), int)
    labels[:8], labels[8:] = 1, 2
    scene = _npz_scene(tmp_path / "s.npz", labels)
    with pytest.raises(D.DataError, match="the split leaves no training pixels .* --split random"):
        run_training(scene, tmp_path / "m", epochs=1, device="cpu", patch=11, split="blocks")
    assert not (tmp_path / "m").exists()


def test_a_loss_that_diverges_before_any_usable_epoch_saves_nothing(tmp_path):
    """lr 1e6: NaN from epoch 1, no epoch improved, and the NaN weights were saved as a finished model (whose map
    was one class). Now an error naming --lr, and no model."""
    from ssrn.train import TrainingDivergedError

    labels = np.zeros((12, 12), int)
    labels[:6], labels[6:] = 1, 2
    scene = _npz_scene(tmp_path / "s.npz", labels)
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at epoch 1.* lower the learning rate \(--lr"):
        run_training(scene, tmp_path / "m", epochs=2, device="cpu", patch=5, variant="spc", optimizer="adamw",
                     lr=1e6)
    assert not (tmp_path / "m").exists()


def test_a_second_run_into_the_same_out_is_refused_at_once(tmp_path, no_data):
    """Two runs into one --out (a copied job script): the second trained for hours, then found the first one's
    model and lost its own. It is refused before reading data while the first holds the output."""
    from ssrn.errors import OutputError
    from ssrn.lock import file_lock

    with file_lock((tmp_path / "m").resolve(), fix="(the first run's)"):
        with pytest.raises(OutputError, match=r"another run is writing .*m now .*train into another --out"):
            run_training("indian_pines", tmp_path / "m", epochs=1)
    assert list(tmp_path.iterdir()) == []


def test_a_trainer_built_directly_checks_its_options(crop):
    """Trainer(batch_size=1) skipped every batch (BatchNorm needs two) and reported a trained model; a negative lr
    was torch's ValueError. Both are TrainOptionError, as from run_training."""
    from ssrn.train import TrainOptionError

    model = ssrn.SSRN(ssrn.SSRNConfig(bands=20, classes=5, patch=5))
    with pytest.raises(TrainOptionError, match=r"batch_size \(--batch-size\) must be >= 2"):
        Trainer(model, batch_size=1, progress=False)
    with pytest.raises(TrainOptionError, match=r"lr \(--lr\) must be > 0"):
        Trainer(model, lr=-1.0, progress=False)
    with pytest.raises(TrainOptionError, match="amp must be True or False; got str 'no'"):
        Trainer(model, amp="no", progress=False)
    with pytest.raises(TrainOptionError, match=r"weight_decay must be a number \(or None\), got '0'"):
        Trainer(model, weight_decay="0", progress=False)


def test_patch_dataset_indices_are_flat_and_in_the_scene():
    """(row, col) pairs were taken as 2N flat indices: a dataset of the wrong length that failed later."""
    normed = np.zeros((3, 6, 5), np.float32)
    labels = np.ones((6, 5), np.int64)
    with pytest.raises(ssrn.OptionError, match=r"1-D array of flat pixel indices .* np.ravel_multi_index"):
        D.PatchDataset(normed, labels, np.array([[2, 3], [5, 4]]), 3)
    with pytest.raises(ssrn.OptionError, match=r"indices must be in 0..29"):
        D.PatchDataset(normed, labels, np.array([0, 30]), 3)
    assert len(D.PatchDataset(normed, labels, np.array([0, 29]), 3)) == 2


def test_a_scene_object_or_a_loader_trains_and_the_loader_waits_for_the_checks(tmp_path):
    """run_training takes a Scene (or a function returning one, as hsi_engine.train passes for a label raster):
    the function is called only once the options are checked, so a bad option costs no read."""
    labels = np.zeros((12, 12), int)
    labels[:6], labels[6:] = 1, 2
    scene = D.load_dataset(_npz_scene(tmp_path / "s.npz", labels))
    calls = []

    def loader():
        calls.append(1)
        return scene

    from ssrn.train import TrainOptionError

    with pytest.raises(TrainOptionError, match="lr"):
        run_training(loader, tmp_path / "m0", epochs=1, device="cpu", patch=5, lr=-1.0)
    assert calls == [] and not (tmp_path / "m0").exists()
    by_object = run_training(scene, tmp_path / "m1", epochs=1, device="cpu", patch=5)
    by_loader = run_training(loader, tmp_path / "m2", epochs=1, device="cpu", patch=5)
    assert calls == [1]
    assert by_object["dataset"] == by_loader["dataset"] == "s"
    assert by_object["confusion_matrix"] == by_loader["confusion_matrix"]
    with pytest.raises(TrainOptionError, match="dataset function returned .ndarray.; expected a ssrn.data.Scene"):
        run_training(lambda: labels, tmp_path / "m3", epochs=1, device="cpu", patch=5)


def test_label_rasters_are_the_engines_and_run_training_says_where_to_go(tmp_path, no_data):
    """ssrn reads no label rasters (the engine's readers place them): labels= here names hsi_engine.train, and
    the old ssrn.data.load_labelled_raster names its new home."""
    from ssrn.train import TrainOptionError

    for kw in (dict(labels=tmp_path / "l.tif"), dict(class_names=["a", "b"])):
        with pytest.raises(TrainOptionError, match=r"call hsi_engine.train\(dataset, out, labels=\.\.\."):
            run_training(str(tmp_path / "s.tif"), tmp_path / "m", epochs=1, **kw)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ImportError, match="moved to the engine.*hsi_engine.load_labelled_raster"):
        from ssrn.data import load_labelled_raster  # noqa: F401
    with pytest.raises(ImportError, match="moved to the engine"):
        D.load_labelled_raster  # noqa: B018
    assert not hasattr(D, "no_such_name")


def test_the_report_names_a_device_that_is_not_a_cpu_by_its_own_name():
    """A run on Apple's GPU (--device mps) was recorded as 'cpu (arm, 8 threads)'."""
    from ssrn.train import _device_name

    assert _device_name(torch.device("mps")) == "mps"
    assert _device_name(torch.device("cpu")).startswith("cpu (")


def test_progress_saves_do_not_change_a_seeded_training(tmp_path):
    """Each progress save built ``SSRN(config)``, whose initial weights drew from the generator dropout draws from:
    the same seed gave other weights when a save happened (saves follow the wall clock)."""
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    labels = (np.arange(16 * 16).reshape(16, 16) % 3 + 1).astype(np.uint8)
    cube = rng.normal(size=(12, 16, 16)).astype(np.float32) + labels * 0.3
    np.savez(tmp_path / "s.npz", cube=cube, labels=labels)
    weights = []
    for every in (0.0, 1e9):  # a save after every improvement, and none
        out = tmp_path / f"m{every:g}"
        run_training(str(tmp_path / "s.npz"), out, epochs=3, batch_size=16, seed=3, save_progress_every_s=every)
        weights.append(load_file(str(out / "weights.safetensors")))
    for k in weights[0]:
        np.testing.assert_array_equal(weights[0][k], weights[1][k], err_msg=k)


def _scene_object(labels, names, palette=None, cube=None):
    import xarray as xr

    rng = np.random.default_rng(0)
    if cube is None:
        cube = rng.uniform(100, 900, (6,) + labels.shape).astype(np.float32)
    return D.Scene("s", xr.DataArray(cube, dims=("band", "y", "x")), labels, names,
                   [[0, 0, 0]] * len(names) if palette is None else palette)


@pytest.mark.parametrize("labels, names, palette, message", [
    (np.full((8, 8), 7), ["a", "b"], None, r"the labels run up to 7 \(64 pixels\) but class_names name 2 classes"),
    (np.full((8, 8), -1), ["a"], None, r"found -1 \(64 pixels\): if it marks unlabelled pixels, set them to 0 or "
                                       r"declare -1 the label raster's nodata value"),
    (np.full((8, 8), 1.5), ["a", "b"], None, r"fractional values such as 1\.5 \(a resampled label raster"),
    (np.ones((8, 8), int), ["a", "a"], None, r"Scene\.class_names: the names \['a'\] are repeated"),
    (np.ones((8, 8), int), ["a", "b"], [[0, 0, 0]], r"Scene\.palette must be 2 colours"),
    (np.ones((8, 8), int), ["a", "b"], [[300, 0, 0]] * 2, r"Scene\.palette must be 2 colours"),
])
def test_a_scene_object_is_checked_before_training(tmp_path, labels, names, palette, message):
    """A Scene built in Python skipped the loaders' checks: labels beyond its names were an IndexError, a bad palette
    or repeated names a CheckpointError at the save, after every epoch had run. Refused up front, nothing written."""
    with pytest.raises(D.DataError, match=message):
        run_training(_scene_object(labels, names, palette), tmp_path / "m", epochs=1, patch=3)
    assert not (tmp_path / "m").exists()


def test_a_scene_object_with_whole_float_labels_reads_them_as_classes():
    """GeoTIFF label tiles are often float32: whole numbers train (a TypeError in the split's counts before)."""
    from ssrn.train import _check_scene

    scene = _scene_object(np.array([[0.0, 1.0], [2.0, 2.0]], np.float32), np.array(["a", "b"]),
                          palette=np.array([[1, 2, 3], [4, 5, 6]], np.uint8))  # (numpy names and palette train too)
    _check_scene(scene)
    assert scene.labels.dtype == np.int64 and scene.labels.tolist() == [[0, 1], [2, 2]]
    assert scene.class_names == ["a", "b"] and scene.palette == [[1, 2, 3], [4, 5, 6]]
    scene.palette = [(np.uint8(1), 2, 3), [np.int64(4), 5, 6]]  # (numpy integers failed model.json's save)
    _check_scene(scene)
    assert scene.palette == [[1, 2, 3], [4, 5, 6]] and all(type(v) is int for c in scene.palette for v in c)


def test_a_scene_of_no_varying_band_is_refused(tmp_path):
    """Every band one value (a fill, an undeclared nodata): a model that can only answer one class was saved."""
    labels = np.zeros((8, 8), int)
    labels[:4], labels[4:] = 1, 2
    with pytest.raises(D.DataError, match="no band varies over the pixels with data"):
        run_training(_scene_object(labels, ["a", "b"], cube=np.full((8, 8, 8), 7.0, np.float32)), tmp_path / "m",
                     epochs=1, patch=3)
    assert not (tmp_path / "m").exists()


def test_classes_without_a_pixel_are_warned_of_and_an_ignore_code_is_named(caplog):
    """Labels 1..6 plus 10 meant as 'not surveyed' trained a 10-class model without a word (classes 7-9 empty)."""
    from ssrn.train import _warn_empty_classes

    labels = np.array([[1, 2, 3], [4, 5, 6], [10, 10, 0]])
    with caplog.at_level("WARNING", logger="ssrn.train"):
        _warn_empty_classes(_scene_object(labels, [f"class {i}" for i in range(1, 11)]))
        _warn_empty_classes(_scene_object(labels, [f"c{i}" for i in range(1, 11)]))
        _warn_empty_classes(_scene_object(np.array([[1, 2]]), ["a", "b"]))
        _warn_empty_classes(_scene_object(np.array([[2, 3, 4]]), [f"class {i}" for i in range(1, 5)]))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3, said
    assert "no pixel of classes [7, 8, 9] (of 1..10)" in said[0] and "If 10 (2 pixels) marks unlabelled" in said[0]
    assert "classes ['c7', 'c8', 'c9'] have no labelled pixel" in said[1]
    assert "no pixel of classes [1] (of 1..4)" in said[2] and "If 4" not in said[2]  # (a crop's classes: no code)


def test_a_progress_save_that_fails_does_not_end_the_training(crop, tmp_path, caplog, monkeypatch):
    """A full disk at the second progress save raised a CheckpointError: training stopped and the model in memory
    was lost. It is a warning; the first save is kept and the training saves at its end."""
    import errno

    import ssrn.checkpoint

    path, _, _ = crop
    real, calls = ssrn.checkpoint.save_model, []

    def flaky(*a, **k):
        calls.append(k.get("meta", {}).get("report", {}).get("status"))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(ssrn.checkpoint, "save_model", flaky)
    with caplog.at_level("WARNING", logger="ssrn.train"):
        rep = run_training(str(path), tmp_path / "m", epochs=3, batch_size=16, per_class=4, val_fraction=0.05,
                           device="cpu", patch=5, variant="spc", save_progress_every_s=0.0, patience=None)
    assert rep["status"] == "done" and calls[1] == "training" and calls[-1] == "done", calls
    assert any("could not save progress" in r.getMessage() and "the last progress save there is kept" in
               r.getMessage() for r in caplog.records)
    assert ssrn.load_model(tmp_path / "m").meta["report"]["status"] == "done"


def test_patience_reached_on_the_last_epoch_is_not_an_early_stop(monkeypatch, caplog):
    """--patience whose count ran out on the last of --epochs: the report said stopped_early and the log
    'early stop', though every epoch asked for ran. (The validation loss rises every epoch: a stub.)"""
    import ssrn.train as T

    rng = np.random.default_rng(0)
    data = D.PatchDataset(rng.normal(size=(12, 8, 8)).astype(np.float32), rng.integers(1, 4, (8, 8)), np.arange(64),
                          5)
    real, calls = T.predict, []

    def rising(*a, **k):
        pred, _ = real(*a, **k)
        calls.append(1)
        return pred, float(len(calls))

    monkeypatch.setattr(T, "predict", rising)
    for epochs, early in ((2, False), (3, True)):
        calls.clear()
        caplog.clear()
        torch.manual_seed(0)
        model = ssrn.SSRN(ssrn.SSRNConfig(bands=12, classes=3, kernel=3, patch=5, variant="spc"))
        with caplog.at_level("INFO", logger="ssrn.train"):
            res = Trainer(model, epochs=epochs, patience=1, seed=0, progress=False).fit(data, data)
        assert (res.epochs_run, res.best_epoch, res.stopped_early) == (2, 1, early), epochs
        assert any("early stop" in r.getMessage() for r in caplog.records) == early, epochs


def test_a_test_set_of_one_class_reports_kappa_as_undefined(tmp_path, caplog, monkeypatch):
    """A test set of one class (every prediction that class) reported kappa 1.0, as perfect agreement beyond
    chance; it is undefined: null in the report and model.json (valid JSON: no NaN), 'n/a' in the log. (Class 2's
    one pixel trains; the predictions are made all class 1 by a stub, as a short run's may be.)"""
    import json

    import ssrn.train as T

    real = T.predict
    monkeypatch.setattr(T, "predict", lambda *a, **k: (lambda p, loss: (np.zeros_like(p), loss))(*real(*a, **k)))
    labels = np.ones((8, 8), int)
    labels[0, 0] = 2
    scene = _npz_scene(tmp_path / "s.npz", labels, bands=12)
    with caplog.at_level("INFO", logger="ssrn.train"):
        rep = run_training(scene, tmp_path / "m", epochs=1, device="cpu", patch=3, variant="spc")
    assert rep["split"]["classes_absent_from_test"] == ["class 2"]
    assert rep["kappa"] is None and rep["oa"] == 1.0
    json.dumps(rep, allow_nan=False)  # (benchmarks/accuracy.py writes the report so)

    def refuse(constant):
        raise AssertionError(f"model.json holds {constant}")

    saved = json.loads((tmp_path / "m" / "model.json").read_text(), parse_constant=refuse)["meta"]["report"]
    assert saved["kappa"] is None
    assert any("kappa n/a (one class in the test set)" in r.getMessage() for r in caplog.records)


def test_a_split_that_draws_no_validation_pixel_warns(tmp_path, caplog):
    """--split blocks on a small scene drew no validation block at --val-fraction 0.1: the best epoch was chosen on
    the training loss with only an INFO line saying so."""
    labels = np.zeros((16, 16), int)
    labels[:8], labels[8:] = 1, 2
    scene = _npz_scene(tmp_path / "s.npz", labels, bands=12)
    with caplog.at_level("WARNING", logger="ssrn.train"):
        rep = run_training(scene, tmp_path / "m", epochs=1, device="cpu", patch=3, variant="spc", split="blocks")
    assert rep["split"]["n_val"] == 0 and rep["split"]["n_train"] > 0 and rep["selected_on"] == "train_loss"
    said = [r.getMessage() for r in caplog.records if "drew no validation pixel" in r.getMessage()]
    assert len(said) == 1 and "validation fraction 0.1), so the best epoch is chosen on the training loss" in said[0]
    assert "a smaller --patch (more, smaller blocks), --split random, or a larger --val-fraction" in said[0]
