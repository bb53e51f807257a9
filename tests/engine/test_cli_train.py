"""``hsi-engine train`` and ``import-keras`` on user mistakes: exit 2 with one ``hsi-engine <cmd>: error:`` line
(never a traceback), checked before any data is read or training is spent, and an existing ``--out`` that is not
a model directory never touched; ``--overwrite`` replaces only a model directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from hsi_engine.cli import main

IN_KERAS = "Indian_best_RES_3D_SS4_10_1.hdf5"
FAST = ["--patch", "5", "--variant", "spc", "--epochs", "1", "--device", "cpu"]  # a run of a second or so


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 20-band 16 x 16 scene with three classes, as ``train --dataset PATH.npz`` reads it."""
    rng = np.random.default_rng(0)
    p = tmp_path_factory.mktemp("tiny") / "tiny.npz"
    np.savez(p, cube=rng.normal(size=(20, 16, 16)).astype(np.float32), labels=rng.integers(0, 4, (16, 16)))
    return p


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if the command gets as far as reading the scene."""
    import ssrn.train as T

    def refuse(*a, **k):
        raise AssertionError("the data was read before a bad argument was refused")
    monkeypatch.setattr(T, "load_dataset", refuse)


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _one_error_line(err: str, cmd: str = "train") -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if ln.startswith(f"hsi-engine {cmd}: error: ")]
    assert len(errors) == 1, err
    return errors[0]


# --------------------------------------------------------------------------------------------------
# bug 1: --out is never wiped; --overwrite replaces a model directory only

@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_train_never_wipes_an_existing_directory(tmp_path, tiny, capsys, overwrite):
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    (proj / "data.txt").write_text("important\n")
    before = _tree(tmp_path)
    assert main(["train", "--dataset", str(tiny), "--out", str(proj), *FAST, *overwrite]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "proj exists and is not a model directory (it holds files a model directory does not (data.txt, " \
           "sub))" in line
    assert _tree(tmp_path) == before


def test_train_replaces_its_model_only_with_overwrite(tmp_path, tiny, capsys):
    out = tmp_path / "m"
    assert main(["train", "--dataset", str(tiny), "--out", str(out), *FAST]) == 0
    first = _tree(out)
    assert main(["train", "--dataset", str(tiny), "--out", str(out), *FAST, "--seed", "1"]) == 2
    assert "is an existing model directory; pass --overwrite" in _one_error_line(capsys.readouterr().err)
    assert _tree(out) == first
    assert main(["train", "--dataset", str(tiny), "--out", str(out), *FAST, "--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "model.json").read_text())["meta"]["report"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_train_never_replaces_the_shipped_model(tmp_path, tiny, capsys):
    """``--overwrite`` onto the package's own model replaced it, and the demo then failed; a link to it is a link."""
    from hsi_engine.demo import SHIPPED_MODEL

    before = _tree(SHIPPED_MODEL)
    via = tmp_path / "via"
    via.symlink_to(SHIPPED_MODEL.parent)
    assert main(["train", "--dataset", str(tiny), "--out", str(via / SHIPPED_MODEL.name), *FAST, "--overwrite"]) == 2
    assert "is the model hsi-engine ships" in _one_error_line(capsys.readouterr().err)
    assert _tree(SHIPPED_MODEL) == before
    (tmp_path / "link").symlink_to(SHIPPED_MODEL)
    assert main(["train", "--dataset", str(tiny), "--out", str(tmp_path / "link"), *FAST, "--overwrite"]) == 0
    assert _tree(SHIPPED_MODEL) == before and not (tmp_path / "link").is_symlink()


@pytest.mark.parametrize("cmd", ["train", "import-keras"])
def test_a_copy_of_the_shipped_model_is_refused_by_its_marker_before_any_work(tmp_path, tiny, capsys, no_data, cmd):
    """The shipped model's directory carries ssrn.checkpoint.SHIPPED_MARKER, so ssrn refuses it (and its copies)
    without hsi_engine's path: import-keras --overwrite had replaced it. The fix said is a new --out."""
    import shutil

    from hsi_engine.demo import SHIPPED_MODEL

    copy = tmp_path / "copy"
    shutil.copytree(SHIPPED_MODEL, copy)
    before = _tree(copy)
    args = ({"train": ["train", "--dataset", str(tiny), *FAST],
             "import-keras": ["import-keras", str(tmp_path / "never_read.hdf5")]}[cmd] + ["--out", str(copy)])
    assert main([*args, "--overwrite"]) == 2
    line = _one_error_line(capsys.readouterr().err, cmd)
    assert "is the model hsi-engine ships" in line and "write the new model to a new directory (a new --out)" in line
    assert _tree(copy) == before


def test_train_fills_an_empty_directory(tmp_path, tiny):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["train", "--dataset", str(tiny), "--out", str(out), *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "weights.safetensors"]


def test_import_keras_never_wipes_and_overwrites_a_model_only_when_asked(seed_ssrn_dir, tmp_path, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "data.txt").write_text("important\n")
    keras = str(seed_ssrn_dir / IN_KERAS)
    assert main(["import-keras", keras, "--out", str(proj), "--overwrite"]) == 2
    assert "not a model directory" in _one_error_line(capsys.readouterr().err, "import-keras")
    assert (proj / "data.txt").read_text() == "important\n" and sorted(p.name for p in proj.iterdir()) == ["data.txt"]
    out = tmp_path / "m"
    assert main(["import-keras", keras, "--out", str(out)]) == 0
    assert main(["import-keras", keras, "--out", str(out)]) == 2
    assert "pass --overwrite" in _one_error_line(capsys.readouterr().err, "import-keras")
    assert main(["import-keras", keras, "--out", str(out), "--overwrite"]) == 0


# --------------------------------------------------------------------------------------------------
# bug 2: a .mat scene given by path

def test_train_on_a_mat_path(tmp_path, capsys):
    rng = np.random.default_rng(1)
    scipy.io.savemat(tmp_path / "ip.mat", {"indian_pines_corrected": rng.normal(size=(16, 16, 20))})
    scipy.io.savemat(tmp_path / "ip_gt.mat", {"indian_pines_gt": rng.integers(0, 4, (16, 16)).astype(np.uint8)})
    out = tmp_path / "x"
    assert main(["train", "--dataset", str(tmp_path / "ip.mat"), "--out", str(out), *FAST]) == 0, \
        capsys.readouterr().err
    assert json.loads((out / "model.json").read_text())["config"]["classes"] == 3


# --------------------------------------------------------------------------------------------------
# bug 3: --out checked before the data is read

def test_out_is_checked_before_training(tmp_path, no_data, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "afile" / "sub")]) == 2
    assert "afile is a file, not a directory" in _one_error_line(capsys.readouterr().err)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "indian_pines", "--out", "."]) == 2
    assert f"error: . ({tmp_path.resolve()}) exists and is not a model directory (it holds files a model " \
           "directory does not (afile))" in \
        _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# --------------------------------------------------------------------------------------------------
# bug 4: degenerate values refused by argparse, naming the bound

@pytest.mark.parametrize("option, value, bound", [
    ("--epochs", "0", "expected an integer >= 1, got 0"),
    ("--epochs", "-3", "expected an integer >= 1, got -3"),
    ("--batch-size", "1", "expected an integer >= 2"),
    ("--batch-size", "-1", "expected an integer >= 2"),
    ("--per-class", "0", "expected an integer >= 1"),
    ("--per-class", "-2", "expected an integer >= 1"),
    ("--train-fraction", "1.5", "expected a fraction in (0, 1) (0 and 1 excluded), got 1.5"),
    ("--train-fraction", "0", "expected a fraction in (0, 1)"),
    ("--val-fraction", "-0.1", "expected a fraction in [0, 1) (1 excluded), got -0.1"),
    ("--val-fraction", "1", "expected a fraction in [0, 1)"),
    ("--lr", "-1", "expected a finite number > 0, got -1"),
    ("--lr", "0", "expected a finite number > 0"),
    ("--lr", "nan", "expected a finite number > 0"),
    ("--patience", "0", "expected an integer >= 1"),
    ("--patience", "-1", "expected an integer >= 1"),
    ("--max-minutes", "0", "expected a finite number > 0"),
    ("--max-minutes", "-1", "expected a finite number > 0"),
])
def test_degenerate_values_are_usage_errors(tmp_path, no_data, capsys, option, value, bound):
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "m"), option, value])
    assert e.value.code == 2
    assert f"argument {option}: {bound}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_no_validation_set_is_allowed():
    """--val-fraction 0 (no validation set: the trainer then watches the training loss) is accepted."""
    from hsi_engine.cli import build_parser

    args = build_parser().parse_args(["train", "--dataset", "indian_pines", "--out", "m", "--val-fraction", "0"])
    assert args.val_fraction == 0.0


def test_patch_takes_every_odd_side_the_api_takes(tmp_path, no_data, capsys):
    """--patch offered 5, 7, 9 and 11 only, where Python trains (and the CLI classifies) any odd side 3..31."""
    from hsi_engine.cli import build_parser

    for side in (3, 13, 31):
        assert build_parser().parse_args(["train", "--dataset", "x", "--out", "m", "--patch", str(side)]).patch == side
    assert main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "m"), "--patch", "4"]) == 2
    assert "patch must be an odd whole number 3..31" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_fractions_must_leave_a_test_set(tmp_path, no_data, capsys):
    assert main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "m"), "--train-fraction", "0.95",
                 "--val-fraction", "0.1"]) == 2
    assert "train fraction 0.95 + validation fraction 0.1 = 1.05 leaves no test pixels; expected a sum < 1" in \
        _one_error_line(capsys.readouterr().err)
    assert main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "m"), "--train-fraction", "0.95"]) == 2
    assert "(the indian_pines protocol's default)" in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# bug 5: options that cannot both apply

def test_per_class_with_blocks_or_train_fraction_is_refused(tmp_path, no_data, capsys):
    assert main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "m"), "--split", "blocks",
                 "--per-class", "5"]) == 2
    assert "--per-class applies to the random split only" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "m"), "--per-class", "5",
              "--train-fraction", "0.2"])
    assert e.value.code == 2
    assert "argument --train-fraction: not allowed with argument --per-class" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# bug 6: one-line errors, not tracebacks

def test_device_is_checked_before_the_data(tmp_path, no_data, capsys, monkeypatch):
    import torch

    assert main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "m"), "--device", "bogus"]) == 2
    assert "device 'bogus' is not a torch device name; expected cpu, cuda or cuda:N" in \
        _one_error_line(capsys.readouterr().err)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "m"), "--device", "cuda"]) == 2
    assert "sees no CUDA device: use cpu (--device cpu" in _one_error_line(capsys.readouterr().err)
    # a CUDA build whose GPUs CUDA_VISIBLE_DEVICES hides: the variable is named, not "install a CUDA build"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    assert main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "m"), "--device", "cuda"]) == 2
    assert "sees no CUDA device (CUDA_VISIBLE_DEVICES='' limits what it sees): unset or widen CUDA_VISIBLE_DEVICES" \
        in _one_error_line(capsys.readouterr().err)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # (a job's inherited list on a machine without a GPU: not blamed)
    assert main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "m"), "--device", "cuda"]) == 2
    assert "limits what it sees): use cpu (--device cpu" in _one_error_line(capsys.readouterr().err)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "m"), "--device", "cuda:2"]) == 2
    assert "this process sees 2 CUDA device(s): cuda:0 to cuda:1" in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_bad_npz_scenes_are_one_line_errors(tmp_path, capsys):
    nolab = tmp_path / "nolab.npz"
    np.savez(nolab, cube=np.ones((20, 8, 8), np.float32), labels=np.zeros((8, 8), int))
    notzip = tmp_path / "notzip.npz"
    notzip.write_text("hello")
    assert main(["train", "--dataset", str(nolab), "--out", str(tmp_path / "a"), *FAST]) == 2
    assert "the label map has no labelled pixels (all 0)" in _one_error_line(capsys.readouterr().err)
    assert main(["train", "--dataset", str(notzip), "--out", str(tmp_path / "b"), *FAST]) == 2
    assert "is not an .npz archive (a zip of .npy arrays" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nolab.npz", "notzip.npz"]


@pytest.mark.parametrize("cmd", ["train", "import-keras"])
def test_dataset_typo_is_a_one_line_error(seed_ssrn_dir, tmp_path, capsys, cmd):
    args = (["train", *FAST] if cmd == "train" else ["import-keras", str(seed_ssrn_dir / IN_KERAS)])
    assert main([*args, "--dataset", "indian_pns", "--out", str(tmp_path / "m")]) == 2
    line = _one_error_line(capsys.readouterr().err, cmd)
    assert line == (f"hsi-engine {cmd}: error: unknown dataset 'indian_pns'; known: ['indian_pines', 'ksc', "
                    "'pavia_university', 'salinas'] (or pass a path to a .mat/.h5/.npz scene)")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# bug 7: --data-dir, --amp, import-keras without --dataset

def test_missing_data_dir_is_an_error_not_the_shipped_copy(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    assert main(["train", "--dataset", "indian_pines", "--data-dir", str(missing), "--out", str(tmp_path / "m"),
                 *FAST]) == 2
    assert f"data directory {missing} does not exist" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_amp_on_cpu_is_recorded_as_not_used(tmp_path, tiny, caplog):
    out = tmp_path / "m"
    assert main(["train", "--dataset", str(tiny), "--out", str(out), *FAST, "--amp"]) == 0
    assert json.loads((out / "model.json").read_text())["meta"]["report"]["amp"] is False
    assert "--amp (bfloat16 autocast) applies on CUDA only: training on cpu in float32" in caplog.text


def test_import_keras_without_dataset_warns_about_normalisation(seed_ssrn_dir, tmp_path, caplog):
    out = tmp_path / "m"
    assert main(["import-keras", str(seed_ssrn_dir / IN_KERAS), "--out", str(out)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "ssrn.keras"]
    assert len(warnings) == 1 and "has no per-band mean/std" in warnings[0] and "--dataset" in warnings[0]
    assert "mean" not in json.loads((out / "model.json").read_text())["meta"]


# --------------------------------------------------------------------------------------------------
# damaged scene and label files: one error line naming the file and the damage, never a traceback

def _damaged(tmp_path: Path, case: str) -> list[str]:
    """``train`` arguments for a damaged input (``case``)."""
    import zipfile

    import h5py

    rng = np.random.default_rng(0)
    cube, labels = rng.normal(size=(20, 16, 16)).astype(np.float32), rng.integers(1, 4, (16, 16)).astype(np.uint8)
    p = tmp_path / "s.h5"
    if case in ("truncated .h5", "corrupt chunk .h5", "string labels .h5"):
        with h5py.File(p, "w") as f:
            f.create_dataset("cube", data=cube, chunks=(20, 8, 8), compression="gzip")
            f["labels"] = np.full((16, 16), b"a") if case == "string labels .h5" else labels
            chunk = f["cube"].id.get_chunk_info(1)
        b = bytearray(p.read_bytes())
        if case == "truncated .h5":
            b = b[:len(b) // 2]
        elif case == "corrupt chunk .h5":
            b[chunk.byte_offset + 10:chunk.byte_offset + 74] = b"\xff" * 64
        p.write_bytes(bytes(b))
        return ["--dataset", str(p)]
    if case == "corrupt .npz":
        p = tmp_path / "s.npz"
        np.savez_compressed(p, cube=cube, labels=labels)
        with zipfile.ZipFile(p) as z:
            info = z.getinfo("cube.npy")
        b = bytearray(p.read_bytes())
        at = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200  # inside its deflate stream
        b[at:at + 64] = b"\xff" * 64
        p.write_bytes(bytes(b))
        return ["--dataset", str(p)]
    np.save(tmp_path / "scene.npy", np.moveaxis(cube, 0, -1))
    lab = tmp_path / "labels.npy"
    if case == "object .npy labels":
        np.save(lab, labels.astype(object), allow_pickle=True)
    else:
        lab.write_bytes(rng.bytes(3000))
    return ["--dataset", str(tmp_path / "scene.npy"), "--labels", str(lab)]


DAMAGED_SAYS = {
    "truncated .h5": r"s\.h5 is truncated or damaged: HDF5 cannot read it \(OSError: .*\); fetch it again",
    "corrupt chunk .h5": r"s\.h5 is truncated or damaged: HDF5 cannot read it \(OSError: .*\); fetch it again",
    "corrupt .npz": r"s\.npz is truncated or damaged: an array in it cannot be read \(error: Error -3 .*\); fetch",
    "string labels .h5": r"s\.h5: labels must be integer class ids \(0 = unlabelled, 1..K\); found strings",
    "object .npy labels": r"labels\.npy holds an object array \(dtype object: pickled Python objects\), refused",
    "random .npy labels": r"labels\.npy is not a \.npy file: it does not begin with the \.npy signature; expected "
                          r"a 2-D array of integer class ids: fetch it again",
}


@pytest.mark.parametrize("case", list(DAMAGED_SAYS))
def test_damaged_inputs_are_one_line_errors(tmp_path, capsys, case):
    """A truncated .h5 or a corrupt gzip chunk (OSError), a corrupt .npz member (zlib.error), string labels
    (TypeError from isfinite) and an object .npy as --labels (numpy's ValueError) were tracebacks, exit 1."""
    args = _damaged(tmp_path, case)
    assert main(["train", *args, "--out", str(tmp_path / "m"), *FAST]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert re.search(DAMAGED_SAYS[case], line) and "pickle.load" not in line, line
    assert not (tmp_path / "m").exists()
