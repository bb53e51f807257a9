"""A service's deadline raised from a signal handler (a ``TimeoutError`` subclass, an ``OSError`` without errno)
reaches the caller as itself wherever it lands: the scale check swallowed it (the call ran on past its deadline,
its check skipped) and a resumable or cluster run re-labelled it a disk failure (``except SceneTimeout`` never
fired)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import hsi_engine
from ssrn import SSRN, SSRNConfig


class SceneTimeout(TimeoutError):
    pass


def _case():
    rng = np.random.default_rng(0)
    cube = xr.DataArray(rng.normal(500, 50, (20, 24, 24)).astype(np.float32), dims=("band", "y", "x"))
    model = SSRN(SSRNConfig(bands=20, classes=4, patch=5)).eval()
    model.meta = {"mean": [500.0] * 20, "std": [50.0] * 20}
    return cube, model


def test_a_timeout_in_the_scale_check_s_read_is_not_swallowed(monkeypatch):
    from hsi_engine import scene_checks

    cube, model = _case()

    def deadline(*a, **k):
        raise SceneTimeout("the service's limit")

    monkeypatch.setattr(scene_checks, "_read", deadline)
    with pytest.raises(SceneTimeout, match="the service's limit"):
        hsi_engine.classify(cube, model, progress=False)


def test_a_timeout_mid_run_is_not_a_disk_failure(monkeypatch, tmp_path):
    from hsi_engine import resume

    cube, model = _case()
    real, calls = resume.mark_tile, []

    def mark(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise SceneTimeout("the service's limit")
        return real(*a, **k)

    monkeypatch.setattr(resume, "mark_tile", mark)
    with pytest.raises(SceneTimeout, match="the service's limit"):
        hsi_engine.classify_to_file(cube, model, tmp_path / "m.tif", tile=8, resume=True, progress=False)
    assert len(calls) >= 2
    partial = tmp_path / "m.tif.partial"
    assert partial.is_dir()  # (kept for the resume)
    monkeypatch.setattr(resume, "mark_tile", real)
    import zarr

    real_open = zarr.open_group

    def deadline_at_the_partial(store=None, *a, **k):
        if str(store).endswith(".partial") and k.get("mode") == "r":
            raise SceneTimeout("the service's limit")
        return real_open(store, *a, **k)

    # the deadline while the resume checks the store: it was "not a resumable output; remove it" (tiles thrown away)
    monkeypatch.setattr(zarr, "open_group", deadline_at_the_partial)
    with pytest.raises(SceneTimeout, match="the service's limit"):
        hsi_engine.classify_to_file(cube, model, tmp_path / "m.tif", tile=8, resume=True, progress=False)
    assert partial.is_dir()


def test_a_timeout_while_an_old_output_is_checked_is_not_a_foreign_file(monkeypatch, tmp_path):
    """The check of what stands at the output read a deadline as "not a map we wrote": a valid map was called
    foreign (delete it yourself), or an old model's probabilities were left beside the new map (the call returned)."""
    import rasterio

    cube, model = _case()
    out = tmp_path / "m.tif"
    hsi_engine.classify_to_file(cube, model, out, progress=False, probabilities=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_open = rasterio.open

    def deadline_at_probabilities(path, *a, **k):
        if str(path).endswith("m_probabilities.tif"):
            raise SceneTimeout("the service's limit")
        return real_open(path, *a, **k)

    monkeypatch.setattr(rasterio, "open", deadline_at_probabilities)
    for probabilities in (True, False):  # (without them, the old probabilities file is a stale side to remove)
        with pytest.raises(SceneTimeout, match="the service's limit"):
            hsi_engine.classify_to_file(cube, model, out, progress=False, overwrite=True, probabilities=probabilities)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
