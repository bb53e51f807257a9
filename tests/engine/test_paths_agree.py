"""Every way to run a classification makes the same checks: the in-memory map (``classify``), the streamed .tif, and
the resumable paths (.zarr, ``resume=True``, ``workers=``). Each of these was once made on some paths only: the
single-chunk store's warning never fired on a resumable run, a scene changed mid-run was refused for a file output
but not for ``classify()``, and ``readers``/``queue_depth`` were taken unchecked (and ignored) by ``workers=``."""

from __future__ import annotations

import argparse
import logging
import os
import shutil

import numpy as np
import pytest

import _scale_fixtures as F

import hsi_engine
import hsi_engine.runner as runner
import hsi_engine.scene_checks as checks
from hsi_engine import cluster
from hsi_engine.errors import OptionError, SceneError

TILE = 16


class _Stop(Exception):
    """Raised where a run would start reading tiles (or a cluster): the checks before it are what is tested."""


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("paths_agree")
    cube = F.ip_crop(48, 48)
    return {"dir": d, "cube": cube, "scene": F.write_zarr(d / "scene.zarr", cube),
            "model": F.save_tiny_model(d / "model", cube)}


@pytest.fixture
def stops_before_tiles(monkeypatch):
    """No tile is computed and no cluster started: both raise :class:`_Stop`."""

    def stop(*a, **k):
        raise _Stop

    monkeypatch.setattr(runner, "run_plan", stop)
    monkeypatch.setattr(cluster, "connect", stop)


OUTPUT_PATHS = [("m.tif", {}), ("m.zarr", {}), ("m.tif", {"resume": True}), ("m.zarr", {"workers": 1})]


@pytest.mark.parametrize("name, kw", OUTPUT_PATHS, ids=["tif", "zarr", "tif-resume", "zarr-workers"])
def test_a_scene_stored_as_one_large_chunk_is_named_on_every_output_path(case, tmp_path, monkeypatch,
                                                                          stops_before_tiles, name, kw):
    """Resumable runs made their plan check on a stand-in tile of 1,048,576 pixels, so the warning never fired there
    (a .zarr output of a one-chunk store cost the whole chunk per tile in silence). It is made on the plan run: the
    default tile (128 on CPU) against a 600 x 600 chunk."""
    monkeypatch.setattr(checks, "LARGE_CHUNK_BYTES", 1 << 10)
    big = np.tile(case["cube"], (1, 13, 13))[:, :600, :600]
    scene = F.dataarray(big).chunk({"band": -1, "y": -1, "x": -1})
    with pytest.warns(UserWarning, match=r"the scene's chunks are 600 x 600 pixels .* against tiles of 128 x 128"), \
            pytest.raises(_Stop):
        hsi_engine.classify_to_file(scene, case["model"], tmp_path / name, progress=False, **kw)


def test_tile_sized_chunks_are_not_named_on_a_resumable_run(case, tmp_path, stops_before_tiles):
    """The warning is the plan's: a store chunked as the tiles says nothing."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the scene's chunks", category=UserWarning)
        with pytest.raises(_Stop):
            hsi_engine.classify_to_file(case["scene"], case["model"], tmp_path / "m.zarr", tile=TILE,
                                        progress=False)


@pytest.mark.parametrize("opened", [False, True], ids=["path", "open_scene"])
def test_classify_refuses_a_scene_changed_while_it_read_it(case, tmp_path, monkeypatch, opened):
    """classify_to_file refused a scene whose files changed mid-run (its map would mix two versions); classify()
    returned that map without a word. Both run the check now, for a path and for a file opened whole."""
    from hsi_engine.fused import FusedSSRN

    scene = tmp_path / "scene.zarr"
    shutil.copytree(case["scene"], scene)
    real = FusedSSRN.__call__

    def touching(self, x):  # a chunk file rewritten (another mtime) while the run reads the scene
        chunk = next(p for p in sorted(scene.rglob("*")) if p.is_file() and p.name != "zarr.json")
        os.utime(chunk, ns=(chunk.stat().st_atime_ns, chunk.stat().st_mtime_ns + 10**9))
        return real(self, x)

    given = hsi_engine.open_scene(scene) if opened else str(scene)
    monkeypatch.setattr(FusedSSRN, "__call__", touching)
    with pytest.raises(SceneError, match=r"changed while this run read it: .* changed .*; the map would mix two"):
        hsi_engine.classify(given, str(case["model"]), tile=TILE, progress=False)
    monkeypatch.setattr(FusedSSRN, "__call__", real)
    labels = hsi_engine.classify(given, str(case["model"]), tile=TILE, progress=False)  # unchanged: a map
    assert labels.shape == (48, 48)


def test_scene_identity_lives_outside_the_cluster_module():
    """The scene's identity and change check are their own module's, which every path imports (the .tif path
    imported the cluster driver for them); the cluster driver uses the same functions."""
    from hsi_engine import scene_identity

    assert {"scene_identity", "content_digest", "scene_state", "scene_changed"} <= set(scene_identity.__all__)
    assert cluster.scene_changed is scene_identity.scene_changed  # (what the cluster driver uses)


BAD_READS = [({"readers": -3}, r"readers and queue_depth must be >= 1; got readers=-3"),
             ({"queue_depth": "lots"}, r"queue_depth must be a whole number of threads / tiles .*; got 'lots'"),
             ({"readers": 1.5}, r"readers must be a whole number"),
             ({"queue_depth": 0}, r"readers and queue_depth must be >= 1; got queue_depth=0")]


@pytest.mark.parametrize("kw, match", BAD_READS)
@pytest.mark.parametrize("path", [{"workers": 1}, {"scheduler": "tcp://127.0.0.1:1"}, {}, {"resume": True}],
                         ids=["workers", "scheduler", "zarr", "resume"])
def test_read_settings_are_refused_up_front_on_every_path(case, tmp_path, stops_before_tiles, kw, match, path):
    """A cluster run took readers=-3 and queue_depth='lots' and ignored them: its tasks never call run_plan, where
    they were checked. They are refused before the scene is opened, with nothing left behind."""
    missing = tmp_path / "missing.zarr"  # refused before the scene is looked for
    with pytest.raises(OptionError, match=match):
        hsi_engine.classify_to_file(missing, case["model"], tmp_path / "out" / "m.zarr", progress=False, **kw,
                                    **path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw, match", BAD_READS)
def test_read_settings_are_refused_before_the_scene_is_opened(case, tmp_path, kw, match):
    missing = tmp_path / "missing.zarr"
    with pytest.raises(OptionError, match=match):
        hsi_engine.classify(missing, case["model"], progress=False, **kw)
    with pytest.raises(OptionError, match=match):
        hsi_engine.classify_to_file(missing, case["model"], tmp_path / "m.tif", progress=False, **kw)


@pytest.mark.parametrize("kw, said", [({"readers": 2}, "readers=2 has no effect"),
                                      ({"readers": 2, "queue_depth": 4}, "readers=2 and queue_depth=4 have no effect"),
                                      ({"queue_depth": 1}, "queue_depth=1 has no effect")])
def test_read_settings_a_cluster_run_ignores_are_named_once(case, tmp_path, stops_before_tiles, caplog, kw, said):
    with caplog.at_level(logging.WARNING, "hsi_engine.cluster"), pytest.raises(_Stop):
        hsi_engine.classify_to_file(case["scene"], case["model"], tmp_path / "m.zarr", tile=TILE, progress=False,
                                    workers=1, **kw)
    told = [r.getMessage() for r in caplog.records if "no effect with workers=" in r.getMessage()]
    assert len(told) == 1 and said in told[0] and "--workers" in told[0]


def test_read_settings_an_in_process_run_uses_are_not_named(case, tmp_path, stops_before_tiles, caplog):
    with caplog.at_level(logging.WARNING, "hsi_engine"), pytest.raises(_Stop):
        hsi_engine.classify_to_file(case["scene"], case["model"], tmp_path / "m.zarr", tile=TILE, progress=False,
                                    readers=2, queue_depth=3)
    assert not [r for r in caplog.records if "no effect" in r.getMessage()]


def test_the_readers_option_says_it_does_nothing_on_a_cluster():
    from hsi_engine.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["classify"].format_help().split())
    assert "No effect with --workers or --scheduler" in text
