"""Checkpoint round trip and refusals (pickle, mismatched config)."""

from __future__ import annotations

import json
import time
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


def test_a_model_directory_takes_the_umask_without_setting_it(tmp_path, monkeypatch):
    """save_model read the umask by setting it to 0 and back: for that moment files other threads created were
    world-writable. The model still gets the modes the umask gives, and the umask is never set."""
    import os
    import stat

    previous = os.umask(0o027)
    try:
        def refuse(mask):
            raise AssertionError("save_model set the process's umask")

        monkeypatch.setattr(os, "umask", refuse)
        d = ssrn.save_model(_model(), tmp_path / "m")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert stat.S_IMODE(Path(d).stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in Path(d).iterdir()} == {0o640}
    assert sorted(p.name for p in Path(d).iterdir()) == ["model.json", "weights.safetensors"]


def test_loading_leaves_the_callers_random_stream_alone(tmp_path):
    """Building the network to load into drew its (discarded) initial weights from torch's global generator, so
    a caller's seeded stream moved on each load_model."""
    m = _model()
    ssrn.save_model(m, tmp_path / "m")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ssrn.load_model(tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_loading_never_saves_and_restores_the_global_generator(tmp_path, monkeypatch):
    """A service's load_model in one thread rewound the generator under a training in another (torch's fork_rng
    saved and restored it around the network's construction): 364,211 of its 364,222 weights differed from the
    same seed's run alone. The network is built without weights now, so the generator is not touched at all."""
    m = _model()
    ssrn.save_model(m, tmp_path / "m")
    restores: list = []
    monkeypatch.setattr(torch, "set_rng_state", lambda state: restores.append(state))
    loaded = ssrn.load_model(tmp_path / "m")
    assert restores == []
    for a, b in zip(loaded.state_dict().values(), m.state_dict().values()):
        assert torch.equal(a, b)


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
    (lambda m: m.update(class_names=["a", "", "c", "d"]), r"meta.class_names: class 2's name is empty"),
    (lambda m: m.update(class_names=["a", "b", "a", "d"]), r"meta.class_names: the names \['a'\] are repeated"),
    (lambda m: m.update(class_names=["a", "b\tc", "c", "d"]), r"class 2's name 'b\\tc' holds a control character"),
    (lambda m: m.update(class_names=["a", "b", "\ud83c", "d"]), r"class 3's name .* is not valid text"),
    (lambda m: m.update(bad_bands=[2, 30]), r"meta.bad_bands must be band indices 0..29"),
    (lambda m: m.update(bad_bands=list(range(30))), r"meta.bad_bands lists every one of the 30 bands"),
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
    with pytest.raises(CheckpointError, match=r"holds? NaN or inf values: the training that wrote them diverged"):
        ssrn.load_model(d)


def test_refuses_a_negative_batchnorm_variance(tmp_path):
    """A BatchNorm running variance below 0 (an edited or damaged file) folds to NaN, which the engine's spectral
    ReLU turned into 0: a plausible-looking wrong map, exit 0."""
    m = _model()
    with torch.no_grad():
        m.reduce_bn.running_var[0] = -5.0
    d = ssrn.save_model(m, tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"tensor 'reduce_bn.running_var' holds negative values .* -5 here"):
        ssrn.load_model(d)


def test_an_lfs_pointer_or_a_missing_annex_file_is_named(tmp_path):
    d = ssrn.save_model(_model(), tmp_path / "m")
    weights = d / "weights.safetensors"
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 123456\n")
    with pytest.raises(CheckpointError, match=r"is a Git LFS pointer, not the weights: .* `git lfs pull`"):
        ssrn.load_model(d)  # (the checksum in model.json did not match either: its fix led nowhere)
    weights.unlink()
    weights.symlink_to(tmp_path / ".git" / "annex" / "objects" / "xx" / "SHA256E-s1--0")
    with pytest.raises(CheckpointError, match=r"is a broken symbolic link .* `git annex get`"):
        ssrn.load_model(d)


def test_a_model_json_saved_with_a_byte_order_mark_loads(tmp_path):
    """Windows editors (Notepad, PowerShell 5) save UTF-8 with a BOM; the README says model.json may be edited."""
    d = ssrn.save_model(_model(), tmp_path / "m")
    text = (d / "model.json").read_text(encoding="utf-8")
    (d / "model.json").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert ssrn.load_model(d).config == _model().config
    (d / "model.json").write_bytes(text.replace("}", "").encode("latin-1"))
    with pytest.raises(CheckpointError, match="if you edited it, fix it and save it as UTF-8"):
        ssrn.load_model(d)


def test_a_replaced_model_that_cannot_be_deleted_is_left_with_a_warning(tmp_path, monkeypatch, caplog):
    """--overwrite: the old model's files are deleted after the new one is in place; a directory made read-only
    raised a bare PermissionError (exit 2 after the training was spent, the new model saved)."""
    d = ssrn.save_model(_model(seed=0), tmp_path / "m")
    real = Path.unlink

    def refused(self, missing_ok=False):
        if ".m.hsi-old-" in str(self):
            raise PermissionError(13, "Permission denied")
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    ssrn.save_model(_model(seed=1), d, overwrite=True)
    assert any("was left in place (Permission denied); the new model is saved" in r.getMessage()
               for r in caplog.records)
    loaded = ssrn.load_model(d).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in _model(seed=1).state_dict().items())


def test_a_save_between_the_loads_reads_gives_one_model_not_a_mix(tmp_path, monkeypatch):
    """load_model read model.json, then hashed the weights, then opened them again: a save (train --overwrite)
    replacing the directory in between gave one save's meta (mean/std, class names) with the other's weights,
    without an error (9 of 199 loads beside a saver). The weights are read once; model.json changed meanwhile is
    read again."""
    import os

    d = ssrn.save_model(_model(seed=0), tmp_path / "m", meta={"tag": "A"})
    real = os.open
    saves = []

    def save_first(file, *a, **k):  # (the weights are opened with os.open: a FIFO must not block the open)
        if Path(file).name == "weights.safetensors" and not saves:  # model.json was read: now the directory changes
            saves.append(ssrn.save_model(_model(seed=1, classes=7), d, meta={"tag": "B"}, overwrite=True))
        return real(file, *a, **k)

    monkeypatch.setattr(os, "open", save_first)
    m = ssrn.load_model(d)
    assert saves and m.meta == {"tag": "B"} and m.config.classes == 7  # (another network: its header is B's too)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in _model(seed=1, classes=7).state_dict().items())


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
    with pytest.raises(CheckpointError, match=r"proj exists and is not a model directory \(it holds files a model "
                                              r"directory does not \(data.txt, sub\)\)"):
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


# --------------------------------------------------------------------------------------------------
# hostile model directories (a service loading uploaded models): every problem a CheckpointError naming the file
# and the key, found before anything is allocated; never a bare traceback, a hang, or a silently cast weight

def _edited(tmp_path, edit_doc, model=None):
    """A saved model directory whose model.json ``edit_doc(doc)`` changed (weights_sha256 dropped: an uploader
    writes both files anyway)."""
    d = ssrn.save_model(model if model is not None else _model(), tmp_path / "m")
    doc = json.loads((d / "model.json").read_text())
    doc.pop("weights_sha256")
    edit_doc(doc)
    (d / "model.json").write_text(json.dumps(doc))
    return d


@pytest.fixture
def no_materialising(monkeypatch):
    """Fail if load_model builds the network with real tensors before the weights' header was compared: every
    refusal below must come from the config's bounds or the header, allocating nothing."""
    import ssrn.checkpoint as C

    real = C.SSRN

    def spy(config):
        assert torch.get_default_device().type == "meta", f"SSRN({config}) materialised before the weights check"
        return real(config)
    monkeypatch.setattr(C, "SSRN", spy)


HOSTILE_CONFIG = [
    ("reduce_width", 100_000), ("classes", 5_000_000), ("spectral_blocks", 20_000), ("spectral_blocks", 10**7),
    ("bands", 30.0), ("bands", "30"), ("bands", 200.5), ("classes", True), ("stem_stride", 0), ("dropout", "x"),
    ("dropout", 1.0), ("dropout", float("inf")), ("stem_width", -5), ("stem_width", 0), ("patch", 301),
    ("patch", 6), ("patch", 1), ("bn_eps", -1.0), ("bn_eps", 0.0), ("bn_eps", float("nan")), ("kernel", 4),
    ("kernel", 0), ("variant", ["ssrn"]), ("block_form", "keras"), ("conv_bias", 1), ("stage_norms", 10**6),
    ("spatial_blocks", -1), ("spatial_shortcut", None), ("spatial_width", 10**9), ("stem_stride", 31),
]


@pytest.mark.parametrize(("key", "value"), HOSTILE_CONFIG, ids=[f"{k}={str(v)[:12]}" for k, v in HOSTILE_CONFIG])
def test_refuses_a_hostile_config_value_without_allocating(tmp_path, no_materialising, key, value):
    """model.json's config was neither type-checked nor bounded and the network was built before the weights'
    shapes were compared: reduce_width=100000 allocated 1.2 GB, spectral_blocks=10**7 hung, stem_stride=0 /
    dropout='x' / stem_width=-5 gave bare tracebacks, patch=301 loaded (the engine then took 9.5 GB), bn_eps=-1
    loaded (NaN maps later). Now: a CheckpointError naming model.json, the key and what it must be, at once."""
    d = _edited(tmp_path, lambda doc: doc["config"].__setitem__(key, value))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"model\.json: invalid config\.{key}: .*(must be|classes 1\.\.255)"
                                               rf".*Fix config\.{key} in model\.json") as e:
        ssrn.load_model(d)
    assert time.perf_counter() - t0 < 1.0
    assert str(d / "model.json") in str(e.value)


def test_refuses_a_config_missing_a_required_field(tmp_path):
    d = _edited(tmp_path, lambda doc: doc["config"].pop("classes"))
    with pytest.raises(CheckpointError, match=r"invalid config\.classes: SSRNConfig needs classes"):
        ssrn.load_model(d)


def test_refuses_more_classes_than_a_class_map_holds(tmp_path):
    """Class 256 would wrap to 0 (nodata) in the uint8 map; hsi-engine train refuses such a scene too."""
    d = ssrn.save_model(SSRN(SSRNConfig(bands=20, classes=256)), tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"invalid config\.classes: 256 classes; class maps are uint8"):
        ssrn.load_model(d)


def test_refuses_a_config_its_weights_do_not_fit_before_building_it(tmp_path, no_materialising):
    """Within every bound but ~10 G parameters: refused from the weights file's header, nothing built."""
    big = dict(stem_width=4096, reduce_width=4096, spatial_width=4096, spectral_blocks=64, spatial_blocks=64)
    d = _edited(tmp_path, lambda doc: doc["config"].update(big))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"weights\.safetensors does not match the config in model\.json"):
        ssrn.load_model(d)
    assert time.perf_counter() - t0 < 2.0
    d = _edited(tmp_path / "b", lambda doc: doc["config"].update(reduce_width=4096))  # same names, other shapes
    with pytest.raises(CheckpointError, match=r"tensor 'reduce\.weight' has shape \(128, 24, 12, 1\).*needs "
                                               r"\(4096, 24, 12, 1\)"):
        ssrn.load_model(d)


def test_config_fields_are_type_checked_and_bounded():
    """SSRNConfig itself (the trainer's, the Keras importer's): a ValueError naming the field; numpy scalars are
    taken as the Python numbers they stand for."""
    import numpy as np

    from ssrn.config import InvalidConfig

    for key, value in HOSTILE_CONFIG:
        if key == "classes" and value == 5_000_000:
            value = 10**6
        with pytest.raises(InvalidConfig, match=rf"^{key}") as e:
            SSRNConfig(**{"bands": 30, "classes": 4, key: value})
        assert isinstance(e.value, ValueError) and e.value.field == key
    c = SSRNConfig(bands=np.int64(30), classes=np.int32(4), dropout=np.float32(0.25), conv_bias=np.bool_(True))
    assert (type(c.bands), type(c.classes), type(c.dropout), type(c.conv_bias)) == (int, int, float, bool)
    assert c == SSRNConfig(bands=30, classes=4, dropout=0.25, conv_bias=True)
    json.dumps(c.to_dict())


@pytest.mark.parametrize("config", [
    *[SSRNConfig.from_name(p) for p in ("indian_pines", "pavia_university", "ksc", "salinas")],
    SSRNConfig.from_name("indian_pines", variant="spc", patch=5),
    SSRNConfig.from_name("pavia_university", variant="spa", patch=11),
    SSRNConfig(bands=37, classes=5, block_form="seed", stage_norms=2, spatial_shortcut="projection",
               conv_bias=True, bn_eps=1e-3, spectral_blocks=1, spatial_blocks=1, dropout=0.0),
    SSRNConfig(bands=7, classes=255, patch=3, stem_stride=1, stem_width=1, reduce_width=1, spatial_width=1,
               spectral_blocks=0, spatial_blocks=0, kernel=7),
], ids=["indian_pines", "pavia_university", "ksc", "salinas", "spc", "spa", "seed", "smallest"])
def test_valid_configs_still_round_trip(tmp_path, config):
    torch.manual_seed(0)
    m = SSRN(config).eval()
    d = ssrn.save_model(m, tmp_path / "m")
    m2 = ssrn.load_model(d)
    assert m2.config == config
    loaded = m2.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in m.state_dict().items())


def test_the_shipped_model_still_loads():
    from hsi_engine.demo import SHIPPED_MODEL

    doc = json.loads((Path(SHIPPED_MODEL) / "model.json").read_text())
    assert ssrn.load_model(SHIPPED_MODEL).config.to_dict() == doc["config"]


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 100_000 + "]" * 100_000, r"model\.json is not a readable model\.json: its JSON nests too deeply"),
    ('{"format": "hsi-engine.ssrn", "format_version": ' + "9" * 5000 + "}",
     r"model\.json is not valid JSON \(ValueError: an integer of 5000 digits"),
    ('{"format": "hsi-engine.ssrn", "format_version": "2"}',
     r"model\.json: 'format_version' must be a whole number .* found '2' \(str\); fix it to 1"),
    ('{"format": "hsi-engine.ssrn", "format_version": 1.0}', r"'format_version' must be a whole number"),
    ('{"format": "hsi-engine.ssrn", "format_version": true}', r"'format_version' must be a whole number"),
], ids=["deep", "bigint", "version-str", "version-float", "version-bool"])
def test_refuses_hostile_json(tmp_path, text, message):
    """A RecursionError, the int-digits ValueError and a TypeError escaped as tracebacks."""
    d = ssrn.save_model(_model(), tmp_path / "m")
    (d / "model.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        ssrn.load_model(d)
    # save_model's "is this our model directory?" check reads the same file: refused (not ours), no traceback
    with pytest.raises(CheckpointError, match=r"exists and is not a model directory|existing model directory"):
        ssrn.save_model(_model(), d)


def test_refuses_an_oversized_model_json(tmp_path):
    """model.json is read whole: capped at 16 MiB (the shipped model's is ~60 KB)."""
    d = _edited(tmp_path, lambda doc: doc["meta"].__setitem__("padding", "x" * (16 << 20)))
    with pytest.raises(CheckpointError, match=r"model\.json is 16,777,\d+ bytes; a model\.json is at most "
                                               r"16,777,216"):
        ssrn.load_model(d)


def test_refuses_a_weights_sha256_that_is_not_a_string(tmp_path):
    d = ssrn.save_model(_model(), tmp_path / "m")
    doc = json.loads((d / "model.json").read_text())
    doc["weights_sha256"] = 5
    (d / "model.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"'weights_sha256' must be the hex sha256 .* found 5 \(int\)"):
        ssrn.load_model(d)


def _resave_weights(d, convert):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(d / "weights.safetensors"))
    save_file({k: convert(k, v) for k, v in tensors.items()}, str(d / "weights.safetensors"))


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.int32, torch.float8_e4m3fn,
                                   torch.complex64], ids=str)
def test_refuses_weights_that_are_not_floats(tmp_path, dtype):
    """bool / uint8 / int64 weights were cast silently (bool weights gave a one-class map); float8 raised
    NotImplementedError from isfinite."""
    d = _edited(tmp_path, lambda doc: None)
    _resave_weights(d, lambda k, v: v.to(dtype) if v.is_floating_point() else v)
    with pytest.raises(CheckpointError, match=r"weights\.safetensors: tensor '[a-z_.0-9]+' is stored as "
                                               r"[A-Z0-9_]+; expected one of float16, bfloat16, float32, float64"):
        ssrn.load_model(d)


def test_refuses_a_non_integer_non_float_batch_counter(tmp_path):
    d = _edited(tmp_path, lambda doc: None)
    _resave_weights(d, lambda k, v: v.to(torch.bool) if k.endswith("num_batches_tracked") else v)
    with pytest.raises(CheckpointError, match=r"num_batches_tracked' is stored as BOOL; expected one of .*int64"):
        ssrn.load_model(d)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_loads_weights_stored_as_other_floats(tmp_path, dtype):
    m = _model()
    d = _edited(tmp_path, lambda doc: None, model=m)
    _resave_weights(d, lambda k, v: v.to(dtype) if v.is_floating_point() else v.float())
    loaded = ssrn.load_model(d).state_dict()
    for k, v in m.state_dict().items():
        want = v.to(dtype).to(v.dtype) if v.is_floating_point() else v
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], want)


def test_a_safetensors_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """The pickle check read the first byte only: a safetensors file whose header length is 0x80 mod 256 (1 save
    in 256) starts with b"\\x80" too and was refused as a pickle."""
    import struct

    m = _model()
    d = _edited(tmp_path, lambda doc: None, model=m)
    raw = (d / "weights.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + n].rstrip()
    padded = header + b" " * ((0x80 - len(header)) % 256)  # offsets count from the data: unchanged
    (d / "weights.safetensors").write_bytes(struct.pack("<Q", len(padded)) + padded + raw[8 + n:])
    assert (d / "weights.safetensors").read_bytes()[:1] == b"\x80"
    loaded = ssrn.load_model(d).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in m.state_dict().items())
    torch.save(m.state_dict(), d / "weights.safetensors")  # a real pickle still is one
    with pytest.raises(CheckpointError, match="pickle"):
        ssrn.load_model(d)


def test_a_model_name_too_long_for_the_save_s_temporary_directories_is_refused_up_front(tmp_path):
    """A 247-byte --out passed the check and failed after the whole training, at the save's '.NAME.XXXXXXXX'."""
    with pytest.raises(CheckpointError, match=r"its name is 237 bytes.* choose a name of at most 236 bytes"):
        ssrn.checkpoint.check_model_target(tmp_path / ("m" * 237))
    target = tmp_path / ("m" * 236)
    ssrn.checkpoint.check_model_target(target)
    ssrn.save_model(_model(), target)
    ssrn.save_model(_model(), target, overwrite=True)  # the longest temporary name: '.NAME.hsi-save-XXXXXXXX'
    assert ssrn.load_model(target) is not None


def test_save_refuses_a_meta_that_load_would_refuse(tmp_path):
    """A meta no longer fitting the network (a cut std) was saved, over a working model with overwrite=True, as a
    directory load_model refused."""
    m = _model()
    m.meta = {"mean": [0.0] * 30, "std": [1.0] * 30}
    d = ssrn.save_model(m, tmp_path / "m")
    m.meta = {"mean": [0.0] * 30, "std": [1.0] * 29}
    with pytest.raises(CheckpointError, match=r"meta.std must be 30 numbers"):
        ssrn.save_model(m, d, overwrite=True)
    assert ssrn.load_model(d).meta["std"] == [1.0] * 30  # the working model is still there


def test_a_device_that_is_not_there_is_a_device_error(tmp_path):
    from ssrn.devices import DeviceError

    d = ssrn.save_model(_model(), tmp_path / "m")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees no CUDA device"):
            ssrn.load_model(d, map_location="cuda")
    with pytest.raises(DeviceError, match="is not a torch device name"):
        ssrn.load_model(d, map_location="foo")


@pytest.mark.parametrize("device", ["meta", torch.device("meta")])
def test_the_meta_device_is_refused_before_any_work(tmp_path, device):
    """load_model(map_location='meta') ended in torch's 'Tensor.item() cannot be called on meta tensors', and
    train --device meta in a traceback after loading the scene: meta holds shapes, not values."""
    from ssrn.devices import DeviceError
    from ssrn.train import TrainOptionError, run_training

    d = ssrn.save_model(_model(), tmp_path / "m")
    with pytest.raises(DeviceError, match=r"holds shapes, not values, .* expected cpu, cuda or cuda:N"):
        ssrn.load_model(d, map_location=device)
    with pytest.raises(TrainOptionError, match=r"holds shapes, not values"):
        run_training("indian_pines", out=tmp_path / "t", device=device, epochs=1)
    assert not (tmp_path / "t").exists()


def test_unreadable_weights_and_a_full_disk_are_checkpoint_errors(tmp_path, monkeypatch):
    """An unreadable weights file (another user's model) was a bare PermissionError; a full disk while saving was
    safetensors' SafetensorError (a traceback from train)."""
    from safetensors import SafetensorError

    from ssrn import checkpoint

    d = ssrn.save_model(_model(), tmp_path / "m")

    import os

    real = os.open

    def denied(file, *a, **k):
        if Path(file).name == "weights.safetensors":  # (root reads any file: the refusal is simulated)
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, *a, **k)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(CheckpointError, match=r"could not be read \(Permission denied\); check its permissions"):
        ssrn.load_model(d)
    monkeypatch.undo()

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(CheckpointError, match=r"cannot write the model into .*No space left on device"):
        ssrn.save_model(_model(), tmp_path / "n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    monkeypatch.undo()
    real_write = Path.write_text

    def full_json(self, *a, **k):  # the weights fit, model.json does not: a bare OSError without a file name
        if self.name == "model.json":
            raise OSError(28, "No space left on device")
        return real_write(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_json)
    with pytest.raises(CheckpointError, match=r"cannot write the model into .* \(No space left on device\); free"):
        ssrn.save_model(_model(), tmp_path / "n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("write", [lambda m, out: ssrn.save_model(m, out),
                                   lambda m, out: ssrn.import_keras_to_dir("seed.hdf5", out),
                                   lambda m, out: ssrn.run_training("indian_pines", out, epochs=1)])
@pytest.mark.parametrize("out", ["~/models/in", "~"])
def test_a_model_path_starting_with_a_tilde_is_refused_not_made_in_the_working_directory(tmp_path, monkeypatch,
                                                                                         write, out):
    """'~/models/in' made a directory named '~' in the working directory (Python does not expand it)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=rf"model directory '{out}' starts with '~', which Python does not "
                                              rf"expand .*pass os.path.expanduser\('{out}'\)"):
        write(_model(), out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overwrite", ["no", "False", 0, 1, None])
def test_overwrite_must_be_a_bool(tmp_path, overwrite):
    """overwrite='no' (truthy) replaced the model."""
    m = _model()
    ssrn.save_model(m, tmp_path / "m")
    before = (tmp_path / "m" / "model.json").read_bytes()
    with pytest.raises(ssrn.OptionError, match=rf"overwrite must be True or False; got \w+ {overwrite!r}"):
        ssrn.save_model(_model(seed=1), tmp_path / "m", overwrite=overwrite)
    assert (tmp_path / "m" / "model.json").read_bytes() == before
    import numpy as np

    ssrn.save_model(m, tmp_path / "m", overwrite=np.True_)  # numpy's bool is a bool
