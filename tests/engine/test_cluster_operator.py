"""What a cluster's operator meets: workers that cannot run the driver's map (another hsi-engine, no hsi_engine or
torch, no CUDA, no shared filesystem) refused before any tile, naming the worker and the fix; errors that cross
back from a worker as their own class; a run whose every worker dask paused for memory told and stopped; a scene
persisted on the cluster read inside a task on a fresh worker process; a scheduler= that is no address refused.
Real distributed.LocalClusters (in-process where the test allows; worker processes where it is about them)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import pickle
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

import _scale_fixtures as F  # noqa: E402

import hsi_engine  # noqa: E402
from hsi_engine import cluster  # noqa: E402
from hsi_engine.errors import (ClusterUsageError, HSIEngineError, OutputError, SceneNotFoundError,  # noqa: E402
                               WorkerEnvironmentError, WorkerLostError)
from hsi_engine.resume import MAP_VERSION  # noqa: E402

pytestmark = pytest.mark.timeout(120)

TILE = 16


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("operator")
    cube = F.ip_crop(32, 32)  # 2 x 2 tiles of 16
    return {"dir": d, "scene": F.write_zarr(d / "scene.zarr", cube), "model": F.save_tiny_model(d / "model", cube)}


@contextlib.contextmanager
def local_cluster(*, processes: bool, preload: list[str] | None = None, **kw) -> Iterator:
    """A real LocalCluster of one single-threaded worker and its client."""
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = LocalCluster(n_workers=1, threads_per_worker=1, processes=processes, dashboard_address=None,
                          preload=preload or [], **kw)
        client = Client(lc)
    try:
        client.wait_for_workers(1, timeout=60)
        yield client
    finally:
        client.close()
        lc.close()


@pytest.fixture(scope="module")
def inproc():
    with local_cluster(processes=False) as client:
        yield client


def _left(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name) and not p.name.endswith("lock"))


# ---------------------------------------------------------------------------------------------------------------
# D1: another hsi-engine on a worker


def test_a_worker_running_another_map_version_is_refused_before_any_tile(case, tmp_path):
    """A worker importing another copy of hsi-engine (its MAP_VERSION 99) wrote its tiles into the driver's map
    (3,424 of 21,025 pixels differed, exit 0, tags naming the driver's version). Refused before any tile, naming
    the worker and both versions; nothing is left."""
    out = tmp_path / "skew.tif"
    with local_cluster(processes=True) as client:
        def other_copy() -> str:
            import hsi_engine.cluster as c

            c.MAP_VERSION = 99  # as a worker whose hsi-engine is another checkout
            return c.__file__

        client.run(other_copy)
        (worker,) = client.scheduler_info()["workers"]
        with pytest.raises(WorkerEnvironmentError) as err:
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, scheduler=client, progress=False)
    msg = str(err.value)
    version = hsi_engine.__version__
    assert msg.startswith(f"worker {worker} runs hsi-engine {version} (map version 99, from "), msg
    assert f"the driver hsi-engine {version} (map version {MAP_VERSION}, from " in msg
    assert f"install hsi-engine {version} (the driver's version" in msg
    assert _left(out) == []


def test_a_task_on_a_worker_that_joined_with_another_hsi_engine_refuses_to_compute(case, inproc, tmp_path):
    """A worker that joins after the run's check: each task carries the driver's versions and refuses a worker
    whose differ, naming it, before computing or writing anything."""
    spec = cluster.TaskSpec(store=str(tmp_path / "nowhere.partial"), run=1, tile=TILE, scene=str(case["scene"]),
                            model=str(case["model"]), model_key="k", mean=None, std=None, nodata=None,
                            backend="eager", precision="float32", device="cpu", probabilities=False,
                            engine_version=hsi_engine.__version__, map_version=MAP_VERSION + 1)
    tile = hsi_engine.plan_tiles(32, 32, TILE, 2).tiles[0]
    with pytest.raises(WorkerEnvironmentError, match=r"runs hsi-engine .* the driver hsi-engine .*\(map version "
                                                     f"{MAP_VERSION + 1}\\): its tiles would not be") as err:
        inproc.submit(cluster._tile_task, spec, tile, pure=False).result(timeout=60)
    (worker,) = inproc.scheduler_info()["workers"]
    w = re.escape(worker)
    assert str(err.value).startswith(f"worker {worker} runs"), err.value
    # the same spec from a driver of this version computes (here: finds no store, which is named)
    same = cluster.TaskSpec(**{**spec.__dict__, "map_version": MAP_VERSION})
    with pytest.raises(OutputError, match=f"worker {w} does not see the output store .*shared "
                                          "filesystem"):
        inproc.submit(cluster._tile_task, same, tile, pure=False).result(timeout=60)


# ---------------------------------------------------------------------------------------------------------------
# D2: workers without hsi_engine or torch, or without CUDA

_BLOCK = """
import sys
BLOCK = {blocked!r}

class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _Blocker())
for m in list(sys.modules):
    if m.split(".")[0] in BLOCK:
        del sys.modules[m]
"""


@pytest.mark.parametrize("blocked, said", [
    (("hsi_engine", "ssrn", "kernels", "torch"),
     "cannot import hsi_engine (ModuleNotFoundError: No module named 'hsi_engine'): install hsi-engine "),
    (("torch",), "cannot import torch (not installed there), which the tiles need: install hsi-engine "),
], ids=["no-hsi_engine", "no-torch"])
def test_a_worker_that_cannot_import_the_engine_is_named_before_any_tile(case, tmp_path, blocked, said):
    """A worker whose environment lacks hsi_engine died unpickling the first task (a real `dask worker` with a
    nanny: the driver then waited for ever, 'the cluster has no workers now'; a LocalCluster: an error blaming
    memory). One lacking torch failed each task with 'the package torch is missing', as if on the driver. Both are
    named before any tile: the worker, what it cannot import, and the fix; the worker stays up."""
    script = tmp_path / "block_import.py"
    script.write_text(_BLOCK.format(blocked=set(blocked)))
    out = tmp_path / "noimport.tif"
    with local_cluster(processes=True, preload=[str(script)]) as client:
        (worker,) = client.scheduler_info()["workers"]
        for scene in (case["scene"], hsi_engine.open_scene(case["scene"]).load()):  # a path, then scattered
            with pytest.raises(WorkerEnvironmentError) as err:
                cluster.run_to_file(scene, case["model"], out, tile=TILE, scheduler=client, progress=False)
            assert str(err.value).startswith(f"worker {worker} {said}"), err.value
            assert "in the workers' environment and restart them" in str(err.value)
            assert list(client.scheduler_info()["workers"]) == [worker]  # not killed by a task it could not read
    assert _left(out) == []


def test_an_import_error_in_a_task_names_the_worker_and_the_fix(case, monkeypatch, tmp_path):
    """A worker that joins later without torch: its task's ImportError says it is that worker's environment (it
    read as the driver's: 'the package torch is missing')."""
    def no_torch(*a, **k):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(cluster, "_tile_work", no_torch)
    spec = cluster.TaskSpec(store=str(tmp_path), run=1, tile=TILE, scene=None, model=None, model_key="k", mean=None,
                            std=None, nodata=None, backend="eager", precision="float32", device=None,
                            probabilities=False, engine_version="0.2.0")
    with pytest.raises(WorkerEnvironmentError, match=r"^this process cannot import torch \(ModuleNotFoundError: No "
                                                     r"module named 'torch'\): install it in the workers' "
                                                     r"environment \(the driver runs hsi-engine 0.2.0"):
        cluster._tile_task(spec, hsi_engine.plan_tiles(16, 16, TILE, 2).tiles[0])


def test_device_cuda_on_workers_without_cuda_names_the_workers(case, inproc, tmp_path):
    """device='cuda' on a CPU-only cluster failed with 'this torch ... sees no CUDA device', which read as about
    the driver. The workers are named, before any tile."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host's workers see a CUDA device")
    (worker,) = inproc.scheduler_info()["workers"]
    w = re.escape(worker)
    out = tmp_path / "cuda.zarr"
    with pytest.raises(WorkerEnvironmentError, match=rf"^worker {w} sees no CUDA device\(s\) \(its torch .*\) "
                                                     r"for device='cuda': leave the device out"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, scheduler=inproc, device="cuda",
                            progress=False)
    assert _left(out) == []
    # and a task (a worker that joined later) says whose torch sees none
    spec = cluster.TaskSpec(store="", run=1, tile=TILE, scene=None, model=str(case["model"]), model_key="cuda-k",
                            mean=None, std=None, nodata=None, backend="eager", precision="float32", device="cuda",
                            probabilities=False)
    with pytest.raises(WorkerEnvironmentError, match=rf"^worker {w} cannot run device='cuda': .*sees no CUDA"):
        inproc.submit(cluster._worker_engine, spec, None, pure=False).result(timeout=60)


def test_a_cluster_without_workers_is_named_for_an_in_memory_scene(case, tmp_path):
    """An in-memory scene on a cluster with no worker: a bare TimeoutError('No valid workers found') from
    client.scatter after 30 s. An HSIEngineError that says so and what to do."""
    import dask

    scene = hsi_engine.open_scene(case["scene"]).load()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), local_cluster(processes=False) as client:
        client.cluster.scale(0)
        deadline = time.monotonic() + 30
        while client.scheduler_info()["workers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(HSIEngineError, match=r"^the cluster has no worker to take the in-memory scene .*start "
                                                 r"some \(dask worker <scheduler address>\)"):
            cluster.run_to_file(scene, case["model"], tmp_path / "m.zarr", tile=TILE, scheduler=client,
                                progress=False)
    assert _left(tmp_path / "m.zarr") == []


# ---------------------------------------------------------------------------------------------------------------
# D3: errors crossing back from a worker; no shared filesystem


def _error_classes() -> list:
    classes = {}
    for name in ("hsi_engine.errors", "ssrn.errors", "ssrn.config", "ssrn.devices", "ssrn.data", "ssrn.keras",
                 "ssrn.train", "kernels.dispatch"):
        with contextlib.suppress(ImportError):
            for c in vars(importlib.import_module(name)).values():
                if inspect.isclass(c) and issubclass(c, BaseException) and \
                        c.__module__.split(".")[0] in ("hsi_engine", "ssrn", "kernels"):
                    classes[f"{c.__module__}.{c.__qualname__}"] = c
    return [pytest.param(c, id=n) for n, c in sorted(classes.items())]


@pytest.mark.parametrize("cls", _error_classes())
def test_every_error_class_crosses_back_from_a_worker_as_itself(cls):
    """distributed sends a task's error through pickle with tblib's exception reducers; SceneNotFoundError (a
    ValueError and a FileNotFoundError) could not be rebuilt ('ValueError.__new__(SceneNotFoundError) is not
    safe'), and the caller got a bare Exception of its repr (a traceback and exit 1 on the command line). Plain
    pickle too (a process pool's)."""
    import tblib.pickling_support
    from distributed.protocol.pickle import dumps, loads

    args = ("what was found, and the fix",)
    if "message" in inspect.signature(cls.__init__).parameters:  # (field, message, found): InvalidConfig's
        args = (None, *args)
    try:
        raise cls(*args)
    except BaseException as e:  # noqa: BLE001
        back = pickle.loads(pickle.dumps(e))  # plain pickle (multiprocessing, a process pool)
        assert type(back) is cls and str(back) == "what was found, and the fix"
        tblib.pickling_support.install(e)  # as distributed does for a task's error
        for back in (pickle.loads(pickle.dumps(e)), loads(dumps(e))):
            assert type(back) is cls and str(back) == "what was found, and the fix"


def test_a_scene_not_found_on_a_worker_reaches_the_caller_as_itself(inproc):
    with pytest.raises(SceneNotFoundError, match="scene /no/such/scene.zarr does not exist") as err:
        inproc.submit(hsi_engine.open_scene, "/no/such/scene.zarr", pure=False).result(timeout=60)
    assert isinstance(err.value, FileNotFoundError)


def test_a_worker_that_does_not_see_the_output_or_the_scene_is_told_of_the_shared_filesystem(case, inproc, tmp_path,
                                                                                          monkeypatch):
    """A worker on a host without the driver's filesystem failed each tile with 'output store ...partial
    disappeared', or a bare Exception of SceneNotFoundError's repr. The pre-flight asks each worker whether it
    sees the store this run made and the scene, and names the shared filesystem a scheduler= run needs."""
    real = cluster._worker_identity
    (worker,) = inproc.scheduler_info()["workers"]
    w = re.escape(worker)
    out = tmp_path / "map.tif"
    monkeypatch.setattr(cluster, "_worker_identity", lambda store, *a: real(store + ".elsewhere", *a))
    with pytest.raises(WorkerEnvironmentError, match=rf"^worker {w} does not see the output store "
                                                     rf".*map.tif.partial that this run made \(not there for it\): "
                                                     r"a cluster run .* at the same paths \(a shared filesystem"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, scheduler=inproc, progress=False)
    assert _left(out) == []
    monkeypatch.setattr(cluster, "_worker_identity", lambda store, scene, *a: real(store, scene + ".elsewhere", *a))
    with pytest.raises(WorkerEnvironmentError, match=rf"^worker {w} does not see the scene .*scene.zarr, which "
                                                     "the driver read at that path: a cluster run"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, scheduler=inproc, progress=False)
    # a task (a worker that joined later) that cannot open the scene's path says the same
    spec = cluster.TaskSpec(store="", run=1, tile=TILE, scene=str(tmp_path / "gone.zarr"), model=None, model_key="k",
                            mean=None, std=None, nodata=None, backend="eager", precision="float32", device=None,
                            probabilities=False, token="t")
    with pytest.raises(WorkerEnvironmentError, match=rf"^worker {w} does not see the scene \(scene .*gone.zarr "
                                                     r"does not exist\), which the driver read at that path"):
        inproc.submit(cluster._worker_scene, spec, None, pure=False).result(timeout=60)


# ---------------------------------------------------------------------------------------------------------------
# D4: every worker paused for memory


def test_a_run_whose_workers_all_stay_paused_is_told_and_stopped(case, tmp_path, monkeypatch, caplog):
    """Every worker paused by dask for memory (the model and torch alone passed 80 % of a small limit): the run
    hung for ever, silently with progress=False or on a terminal (only the no-terminal log lines said why). A
    WARNING says why whatever the display, and a run on its own cluster whose every worker stays paused
    (cluster.PAUSED_STOP_S, 10 min) with no tile finishing stops with one error naming dask's pause threshold."""
    import dask

    from hsi_engine import runner

    monkeypatch.setattr(runner, "LOG_PROGRESS_EVERY_S", 0.3)
    monkeypatch.setattr(cluster, "PAUSED_STOP_S", 1.5)
    memory = {"distributed.worker.memory.pause": 0.001, "distributed.worker.memory.target": False,
              "distributed.worker.memory.spill": False, "distributed.worker.memory.terminate": False}
    out = tmp_path / "paused.zarr"
    with dask.config.set(memory), local_cluster(processes=False, memory_limit="2GB") as client:
        deadline = time.monotonic() + 30
        while any(w.get("status") != "paused" for w in client.scheduler_info()["workers"].values()):
            assert time.monotonic() < deadline, "dask did not pause the worker"
            time.sleep(0.05)
        with caplog.at_level(logging.WARNING, "hsi_engine"), \
                pytest.raises(WorkerLostError, match=r"^every worker \(1\) stayed paused by dask for memory for \d+ s "
                                                     r"and no tile finished, so the run was stopped: .*distributed."
                                                     r"worker.memory.pause, 0.1 % of their 1,907 MiB limit.*rerun with "
                                                     r"--resume"):
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, scheduler=client, progress=False)
    told = [r.getMessage() for r in caplog.records if "no tile finished in the last" in r.getMessage()]
    assert told and "0 of 4 tiles done; every worker (1) is paused" in told[0], caplog.text
    assert _left(out) == []  # no tile written: nothing kept


# ---------------------------------------------------------------------------------------------------------------
# D5: a persisted scene classified inside a task on a fresh worker process


def test_a_task_on_a_fresh_worker_process_reads_a_persisted_scene(case):
    """classify(scene.persist()) submitted to a worker process failed there ('persist()-ed ... cannot be fetched
    here') until some task on that worker had called distributed.get_client(): the engine looked only for a
    default client, which a worker process has only from then on (and its reader threads, unlike the task's own,
    do not carry the worker). A task on a fresh worker process reads the persisted scene as classify does: a
    window reader made in the task, read from another thread."""
    scene = hsi_engine.open_scene(case["scene"])
    ref = scene.values[:, 3:21, 5:30]

    def read_in_a_task(persisted):
        from concurrent.futures import ThreadPoolExecutor

        from hsi_engine.dask_client import task_thread_released
        from hsi_engine.runner import window_reader

        read = window_reader(persisted)
        with task_thread_released(), ThreadPoolExecutor(1) as readers:  # (as classify's reader threads)
            return readers.submit(read, 3, 21, 5, 30).result()

    with local_cluster(processes=True) as client:
        persisted = scene.persist()  # (held here: its futures, released with it, are the scene's chunks)
        got = client.submit(read_in_a_task, persisted, pure=False).result(timeout=60)
    np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------------------------------------------------------
# D9


@pytest.mark.parametrize("scheduler", [12345, True, 1.5, b"tcp://127.0.0.1:8786"])
def test_a_scheduler_that_is_no_address_is_refused_before_the_scene_is_read(tmp_path, scheduler):
    """scheduler=12345 was read as an address after the scene was opened: 'cannot reach the dask scheduler at
    12345 (TypeError ...)'. An OptionError up front (the scene here does not exist: not read)."""
    with pytest.raises(ClusterUsageError, match=r"^scheduler must be the scheduler's address as text.*, a "
                                                r"distributed.Client or a cluster object"):
        cluster.run_to_file(tmp_path / "none.zarr", tmp_path / "model", tmp_path / "m.zarr", scheduler=scheduler)
