"""How soon the device path's tiles are staged in host memory: each reader staging its own tile (the runner before
2026-11-26) against one stager taking the tiles in plan order, its copy split over the readers' count of threads
(``hsi_engine.runner.submit_in_plan_order``).

Why: on CUDA the readers copy raw windows into pinned buffers for the device. With each reader staging its own
tile, the first tiles of a run share the host's memory bandwidth, so the first one is ready only when the first
``readers`` all are; the GPU waits for it. Measured here on the host alone, no GPU: a ``(200, 2048, 2048)`` float32
scene in memory, 512-pixel tiles (windows of 518 x 518 x 200, 215 MB), ``readers`` threads, both arms alternated,
after one warm-up pass each. Pinned buffers with ``--pin`` (needs CUDA).

    python benchmarks/staging.py [--readers N] [--side 2048] [--repeats 3] [--pin]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks._common import cpu_report_head, doc_description, positive_int, results_out, write_report  # noqa: E402
from ssrn.normalise import stage_raw  # noqa: E402
from hsi_engine.runner import read_window, submit_in_plan_order, window_reader  # noqa: E402
from hsi_engine.tiles import plan_tiles  # noqa: E402

HALO = 3  # the SSRN's: 7 x 7 patches


def per_reader(read, tiles, readers: int, pin: bool) -> list[float]:
    """Seconds from the start until each tile is staged, each reader staging the tile it read."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        futs = [pool.submit(lambda t: stage_raw(read_window(read, t)[1], pin=pin), t) for t in tiles]
        done = []
        for f in futs:
            f.result()
            done.append(time.perf_counter() - t0)
    return done


def in_order(read, tiles, readers: int, pin: bool) -> list[float]:
    """Seconds from the start until each tile is staged by one stager in plan order over ``readers`` copy
    threads (the runner's device path)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(readers) as rpool, ThreadPoolExecutor(1) as stager, ThreadPoolExecutor(readers) as cp:
        futs = [submit_in_plan_order(rpool, stager, read, t, pin=pin, copies=cp, parts=readers) for t in tiles]
        done = []
        for f in futs:
            f.result()
            done.append(time.perf_counter() - t0)
    return done


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=doc_description(__doc__))
    ap.add_argument("--readers", type=positive_int, default=min(8, os.cpu_count() or 1),
                    help="reader (and copy) threads; the runner's CUDA default is min(8, cores)")
    ap.add_argument("--side", type=positive_int, default=2048)
    ap.add_argument("--bands", type=positive_int, default=200)
    ap.add_argument("--tile", type=positive_int, default=512)
    ap.add_argument("--queue", type=positive_int, default=None,
                    help="tiles in flight (default readers + 1, the runner's)")
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--pin", action="store_true", help="page-locked buffers, as on CUDA (needs a CUDA build)")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/staging-cpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    if args.pin:
        import torch

        if not torch.cuda.is_available():
            ap.error(f"--pin needs page-locked memory, which needs a CUDA device; this torch ({torch.__version__}) "
                     "sees none: leave --pin out (pageable buffers), or run it on the GPU machine")
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "staging-cpu.md")

    scene = np.ones((args.bands, args.side, args.side), np.float32)  # every page touched, as a loaded scene's
    read = window_reader(scene)
    queue = (args.queue, "--queue") if args.queue else (args.readers + 1, "the runner's queue: readers + 1")
    tiles = list(plan_tiles(args.side, args.side, args.tile, HALO).tiles)[:queue[0]]
    arms = {"each reader stages its tile (before)": per_reader, "one stager, plan order (now)": in_order}
    times: dict[str, list[list[float]]] = {k: [] for k in arms}
    for name, fn in arms.items():  # warm-up: the allocator's (and pinned cache's) first buffers
        fn(read, tiles, args.readers, args.pin)
    for _ in range(args.repeats):
        for name, fn in arms.items():
            times[name].append(fn(read, tiles, args.readers, args.pin))

    mb = args.bands * (args.tile + 2 * HALO) ** 2 * 4 / 1e6
    head = cpu_report_head("Staging the device path's tiles in host memory", "staging.py", argv)
    lines = head + [
        f"- scene: ({args.bands}, {args.side}, {args.side}) float32 in memory; {len(tiles)} tiles in flight "
        f"({queue[1]}) of {args.tile} pixels (windows {mb:.0f} MB); {args.readers} readers; "
        f"{'pinned' if args.pin else 'pageable'} buffers; {args.repeats} alternated repeats after a warm-up, medians",
        "", "| arm | first tile staged (ms) | second (ms) | all staged (ms) |", "|---|---:|---:|---:|"]
    med = {}
    for name, runs in times.items():
        med[name] = [statistics.median(r[i] for r in runs) * 1e3 for i in range(len(tiles))]
        second = f"{med[name][1]:.0f}" if len(tiles) > 1 else "-"
        lines.append(f"| {name} | {med[name][0]:.0f} | {second} | {med[name][-1]:.0f} |")
    before, now = med.values()
    first = (f"{before[0] / now[0]:.2f}x sooner" if now[0] <= before[0]
             else f"{now[0] / before[0]:.2f}x later (slower)")
    lines += ["", f"First tile staged {first} in plan order; all {len(tiles)} in "
              f"{now[-1] / before[-1]:.2f}x the time. The compute starts on the first tile, so on a GPU the first "
              "figure is the wait before its first kernel."]
    return write_report(args.out, lines)


if __name__ == "__main__":
    main()
