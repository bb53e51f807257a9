"""The engine's tile plan on dask.distributed, and resumable runs (in-process or on a cluster).

Task granularity: one task per output tile. The tile side is rounded up to a multiple of 16 and the output
zarr is chunked with exactly that side, so a task owns one chunk of every output array: workers write their
tiles straight into the output store (region writes of whole chunks, no read-modify-write shared between
tasks) and then set the tile's cell of the completion record (see :mod:`hsi_engine.resume`). Any tile size
gives the same map (the engine's exactness invariant), so the rounding does not change the result. The driver
keeps a bounded window of tasks submitted (a few per worker thread, at least 512), refilled in plan order as
tiles finish, so a scene of 150,000 tiles does not flood the scheduler.

Workers. ``workers=N``: a local cluster, CPU workers as ``LocalCluster(n_workers=N, threads_per_worker=1,
processes=True)``; with CUDA, one worker per GPU (``dask_cuda.LocalCUDACluster`` when installed, else one
nanny per GPU with ``CUDA_VISIBLE_DEVICES`` set), each with worker resource ``GPU=1``. ``scheduler=ADDRESS``
(or a ``distributed.Client``): join a running cluster; when its workers advertise a ``GPU`` resource the
tasks ask for ``GPU=1``. Resources are given to ``client.submit`` directly, never through
``dask.annotate`` (graph optimisation drops annotations, dask#7036).

The model is loaded once per worker process: a per-process cache keyed by the model's digest holds the
built :class:`~hsi_engine.fused.FusedSSRN` (a model directory is loaded from its path on the worker; an
in-memory ``SSRN`` is scattered once). A worker that dies (killed, out of memory) loses only its running
task: the scheduler reruns it elsewhere and the nanny restarts the worker, which reloads the model on its
next task. The driver drops each tile's result as it arrives, so a dead worker leaves no finished tile to
recompute. A tile whose task takes down every worker it runs on (``distributed.KilledWorker``, after the
scheduler's ``allowed-failures``) stops the run with :class:`~hsi_engine.errors.WorkerLostError`, keeping the
tiles written. Scenes given as paths are opened by each worker (shared filesystem, as for the output);
in-memory scenes are scattered.

Output. Everything is written into ``<out>.partial`` and renamed (zarr) or converted (GeoTIFF, through
:class:`~hsi_engine.writers.GeoTiffClassMapWriter`) into place only when every tile is recorded done.
Bad input (:class:`HSIEngineError`) removes the partial store: no output and no leftovers. Any other
interruption (a crash, Ctrl-C, SIGKILL, SIGTERM while the map is being written) leaves it for ``resume=True`` /
``--resume``.

One run per output. A run holds :func:`~hsi_engine.lock.output_lock` on its output from start to commit: a second
run into the same output is refused while the first lives. ``client.cancel`` does not stop a task that is
already running, so a cluster run that was interrupted may have tasks still computing after its driver is
gone; the store records the live run's token and a task writes (and marks) its tile only while the store still
names its own run, so a rerun (``--overwrite``, perhaps of another scene) never receives a stopped run's tiles.
The check and the write go through the store directory as the task found it (:func:`~hsi_engine.resume.pinned_store`)
and a replaced store is renamed away before it is deleted, so a write that passed the check just before the
takeover (slow storage) lands in the discarded store, never in the new one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dask_client import _cuda_count, _gpu_resources, check_scheduler, check_workers, connect, make_local_cluster
from .errors import (ClusterUsageError, HSIEngineError, OptionError, OutputError, SceneNotFoundError,
                     WorkerEnvironmentError, WorkerLostError)
from .lock import output_lock
from .logs import dropped, warnings_ignored
from .outputs import raised_by_program
from .owned import closes_its_scenes, open_owned
from .resume import (MAP_VERSION, OWNER_ATTR, ResumableZarrWriter, check_owner, describe_differences, discard_partial,
                     finished_with, mark_tile, model_digest, model_status, partial_path, partial_tile, pinned_store,
                     provenance, read_record_cell, recorded_fingerprint, refuse_outputs_in_the_way,
                     resolved_spatial_precision, store_replaced)
from .scene_identity import scene_changed, scene_identity, scene_state
from .tiles import Tile, TilePlan, default_tile, describe_plan, normalise_tile

log = logging.getLogger("hsi_engine.cluster")

__all__ = ["ClusterUsageError", "RunReport", "chunk_side", "classify_to_file", "connect", "make_local_cluster",
           "run_to_file"]

_CHUNK_MULTIPLE = 16  # output chunks are GeoTIFF-block friendly multiples of 16


def chunk_side(tile: int | Sequence[int]) -> int:
    """The output tile/chunk side for a requested tile: the larger side rounded up to a multiple of 16."""
    ty, tx = normalise_tile(tile)
    return _CHUNK_MULTIPLE * math.ceil(max(ty, tx) / _CHUNK_MULTIPLE)


@dataclass
class RunReport:
    """What one (possibly resumed) run did."""

    path: Path
    tiles: int  # tiles in the plan
    skipped: int  # already recorded done by earlier runs
    computed: int  # written by this run
    run: int  # this run's number in the completion record
    workers: int  # 0: in-process
    wall_s: float
    tile: int
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# what runs on a worker


@dataclass(frozen=True)
class TaskSpec:
    """Everything a tile task needs besides the tile; small and picklable."""

    store: str  # the partial zarr store
    run: int
    tile: int  # tile / chunk side
    scene: str | None  # path, or None when the scene is passed (scattered) as an argument
    model: str | None  # model directory, or None when the model is passed (scattered)
    model_key: str  # the model digest: worker cache key
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    nodata: float | None
    backend: str
    precision: str
    device: str | None
    probabilities: bool
    throttle_s: float = 0.0
    cache_blocks: int | None = None  # None: the runner's default for the worker's device
    decoders: int | None = None  # None: the runner's default for the worker's device
    spatial_precision: str = "auto"  # FusedSSRN's: auto is decided on each worker's host
    nodata_bands: tuple[int, ...] | None = None  # the bands nodata is looked for in; None: all
    token: str = ""  # this run's own: a worker opens the scene once per run (a reused path may hold a new scene)
    # the driver's hsi-engine, which each task checks its worker runs (a worker joining after the run's pre-flight
    # check, :func:`_check_workers`); map_version 0: not checked (a driver that did not send them)
    engine_version: str = ""
    map_version: int = 0


_CACHE: dict[Any, Any] = {"engines": OrderedDict()}
_CACHE_LOCK = threading.Lock()
_ENGINES_KEPT = 4  # a long-lived worker given model after model kept every one (its weights, on its device)


def _worker_engine(spec: TaskSpec, model_obj: Any):
    """The FusedSSRN of this worker process, built once per (model, backend, device, precision, spatial
    precision); the last few used are kept."""
    import torch

    dev = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(dev).type == "cuda":
        from .fused import engine_device

        try:
            engine_device(dev)
        except OptionError as e:  # the driver's host may have one: say whose torch sees none
            raise WorkerEnvironmentError(f"{_this_worker()} cannot run device={dev!r}: {e}; or run the workers "
                                         "on hosts with a GPU") from None
    key = (spec.model_key, spec.backend, dev, spec.precision, spec.spatial_precision)
    with _CACHE_LOCK:
        engines = _CACHE["engines"]
        eng = engines.get(key)
        if eng is None:
            from .api import load_model
            from .fused import FusedSSRN

            model = model_obj if model_obj is not None else load_model(spec.model)
            eng = FusedSSRN(model, backend=spec.backend, device=dev, precision=spec.precision,
                            spatial_precision=spec.spatial_precision)
            engines[key] = eng
            while len(engines) > _ENGINES_KEPT:
                engines.popitem(last=False)
        engines.move_to_end(key)
    return eng


def _worker_scene(spec: TaskSpec, scene_obj: Any):
    if scene_obj is not None:
        return scene_obj
    # opened once per run, not once per path: a long-lived worker must not read a new scene at a reused path
    # (a pipeline's scratch path) through the old one's metadata
    key = ("scene", spec.scene, spec.token)
    with _CACHE_LOCK:
        hit = _CACHE.get("scene")
        if hit is None or hit[0] != key:
            from .io import as_scene

            try:
                scene = as_scene(spec.scene)
            except SceneNotFoundError as e:  # the driver opened it: this worker does not see the driver's files
                raise WorkerEnvironmentError(f"{_this_worker()} does not see the scene ({e}), which the driver read "
                                             f"at that path: {_SHARED_FS}") from None
            hit = _CACHE["scene"] = (key, scene.transpose("band", "y", "x"))
    return hit[1]


_SHARED_FS = ("a cluster run (scheduler=, --scheduler) reads the scene and writes the output at the driver's paths, so "
              "every worker must see both at the same paths (a shared filesystem mounted alike on every host): put "
              "the scene and --out there (in Python, a scene passed in memory is sent to the workers instead)")


def _this_worker() -> str:
    """``worker tcp://HOST:PORT`` (this dask worker's address, for an error about its environment), or ``this
    process`` outside a worker."""
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except (ImportError, ValueError, AttributeError):
        return "this process"


def _engine_identity() -> dict[str, Any]:
    """This process's hsi-engine: version, map version (:data:`~hsi_engine.resume.MAP_VERSION`) and package
    directory; the same for the driver and (in :func:`_worker_identity`) for each worker."""
    with _CACHE_LOCK:
        hit = _CACHE.get("identity")
        if hit is None:
            import hsi_engine

            hit = _CACHE["identity"] = {"version": str(hsi_engine.__version__),
                                        "package": os.path.dirname(os.path.abspath(hsi_engine.__file__))}
    return {**hit, "map_version": MAP_VERSION}


def _check_task_engine(spec: TaskSpec) -> None:
    """Refuse to compute on a worker whose hsi-engine differs from the driver's (a worker that joined after the
    run's pre-flight check): its tiles would not be this version's map."""
    if not spec.map_version:
        return
    mine = _engine_identity()
    if (mine["version"], mine["map_version"]) != (spec.engine_version, spec.map_version):
        raise WorkerEnvironmentError(
            f"{_this_worker()} runs hsi-engine {mine['version']} (map version {mine['map_version']}, from "
            f"{mine['package']}), the driver hsi-engine {spec.engine_version} (map version {spec.map_version}): its "
            f"tiles would not be the driver's map. {_SAME_ENGINE}")


def _worker_identity(store: str, scene: str | None, token: str, cuda: bool) -> dict[str, Any]:
    """What :func:`_check_workers` asks each worker (through :func:`_probe`): its hsi-engine
    (:func:`_engine_identity`), which packages the tiles import it lacks, its CUDA device count (``cuda``: the run
    asks for a CUDA device), and whether it sees the run's output store (made by this run: ``token``) and scene."""
    import importlib.util

    ident: dict[str, Any] = _engine_identity()
    missing = []
    for name in ("torch", "ssrn", "kernels"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    ident["missing"] = missing
    if cuda and "torch" not in missing:
        import torch

        ident["torch"] = str(torch.__version__)
        ident["cuda"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not os.path.isdir(store):
        ident["store"] = "missing"
    else:
        try:
            import zarr

            owner = dict(zarr.open_group(store, mode="r").attrs).get(OWNER_ATTR)
        except Exception:  # noqa: BLE001 - not a store this run made
            owner = None
        ident["store"] = "ours" if owner == token else "other"
    ident["scene"] = None if scene is None else os.path.exists(scene)
    return ident


def _probe() -> Callable[..., Any]:
    """The function :func:`_check_workers` runs on every worker (``client.run``): it imports hsi_engine there and
    returns :func:`_worker_identity`'s answer, or what stopped the import. Defined inside this function so that it
    is pickled by value (cloudpickle): a function of this module, pickled by name, could not even be unpickled by
    a worker without hsi_engine, whose error then came back as the scheduler's and the worker's logged tracebacks.
    A coroutine running the work in a thread: the imports (torch's, for a CUDA check) do not stall the worker's
    event loop (its heartbeats)."""

    async def probe(*args: Any) -> dict[str, Any]:
        import asyncio

        def ask() -> dict[str, Any]:
            import importlib

            try:
                mod = importlib.import_module("hsi_engine.cluster")
            except Exception as e:  # noqa: BLE001 - a worker without hsi_engine (or a package it imports)
                return {"import_error": f"{type(e).__name__}: {e}"}
            identity = getattr(mod, "_worker_identity", None)
            if identity is None:  # an hsi-engine from before this check: another version
                import importlib.metadata

                try:
                    version = importlib.metadata.version("hsi-engine")
                except Exception:  # noqa: BLE001
                    version = "unknown"
                return {"version": version, "map_version": getattr(mod, "MAP_VERSION", 0),
                        "package": os.path.dirname(os.path.abspath(mod.__file__))}
            try:
                return identity(*args)
            except Exception as e:  # noqa: BLE001 - named by the driver
                return {"error": f"{type(e).__name__}: {e}"}

        return await asyncio.get_running_loop().run_in_executor(None, ask)

    return probe


def _check_workers(client: Any, spec: TaskSpec) -> None:
    """The run's pre-flight, before any tile is submitted: refuse workers that cannot compute the driver's map
    (:class:`WorkerEnvironmentError`, naming them and the fix): without hsi_engine (a task could not be unpickled:
    a real worker died of it, and the run waited for ever for workers), or torch; another hsi-engine version or map
    version (a worker importing another copy wrote a different map, exit 0); no CUDA device for ``device='cuda'``;
    the output store or the scene not seen at the driver's paths (no shared filesystem). A worker that joins later
    is checked by its tasks (:func:`_check_task_engine`)."""
    import torch

    cuda = spec.device is not None and torch.device(spec.device).type == "cuda"
    try:
        answers = client.run(_probe(), spec.store, spec.scene, spec.token, cuda, on_error="return")
    except Exception as e:  # noqa: BLE001 - a scheduler that does not answer: the run's own error says so
        log.debug("could not ask the workers about their environment (%s)", e)
        return
    mine = _engine_identity()
    problems: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # what is wrong -> the workers it is wrong with
    for addr, answer in sorted(answers.items()):
        if not isinstance(answer, dict):  # a worker that left meanwhile (an exception): not one to refuse
            log.debug("worker %s did not answer the environment check: %r", addr, answer)
            continue
        why = _worker_problem(answer, mine, spec, cuda)
        if why is not None:
            problems.setdefault(why, []).append((addr, answer))
    if not problems:
        return
    why, found = next(iter(problems.items()))
    addrs = [addr for addr, _ in found]
    if len(addrs) > 1:
        why = _worker_problem(found[0][1], mine, spec, cuda, plural=True) or why
    who = f"worker {addrs[0]}" if len(addrs) == 1 else \
        f"{len(addrs)} workers ({', '.join(addrs[:3])}{', ...' if len(addrs) > 3 else ''})"
    more = "" if len(problems) == 1 else f" (and {len(problems) - 1} other problem(s) on other workers)"
    raise WorkerEnvironmentError(f"{who} {why}{more}")


def _worker_problem(answer: dict[str, Any], mine: dict[str, Any], spec: TaskSpec, cuda: bool, *,
                    plural: bool = False) -> str | None:
    """What makes a worker (its :func:`_worker_identity` answer) unfit for the run, as the rest of a sentence
    after its name (``plural``: after several workers' names); None when it is fit."""
    run, see, does, its, it = ("run", "see", "do", "their", "them") if plural else ("runs", "sees", "does", "its", "it")
    install = (f"install hsi-engine {mine['version']} (the driver's version, from the same source) with torch in the "
               "workers' environment and restart them")
    if "import_error" in answer:
        return f"cannot import hsi_engine ({answer['import_error']}): {install}"
    if "error" in answer:
        return f"failed the environment check ({answer['error']}): {install}"
    if (answer.get("version"), answer.get("map_version")) != (mine["version"], mine["map_version"]):
        return (f"{run} hsi-engine {answer.get('version')} (map version {answer.get('map_version')}, from "
                f"{answer.get('package')}), the driver hsi-engine {mine['version']} (map version "
                f"{mine['map_version']}, from {mine['package']}): {its} tiles would not be the driver's map: {install} "
                "(or run the driver with the workers' hsi-engine)")
    if answer.get("missing"):
        import torch

        return (f"cannot import {', '.join(answer['missing'])} (not installed there), which the tiles need: {install} "
                f"(the driver runs torch {torch.__version__})")
    if cuda:
        import torch

        index = torch.device(spec.device).index or 0
        if int(answer.get("cuda") or 0) <= index:
            return (f"{see} {answer.get('cuda') or 'no'} CUDA device(s) ({its} torch {answer.get('torch')}) for "
                    f"device={spec.device!r}: leave the device out (each worker then uses its GPU where it has one, "
                    "else its CPU) or pass device='cpu' (--device cpu), or run the workers on hosts with a GPU")
    if answer.get("store") != "ours":
        found = "not there" if answer.get("store") == "missing" else "another store is at that path"
        return (f"{does} not see the output store {spec.store} that this run made ({found} for {it}): "
                f"{_SHARED_FS}")
    if answer.get("scene") is False:
        return f"{does} not see the scene {spec.scene}, which the driver read at that path: {_SHARED_FS}"
    return None


_SAME_ENGINE = ("Install the driver's hsi-engine in the workers' environment (the same version and source) and restart "
                "them, or run the driver with theirs; then rerun with --resume (resume=True) to keep the tiles written")


def _worker_threads() -> int:
    """This dask worker's share of the host's cores (its thread count), not the whole host's: several workers
    on one host would otherwise each start a decoder per core."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):  # not on a worker, or another distributed version
        from .runner import _cores

        return _cores()


def _worker_reader(spec: TaskSpec, da: Any, halo: int, device_type: str):
    """This worker's window reader for the run's scene, with a decoded-block cache shared by the tiles the
    worker runs; one at a time (a new run replaces the last one's, so a long-lived worker does not pile them up)."""
    from .runner import cache_blocks_for, window_reader

    key = ("reader", spec.store, spec.run, spec.scene, id(da))  # the reader keeps `da` alive: ids stay unique
    with _CACHE_LOCK:
        hit = _CACHE.get("reader")
        if hit is None or hit[0] != key:
            blocks = spec.cache_blocks
            if blocks is None:  # the runner's default: on for CUDA workers, off on CPU
                blocks = cache_blocks_for((spec.tile, spec.tile), halo, 1) if device_type == "cuda" else 0
            n = spec.decoders if spec.decoders is not None else (_worker_threads() if device_type == "cuda" else 0)
            # the pool lives as long as the reader; a replaced reader's pool ends its threads when collected
            pool = ThreadPoolExecutor(int(n), thread_name_prefix="hsi-decode") if n and blocks else None
            hit = _CACHE["reader"] = (key, window_reader(da, cache_blocks=blocks, decoders=pool))
    return hit[1]


def compute_tile(da: Any, tile: Tile, engine: Any, *, halo: int, mean: np.ndarray | None, std: np.ndarray | None,
                 nodata: float | None, probabilities: bool, read: Any = None, normalise_on: str | None = None,
                 nodata_bands: np.ndarray | None = None):
    """Read, normalise, classify one tile: ``(labels (h, w) uint8, probabilities (K, h, w) | None,
    confidence (h, w) | None)``; the steps of :func:`hsi_engine.runner.run_plan`, normalising on the device
    for a CUDA engine and on the host otherwise (``normalise_on`` overrides; both give the same bits).
    ``read``: a window reader of ``da`` (default: a direct one); ``nodata_bands``: as in ``run_plan``."""
    import torch

    from ssrn.normalise import stage_raw
    from .runner import (_check_window, finish_tile, prepare_tile, prepare_tile_tensor, tile_logits, tile_outputs,
                         window_reader)

    if normalise_on is None:
        normalise_on = "device" if engine.device.type == "cuda" else "host"
    raw = (read or window_reader(da))(*tile.read)
    h, w = tile.shape
    mask = mask_t = nonfinite = None
    if normalise_on == "device":
        _check_window(raw, tile)
        staged, wrap = stage_raw(raw)
        f64 = dict(dtype=torch.float64, device=engine.device)
        x, mask_t, nonfinite = prepare_tile_tensor(
            staged.to(engine.device), tile, halo=halo, mean=None if mean is None else torch.as_tensor(mean, **f64),
            std=None if std is None else torch.as_tensor(std, **f64), nodata=nodata, wrap_bits=wrap,
            nodata_bands=nodata_bands)
    elif normalise_on == "host":
        x = torch.empty((engine.config.bands, h + 2 * halo, w + 2 * halo), dtype=torch.float32)
        mask = prepare_tile(raw, tile, mean=mean, std=std, nodata=nodata, out=x.numpy(), nodata_bands=nodata_bands)
        x = x.to(engine.device)
    else:
        raise OptionError(f"normalise_on must be 'host' or 'device'; got {normalise_on!r}")
    logits = tile_logits(engine, x, tile, mask)  # (K, h, w)
    outputs = tile_outputs(logits, probabilities=probabilities, mask=mask_t)
    # (the non-finite flag is read after the launches, so the check does not stall them)
    return finish_tile(tile, outputs, mask, nonfinite if nodata is None else None, lambda: raw, halo=halo, mean=mean,
                       std=std, precision=getattr(engine, "precision", "float32"), nodata_bands=nodata_bands)


def _tile_task(spec: TaskSpec, tile: Tile, scene_obj: Any = None, model_obj: Any = None) -> dict[str, Any]:
    """One tile on a worker: compute, write its chunk(s) into the partial store, then mark it done. A tile this
    run has already written is not computed again: dask reschedules a finished task whose worker died before
    the driver fetched its (small) result."""
    try:
        _check_task_engine(spec)
        return _tile_work(spec, tile, scene_obj, model_obj)
    except ImportError as e:  # torch (or a package it needs) missing on this worker, not on the driver
        raise WorkerEnvironmentError(
            f"{_this_worker()} cannot import {e.name or 'a package hsi-engine needs'} ({type(e).__name__}: {e}): "
            f"install it in the workers' environment (the driver runs hsi-engine {spec.engine_version or '?'}; "
            "pip install the same hsi-engine with torch there) and restart the workers") from None
    except HSIEngineError as e:
        # its message says all; the exceptions it was raised from may not cross back: GDAL's errors do not
        # unpickle (rasterio's CPLE_* 'args' has no setter), and the driver got a bare Exception of its repr
        e.__cause__ = e.__context__ = None
        e.__suppress_context__ = True
        raise


def _tile_work(spec: TaskSpec, tile: Tile, scene_obj: Any, model_obj: Any) -> dict[str, Any]:
    import zarr

    t0 = time.perf_counter()
    row, col = tile.y0 // spec.tile, tile.x0 // spec.tile
    if not os.path.isdir(spec.store):  # before computing: the store the driver made is not there
        raise OutputError(f"{_this_worker()} does not see the output store {spec.store}, which the driver made: "
                          f"{_SHARED_FS}. (Or this task's run was stopped and its store removed: it writes nothing.)")
    reused = _already_written(spec, row, col)
    if reused is not None:
        return {"index": tile.index, "pixels": tile.pixels, "seconds": time.perf_counter() - t0, "pid": os.getpid(),
                "nodata_px": reused, "reused": True}
    engine = _worker_engine(spec, model_obj)
    da = _worker_scene(spec, scene_obj)
    mean = None if spec.mean is None else np.asarray(spec.mean, np.float64)
    std = None if spec.std is None else np.asarray(spec.std, np.float64)
    read = _worker_reader(spec, da, engine.halo, engine.device.type)
    lab, prob, conf = compute_tile(da, tile, engine, halo=engine.halo, mean=mean, std=std, nodata=spec.nodata,
                                   probabilities=spec.probabilities, read=read,
                                   nodata_bands=None if spec.nodata_bands is None else np.asarray(spec.nodata_bands))
    if spec.throttle_s:
        time.sleep(spec.throttle_s)
    what = f"tile {tile.index}"
    # check-then-write on the directory as it is now: a later run that replaced the store (overwrite) renamed the
    # old one away first, so a write of this (stopped) run that passed the check lands there, never in the new one
    with pinned_store(spec.store) as store:
        try:
            g = zarr.open_group(store, mode="r+")  # gone when the run was aborted: write nothing
        except Exception as e:  # noqa: BLE001
            raise OutputError(f"output store {spec.store} disappeared while {what} was running ({e})") from None
        check_owner(g, spec.token, what, spec.store)  # a cancelled run's task still running: write nothing
        ys, xs = slice(tile.y0, tile.y1), slice(tile.x0, tile.x1)
        try:
            g["classes"][ys, xs] = lab
            if prob is not None and "probabilities" in g:
                arr = g["probabilities"]
                arr[:, ys, xs] = prob.astype(arr.dtype, copy=False)
            if conf is not None and "confidence" in g:
                g["confidence"][ys, xs] = conf.astype(np.float32, copy=False)
        except (OSError, KeyError) as e:
            if not store_replaced(spec.store, store):
                raise  # a full disk, a permission: the run's own error (its tiles are kept for --resume)
            raise OutputError(f"output store {spec.store} was removed while {what} was being written "
                              f"({type(e).__name__}: {e}); this task's run was stopped, so it writes nothing") \
                from None
        check_owner(zarr.open_group(store, mode="r"), spec.token, what, spec.store)
        mark_tile(store, row, col, spec.run)  # after the data: atomic
    return {"index": tile.index, "pixels": tile.pixels, "seconds": time.perf_counter() - t0, "pid": os.getpid(),
            "nodata_px": int(lab.size - np.count_nonzero(lab)), "reused": False}


def _already_written(spec: TaskSpec, row: int, col: int) -> int | None:
    """The nodata pixel count of tile ``(row, col)`` when this run (its token still owns the store) has written
    it already; None when it is to be computed."""
    import zarr

    try:
        g = zarr.open_group(spec.store, mode="r")
        if dict(g.attrs).get(OWNER_ATTR) != spec.token or read_record_cell(spec.store, row, col) != spec.run:
            return None
        ys = slice(row * spec.tile, (row + 1) * spec.tile)
        xs = slice(col * spec.tile, (col + 1) * spec.tile)
        lab = np.asarray(g["classes"][ys, xs])
    except Exception:  # noqa: BLE001 - no store, no record: compute (the write path reports what is wrong)
        return None
    return int(lab.size - np.count_nonzero(lab))


# ----------------------------------------------------------------------------------------------
# drivers


class _MarkingSink:
    """In-process sink: write the tile, then mark it done (run_plan's single writer thread calls this)."""

    def __init__(self, writer: ResumableZarrWriter, run: int, side: int, throttle_s: float) -> None:
        self.writer, self.run, self.side, self.throttle_s = writer, run, side, throttle_s

    def write(self, y0: int, x0: int, labels: np.ndarray, probabilities: np.ndarray | None = None,
              confidence: np.ndarray | None = None) -> None:
        if self.throttle_s:
            time.sleep(self.throttle_s)
        self.writer.write_tile(y0 // self.side, x0 // self.side, self.run, y0, x0, labels, probabilities,
                               confidence)


def _run_distributed(client: Any, spec: TaskSpec, tiles: Sequence[Tile], scene_obj: Any, model_obj: Any,
                     progress: bool | None, local: bool = False) -> dict[str, Any]:
    from distributed import KilledWorker, as_completed

    from .runner import _LoggedProgress, _progress_bar

    _check_workers(client, spec)
    resources = _gpu_resources(client)
    scene_arg = _scattered(client, scene_obj, "scene")
    try:
        model_arg = _scattered(client, model_obj, "model")
    except BaseException:
        if scene_arg is not None:
            scene_arg.release()
        raise
    by_key = {f"hsi-tile-{spec.token[:8]}-{t.index}": t for t in tiles}

    def submit(key: str) -> Any:
        return client.submit(_tile_task, spec, by_key[key], scene_arg, model_arg, key=key, resources=resources,
                             pure=False)

    window = _TaskWindow(submit, list(by_key), as_completed(loop=client.loop), lambda: _window_size(client))
    status = _ClusterStatus(client, local)
    source = spec.scene or (getattr(scene_obj, "encoding", None) or {}).get("source")  # (names its log lines)
    bar = _progress_bar(sum(t.pixels for t in tiles), progress, status, name=source)
    own = local or _watchable(client)
    watch = _OwnWorkersGone(client, window.close) if own else None
    # a stall is told whatever the display (the log lines' own timer tells it there); an own cluster whose every
    # worker stays paused is stopped: hung for ever before, silently with progress=False or on a terminal
    stall = _StallWatch(client, window.close, status, warn=not isinstance(bar, _LoggedProgress),
                        stop_after=PAUSED_STOP_S if own else None, tiles=len(tiles), local=local)
    pids: set[int] = set()
    nodata_px = reused = 0
    fut = None
    try:
        window.fill()
        for fut in window.completed:
            # a finished tile's result is dropped at once: while the driver held it, a worker that died took
            # the result with it and the scheduler recomputed a tile already written
            window.finished(fut)
            try:
                res = fut.result()  # re-raises the task's error (bad input, store gone...)
            except Exception as e:
                if watch is not None and watch.gone.is_set():
                    raise _own_workers_gone(client, local) from None
                if stall.error is not None:
                    raise stall.error from None
                if isinstance(e, KilledWorker):
                    raise _worker_lost(client, by_key[fut.key], spec, local) from None
                reason = _cancel_reason(e)
                if reason is not None:
                    raise WorkerLostError(
                        f"the cluster cancelled tile {by_key[fut.key].index}'s task: {reason}. Tiles written are "
                        "kept where the run is resumable: rerun with --resume (resume=True) once the cluster is "
                        "back") from None
                if isinstance(e, CancelledError) and (scene_arg is not None or model_arg is not None):
                    what = " and ".join(n for n, a in (("scene", scene_arg), ("model", model_arg)) if a is not None)
                    raise WorkerLostError(
                        f"the cluster lost the in-memory {what} scattered to its workers: every worker holding "
                        f"it died (out of memory, usually). Give the {what} as a file path (each worker then "
                        "reads what it needs), or the workers more memory, and rerun with --resume to keep the "
                        "tiles written") from None
                raise
            fut.release()
            reused += bool(res.get("reused"))
            pids.add(res["pid"])
            nodata_px += res["nodata_px"]
            bar.update(res["pixels"])
            stall.tile_done()
            window.fill()  # the next tiles, as many as finished
        if window.left():  # a watcher stopped the run just after the last tile in flight finished
            if watch is not None and watch.gone.is_set():
                raise _own_workers_gone(client, local)
            raise stall.error or WorkerLostError("the run was stopped before every tile was submitted; rerun with "
                                                 "--resume (resume=True) to finish it")
    except BaseException:
        in_flight = window.close()
        client.cancel(in_flight)
        # released now: the error's traceback holds this frame (its futures), and the client holds the failed
        # task's state, which holds the error: on the caller's cluster the scattered scene stayed in memory for
        # as long as that client lived, one more copy each failed run
        for f in [*in_flight, *(a for a in (fut, scene_arg, model_arg) if a is not None)]:
            f.release()  # (a no-op for one released already)
        raise
    finally:
        if watch is not None:
            watch.stop()
        stall.stop()
        bar.close()
        for a in (scene_arg, model_arg):  # the caller's cluster keeps no copy of them once the run is over
            if a is not None:
                a.release()
    if tiles and nodata_px == sum(t.pixels for t in tiles):
        from .runner import warn_all_nodata

        warn_all_nodata(spec.nodata, spec.nodata_bands)
    return {"worker_pids": sorted(pids), "resources": resources, "nodata_px": nodata_px, "tiles_reused": reused}


def _scattered(client: Any, obj: Any, what: str) -> Any:
    """``obj`` scattered to every worker (a future), or None for None. A cluster without workers made dask's
    scatter wait, then raise a bare ``TimeoutError('No valid workers found')``."""
    if obj is None:
        return None
    try:
        return client.scatter(obj, broadcast=True, hash=False)
    except TimeoutError as e:  # (asyncio's TimeoutError is the builtin since Python 3.11)
        raise HSIEngineError(f"the cluster has no worker to take the in-memory {what} ({e}): start some (dask worker "
                             "<scheduler address>), or give the scene and the model as paths every worker sees") \
            from None


_WINDOW_MIN = 512  # tile tasks in flight at least: an adaptive cluster scales on the queued tasks it sees
_WINDOW_PER_THREAD = 4  # ... and per worker thread, so that no worker waits for the driver's next submission
_WINDOW_EVERY_S = 10.0  # how often the window follows the cluster's thread count (workers joining or leaving)


def _window_size(client: Any) -> int:
    """How many tile tasks a run keeps submitted: :data:`_WINDOW_PER_THREAD` per worker thread of the cluster now,
    at least :data:`_WINDOW_MIN`."""
    try:
        try:
            info = client.scheduler_info(n_workers=0)  # the totals, without every worker's record
        except TypeError:  # (a distributed before its n_workers argument)
            info = client.scheduler_info()
        threads = info.get("total_threads")
        if threads is None:
            threads = sum(int(w.get("nthreads") or 0) for w in info.get("workers", {}).values())
    except Exception:  # noqa: BLE001 - a scheduler that does not answer now: the smallest window
        threads = 0
    return max(_WINDOW_MIN, _WINDOW_PER_THREAD * int(threads))


class _TaskWindow:
    """The tile tasks of a run that are submitted and not yet finished, at most :func:`_window_size` of them,
    refilled in plan order as they finish. 152,881 tasks submitted at once (a 50,000-pixel square scene at tile
    128), each with its own copy of the run's spec, kept the scheduler's event loop busy for minutes and the
    client's connection dropped before a tile was computed. ``completed``: a ``distributed.as_completed`` that
    yields the submitted futures as they finish; :meth:`close` (from any thread) stops the submitting and returns
    the futures in flight, to cancel: a watcher that stops the run then cancels all that was submitted."""

    def __init__(self, submit: Callable[[str], Any], keys: Sequence[str], completed: Any,
                 size: Callable[[], int]) -> None:
        self._submit, self._keys, self._next, self.completed, self._size = submit, keys, 0, completed, size
        self._lock = threading.Lock()
        self._futures: dict[str, Any] = {}
        self._closed = False
        self._limit, self._sized_at = 0, -math.inf

    def fill(self) -> None:
        """Submit the next tiles until the window is full (nothing once :meth:`close` was called)."""
        now = time.monotonic()
        if now - self._sized_at >= _WINDOW_EVERY_S:
            self._limit, self._sized_at = self._size(), now
        with self._lock:
            while not self._closed and len(self._futures) < self._limit and self._next < len(self._keys):
                key = self._keys[self._next]
                fut = self._futures[key] = self._submit(key)
                self._next += 1
                self.completed.add(fut)

    def left(self) -> int:
        """How many tiles were never submitted (none once every tile was)."""
        return len(self._keys) - self._next

    def finished(self, fut: Any) -> None:
        """Take a future that ``completed`` yielded out of the window."""
        with self._lock:
            self._futures.pop(fut.key, None)

    def close(self) -> list[Any]:
        """Submit nothing more; the futures still in flight."""
        with self._lock:
            self._closed = True
            return list(self._futures.values())


_CANCEL_REASONS = {"scheduler-restart": "its scheduler was restarted (client.restart(), which drops every task)",
                   "scheduler-connection-lost": "the connection to its scheduler was lost (the scheduler stopped, "
                                                "or its host or the network went down)"}


def _cancel_reason(e: BaseException) -> str | None:
    """What cancelled a tile's task, from distributed's message ("... cancelled for reason: scheduler-restart"),
    where it is one the cluster's owner caused rather than the run (a worker out of memory is told otherwise)."""
    if not isinstance(e, CancelledError):
        return None
    said = str(e)
    return next((why for key, why in _CANCEL_REASONS.items() if key in said), None)


class _OwnWorkersGone:
    """Watches the local cluster a run started (``workers=N``) for the state it cannot leave: no worker and no
    nanny to start one. A worker that dies is restarted by its nanny, but one killed again while it restarts stays
    lost, and after ``distributed.deploy.lost-worker-timeout`` (15 s) the cluster closes its nanny for good; with
    the last one gone the run waited for ever. Then the pending tiles are cancelled and :attr:`gone` is set."""

    def __init__(self, client: Any, futures: Callable[[], list[Any]], poll_s: float = 1.0) -> None:
        self.client, self.futures, self.poll_s = client, futures, poll_s
        self.gone = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hsi-engine-own-workers", daemon=True)
        self._thread.start()

    def _none_left(self) -> bool:
        cluster = getattr(self.client, "cluster", None)
        try:
            return (cluster is not None and not cluster.workers
                    and not self.client.scheduler_info().get("workers"))
        except Exception:  # noqa: BLE001 - a cluster closing under us: the run's own error says why
            return False

    def _watch(self) -> None:
        seen = 0  # consecutive polls that found nothing: a nanny between close and removal is never counted
        while not self._stop.wait(self.poll_s):
            seen = seen + 1 if self._none_left() else 0
            if seen >= 2:
                self.gone.set()
                try:
                    self.client.cancel(self.futures())
                except Exception:  # noqa: BLE001 - the loop then ends on the cancelled futures or its own error
                    pass
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


PAUSED_STOP_S = 600.0  # an own cluster's workers all paused for memory this long, no tile finishing: stopped


def _workers_info(client: Any) -> dict[str, Any]:
    """The scheduler's record of every worker (``scheduler_info`` lists only the first few by default)."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # (a distributed before its n_workers argument)
        info = client.scheduler_info()
    return info.get("workers", {})


class _StallWatch:
    """Tells a stalled cluster run whatever its progress display: every :data:`~hsi_engine.runner.
    LOG_PROGRESS_EVERY_S` without a finished tile, a WARNING where :class:`_ClusterStatus` sees why (paused, dying
    or no workers); ``warn=False`` where the display's log lines tell it themselves
    (:class:`~hsi_engine.runner._LoggedProgress`). A terminal's bar or ``progress=False`` showed nothing, and a run
    whose every worker dask had paused for memory hung for ever in silence.

    ``stop_after`` (seconds; None: never): a run on its own cluster (``workers=``, or a ``LocalCluster`` object
    given as ``scheduler=``) whose every worker has stayed paused that long with no tile finishing is stopped:
    :attr:`error` is set (a :class:`WorkerLostError` naming dask's pause threshold and the fix) and the pending
    tiles are cancelled, so the run raises it, keeping the tiles written. Only there: nothing but the run's own
    tasks fills those workers, so their memory does not come back, while the workers of a shared cluster may
    resume once another client's work releases its memory (the WARNING repeats meanwhile)."""

    def __init__(self, client: Any, futures: Callable[[], list[Any]], status: Callable[[], str | None], *,
                 warn: bool, stop_after: float | None, tiles: int, local: bool) -> None:
        from .runner import LOG_PROGRESS_EVERY_S

        self.client, self.futures, self.status, self.local = client, futures, status, local
        self.every, self.warn, self.stop_after, self.total = LOG_PROGRESS_EVERY_S, warn, stop_after, tiles
        self.done = 0
        self.last_tile = self.last_log = time.monotonic()
        self.paused_since: float | None = None
        self.error: WorkerLostError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if warn or stop_after is not None:
            self._thread = threading.Thread(target=self._watch, name="hsi-engine-stall-watch", daemon=True)
            self._thread.start()

    def tile_done(self) -> None:
        self.done += 1
        self.last_tile = time.monotonic()

    def _watch(self) -> None:
        from .runner import _duration

        poll = max(min(self.every / 6, 5.0), 0.05)
        while not self._stop.wait(poll):
            now = time.monotonic()
            quiet = now - self.last_tile
            if self.stop_after is not None and self._paused_for_good(now, quiet):
                return
            if self.warn and quiet >= self.every and now - self.last_log >= self.every:
                self.last_log = now
                why = self.status()  # (None: nothing looks wrong, a slow tile)
                if why and not self._stop.is_set():
                    log.warning("classify: no tile finished in the last %s; %d of %d tiles done; %s",
                                _duration(quiet), self.done, self.total, why)

    def _paused_for_good(self, now: float, quiet: float) -> bool:
        try:
            workers = _workers_info(self.client)
        except Exception:  # noqa: BLE001 - a scheduler that does not answer: the run's own error says why
            return False
        if not workers or any(w.get("status") != "paused" for w in workers.values()):
            self.paused_since = None
            return False
        if self.paused_since is None:
            self.paused_since = now
        if now - self.paused_since < self.stop_after or quiet < self.stop_after:
            return False
        self.error = _paused_error(workers, now - self.paused_since, self.local)
        try:
            self.client.cancel(self.futures())
        except Exception:  # noqa: BLE001 - the loop then ends on the cancelled futures or its own error
            pass
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _pause_fraction() -> str:
    """dask's pause threshold as this process's config has it (``80 % of ``), for the messages about paused
    workers; empty where it is not a fraction."""
    import dask

    pause = dask.config.get("distributed.worker.memory.pause", 0.8)
    if isinstance(pause, bool) or not isinstance(pause, (int, float)):
        return ""
    return f"{100 * pause:.3g} % of "


def _paused_error(workers: dict[str, Any], paused_s: float, local: bool) -> WorkerLostError:
    """The error for a run whose own cluster's workers all stayed paused by dask for memory (:class:`_StallWatch`)."""
    from .runner import _duration

    limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
    held = [int((w.get("metrics") or {}).get("memory") or 0) for w in workers.values()]
    limit = f"{_pause_fraction()}their {max(limits) / 2**20:,.0f} MiB limit" if limits and min(limits) > 0 else \
        f"{_pause_fraction()}their memory limit"
    now = f" ({max(held) / 2**20:,.0f} MiB now)" if held and max(held) > 0 else ""
    more = ("fewer --workers on this host" if local else  # --workers: the cluster this run started
            "a larger memory_limit, or fewer workers per host")  # a LocalCluster the caller started
    return WorkerLostError(
        f"every worker ({len(workers)}) stayed paused by dask for memory for {_duration(paused_s)} and no tile "
        f"finished, so the run was stopped: a worker's memory{now} is above dask's pause threshold (distributed."
        f"worker.memory.pause, {limit}), which the model and a tile's buffers alone can pass. Give each worker more "
        f"memory ({more}) or use a smaller --tile, and rerun with --resume (resume=True) to keep the tiles written")


def _watchable(client: Any) -> bool:
    """Whether a caller's client drives a cluster object in this process that cannot grow back by itself (a
    ``LocalCluster`` passed as ``scheduler=``, not adaptive): one that lost every worker for good left the run
    waiting for ever, silently with ``progress=False``."""
    cluster = getattr(client, "cluster", None)
    return cluster is not None and hasattr(cluster, "worker_spec") and getattr(cluster, "_adaptive", None) is None


def _own_workers_gone(client: Any, local: bool = True) -> WorkerLostError:
    """The error for a run whose local cluster (its own, ``--workers``; or ``local=False``, a cluster object the
    caller passed) lost every worker and every nanny."""
    if not local:
        return WorkerLostError(
            "every worker of the cluster given as scheduler= died and none was restarted (most often out of memory: "
            "the system's OOM killer, or a container limit), so the run could not go on: give its workers more "
            "memory, or fewer per host, or a smaller tile, and rerun with resume=True to keep the tiles written")
    n = len(getattr(getattr(client, "cluster", None), "worker_spec", {}) or {}) or "its"
    return WorkerLostError(
        f"every one of the {n} workers this run started (--workers) died and none was restarted: each was killed "
        "again while its nanny restarted it (most often out of memory: the system's OOM killer, or a container "
        "limit). Free memory or use fewer --workers or a smaller --tile, and rerun with --resume to keep the tiles "
        "written")


class _ClusterStatus:
    """Why a cluster run may have stalled, in words (None when nothing looks wrong), asked each time the log says
    no tile finished: workers that keep being replaced (dying, most often out of memory, and restarted by their
    nannies), no workers, or workers paused by dask because their memory passed its pause threshold. ``local``:
    the cluster is the run's own (``--workers``), so no worker can be started by hand."""

    def __init__(self, client: Any, local: bool = False) -> None:
        self.client, self.local = client, local
        self.seen: set[str] | None = None  # worker addresses at the last call
        try:
            self.seen = set(_workers_info(client))
        except Exception:  # noqa: BLE001 - asked again at the first call
            pass

    def __call__(self) -> str | None:
        try:
            workers = _workers_info(self.client)
        except Exception:  # noqa: BLE001 - a scheduler that does not answer
            return "the scheduler does not answer"
        now = set(workers)
        new = len(now - self.seen) + len(self.seen - now) if self.seen is not None else 0
        self.seen = now
        dying = ("workers are dying and being restarted (most often out of memory: give them more, or use a "
                 "smaller --tile)")
        if not workers and self.local:
            return f"every worker this run started is gone for now: {dying}"
        if not workers:
            return "the cluster has no workers now: start some (dask worker <scheduler address>)" + \
                (f"; {dying}" if new else "")
        if new:
            return f"{dying}: {new} worker(s) came or went since the last line"
        paused = sum(1 for w in workers.values() if w.get("status") == "paused")
        if not paused:
            return None
        fix = (f"dask paused them because their memory is above its pause threshold (distributed.worker.memory."
               f"pause, {_pause_fraction()}the limit); give the workers more memory (fewer per host) or a smaller "
               "--tile")
        return f"every worker ({len(workers)}) is paused: {fix}" if paused == len(workers) else \
            f"{paused} of {len(workers)} workers are paused: {fix}"


def _worker_lost(client: Any, tile: Tile, spec: TaskSpec, local: bool) -> WorkerLostError:
    """The error for a tile whose task killed every worker that ran it (``distributed.KilledWorker``); ``local``:
    the workers are the ones this run started (``--workers``)."""
    try:
        limits = {int(w.get("memory_limit") or 0) for w in client.scheduler_info().get("workers", {}).values()}
    except Exception:  # noqa: BLE001 - the message is still useful without the limit
        limits = set()
    memory = f" (each has {max(limits) / 2**30:.1f} GiB)" if limits and min(limits) > 0 else ""
    more = ("fewer --workers on this host" if local else  # --workers: the cluster this run started
            "a larger `dask worker --memory-limit`, or fewer workers per host")  # --scheduler: someone else's
    return WorkerLostError(
        f"tile {tile.index} (rows {tile.y0}-{tile.y1}, columns {tile.x0}-{tile.x1}) took down every worker that "
        f"ran it, nearly always by running out of memory{memory}. Give each worker more memory ({more}) and rerun "
        f"with --resume (it keeps any tiles written), or start over with a smaller --tile (now {spec.tile}) and "
        "--overwrite")


@closes_its_scenes
def run_to_file(scene_path: Any, model_path: Any, out: str | os.PathLike, *, tile: int | Sequence[int] | None = None,
                device: Any = None, backend: str = "auto", precision: str = "float32",
                probabilities: bool | str = False, overwrite: bool = False, nodata: float | None = None,
                workers: int | None = None, scheduler: Any = None, resume: bool = False,
                progress: bool | None = None, queue_depth: int | None = None, readers: int | None = None,
                cache_blocks: int | None = None, decoders: int | None = None, throttle_s: float = 0.0,
                spatial_precision: str = "auto", on_written: Callable[[Path], None] | None = None) -> RunReport:
    """Classify into ``out`` (``.zarr`` or ``.tif``) resumably, in-process or on a dask cluster.

    Without ``workers``/``scheduler`` the tiles run in this process through :func:`~hsi_engine.runner.run_plan`;
    with them, one task per tile on the cluster (see the module doc). ``resume=True`` continues the partial
    store of an interrupted run (or starts one). ``cache_blocks``: decoded blocks kept per reader pool (each
    worker keeps its own; default as in :func:`~hsi_engine.runner.run_plan`); ``decoders``: threads decoding a
    window's cached blocks concurrently (per worker; default as in run_plan). ``spatial_precision``: as in
    :func:`~hsi_engine.api.classify` (``auto`` is decided per worker host). ``throttle_s`` sleeps that long
    per tile before writing it (tests and demos of interruption only). Only one run at a time writes ``out``
    (:func:`~hsi_engine.lock.output_lock`); a second is refused. ``on_written``: as in
    :func:`~hsi_engine.api.classify_to_file`. Returns a :class:`RunReport`.
    """
    from .outputs import check_not_scene, check_output_suffix

    check_output_suffix(out)  # before the lock creates the output's directory (and before side-file names)
    check_not_scene(out, scene_path)  # before anything is read: the output must never replace the scene
    # one live run per output: a second would share (and delete) its partial store, which a stopped run keeps
    with output_lock(out, resumable=True, side_files=bool(probabilities)):
        return _run_to_file(scene_path, model_path, out, tile=tile, device=device, backend=backend,
                            precision=precision, probabilities=probabilities, overwrite=overwrite,
                            nodata=nodata, workers=workers, scheduler=scheduler, resume=resume,
                            progress=progress, queue_depth=queue_depth, readers=readers,
                            cache_blocks=cache_blocks, decoders=decoders, throttle_s=throttle_s,
                            spatial_precision=spatial_precision, on_written=on_written)


def _run_to_file(scene_path: Any, model_path: Any, out: str | os.PathLike, *, tile: Any, device: Any, backend: str,
                 precision: str, probabilities: bool | str, overwrite: bool, nodata: float | None,
                 workers: int | None, scheduler: Any, resume: bool, progress: bool | None, queue_depth: int | None,
                 readers: int | None, cache_blocks: int | None, decoders: int | None, throttle_s: float,
                 spatial_precision: str, on_written: Callable[[Path], None] | None) -> RunReport:
    """run_to_file, holding the output's lock."""
    from .api import _Job
    from .georef import scene_georef
    from .runner import check_read_settings
    from .outputs import TIFF_SUFFIXES, ZARR_SUFFIXES, check_replaceable, in_the_way, ours_aux, side_paths, why_not_ours

    t_start = time.perf_counter()
    out = Path(out)
    suffix = out.suffix.lower()
    distributed = workers is not None or scheduler is not None
    check_read_settings(cache_blocks=cache_blocks, decoders=decoders, readers=readers, queue_depth=queue_depth)
    check_workers(workers)
    if workers is not None and scheduler is not None:
        raise ClusterUsageError("give workers= (--workers, start a local cluster) or scheduler= (--scheduler, "
                                "join one), not both")
    check_scheduler(scheduler)  # a malformed address, or no address at all, fails here, before the scene is read
    if distributed:
        _warn_no_readers(readers, queue_depth)
    if distributed:  # what the workers would refuse on their first tile, refused before any cluster starts
        _check_cluster_engine(device, backend, local=workers is not None)
    prob = "float16" if probabilities is True else (None if probabilities in (False, None) else probabilities)
    if prob not in (None, "float16", "float32"):
        raise OptionError(f"probabilities must be a bool, 'float16' or 'float32'; got {probabilities!r}")
    if not resume:  # an output in the way is refused before the scene is read (its scale sample, its digest)
        refuse_outputs_in_the_way(out, suffix, prob, overwrite=overwrite)
    scene = open_owned(scene_path) if isinstance(scene_path, (str, os.PathLike)) else scene_path
    job_device = "cpu" if distributed else device  # the driver computes nothing; it may have no GPU
    job = _Job(scene, model_path, tile=None, device=job_device, backend=backend, precision=precision, nodata=nodata,
               spatial_precision=spatial_precision, plan=False)  # planned below, on the output's chunk side
    da = job.da
    if tile is None and resume:
        tile = partial_tile(out)  # finish an interrupted run with its own tiles (None: no partial store yet)
    if tile is None:
        wdev = "cuda" if (str(device or "").startswith("cuda") or (device is None and _cuda_count() > 0)) else "cpu"
        tile = default_tile(wdev if distributed else job.device.type, int(da.sizes["band"]))
    side = chunk_side(tile)
    # a tile larger than the scene is the scene: the side is also the store's chunk (memory grows with its square;
    # --tile 100000 was killed for memory on a 64 x 64 scene), unless a partial store made with it is continued
    if side > chunk_side(max(job.height, job.width)) and not (resume and partial_tile(out) == side):
        side = chunk_side(max(job.height, job.width))
    halo = job.model.config.halo
    plan: TilePlan = job.plan_for(side)  # (with the .tif path's warning for chunks that dwarf these tiles)
    log.debug("plan: %s", describe_plan(plan))
    grid = (math.ceil(job.height / side), math.ceil(job.width / side))

    crs, transform, gcps = scene_georef(da, scene_path)
    digest = model_digest(job.model)
    # the device type and spatial precision the tiles run with, where this host can tell (in-process, or a local
    # cluster's workers on this host; a scheduler's workers decide auto on their own hosts): recorded, and given
    # to the engines, so a resumed run continues a map only with tiles computed the same way
    if not distributed:
        device_type: str | None = job.device.type
    elif device is not None:
        import torch

        device_type = torch.device(device).type
    else:
        device_type = ("cuda" if _cuda_count() > 0 else "cpu") if workers is not None else None
    spatial = resolved_spatial_precision(spatial_precision, precision, device_type, this_host=workers is not None
                                         or not distributed)
    job.spatial_precision = spatial
    scene_id = {"shape": [int(s) for s in da.shape], "dtype": str(da.dtype),
                **scene_identity(scene_path, scene, crs, transform, gcps, cube=da)}
    watched = scene_state(scene_id.get("source"))  # (checked again after the last tile)
    fingerprint = {"scene": scene_id, "model": digest, "labels": [job.class_names(), job.model_palette()],
                   "tile": side, "halo": halo, "classes": job.classes, "probabilities": prob,
                   "nodata": None if job.nodata is None else repr(float(job.nodata)), "precision": precision,
                   "spatial_precision": spatial_precision if precision == "float32" else spatial,
                   "output": suffix.lstrip("."), "map_version": MAP_VERSION}
    if precision != "float32":  # a low-precision map depends on the device (float32's is exact: left out, as before)
        fingerprint["device"] = _device_record(device_type, precision, this_host=workers is not None or not distributed)
    if job.nodata_bands is not None:  # a resumed run must mask the same bands (absent: every band, as before)
        fingerprint["nodata_bands"] = [int(b) for b in job.nodata_bands]
    sides = [side_paths(out)[k] for k in ("probabilities", "confidence")] if prob and suffix in TIFF_SUFFIXES else []
    own = json.loads(json.dumps(fingerprint))  # as recorded (JSON): compared with what outputs carry
    if resume and not overwrite and finished_with(out, fingerprint, sides):  # (an in-memory scene: by its digest)
        part = partial_path(out)
        if (part.exists() or part.is_symlink()) and recorded_fingerprint(part) == own:
            check_replaceable(part)  # the finished run was stopped before removing it: nothing in it is needed
            discard_partial(part)
            log.info("removed %s, left by the run that finished %s", part, out)
        if not (part.exists() or part.is_symlink()):
            if on_written is not None:
                on_written(out)
            log.info("%s is complete and was made with these settings: nothing to resume", out)
            return RunReport(path=out, tiles=len(plan), skipped=len(plan), computed=0, run=0, workers=0,
                             wall_s=time.perf_counter() - t_start, tile=side)
    if resume and not overwrite and out.exists() and not partial_path(out).exists():
        found = recorded_fingerprint(out)
        if found is None and why_not_ours(out) is not None:
            raise in_the_way(out)
        if found is None:
            raise OutputError(f"{out} exists but records no run settings (made without resume=True (--resume), "
                              "by an older hsi-engine, or unreadable), so there is nothing to resume: pass "
                              "overwrite=True (--overwrite) to replace it, or choose another path")
        if found != own:
            raise OutputError(f"{out} was made with different settings ({describe_differences(found, own, 'it')}); "
                              "resume=True (--resume) continues only a run with the same settings: pass "
                              "overwrite=True (--overwrite) to replace it, or choose another path")
    if suffix in TIFF_SUFFIXES and not overwrite and prob is not None:
        for key in ("probabilities", "confidence"):
            p = side_paths(out)[key]
            if p.exists() and resume and not out.exists() and recorded_fingerprint(p) == own:
                p.unlink()  # written by this run's commit, stopped before the map: the commit writes it again
                log.info("removed %s, left by this run's interrupted commit", p)
            elif p.exists():
                raise in_the_way(p)
    aux = side_paths(out)["aux"]
    if suffix in TIFF_SUFFIXES and not overwrite and (aux.exists() or aux.is_symlink()) and not ours_aux(aux):
        raise in_the_way(aux)  # before any tile, as the in-process writer does
    tags = {**provenance(digest, precision, spatial), **model_status(job.meta)}
    ycoords = np.asarray(da["y"].values) if "y" in da.coords else None
    xcoords = np.asarray(da["x"].values) if "x" in da.coords else None
    with warnings_ignored(UserWarning, "writing .* without georeferencing"):  # warned above
        writer = ResumableZarrWriter(out, grid=grid, fingerprint=fingerprint, resume=resume, height=job.height,
                                     width=job.width, n_classes=job.classes, crs=crs, transform=transform,
                                     y_coords=ycoords, x_coords=xcoords, class_names=job.class_names(),
                                     palette=job.palette(), probabilities=prob, confidence=prob is not None,
                                     overwrite=overwrite, block=side, gcps=gcps, tags=tags)
    done = writer.done()
    todo = [t for t in plan if done[t.y0 // side, t.x0 // side] == 0]
    token = uuid.uuid4().hex  # this run's: its tasks write only while the store still names it (check_owner)
    try:
        run = writer.start_run(token)
    except BaseException as e:  # (its record not written: a full disk, no inodes left) a new store is not kept
        if not writer.resumed:
            writer.abort()
        if isinstance(e, OSError) and not raised_by_program(e):  # (a service's timeout stays itself)
            from .writers import _write_failed

            raise _write_failed(Path(out), e) from None
        raise
    skipped = len(plan) - len(todo)
    if writer.resumed:
        log.info("resuming %s: %d of %d tiles already written, %d to go", writer.partial, skipped, len(plan),
                 len(todo))
    extra: dict[str, Any] = {}
    error: BaseException | None = None
    n_workers = 0
    try:
        if not todo:
            pass
        elif not distributed:
            sub = TilePlan(plan.height, plan.width, plan.tile, plan.halo, tuple(todo))
            extra = _run_local(job, sub, writer, run, side, throttle_s, prob, queue_depth, readers, progress,
                               cache_blocks, decoders)
        else:
            is_path = isinstance(scene_path, (str, os.PathLike))
            is_model_path = isinstance(model_path, (str, os.PathLike))
            spec = TaskSpec(store=str(writer.partial.resolve()), run=run, tile=side,
                            scene=str(Path(scene_path).resolve()) if is_path else None,
                            model=str(Path(model_path).resolve()) if is_model_path else None, model_key=digest,
                            mean=None if job.mean is None else tuple(float(v) for v in job.mean),
                            std=None if job.std is None else tuple(float(v) for v in job.std),
                            nodata=job.nodata, backend=backend, precision=precision,
                            device=None if device is None else str(device), probabilities=prob is not None,
                            throttle_s=float(throttle_s), cache_blocks=cache_blocks, decoders=decoders,
                            spatial_precision=spatial,
                            nodata_bands=None if job.nodata_bands is None else tuple(map(int, job.nodata_bands)),
                            token=token, engine_version=_engine_identity()["version"], map_version=MAP_VERSION)
            # distributed's "Couldn't gather N keys, rescheduling" (a worker died holding a finished tile's small
            # result; the rescheduled task finds its tile written): a lost worker is reported once, by this run
            with connect(workers=workers, scheduler=scheduler) as client, \
                    dropped(lambda m: m.startswith("Couldn't gather"), "distributed.client"):
                try:
                    n_workers = len(client.scheduler_info().get("workers", {}))
                    extra = _run_distributed(client, spec, todo, None if is_path else da,
                                             None if is_model_path else job.model, progress, workers is not None)
                except BaseException as e:  # noqa: BLE001 - handled below, after our cluster is closed
                    error = e
            if error is not None:
                raise error
    except HSIEngineError as e:
        if writer.owner() != token:  # a run that ignored the lock took the store over: it is not ours to touch
            writer.keep_partial()
            raise
        # a lost worker, or a write that failed (a full disk) after tiles were written: not bad input, and the
        # tiles written so far are hours of work to keep for --resume
        if writer.resumed or (isinstance(e, (WorkerLostError, OutputError, WorkerEnvironmentError))
                              and (writer.done(fresh=True) > 0).any()):
            kept = writer.keep_partial()  # earlier runs' tiles (and finished ones) are kept for the next --resume
            log.warning("run stopped; %s keeps the tiles written so far: fix the cause, then rerun with "
                        "resume=True (--resume)", kept)
            raise
        writer.abort()  # bad input: no output and no partial store
        if distributed:
            time.sleep(0.5)  # a task of an external cluster may still be finishing its write: sweep again
            writer._temps.append(writer.partial)
            writer._cleanup()
        raise
    except BaseException as e:
        if not writer.resumed and not (writer.done(fresh=True) > 0).any():
            writer.abort()  # nothing written (e.g. the cluster did not start): leave nothing behind
            raise
        kept = writer.keep_partial()
        if isinstance(e, OSError) and not raised_by_program(e):  # a worker's write failed (a full disk): one line
            from .writers import _write_failed

            raise OutputError(f"{_write_failed(Path(out), e)}; {kept} keeps the tiles written so far: rerun with "
                              "resume=True (--resume) once it is fixed") from None
        log.warning("run interrupted; %s holds the tiles written so far: rerun with resume=True (--resume) to "
                    "finish it", kept)
        raise
    changed = scene_changed(scene_id.get("source"), watched)
    if changed is not None:
        writer.keep_partial()  # (its identity no longer matches the scene: --resume refuses it)
        raise changed
    missing = int((writer.done(fresh=True) == 0).sum())  # (read again: the workers' marks are on disk only)
    if missing:
        kept = writer.keep_partial()
        raise OutputError(f"{missing} tiles of {kept} are not recorded as written after the run; rerun with "
                          "resume=True (--resume) to finish them")
    wall = time.perf_counter() - t_start
    try:
        writer.finish_run(run, workers=n_workers, wall_s=round(wall, 3))
        if suffix in ZARR_SUFFIXES:
            path = Path(writer.commit())
        else:
            path = writer.commit_geotiff(out, crs=crs, transform=transform, gcps=gcps, tags=tags)
        if on_written is not None:
            on_written(path)
    except BaseException:  # SIGTERM/Ctrl-C while writing the map: every tile is in the store, keep it
        kept = writer.keep_partial()
        left = kept.exists() or kept.is_symlink()
        if not left and finished_with(out, fingerprint, sides):  # renamed into place just before the signal
            writer.map_written = True
        if writer.map_written and on_written is not None:
            on_written(out)
        if writer.map_written and left:
            log.warning("wrote %s, then stopped before removing %s: rerun with resume=True (--resume) to remove "
                        "it (the map is complete)", out, kept)
        elif writer.map_written:
            log.warning("wrote %s, then stopped while cleaning up; the next run into it removes what is left",
                        out)
        else:
            log.warning("stopped while writing %s; %s holds every tile: rerun with resume=True (--resume) to "
                        "write the map without computing again", out, kept)
        raise
    report = RunReport(path=path, tiles=len(plan), skipped=skipped, computed=len(todo), run=run, workers=n_workers,
                       wall_s=time.perf_counter() - t_start, tile=side, extra=dict(extra or {}))
    log.info("wrote %s: %d tiles computed, %d skipped (run %d, %s) in %.1f s", path, report.computed, skipped, run,
             f"{n_workers} workers" if distributed else "in-process", report.wall_s)
    return report


def _warn_no_readers(readers: int | None, queue_depth: int | None) -> None:
    """One warning for ``readers``/``queue_depth`` given to a cluster run, which does not use them: each task reads
    the window of its own tile (no reader threads, nothing queued ahead), so they were taken and ignored silently."""
    given = [f"{n}={v}" for n, v in (("readers", readers), ("queue_depth", queue_depth)) if v is not None]
    if not given:
        return
    it, has = ("it", "has") if len(given) == 1 else ("them", "have")
    log.warning("%s %s no effect with workers= or scheduler= (--workers, --scheduler): each worker reads only the "
                "window of the tile its task computes, with no reader threads and no tiles queued ahead "
                "(cache_blocks and decoders do apply, per worker). Leave %s out, or run in-process to use %s",
                " and ".join(given), has, it, it)


def _check_cluster_engine(device: Any, backend: str, *, local: bool) -> None:
    """On the driver, before a cluster starts: the backend name, and the device as far as this host can tell. Any
    cluster: a torch device name of a kind the engine runs on (cpu, cuda); a local one (``workers=``, this host):
    the in-process check (:func:`~hsi_engine.fused.engine_device`: a CUDA device this torch sees). The workers
    checked these only on their first tile, after the cluster had started, and distributed logged its own
    traceback of the error."""
    from kernels.dispatch import check_backend

    check_backend(backend)
    if device is None:
        return  # the workers' default: cuda where they see one, else cpu
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ClusterUsageError(f"device {device!r} is not a torch device name; expected cpu, cuda or "
                                "cuda:N") from None
    if kind not in ("cpu", "cuda"):
        raise ClusterUsageError(f"device {device!r} is not supported by the engine; expected cpu, cuda or cuda:N")
    if local:
        from .fused import engine_device

        engine_device(device)  # an OptionError naming the fix (e.g. no CUDA device on this host)


def _device_record(device_type: str | None, precision: str, *, this_host: bool) -> str | None:
    """The kind of device a low-precision run computes on, for its fingerprint: ``cuda``, ``cpu``; for a bfloat16
    engine on a CPU, ``cpu+amx_bf16`` with AMX-BF16 (its spatial stage runs otherwise there), ``cpu+onednn_bf16``
    where oneDNN runs bfloat16 convolutions (fused, one rounding of a residual sum; an AVX2-only CPU takes the plain
    path, two: 7 of 21,025 pixels differ), else ``cpu``; None where unknown (a scheduler's workers, or a CPU
    bfloat16 engine on other hosts)."""
    if device_type == "cpu" and precision == "bfloat16":
        if not this_host:
            return None
        from kernels.spectral import _onednn_bf16

        from .fused import _cpu_has_amx_bf16

        return "cpu+amx_bf16" if _cpu_has_amx_bf16() else "cpu+onednn_bf16" if _onednn_bf16() else "cpu"
    return device_type


def _run_local(job: Any, plan: TilePlan, writer: ResumableZarrWriter, run: int, side: int, throttle_s: float,
               prob: str | None, queue_depth: int | None, readers: int | None, progress: bool | None,
               cache_blocks: int | None, decoders: int | None) -> dict[str, Any]:
    from .runner import run_plan

    return run_plan(job.da, plan, job.engine(), _MarkingSink(writer, run, side, throttle_s), mean=job.mean,
                    std=job.std, nodata=job.nodata, probabilities=prob is not None, queue_depth=queue_depth,
                    readers=readers, progress=progress, cache_blocks=cache_blocks, decoders=decoders,
                    nodata_bands=job.nodata_bands)


def classify_to_file(scene_path: Any, model_path: Any, out: str | os.PathLike, **kw: Any) -> Path:
    """:func:`hsi_engine.api.classify_to_file` with ``workers``/``scheduler``/``resume``: see :func:`run_to_file`."""
    return run_to_file(scene_path, model_path, out, **kw).path
