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
        if ".m.old." in str(dst):
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


def test_a_killed_saves_temporary_is_named_and_a_training_run_removes_it(scene, tmp_path, caplog):
    """A run killed while saving into a pre-made empty --out left '.ks.XXXXXXXX' in it; every rerun, with
    --overwrite too, was refused as 'files a model directory does not (...): move those files out'."""
    out = tmp_path / "ks"
    out.mkdir()
    left = out / ".ks.a7ls2wzy"
    left.mkdir()
    C.save_model(_model(), tmp_path / "full")
    (tmp_path / "full" / "weights.safetensors").rename(left / "weights.safetensors")
    with pytest.raises(CheckpointError, match=r"ks holds \.ks\.a7ls2wzy: the temporary directory of a save into "
                                              r"it that was killed before it finished, or is still running; once "
                                              r"none runs, delete it"):
        ssrn.save_model(_model(), out)
    with caplog.at_level("INFO", logger="ssrn.train"):
        assert _train(scene, out, epochs=1)["status"] == "done"
    assert any("removed what a killed save into" in r.getMessage() and ".ks.a7ls2wzy" in r.getMessage()
               for r in caplog.records)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "weights.safetensors"]


def test_the_sweep_removes_only_a_saves_leftovers_and_puts_back_a_model_a_kill_left_aside(tmp_path):
    """Beside a new or swapped output: '.NAME.XXXXXXXX' (the new model) and '.NAME.old.XXXXXXXX' (the replaced
    one) were never removed; a kill between the swap's renames left nothing at the output."""
    old = C.save_model(_model(seed=0), tmp_path / ".m.old.abcd1234")
    new = C.save_model(_model(seed=1), tmp_path / ".m.q8x_2zzz")
    (tmp_path / ".m.umask123").mkdir()  # an empty temporary (killed before its weights were written)
    (tmp_path / ".m.keep1234").mkdir()
    (tmp_path / ".m.keep1234" / "notes.txt").write_text("mine")  # not a save's: kept
    (tmp_path / ".mine.abcd1234").mkdir()  # another output's
    swept = C.sweep_save_leftovers(tmp_path / "m")
    assert sorted(swept) == sorted([".m.old.abcd1234 (put back as m)", new.name, ".m.umask123"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.keep1234", ".mine.abcd1234", "m"]
    loaded = ssrn.load_model(tmp_path / "m").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in _model(seed=0).state_dict().items())
    assert not old.exists()
    # once the output is there, a replaced model left beside it is removed, not put back
    C.save_model(_model(seed=2), tmp_path / ".m.old.zzzz9999")
    assert C.sweep_save_leftovers(tmp_path / "m") == [".m.old.zzzz9999"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.keep1234", ".mine.abcd1234", "m"]


def test_a_directory_of_weights_without_model_json_is_said_to_be_so(tmp_path):
    d = tmp_path / "ki"
    d.mkdir()
    (d / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"ki exists and is not a model directory \(it holds "
                                              r"weights\.safetensors but no model\.json\)"):
        ssrn.save_model(_model(), d, overwrite=True)
