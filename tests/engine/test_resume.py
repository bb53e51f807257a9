"""Resumable output: a single-process run SIGKILLed mid-scene resumes to the uninterrupted map, computing only the
tiles that were not recorded done; the partial store never poses as the finished output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import _scale_fixtures as F

import hsi_engine
from hsi_engine import cluster, dask_client, scene_identity
from hsi_engine.errors import HSIEngineError, OutputError
from hsi_engine.resume import RUNS_ATTR, json_attr, partial_path, read_record

TILE = 16
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return F.classified_crop(tmp_path_factory.mktemp("resume"), 64, 64, y0=20, x0=20, tile=TILE)  # 4 x 4 tiles


def _poll_done(store: Path, at_least: int, proc: subprocess.Popen, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            n = int((read_record(store) > 0).sum())
        except Exception:  # noqa: BLE001 - not created yet
            n = 0
        if n >= at_least:
            return n
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {at_least} tiles were recorded: "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} tiles recorded within {timeout} s")


def test_sigkilled_run_resumes_to_the_same_map_without_recomputing(case, tmp_path, capsys):
    out = tmp_path / "map.zarr"
    script = ("import sys; from hsi_engine import cluster; "
              "cluster.run_to_file(sys.argv[1], sys.argv[2], sys.argv[3], tile=16, resume=True, throttle_s=0.4)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(case["scene"]), str(case["model"]), str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part = partial_path(out)
    try:
        _poll_done(part, 3, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    before = read_record(part)
    done_before = int((before > 0).sum())
    assert 3 <= done_before < case["tiles"], "the kill must land mid-scene"
    assert not out.exists(), "an incomplete run must not appear under the requested name"
    import zarr

    assert zarr.open_group(str(part), mode="r").attrs["partial"] == 1

    from hsi_engine.cli import main  # the resume goes through the command line

    args = ["classify", str(case["scene"]), "--model", str(case["model"]), "--out", str(out), "--tile", str(TILE)]
    assert main([*args, "--resume"]) == 0
    record = read_record(out)
    computed = int((record == 2).sum())  # run 2 = the resume
    assert computed == case["tiles"] - done_before, "the resume recomputed tiles already recorded done"
    np.testing.assert_array_equal(record[before > 0], before[before > 0])  # completed tiles untouched
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    runs = json_attr(dict(zarr.open_group(str(out), mode="r").attrs), RUNS_ATTR)
    assert [r["run"] for r in runs] == [1, 2]
    assert runs[1]["done_before"] == done_before and runs[1]["computed"] == computed
    assert not part.exists()


def test_crash_keeps_partial_and_resume_finishes_geotiff(case, tmp_path, monkeypatch):
    out = tmp_path / "map.tif"
    F.crash_writes_after(monkeypatch, 5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, readers=1, queue_depth=1)
    monkeypatch.undo()
    part = partial_path(out)
    assert not out.exists() and part.is_dir()
    done_before = int((read_record(part) > 0).sum())
    assert done_before == 5
    with pytest.raises(OutputError, match="--resume"):  # a fresh run does not clobber it
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE)
    rep = cluster.run_to_file(case["scene"], case["model"], out, resume=True)  # no tile: the partial's own
    assert (rep.skipped, rep.computed, rep.run, rep.tile) == (5, case["tiles"] - 5, 2, TILE)
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "map.tif.aux.xml"]


def test_a_damaged_partial_store_is_named_with_the_way_to_start_over(case, tmp_path, monkeypatch):
    """A corrupt chunk (or broken array metadata) in OUT.partial made --resume end in a codec traceback after
    computing the rest, every time: a retrying pipeline looped. It is an OutputError naming the store and the way
    out (--overwrite without --resume), which then makes the map."""
    out = tmp_path / "map.tif"
    F.crash_writes_after(monkeypatch, 5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, readers=1, queue_depth=1)
    monkeypatch.undo()
    part = partial_path(out)
    chunk = sorted(p for p in (part / "classes" / "c").rglob("*") if p.is_file())[0]
    chunk.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(200)))  # a zstd frame's magic, then garbage
    with pytest.raises(OutputError, match=rf"partial store {re.escape(str(part))} is damaged \(rows .*: start over "
                                          r"with --overwrite \(without --resume"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
    assert not out.exists()
    cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, overwrite=True)
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    # this process's want while finishing is no damage: it goes through, and the complete store stays to resume
    import zarr

    from hsi_engine import resume

    real_commit, real_get = resume.ResumableZarrWriter.commit_geotiff, zarr.Array.__getitem__
    finishing = [False]

    def get(self, sel):
        if finishing[0]:
            raise MemoryError("Unable to allocate 64.0 MiB for an array")
        return real_get(self, sel)

    def commit(self, *a, **kw):
        finishing[0] = True
        try:
            return real_commit(self, *a, **kw)
        finally:
            finishing[0] = False

    monkeypatch.setattr(zarr.Array, "__getitem__", get)
    monkeypatch.setattr(resume.ResumableZarrWriter, "commit_geotiff", commit)
    with pytest.raises(MemoryError):
        cluster.run_to_file(case["scene"], case["model"], tmp_path / "oom.tif", tile=TILE, resume=True)
    monkeypatch.undo()
    assert partial_path(tmp_path / "oom.tif").is_dir()


def test_a_resumed_run_that_cannot_reach_its_cluster_keeps_the_tiles(case, tmp_path, monkeypatch):
    """An error on a resumed run (here: a scheduler address that nothing listens on) never deletes the tiles
    earlier runs wrote; the next --resume finishes them. A worker device this driver lacks is no obstacle."""
    import socket

    out = tmp_path / "map.zarr"
    F.crash_writes_after(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, readers=1, queue_depth=1)
    monkeypatch.undo()
    monkeypatch.setattr(dask_client, "_REFUSED_GRACE_S", 0.2)  # the refused port's retries (2 s): not waited out
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HSIEngineError, match="nothing listens on port"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, device="cuda:3",
                            scheduler=f"tcp://127.0.0.1:{port}")
    assert int((read_record(partial_path(out)) > 0).sum()) == 3
    rep = cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
    assert (rep.skipped, rep.computed) == (3, case["tiles"] - 3)
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])


def test_resume_with_other_settings_is_refused(case, tmp_path, monkeypatch):
    out = tmp_path / "map.zarr"
    F.crash_writes_after(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, readers=1, queue_depth=1)
    monkeypatch.undo()
    with pytest.raises(OutputError, match=rf"tile: partial has {TILE}, this run 48 \(a tile is rounded up to a "
                                          rf"multiple of 16 pixels; --tile {TILE} continues it\)"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=33, resume=True)
    assert partial_path(out).is_dir()  # refusing does not destroy the work done
    rep = cluster.run_to_file(case["scene"], case["model"], out, tile=32, overwrite=True)  # start over
    assert rep.skipped == 0 and rep.run == 1
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert not partial_path(out).exists()


def test_a_partial_of_another_engine_version_is_not_continued(case, tmp_path, monkeypatch):
    """A partial left by an hsi-engine whose maps differ (before bad bands read as 0, say) was continued: one map
    of two engines' tiles. Its fingerprint records the map version; another version is refused, named."""
    from hsi_engine import resume

    out = tmp_path / "map.zarr"
    F.crash_writes_after(monkeypatch, 2)
    monkeypatch.setattr(cluster, "MAP_VERSION", resume.MAP_VERSION - 1)
    with pytest.raises(RuntimeError):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, readers=1, queue_depth=1)
    monkeypatch.undo()
    with pytest.raises(OutputError, match=rf"partial was made by another hsi-engine version, whose maps may differ "
                                          rf"from this one's \(map version {resume.MAP_VERSION - 1}, this run "
                                          rf"{resume.MAP_VERSION}\)"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
    assert partial_path(out).is_dir()


@pytest.mark.parametrize("name", ["map.zarr", "map.tif"])
def test_resume_of_a_complete_output_does_nothing_with_the_same_settings(case, tmp_path, name):
    """A retried pipeline task (--resume again after it finished) has nothing to do: exit 0, the output left as it
    is, without naming --tile again; with other settings the finished output is not touched either: refused."""
    import rasterio

    from hsi_engine.cli import main

    out = tmp_path / name
    args = ["classify", str(case["scene"]), "--model", str(case["model"]), "--out", str(out), "--resume",
            "--probabilities"]
    assert main(args + ["--tile", str(TILE)]) == 0
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    rep = cluster.run_to_file(case["scene"], case["model"], out, resume=True, probabilities=True)
    assert rep.computed == 0 and rep.skipped == case["tiles"] and rep.tile == TILE
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == stamps
    with pytest.raises(OutputError, match=r"was made with different settings \(probabilities: it has 'float16', "
                                          r"this run None\); resume=True \(--resume\) continues only"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)  # no probabilities now
    other = F.write_zarr(tmp_path / "other.zarr", F.ip_crop(64, 64, y0=0, x0=0))  # same shape, other pixels
    with pytest.raises(OutputError, match=r"different settings \(scene.source: it has '[^']*scene.zarr', this run "
                                          r"'[^']*other.zarr'\);"):
        cluster.run_to_file(other, case["model"], out, resume=True, probabilities=True)
    for p in [other, *other.rglob("*")]:
        stamps[p] = p.stat().st_mtime_ns
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == stamps
    if name.endswith(".tif"):  # a map made without --resume: named as such (it named the probabilities file)
        plain = tmp_path / "plain" / name
        hsi_engine.classify_to_file(case["scene"], case["model"], plain, probabilities=True, progress=False)
        with pytest.raises(OutputError, match=rf"{plain.name} exists but records no run settings \(made without "
                                              r"resume=True \(--resume\).*nothing to resume"):
            cluster.run_to_file(case["scene"], case["model"], plain, resume=True, probabilities=True)
    if name.endswith(".zarr"):
        np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    else:
        with rasterio.open(out) as f:
            np.testing.assert_array_equal(f.read(1), case["ref"])
            assert f.tags()["model_digest"] and f.tags()["software"].startswith("hsi-engine")


def test_api_resume_routes_here(case, tmp_path, caplog):
    """classify_to_file(resume=True) runs here; its debug log names this path's plan (the API's placeholder
    one-tile plan was logged before)."""
    with caplog.at_level("DEBUG", logger="hsi_engine"):
        out = hsi_engine.classify_to_file(case["scene"], case["model"], tmp_path / "m.zarr", tile=TILE, resume=True)
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert (read_record(out) == 1).all()
    plans = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan: ")]
    assert plans == [f"plan: {case['tiles']} tiles, up to {TILE} x {TILE} px (+3 px halo each side)"], plans


def test_a_tile_larger_than_the_scene_is_the_scene(case, tmp_path):
    """The side is also the store's chunk: --tile 16384 stored a 64 x 64 map as one 16384^2 chunk (2 GB of memory),
    and --tile 100000 was killed for memory; the plain .tif path already clipped it."""
    import zarr

    out = hsi_engine.classify_to_file(case["scene"], case["model"], tmp_path / "m.zarr", tile=16384)
    assert zarr.open_array(str(out), path="classes", mode="r").chunks == (64, 64)
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])


def test_plain_zarr_run_is_resumable_without_asking(case, tmp_path, monkeypatch):
    """A .zarr output records finished tiles even when the first run did not ask for --resume."""
    out = tmp_path / "plain.zarr"
    F.crash_writes_after(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        hsi_engine.classify_to_file(case["scene"], case["model"], out, tile=TILE, readers=1, queue_depth=1)
    monkeypatch.undo()
    assert not out.exists() and int((read_record(partial_path(out)) > 0).sum()) == 3
    hsi_engine.classify_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
    record = read_record(out)
    assert int((record == 1).sum()) == 3 and int((record == 2).sum()) == case["tiles"] - 3
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    # the finished store, run history and fingerprint included, converts whole to NetCDF (dict and bool
    # attributes refused it: "Invalid value for attr 'hsi_engine_resume'", "boolean dtypes are not supported")
    import xarray as xr

    with xr.open_dataset(out, engine="zarr") as ds:
        ds.to_netcdf(tmp_path / "plain.nc")
    with xr.open_dataset(tmp_path / "plain.nc") as nc:
        np.testing.assert_array_equal(nc["classes"].values, case["ref"])
        assert [r["run"] for r in json_attr(nc.attrs, RUNS_ATTR)] == [1, 2] and nc.attrs["complete"] == 1


def test_a_scene_rewritten_in_place_is_not_taken_for_the_finished_one(case, tmp_path):
    """Scene identity is every file of the store (size, newest modification), not its root metadata: a region
    rewritten in place is another scene, and --resume refuses to call the old map done; the file's scene loaded
    into memory is no longer the file (its values are identified by a digest instead): refused too."""
    import shutil

    import zarr

    scene = tmp_path / "scene.zarr"
    shutil.copytree(case["scene"], scene)
    out = tmp_path / "map.zarr"
    cluster.run_to_file(scene, case["model"], out, tile=TILE, resume=True)
    assert cluster.run_to_file(scene, case["model"], out, tile=TILE, resume=True).computed == 0
    time.sleep(0.01)
    node = zarr.open(str(scene), mode="r+")
    arr = node if isinstance(node, zarr.Array) else next(a for _, a in node.arrays() if a.ndim == 3)
    arr[:, :4, :4] = 0
    with pytest.raises(OutputError, match=r"different settings \(the scene's files changed \(size or modification "
                                          r"time\) since\)"):
        cluster.run_to_file(scene, case["model"], out, tile=TILE, resume=True)
    da = hsi_engine.open_scene(scene).load()  # (its encoding still names the file)
    with pytest.raises(OutputError, match=r"scene: it has '[^']*scene.zarr', this run an in-memory scene .*\(if "
                                          r"this run's scene is that file's, unchanged, pass its path, or "
                                          r"open_scene\('[^']*scene.zarr'\) without loading it, to continue\)"):
        cluster.run_to_file(da, case["model"], out, tile=TILE, resume=True)


def test_a_window_of_an_opened_file_is_not_taken_for_another_finished_window(tmp_path):
    """Two same-shape windows of an ungeoreferenced file (``isel`` keeps the file in ``encoding``): the second,
    resumed into the first's finished output, was reported complete and the output kept the first window's map.
    A window is identified by a digest of its values: the other window is refused, the same one is done; the
    whole opened file is still recognised as the file."""
    from hsi_engine.demo import SHIPPED_MODEL, SHIPPED_SCENE

    da = hsi_engine.open_scene(SHIPPED_SCENE)
    a, b = da.isel(y=slice(0, 12), x=slice(0, 12)), da.isel(y=slice(100, 112), x=slice(100, 112))
    out = tmp_path / "crop.zarr"
    hsi_engine.classify_to_file(a, SHIPPED_MODEL, out, progress=False)
    with pytest.raises(OutputError, match=r"made with different settings \(scene: another in-memory scene"):
        hsi_engine.classify_to_file(b, SHIPPED_MODEL, out, resume=True, progress=False)
    assert cluster.run_to_file(a, SHIPPED_MODEL, out, resume=True, progress=False).computed == 0
    full = hsi_engine.open_scene(SHIPPED_SCENE)
    assert scene_identity.scene_identity(None, full, None, None, None)["source"] == str(Path(SHIPPED_SCENE).resolve())
    ident = scene_identity.scene_identity(None, b, None, None, None)
    assert ident["source"] is None
    assert ident["digest"] != scene_identity.scene_identity(None, a, None, None, None)["digest"]


def test_the_model_digest_counts_what_makes_the_map_and_nothing_else():
    """The digest (the map's provenance tag, and --resume's model check) ignored meta bad_bands, which change
    the map, and changed when a JSON tool rewrote -32768.0 as -32768, or meta held a numpy array, which do not."""
    import copy

    from hsi_engine.resume import model_digest

    model = F.tiny_model()
    base = model_digest(model)
    same = copy.deepcopy(model)
    same.meta["mean"] = np.asarray(model.meta["mean"])
    same.meta["std"] = [int(v) if float(v).is_integer() else v for v in model.meta["std"]]
    same.meta["std"][0] = float(round(model.meta["std"][0]))
    model.meta["std"][0] = float(round(model.meta["std"][0]))
    assert model_digest(same) == model_digest(model)
    same.meta["std"][0] = int(same.meta["std"][0])  # -32768.0 -> -32768
    assert model_digest(same) == model_digest(model)
    bad = copy.deepcopy(model)
    bad.meta["bad_bands"] = [3, 4]
    with_bad = model_digest(bad)
    assert with_bad != model_digest(model)
    bad.meta["bad_bands"] = [4, 3, 3]  # the same set of bands
    assert model_digest(bad) == with_bad
    bad.meta["bad_bands"] = []
    assert model_digest(bad) == model_digest(model)
    assert base != model_digest(model)  # (std[0] rounded: the normalisation did change)


def test_a_tile_whose_write_fails_is_not_recorded_done(tmp_path):
    from hsi_engine.resume import ResumableZarrWriter
    w = ResumableZarrWriter(tmp_path / "m.zarr", grid=(2, 2), fingerprint={"k": 1}, resume=False, height=32,
                            width=32, n_classes=3, block=16)
    def boom(*a, **k):
        raise OSError("disk full")
    w.write = boom
    with pytest.raises(OSError):
        w.write_tile(0, 1, 1, 0, 16, np.ones((16, 16), np.uint8))
    assert (w.done() == 0).all()


def test_a_partial_that_counted_fewer_scene_files_names_0_2_0_as_a_cause():
    """hsi-engine 0.2.0 did not count a scene's side files (its .aux.xml): its partial of such a scene was refused
    as "the scene's files changed" though the user changed nothing; the count is told, with the upgrade as a
    cause and the way to start over."""
    from hsi_engine.resume import describe_differences

    said = describe_differences({"scene": {"stat": [1, 100, 5]}}, {"scene": {"stat": [2, 180, 7]}})
    assert "the scene's files changed (size or modification time) since (1 files then, 2 now: if none changed, " \
           "hsi-engine 0.2.0 made the partial" in said and "pass overwrite=True (--overwrite) without resume" in said
    assert "0.2.0" not in describe_differences({"scene": {"stat": [1, 100, 5]}}, {"scene": {"stat": [1, 120, 7]}})
    assert "0.2.0" not in describe_differences({"scene": {"stat": [2, 100, 5]}}, {"scene": {"stat": [1, 80, 7]}})
