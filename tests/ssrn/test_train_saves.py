"""Where a training run's saves land: an output that must stay in place (a mount point, an empty directory in a
read-only parent), the lock of an output whose parents are new, a save racing another, and what killed saves
leave behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import ssrn
import ssrn.checkpoint as C
from ssrn import CheckpointError, SSRN, SSRNConfig
from ssrn.train import run_training

TINY = dict(stem_width=4, reduce_width=4, spatial_width=4, spectral_blocks=1, spatial_blocks=1, kernel=3)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 12 x 12, 8-band, 2-class scene that a tiny network trains on in a fraction of a second."""
    rng = np.random.default_rng(0)
    labels = (np.arange(12 * 12).reshape(12, 12) % 2 + 1).astype(np.uint8)
    cube = rng.normal(size=(8, 12, 12)).astype(np.float32) + labels * 0.3
    p = tmp_path_factory.mktemp("scene") / "s.npz"
    np.savez(p, cube=cube, labels=labels)
    return str(p)


def _train(scene, out, **kw):
    return run_training(scene, out, **{**dict(epochs=2, batch_size=16, device="cpu", patch=3, variant="spc",
                                              save_progress_every_s=0.0, config_overrides=TINY), **kw})


def _model(seed=0):
    torch.manual_seed(seed)
    return SSRN(SSRNConfig(bands=8, classes=2, patch=3, **TINY)).eval()


def _refuse_moving(monkeypatch, directory: Path, err: int) -> list:
    """Make renaming ``directory`` itself fail with ``err`` (a mount point: EBUSY; a read-only parent: EACCES)."""
    real, tried = os.rename, []

    def rename(src, dst, *a, **k):
        if os.path.abspath(src) == str(directory):
            tried.append(dst)
            raise OSError(err, os.strerror(err))
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "rename", rename)
    return tried


@pytest.mark.parametrize("case", ["mount point", "read-only parent"])
def test_a_run_into_an_output_that_must_stay_saves_every_time_in_place(scene, tmp_path, monkeypatch, caplog, case):
    """Progress saves after the first one swapped the directory (a rename of it, and a writable parent): into a
    bind mount or an empty directory in a read-only parent, each failed, and so did the final save (the training
    lost). Every save now replaces the files inside the directory that was there."""
    out = tmp_path / "out"
    out.mkdir()
    inode = out.stat().st_ino
    tried = _refuse_moving(monkeypatch, out, errno.EBUSY if case == "mount point" else errno.EACCES)
    if case == "read-only parent":  # (as root chmod restricts nothing: the test below runs it for real)
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: (
            False if os.path.abspath(p) == str(tmp_path) and mode & os.W_OK else real_access(p, mode, *a, **k)))
    with caplog.at_level("INFO", logger="ssrn.train"):
        rep = _train(scene, out)
    assert rep["status"] == "done" and ssrn.load_model(out).meta["report"]["status"] == "done"
    assert sum("saved progress" in r.getMessage() for r in caplog.records) == 2, caplog.text
    assert not any(r.levelname == "WARNING" and "could not save" in r.getMessage() for r in caplog.records)
    assert tried == [] and out.stat().st_ino == inode
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "weights.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_an_empty_output_in_a_read_only_parent_gets_every_save(scene, tmp_path):
    out = tmp_path / "ro" / "out"
    out.mkdir(parents=True)
    out.parent.chmod(0o555)
    try:
        assert _train(scene, out)["status"] == "done"
    finally:
        out.parent.chmod(0o755)
    assert ssrn.load_model(out).meta["report"]["status"] == "done"


def test_overwrite_replaces_a_model_on_a_mount_point_inside_it(tmp_path, monkeypatch):
    """save_model(overwrite=True) swaps the directory; a mount point cannot be renamed (EBUSY: the traceback after
    the training): its files are replaced inside it."""
    d = ssrn.save_model(_model(seed=0), tmp_path / "m")
    inode = d.stat().st_ino
    _refuse_moving(monkeypatch, d.resolve(), errno.EBUSY)
    ssrn.save_model(_model(seed=1), d, overwrite=True)
    loaded = ssrn.load_model(d).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in _model(seed=1).state_dict().items())
    assert d.stat().st_ino == inode and sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in d.iterdir()) == ["model.json", "weights.safetensors"]


def test_an_interrupt_between_the_swaps_renames_puts_the_old_model_back(tmp_path, monkeypatch):
    """A Ctrl-C right after the old model was moved aside left nothing at the output, the model hidden under a
    temporary name."""
    d = ssrn.save_model(_model(seed=0), tmp_path / "m")
    real = os.rename

    def rename(src, dst, *a, **k):
        real(src, dst, *a, **k)
        if ".m.hsi-old-" in str(dst):
            raise KeyboardInterrupt
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        ssrn.save_model(_model(seed=1), d, overwrite=True)
    monkeypatch.undo()
    loaded = ssrn.load_model(d).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in _model(seed=0).state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_run_whose_output_directories_are_new_holds_the_lock_and_leaves_none_when_it_fails(scene, tmp_path):
    """No lock was taken where --out's parent did not exist yet: a second run into it was not refused. The parent
    is made once the options are checked, then locked; a failed run removes what it made."""
    from ssrn.lock import lock_held

    out = tmp_path / "new" / "deeper" / "m"
    seen = []

    def load():
        seen.append(lock_held(out))
        raise RuntimeError("stop here")
    with pytest.raises(RuntimeError, match="stop here"):
        run_training(load, out, epochs=1)
    assert seen == [True] and list(tmp_path.iterdir()) == []
    with pytest.raises(ssrn.train.TrainOptionError):  # a bad option makes nothing
        run_training(load, out, epochs=0)
    assert list(tmp_path.iterdir()) == [] and seen == [True]


@pytest.mark.parametrize("premade", [False, True])
def test_a_save_without_overwrite_never_replaces_a_model_written_meanwhile(tmp_path, monkeypatch, premade):
    """save_model(overwrite=False) chose its way from the target as it was after the check: a model another save
    wrote there meanwhile was swapped away silently. It is refused, and left as that save wrote it."""
    target = tmp_path / "race"
    if premade:
        target.mkdir()
    real = C.save_file

    def save_file(*a, **k):
        real(*a, **k)
        monkeypatch.setattr(C, "save_file", real)
        other = ssrn.save_model(_model(seed=1), tmp_path / "other", meta={"who": "other"})
        target.mkdir(exist_ok=True)
        for f in list(other.iterdir()):  # the other save, begun as this one (its check passed too), finishes now
            f.rename(target / f.name)
        other.rmdir()
    monkeypatch.setattr(C, "save_file", save_file)
    with pytest.raises(CheckpointError, match=r"race was written by another save while this one ran .* pass "
                                              r"--overwrite"):
        ssrn.save_model(_model(seed=0), target, meta={"who": "me"})
    assert ssrn.load_model(target).meta == {"who": "other"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race"]
    assert sorted(p.name for p in target.iterdir()) == ["model.json", "weights.safetensors"]


def _killed_mid_move(out: Path, weights_seed: int, json_seed: int, tmp_name: str = ".ks.hsi-save-a7ls2wzy") -> Path:
    """Leave ``out`` as a save killed inside _move_into_empty or between _replace_files' renames leaves it: the
    weights of model ``weights_seed`` in it, the model.json of model ``json_seed`` still in its temporary."""
    out.mkdir(exist_ok=True)
    tmp = out / tmp_name
    tmp.mkdir()
    full = {seed: C.save_model(_model(seed=seed), out.with_name(f"full{seed}")) for seed in {weights_seed, json_seed}}
    (full[weights_seed] / "weights.safetensors").rename(out / "weights.safetensors")  # moved first ...
    (full[json_seed] / "model.json").rename(tmp / "model.json")  # ... killed before model.json followed
    return tmp


def test_a_killed_saves_temporary_is_named_and_a_training_run_removes_it(scene, tmp_path, caplog):
    """A run killed while saving into a pre-made empty --out left its temporary in it; every rerun, with
    --overwrite too, was refused as 'files a model directory does not (...): move those files out'."""
    out = tmp_path / "ks"
    out.mkdir()
    left = out / ".ks.hsi-save-a7ls2wzy"
    left.mkdir()
    C.save_model(_model(), tmp_path / "full")
    (tmp_path / "full" / "weights.safetensors").rename(left / "weights.safetensors")
    with pytest.raises(CheckpointError, match=r"ks holds \.ks\.hsi-save-a7ls2wzy: the temporary directory of a "
                                              r"save into it that was killed before it finished, or is still "
                                              r"running; once none runs, delete it"):
        ssrn.save_model(_model(), out)
    with caplog.at_level("INFO", logger="ssrn.train"):
        assert _train(scene, out, epochs=1)["status"] == "done"
    assert any("removed what a killed save into" in r.getMessage() and ".ks.hsi-save-a7ls2wzy" in r.getMessage()
               for r in caplog.records)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "weights.safetensors"]


def test_a_save_names_its_temporaries_with_a_tag_no_backup_has(tmp_path, monkeypatch):
    """Every temporary save_model makes (new model beside or inside, the replaced one) carries the hsi- tag that
    the sweep goes by."""
    import tempfile

    made, real = [], tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(k["prefix"]) or real(*a, **k))
    d = ssrn.save_model(_model(seed=0), tmp_path / "m")
    ssrn.save_model(_model(seed=1), d, overwrite=True)
    ssrn.save_model(_model(seed=2), d, overwrite=True, in_place=True)
    (tmp_path / "e").mkdir()
    ssrn.save_model(_model(), tmp_path / "e")
    assert made == [".m.hsi-save-", ".m.hsi-save-", ".m.hsi-old-", ".m.hsi-save-", ".e.hsi-save-"]


def test_the_sweep_removes_only_a_saves_leftovers_and_puts_back_a_model_a_kill_left_aside(tmp_path, caplog):
    """Beside a new or swapped output: '.NAME.hsi-save-XXXXXXXX' (the new model) and '.NAME.hsi-old-XXXXXXXX' (the
    replaced one) were never removed; a kill between the swap's renames left nothing at the output. Putting the
    model back changes what is at the output: a warning says so."""
    old = C.save_model(_model(seed=0), tmp_path / ".m.hsi-old-abcd1234")
    new = C.save_model(_model(seed=1), tmp_path / ".m.hsi-save-q8x_2zzz")
    (tmp_path / ".m.hsi-save-umask123").mkdir()  # an empty temporary (killed before its weights were written)
    (tmp_path / ".m.hsi-save-keep1234").mkdir()
    (tmp_path / ".m.hsi-save-keep1234" / "notes.txt").write_text("mine")  # not a save's: kept
    (tmp_path / ".mine.hsi-save-abcd1234").mkdir()  # another output's
    with caplog.at_level("INFO", logger="ssrn.checkpoint"):
        swept = C.sweep_save_leftovers(tmp_path / "m")
    assert sorted(swept) == sorted([new.name, ".m.hsi-save-umask123"])
    assert any(r.levelname == "WARNING" and "was missing" in r.getMessage() and "put back" in r.getMessage()
               and ".m.hsi-old-abcd1234" in r.getMessage() for r in caplog.records), caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.hsi-save-keep1234", ".mine.hsi-save-abcd1234", "m"]
    loaded = ssrn.load_model(tmp_path / "m").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in _model(seed=0).state_dict().items())
    assert not old.exists()
    # once the output is there, a replaced model left beside it is removed, not put back
    C.save_model(_model(seed=2), tmp_path / ".m.hsi-old-zzzz9999")
    assert C.sweep_save_leftovers(tmp_path / "m") == [".m.hsi-old-zzzz9999"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.hsi-save-keep1234", ".mine.hsi-save-abcd1234", "m"]


@pytest.mark.parametrize("target_there", [True, False])
def test_the_sweep_never_takes_a_backup_named_like_an_earlier_releases_temporary(tmp_path, target_there):
    """The sweep took any '.NAME.' + 8 characters: a hidden dated backup '.m.20240101' (a copy of the model) was
    deleted, and with the output missing, a '.m.old.20240101' was renamed into it."""
    if target_there:
        C.save_model(_model(seed=0), tmp_path / "m")
    for name in (".m.20240101", ".m.old.20240101", ".m.a7ls2wzy"):
        C.save_model(_model(seed=1), tmp_path / name)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert C.sweep_save_leftovers(tmp_path / "m") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_training_run_leaves_a_hidden_backup_beside_its_output(scene, tmp_path):
    out = tmp_path / "ip"
    _train(scene, out, epochs=1)
    backup = tmp_path / ".ip.20240101"
    C.save_model(ssrn.load_model(out), backup)
    _train(scene, out, epochs=1, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ip.20240101", "ip"]
    assert ssrn.load_model(backup) is not None


def test_an_earlier_releases_temporary_in_the_output_is_named_but_not_removed(scene, tmp_path):
    """Temporaries of earlier releases ('.NAME.XXXXXXXX') are no longer swept (a backup may be named so): the
    refusal names them, and says to delete them only if they are that."""
    out = tmp_path / "ks"
    out.mkdir()
    (out / ".ks.a7ls2wzy").mkdir()
    with pytest.raises(CheckpointError, match=r"ks holds \.ks\.a7ls2wzy, named like the temporary directory an "
                                              r"earlier hsi-engine's save left .* if it is that, delete it .*else "
                                              r"move it out; then rerun"):
        _train(scene, out, epochs=1, overwrite=True)
    assert (out / ".ks.a7ls2wzy").is_dir()


@pytest.mark.parametrize("case", ["into an empty output", "between the replacing renames"])
def test_a_save_killed_between_moving_its_files_in_is_finished_by_the_sweep(tmp_path, caplog, case):
    """A kill inside _move_into_empty (weights moved in, model.json still in the temporary) or between
    _replace_files' renames (new weights beside the old model.json): the sweep deleted the temporary holding the
    model.json that completes the model, and every rerun was refused ('weights.safetensors but no model.json') or
    the model failed its checksum. Where the weights are the ones that model.json records, the move is finished."""
    out = tmp_path / "ks"
    if case == "between the replacing renames":
        C.save_model(_model(seed=0), out)
    _killed_mid_move(out, weights_seed=1, json_seed=1)
    with caplog.at_level("WARNING", logger="ssrn.checkpoint"):
        assert C.sweep_save_leftovers(out) == []
    assert any("finished a save into" in r.getMessage() for r in caplog.records), caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "weights.safetensors"]
    loaded = ssrn.load_model(out).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in _model(seed=1).state_dict().items())


def test_a_killed_saves_model_json_that_does_not_match_the_weights_is_left_and_said(tmp_path, caplog):
    out = tmp_path / "ks"
    tmp = _killed_mid_move(out, weights_seed=0, json_seed=1)
    with caplog.at_level("WARNING", logger="ssrn.checkpoint"):
        assert C.sweep_save_leftovers(out) == []
    assert any("is not the weights it records" in r.getMessage() and "left as it is" in r.getMessage()
               for r in caplog.records), caplog.text
    assert sorted(p.name for p in tmp.iterdir()) == ["model.json"]
    assert sorted(p.name for p in out.iterdir()) == [tmp.name, "weights.safetensors"]
    with pytest.raises(CheckpointError, match=r"the temporary directory of a save into it that was killed"):
        C.check_model_target(out, overwrite=True)


def test_is_progress_save():
    assert C.is_progress_save({"report": {"status": "training", "epochs_run": 3}})
    assert not C.is_progress_save({"report": {"status": "done"}})
    assert not C.is_progress_save({"report": "training"}) and not C.is_progress_save(None)
    assert not C.is_progress_save({})


def test_a_directory_of_weights_without_model_json_is_said_to_be_so(tmp_path):
    d = tmp_path / "ki"
    d.mkdir()
    (d / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"ki exists and is not a model directory \(it holds "
                                              r"weights\.safetensors but no model\.json\)"):
        ssrn.save_model(_model(), d, overwrite=True)
