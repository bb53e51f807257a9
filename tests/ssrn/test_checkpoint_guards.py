"""What save_model and load_model refuse beyond a damaged directory: the model the package ships (marked by
``SHIPPED_MARKER``, tested on copies: the real one is never written), an argument that is not a model, and a
model.json whose config was edited away from its weights or from the training it records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import ssrn
from ssrn import SSRN, CheckpointError, SSRNConfig
from ssrn.checkpoint import SHIPPED_MARKER
from ssrn.errors import HSIEngineError, OptionTypeError


def _model(classes: int = 4) -> SSRN:
    torch.manual_seed(0)
    return SSRN(SSRNConfig(bands=30, classes=classes, patch=5)).eval()


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture
def marked(tmp_path) -> Path:
    """A model directory carrying the shipped model's marker, as a copy of the shipped model does."""
    d = ssrn.save_model(_model(), tmp_path / "shipped")
    (d / SHIPPED_MARKER).write_text("the model hsi-engine ships\n")
    return d


def test_the_shipped_model_carries_the_marker_and_loads():
    from hsi_engine.demo import SHIPPED_MODEL

    assert (SHIPPED_MODEL / SHIPPED_MARKER).is_file()
    assert ssrn.load_model(SHIPPED_MODEL).config.classes == 16


@pytest.mark.parametrize("overwrite", [False, True])
def test_save_never_replaces_the_shipped_model(marked, overwrite):
    """``import-keras --overwrite`` (and save_model(..., overwrite=True)) replaced it, and the demo then failed."""
    before = _files(marked)
    with pytest.raises(CheckpointError, match="is the model hsi-engine ships") as e:
        ssrn.save_model(_model(), marked, overwrite=overwrite)
    assert "even with --overwrite; write the new model to a new directory (a new --out)" in str(e.value)
    assert "pass --overwrite" not in str(e.value)  # (without overwrite it had said to pass it)
    assert _files(marked) == before


def test_save_never_writes_inside_the_shipped_model(marked):
    with pytest.raises(CheckpointError, match=f"lies inside {marked}, the model hsi-engine ships"):
        ssrn.save_model(_model(), marked / "sub")
    assert not (marked / "sub").exists()


def test_a_link_to_the_shipped_model_is_replaced_not_written_through(marked, tmp_path):
    before = _files(marked)
    link = tmp_path / "link"
    link.symlink_to(marked)
    ssrn.save_model(_model(classes=3), link, overwrite=True)
    assert not link.is_symlink() and ssrn.load_model(link).config.classes == 3
    assert _files(marked) == before


def test_a_copy_without_the_marker_is_replaced_as_the_message_says(marked):
    (marked / SHIPPED_MARKER).unlink()
    ssrn.save_model(_model(classes=3), marked, overwrite=True)
    assert ssrn.load_model(marked).config.classes == 3


@pytest.mark.parametrize(("given", "message"), [
    ("state_dict", r"save_model takes an ssrn.SSRN model; got a dict \(a state dict\?\): load it into a model "
                   r"first \(model = ssrn.SSRN\(SSRNConfig\(...\)\); model.load_state_dict\(state_dict\)\)"),
    ("path", r"save_model takes an ssrn.SSRN model; got the path '.*': load the model directory first "
             r"\(model = ssrn.load_model\(path\)"),
    ("swapped", r"got the path .*\(the arguments are save_model\(model, path\)\)"),
    ("config", r"got SSRNConfig: load a model directory with ssrn.load_model\(path\), or build one"),
])
def test_save_refuses_what_is_not_a_model(tmp_path, given, message):
    """A state dict or a path raised a bare AttributeError on ``.meta``."""
    model = _model()
    src = ssrn.save_model(model, tmp_path / "src")
    out = tmp_path / "out"
    args = {"state_dict": (model.state_dict(), out), "path": (src, out), "swapped": (out, model),
            "config": (model.config, out)}[given]
    with pytest.raises(OptionTypeError, match=message) as e:
        ssrn.save_model(*args)
    assert isinstance(e.value, HSIEngineError) and isinstance(e.value, TypeError)
    assert not out.exists()


def _edited(d: Path, edit) -> Path:
    doc = json.loads((d / "model.json").read_text())
    edit(doc)
    (d / "model.json").write_text(json.dumps(doc))
    return d


def test_an_edited_class_count_is_blamed_on_the_weights_not_the_palette(tmp_path):
    """config.classes 4 -> 5 said first that the palette, then that class_names, must be 5 long (remove them), and
    only then that the weights do not fit the config."""
    meta = {"class_names": ["a", "b", "c", "d"], "palette": [[1, 2, 3]] * 4}
    d = _edited(ssrn.save_model(_model(), tmp_path / "m", meta=meta),
                lambda doc: doc["config"].update(classes=5))
    with pytest.raises(CheckpointError, match=r"tensor 'head.weight' has shape \(4, .*classes=5.*if its config "
                                              r"was edited, undo the edit") as e:
        ssrn.load_model(d)
    assert "palette" not in str(e.value) and "class_names" not in str(e.value)


def test_a_meta_that_does_not_fit_is_still_named_when_the_weights_do(tmp_path):
    d = _edited(ssrn.save_model(_model(), tmp_path / "m", meta={"palette": [[1, 2, 3]] * 4}),
                lambda doc: doc["meta"].update(palette=[[1, 2, 3]] * 3))
    with pytest.raises(CheckpointError, match="meta.palette must be 4 colours"):
        ssrn.load_model(d)


def test_an_edited_patch_is_refused_against_the_patch_the_training_records(tmp_path):
    """No weight's shape depends on the patch: config.patch 7 -> 9 loaded and classified, silently, another map."""
    d = ssrn.save_model(_model(), tmp_path / "m", meta={"report": {"patch": 5, "oa": 0.9}})
    assert ssrn.load_model(d).config.patch == 5
    _edited(d, lambda doc: doc["config"].update(patch=7))
    with pytest.raises(CheckpointError, match=r"config.patch is 7, but meta.report records that the weights were "
                                              r"trained on 5 x 5 patches.*set config.patch back to 5"):
        ssrn.load_model(d)


def test_an_edited_patch_is_refused_against_an_imported_model_s_padding(tmp_path):
    d = ssrn.save_model(_model(), tmp_path / "m", meta={"padding": {"mode": "zeros", "width": 2}})
    _edited(d, lambda doc: doc["config"].update(patch=9))
    with pytest.raises(CheckpointError, match=r"config.patch is 9, but meta.padding records the zero padding of a "
                                              r"5 x 5 patch.*set config.patch back to 5"):
        ssrn.load_model(d)


@pytest.mark.parametrize("meta", [{}, {"report": {"oa": 0.9}}, {"report": {"patch": None}}, {"report": "text"},
                                  {"padding": {"mode": "zeros"}}])
def test_a_meta_recording_no_patch_loads(tmp_path, meta):
    d = _edited(ssrn.save_model(_model(), tmp_path / "m", meta=meta), lambda doc: doc["config"].update(patch=7))
    assert ssrn.load_model(d).config.patch == 7


def test_save_refuses_a_meta_recording_another_patch(tmp_path):
    with pytest.raises(CheckpointError, match="config.patch is 5, but meta.report records"):
        ssrn.save_model(_model(), tmp_path / "m", meta={"report": {"patch": 7}})
    assert not (tmp_path / "m").exists()


def test_the_shipped_model_s_copy_with_an_edited_patch_is_refused(tmp_path):
    from hsi_engine.demo import SHIPPED_MODEL

    d = tmp_path / "copy"
    shutil.copytree(SHIPPED_MODEL, d)
    _edited(d, lambda doc: doc["config"].update(patch=9))
    with pytest.raises(CheckpointError, match="trained on 7 x 7 patches"):
        ssrn.load_model(d)


def test_a_shipped_md_that_is_not_beside_a_model_does_not_guard_anything(tmp_path):
    """The guard looked for SHIPPED.md in every folder above the target: a project keeping its own SHIPPED.md at
    its root could save no model under it, and was told to delete that file."""
    from ssrn import SSRN, SSRNConfig, load_model, save_model

    (tmp_path / "SHIPPED.md").write_text("our release notes\n")
    model = SSRN(SSRNConfig(bands=20, classes=4, patch=5))
    save_model(model, tmp_path / "models" / "run1")
    assert load_model(tmp_path / "models" / "run1").config == model.config
    assert (tmp_path / "SHIPPED.md").read_text() == "our release notes\n"
