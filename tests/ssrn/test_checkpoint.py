"""Checkpoint round trip and refusals (pickle, mismatched config)."""

from __future__ import annotations

import json

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
