"""Checkpoint round trip and refusals (pickle, mismatched config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ssrn
from ssrn import SSRN, CheckpointError, SSRNConfig


def _model(bands=30, classes=4, seed=0):
    torch.manual_seed(seed)
    m = SSRN(SSRNConfig(bands=bands, classes=classes, patch=5))
    for mod in m.modules():  # non-trivial BN statistics so the round trip checks them too
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_round_trip(tmp_path):
    m = _model()
    meta = {"mean": [0.5] * 30, "std": [2.0] * 30, "class_names": ["a", "b", "c", "d"],
            "palette": [[1, 2, 3]] * 4, "report": {"oa": 0.9}, "split": {"train_mask": {"encoding": "x"}}}
    ssrn.save_model(m, tmp_path / "m", meta=meta)
    m2 = ssrn.load_model(tmp_path / "m")
    x = torch.randn(3, 30, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x), rtol=0, atol=0)
    assert m2.meta == meta
    assert m2.config == m.config


def test_refuses_pickled_weights(tmp_path):
    m = _model()
    d = ssrn.save_model(m, tmp_path / "m")
    torch.save(m.state_dict(), d / "weights.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        ssrn.load_model(d)
    torch.save(m.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        ssrn.load_model(tmp_path / "model.pt")


def test_refuses_mismatched_config(tmp_path):
    d = ssrn.save_model(_model(bands=30), tmp_path / "m")
    doc = json.loads((d / "model.json").read_text())
    doc["config"]["bands"] = 40
    (d / "model.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="bands=40") as e:
        ssrn.load_model(d)
    assert "shape" in str(e.value)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(mean=m["mean"][:-1]), r"meta.mean must be 30 numbers .* found 29 values"),
    (lambda m: m["mean"].__setitem__(3, None), r"meta.mean\[3\] is None; expected a finite number"),
    (lambda m: m["std"].__setitem__(0, "1.5"), r"meta.std\[0\] is '1.5'"),
    (lambda m: m.pop("std"), r"meta has 'mean' but no 'std'"),
    (lambda m: m["std"].__setitem__(5, -2.0), r"meta.std\[5\] is -2.0; a standard deviation is >= 0"),
    (lambda m: m.update(wavelengths=[400.0] * 7), r"meta.wavelengths must be 30 numbers .* found 7 values"),
    (lambda m: m.update(class_names=["a", "b", "c"]), r"meta.class_names must be 4 strings .* found 3 entries"),
    (lambda m: m.update(class_names=["a", "b", "c", 4]), r"meta.class_names must be 4 strings"),
    (lambda m: m.update(bad_bands=[2, 30]), r"meta.bad_bands must be band indices 0..29"),
])
def test_refuses_edited_meta_that_no_longer_fits_the_network(tmp_path, edit, message):
    """An edited model.json whose statistics, wavelengths or names do not fit the config fails at load (a null
    mean classified every pixel as one class; a short class_names list gave generic names), naming the key."""
    meta = {"mean": [0.5] * 30, "std": [2.0] * 30, "wavelengths": [400.0 + i for i in range(29)] + [None],
            "class_names": ["a", "b", "c", "d"], "bad_bands": [2]}
    d = ssrn.save_model(_model(), tmp_path / "m", meta=meta)
    assert ssrn.load_model(d).meta == meta  # as saved (an unknown wavelength may be null)
    doc = json.loads((d / "model.json").read_text())
    edit(doc["meta"])
    (d / "model.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=message):
        ssrn.load_model(d)


def test_refuses_weights_changed_since_the_save(tmp_path):
    """model.json records the weights' sha256: a damaged or swapped weights file (same shapes, so it loaded and
    classified with other numbers) is refused, naming the fix; without the record (an older model) it loads."""
    d = ssrn.save_model(_model(seed=0), tmp_path / "m")
    ssrn.save_model(_model(seed=1), tmp_path / "other")
    ssrn.load_model(d)
    (d / "weights.safetensors").write_bytes((tmp_path / "other" / "weights.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"does not match the checksum .* delete 'weights_sha256'"):
        ssrn.load_model(d)
    doc = json.loads((d / "model.json").read_text())
    del doc["weights_sha256"]
    (d / "model.json").write_text(json.dumps(doc))
    loaded = ssrn.load_model(d).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in _model(seed=1).state_dict().items())


def test_refuses_weights_holding_nan(tmp_path):
    """A diverged training's weights mapped every pixel to one class, silently."""
    m = _model()
    with torch.no_grad():
        next(p for p in m.parameters()).view(-1)[0] = float("nan")
    d = ssrn.save_model(m, tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"hold NaN or inf values: the training that wrote them diverged"):
        ssrn.load_model(d)


def test_refuses_foreign_json(tmp_path):
    d = ssrn.save_model(_model(), tmp_path / "m")
    (d / "model.json").write_text(json.dumps({"format": "keras"}))
    with pytest.raises(CheckpointError, match="not an hsi-engine model"):
        ssrn.load_model(d)


def test_saved_model_directory_is_readable_by_others(tmp_path):
    import os
    import stat

    from ssrn import SSRN, SSRNConfig, save_model

    umask = os.umask(0o022)
    try:
        out = save_model(SSRN(SSRNConfig(bands=20, classes=3)), tmp_path / "m")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "weights.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "model.json").stat().st_mode) == 0o644


# --------------------------------------------------------------------------------------------------
# what save_model may write over (the user review's data loss: an existing --out was wiped whatever it held)

def _tree(root):
    """Every path under ``root`` with its content (files) or None (directories): a snapshot to compare."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("overwrite", [False, True])
def test_save_never_touches_a_directory_that_is_not_a_model(tmp_path, overwrite):
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    (proj / "data.txt").write_text("important")
    before = _tree(tmp_path)
    with pytest.raises(CheckpointError, match=r"proj exists and is not a model directory \(it holds data.txt, sub\)"):
        ssrn.save_model(_model(), proj, overwrite=overwrite)
    assert _tree(tmp_path) == before  # nothing deleted, nothing left beside it


def test_save_refuses_a_model_directory_holding_other_files_even_with_overwrite(tmp_path):
    d = ssrn.save_model(_model(), tmp_path / "m")
    (d / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(CheckpointError, match="notes.txt"):
        ssrn.save_model(_model(seed=1), d, overwrite=True)
    assert _tree(tmp_path) == before


def test_save_replaces_a_model_directory_only_with_overwrite(tmp_path):
    d = ssrn.save_model(_model(seed=0), tmp_path / "m", meta={"v": 1})
    before = _tree(tmp_path)
    with pytest.raises(CheckpointError, match="existing model directory; pass --overwrite"):
        ssrn.save_model(_model(seed=1), d, meta={"v": 2})
    assert _tree(tmp_path) == before
    ssrn.save_model(_model(seed=1), d, meta={"v": 2}, overwrite=True)
    back = ssrn.load_model(d)
    assert back.meta == {"v": 2}
    for k, v in _model(seed=1).state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # the old copy and the build dir are gone


def test_save_refuses_a_foreign_model_json_even_with_overwrite(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.json").write_text(json.dumps({"format": "keras"}))
    with pytest.raises(CheckpointError, match="not a model directory"):
        ssrn.save_model(_model(), d, overwrite=True)
    assert json.loads((d / "model.json").read_text()) == {"format": "keras"}


def test_save_into_an_empty_directory_keeps_it(tmp_path, monkeypatch):
    d = tmp_path / "out"
    d.mkdir()
    inode = d.stat().st_ino
    monkeypatch.chdir(d)
    ssrn.save_model(_model(), ".")  # the working directory: filled in place, not replaced
    assert d.stat().st_ino == inode
    assert sorted(p.name for p in d.iterdir()) == ["model.json", "weights.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    ssrn.load_model(d)


def test_repeated_saves_into_the_working_directory_keep_it(tmp_path, monkeypatch):
    """The trainer saves `--out .` at every improvement: the later saves replace the files in the working
    directory, never the directory (a swap left the process in a deleted directory, and the third save failed)."""
    d = tmp_path / "out"
    d.mkdir()
    inode = d.stat().st_ino
    monkeypatch.chdir(d)
    for seed in range(3):
        ssrn.save_model(_model(seed=seed), ".", meta={"v": seed}, overwrite=seed > 0)
        assert d.stat().st_ino == inode and d.exists()
    assert sorted(p.name for p in d.iterdir()) == ["model.json", "weights.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    m = ssrn.load_model(d)
    assert m.meta == {"v": 2}
    torch.testing.assert_close(m.state_dict(), _model(seed=2).state_dict())


def test_an_empty_directory_is_filled_without_writing_beside_it(tmp_path, monkeypatch):
    """The temporary build goes inside an empty target, so its parent need not be writable."""
    import tempfile

    d = tmp_path / "out"
    d.mkdir()
    made = []
    real = tempfile.mkdtemp

    def spy(*a, **k):
        made.append(Path(k["dir"]))
        return real(*a, **k)
    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    ssrn.save_model(_model(), d)
    assert made == [d.resolve()]
    assert sorted(p.name for p in d.iterdir()) == ["model.json", "weights.safetensors"]


def test_save_refuses_files_and_paths_under_files(tmp_path):
    import ssrn.checkpoint as C

    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="exists and is not a directory"):
        ssrn.save_model(_model(), f, overwrite=True)
    with pytest.raises(CheckpointError, match=r"afile is a file, not a directory"):
        ssrn.save_model(_model(), f / "sub" / "m")
    with pytest.raises(CheckpointError, match="file-system root"):
        C.check_model_target("/")
    assert f.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_check_model_target_creates_nothing(tmp_path):
    from ssrn.checkpoint import check_model_target

    assert check_model_target(tmp_path / "a" / "b") == (tmp_path / "a" / "b").resolve()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root may write anywhere")
def test_save_refuses_an_unwritable_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="no write permission"):
            ssrn.save_model(_model(), ro / "m")
    finally:
        ro.chmod(0o755)


def test_a_failed_save_leaves_the_old_model(tmp_path, monkeypatch):
    import ssrn.checkpoint as C

    d = ssrn.save_model(_model(seed=0), tmp_path / "m", meta={"v": 1})
    before = _tree(tmp_path)

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(C, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        ssrn.save_model(_model(seed=1), d, overwrite=True)
    assert _tree(tmp_path) == before
