"""A model directory from someone else, and model targets that are links: every refusal a CheckpointError saying
what was expected and what was found (never a RecursionError, OverflowError or MemoryError traceback), a weights
file refused by its size before it is read, no bytes of another file shown, and a link at --out replaced, never
written through."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ssrn
from ssrn import SSRN, CheckpointError, SSRNConfig
from ssrn.checkpoint import MAX_WEIGHTS_HEADER_BYTES, check_model_target


def _model(seed=0, classes=4):
    torch.manual_seed(seed)
    return SSRN(SSRNConfig(bands=30, classes=classes, patch=5)).eval()


def _saved(tmp_path, name="m", seed=0) -> Path:
    """A saved model directory without weights_sha256 (a hostile uploader writes both files anyway)."""
    d = ssrn.save_model(_model(seed), tmp_path / name)
    doc = json.loads((d / "model.json").read_text())
    doc.pop("weights_sha256")
    (d / "model.json").write_text(json.dumps(doc))
    return d


def _split(d: Path) -> tuple[dict, bytes]:
    raw = (d / "weights.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _with_header(d: Path, header: bytes) -> Path:
    """The weights file of ``d`` with its header replaced by ``header`` (its tensor bytes kept)."""
    _, body = _split(d)
    (d / "weights.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + body)
    return d


def _tree(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


# ---------------------------------------------------------------------------------------------------------------
# 1. header values: nesting, numbers that are no dimension


def test_a_header_nested_thousands_deep_is_a_checkpoint_error(tmp_path):
    """RecursionError from the header's json.loads reached the user as a traceback (CLI exit 1)."""
    d = _with_header(_saved(tmp_path), b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    with pytest.raises(CheckpointError, match=r"weights\.safetensors is not a readable safetensors file: its "
                                               r"header's JSON nests too deeply .* re-save the model"):
        ssrn.load_model(d)


@pytest.mark.parametrize("dim", [b"1e400", b"Infinity", b"-Infinity", b"NaN", b"24.0", b"24.5", b"-24", b"true",
                                 b'"24"', b"null", b"1" * 500])
def test_a_shape_that_is_not_integers_is_a_checkpoint_error(tmp_path, dim):
    """A shape of 1e400 or Infinity raised 'OverflowError: cannot convert float infinity to integer' (int(d));
    24.5 / "24" / true were converted by int() and compared as if they were 24 / 24 / 1."""
    d = _saved(tmp_path)
    header, _ = _split(d)
    key = next(k for k, v in header.items() if k != "__metadata__" and v["shape"])
    header[key]["shape"][-1] = "@DIM@"
    d = _with_header(d, json.dumps(header).replace('"@DIM@"', dim.decode()).encode())
    with pytest.raises(CheckpointError, match=rf"is not a readable safetensors file.*(tensor '{key}' has shape|"
                                               r"not valid JSON).*(non-negative integers|re-save)"):
        ssrn.load_model(d)


@pytest.mark.parametrize("header", [b"[1, 2]", b'"x"', b'{"stem.weight": "F32"}', b'{"stem.weight": {"dtype": 5}}',
                                    b'{"stem.weight": {"dtype": "F32", "shape": {"a": 1}}}'])
def test_a_header_of_another_shape_is_a_checkpoint_error(tmp_path, header):
    d = _with_header(_saved(tmp_path), header)
    with pytest.raises(CheckpointError, match=r"is not a readable safetensors file: (its header is a JSON (list|str)"
                                               r", expected an object|tensor 'stem\.weight' has )"):
        ssrn.load_model(d)


# ---------------------------------------------------------------------------------------------------------------
# 2. the weights file's size, checked before it is read


def test_a_huge_sparse_weights_file_is_refused_by_its_size_before_it_is_read(tmp_path):
    """A 3 GiB sparse weights file took 56 s and 3.5 GB of memory to reach the checksum error (40 GiB: a
    MemoryError): refused now from one stat, naming the sizes."""
    d = ssrn.save_model(_model(), tmp_path / "m")  # (its checksum recorded: it was read before the check)
    os.truncate(d / "weights.safetensors", 3 << 30)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"weights\.safetensors is 3,221,225,472 bytes, but the config in "
                                               r"model\.json \(bands=30, classes=4\) needs [0-9,]+ weights: at most "
                                               r"[0-9,]+ bytes .*it is not this model's weights file"):
        ssrn.load_model(d)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("change", ["appended", "truncated"])
def test_a_weights_file_of_another_size_than_its_header_makes_is_named(tmp_path, change):
    d = _saved(tmp_path)
    wf = d / "weights.safetensors"
    size = wf.stat().st_size
    if change == "appended":
        with open(wf, "ab") as f:
            f.write(b"\0" * 100)
    else:
        os.truncate(wf, size - 100)
    found = size + 100 if change == "appended" else size - 100
    why = "longer than its tensors" if change == "appended" else "truncated"
    with pytest.raises(CheckpointError, match=rf"weights\.safetensors is {found:,} bytes, but its header and the "
                                               rf"config in model\.json make {size:,} .*: the file is {why}"):
        ssrn.load_model(d)


def test_a_header_over_the_limit_is_refused(tmp_path):
    """A header of 5 MiB (whitespace: valid JSON, and safetensors reads it) is no header of a model hsi-engine
    reads; refused before it is parsed."""
    d = _saved(tmp_path)
    header, _ = _split(d)
    d = _with_header(d, json.dumps(header).encode() + b" " * (MAX_WEIGHTS_HEADER_BYTES + 1))
    with pytest.raises(CheckpointError, match=rf"its header length field declares over {MAX_WEIGHTS_HEADER_BYTES:,} "
                                               r"bytes of header"):
        ssrn.load_model(d)


def test_a_small_header_and_other_float_types_still_load(tmp_path):
    """The size checks are exact, not approximate: a float16 file (2 bytes a weight) loads."""
    from safetensors.torch import load_file, save_file

    d = _saved(tmp_path)
    tensors = load_file(str(d / "weights.safetensors"))
    halves = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(halves, str(d / "weights.safetensors"))
    assert ssrn.load_model(d).config.classes == 4


# ---------------------------------------------------------------------------------------------------------------
# 4. what the weights file is, in the message; none of another file's bytes


@pytest.mark.parametrize(("target", "kind"), [("/dev/zero", "a character device"), (".", "a directory")])
def test_a_weights_link_to_a_device_or_a_directory_is_not_a_regular_file(tmp_path, target, kind):
    """Both were 'a broken symbolic link ... a git-annex file not fetched'."""
    if not Path(target).exists():
        pytest.skip(f"no {target}")
    d = _saved(tmp_path)
    (d / "weights.safetensors").unlink()
    (d / "weights.safetensors").symlink_to(target)
    with pytest.raises(CheckpointError, match=rf"weights\.safetensors \(a symbolic link to {target}\) is {kind}, "
                                               r"not a regular file; expected the safetensors file") as e:
        ssrn.load_model(d)
    assert "annex" not in str(e.value)


def test_a_fifo_weights_file_is_not_a_regular_file_and_does_not_block(tmp_path):
    """A FIFO was 'has no weights.safetensors'; it must not be opened for reading and wait for a writer either."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    d = _saved(tmp_path)
    (d / "weights.safetensors").unlink()
    os.mkfifo(d / "weights.safetensors")
    with pytest.raises(CheckpointError, match=r"weights\.safetensors is a FIFO, not a regular file"):
        ssrn.load_model(d)


def test_a_missing_weights_file_and_a_broken_annex_link_keep_their_messages(tmp_path):
    d = _saved(tmp_path)
    (d / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"m has no weights\.safetensors"):
        ssrn.load_model(d)
    (d / "weights.safetensors").symlink_to(tmp_path / ".git" / "annex" / "objects" / "SHA256E-s1--0")
    with pytest.raises(CheckpointError, match=r"is a broken symbolic link .* `git annex get`"):
        ssrn.load_model(d)


@pytest.mark.parametrize("how", ["link", "copy"])
def test_no_bytes_of_another_file_are_shown(tmp_path, how):
    """A weights link to /etc/passwd printed its first 8 bytes as the header length (3475222254926655346 is
    b'root:x:0'): a model directory's author could read 8 bytes of any file its loader can."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    d = _saved(tmp_path)
    (d / "weights.safetensors").unlink()
    if how == "link":
        (d / "weights.safetensors").symlink_to(secret)
    else:
        (d / "weights.safetensors").write_bytes(secret.read_bytes())
    with pytest.raises(CheckpointError, match=r"weights\.safetensors( \(a symbolic link to .*secret\))? is not a "
                                               r"safetensors file: its header length field \(its first 8 bytes\) "
                                               r"exceeds the file's size \(128 bytes\)") as e:
        ssrn.load_model(d)
    leaked = int.from_bytes(b"root:x:0", "little")
    assert str(leaked) not in str(e.value).replace(",", "") and f"{leaked:,}" not in str(e.value)


def test_a_weights_link_out_of_the_directory_still_loads(tmp_path):
    """git-annex (and DVC) keep the weights as a link into the repository's object store: followed, not refused."""
    d = ssrn.save_model(_model(), tmp_path / "m")
    store = tmp_path / ".git" / "annex" / "objects" / "SHA256E-s1--0"
    store.parent.mkdir(parents=True)
    (d / "weights.safetensors").rename(store)
    (d / "weights.safetensors").symlink_to(os.path.relpath(store, d))
    assert ssrn.load_model(d).config.classes == 4


# ---------------------------------------------------------------------------------------------------------------
# 3. a symbolic link at a model target: replaced with --overwrite, never written through


def test_overwrite_replaces_a_link_to_a_model_directory_not_the_directory(tmp_path):
    """`train/import-keras --out LINK --overwrite` replaced the directory LINK points to (the target was resolved
    first); classify replaces a link at its output and never writes through it: so does a model save now."""
    other = ssrn.save_model(_model(seed=0), tmp_path / "other")
    before = _tree(other)
    link = tmp_path / "link"
    link.symlink_to("other")
    with pytest.raises(CheckpointError, match=r"link is a symbolic link to the model directory other; pass "
                                               r"--overwrite .*the directory it points to is kept"):
        ssrn.save_model(_model(seed=1, classes=5), link)
    assert check_model_target(link, overwrite=True) == link
    ssrn.save_model(_model(seed=1, classes=5), link, overwrite=True)
    assert not link.is_symlink() and link.is_dir()
    assert ssrn.load_model(link).config.classes == 5
    assert _tree(other) == before and ssrn.load_model(other).config.classes == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "other"]


@pytest.mark.parametrize("what", ["empty", "files", "file", "broken"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_link_to_anything_but_a_model_directory_is_refused(tmp_path, what, overwrite):
    """A link to an empty directory was written through (the model landed in the directory it points to)."""
    dest = tmp_path / "dest"
    if what == "empty":
        dest.mkdir()
    elif what == "files":
        dest.mkdir()
        (dest / "notes.txt").write_text("mine")
    elif what == "file":
        dest.write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(dest)
    found = {"empty": "an empty directory", "files": "a directory that is not a model directory",
             "file": "a file", "broken": r"nothing \(a broken link\)"}[what]
    with pytest.raises(CheckpointError, match=rf"link is a symbolic link to {dest} \({found}\); hsi-engine never "
                                               r"writes a model through a link.*pass the directory itself"):
        ssrn.save_model(_model(), link, overwrite=overwrite)
    assert link.is_symlink() and os.readlink(link) == str(dest)
    if what == "empty":
        assert list(dest.iterdir()) == []
    elif what == "files":
        assert [p.name for p in dest.iterdir()] == ["notes.txt"]


def test_a_linked_parent_directory_is_still_written_under(tmp_path):
    """Only the last component is the target: `--out models/mine` where models is a link writes into what it
    points to, as before."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "models").symlink_to(real)
    ssrn.save_model(_model(), tmp_path / "models" / "mine")
    ssrn.save_model(_model(classes=6), tmp_path / "models" / "mine", overwrite=True)
    assert (real / "mine").is_dir() and not (real / "mine").is_symlink()
    assert ssrn.load_model(real / "mine").config.classes == 6


def test_train_overwrite_through_a_link_leaves_the_linked_model_alone(tmp_path, capsys):
    """The command line, as the tester ran it: `hsi-engine train ... --out LINK --overwrite`."""
    from hsi_engine.cli import main

    rng = np.random.default_rng(0)
    scene = tmp_path / "tiny.npz"
    np.savez(scene, cube=rng.normal(size=(20, 16, 16)).astype(np.float32), labels=rng.integers(0, 4, (16, 16)))
    models = tmp_path / "models"
    models.mkdir()
    other = ssrn.save_model(_model(), models / "other")
    before = _tree(other)
    link = models / "link"
    link.symlink_to(other)
    fast = ["--patch", "5", "--variant", "spc", "--epochs", "1", "--device", "cpu"]
    assert main(["train", "--dataset", str(scene), "--out", str(link), *fast]) == 2
    assert "is a symbolic link to the model directory" in capsys.readouterr().err
    assert main(["train", "--dataset", str(scene), "--out", str(link), *fast, "--overwrite"]) == 0
    assert _tree(other) == before
    assert not link.is_symlink() and ssrn.load_model(link).config.bands == 20


def test_import_keras_overwrite_through_a_link_leaves_the_linked_model_alone(seed_ssrn_dir, tmp_path, capsys):
    """`hsi-engine import-keras SEED.hdf5 --out LINK --overwrite` replaced the model directory LINK points to."""
    from hsi_engine.cli import main

    other = ssrn.save_model(_model(), tmp_path / "other")
    before = _tree(other)
    link = tmp_path / "link"
    link.symlink_to(other)
    keras = str(seed_ssrn_dir / "Indian_best_RES_3D_SS4_10_1.hdf5")
    assert main(["import-keras", keras, "--out", str(link)]) == 2
    assert "is a symbolic link to the model directory" in capsys.readouterr().err
    assert main(["import-keras", keras, "--out", str(link), "--overwrite"]) == 0
    assert _tree(other) == before
    assert not link.is_symlink() and ssrn.load_model(link).config.bands == 200
