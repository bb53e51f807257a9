"""Host side of the engine: how fast reader threads turn a scene into tiles the device can take.

On a GPU the engine was bound here (kernels-h100.md: bf16 spectral stage 19.2 Mpix/s, engine 5.7), so this
measures the reader stage alone, with the engine's own functions (:func:`hsi_engine.runner.load_tile`, and
``submit_in_plan_order`` for the device path), on the CPU it runs on. Two preparations, side by side in one
run:

- ``host``: read the window, normalise it in float64 into a padded float32 buffer (the CPU engine's path,
  and the CUDA path before the device normalised);
- ``device``: read the window and stage it raw, in its own dtype, one stager taking the tiles in plan order over
  ``--readers`` copy threads (the CUDA path now: the device normalises it with the same float64 operations).

and three sources: a scene held in memory (numpy), and the same scene streamed from a zarr v3 store through
``open_scene`` (dask, synchronous scheduler inside each reader thread), read window by window straight from
the store (the engine before the block cache) or through the engine's decoded-block cache
(:mod:`hsi_engine.blocks`, the runner's default budget for the plan and readers, cold at the start of every
pass). Output pixels per second over every tile of the plan, ``--readers`` threads at once; median of
``--reps``. Buffers are not pinned here (no CUDA); on a GPU machine page-locking adds to the staging.

    python benchmarks/host.py --side 1536 --tile 512
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import platform
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name, positive_int, results_out, write_report  # noqa: E402
from hsi_engine.runner import _cores, cache_blocks_for, load_tile, submit_in_plan_order, window_reader  # noqa: E402
from hsi_engine.tiles import plan_tiles  # noqa: E402

HALO = 3
SOURCES = ("memory", "zarr", "cache", "decoders")  # --sources keys, in report order


def _scene(bands: int, side: int, dtype) -> np.ndarray:
    """Smooth random spectra scaled like 16-bit reflectance (values up to ~12000)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(500, 4000, size=(1, side, side)).astype(np.float32)
    cube = base * np.linspace(0.5, 3.0, bands, dtype=np.float32)[:, None, None]
    return cube.astype(dtype)


def _rss_mb() -> float:
    """Resident memory of this process now (Linux), MB; 0 where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rate(scene, plan, *, bands: int, mode: str, readers: int, reps: int, mean, std,
         cache: bool = False, decoders: int = 0) -> tuple[float, dict]:
    """Median output Mpix/s of preparing every tile of ``plan`` with ``readers`` threads (and, with the cache,
    ``decoders`` threads decoding a window's blocks concurrently, as the runner does on CUDA)."""
    ts, stats = [], collections.Counter()
    for i in range(reps + 1):  # the first pass warms the OS page cache and the allocator
        st = collections.Counter()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max(1, decoders)) as dpool, ThreadPoolExecutor(readers) as cp, \
                ThreadPoolExecutor(1) as stager, ThreadPoolExecutor(readers) as ex:  # readers end first
            read = window_reader(scene, cache_blocks=cache_blocks_for(plan.tile, HALO, readers) if cache else 0,
                                 decoders=dpool if decoders else None)
            if mode == "device":  # as the runner: readers read, one stager copies in plan order
                futs = [submit_in_plan_order(ex, stager, read, t, pin=False, copies=cp, parts=readers, stats=st)
                        for t in plan.tiles]
            else:
                futs = [ex.submit(load_tile, read, t, bands=bands, halo=HALO, mean=mean, std=std, nodata=None,
                                  pin=False, stats=st) for t in plan.tiles]
            for f in futs:
                f.result()
        if i:
            ts.append(time.perf_counter() - t0)
            stats += st
    return plan.height * plan.width / statistics.median(ts) / 1e6, {k: v / reps for k, v in stats.items()}


def measure(args, plan, tmp: Path, alloc: str) -> list[tuple]:
    """Every (dtype, source, readers) row of one allocator setting."""
    import xarray as xr

    from hsi_engine.api import open_scene

    rows = []
    for dtype in map(np.dtype, args.dtypes):
        cube = _scene(args.bands, args.side, dtype)
        a = cube.astype(np.float64)
        mean, std = a.mean(axis=(1, 2)), a.std(axis=(1, 2))
        del a
        path = tmp / f"scene-{dtype.name}-{alloc}.zarr"
        xr.DataArray(cube, dims=("band", "y", "x"), name="reflectance").chunk(
            {"band": -1, "y": 256, "x": 256}).to_zarr(path)
        zarr_scene = open_scene(path)
        sources = {"memory": ("in memory", cube, False, 0),
                   "zarr": ("zarr, window by window", zarr_scene, False, 0),
                   "cache": ("zarr, block cache", zarr_scene, True, 0),
                   "decoders": (f"zarr, block cache, {args.decoders} decoders", zarr_scene, True, args.decoders)}
        for where, scene, cache, decoders in (sources[k] for k in args.sources):
            for readers in args.readers:
                r = {mode: rate(scene, plan, bands=args.bands, mode=mode, readers=readers, reps=args.reps,
                                mean=mean, std=std, cache=cache, decoders=decoders)
                     for mode in ("host", "device")}
                rows.append((alloc, dtype.name, where, readers, r["host"], r["device"], _rss_mb()))
                print(rows[-1][:4], f"host {r['host'][0]:.2f} device {r['device'][0]:.2f} Mpix/s", flush=True)
        del cube, sources, zarr_scene
    return rows


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=positive_int, default=1536)
    ap.add_argument("--bands", type=positive_int, default=200)
    ap.add_argument("--tile", type=positive_int, default=512)
    ap.add_argument("--readers", type=positive_int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=positive_int, default=3)
    ap.add_argument("--decoders", type=positive_int, default=_cores(),
                    help="decoder threads of the concurrent-decode rows (default: the cores, as the runner on CUDA)")
    ap.add_argument("--dtypes", nargs="+", default=["uint16", "float32"])
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--allocator", choices=["default", "reuse", "both"], default="default",
                    help="malloc as it comes, after hsi_engine.reuse_large_buffers() (what the CLI runs with), "
                         "or both in one run: the default rows first, since the setting cannot be undone")
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/host-cpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "host-cpu.md")
    import dask
    import torch
    import xarray as xr
    import zarr

    from hsi_engine.allocator import reuse_large_buffers

    plan = plan_tiles(args.side, args.side, args.tile, HALO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for alloc in ["default", "reuse"] if args.allocator == "both" else [args.allocator]:
            if alloc == "reuse" and not reuse_large_buffers():
                raise SystemExit("reuse_large_buffers() could not be applied here (no glibc mallopt)")
            rows += measure(args, plan, Path(tmp), alloc)
    cmd = "python benchmarks/host.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [f"# Host-side tile preparation on {cpu_name()}", "",
             f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- versions: python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
             f"zarr {zarr.__version__}, dask {dask.__version__}, xarray {xr.__version__}",
             f"- command: `{cmd.strip()}`",
             f"- scene: {args.bands} bands x {args.side} x {args.side}; tiles {args.tile} + halo {HALO} "
             f"({len(plan)} tiles); per-band mean/std normalisation; median of {args.reps} passes after a warm-up",
             "- Mpix/s = output pixels of the whole plan per second of wall clock, `readers` threads at once; "
             "read / prepare = seconds per pass summed over threads (a thread waiting for a block another one "
             "decodes counts as reading); zarr store: 256 x 256 chunks, all bands in one, default codec", ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["| malloc | dtype | source | readers | host-normalised Mpix/s | raw-staged Mpix/s | ratio | "
              "host: read / normalise s | staged: read / copy s | RSS after (MB) |",
              "|---|---|---|---:|---:|---:|---:|---|---|---:|"]
    for alloc, dtn, where, readers, (h, hs), (d, ds), rss in rows:
        lines.append(f"| {alloc} | {dtn} | {where} | {readers} | {h:.2f} | {d:.2f} | {d / h:.1f}x | "
                     f"{hs['read_s']:.2f} / {hs['prepare_s']:.2f} | {ds['read_s']:.2f} / {ds['prepare_s']:.2f} | "
                     f"{rss:.0f} |")
    return write_report(args.out, lines)


if __name__ == "__main__":
    main()
