"""The tile plan on a real dask.distributed LocalCluster (2 worker processes): same map as one process, and a
worker SIGKILLed mid-run does not change it."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

import _scale_fixtures as F  # noqa: E402

import hsi_engine  # noqa: E402
from hsi_engine import cluster, dask_client  # noqa: E402
from hsi_engine.errors import SceneError  # noqa: E402
from hsi_engine.resume import partial_path, read_record  # noqa: E402

TILE = 16


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster")
    cube = F.ip_crop(48, 48)  # 3 x 3 tiles of 16
    scene = F.write_zarr(d / "scene.zarr", cube)
    model = F.save_tiny_model(d / "model", cube)
    ref = hsi_engine.classify(hsi_engine.open_scene(scene), str(model), tile=TILE, progress=False,
                              probabilities=True)
    assert len(np.unique(ref["labels"].values)) > 1  # a map that can tell a wrong tile
    return {"dir": d, "cube": cube, "scene": scene, "model": model, "ref": ref}


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = cluster.make_local_cluster(2, gpu=False)
        c = Client(lc)
    try:
        c.wait_for_workers(2, timeout=60)
        yield c
    finally:
        c.close()
        lc.close()


def test_two_worker_processes_give_the_single_process_map(case, client, tmp_path):
    out = tmp_path / "map.zarr"
    rep = cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, scheduler=client, probabilities="float32")
    assert rep.computed == rep.tiles == 9 and rep.skipped == 0 and rep.workers == 2
    assert len(set(rep.extra["worker_pids"])) >= 1 and os.getpid() not in rep.extra["worker_pids"]
    np.testing.assert_array_equal(F.read_classes(out), case["ref"]["labels"].values)
    import zarr

    g = zarr.open_group(str(out), mode="r")
    np.testing.assert_allclose(g["probabilities"][...], case["ref"]["probabilities"].values, rtol=1e-5, atol=1e-6)
    assert g.attrs["complete"] == 1 and not partial_path(out).exists()
    assert (read_record(out) == 1).all()
    # georeferencing travels like the single-process writer's
    import xarray as xr

    ds = xr.open_zarr(out)
    assert ds.rio.crs.to_epsg() == 32616 and "tiles_done" not in ds.variables


def test_a_scaled_integer_geotiff_with_nodata_gives_the_same_map_on_the_cluster(case, client, tmp_path):
    """A uint16 GeoTIFF with GDAL scale 1e-4 and nodata 0 (as sensors deliver reflectance): the driver and the
    workers read the same stored counts (a decoded driver once declared NaN nodata while the workers read
    integers, so no pixel was masked), and the map equals the single-process one, holes 0."""
    import rasterio
    from rasterio.transform import from_origin

    cube = np.clip(case["cube"], 1, None).astype(np.uint16)
    cube[:, 5, 7] = 0
    cube[:, 30, 41] = 0
    scene = tmp_path / "counts.tif"
    with rasterio.open(scene, "w", driver="GTiff", height=cube.shape[1], width=cube.shape[2], count=cube.shape[0],
                       dtype="uint16", nodata=0, crs="EPSG:32633", transform=from_origin(366000, 5810000, 30, 30),
                       tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(cube)
        dst.scales = [1e-4] * cube.shape[0]
    assert hsi_engine.open_scene(scene).dtype == np.uint16  # as stored
    model = F.save_tiny_model(tmp_path / "model", cube)
    single = hsi_engine.classify_to_file(scene, model, tmp_path / "one.zarr", tile=TILE)
    rep = cluster.run_to_file(scene, model, tmp_path / "two.zarr", tile=TILE, scheduler=client)
    want = F.read_classes(single)
    np.testing.assert_array_equal(F.read_classes(rep.path), want)
    assert want[5, 7] == 0 and want[30, 41] == 0 and (want == 0).sum() == 2
    np.testing.assert_array_equal(want, hsi_engine.classify(cube, hsi_engine.load_model(model), tile=TILE,
                                                            nodata=0, progress=False).values)


def test_a_damaged_geotiff_read_on_a_worker_is_the_same_scene_error_as_in_process(case, client, tmp_path):
    """The error came back as a bare ``Exception`` of its repr (GDAL's errors in its chain do not unpickle on the
    driver), so no HSIEngineError and a traceback on the command line; the message now holds GDAL's reason."""
    import rasterio
    from rasterio.transform import from_origin

    cube = case["cube"].astype(np.uint16)
    scene = tmp_path / "damaged.tif"
    with rasterio.open(scene, "w", driver="GTiff", height=48, width=48, count=cube.shape[0], dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(366000, 5810000, 30, 30), tiled=True,
                       blockxsize=16, blockysize=16) as dst:
        dst.write(cube)
    data = scene.read_bytes()
    scene.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SceneError, match=r"reading rows .*damaged\.tif failed \(RasterioIOError: Read failed\. "
                                         r".*TIFFReadEncodedTile"):
        cluster.run_to_file(scene, case["model"], tmp_path / "m.zarr", tile=TILE, scheduler=client)


def test_a_new_scene_at_a_reused_path_is_read_afresh_by_the_workers(case, client, tmp_path):
    """A long-lived cluster's workers kept the scene they opened by its path: a pipeline writing the next scene to
    the same scratch path got a map read through the old scene's metadata. Each run opens its own."""
    import shutil

    path = tmp_path / "scratch.zarr"
    shutil.copytree(case["scene"], path)
    cluster.run_to_file(path, case["model"], tmp_path / "a.zarr", tile=TILE, scheduler=client)
    shutil.rmtree(path)
    other = case["cube"][:, ::-1, :].copy()  # another scene of the same shape at the same path
    F.write_zarr(path, other)
    rep = cluster.run_to_file(path, case["model"], tmp_path / "b.zarr", tile=TILE, scheduler=client)
    want = hsi_engine.classify(hsi_engine.open_scene(path), str(case["model"]), tile=TILE, progress=False).values
    np.testing.assert_array_equal(F.read_classes(rep.path), want)


def test_workers_reading_through_a_block_cache_give_the_same_map(case, client, tmp_path):
    """Each worker keeps its own decoded-block cache (cache_blocks=9) and decoder threads (decoders=2); the map
    is the single process's."""
    out = tmp_path / "map.zarr"
    rep = cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, scheduler=client, cache_blocks=9,
                              decoders=2)
    assert rep.computed == rep.tiles == 9
    np.testing.assert_array_equal(F.read_classes(out), case["ref"]["labels"].values)


def test_a_worker_s_default_decoders_are_its_threads_not_the_host_s_cores(client):
    """Several workers on one host must not each start a decoder thread per core of the host."""
    nthreads = client.nthreads()
    got = {w: client.submit(cluster._worker_threads, workers=[w], pure=False).result(timeout=60) for w in nthreads}
    assert got == nthreads and all(n >= 1 for n in got.values())


def _heartbeat_failure_logged() -> bool:
    import logging

    lg = logging.getLogger("distributed.worker")
    failed = lg.makeRecord(lg.name, logging.ERROR, __file__, 0,
                           "Failed to communicate with scheduler during heartbeat.", (), None)
    other = lg.makeRecord(lg.name, logging.ERROR, __file__, 0, "Compute Failed", (), None)
    return lg.filter(failed), lg.filter(other)


def test_our_workers_drop_the_heartbeat_failure_of_a_closing_cluster(client):
    """On a loaded machine a worker still closing after a Ctrl-C when the scheduler went logged this with two
    tracebacks; our local workers drop that line once they are closing (while they run it is a stalled driver's
    clue, and kept)."""
    from types import SimpleNamespace

    from distributed.core import Status

    assert set(map(tuple, client.run(_heartbeat_failure_logged).values())) == {(True, True)}  # running: kept
    line = "Failed to communicate with scheduler during heartbeat."
    for status, dropped in ((Status.running, False), (Status.closing, True), (Status.closed, True)):
        assert dask_client.closing_heartbeat(SimpleNamespace(status=status), line) is dropped
    assert not dask_client.closing_heartbeat(SimpleNamespace(status=Status.closing), "Compute Failed")


def test_a_worker_builds_its_engine_with_the_run_s_spatial_precision(case):
    """The spatial precision travels in the task spec and keys the worker's engine cache (auto is decided on
    the worker's host, so a run that wants one map everywhere passes float32)."""
    model = hsi_engine.load_model(case["model"])
    spec = dict(store="unused", run=0, tile=TILE, scene=None, model=None, model_key="k", mean=None, std=None,
                nodata=None, backend="eager", precision="bfloat16", device="cpu", probabilities=False)
    kept = cluster._worker_engine(cluster.TaskSpec(**spec, spatial_precision="float32"), model)
    low = cluster._worker_engine(cluster.TaskSpec(**spec, spatial_precision="bfloat16"), model)
    assert (kept.spatial_precision, low.spatial_precision) == ("float32", "bfloat16") and kept is not low
    assert cluster._worker_engine(cluster.TaskSpec(**spec, spatial_precision="float32"), model) is kept
    # a long-lived worker given model after model keeps the last few engines, not every one
    for i in range(cluster._ENGINES_KEPT):
        cluster._worker_engine(cluster.TaskSpec(**dict(spec, model_key=f"other {i}")), model)
    assert len(cluster._CACHE["engines"]) == cluster._ENGINES_KEPT
    assert cluster._worker_engine(cluster.TaskSpec(**spec, spatial_precision="float32"), model) is not kept


def test_in_memory_scene_and_model_are_scattered(case, client, tmp_path):
    """A DataArray scene and an SSRN object (no paths) reach the workers too; GeoTIFF output via zarr."""
    da = F.dataarray(case["cube"].astype(np.float32))
    model = hsi_engine.load_model(case["model"])
    out = tmp_path / "map.tif"
    rep = cluster.run_to_file(da, model, out, tile=TILE, scheduler=client)
    np.testing.assert_array_equal(F.read_classes(out), case["ref"]["labels"].values)
    assert rep.computed == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "map.tif.aux.xml"]


def test_a_failed_run_leaves_nothing_on_the_caller_s_cluster(case, client, tmp_path):
    """A run on the caller's cluster that failed (a tile's bad value) kept its scattered scene and the failed task
    on the cluster as long as the client lived: the error's traceback held the run's futures, the client held the
    error. Two failed runs held two copies of the scene."""
    import gc

    from hsi_engine.errors import NonFiniteInputError

    def ours(dask_scheduler):
        return sorted(k for k in map(str, dask_scheduler.tasks) if k.startswith(("DataArray-", "hsi-tile-")))

    cube = case["cube"].astype(np.float32)
    cube[5, 20, 20] = 1e30
    for _ in range(2):
        with pytest.raises(NonFiniteInputError):
            cluster.run_to_file(F.dataarray(cube), case["model"], tmp_path / "x.tif", tile=TILE, scheduler=client)
    gc.collect()
    deadline = time.monotonic() + 10
    while client.run_on_scheduler(ours) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.run_on_scheduler(ours) == []


def test_worker_sigkilled_mid_run_still_gives_the_same_map(case, client, tmp_path):
    """... and no finished tile is computed twice: the driver drops each result as it arrives, so the scheduler
    has nothing to recompute when the worker that held it dies."""
    from distributed import get_task_stream

    out = tmp_path / "killed.zarr"
    result: dict = {}
    stream = get_task_stream(client)
    stream.__enter__()

    def run():
        try:
            result["report"] = cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, scheduler=client,
                                                   throttle_s=0.5)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            result["error"] = e

    th = threading.Thread(target=run)
    th.start()
    part = partial_path(out)
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and th.is_alive():
        try:
            done = int((read_record(part) > 0).sum())
        except Exception:  # noqa: BLE001 - record not created yet
            done = 0
        if done >= 4:  # both workers have finished tiles
            break
        time.sleep(0.05)
    assert 4 <= done < 9, f"kill must land mid-run (tiles done: {done})"
    pids = client.run(os.getpid)  # {worker address: pid}
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    th.join(120)
    assert not th.is_alive()
    stream.__exit__(None, None, None)
    assert "error" not in result, result.get("error")
    np.testing.assert_array_equal(F.read_classes(out), case["ref"]["labels"].values)
    assert (read_record(out) == 1).all()
    runs = [t["key"] for t in stream.data if str(t["key"]).startswith("hsi-tile-")]
    # each tile computed once: a finished tile whose result died with the worker before the driver fetched it is
    # rescheduled by dask, and then finds its tile written (it was computed twice, one CI run in ten)
    assert len(set(runs)) == 9 and len(runs) - result["report"].extra["tiles_reused"] == 9, runs
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    assert victim not in client.run(os.getpid).values()


def _kill_the_worker_mid_run(scene, model, out, *, allowed_failures: int | None = None) -> BaseException | None:
    """Run into ``out`` on a fresh one-worker local cluster, SIGKILL the worker once 2 tiles are written (while it
    sleeps in its next tile), and return what the run raised."""
    import contextlib

    import dask
    from distributed import Client

    config = dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}) \
        if allowed_failures is not None else contextlib.nullcontext()
    with config, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = cluster.make_local_cluster(1, gpu=False)
        c = Client(lc)
    result: dict = {}
    try:
        c.wait_for_workers(1, timeout=60)

        def run():
            try:
                cluster.run_to_file(scene, model, out, tile=TILE, scheduler=c, throttle_s=0.5)
            except BaseException as e:  # noqa: BLE001 - returned
                result["error"] = e

        th = threading.Thread(target=run)
        th.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if (read_record(partial_path(out)) > 0).sum() >= 2:
                    break
            except Exception:  # noqa: BLE001 - not created yet
                pass
            time.sleep(0.05)
        os.kill(next(iter(c.run(os.getpid).values())), signal.SIGKILL)
        th.join(120)
    finally:
        c.close()
        lc.close()
    return result.get("error")


def test_a_tile_that_kills_its_workers_is_one_clear_error_and_keeps_the_tiles(case, tmp_path):
    """distributed.KilledWorker (a worker killed while running the tile, allowed-failures times: an out-of-memory
    kill in practice) is a WorkerLostError naming the tile and the fix; the finished tiles stay for --resume."""
    from hsi_engine.errors import WorkerLostError

    out = tmp_path / "oom.zarr"
    err = _kill_the_worker_mid_run(case["scene"], case["model"], out, allowed_failures=0)
    assert isinstance(err, WorkerLostError), repr(err)
    assert "took down every worker" in str(err) and "--resume" in str(err) and "smaller --tile (now 16)" in str(err)
    assert "--memory-limit" in str(err) and "--workers" not in str(err)  # the cluster is the caller's: its limit
    done = read_record(partial_path(out))
    assert 2 <= (done > 0).sum() < 9 and not out.exists()


def test_losing_every_worker_that_held_a_scattered_scene_is_one_clear_error(case, tmp_path):
    """An in-memory scene is scattered to the workers; when the last worker holding it died the run ended in
    distributed's FutureCancelledError (a traceback, exit 1 in the CLI). It is a WorkerLostError with the fix."""
    from hsi_engine.errors import WorkerLostError

    out = tmp_path / "mem.tif"
    err = _kill_the_worker_mid_run(hsi_engine.open_scene(case["scene"]).load(), case["model"], out)
    assert isinstance(err, WorkerLostError), repr(err)
    assert "in-memory scene" in str(err) and "file path" in str(err)
    assert (read_record(partial_path(out)) > 0).sum() >= 2 and not out.exists()


def test_a_run_whose_own_workers_are_all_gone_stops_instead_of_waiting_for_ever(case, tmp_path):
    """--workers N: a worker killed again while its nanny restarts it stays lost, and distributed closes the nanny
    after its lost-worker-timeout; with the last one gone the run waited for ever (0 workers, no way to add any).
    It stops with a WorkerLostError that says so and how to go on, and keeps the tiles written for --resume."""
    import dask
    import psutil

    from hsi_engine.errors import WorkerLostError

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    out = tmp_path / "gone.zarr"
    result: dict = {}

    def run():
        try:
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, workers=1, progress=False,
                                throttle_s=0.5)
        except BaseException as e:  # noqa: BLE001 - returned
            result["error"] = e

    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
        th = threading.Thread(target=run, daemon=True)
        th.start()
        deadline = time.monotonic() + 120
        while th.is_alive() and time.monotonic() < deadline:
            try:
                started = (read_record(partial_path(out)) > 0).any()
            except Exception:  # noqa: BLE001 - not created yet
                started = False
            for p in me.children(recursive=True) if started else ():  # then the OOM killer: each new worker dies
                try:
                    if p.pid not in before and "spawn_main" in " ".join(p.cmdline()):
                        p.kill()
                except psutil.Error:
                    pass
            time.sleep(0.05)
        th.join(30)
    assert not th.is_alive(), "the run still waits with no worker left"
    err = result.get("error")
    assert isinstance(err, WorkerLostError), repr(err)
    assert "workers this run started (--workers) died and none was restarted" in str(err) and "--resume" in str(err)
    assert (read_record(partial_path(out)) > 0).sum() >= 1 and not out.exists()


def test_cli_workers_starts_a_local_cluster(case, tmp_path, capsys, caplog):
    from hsi_engine.cli import main

    out = tmp_path / "cli.zarr"
    with caplog.at_level(logging.INFO):
        assert main(["classify", str(case["scene"]), "--model", str(case["model"]), "--out", str(out), "--tile",
                     str(TILE), "--workers", "2"]) == 0
    np.testing.assert_array_equal(F.read_classes(out), case["ref"]["labels"].values)
    # closing our own cluster at the end of a clean run often logged "Removing worker ... caused the cluster to
    # lose already computed task(s)": nothing was lost
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and
                r.name.startswith("distributed")]


@pytest.mark.timeout(90)  # the old code waited forever
def test_a_scene_with_a_lazy_wavelength_coordinate_does_not_hang_the_workers(case, client, tmp_path):
    """A zarr scene with a per-band ``wavelength`` coordinate (as xarray writes one) opened lazily on each worker:
    converting it to nm computed a dask array on the cluster from inside a tile task, and with every worker's one
    thread busy the run waited forever ('no tile finished', 0 %). Coordinates are read when the scene opens."""
    import xarray as xr

    da = F.dataarray(case["cube"]).assign_coords(wavelength=("band", np.linspace(400.0, 2500.0,
                                                                                 case["cube"].shape[0])))
    da["wavelength"].attrs["units"] = "nm"
    scene = tmp_path / "wl.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        da.to_dataset().chunk({"band": -1, "y": TILE, "x": TILE}).to_zarr(scene, zarr_format=3, consolidated=False)
    with xr.open_dataset(scene, engine="zarr", chunks={}) as raw:
        assert hasattr(raw["wavelength"].data, "dask")  # what a worker opening the scene converts to nm
    out = tmp_path / "wl.tif"
    rep = cluster.run_to_file(scene, case["model"], out, tile=TILE, scheduler=client)
    assert rep.computed == rep.tiles == 9
    np.testing.assert_array_equal(F.read_classes(out), case["ref"]["labels"].values)


def test_workers_and_scheduler_are_exclusive(case, tmp_path, capsys):
    with pytest.raises(ValueError, match="not both"):
        cluster.run_to_file(case["scene"], case["model"], tmp_path / "x.zarr", tile=TILE, workers=2,
                            scheduler="tcp://127.0.0.1:1")
    from hsi_engine.cli import main

    assert main(["classify", str(case["scene"]), "--model", str(case["model"]), "--out", str(tmp_path / "x.tif"),
                 "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    # the command line spells its own options, not Python's (it said "give workers= (--workers, ...")
    assert "error: give --workers (start a local cluster) or --scheduler (join one), not both" in \
        capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unreachable_scheduler_is_a_clear_error(case, tmp_path, capsys, monkeypatch):
    from hsi_engine.cli import main

    import dask

    from hsi_engine import dask_client

    monkeypatch.setattr(dask_client, "_REFUSED_GRACE_S", 0.2)  # the refused port's retries (1 s here): not waited out
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        assert main(["classify", str(case["scene"]), "--model", str(case["model"]), "--out",
                     str(tmp_path / "x.zarr"), "--tile", str(TILE), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_chunk_side_rounds_tiles_to_chunk_multiples():
    assert cluster.chunk_side(16) == 16 and cluster.chunk_side(20) == 32 and cluster.chunk_side((1, 40)) == 48


def test_worker_tile_leaves_bad_bands_out_of_the_mask():
    """compute_tile with nodata_bands (a TaskSpec's, from the scene's bbl): only the hole in a good band is
    nodata, on the host and the device alike."""
    from hsi_engine.fused import FusedSSRN
    from hsi_engine.tiles import plan_tiles

    from test_runner import _cube, _model

    cube = _cube(np.float32, h=12, w=12, seed=5)
    cube[0] = -1.0
    cube[:, 3, 4] = -1.0
    engine = FusedSSRN(_model(), backend="eager")
    good = np.arange(1, cube.shape[0])
    (t,) = plan_tiles(12, 12, 12, 3)
    kw = dict(halo=3, mean=None, std=None, nodata=-1.0, probabilities=False, nodata_bands=good)
    host = cluster.compute_tile(cube, t, engine, normalise_on="host", **kw)[0]
    dev = cluster.compute_tile(cube, t, engine, normalise_on="device", **kw)[0]
    np.testing.assert_array_equal(host, dev)
    assert set(zip(*np.nonzero(host == 0))) == {(3, 4)}


@pytest.mark.parametrize("nodata", [None, float("nan")])
def test_worker_tile_normalised_on_the_device_equals_the_host(nodata):
    """compute_tile (a worker's tile) normalises on the device for CUDA engines: the same map, probabilities,
    nodata masking and non-finite error as on the host (on CPU the "device" is the CPU)."""
    from hsi_engine.errors import NonFiniteInputError
    from hsi_engine.fused import FusedSSRN
    from hsi_engine.tiles import plan_tiles

    from test_runner import _cube, _model

    cube = _cube(np.float32, h=19, w=23, seed=4)
    cube[2, 5, 6] = np.nan
    mean, std = np.nanmean(cube, axis=(1, 2)).astype(np.float64), np.nanstd(cube, axis=(1, 2)).astype(np.float64)
    engine = FusedSSRN(_model(), backend="eager")
    for t in plan_tiles(19, 23, 8, 3):
        kw = dict(halo=3, mean=mean, std=std, nodata=nodata, probabilities=True)
        ry0, ry1, rx0, rx1 = t.read
        if nodata is None and ry0 <= 5 < ry1 and rx0 <= 6 < rx1:  # in the window, halo included
            for mode in ("host", "device"):
                with pytest.raises(NonFiniteInputError, match=r"pixel \(y=5, x=6\) is nan"):
                    cluster.compute_tile(cube, t, engine, normalise_on=mode, **kw)
            continue
        host = cluster.compute_tile(cube, t, engine, normalise_on="host", **kw)
        dev = cluster.compute_tile(cube, t, engine, normalise_on="device", **kw)
        for a, b in zip(host, dev):
            assert np.array_equal(a, b, equal_nan=True)
        if t.y0 <= 5 < t.y1 and t.x0 <= 6 < t.x1:
            assert host[0][5 - t.y0, 6 - t.x0] == 0 and np.isnan(host[1][:, 5 - t.y0, 6 - t.x0]).all()


_CTRL_C_SCRIPT = """
import sys
from hsi_engine import cluster
if __name__ == "__main__":
    try:
        cluster.run_to_file(sys.argv[1], sys.argv[2], sys.argv[3], tile=16, workers=2, throttle_s=0.5,
                            progress=False)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
"""


def test_ctrl_c_on_a_local_cluster_run_is_quiet_and_keeps_the_tiles(case, tmp_path):
    """A terminal's Ctrl-C signals the whole process group: each worker printed a 30-line KeyboardInterrupt
    traceback while the driver was already stopping. Workers now ignore SIGINT; the driver closes them.

    The signal lands mid-run: it is sent as soon as the first tile is recorded (polled every 0.05 s), and each of
    the 9 tiles sleeps throttle_s (0.5 s) before its write, on 2 one-thread workers: 8 tiles left then are
    about 2 s of run left."""
    import subprocess
    import sys

    script = tmp_path / "run.py"  # a file: spawned workers re-import the main module
    script.write_text(_CTRL_C_SCRIPT)
    out = tmp_path / "map.zarr"
    proc = subprocess.Popen([sys.executable, str(script), str(case["scene"]), str(case["model"]), str(out)],
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if (read_record(partial_path(out)) > 0).any():
                break
        except Exception:  # noqa: BLE001 - not created yet
            pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert len(err.splitlines()) <= 3, err
    assert (read_record(partial_path(out)) > 0).any() and not out.exists()


def test_more_local_workers_than_cores_is_warned(caplog, monkeypatch):
    from hsi_engine import dask_client, runner

    monkeypatch.setattr(dask_client, "_started", lambda n, start: n)  # the check comes before any process starts
    monkeypatch.setattr(runner, "_cores", lambda: 2)
    with caplog.at_level(logging.WARNING, "hsi_engine.cluster"):
        assert cluster.make_local_cluster(3, gpu=False) == 3
        assert "3 workers on 2 usable cores" in caplog.text and "--workers 2" in caplog.text
        caplog.clear()
        cluster.make_local_cluster(2, gpu=False)
        assert caplog.text == ""


def test_a_run_stalled_by_paused_workers_says_so_in_the_log(case, tmp_path, monkeypatch, caplog):
    """Workers dask paused for memory (torch and the model alone passed 80 % of a small limit) hung the run
    silently: no tile finishes, and a pipeline's log showed nothing. The log now says no tile finished, and why;
    the run finishes once the workers resume."""
    import logging
    import sys

    import dask
    from distributed import Client

    from hsi_engine import runner

    monkeypatch.setattr(sys, "stderr", type("NotATerminal", (), {"isatty": staticmethod(lambda: False),
                                                                 "write": staticmethod(lambda s: len(s)),
                                                                 "flush": staticmethod(lambda: None)})())
    monkeypatch.setattr(runner, "LOG_PROGRESS_EVERY_S", 0.5)
    memory = {"distributed.worker.memory.pause": 0.001, "distributed.worker.memory.target": False,
              "distributed.worker.memory.spill": False, "distributed.worker.memory.terminate": False}
    with dask.config.set(memory), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = cluster.make_local_cluster(1, gpu=False)
        c = Client(lc)
    out = tmp_path / "stalled.zarr"
    result: dict = {}
    try:
        c.wait_for_workers(1, timeout=60)
        with caplog.at_level(logging.INFO, "hsi_engine"):
            th = threading.Thread(target=lambda: result.update(rep=cluster.run_to_file(
                case["scene"], case["model"], out, tile=TILE, scheduler=c)))
            th.start()
            deadline = time.monotonic() + 60
            stall = []
            while not stall and time.monotonic() < deadline:
                time.sleep(0.1)
                stall = [r.getMessage() for r in caplog.records if "no tile finished" in r.getMessage()]
            assert stall and "every worker (1) is paused" in stall[0] and "memory" in stall[0], stall

            def resume(dask_worker):
                dask_worker.memory_manager.memory_pause_fraction = 0.99  # dask's monitor then resumes it

            c.run(resume)
            th.join(120)
    finally:
        c.close()
        lc.close()
    assert result["rep"].computed == 9
    np.testing.assert_array_equal(F.read_classes(out), case["ref"]["labels"].values)


_START_SIGNAL_SCRIPT = """
import os, signal, sys, threading
import distributed
real = distributed.LocalCluster.__init__
delay, mode = float(sys.argv[5]), sys.argv[6]

def init(self, *a, **k):
    if mode == "group":  # a terminal's Ctrl-C: SIGINT to the process group, starting workers included
        threading.Timer(delay, os.killpg, (os.getpgid(0), signal.SIGINT)).start()
    else:
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM)).start()  # mid-start
    real(self, *a, **k)

distributed.LocalCluster.__init__ = init
from hsi_engine.cli import run
sys.argv = ["hsi-engine", "classify", sys.argv[1], "--model", sys.argv[2], "--out", sys.argv[3], "--tile", "16",
            "--workers", sys.argv[4]]
run()
"""


def test_a_sigterm_while_the_local_cluster_starts_stops_the_run_cleanly(case, tmp_path):
    """A SIGTERM (or Ctrl-C) while --workers' cluster was starting left half-started nannies: exit 130 followed by
    30-60 lines of 'Exception ignored in atexit callback', 'Nanny failed to start' tracebacks. The signal is
    held until the cluster is up, then stops the run, which closes it."""
    import subprocess
    import sys

    out = tmp_path / "m.tif"
    proc = subprocess.run([sys.executable, "-c", _START_SIGNAL_SCRIPT, str(case["scene"]), str(case["model"]),
                           str(out), "1", "0.3", "process"], capture_output=True, text=True, timeout=240,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == "hsi-engine classify: interrupted", proc.stderr[-3000:]
    for noise in ("Traceback", "Exception ignored", "Task exception", "Nanny failed"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    # the signal lands once the cluster is up: before any tile (nothing kept) or after some (kept for --resume)
    assert not out.exists() and (not partial_path(out).exists() or (read_record(partial_path(out)) > 0).sum() >= 1)


def test_a_terminal_ctrl_c_while_the_local_cluster_starts_is_an_interruption(case, tmp_path):
    """A terminal's Ctrl-C goes to the whole process group: the starting worker processes died of it (before
    they ignore SIGINT), the start failed, and the run said 'error: could not start a local dask cluster ...
    Nanny failed to start worker process' (exit 2) after the user had stopped it. It is an interruption (130);
    the workers' own tracebacks, printed by those processes, are left."""
    import subprocess
    import sys

    out = tmp_path / "m.tif"
    proc = subprocess.run([sys.executable, "-c", _START_SIGNAL_SCRIPT, str(case["scene"]), str(case["model"]),
                           str(out), "2", "0.5", "group"], capture_output=True, text=True, timeout=240,
                          cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == "hsi-engine classify: interrupted", proc.stderr[-3000:]
    assert "could not start a local dask cluster" not in proc.stderr
    # the signal lands once the cluster is up: before any tile (nothing kept) or after some (kept for --resume)
    assert not out.exists() and (not partial_path(out).exists() or (read_record(partial_path(out)) > 0).sum() >= 1)


def test_a_stall_from_dying_workers_is_told_apart(client):
    """A worker killed for memory over and over (its nanny restarts it) stalled a run with log lines that gave no
    reason, or said 'paused'. Workers that came or went since the last line are named as dying."""
    status = cluster._ClusterStatus(client)
    assert status() is None  # two healthy workers, the same ones
    client.restart()  # every worker replaced, as a nanny does after an out-of-memory kill
    client.wait_for_workers(2, timeout=60)
    why = status()
    assert why is not None and why.startswith("workers are dying and being restarted (most often out of memory")
    came_or_went = re.search(r"(\d+) worker\(s\) came or went", why)  # 4 (2 gone, 2 new), fewer if counted mid-way
    assert came_or_went and int(came_or_went.group(1)) >= 2, why
    assert status() is None  # settled


def test_a_write_that_fails_mid_run_keeps_the_tiles_for_resume(case, tmp_path, monkeypatch):
    """A full disk late in an in-process .zarr run (an OutputError from the writer) was taken for bad input: the
    partial store, with every tile written so far, was deleted. It is kept, and --resume finishes the map."""
    from hsi_engine.errors import OutputError
    from hsi_engine.resume import ResumableZarrWriter

    original = ResumableZarrWriter.write_tile
    calls = []

    def fails_on_the_fourth(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OutputError("cannot write the class map: the file system is full (test)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ResumableZarrWriter, "write_tile", fails_on_the_fourth)
    out = tmp_path / "map.zarr"
    with pytest.raises(OutputError, match="file system is full"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, progress=False)
    assert partial_path(out).is_dir() and not out.exists()
    monkeypatch.setattr(ResumableZarrWriter, "write_tile", original)
    cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, progress=False)
    import xarray as xr

    with xr.open_zarr(out) as ds:  # read here, not on the module's cluster if it is dask's default
        np.testing.assert_array_equal(ds["classes"].compute(scheduler="threads").values,
                                      case["ref"]["labels"].values)


def test_a_raw_write_error_from_a_worker_is_one_output_error_and_keeps_the_tiles(case, tmp_path, monkeypatch):
    """A worker's failed write reached the command line as a bare OSError (a traceback, exit 1, after 'run
    interrupted'): it is an OutputError naming the failure and the kept tiles. (Raised here in-process, as a
    worker's write error arrives: a plain OSError.)"""
    import errno

    from hsi_engine.errors import OutputError
    from hsi_engine.resume import ResumableZarrWriter

    original = ResumableZarrWriter.write_tile
    calls = []

    def fails_on_the_fourth(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(errno.EFBIG, "File too large")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ResumableZarrWriter, "write_tile", fails_on_the_fourth)
    out = tmp_path / "map.zarr"
    with pytest.raises(OutputError, match=r"a file grew past .*File too large.* keeps the tiles written so far"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, progress=False)
    assert partial_path(out).is_dir()
