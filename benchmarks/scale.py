"""Scale-out: pixels/s of the engine on 1 and 2 local dask workers vs the single-process engine, same scene/model.

The scene is benchmarks/scene.py's synthetic int16 zarr store (Indian Pines class-mean spectra in blobs plus
noise; imported, not copied) and its model (the shipped Indian Pines model at 200 bands, else a seeded random
SSRN). Rows:

- single process: ``hsi_engine.classify_to_file`` (streaming runner, torch on all cores), after one untimed
  warm-up call (the process's one-time costs: imports, model load, oneDNN's first primitives), so the rows it is
  the baseline of do not inherit them;
- resumable, in-process: ``cluster.run_to_file(resume=True)`` (the same runner + per-tile completion record);
- N local workers (``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)``): the cluster's start-up
  time, then the run on the warm cluster (``scheduler=client``) and the cold total (``workers=N``: start-up,
  model load per worker, tiles, GeoTIFF-free zarr commit);
- one GPU worker: measured only where CUDA is visible, else marked pending.

Every map is compared with the single-process map.

    python benchmarks/scale.py [--size 512] [--bands 200] [--tile 128] [--workers 1,2]
                               [--out benchmarks/results/scale-cpu.md]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "benchmarks":
    sys.path[0] = str(REPO)  # benchmarks/kernels.py must not shadow the kernels package

from benchmarks._common import positive_int, results_out  # noqa: E402


def _scene_module():
    spec = importlib.util.spec_from_file_location("hsi_bench_scene", REPO / "benchmarks" / "scene.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _read(path: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(path), mode="r")["classes"][...])


def _versions() -> str:
    import dask
    import distributed
    import torch
    import xarray
    import zarr

    return (f"torch {torch.__version__}, numpy {np.__version__}, zarr {zarr.__version__}, dask {dask.__version__}, "
            f"distributed {distributed.__version__}, xarray {xarray.__version__}, python {platform.python_version()}")


def worker_counts(text: str) -> list[int]:
    """``--workers``: comma-separated positive worker counts ("1,2")."""
    return [positive_int(v) for v in text.split(",") if v.strip()]


def conclusion(single: float, warm: dict[int, float], threads: int) -> str:
    """The table's verdict, from the measured walls: the fastest warm cluster run against the (warm) single
    process."""
    if not warm:
        return "No local-worker rows were run."
    n, best = min(warm.items(), key=lambda kv: kv[1])
    ratio = single / best
    verdict = "faster than" if ratio > 1 else "slower than" if ratio < 1 else "as fast as"
    return (f"Measured here: the fastest warm cluster run ({n} worker{'s' if n > 1 else ''}, 1 thread each) was "
            f"{verdict} the single process with {threads} torch threads on {os.cpu_count()} visible cores "
            f"({ratio:.2f}x its pixels/s). The cluster path is meant for many cores, several machines, or one "
            "worker per GPU.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=positive_int, default=512)
    ap.add_argument("--bands", type=positive_int, default=200)
    ap.add_argument("--tile", type=positive_int, default=128)
    ap.add_argument("--workers", type=worker_counts, default="1,2", help="comma-separated worker counts")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir, removed)")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/scale-cpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "scale-cpu.md")

    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    import torch
    from distributed import Client

    from hsi_engine import cluster
    from hsi_engine.api import classify_to_file

    bench = _scene_module()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hsi-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    store = bench.build_scene(work / f"scene-{args.size}-{args.bands}.zarr", args.size, args.bands)
    model = bench.bench_model(work, args.bands)
    pixels = args.size * args.size
    rows: list[tuple[str, str, float | None, str]] = []  # (mode, detail, wall, map)

    def out(name: str) -> Path:
        p = work / name
        shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(p.with_name(p.name + ".partial"), ignore_errors=True)
        return p

    t0 = time.perf_counter()
    classify_to_file(store, model, out("warm-up.zarr"), tile=args.tile, device="cpu", progress=False)
    first = time.perf_counter() - t0
    print(f"warm-up (first call in this process) {first:.1f}s", flush=True)
    t0 = time.perf_counter()
    ref_path = out("single.zarr")
    classify_to_file(store, model, ref_path, tile=args.tile, device="cpu", progress=False)
    single = time.perf_counter() - t0
    ref = _read(ref_path)
    rows.append(("single process (classify_to_file)", f"torch threads {torch.get_num_threads()}, after one "
                 "warm-up call", single, "reference"))
    print(f"single {single:.1f}s", flush=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what one single-threaded worker gets: the per-core baseline
    try:
        t0 = time.perf_counter()
        p = out("single-1thread.zarr")
        classify_to_file(store, model, p, tile=args.tile, device="cpu", progress=False)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    rows.append(("single process, 1 torch thread", "per-core baseline for the 1-worker rows", wall,
                 f"identical: {bool((_read(p) == ref).all())}"))
    print(f"single 1 thread {wall:.1f}s", flush=True)

    t0 = time.perf_counter()
    p = out("resumable.zarr")
    cluster.run_to_file(store, model, p, tile=args.tile, device="cpu", resume=True, progress=False)
    wall = time.perf_counter() - t0
    rows.append(("resumable, in-process (run_to_file resume=True)", "same runner + completion record", wall,
                 f"identical: {bool((_read(p) == ref).all())}"))
    print(f"resumable {wall:.1f}s", flush=True)

    warm_walls: dict[int, float] = {}
    for n in args.workers:
        t0 = time.perf_counter()
        lc = cluster.make_local_cluster(n, gpu=False)
        client = Client(lc)
        client.wait_for_workers(n)
        start = time.perf_counter() - t0
        try:
            t1 = time.perf_counter()
            p = out(f"warm-{n}.zarr")
            rep = cluster.run_to_file(store, model, p, tile=args.tile, device="cpu", scheduler=client,
                                      progress=False)
            warm = time.perf_counter() - t1
            warm_walls[n] = warm
            rows.append((f"{n} local worker{'s' if n > 1 else ''}, warm cluster (scheduler=client)",
                         f"{rep.tiles} tile tasks, 1 thread/worker; includes model load on each worker",
                         warm, f"identical: {bool((_read(p) == ref).all())}"))
        finally:
            client.close()
            lc.close()
        rows.append((f"{n} local worker{'s' if n > 1 else ''}: cluster start-up only", "LocalCluster + Client",
                     start, "-"))
        t0 = time.perf_counter()
        p = out(f"cold-{n}.zarr")
        cluster.run_to_file(store, model, p, tile=args.tile, device="cpu", workers=n, progress=False)
        cold = time.perf_counter() - t0
        rows.append((f"{n} local worker{'s' if n > 1 else ''}, cold (workers={n}: start + run + stop)",
                     "what `hsi-engine classify --workers N` costs", cold,
                     f"identical: {bool((_read(p) == ref).all())}"))
        print(f"workers {n}: start {start:.1f}s warm {warm:.1f}s cold {cold:.1f}s", flush=True)

    gpu = "pending: no CUDA device on this machine"
    if torch.cuda.is_available():
        t0 = time.perf_counter()
        p = out("gpu.zarr")
        cluster.run_to_file(store, model, p, tile=512, workers=1, progress=False)
        wall = time.perf_counter() - t0
        rows.append(("1 GPU worker, cold", torch.cuda.get_device_name(0), wall,
                     f"identical: {bool((_read(p) == ref).all())}"))
        gpu = None
    load1 = os.getloadavg()[0]

    lines = ["# Scale-out benchmark: engine on local dask workers vs single process (CPU)", "",
             f"- device: {bench.cpu_name()}, {os.cpu_count()} cores visible; no GPU" if gpu else
             f"- device: {bench.cpu_name()}, {os.cpu_count()} cores, {torch.cuda.get_device_name(0)}",
             f"- versions: {_versions()}",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"- command: `python benchmarks/scale.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
             f"- scene: benchmarks/scene.py synthetic int16 zarr, {args.bands} bands x {args.size} x {args.size} "
             f"({pixels} pixels), chunks ({args.bands}, 128, 128); model: {Path(model).name}; tile {args.tile}",
             f"- the process's first classify_to_file (the warm-up, not a table row): {first:.1f} s",
             f"- load average before / after: {load0:.2f} / {load1:.2f}. The 2 cores are SHARED with other engineers' "
             "jobs (tests, training) running at the same time: absolute figures are noisy lower bounds; compare "
             "rows of one run.", "",
             "| mode | detail | wall (s) | pixels/s | vs single process | map |", "|---|---|---:|---:|---:|---|"]
    for mode, detail, wall, m in rows:
        if "start-up only" in mode:
            lines.append(f"| {mode} | {detail} | {wall:.1f} | - | - | {m} |")
        else:
            lines.append(f"| {mode} | {detail} | {wall:.1f} | {pixels / wall:.0f} | {single / wall:.2f}x | {m} |")
    if gpu:
        lines.append(f"| 1 GPU worker | - | - | - | - | {gpu} |")
    lines += ["", "Reading the table: the cluster path's overhead is the warm 1-worker row against the 1-thread "
              "single-process row (same tiles, one core each: task dispatch, per-worker model load, region writes "
              "and completion marks); the cold rows add the cluster start-up and a torch import + model load per "
              "worker process, which is what `--workers N` costs on a scene this size.", "",
              conclusion(single, warm_walls, threads), ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
